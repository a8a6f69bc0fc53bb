"Tests of ssm_distill.train beyond the notebook: config errors, a full tiny run, exact resume, NaN, 2 processes."
import json, os, shutil, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssm_distill.core import SsmDistillError
from ssm_distill.callbacks import Callback, StopAfter
from ssm_distill.checkpoints import latest_checkpoint, read_checkpoint_state
from ssm_distill.config import ConfigError, load_config, stage_steps, validate_for_teacher
from ssm_distill.train import Distiller, NonFiniteLossError, save_tiny_teacher, tiny_run_config


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
    return save_tiny_teacher(tmp_path_factory.mktemp('teacher'))


@pytest.fixture(scope='module')
def full_run(teacher_dir, tmp_path_factory):
    "One uninterrupted 3-stage tiny run, shared by the tests that compare against it."
    out = tmp_path_factory.mktemp('full')
    cfg = tiny_run_config(teacher_dir, out)
    return cfg, Distiller(cfg, progress=False).run(), out


def _weights(out):
    return load_file(str(Path(out)/'student'/'model.safetensors'))


# ---- config validation: every error names the key path
@pytest.mark.parametrize('cfg, where', [
    ({'total_tokens': 10**6, 'stages': [{'kind': 'kd'}, {'kind': 'kd', 'lr': 'fast'}]}, 'stages[1].lr'),
    ({'total_tokens': 10**6, 'stages': [{'kind': 'kd', 'lr': -1.0}]}, 'stages[0].lr'),
    ({'total_tokens': 10**6, 'stages': [{'kind': 'kd', 'temprature': 2.0}]}, "did you mean 'temperature'"),
    ({'total_tokens': 10**6, 'stages': [{'kind': 'matrix_orientaton'}]}, 'stages[0]: unknown stage kind'),
    ({'total_tokens': 10**6, 'student': {'mixer': 'mamba3'}}, "unknown mixer 'mamba3'"),
    ({'total_tokens': 10**6, 'studnet': {}}, "studnet: unknown key; did you mean 'student'"),
    ({'total_tokens': 10**6, 'data': {'seq_len': 'long'}}, 'data.seq_len: expected int'),
    ({'total_tokens': 10**6, 'data': {'batch_size': 0}}, 'data.batch_size=0'),
    ({'stages': [{'kind': 'kd', 'tokens': 100}]}, 'stages[0].tokens: the budget of stage 0 (kd) is 100 tokens'),
    ({'stages': [{'kind': 'kd'}]}, 'stages[0].tokens: stage 0 (kd) has no token budget'),
    ({'total_tokens': 10**6, 'stages': [{'kind': 'kd', 'trainable': ['mixer']}]}, "unknown parameter group 'mixer'"),
    ({'total_tokens': 10**6, 'stages': [{'kind': 'kd', 'layers': [0]}]},
     "stages[0].layers: kd takes no option 'layers' (matrix_orientation, hidden_state_alignment take it)"),
    ({'total_tokens': 10**6, 'stages': [{'kind': 'od', 'options': {'hard_weight': 1.0}}]}, "stages[0].hard_weight: od takes no option"),
    ({'total_tokens': 10**6, 'teacher': '/no/such/teacher'}, 'teacher: the folder /no/such/teacher does not exist'),
    ({'total_tokens': 10**6, 'stages': [{'kind': 'matrix_orientation'}], 'student': {'mixer': 'deltanet_x'}}, "unknown mixer 'deltanet_x'"),
    ({'total_tokens': 10**6, 'stages': [{'kind': 'hs', 'layer_map': 'zigzag'}]}, 'stages[0].layer_map'),
    ({'total_tokens': 10**6, 'device': 'cpu', 'mixed_precision': 'fp16'}, "mixed_precision='fp16' needs a CUDA"),
    ({'total_tokens': 10**6, 'log_with': ['mlflow']}, "log_with: unknown tracker 'mlflow'"),
    ({'total_tokens': 10**6, 'data': {'source': 'hub', 'name': 'parquet', 'streaming': True}}, 'data.eval_blocks: a streamed split'),
    ({'total_tokens': 10**6, 'data': {'shuffle_buffer': -1}}, 'data.shuffle_buffer=-1'),
])
def test_config_errors_name_the_key(cfg, where):
    with pytest.raises(SsmDistillError, match=None) as e: load_config(cfg)
    assert where in str(e.value), str(e.value)


def test_config_errors_that_need_the_teacher():
    "The built-in teacher's sizes are read from its config.json, so these are refused by load_config, before any model loads."
    with pytest.raises(SsmDistillError, match=r'student.attention_layers: \[7\] out of range; the student has 4 layers'):
        load_config({'total_tokens': 10**6, 'student': {'attention_layers': [1, 7]}})
    with pytest.raises(SsmDistillError, match=r'stages\[0\].layers: \[1\] are not mixer layers'):
        load_config({'total_tokens': 10**6, 'student': {'attention_layers': [1]},
                     'stages': [{'kind': 'matrix_orientation', 'layers': [1]}, {'kind': 'kd'}]})
    cfg = load_config({'total_tokens': 10**6, 'student': {'attention_layers': [1, 3]}})
    with pytest.raises(SsmDistillError, match=r'student.attention_layers: \[3\] out of range; the student has 3 layers'):
        validate_for_teacher(cfg, 3)


def test_every_problem_is_reported_at_once():
    "Type errors, class rules, options of other kinds and cross-key checks, each with its key path, in one error."
    bad = {'studnet': {}, 'seed': 'x', 'stages': [{'kind': 'kd', 'lr': -1.0, 'grad_accum': 0, 'layers': [0]},
                                                  {'kind': 'hs', 'layer_map': 'zigzag'}]}
    with pytest.raises(ConfigError) as e: load_config(bad)
    heads = sorted(p.split(':')[0].split('=')[0] for p in e.value.problems)
    assert heads == ['seed', 'stages[0].grad_accum', 'stages[0].layers', 'stages[0].lr', 'stages[1].layer_map', 'studnet'], e.value.problems
    assert str(e.value).startswith('6 problems in the run config:')
    with pytest.raises(ConfigError) as e:   # parsed fine: the cross-key checks report together too
        load_config({'teacher': '/no/such/teacher', 'log_with': ['mlflow'], 'stages': [{'kind': 'kd'}, {'kind': 'kd', 'tokens': 10}]})
    assert len(e.value.problems) == 4, e.value.problems


def test_teacher_resolved_up_front(tmp_path, monkeypatch):
    "A folder without config.json, a missing folder, and a hub name that is not cached while offline: refused before any work."
    (tmp_path/'empty').mkdir()
    with pytest.raises(SsmDistillError, match='has no config.json'): load_config({'total_tokens': 10**6, 'teacher': str(tmp_path/'empty')})
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path/'cache'))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, 'HF_HUB_CACHE', str(tmp_path/'cache'))
    with pytest.raises(SsmDistillError, match=r"teacher: 'someone/not-cached' is not a folder and not in the Hugging Face cache, and the hub is offline"):
        Distiller({'total_tokens': 10**6, 'teacher': 'someone/not-cached'})
    monkeypatch.setenv('HF_HUB_OFFLINE', '0')
    load_config({'total_tokens': 10**6, 'teacher': 'someone/not-cached'})   # online: it would be downloaded


def test_config_from_yaml_file(tmp_path):
    p = tmp_path/'run.yaml'
    p.write_text('teacher: builtin\ntotal_tokens: 3000000\ndata:\n  seq_len: 100\n  batch_size: 10\n')
    cfg = load_config(p)
    assert [s.kind for s in cfg.stages] == ['matrix_orientation', 'hidden_state_alignment', 'kd']
    assert stage_steps(cfg) == [80, 160, 2760]   # MOHAWK's 80M / 160M / 2.76B split
    p.write_text('stages:\n  - kind: kd\n    tokens: 1000000\n    lr: [1]\n')
    with pytest.raises(SsmDistillError, match=r'stages\[0\].lr: expected float'): load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(SsmDistillError, match='config file .*nope.yaml does not exist'): load_config(tmp_path/'nope.yaml')
    with pytest.raises(SsmDistillError, match='config file .*nope.yaml does not exist'): load_config(str(tmp_path/'nope.yaml'))


def test_config_errors_before_any_work(teacher_dir, tmp_path):
    "A bad config fails in Distiller(...) at once, before the teacher or the data are touched."
    t0 = time.time()
    with pytest.raises(SsmDistillError, match=r'stages\[2\].grad_accum'):
        Distiller({**_tiny_dict(teacher_dir, tmp_path), 'stages': [{'kind': 'kd', 'tokens': 512}] * 2 + [{'kind': 'kd', 'grad_accum': 0}]})
    assert time.time() - t0 < 2 and not (tmp_path/'run'/'metrics.jsonl').exists()


def _tiny_dict(teacher_dir, tmp_path):
    from dataclasses import asdict
    return asdict(tiny_run_config(teacher_dir, tmp_path/'run'))


# ---- a full 3-stage run
def test_three_stage_run_writes_everything(full_run):
    cfg, rep, out = full_run
    assert rep['status'] == 'finished'
    assert [s['kind'] for s in rep['stages']] == ['matrix_orientation', 'hidden_state_alignment', 'kd']
    for k in ('teacher_perplexity', 'student_perplexity', 'teacher_agreement', 'wall_s', 'tokens_per_s'):
        assert isinstance(rep[k], float) and rep[k] >= 0, k
    assert list(rep['tokens_per_stage'].values()) == [512, 512, 2048]
    saved = json.loads((out/'report.json').read_text())
    assert saved['final_losses'] == rep['final_losses']
    recs = [json.loads(l) for l in (out/'metrics.jsonl').read_text().splitlines()]
    steps = [r for r in recs if r['event'] == 'step']
    assert len(steps) == sum(stage_steps(cfg)) and [r['global_step'] for r in steps] == list(range(1, len(steps) + 1))
    assert {'loss', 'lr', 'tokens', 'tokens_per_s', 'stage', 'kind'} <= set(steps[0])
    assert sum(r['event'] == 'eval' for r in recs) == 3
    assert all(torch.isfinite(torch.tensor(r['loss'])) for r in steps)
    ck = latest_checkpoint(out)
    state, _ = read_checkpoint_state(ck)
    assert state.stage == 3 and state.global_step == len(steps)
    import ssm_distill.students  # noqa: F401  (registers the student with the Auto classes)
    from transformers import AutoModelForCausalLM
    st = AutoModelForCausalLM.from_pretrained(out/'student')
    w = _weights(out)
    assert all(torch.equal(st.state_dict()[k], w[k]) for k in w)


def test_stage_one_trains_mixers_only(full_run, teacher_dir):
    "After stage 1, only mixer parameters differ from the freshly built student."
    cfg, _, out = full_run
    from ssm_distill.students import build_student
    from ssm_distill.train import load_run_teacher
    from ssm_distill.students import STUDENT_GROUPS
    teacher, _ = load_run_teacher(str(teacher_dir))
    torch.manual_seed(cfg.seed)
    fresh = build_student(teacher, mixer=cfg.student.mixer, init=cfg.student.init)
    mixers = {n for n, p in fresh.named_parameters() if id(p) in STUDENT_GROUPS['mixers'](fresh)}
    d = Distiller(tiny_run_config(teacher_dir, out.parent/'s1', stages=[dict(kind='matrix_orientation', tokens=512, lr=1e-2)]), progress=False)
    d.run()
    after = d.student.state_dict(); before = fresh.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= mixers


# ---- exact resume
def test_resume_equals_uninterrupted(full_run, teacher_dir, tmp_path):
    cfg, rep, out = full_run
    cfg2 = tiny_run_config(teacher_dir, tmp_path/'run')
    stopped = Distiller(cfg2, progress=False).run(max_steps=6)      # stops inside stage 2
    assert stopped['status'] == 'stopped' and stopped['state']['stage'] == 1 and stopped['state']['step'] == 2
    stopped = Distiller(cfg2, [StopAfter(12)], progress=False).run(resume=True)   # and inside stage 3
    assert stopped['status'] == 'stopped' and stopped['state']['stage'] == 2 and stopped['state']['step'] == 4
    rep2 = Distiller(cfg2, progress=False).run(resume=True)
    a, b = _weights(out), _weights(tmp_path/'run')
    assert sorted(a) == sorted(b) and [k for k in a if not torch.equal(a[k], b[k])] == []
    assert rep2['final_losses'] == rep['final_losses']
    steps = [json.loads(l) for l in (tmp_path/'run'/'metrics.jsonl').read_text().splitlines()]
    steps = [r for r in steps if r['event'] == 'step']
    assert [r['global_step'] for r in steps] == list(range(1, sum(stage_steps(cfg)) + 1))   # no step logged twice


def test_resume_with_another_config_is_refused(full_run, teacher_dir):
    _, _, out = full_run
    other = tiny_run_config(teacher_dir, out, stages=[dict(kind='kd', lr=1e-4)])
    with pytest.raises(SsmDistillError, match='different run config'): Distiller(other, progress=False).run(resume=True)


# ---- NaN
class _Poison(Callback):
    def __init__(self, at): self.at = at
    def on_step_end(self, d, m):
        if m['global_step'] == self.at:
            with torch.no_grad():
                for p in d.student.parameters():
                    if p.requires_grad: p.fill_(float('nan'))


def test_nan_stops_and_keeps_the_last_good_checkpoint(teacher_dir, tmp_path):
    cfg = tiny_run_config(teacher_dir, tmp_path/'run', checkpoint_every=1)
    # a step's callbacks run before its checkpoint (its record first), so the poisoned step 10 writes none: 9 is the last good
    with pytest.raises(NonFiniteLossError, match=r'became nan in stage 3 \(kd\) at step 3.*last good checkpoint is .*ckpt-00000009'):
        Distiller(cfg, [_Poison(10)], progress=False).run()
    ck = latest_checkpoint(tmp_path/'run')
    assert ck.name.startswith('ckpt-00000009')
    assert not list((tmp_path/'run'/'checkpoints').glob('.tmp-*'))
    w = load_file(str(ck/'model.safetensors'))
    assert all(torch.isfinite(v).all() for v in w.values())
    # ... and the run resumes from it (finishing, since the poison is gone)
    rep = Distiller(cfg, progress=False).run(resume=True)
    assert rep['status'] == 'finished'


def test_interrupted_checkpoint_write_is_ignored(full_run, tmp_path):
    "A half-written checkpoint (a crash before the rename) is never picked up."
    _, _, out = full_run
    good = latest_checkpoint(out)
    half = out/'checkpoints'/'.tmp-ckpt-99999999-s0'
    half.mkdir(); (half/'model.safetensors').write_bytes(b'garbage')
    try: assert latest_checkpoint(out) == good
    finally: shutil.rmtree(half)


# ---- two processes (gloo, CPU) agree with one
SCRIPT = textwrap.dedent("""
    import sys, json
    from ssm_distill.train import Distiller, tiny_run_config
    teacher, out = sys.argv[1:3]
    cfg = tiny_run_config(teacher, out, stages=[dict(kind='matrix_orientation', tokens=512, lr=1e-2), dict(kind='kd', lr=3e-3, tokens=1536)])
    rep = Distiller(cfg, progress=False).run()
    if rep['processes'] and __import__('accelerate').PartialState().is_main_process:
        json.dump(dict(processes=rep['processes'], final_losses=rep['final_losses']), open(out + '/summary.json', 'w'))
""")


def _launch(script:str, n:int, out, *args) -> tuple[dict, dict]:
    "Run `script` (writing `summary.json` to `out`) under `accelerate launch` with `n` CPU processes; its summary and the student's weights."
    path = out.parent/f'{out.name}.py'; path.write_text(script)
    cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--num_machines', '1', '--mixed_precision', 'no',
           '--dynamo_backend', 'no', '--num_processes', str(n)] + (['--multi_gpu'] if n > 1 else ['--cpu'])
    r = subprocess.run(cmd + [str(path), *map(str, args[:1]), str(out), *map(str, args[1:])], capture_output=True, text=True,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out/'summary.json').read_text()), _weights(out)


def test_two_processes_agree_with_one(teacher_dir, tmp_path):
    runs = {n: _launch(SCRIPT, n, tmp_path/f'p{n}', teacher_dir) for n in (1, 2)}
    assert runs[1][0]['processes'] == 1 and runs[2][0]['processes'] == 2
    for k, v in runs[1][0]['final_losses'].items(): assert abs(v - runs[2][0]['final_losses'][k]) < 1e-4 * max(1, abs(v))
    w1, w2 = runs[1][1], runs[2][1]
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-3


# ---- task-agnostic transfers (Udagawa et al. 2023) run end to end
@pytest.mark.parametrize('stage', [
    {'kind': 'od', 'temperature': 2.0},
    {'kind': 'hs', 'layer_map': 'uniform_consecutive'},
    {'kind': 'mha', 'relation_heads': 4},
    {'kind': 'direct_minilm'},
])
def test_task_agnostic_stage_runs(stage, teacher_dir, tmp_path):
    "Each task-agnostic stage trains a few steps with a finite loss and writes a reloadable student."
    cfg = {**_tiny_dict(teacher_dir, tmp_path), 'stages': [{**stage, 'tokens': 512}]}
    rep = Distiller(cfg, progress=False).run()
    assert rep['status'] == 'finished' and [s['kind'] for s in rep['stages']] == [stage['kind']]
    losses = [json.loads(l)['loss'] for l in (tmp_path/'run'/'metrics.jsonl').read_text().splitlines()
              if json.loads(l)['event'] == 'step']
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert (tmp_path/'run'/'student'/'model.safetensors').exists()


# ---- students of another size, from the run config
def test_resized_student_config_errors():
    base = {'total_tokens': 10**6}
    for student, where in [({'n_layers': 0}, 'n_layers=0'), ({'n_layers': 2, 'teacher_layers': [0]}, 'teacher_layers has 1 entries'),
                           ({'teacher_layers': 'last'}, 'teacher_layers'), ({'hidden_size': True}, 'hidden_size')]:
        with pytest.raises(SsmDistillError) as e: load_config({**base, 'student': student})
        assert where in str(e.value), str(e.value)
    sizes = dict(hidden_size=32, n_heads=2, intermediate_size=64)
    with pytest.raises(SsmDistillError, match=r"student.init='qkv_copy' copies .* hidden_size=32; use init: random"):
        validate_for_teacher(load_config({**base, 'student': {'hidden_size': 16}}, check_teacher=False), 2, sizes)
    with pytest.raises(SsmDistillError, match=r"stages\[0\]: matrix_orientation aligns each student layer .* hidden_size differ"):
        validate_for_teacher(load_config({**base, 'student': {'hidden_size': 16, 'init': 'random'}}, check_teacher=False), 2, sizes)
    with pytest.raises(SsmDistillError, match=r'student.n_layers: .*give teacher_layers explicitly'):
        validate_for_teacher(load_config({**base, 'student': {'n_layers': 3}}, check_teacher=False), 2, sizes)
    with pytest.raises(SsmDistillError, match=r'student.teacher_layers: \[5\] out of range'):
        validate_for_teacher(load_config({**base, 'student': {'teacher_layers': [5]}}, check_teacher=False), 2, sizes)
    with pytest.raises(SsmDistillError, match=r'repeats a teacher layer'):
        validate_for_teacher(load_config({**base, 'student': {'teacher_layers': [1, 1]}}, check_teacher=False), 2, sizes)
    # a deeper student with explicit teacher layers is fine for logit stages
    validate_for_teacher(load_config({**base, 'student': {'teacher_layers': [0, 0, 1]}, 'stages': [{'kind': 'kd'}]}, check_teacher=False), 2, sizes)


def test_shallower_student_aligns_with_its_teacher_layers(teacher_dir, tmp_path):
    "A 1-layer student of the 2-layer teacher copies teacher layer 1 and stages 1-2 align it with teacher layer 1."
    cfg = {**_tiny_dict(teacher_dir, tmp_path), 'student': {'mixer': 'phi_mamba', 'n_layers': 1}}
    d = Distiller(cfg, progress=False); d.prepare()
    assert d.student.config.base_config['num_hidden_layers'] == 1 and d.student.config.teacher_layers == [1] and d.layer_map == {0: 1}
    ids = d.data.train[:2]
    t = d.cfg.stages[0].stage.targets(d.teacher, ids, {0: d.layer_map[0]})   # the stage's own teacher targets
    cap = d.teacher.capture(ids, layers=[1], what={'attn_in', 'attn_probs'})
    torch.testing.assert_close(t['M'][0], cap.attn_probs[1]); torch.testing.assert_close(t['x'][0], cap.attn_in[1])
    rep = Distiller(cfg, progress=False).run()
    assert rep['status'] == 'finished' and all(torch.isfinite(torch.tensor(s['final_loss'])) for s in rep['stages'])


def test_narrower_student_runs_task_agnostic_stages(teacher_dir, tmp_path):
    "Half the teacher's width, one layer, random init: OD, then HS and DirectMiniLM with learned projections; resume is exact."
    cfg = {**_tiny_dict(teacher_dir, tmp_path), 'student': {'mixer': 'gla', 'n_layers': 1, 'hidden_size': 16, 'init': 'random'},
           'stages': [{'kind': 'od', 'tokens': 512, 'temperature': 2.0}, {'kind': 'hs', 'tokens': 1024, 'layer_map': 'uniform_consecutive'},
                      {'kind': 'direct_minilm', 'tokens': 512}]}
    rep = Distiller(cfg, progress=False).run()
    assert rep['status'] == 'finished' and [s['kind'] for s in rep['stages']] == ['od', 'hs', 'direct_minilm']
    from transformers import AutoConfig
    c = AutoConfig.from_pretrained(tmp_path/'run'/'student')
    assert c.base_config['hidden_size'] == 16 and c.base_config['num_hidden_layers'] == 1
    # stop inside the HS stage: its projections are checkpointed with the optimizer, and the resumed run ends where this one did
    cfg2 = {**cfg, 'out': str(tmp_path/'run2')}
    stopped = Distiller(cfg2, progress=False).run(max_steps=6)
    assert stopped['status'] == 'stopped' and stopped['state']['stage'] == 1
    assert (latest_checkpoint(tmp_path/'run2')/'stage_aux.safetensors').exists()
    rep2 = Distiller(cfg2, progress=False).run(resume=True)
    assert rep2['final_losses'] == rep['final_losses']
    a, b = _weights(tmp_path/'run'), _weights(tmp_path/'run2')
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# ---- the event stream, pause and stop from another thread
def test_stop_while_paused_checkpoints_and_resumes_exactly(full_run, teacher_dir, tmp_path):
    "Pause from outside, stop while paused: a checkpoint and a loadable student; run() then continues to the same weights."
    import threading
    _, rep, out = full_run
    seen, at3 = [], threading.Event()
    class Watch(Callback):
        def on_event(self, d, e):
            seen.append(e.name)
            if e.name == 'step' and e.step == 3: d.request_pause(); at3.set()
    d = Distiller(tiny_run_config(teacher_dir, tmp_path/'run'), [Watch()], progress=False)
    res = {}
    th = threading.Thread(target=lambda: res.update(d.run())); th.start()
    assert at3.wait(60)
    for _ in range(200):
        if d.paused: break
        time.sleep(0.05)
    assert d.paused and d.state.global_step == 3
    d.request_stop(); th.join(60)
    assert res['status'] == 'stopped' and seen[-2:] == ['paused', 'stopped'] and not d.paused
    import ssm_distill.students  # noqa: F401
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(tmp_path/'run'/'student') is not None
    assert read_checkpoint_state(latest_checkpoint(tmp_path/'run'))[0].global_step == 3
    rep2 = d.run()                                   # the same Distiller continues from its checkpoint
    assert rep2['final_losses'] == rep['final_losses']
    a, b = _weights(out), _weights(tmp_path/'run')
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# ---- a streamed split: a local parquet file shaped like a hub dataset, read through load_dataset(..., streaming=True)
STREAM_STAGES = [dict(kind='matrix_orientation', lr=1e-2, tokens=512), dict(kind='hidden_state_alignment', lr=1e-2, tokens=512),
                 dict(kind='kd', lr=3e-3, tokens=10240)]   # 4 + 4 + 80 steps of 4 blocks: more than the file's ~280 training blocks



def _stream_cfg(teacher_dir, out, stream_file, **data) -> dict:
    from dataclasses import asdict
    d = asdict(tiny_run_config(teacher_dir, out, stages=STREAM_STAGES))
    d['data'] = dict(source='hub', name='parquet', data_files=str(stream_file), streaming=True, seq_len=32, batch_size=4,
                     eval_fraction=0.1, eval_blocks=4, shuffle_buffer=64, **data)
    return d


def _step_losses(out):
    recs = [json.loads(l) for l in (Path(out)/'metrics.jsonl').read_text().splitlines()]
    return [(r['global_step'], r['loss']) for r in recs if r['event'] == 'step']


@pytest.fixture(scope='module')
def stream_run(teacher_dir, stream_file, tmp_path_factory):
    "One uninterrupted streamed run (3 stages, 88 steps), the stream cycling once; its log lines."
    import logging
    out = tmp_path_factory.mktemp('stream-run')/'run'
    msgs, h = [], logging.Handler(); h.emit = lambda r: msgs.append(r.getMessage())
    lg = logging.getLogger('ssm_distill'); lg.addHandler(h); old = lg.level; lg.setLevel(logging.INFO)
    try: rep = Distiller(_stream_cfg(teacher_dir, out, stream_file), progress=False).run()
    finally: lg.removeHandler(h); lg.setLevel(old)
    return rep, out, msgs


def test_streamed_run_reads_one_stream_and_cycles(stream_run, teacher_dir, stream_file):
    "The report says what was streamed and how far; the stages read one stream in turn, which started again once; eval re-reads the held-out blocks."
    rep, out, msgs = stream_run
    assert rep['status'] == 'finished'
    d = rep['data']
    assert d['streaming'] is True and d['dataset'] == 'parquet' and d['split'] == 'train' and d['eval_blocks'] == 4
    assert d['stream']['epoch'] == 1 and d['stream']['train_blocks'] == 88 * 4 and d['stream']['train_tokens'] == rep['total_tokens']
    assert sum('epoch 1 reads it again from the start' in m for m in msgs) == 1, msgs
    assert json.loads((out/'report.json').read_text())['data'] == d
    from ssm_distill.data import StreamedData, build_data
    from ssm_distill.eval import eval_blocks, run_data_settings
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    data = build_data(load_config(_stream_cfg(teacher_dir, out, stream_file)).data, tok)
    assert isinstance(data, StreamedData)
    assert torch.equal(eval_blocks(run_data_settings(out/'student')[0], tok), data.eval.blocks)   # `ssm-distill eval` measures on them
    b = data.batches(None, 4, 88); list(b)   # the stages went on reading one stream: 88 batches of it, and the run's position is theirs
    assert b.position == read_checkpoint_state(latest_checkpoint(out))[0].stream


def test_streamed_run_resumes_exactly(stream_run, teacher_dir, stream_file, tmp_path):
    "Stopped inside stage 2, inside stage 3 and after the stream started again, each time resumed in a new Distiller:"
    "the same losses step for step and the same student, bit for bit."
    rep, out, _ = stream_run
    cfg = _stream_cfg(teacher_dir, tmp_path/'run', stream_file)
    s = Distiller(cfg, progress=False).run(max_steps=6)
    assert s['status'] == 'stopped' and s['state']['stage'] == 1 and s['state']['stream']['epoch'] == 0
    s = Distiller(cfg, [StopAfter(40)], progress=False).run(resume=True)
    assert s['status'] == 'stopped' and s['state']['stage'] == 2 and s['state']['stream']['epoch'] == 0
    s = Distiller(cfg, [StopAfter(80)], progress=False).run(resume=True)
    assert s['status'] == 'stopped' and s['state']['stream']['epoch'] == 1 and s['state']['stream']['carry']
    rep2 = Distiller(cfg, progress=False).run(resume=True)
    assert rep2['final_losses'] == rep['final_losses'] and rep2['data'] == rep['data']
    assert _step_losses(tmp_path/'run') == _step_losses(out)
    a, b = _weights(out), _weights(tmp_path/'run')
    assert sorted(a) == sorted(b) and [k for k in a if not torch.equal(a[k], b[k])] == []


def test_streamed_run_other_seed_other_order(stream_run, teacher_dir, stream_file, tmp_path):
    "data.seed reshuffles the stream (other losses), and keeps the held-out blocks."
    rep, _, _ = stream_run
    cfg = _stream_cfg(teacher_dir, tmp_path/'run', stream_file, seed=1)
    cfg['stages'] = STREAM_STAGES[:1]
    d = Distiller(cfg, progress=False)
    rep2 = d.run()
    assert rep2['final_losses']['1-matrix_orientation'] != rep['final_losses']['1-matrix_orientation']
    assert rep2['data']['eval_tokens'] == rep['data']['eval_tokens'] and rep2['teacher_perplexity'] == rep['teacher_perplexity']


STREAM_SCRIPT = textwrap.dedent("""
    import sys, json
    from dataclasses import asdict
    from ssm_distill.train import Distiller, tiny_run_config
    teacher, out, parquet = sys.argv[1:4]
    cfg = asdict(tiny_run_config(teacher, out, stages=[dict(kind='matrix_orientation', tokens=512, lr=1e-2), dict(kind='kd', lr=3e-3, tokens=1536)]))
    cfg['data'] = dict(source='hub', name='parquet', data_files=parquet, streaming=True, seq_len=32, batch_size=4,
                       eval_fraction=0.1, eval_blocks=4, shuffle_buffer=64)
    rep = Distiller(cfg, progress=False).run()
    if __import__('accelerate').PartialState().is_main_process:
        json.dump(dict(processes=rep['processes'], final_losses=rep['final_losses'], stream=rep['data']['stream']), open(out + '/summary.json', 'w'))
""")


def test_streamed_two_processes_agree_with_one(teacher_dir, stream_file, tmp_path):
    "Each of 2 processes packs the stream and trains on its half of every batch: the same training as 1 process."
    runs = {n: _launch(STREAM_SCRIPT, n, tmp_path/f'p{n}', teacher_dir, stream_file) for n in (1, 2)}
    assert runs[1][0]['processes'] == 1 and runs[2][0]['processes'] == 2 and runs[1][0]['stream'] == runs[2][0]['stream']
    for k, v in runs[1][0]['final_losses'].items(): assert abs(v - runs[2][0]['final_losses'][k]) < 1e-4 * max(1, abs(v))
    w1, w2 = runs[1][1], runs[2][1]
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-3


def test_resume_from_a_checkpoint_older_than_new_fields(full_run, teacher_dir, tmp_path):
    "A checkpoint written before a config field existed (here data.shuffle_buffer and parallel) resumes: it ran their defaults."
    from ssm_distill.checkpoints import latest_checkpoint, write_manifest
    _, rep, out = full_run
    cfg = tiny_run_config(teacher_dir, tmp_path/'run')
    Distiller(cfg, progress=False).run(max_steps=6)
    ck = latest_checkpoint(tmp_path/'run')
    st = json.loads((ck/'state.json').read_text())
    del st['config']['parallel'], st['config']['data']['shuffle_buffer']
    (ck/'state.json').write_text(json.dumps(st)); write_manifest(ck)
    rep2 = Distiller(cfg, progress=False).run(resume=True)
    assert rep2['final_losses'] == rep['final_losses']
    a, b = _weights(out), _weights(tmp_path/'run')
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
