"""(b) MOHAWK's matrix classes: how closely Toeplitz, low-rank, SSD and diagonal-SSM matrices fit the teacher's attention.

Every fit is per head, by `ssm_distill.matrices.fit_matrix_class`, on held-out sequences of T = 256 tokens (longer than
the state sizes N = 16/32/64 and the teacher's head size 32, so rank N is a real limit). The classes are nested,
low-rank ⊂ SSD ⊂ diagonal, so each richer fit starts from the poorer one's solution and descends until it plateaus.
The paper (Bick et al. 2024, Llama-2-7B, Frobenius error): Toeplitz ~12, low-rank 0.60, SSD 0.47, semiseparable 0.25,
each falling as N grows. Toeplitz is fitted exactly (each diagonal's mean: no state size).
"""
import time

import torch

from runner import parse, write_figure
from ssm_distill.eval import eval_blocks
from ssm_distill.matrices import FitConfig, fit_matrix_class
from ssm_distill.sweeps import mean_std
from ssm_distill.train import load_run_teacher

CLASSES = ('toeplitz', 'low_rank', 'ssd', 'diagonal')   # each after the first starts from the fit of the one before
FULL = dict(T=256, sequences=3, heads=(0,), sizes=(16, 32, 64), fit=FitConfig(steps=1500, lr=0.03, patience=150, rel_tol=1e-4))
QUICK = dict(T=48, sequences=1, heads=(0,), sizes=(4, 8), fit=FitConfig(steps=30, patience=10))


def teacher_attention(T:int, sequences:int, heads:tuple) -> torch.Tensor:
    "The teacher's attention probabilities `[S, L*len(heads), T, T]` on `sequences` held-out blocks of T tokens."
    teacher, tok = load_run_teacher('builtin')
    ids = eval_blocks('builtin', tok, seq_len=T, max_blocks=sequences)                  # (S, T)
    cap = teacher.capture(ids, what={'attn_probs'})
    return torch.cat([cap.attn_probs[l][:, list(heads)] for l in range(teacher.n_layers)], 1)   # (S, L*h, T, T)


def fit_all(A:torch.Tensor, sizes:tuple, fit:FitConfig) -> list[dict]:
    "Every class at every N: per sequence, the mean over heads of the absolute and relative errors; steps and stops."
    rows = []
    for N in sizes:
        prev = None
        for kind in CLASSES:
            t0 = time.time()
            init = prev if prev is not None and prev.state_size == N else None
            f = fit_matrix_class(A, kind, N, config=fit, init=init)
            rows.append(dict(kind=kind, N=N, error=f.errors.mean(1).tolist(), relative=f.relative.mean(1).tolist(),
                             steps=0 if f.descent is None else f.descent.steps,
                             stopped='closed form' if f.descent is None else f.descent.stopped, wall_s=time.time() - t0))
            print(f"  N={N} {kind}: ‖M − A‖_F {mean_std(rows[-1]['error'])[0]:.3f}, {rows[-1]['stopped']} after {rows[-1]['steps']} steps "
                  f"({rows[-1]['wall_s']:.0f} s)", flush=True)
            prev = f if f.descent is not None else None
    return rows


def figure(rows):
    import plotly.graph_objects as go
    fig = go.Figure()
    for kind in CLASSES:
        rs = [r for r in rows if r['kind'] == kind]
        ms = [mean_std(r['error']) for r in rs]
        fig.add_trace(go.Scatter(x=[r['N'] for r in rs], y=[m for m, _ in ms], error_y=dict(type='data', array=[s for _, s in ms]),
                                 mode='lines+markers', name=kind))
    fig.update_layout(
                      xaxis_title='state size / rank N', yaxis_title='‖M − A‖_F (mean over heads; ± std over sequences)',
                      xaxis_type='log', template='plotly_white')
    return fig


if __name__ == '__main__':
    import json
    args = parse(__doc__)
    p = QUICK if args.quick else FULL
    t0 = time.time()
    A = teacher_attention(p['T'], p['sequences'], p['heads'])
    rows = fit_all(A, p['sizes'], p['fit'])
    print('| class | N | ‖M − A‖_F (mean ± std over sequences) | relative to ‖A‖_F | steps | stopped |\n|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['kind']} | {r['N']} | {'%.3f ± %.3f' % mean_std(r['error'])} | {'%.3f ± %.3f' % mean_std(r['relative'])} "
              f"| {r['steps']} | {r['stopped']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(T=p['T'], sequences=p['sequences'], heads_per_layer=list(p['heads']), sizes=list(p['sizes']),
                fit=vars(p['fit']), attention_norm=A.flatten(-2).norm(dim=-1).mean().item())
    (args.out/'matrix_classes.json').write_text(json.dumps(dict(experiment='matrix_classes', quick=args.quick, meta=meta,
                                                                rows=rows, wall_s=time.time() - t0), indent=1))
    fig = figure(rows)
    fig.update_layout(title=f"Fits to the built-in teacher's attention heads (T = {p['T']})")
    write_figure('matrix_classes', args, fig)
