"Tests of the `ssm-distill` command line: help, the example config, errors, distill/eval/demo wiring on a tiny teacher."
import json, subprocess, sys
from pathlib import Path

import pytest
import yaml

from ssm_distill.cli import main
from ssm_distill.config import load_config
from ssm_distill.demo import demo_config, run_demo
from ssm_distill.train import save_tiny_teacher, tiny_run_config


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
    return save_tiny_teacher(tmp_path_factory.mktemp('teacher'))


@pytest.mark.parametrize('argv', [[], ['demo'], ['distill'], ['teacher', 'train'], ['eval'], ['plan'], ['config']])
def test_help_explains_with_examples(argv, capsys):
    with pytest.raises(SystemExit) as e: main(argv + ['--help'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert 'usage: ssm-distill' in out and (argv == ['teacher', 'train'] or 'example' in out)


def test_example_config_is_the_demo_config_every_key_explained(capsys):
    "The printed config reads back as the demo's, key for key, and every line that sets a key carries an explanation."
    from dataclasses import asdict
    assert main(['config', '--example']) == 0
    printed = capsys.readouterr().out
    assert asdict(load_config(yaml.safe_load(printed))) == asdict(demo_config())
    keys = [l for l in printed.splitlines() if l.strip() and not l.lstrip().startswith('#')]
    assert len(keys) > 40 and all('  # ' in l and l.split('  # ')[1].strip() for l in keys), [l for l in keys if '  # ' not in l]


def test_config_error_is_one_line_exit_2(tmp_path, capsys):
    p = tmp_path/'run.yaml'
    p.write_text('total_tokens: 100000\nstages:\n  - kind: kd\n  - kind: kd\n    learning_rate: 0.1\n')
    assert main(['distill', '--config', str(p), '--out', str(tmp_path/'run')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'stages[1].learning_rate: unknown key' in err and 'Traceback' not in err
    assert not (tmp_path/'run').exists()   # validated before any work


def test_entry_point_has_no_traceback(tmp_path):
    p = tmp_path/'run.yaml'; p.write_text('teacher: builtin\nstudent: {mixer: mamba3}\ntotal_tokens: 1000000\n')
    exe = Path(sys.executable).parent/'ssm-distill'
    cmd = [str(exe)] if exe.exists() else [sys.executable, '-m', 'ssm_distill.cli']
    r = subprocess.run(cmd + ['distill', '--config', str(p)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and 'Traceback' not in r.stderr and "unknown mixer 'mamba3'" in r.stderr


def test_distill_then_eval(teacher_dir, tmp_path, capsys):
    cfg = tiny_run_config(teacher_dir, stages=[dict(kind='matrix_orientation', tokens=256, lr=1e-2), dict(kind='kd', tokens=512)])
    from dataclasses import asdict
    d = asdict(cfg); d.pop('out')
    (tmp_path/'run.yaml').write_text(yaml.safe_dump(d))
    out = tmp_path/'run'
    assert main(['distill', '--config', str(tmp_path/'run.yaml'), '--out', str(out), '--no-progress']) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary['run_folder'] == str(out) and summary['status'] == 'finished'
    for f in ('metrics.jsonl', 'report.json', 'student/config.json'): assert (out/f).exists(), f
    # --resume of a finished run only re-writes the report
    assert main(['distill', '--config', str(tmp_path/'run.yaml'), '--out', str(out), '--resume', '--no-progress']) == 0
    capsys.readouterr()
    assert main(['eval', '--student', str(out/'student'), '--teacher', str(teacher_dir), '--seq-len', '32',
                 '--max-blocks', '2', '--out', str(tmp_path/'ev'), '--json']) == 0
    res = json.loads(capsys.readouterr().out)
    m = res['metrics'][0]
    assert m['perplexity'] > 1 and m['teacher_perplexity'] > 1 and 0 <= m['agreement'] <= 1 and m['kl'] >= 0
    assert json.loads((tmp_path/'ev'/'eval.json').read_text())['metrics'] == res['metrics']


def test_eval_missing_student_is_a_clean_error(tmp_path, capsys):
    assert main(['eval', '--student', str(tmp_path/'nope'), '--out', str(tmp_path/'ev')]) == 2
    assert 'no config.json there' in capsys.readouterr().err


@pytest.mark.slow   # two tiny runs plus two report.html pages: over a minute on 2 shared cores
def test_demo_wiring_on_a_tiny_teacher(teacher_dir, tmp_path):
    "The demo's wiring (MOHAWK run, report.html, the KD-only comparison) on a tiny teacher and budget."
    rep = run_demo(tmp_path/'demo', total_tokens=1280, compare_kd_only=True, progress=False, teacher=str(teacher_dir),
                   seq_len=16, batch_size=2, max_tokens=10_000)
    out = tmp_path/'demo'
    assert [s['kind'] for s in rep['stages']] == ['matrix_orientation', 'hidden_state_alignment', 'kd']
    assert abs(rep['kd_only']['total_tokens'] - 1280) < 3 * 32 and 'student_perplexity' in rep['kd_only']
    for f in ('metrics.jsonl', 'report.json', 'student/config.json', 'kd_only/report.json'): assert (out/f).exists(), f
    try: import ssm_distill.viz  # noqa: F401
    except ImportError: return
    html = (out/'report.html').read_text()
    assert 'plotly' in html.lower() and 'mixing matrices' in html


@pytest.mark.slow
def test_teacher_train_tiny(tmp_path, capsys):
    assert main(['teacher', 'train', '--tiny', '--steps', '2', '--no-progress', '--out', str(tmp_path/'t')]) == 0
    assert (tmp_path/'t'/'config.json').exists()


def test_distill_check_prints_the_validated_config(tmp_path, capsys):
    "`distill --check` validates and prints the resolved config as YAML, without training."
    from ssm_distill.demo import example_config
    p = tmp_path/'run.yaml'; p.write_text(example_config())
    assert main(['distill', '--config', str(p), '--check', '--out', str(tmp_path/'run')]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed['teacher'] == 'builtin' and [s['kind'] for s in printed['stages']]
    assert not (tmp_path/'run'/'metrics.jsonl').exists()


def test_distill_a_shallower_student_from_yaml(teacher_dir, tmp_path, capsys):
    "`student: {n_layers: 1}` in the YAML: a 1-layer student of the 2-layer teacher, its report compares it with teacher layer 1."
    from dataclasses import asdict
    d = asdict(tiny_run_config(teacher_dir, stages=[dict(kind='matrix_orientation', tokens=256, lr=1e-2), dict(kind='kd', tokens=256)]))
    d.pop('out'); d['student'] = {'mixer': 'phi_mamba', 'n_layers': 1}
    (tmp_path/'run.yaml').write_text(yaml.safe_dump(d))
    out = tmp_path/'run'
    assert main(['distill', '--config', str(tmp_path/'run.yaml'), '--out', str(out), '--no-progress']) == 0
    assert json.loads(capsys.readouterr().out)['status'] == 'finished'
    assert json.loads((out/'student'/'config.json').read_text())['teacher_layers'] == [1]
    assert 'layer 0: mixing matrices (teacher layer 1)' in (out/'report.html').read_text()


def test_plan_prints_a_table_per_stage(tmp_path, capsys):
    "`ssm-distill plan` reads a config file and prints one row per stage and a total, for the GPUs asked for."
    p = tmp_path/'run.yaml'
    p.write_text('teacher: HuggingFaceTB/SmolLM2-135M\ntotal_tokens: 100000000\ndata: {seq_len: 1024, batch_size: 8}\n')
    assert main(['plan', str(p), '--gpus', '8', '--gpu', 'a100']) == 0
    out = capsys.readouterr().out
    rows = [l.split()[0] for l in out.splitlines() if l.split() and l.split()[0] in
            ('1-matrix_orientation', '2-hidden_state_alignment', '3-kd', 'total')]
    assert rows == ['1-matrix_orientation', '2-hidden_state_alignment', '3-kd', 'total']
    assert '8 x NVIDIA A100' in out and 'GPU-h' in out
    assert main(['plan', str(p), '--gpus', '8', '--gpu', 'a100', '--json']) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan['gpus'] == 8 and len(plan['stages']) == 3 and plan['gpu_hours'] > 0
    assert sum(s['tokens'] for s in plan['stages']) <= 100_000_000


def test_plan_unknown_gpu_lists_the_valid_ones(tmp_path, capsys):
    p = tmp_path/'run.yaml'; p.write_text('total_tokens: 100000\n')
    assert main(['plan', str(p), '--gpu', 'v100']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "unknown device 'v100'" in err and 'a100, cpu, h100, h200' in err and 'Traceback' not in err
