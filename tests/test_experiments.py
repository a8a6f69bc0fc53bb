"The reproductions in experiments/: the shared stage recipe, and each script's --quick mode end to end."
import json, math, os, subprocess, sys
from pathlib import Path

import pytest

EXP = Path(__file__).parents[1]/'experiments'
sys.path.insert(0, str(EXP))
from runner import merge_missing, recipe  # noqa: E402


def test_recipe_keeps_the_total_and_moves_dropped_tokens():
    shares = {1: 1/8, 2: 2/8, 3: 5/8}
    full = recipe((1, 2, 3), 8192, shares, 1024)
    assert [s['tokens'] for s in full] == [1024, 2048, 5120]
    assert [s['kind'] for s in full] == ['matrix_orientation', 'hidden_state_alignment', 'kd']
    for kept in [(2, 3), (3,), (2,)]:
        r = recipe(kept, 8192, shares, 1024)
        assert sum(s['tokens'] for s in r) == 8192, kept   # equal tokens whatever is dropped
    assert [s['tokens'] for s in recipe((2, 3), 8192, shares, 1024)] == [3072, 5120]    # stage 1's tokens go to stage 2
    assert [s['tokens'] for s in recipe((2,), 8192, shares, 1024)] == [8192]             # stage 3's go back to stage 2


def test_merge_missing_runs_only_what_the_results_lack(tmp_path):
    "--missing: the configs the results file lacks are run, every row is kept in the configs' order, walls and configs add up."
    from argparse import Namespace
    from dataclasses import dataclass
    from ssm_distill.core import SsmDistillError

    @dataclass
    class Cfg:
        x: int

    row = lambda name, wall: dict(name=name, runs=[], summary={}, wall_s=wall)
    (tmp_path/'exp.json').write_text(json.dumps(dict(seeds=[0, 1], wall_s=10.0, rows=[row('a', 4.0), row('b', 6.0)],
                                                     meta=dict(configs={'a': {'x': 1}, 'b': {'x': 2}}, note='old'))))
    args, asked = Namespace(out=tmp_path, seeds=(0, 1), quick=False), []
    def run(todo):
        asked.append(sorted(todo))
        return [row(k, 5.0) for k in todo]
    rows = merge_missing('exp', {'a': Cfg(1), 'c': Cfg(3), 'b': Cfg(2)}, args, dict(note='new'), run)
    assert asked == [['c']] and [r['name'] for r in rows] == ['a', 'c', 'b']
    saved = json.loads((tmp_path/'exp.json').read_text())
    assert saved['wall_s'] == 15.0 and saved['meta']['configs']['c'] == {'x': 3} and saved['meta']['note'] == 'new'
    with pytest.raises(SsmDistillError, match='was run with seeds'):
        merge_missing('exp', {'a': Cfg(1)}, Namespace(out=tmp_path, seeds=(0,), quick=False), {}, run)


def run_quick(script:str, out:Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(EXP.parent), OMP_NUM_THREADS='1')
    p = subprocess.run([sys.executable, script, '--quick', '--out', str(out)], cwd=EXP, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    name = Path(script).stem
    assert (out/f'{name}.html').stat().st_size > 1000
    assert '|---|' in p.stdout   # the table was printed
    return json.loads((out/f'{name}.json').read_text())


def test_matrix_classes_quick(tmp_path):
    res = run_quick('matrix_classes.py', tmp_path)
    err = {(r['kind'], r['N']): r['error'][0] for r in res['rows']}
    for N in res['meta']['sizes']:   # nested classes, each started from the poorer one's fit: never worse
        assert err['diagonal', N] <= err['ssd', N] + 1e-5 and err['ssd', N] <= err['low_rank', N] + 1e-5


@pytest.mark.slow
@pytest.mark.parametrize('script', ['mohawk_stages.py', 'matrix_mixers.py', 'stage1_sweep.py', 'which_student.py', 'hybrids.py', 'task_agnostic.py'])
def test_training_experiments_quick(script, tmp_path):
    res = run_quick(script, tmp_path)
    assert res['quick'] and res['seeds'] == [0]
    for row in res['rows']:
        for run in row['runs']:
            assert math.isfinite(run['student_perplexity']) and 0 <= run['teacher_agreement'] <= 1
    assert len({row['runs'][0]['teacher_perplexity'] for row in res['rows']}) == 1   # one held-out split for every run


@pytest.mark.slow
def test_selection_quick(tmp_path):
    "experiments/selection.py --quick: both teachers' rows, choices at their budgets, and a kept recall head that carries recall."
    env = dict(os.environ, PYTHONPATH=str(EXP.parent), OMP_NUM_THREADS='1')
    p = subprocess.run([sys.executable, 'selection.py', '--quick', '--out', str(tmp_path)], cwd=EXP, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert sum(l.startswith('|---|') for l in p.stdout.splitlines()) == 2 and (tmp_path/'selection.html').stat().st_size > 1000
    res = {t: json.loads((tmp_path/f'selection_{t}.json').read_text()) for t in ('builtin', 'mqar')}
    for t, r in res.items():
        assert {row['method'] for row in r['rows']} == {'none', *r['meta']['methods']}
        for row in r['rows']:
            if row['unit'] == 'head': assert row['kept'] == [row['budget']] * len(row['runs'])
            if row["unit"] == "layer": assert all(k % (8 if t == "builtin" else 4) == 0 for k in row["kept"])   # whole layers
    for row in res['builtin']['rows']:
        assert all(math.isfinite(run['student_perplexity']) for run in row['runs'])
    recall = {(row['method'], row['budget'], row['unit']): row['summary']['recall']['mean'] for row in res['mqar']['rows']}
    assert recall['retrieval', 1, 'head'] > recall['none', 0, '-'] + 0.2, recall   # the recall head kept: the student recalls
