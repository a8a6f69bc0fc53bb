"""The compute plan (`ssm-distill plan`) against measured runs on this machine's CPU: tokens/s and peak memory per stage.

One calibration: `plan.calibrate_cpu` measures this CPU's fp32 matmul FLOP/s ([1024 x 1024] @ [1024 x 1024]) and copy
bandwidth (a 128 MiB copy) with one thread, in CPU time, and the plan for `--gpu cpu` uses those two numbers, the `cpu`
device's fixed utilisation factors and `plan.mixer_profile`'s probe of the student's mixer layer (what it saves per token,
stage 1's elementwise work per matrix element; a real layer with random weights, not these runs): nothing is fitted to
the rows below. Then each run config below trains for a few real
optimizer steps per stage, each stage alone in a fresh process (one thread): the Distiller as `ssm-distill distill` runs
it (teacher loaded, student built by QKV copy, AdamW), on random token blocks of the run's length held in memory.

Measured:
- tokens/s: the tokens of the steps after the first (the first warms the allocator up) over their process CPU time
  (the steadier measure on a shared machine; one thread, so it is the wall time of an idle machine; wall time is kept);
- peak memory: the growth of the process's resident-set high-water mark (Linux VmHWM, reset with /proc/self/clear_refs)
  from just before the Distiller is built to the end of the last optimizer step: the teacher, the student, gradients,
  optimizer state and activations, as the plan counts them, plus the
  student's build (the QKV copy's calibration), the heap glibc keeps and the runtime, which the plan counts too. Evaluation and checkpoints at the stage's end come after and are not in it.

Run configs: the demo's (`demo.demo_config`: built-in teacher, Phi-Mamba, blocks of 128, 8 to a batch), and tiny random
teachers of three families (`teachers.tiny_teacher` scaled up: llama, qwen2, phi) with 4 layers of width 256 at blocks of 256.

    python benchmarks/plan.py            # 4 run configs x 3 stages, 6 steps each: about 3 minutes
    python benchmarks/plan.py --quick    # one tiny llama, 3 steps per stage: under a minute

Writes benchmarks/results/plan.json and plan.md (the table: plan, measured, ratio).
"""
from __future__ import annotations
import argparse, json, math, os, subprocess, sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, PeakMemory, elapsed, machine, now, rss_kib

STAGES = ['matrix_orientation', 'hidden_state_alignment', 'kd']
FAMILIES = dict(llama=dict(num_key_value_heads=2), qwen2=dict(num_key_value_heads=2), phi=dict(partial_rotary_factor=0.5))
FULL = dict(hidden_size=256, num_attention_heads=8, num_hidden_layers=4, intermediate_size=688, vocab_size=8192, max_position_embeddings=512)
QUICK = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128, vocab_size=512, max_position_embeddings=128)
TARGETS = dict(time=2.0, memory=1.5)   # the issue's: plan within 2x of measured time, within 1.5x of measured peak memory


def run_configs(folder:Path, quick:bool) -> dict[str, dict]:
    "The run configs to measure, by name, as plain dicts (tiny teachers saved into `folder`)."
    from dataclasses import asdict
    from ssm_distill.demo import demo_config
    from ssm_distill.teachers import tiny_teacher
    def tiny(family, sizes, seq_len, batch_size):
        path = folder/family
        tiny_teacher(family, path, initializer_range=0.02, **{**FAMILIES[family], **sizes})
        return dict(teacher=str(path), student=dict(mixer='phi_mamba'), data=dict(seq_len=seq_len, batch_size=batch_size),
                    device='cpu', mixed_precision='no')
    if quick: return {'llama (tiny)': tiny('llama', QUICK, 64, 4)}
    demo = asdict(demo_config()); demo.pop('out')
    return {'demo (builtin)': demo, **{f'{f} (4 x 256)': tiny(f, FULL, 256, 4) for f in FAMILIES}}


def single_stage(cfg:dict, kind:str, steps:int) -> dict:
    "`cfg` with the one stage `kind` (the demo's stage settings where it has them) and a budget of `steps` optimizer steps."
    from ssm_distill.config import STAGES as KINDS
    d = json.loads(json.dumps(cfg))
    old = {s['kind']: s for s in d.get('stages') or []}
    stage = {**old.get(kind, dict(kind=kind, lr=KINDS[kind].lr)), 'tokens': steps * d['data']['batch_size'] * d['data']['seq_len']}
    d.update(stages=[stage], total_tokens=None, checkpoint_every=0, eval_batches=1)
    return d


def child(spec:dict) -> dict:
    "In a fresh process: train one single-stage config for its steps; tokens/s after the first step and the peak memory growth."
    import torch
    torch.set_num_threads(1)
    from ssm_distill.callbacks import Callback
    from ssm_distill.config import load_config
    from ssm_distill.teachers import load_teacher
    from ssm_distill.train import Distiller, load_run_teacher
    cfg = load_config(dict(spec['config'], data=dict(spec['config']['data'], source='memory', eval_blocks=None)), out=spec['out'])
    V = spec['vocab']
    g = torch.Generator().manual_seed(0)
    blocks = lambda n: torch.randint(0, V, (n, cfg.data.seq_len), generator=g)
    data = (blocks(4 * cfg.data.batch_size), blocks(cfg.data.batch_size))
    x = torch.randn(64, 64, requires_grad=True); (x @ x).sum().backward()   # autograd and the allocator warmed up

    class Clock(Callback):
        "The time and the resident high-water mark at the end of every optimizer step."
        marks = []
        def on_step_end(self, distiller, metrics): self.marks.append((now(), rss_kib('VmHWM'), metrics['tokens']))

    with PeakMemory() as pm:   # the tiny teachers are saved without a tokenizer: loaded here (as the Distiller does), none needed
        teacher = load_run_teacher('builtin') if cfg.teacher == 'builtin' else (load_teacher(cfg.teacher, dtype=torch.float32).freeze(), None)
        d = Distiller(cfg, [Clock()], teacher=teacher, progress=False, data=data)
        d.run(overwrite=True)
    (w0, _, tok0), (w1, hwm1, tok1) = Clock.marks[0], Clock.marks[-1]
    wall, cpu = elapsed(w0, w1)
    return dict(tokens_per_s=(tok1 - tok0) / cpu, tokens_per_s_wall=(tok1 - tok0) / wall, peak_bytes=(hwm1 - pm.start) * 1024,
                steps=len(Clock.marks))


def measure(cfg:dict, kind:str, steps:int, folder:Path) -> dict:
    "Run `child` in a fresh process (its own peak memory) and return what it measured."
    spec = dict(config=single_stage(cfg, kind, steps), out=str(folder/'run'), vocab=_vocab(cfg))
    r = subprocess.run([sys.executable, __file__, '--child', json.dumps(spec)], capture_output=True, text=True,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    if r.returncode: raise RuntimeError(f"the measured run failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _vocab(cfg:dict) -> int:
    from ssm_distill.plan import teacher_config
    return teacher_config(cfg['teacher']).vocab_size


def rows_for(name:str, cfg:dict, steps:int, calibration:dict, folder:Path) -> list[dict]:
    "Plan and measurement of each stage of run config `cfg`, one row each."
    from ssm_distill.plan import plan_run
    rows = []
    for kind in STAGES:
        single = single_stage(cfg, kind, steps)
        p = plan_run(single, 'cpu', calibration=calibration).stages[0]
        m = measure(cfg, kind, steps, folder)
        rows.append(dict(config=name, stage=kind, plan_tokens_per_s=p.tokens_per_s, measured_tokens_per_s=m['tokens_per_s'],
                         measured_tokens_per_s_wall=m['tokens_per_s_wall'], time_ratio=m['tokens_per_s'] / p.tokens_per_s,
                         plan_memory_bytes=p.memory['total'], plan_memory=p.memory, measured_peak_bytes=m['peak_bytes'],
                         memory_ratio=p.memory['total'] / m['peak_bytes'] if m['peak_bytes'] else math.nan,
                         seq_len=single['data']['seq_len'], batch_size=single['data']['batch_size'], steps=m['steps']))
        r = rows[-1]
        print(f"{name:>16} {kind:>22}: tokens/s plan {r['plan_tokens_per_s']:9,.0f} measured {r['measured_tokens_per_s']:9,.0f} "
              f"(plan time / measured {r['time_ratio']:.2f}); memory plan {r['plan_memory_bytes'] / 2**20:7.1f} MiB measured "
              f"{r['measured_peak_bytes'] / 2**20:7.1f} MiB (x{r['memory_ratio']:.2f})", flush=True)
    return rows


def within(ratio:float, target:float) -> bool:
    "Whether a plan/measured ratio is within a factor `target` either way."
    return math.isfinite(ratio) and ratio > 0 and 1 / target <= ratio <= target


def markdown(res:dict) -> str:
    "The results as a markdown table."
    c = res['calibration']
    lines = [f"# Plan against measured ({res['machine']['cpu']}, 1 thread)", '',
             f"Calibration: fp32 matmul {c['fp32_flops'] / 1e9:.1f} GFLOP/s, copy bandwidth {c['bandwidth'] / 1e9:.1f} GB/s. "
             f"Time ratio: plan time / measured time (= measured tokens/s / plan tokens/s); memory ratio: plan / measured peak. "
             f"Targets: within {TARGETS['time']}x on time, {TARGETS['memory']}x on memory.", '',
             '| config | stage | tokens/s plan | tokens/s measured | time ratio | memory plan (MiB) | peak measured (MiB) | memory ratio | measured - plan (MiB) |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in res['rows']:
        ok = lambda x, t: '' if within(x, t) else ' (miss)'
        lines.append(f"| {r['config']} | {r['stage']} | {r['plan_tokens_per_s']:,.0f} | {r['measured_tokens_per_s']:,.0f} | "
                     f"{r['time_ratio']:.2f}{ok(r['time_ratio'], TARGETS['time'])} | {r['plan_memory_bytes'] / 2**20:.1f} | "
                     f"{r['measured_peak_bytes'] / 2**20:.1f} | {r['memory_ratio']:.2f}{ok(r['memory_ratio'], TARGETS['memory'])} | "
                     f"{(r['measured_peak_bytes'] - r['plan_memory_bytes']) / 2**20:.0f} |")
    s = res['summary']
    gaps = [(r['measured_peak_bytes'] - r['plan_memory_bytes']) / 2**20 for r in res['rows']]
    lines += ['', f"Within target: time {s['time_within']}/{s['rows']}, memory {s['memory_within']}/{s['rows']}. The measured peak "
              f"exceeds the plan by {min(gaps):.0f} to {max(gaps):.0f} MiB. The plan counts, besides the tensors of a step, the student's "
              f"build (the QKV copy's calibration on the first batch), the freed temporaries glibc keeps resident (heap) and the runtime "
              f"(a minimal run's resident growth, calibrated); what is left is the allocator's fragmentation and Python objects."]
    return '\n'.join(lines) + '\n'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='one tiny llama, 3 steps per stage (the test suite runs this)')
    p.add_argument('--steps', type=int, default=None, help='optimizer steps per stage (default 6; quick: 3)')
    p.add_argument('--out', default=None, help='the folder for plan.json and plan.md (default benchmarks/results)')
    p.add_argument('--child', default=None, help=argparse.SUPPRESS)
    p.add_argument('--table', action='store_true', help='only rewrite plan.md from the plan.json in --out')
    a = p.parse_args(argv)
    if a.child: print(json.dumps(child(json.loads(a.child)))); return
    out = Path(a.out) if a.out else RESULTS
    if a.table: (out/'plan.md').write_text(markdown(json.loads((out/'plan.json').read_text()))); return
    import torch
    torch.set_num_threads(1)
    from ssm_distill.plan import calibrate_cpu
    steps = a.steps or (3 if a.quick else 6)
    calibration = calibrate_cpu()   # one calibration for every row
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, cfg in run_configs(Path(d), a.quick).items(): rows += rows_for(name, cfg, steps, calibration, Path(d))
    summary = dict(rows=len(rows), time_within=sum(within(r['time_ratio'], TARGETS['time']) for r in rows),
                   memory_within=sum(within(r['memory_ratio'], TARGETS['memory']) for r in rows))
    res = dict(machine=machine(threads=1), calibration=calibration, quick=a.quick, steps=steps, targets=TARGETS, rows=rows,
               summary=summary, method=__doc__)
    out.mkdir(parents=True, exist_ok=True)
    (out/'plan.json').write_text(json.dumps(res, indent=1, default=str))
    (out/'plan.md').write_text(markdown(res))
    print(markdown(res))
    print(f"wrote {out/'plan.json'} and {out/'plan.md'}")


if __name__ == '__main__': main()
