"Tests of ssm_distill.students beyond the notebook: every family, save/reload, recurrent generation, sizes, errors."
import pytest, torch
from transformers import AutoModelForCausalLM
from ssm_distill.core import SsmDistillError
from ssm_distill.teachers import tiny_teacher
from ssm_distill.students import (StudentConfig, StudentForCausalLM, build_student,
                                  build_student_from_config, causal_mask)
from ssm_distill.matrices import mixing_error

FAMILIES = ['llama', 'phi', 'gpt2', 'gpt_neox', 'qwen3']   # GQA + rotary, partial rotary, fused Conv1D + tied head, fused per-head qkv, q/k norms

def batch(T=63, seed=0, vocab=64):
    return torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(seed))

pytestmark = pytest.mark.usefixtures('one_thread')

@pytest.fixture(scope='module')
def teachers(tmp_path_factory):
    "Tiny teachers of each family, saved and reloaded by path (as a user's checkpoint)."
    root = tmp_path_factory.mktemp('teachers')
    return {f: tiny_teacher(f, path=root/f) for f in FAMILIES + ['mistral']}

def logits(model, ids, **kw):
    with torch.no_grad(): return model(input_ids=ids, **kw).logits

@pytest.mark.parametrize('family', FAMILIES)
def test_softmax_twin_is_lossless(teachers, family):
    t = teachers[family]
    s = build_student(t, 'softmax_attention')
    ids = batch()
    torch.testing.assert_close(logits(s, ids), logits(t.model, ids), atol=1e-5, rtol=0)

def test_softmax_twin_with_padding(teachers):
    t = teachers['llama']
    s = build_student(t, 'softmax_attention')
    ids, mask = batch(), torch.ones(2, 63, dtype=torch.long)
    mask[1, 50:] = 0
    a, b = logits(s, ids, attention_mask=mask), logits(t.model, ids, attention_mask=mask)
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-5, rtol=0)

@pytest.mark.parametrize('family', FAMILIES)
def test_linear_attention_matrix_is_the_unnormalised_scores(teachers, family):
    t = teachers[family]
    s = build_student(t, 'linear_attention', feature_map='identity', normalize=False, **({'rotary': True} if t.rotary_dim else {}))
    ids = batch(31)
    cap = t.capture(ids, what={'attn_in', 'q', 'k'})
    rot = t.rotary(torch.arange(31))
    for i in range(t.n_layers):
        M = s.layer_mixing_matrix(i, cap.attn_in[i], rot)                                 # (B, H, T, T)
        scores = torch.einsum('bthd,bshd->bhts', cap.q[i], cap.k[i]) * s.mixer(i).config.head_dim ** -0.5
        torch.testing.assert_close(M, scores.tril(), atol=1e-4, rtol=1e-5)

def test_one_layer_runs_match_the_teacher(teachers):
    t = teachers['phi']
    s = build_student(t, 'softmax_attention', attention_layers=[0])
    cap = t.capture(batch(), what={'attn_in', 'attn_out', 'block_in', 'block_out'})
    for i in range(2):
        torch.testing.assert_close(s.run_block(i, cap.block_in[i]), cap.block_out[i], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(s.run_mixer(1, cap.attn_in[1]), cap.attn_out[1], atol=1e-5, rtol=1e-5)
    with pytest.raises(SsmDistillError, match='keeps the teacher'): s.run_mixer(0, cap.attn_in[0])

@pytest.mark.parametrize('family', ['llama', 'gpt2'])
@pytest.mark.parametrize('mixer,kept,heads', [('mamba2', [], {}), ('phi_mamba', [1], {}), ('gla', [], {'1': [0]})],
                         ids=['pure-mamba2', 'hybrid-phi_mamba', 'heads-gla'])
def test_save_and_reload_by_auto_class(teachers, tmp_path, family, mixer, kept, heads):
    s = build_student(teachers[family], mixer, attention_layers=kept, attention_heads=heads, train_kept_heads=bool(heads))
    s.save_pretrained(tmp_path)
    assert (tmp_path/'model.safetensors').exists()
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(again, StudentForCausalLM) and isinstance(again.config, StudentConfig)
    assert again.config.attention_layers == kept and again.config.mixer == mixer
    assert again.config.attention_heads == heads and again.config.train_kept_heads == bool(heads)
    ids = batch()
    torch.testing.assert_close(logits(again, ids), logits(s, ids), atol=0, rtol=0)

# generation: tests/test_hf.py (GenerationMixin, every mixer, padding, beams, dtypes)

def test_mixing_init_reduces_the_matrix_error(teachers):
    t = teachers['llama']
    ids = batch(32)
    s = build_student(t, 'mamba2', init='mixing', calibration=ids, mixing_steps=15, mixing_params='free')
    ref = build_student(t, 'mamba2', init='qkv_copy')
    cap = t.capture(ids, what={'attn_in', 'attn_probs'})
    for i in range(t.n_layers):
        r = s.init_report[i]
        assert r['after'] < r['before']
        with torch.no_grad():
            torch.testing.assert_close(mixing_error(s.layer_mixing_matrix(i, cap.attn_in[i]), cap.attn_probs[i]).item(), r['after'], rtol=1e-4, atol=1e-5)
        # with mixing_params='free' the QKV-copied rows stayed as copied
        p = s.mixer(i).in_proj
        for part in ('x', 'B', 'C'): torch.testing.assert_close(p.weight[p.slice(part)], ref.mixer(i).in_proj.weight[p.slice(part)])

def test_param_groups_by_module(teachers):
    s = build_student(teachers['gpt_neox'], 'mamba2', attention_layers=[1], freeze=('mlp', 'embeddings'))
    g = s.param_groups()
    head = [n for n, p in s.named_parameters() if p is s.get_output_embeddings().weight]
    assert g['head'] == head and g['embeddings'] == ['lm.gpt_neox.embed_in.weight']
    assert all('.mixer.' in n for n in g['mixers']) and all('.attention.' in n for n in g['attention'])
    assert not any(p.requires_grad for n, p in s.named_parameters() if n in g['mlp'] + g['embeddings'])
    assert set(s.trainable(['mixers'])) == set(g['mixers'])
    s2 = build_student(teachers['gpt2'], 'mamba2')
    assert 'lm.transformer.wpe.weight' in s2.param_groups()['embeddings']
    with pytest.raises(SsmDistillError, match='no parameters'): s2.trainable(['attention'])
    with pytest.raises(SsmDistillError, match='choose one of'): s2.trainable(['mlpz'])

def test_students_of_another_size(teachers):
    t6 = tiny_teacher('llama', num_hidden_layers=6)
    small = build_student_from_config(t6, n_layers=3, hidden_size=16, mixer='gla')
    assert small.n_layers == 3 and small.config.base_config['hidden_size'] == 16 and small.config.init == 'random'
    assert logits(small, batch(16)).shape == (2, 16, 64)
    thin = build_student_from_config(t6, n_layers=3, mixer='softmax_attention', attention_layers=[2])
    assert thin.config.teacher_layers == [1, 3, 5]
    cap = t6.capture(batch(16), what={'block_in', 'block_out'})
    for j, i in enumerate([1, 3, 5]):
        torch.testing.assert_close(thin.run_block(j, cap.block_in[i]), cap.block_out[i], atol=1e-4, rtol=1e-5)
    for fam in ['gpt2', 'gpt_neox', 'phi']:
        s = build_student_from_config(tiny_teacher(fam, num_hidden_layers=4), n_layers=2, hidden_size=16)
        assert s.n_layers == 2 and logits(s, batch(8)).shape == (2, 8, 64)

def test_bad_input(teachers):
    t = teachers['llama']
    with pytest.raises(SsmDistillError, match=r"unknown mixer 'mamba3'; choose one of: .*mamba2"): build_student(t, 'mamba3')
    with pytest.raises(SsmDistillError, match='out of range'): build_student(t, attention_layers=[2])
    with pytest.raises(SsmDistillError, match='head_dim=16.*d_state = head_dim'): build_student(t, 'mamba2', d_state=8)
    with pytest.raises(SsmDistillError, match='expand=1'): build_student(t, 'mamba', expand=2)
    with pytest.raises(SsmDistillError, match='come from the teacher'): build_student(t, 'gla', head_dim=8)
    with pytest.raises(SsmDistillError, match='unknown student init'): build_student(t, init='zeros')
    with pytest.raises(SsmDistillError, match='no rotary'): build_student(teachers['gpt2'], 'gla', rotary=True)
    with pytest.raises(SsmDistillError, match='encoder'): build_student(tiny_teacher('bert'))
    with pytest.raises(SsmDistillError, match='n_heads'): build_student_from_config(t, hidden_size=33)

def test_causal_mask():
    m = causal_mask(4, torch.tensor([[0, 1, 1, 1]]))
    assert m.shape == (1, 1, 4, 4) and (m[0, 0, 1:, 0] < -1e30).all() and (m[0, 0, 0] == 0).all()


@pytest.mark.parametrize('family, kw', [('qwen3', {}), ('phi', dict(qk_layernorm=True))])
def test_qk_norm_teachers_copy_exactly(tmp_path, family, kw):
    "Teachers that normalise q and k per head (Qwen3's RMSNorm, Phi's qk_layernorm): the copy carries the norms."
    t = tiny_teacher(family, path=tmp_path/family, **kw)
    w = t.attention_weights(0)
    assert w.qk_norm == ('layer' if family == 'phi' else 'rms') and set(w.q_norm) >= {'weight'}
    s = build_student(t, 'softmax_attention')
    ids = batch()
    torch.testing.assert_close(logits(s, ids), logits(t.model, ids), atol=1e-5, rtol=0)
    s.save_pretrained(tmp_path/'s')                                              # the norms are part of the saved student
    s2 = AutoModelForCausalLM.from_pretrained(tmp_path/'s')
    torch.testing.assert_close(logits(s2, ids), logits(s, ids), atol=0, rtol=0)
    m = build_student(t, 'phi_mamba').mixer(0)
    assert set(m.qk_norms) == {'q', 'k'} and torch.equal(m.qk_norms['q'].weight, w.q_norm['weight'])


@pytest.mark.parametrize('family', ['llama', 'gpt2'])
def test_saved_student_is_portable(teachers, tmp_path, family):
    "A student of a teacher loaded from a temp folder saves no absolute path, and its weights share the other files' mode."
    import json, os, re, stat
    teacher_dir = str(teachers[family].config._name_or_path)
    assert os.path.isabs(teacher_dir)   # the teacher itself records where it was loaded from
    s = build_student(teachers[family], 'gla')
    s.save_pretrained(tmp_path/'student')
    text = (tmp_path/'student'/'config.json').read_text()
    assert teacher_dir not in text and str(tmp_path) not in text
    assert [v for v in re.findall(r'"([^"]*)"', text) if os.path.isabs(v) or v.startswith('~')] == []
    assert json.loads(text)['teacher'] == family and s.config.teacher == teacher_dir   # the folder's name; memory untouched
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in (tmp_path/'student').iterdir()}
    assert len(set(modes.values())) == 1 and 'model.safetensors' in modes, modes
    again = AutoModelForCausalLM.from_pretrained(tmp_path/'student')
    torch.testing.assert_close(logits(again, batch()), logits(s, batch()))


def test_hub_and_relative_teacher_names_are_kept():
    for name in ('org/model', 'runs/teacher'):
        d = StudentConfig(teacher=name, base_config={'model_type': 'llama', '_name_or_path': name}).to_dict()
        assert d['teacher'] == name and d['base_config']['_name_or_path'] == name


def test_mixing_error_moved_to_matrices_and_the_old_name_warns():
    import ssm_distill.matrices as matrices, ssm_distill.students as students
    with pytest.warns(DeprecationWarning, match='ssm_distill.students.mixing_error moved to ssm_distill.matrices'):
        from ssm_distill.students import mixing_error as old
    assert old is matrices.mixing_error and 'mixing_error' not in students.__all__ and '__getattr__' not in students.__all__


def test_copy_teacher_weights_takes_a_transformers_model():
    "The model itself (a LlamaForCausalLM) is wrapped as load_teacher wraps it: the same keys copied, the same weights."
    from ssm_distill.students import copy_teacher_weights
    t = tiny_teacher('llama')
    assert type(t.model).__name__ == 'LlamaForCausalLM'
    a, b = build_student(t.model, mixer='gla', init='random'), build_student(t, mixer='gla', init='random')
    assert copy_teacher_weights(a, t.model) == copy_teacher_weights(b, t)
    sa, sb = a.lm.state_dict(), b.lm.state_dict()
    for k, v in t.model.state_dict().items():
        if k in sa and sa[k].shape == v.shape: assert torch.equal(sa[k], v) and torch.equal(sb[k], v)

# --- per-head hybrids: some heads of a layer keep the teacher's attention

@pytest.fixture(scope='module')
def gqa_teacher():
    "4 query heads sharing 2 key/value heads (GQA), rotary."
    return tiny_teacher('llama', num_attention_heads=4, num_key_value_heads=2)

def kept_rows(t, heads, kv):
    w = t.attention_weights(1)
    rows = lambda m, hs: m.unflatten(0, (-1, w.head_dim))[hs].flatten(0, 1)
    return torch.cat([rows(w.wq, heads), rows(w.wk, kv), rows(w.wv, kv)]), w.wo

@pytest.mark.parametrize('init', ['qkv_copy', 'mixing', 'random'])
def test_per_head_kept_heads_are_the_teachers_under_every_init(gqa_teacher, init):
    t = gqa_teacher
    s = build_student(t, 'mamba2', attention_heads={1: [2, 3]}, init=init, calibration=batch(16), mixing_steps=3)
    h = s.mixer(1)
    want_in, want_o = kept_rows(t, [2, 3], [1])                 # query heads 2, 3 share K/V head 1: cached once
    assert torch.equal(h.kept.in_proj.weight, want_in) and torch.equal(h.o_proj.weight, want_o)
    assert h.kept.config.n_kv_heads == 1 and h.mixer.config.n_heads == 2 and s.mixer_heads(1) == [0, 1]
    if init == 'qkv_copy':   # the mixer's heads are QKV-copied from the teacher's heads 0 and 1
        C = h.mixer.in_proj.weight[h.mixer.in_proj.slice('C')]
        torch.testing.assert_close(C, t.attention_weights(1).wq[:2 * 8])

def test_per_head_stage_1_counts_only_the_mixer_heads(gqa_teacher):
    from ssm_distill.stages import STAGES
    from ssm_distill.losses import matrix_orientation_loss
    t, ids = gqa_teacher, batch(31)
    s = build_student(t, 'phi_mamba', attention_heads={1: [0]})
    stage = STAGES['matrix_orientation']()
    tg = stage.targets(t, ids, {0: 0, 1: 1})
    loss, logs = stage.loss(s, ids, tg, {0: 0, 1: 1})
    M_s = s.layer_mixing_matrix(1, tg['x'][1], rotary=tg['rotary'])                 # (B, H, T, T)
    torch.testing.assert_close(M_s[:, 0], tg['M'][1][:, 0], atol=1e-5, rtol=0)      # the kept head: the teacher's matrix
    want, _ = matrix_orientation_loss(M_s[:, 1:], tg['M'][1][:, 1:])
    assert logs['layer1'] == pytest.approx(want.item(), rel=1e-5)

@pytest.mark.parametrize('train_kept', [False, True])
def test_per_head_stage_2_trains_the_kept_heads_only_if_asked(gqa_teacher, train_kept):
    from ssm_distill.stages import STAGES
    t, ids = gqa_teacher, batch(31)
    s = build_student(t, 'gla', attention_heads={1: [1]}, train_kept_heads=train_kept)
    stage = STAGES['hidden_state_alignment']()
    names = s.trainable(stage.groups())
    assert any('.kept.' in n for n in names) == train_kept
    h = s.mixer(1)
    before = {n: p.detach().clone() for n, p in h.named_parameters()}
    loss, _ = stage.loss(s, ids, stage.targets(t, ids, {1: 1}), {1: 1})
    loss.backward()
    torch.optim.SGD([p for p in s.parameters() if p.requires_grad], lr=0.1).step()
    after = dict(h.named_parameters())
    cols = slice(8, 16)                                                              # head 1's columns of o_proj
    assert torch.equal(after['o_proj.weight'][:, cols], before['o_proj.weight'][:, cols]) != train_kept
    assert torch.equal(after['kept.in_proj.weight'], before['kept.in_proj.weight']) != train_kept
    assert not torch.equal(after['mixer.in_proj.weight'], before['mixer.in_proj.weight'])

def test_per_head_bad_input(gqa_teacher, teachers):
    with pytest.raises(SsmDistillError, match=r'attention_heads\[1\]=\[4\].*0\.\.3'): build_student(gqa_teacher, attention_heads={1: [4]})
    with pytest.raises(SsmDistillError, match='keeps all 4 heads'): build_student(gqa_teacher, attention_heads={1: [0, 1, 2, 3]})
    with pytest.raises(SsmDistillError, match='not both'): build_student(gqa_teacher, attention_layers=[1], attention_heads={1: [0]})
    with pytest.raises(SsmDistillError, match='out of range'): build_student(gqa_teacher, attention_heads={2: [0]})
    with pytest.raises(SsmDistillError, match='sliding window'): build_student(teachers['mistral'], attention_heads={1: [0]})
    with pytest.raises(SsmDistillError, match='mha stage'): build_student(gqa_teacher, attention_heads={1: [0]}).capture_qkv(batch(8), 1)

def test_per_head_student_of_another_depth(gqa_teacher):
    t6 = tiny_teacher('llama', num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    s = build_student_from_config(t6, n_layers=2, mixer='gla', attention_heads={1: [0]})
    assert s.config.teacher_layers == [1, 3] and s.mixer_heads(1) == [1, 2, 3]
    w = t6.attention_weights(3)
    torch.testing.assert_close(s.mixer(1).kept.in_proj.weight[:8], w.wq[:8])
