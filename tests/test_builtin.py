"Tests of ssm_distill.builtin beyond the notebook."
import json
import pytest, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from ssm_distill.core import SsmDistillError
from ssm_distill.builtin import (TeacherRecipeConfig, train_tokenizer, teacher_train_main, load_builtin_teacher,
                                 builtin_teacher_path, head_scores)

def test_tokenizer_deterministic_and_roundtrip():
    texts = ['def f(x): return x + 1', 'Return the sum of a and b.', 'Ünïcödé ✓'] * 20
    a, b = train_tokenizer(texts, 300), train_tokenizer(texts, 300)
    assert a.get_vocab() == b.get_vocab()
    for t in texts[:3] + ['text never seen: 日本語']: assert a.decode(a(t)['input_ids']) == t

def test_cli_tiny(tmp_path):
    rep = teacher_train_main(['--out', str(tmp_path/'t'), '--tiny', '--steps', '20', '--no-progress', '--seed', '1'])
    saved = json.loads((tmp_path/'t'/'recipe.json').read_text())
    assert saved['config']['steps'] == 20 and saved['config']['seed'] == 1 and rep['final_train_loss'] < rep['first_train_loss']
    m = AutoModelForCausalLM.from_pretrained(tmp_path/'t'); tok = AutoTokenizer.from_pretrained(tmp_path/'t')
    assert m.config.model_type == 'llama' and tok.eos_token == '<|eos|>'
    sc = head_scores(m, n=10, batch=2)
    assert sc['previous_token'].shape == (2, 2)

def test_config_errors():
    with pytest.raises(SsmDistillError, match='save_dtype'): TeacherRecipeConfig(save_dtype='int8')
    with pytest.raises(SsmDistillError, match='steps'): TeacherRecipeConfig(steps=0)

def test_missing_asset_message(tmp_path):
    with pytest.raises(SsmDistillError, match='ssm-distill teacher train --out'): load_builtin_teacher(path=tmp_path)
    assert builtin_teacher_path().parts[-2:] == ('assets', 'teacher')

def test_copy_curriculum_config_errors():
    with pytest.raises(SsmDistillError, match='copy_block/2'): TeacherRecipeConfig(copy_block=8, copy_max=5)
    with pytest.raises(SsmDistillError, match='copy_steps'): TeacherRecipeConfig(copy_steps=-1)

def test_copy_curriculum_stops_early(tmp_path):
    "A curriculum whose loss is already below copy_stop ends right after the warm-up and the corpus phase runs in full."
    rep = teacher_train_main(['--out', str(tmp_path/'t'), '--tiny', '--no-progress', '--copy-stop', '100', '--warmup-steps', '2', '--steps', '4'])
    assert rep['copy_steps_run'] == 3 and rep['copy_history'][-1]['step'] == 3 and rep['history'][-1]['step'] == 4
    assert len(rep['head_scores']['copy_loss']) == 2

def test_copy_blocks_one_span_per_row():
    from ssm_distill.builtin import copy_blocks
    x, y = copy_blocks(64, 16, (2, 8), torch.Generator().manual_seed(3), high=50)
    n = (y != -100).sum(1)
    assert ((n >= 1) & (n <= 7)).all() and (y[y != -100] == x[y != -100]).all()
