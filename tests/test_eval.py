"""Evaluation: the distillation metrics of saved students, lm-eval through its own HFLM on the packaged offline tasks
(checked against a direct computation with the model), and `ssm-distill eval --tasks` for a teacher and a student."""
import json

import pytest
import torch

from ssm_distill.builtin import load_builtin_teacher
from ssm_distill.cli import main
from ssm_distill.core import SsmDistillError
from ssm_distill.eval import (LOCAL_TASKS, check_eval_request, comparable_layers, compare_students, direct_scores, distill_metrics,
                              eval_blocks, eval_report, layer_errors, lm_eval_table, lm_eval_task_names, results_table, run_lm_eval)
from ssm_distill.losses import hidden_state_alignment_loss
from ssm_distill.students import build_student, build_student_from_config
from ssm_distill.teachers import load_teacher
from ssm_distill.stages import teacher_rotary
from ssm_distill.train import Distiller, save_tiny_teacher, tiny_run_config

lm_eval = pytest.importorskip('lm_eval', reason='lm-eval is the [eval] extra')


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def builtin():
    model, tok = load_builtin_teacher()
    return load_teacher(model), tok


@pytest.fixture(scope='module')
def blocks(builtin):
    return eval_blocks('builtin', builtin[1], seq_len=48, max_blocks=3)


def test_lm_eval_scores_equal_the_direct_computation(builtin, capsys):
    "Every local task through lm-eval's HFLM scores what the model computes directly, for the teacher and its student."
    teacher, tok = builtin
    torch.manual_seed(0)
    models = {'teacher': (teacher, tok), 'phi_mamba': (build_student(teacher, 'phi_mamba'), tok)}
    scores = run_lm_eval(models, list(LOCAL_TASKS), limit=8)
    for name, (m, _) in models.items():
        for task in LOCAL_TASKS:
            direct = direct_scores(m, tok, task, limit=8)
            assert direct and set(direct) <= set(scores[name][task])
            for k, v in direct.items(): assert scores[name][task][k] == pytest.approx(v, rel=1e-4), (name, task, k)
    table = lm_eval_table(scores)
    print(table)
    assert table.splitlines()[0].split()[-2:] == ['teacher', 'phi_mamba']
    # the two models are not the same model: some score differs
    assert any(scores['teacher'][t] != scores['phi_mamba'][t] for t in LOCAL_TASKS)


def test_layer_errors_follow_the_teacher_layer_map(builtin, blocks):
    "A 2-layer student copied from teacher layers [1, 3] is compared with those layers (MOHAWK stage 2's loss)."
    teacher, _ = builtin
    st = build_student_from_config(teacher, n_layers=2, teacher_layers=[1, 3], mixer='phi_mamba')
    res = distill_metrics(st, teacher, blocks, name='half-depth')
    cap = teacher.capture(blocks, layers=[3], what={'attn_in', 'attn_out'})
    with torch.no_grad():
        want, _ = hidden_state_alignment_loss(st.run_mixer(1, cap.attn_in[3], rotary=teacher_rotary(teacher, blocks)), cap.attn_out[3])
    assert sorted(res.hidden_error) == [0, 1] and res.hidden_error[1] == pytest.approx(want.item(), rel=1e-4)
    assert len(res.mixing_error[1]) == teacher.n_heads


def test_hybrid_and_unmeasurable_students(builtin, blocks):
    "A hybrid's kept attention layer has no mixer error; a wider student has no layer errors and says why."
    teacher, _ = builtin
    hyb = distill_metrics(build_student(teacher, 'gla', attention_layers=[2]), teacher, blocks, name='hybrid')
    assert sorted(hyb.hidden_error) == [0, 1, 3]
    wide = build_student_from_config(teacher, hidden_size=2 * teacher.config.hidden_size, mixer='gla')
    res = distill_metrics(wide, teacher, blocks, name='wide')
    assert res.hidden_error == {} and any('width' in n for n in res.notes)
    table = results_table([hyb, res])
    assert 'hidden error L2' not in table and 'wide: student width' in table


def test_eval_cli_offline_with_a_local_task(builtin, tmp_path, capsys):
    "`ssm-distill eval --student DIR --teacher builtin --tasks <local task>`: the table, then teacher and student scores."
    teacher, tok = builtin
    for name, mixer in (('demo', 'phi_mamba'), ('gla', 'gla')):
        s = build_student(teacher, mixer)
        s.save_pretrained(tmp_path/name/'student'); tok.save_pretrained(tmp_path/name/'student')
    argv = ['eval', '--student', str(tmp_path/'demo'/'student'), str(tmp_path/'gla'/'student'), '--teacher', 'builtin',
            '--seq-len', '48', '--max-blocks', '2', '--tasks', 'ssm_next_word,ssm_docstring_choice', '--limit', '3',
            '--out', str(tmp_path/'ev')]
    assert main(argv) == 0
    out = capsys.readouterr().out
    header = next(l for l in out.splitlines() if l.startswith('metric'))
    assert header.split()[1:] == ['teacher', 'demo', 'gla']
    assert 'exact_match,first_word' in out and 'acc_norm' in out
    res = json.loads((tmp_path/'ev'/'eval.json').read_text())
    assert set(res['lm_eval']) == {'teacher', 'demo', 'gla'} and set(res['lm_eval']['demo']) == {'ssm_next_word', 'ssm_docstring_choice'}


def test_unknown_local_task_is_a_clean_error(builtin):
    with pytest.raises(SsmDistillError, match='not a local task'):
        direct_scores(builtin[0], builtin[1], 'lambada')


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    "A finished tiny run (seconds): <root>/run/report.json beside <root>/run/student, and its teacher at <root>/teacher."
    root = tmp_path_factory.mktemp('tiny')
    rep = Distiller(tiny_run_config(save_tiny_teacher(root/'teacher'), out=root/'run'), progress=False).run()
    return root, rep


def _refused(*args, **kw) -> str:
    with pytest.raises(SsmDistillError) as e: check_eval_request(*args, **kw)
    assert '\n' not in str(e.value), str(e.value)
    return str(e.value)


def test_eval_request_is_checked_before_any_model_loads(tiny_run, monkeypatch):
    "A teacher folder, a run folder, a task-name typo, limit=0 and a missing [eval] extra: one line each, in well under a second."
    import time
    root, _ = tiny_run
    student = root/'run'/'student'
    lm_eval_task_names()   # lm-eval's task index: built once per lm-eval version (seconds), then read from the cache
    t0 = time.perf_counter()
    check_eval_request([student], ['ssm_next_word', 'lambada_openai'], limit=5)
    check_eval_request([student], None, limit=0.5)
    msg = _refused([root/'teacher'])
    assert str(root/'teacher') in msg and "a 'llama' model, not a saved student" in msg and 'config.json' in msg
    assert 'a run folder? its student is' in _refused([root/'run'])
    assert "did you mean ['ssm_next_word'" in _refused([student], ['ssm_nope'])
    msg = _refused([student], ['hellaswg'])
    assert "did you mean ['hellaswag'" in msg and 'ssm_last_word' in msg
    for bad in (0, -1, 1.5, True): assert f'limit={bad!r}' in _refused([student], limit=bad)
    assert time.perf_counter() - t0 < 1
    import ssm_distill.eval as ev
    monkeypatch.setattr(ev.importlib.util, 'find_spec', lambda name, *a: None if name == 'lm_eval' else importlib_find(name, *a))
    assert "pip install 'ssm_distill[eval]'" in _refused([student], ['ssm_next_word'])
    check_eval_request([student])   # without tasks, lm-eval is not needed


def importlib_find(name, *a):
    import importlib.machinery
    return importlib.machinery.PathFinder.find_spec(name, *a)


def test_compare_students_refuses_before_loading(tiny_run):
    root, _ = tiny_run
    with pytest.raises(SsmDistillError, match='not a saved student'): compare_students([root/'teacher'], teacher=str(root/'teacher'))
    with pytest.raises(SsmDistillError, match="unknown lm-eval task 'ssm_nope'"): compare_students([root/'run'/'student'], tasks=['ssm_nope'])


def test_eval_of_a_run_student_reproduces_its_report(tiny_run):
    "With no data settings given, eval measures a run's student on the run's own held-out blocks: the report's perplexity."
    root, rep = tiny_run
    res = compare_students([root/'run'/'student'], teacher=str(root/'teacher'))
    m = res['metrics'][0]
    assert m['perplexity'] == pytest.approx(rep['student_perplexity'], rel=1e-5)
    assert m['teacher_perplexity'] == pytest.approx(rep['teacher_perplexity'], rel=1e-5)
    s = res['data_settings']
    assert (s['seq_len'], s['eval_blocks'], s['max_tokens'], res['blocks']) == (32, 4, 30_000, rep['data']['eval_blocks'])
    assert str(root/'run'/'report.json') in s['origin'] and 'held-out data: source=builtin, seq_len=32' in eval_report(res)
    given = compare_students([root/'run'/'student'], data='builtin', seq_len=48, max_blocks=3)
    assert given['data_settings']['origin'] == 'given' and (given['seq_len'], given['blocks']) == (48, 3)
    assert given['metrics'][0]['perplexity'] != pytest.approx(rep['student_perplexity'], rel=1e-5)   # other blocks, another number


def test_students_of_runs_with_other_data_are_refused_together(tiny_run, tmp_path):
    "Two runs that held out different data cannot share one table unless the caller names the data."
    import json, shutil
    root, _ = tiny_run
    shutil.copytree(root/'run'/'student', tmp_path/'other'/'student')
    rep = json.loads((root/'run'/'report.json').read_text()); rep['config']['data']['seq_len'] = 16
    (tmp_path/'other'/'report.json').write_text(json.dumps(rep))
    with pytest.raises(SsmDistillError, match='different data settings'):
        compare_students([root/'run'/'student', tmp_path/'other'/'student'])
    res = compare_students([root/'run'/'student', tmp_path/'other'/'student'], data='builtin', seq_len=32, max_blocks=2)
    assert res['blocks'] == 2 and len(res['metrics']) == 2


def test_a_transformers_model_is_measured_as_its_teacher(builtin, blocks):
    "distill_metrics, comparable_layers and layer_errors take the LlamaForCausalLM itself (routed through load_teacher)."
    teacher, _ = builtin
    assert type(teacher.model).__name__ == 'LlamaForCausalLM'
    st = build_student(teacher, 'phi_mamba')
    a, b = distill_metrics(st, teacher.model, blocks, name='s'), distill_metrics(st, teacher, blocks, name='s')
    assert (a.hidden_error, a.mixing_error, a.agreement, a.kl) == (b.hidden_error, b.mixing_error, b.agreement, b.kl)
    assert comparable_layers(st, teacher.model) == comparable_layers(st, teacher)
    cap = teacher.capture(blocks[:1], layers=[0], what={'attn_in', 'attn_out', 'attn_probs'})
    with torch.no_grad():
        got, want = (layer_errors(st, t, cap, blocks[:1], [0])[0] for t in (teacher.model, teacher))
    for k in want: torch.testing.assert_close(got[k], want[k])
