"""The benchmarks' measuring code, without timing anything: the decode state does not grow with context (the teacher's
keys and values do), and the helpers that turn measurements into slopes and ratios."""
import importlib.util, sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1]/'benchmarks'


def load(name):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f'bench_{name}', BENCH/f'{name}.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_decode_state_does_not_grow_with_context():
    "generate's cache after 16 and after 96 tokens of context: a pure student's is the same size, the teacher's grows."
    gen = load('generation')
    models, tok = gen.build_models(128, ['mamba2', 'hybrid_mamba2_attn1'])
    rows = gen.bench(models, [16, 96], new=3, repeats=1, max_call_s=1e9, max_gib=1e9, vocab=len(tok))
    cache = {(r['model'], r['context']): r['cache_bytes'] for r in rows}
    assert cache['mamba2', 16] == cache['mamba2', 96] > 0
    # keys and values of every layer grow by (96 - 16) positions; the hybrid keeps one attention layer of four
    grow_t = cache['teacher', 96] - cache['teacher', 16]
    grow_h = cache['hybrid_mamba2_attn1', 96] - cache['hybrid_mamba2_attn1', 16]
    cfg = models['teacher'].config
    assert grow_t == cfg.num_hidden_layers * 2 * (96 - 16) * cfg.hidden_size * 4
    assert grow_h == grow_t // cfg.num_hidden_layers
    # the decode rows are complete and the targets section reports every student against the teacher
    rats = gen.ratios(rows)
    assert {r['model'] for r in rats} == {'mamba2', 'hybrid_mamba2_attn1'}
    assert all(r['tokens_per_s'] > 0 and r['prefill_s'] > 0 for r in rows)
    assert set(gen.targets(rows, rats)) == {'mamba2', 'hybrid_mamba2_attn1'}


def test_slopes_and_extrapolation():
    common = load('common')
    T = [256, 1024, 4096]
    assert common.loglog_slope(T, [t ** 2 * 3e-9 for t in T]) == pytest.approx(2.0)
    assert common.loglog_slope(T, [t * 1e-6 for t in T]) == pytest.approx(1.0)
    assert common.extrapolate([(256, 1.0), (512, 4.0)], 1024) == pytest.approx(16.0)   # quadratic so far
    assert common.extrapolate([(256, 1.0), (512, 1.5)], 1024) == pytest.approx(3.0)    # never below linear
    assert common.rotated(['a', 'b', 'c'], 4) == ['b', 'c', 'a']
    scaling = load('scaling')
    rows = [dict(mixer='m', T=t, seconds=t * 2e-6, cpu_seconds=t * 1e-6, peak_bytes=t * 8) for t in T] + [dict(mixer='m', T=8192, skipped='x')]
    assert scaling.slopes(rows)['m'] == dict(lengths=T, time=1.0, memory=1.0)


@pytest.mark.slow
def test_plan_benchmark_quick_writes_finite_results(tmp_path):
    "benchmarks/plan.py --quick: the plan and the measured run of each stage land in plan.json and plan.md, all finite and positive."
    import json, math, os, subprocess, sys
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(BENCH.parent)}
    r = subprocess.run([sys.executable, str(BENCH/'plan.py'), '--quick', '--out', str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path/'plan.json').read_text())
    assert [r['stage'] for r in res['rows']] == ['matrix_orientation', 'hidden_state_alignment', 'kd']
    for row in res['rows']:
        for k in ('plan_tokens_per_s', 'measured_tokens_per_s', 'time_ratio', 'plan_memory_bytes', 'measured_peak_bytes', 'memory_ratio'):
            assert math.isfinite(row[k]) and row[k] > 0, (k, row[k])
    assert (tmp_path/'plan.md').read_text().count('| llama (tiny) |') == 3


def test_compiled_students_are_compared_with_the_compiled_teacher():
    "--compiled: a compiled student's ratio is against the compiled teacher, the table pairs eager with compiled, targets say met or not."
    gen = load('generation')
    ms = {('teacher', 512): 4., ('teacher_compiled', 512): 2., ('s', 512): 4., ('s_compiled', 512): 1.,
          ('teacher', 8192): 16., ('teacher_compiled', 8192): 8., ('s', 8192): 4., ('s_compiled', 8192): 1.}
    rows = [dict(model=m, context=T, decode_ms=v, decode_cpu_ms=v, tokens_per_s=1e3 / v, tokens_per_cpu_s=1e3 / v, prefill_s=1.,
                 prefill_cpu_s=1., prefill_peak_bytes=2**20, cache_bytes=0, bound_ms=0.5, times_bound_cpu=v / 0.5) for (m, T), v in ms.items()]
    rats = {(r['model'], r['context']): r['tokens_per_cpu_s_vs_teacher'] for r in gen.ratios(rows)}
    assert rats == {('s', 512): 1.0, ('s_compiled', 512): 2.0, ('s', 8192): 4.0, ('s_compiled', 8192): 8.0}
    table = {(r['model'], r['context']): r for r in gen.compiled_table(rows)}
    assert table['s', 8192]['eager_vs_teacher'] == 4.0 and table['s', 8192]['compiled_vs_teacher'] == 8.0
    t = gen.compiled_targets(rows, gen.ratios(rows))['s']
    assert t['speedup'][8192]['met'] and t['speedup'][512]['met'] and t['within_2x_of_bound'][512]['met']


def test_weight_bytes_count_an_untied_input_embedding_as_one_row():
    from ssm_distill.teachers import tiny_teacher
    gen = load('generation')
    m = tiny_teacher('llama').model
    emb = m.get_input_embeddings().weight
    every = sum(p.numel() * 4 for p in m.parameters())
    tied = m.get_output_embeddings().weight is emb
    assert gen.weight_bytes(m) == every - (0 if tied else (emb.shape[0] - 1) * emb.shape[1] * 4)
