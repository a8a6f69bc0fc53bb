"""What each distillation stage costs: optimizer-step time per stage relative to one teacher forward+backward on the
same batch.

Teacher: the built-in teacher (a 4-layer Llama, hidden 256); student: its Phi-Mamba student by QKV copy (or `--mixer`).
One step of a stage is what `Distiller` does per micro-batch: the teacher's targets (no grad), the stage's loss on the
student (`StageModule`), backward, AdamW step (`make_optimizer`), with the stage's trainable groups. The reference is
one forward + backward of the teacher itself (a trainable copy, next-token cross-entropy) on the same batch, and, for
scale, the same for the student. Interleaved (the order rotates per repeat), median of repeats, on this process's CPU
time (the steadier measure on a shared machine; wall time is kept too); memory is the peak resident-set growth of one
step (Linux).

    python benchmarks/training.py              # batch 8 x 128 tokens (the demo's), MOHAWK stages + od, hs, mha
    python benchmarks/training.py --quick      # batch 4 x 64, 3 repeats: under a minute

Writes benchmarks/results/training-cpu.json and training-cpu.html.
"""
from __future__ import annotations
import argparse, copy, sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakMemory, elapsed, machine, median, now, rotated, write_results

STAGE_KINDS = ['matrix_orientation', 'hidden_state_alignment', 'hidden_state_alignment/blocks', 'kd', 'od', 'hs', 'mha']


def stage_config(name:str):
    "The StageConfig of a benchmarked stage ('hidden_state_alignment/blocks': stage 2 on whole blocks, MLPs trained)."
    from ssm_distill.config import StageConfig
    kind, _, variant = name.partition('/')
    return StageConfig(kind, options=dict(freeze_mlp=False) if variant == 'blocks' else None)


def stage_step(teacher, student, name:str):
    "A zero-argument callable: one optimizer step of stage `name` on a batch given later (`step(ids)`)."
    from ssm_distill.loop import optimizer_step
    from ssm_distill.students import set_trainable_groups
    from ssm_distill.train import StageModule, make_optimizer
    cfg = stage_config(name)
    stage = cfg.stage
    layers = {l: l for l in stage.student_layers(student)}   # a student of the teacher's depth: layer l against layer l

    def step(ids):
        set_trainable_groups(student, cfg.groups())
        if step.opt is None:   # the loss's own parameters are built from the first batch, as the Distiller does
            step.aux = stage.aux(student, teacher, ids[:1])
            step.opt = make_optimizer(student, cfg, step.aux)
        with torch.no_grad(): t = stage.targets(teacher, ids, layers)
        loss, _ = StageModule(student, stage, layers, step.aux)(ids, t)
        loss.backward()
        optimizer_step(step.opt, [p for p in student.parameters() if p.requires_grad], cfg.grad_clip)

    step.opt = None
    return step


def lm_step(model):
    "One forward + backward of `model` with next-token cross-entropy (no optimizer step): the reference cost."
    def step(ids):
        logits = model(input_ids=ids).logits                                            # (B, T, V)
        F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
        model.zero_grad(set_to_none=True)
    return step


def bench(B:int, T:int, repeats:int, mixer:str, stages:list[str]) -> tuple[list[dict], dict]:
    from ssm_distill.builtin import load_builtin_teacher
    from ssm_distill.data import DataConfig, build_data
    from ssm_distill.students import build_student
    from ssm_distill.teachers import load_teacher
    model, tok = load_builtin_teacher()
    teacher = load_teacher(model).freeze()
    trainable_teacher = copy.deepcopy(model).train().requires_grad_(True)
    torch.manual_seed(0)
    student = build_student(teacher, mixer).train()
    ids = build_data(DataConfig('builtin', seq_len=T, batch_size=B, max_tokens=max(20 * B * T, 20_000)), tok).train.blocks[:B]
    steps = {'teacher forward+backward': lm_step(trainable_teacher), 'student forward+backward': lm_step(student)}
    steps |= {f'stage {s}': stage_step(teacher, student, s) for s in stages}
    times, peaks = {n: [] for n in steps}, {}
    for n, fn in steps.items(): fn(ids)                                                   # warm-up (and optimizer state)
    for r in range(repeats):
        for n in rotated(list(steps), r):
            t0 = now(); steps[n](ids); times[n].append(elapsed(t0))
    for n, fn in steps.items():
        with PeakMemory() as mem: fn(ids)
        peaks[n] = mem.bytes
    wall = {n: median([w for w, _ in ts]) for n, ts in times.items()}
    cpu = {n: median([c for _, c in ts]) for n, ts in times.items()}
    ref = cpu['teacher forward+backward']
    rows = [dict(step=n, seconds=wall[n], cpu_seconds=cpu[n], tokens_per_cpu_s=round(B * T / cpu[n], 1),
                 vs_teacher_forward_backward=round(cpu[n] / ref, 2), peak_bytes=peaks[n]) for n in times]
    return rows, dict(batch=B, seq_len=T, tokens_per_step=B * T, mixer=mixer, repeats=repeats)


def figure(rows:list[dict], title:str):
    import plotly.graph_objects as go
    fig = go.Figure(go.Bar(x=[r['step'] for r in rows], y=[r['vs_teacher_forward_backward'] for r in rows],
                           text=[f"{r['tokens_per_cpu_s']:.0f} tok/CPU-s" for r in rows], textposition='outside'))
    fig.update_layout(title=title, yaxis_title='step CPU time / teacher forward+backward', xaxis_title='step', height=450, width=1000)
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--seq-len', type=int, default=128)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--mixer', default='phi_mamba')
    p.add_argument('--stages', nargs='+', default=STAGE_KINDS, choices=STAGE_KINDS)
    p.add_argument('--threads', type=int, default=1, help='torch threads (default 1: the machine is shared)')
    p.add_argument('--quick', action='store_true', help='batch 4 x 64 tokens, 3 repeats')
    a = p.parse_args(argv)
    if a.quick: a.batch, a.seq_len, a.repeats = 4, 64, 3
    torch.set_num_threads(a.threads)
    meta = machine(a.threads)
    rows, setup = bench(a.batch, a.seq_len, a.repeats, a.mixer, a.stages)
    data = dict(meta=dict(meta, **setup, teacher='built-in teacher (Llama, 4 layers, hidden 256)',
                          method='one optimizer step per stage as Distiller runs it (targets, StageModule loss, backward, AdamW); '
                                 'reference: teacher forward+backward (CE) on the same batch; interleaved, median; ratios on CPU '
                                 'time (the machine is shared; wall time is kept too)'),
                rows=rows, gpu=dict(rows='not measured', why=meta['gpu']))
    out = write_results('training', 'cpu', data, figure(rows, f"distillation step cost vs one teacher forward+backward "
                                                              f"({a.batch} x {a.seq_len} tokens, {a.mixer}, CPU {a.threads} thread(s))"))
    for r in rows:
        print(f"{r['step']:>42}  {r['cpu_seconds'] * 1e3:8.1f} ms CPU  {r['tokens_per_cpu_s']:8.0f} tok/CPU-s  x{r['vs_teacher_forward_backward']:<5} "
              f"peak {r['peak_bytes'] / 2**20:6.1f} MiB")
    print(f'wrote {out}')
    return data


if __name__ == '__main__':
    main()
