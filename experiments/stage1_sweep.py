"""Stage 1 against its budget: how far MOHAWK's matrix orientation moves each student's matrices, by steps and learning rate.

The built-in teacher distilled by stage 1 alone (‖M_student − A_teacher‖_F per head, mean over layers and heads) into
five students whose matrices differ in kind: `phi_mamba` (MOHAWK's discrete SSD), `mamba2` (SSD with Δ),
`gla` (a decay per key channel), `linear_attention` (normalised elu+1 features, no decay) and `hedgehog` (learnable
feature maps). Each starts from the QKV copy at the teacher's scale and runs for a number of optimizer steps (1024
tokens each, the demo's) at a peak learning rate (5% warm-up, cosine decay, as every stage). The measure is the
held-out matrix error after the stage as a share of predicting zeros (‖A‖_F): 1 is no better than an empty matrix,
the demo asks at most 0.75 of phi_mamba. One seed (seed 0 unless --seeds says otherwise): this sets the defaults;
`mohawk_stages.py` measures their spread.
"""
import sys

from runner import base_config, parse, run_configs, step_tokens, write_figure
from ssm_distill.callbacks import Callback

MIXERS = ('phi_mamba', 'mamba2', 'gla', 'linear_attention', 'hedgehog')
LRS = (3e-3, 1e-2, 3e-2)
STEPS, QUICK_STEPS = (16, 64), (2,)


class MatrixError(Callback):
    "The held-out matrix error at the start and after the stage, each a share of predicting zeros."
    def __init__(self): self.rows = []

    def on_stage_start(self, d, stage):
        e = d.matrix_error(); self.rows.append(e['error'] / e['zeros'])

    def on_stage_end(self, d, stage, metrics):
        e = d.matrix_error(); self.rows.append(e['error'] / e['zeros'])

    def measures(self) -> dict: return dict(start=self.rows[0], after=self.rows[-1])


def configs(quick:bool) -> dict:
    stage = lambda lr, n: [dict(kind='matrix_orientation', lr=lr, warmup=0.05, tokens=n * step_tokens(quick))]
    return {f'{m} lr={lr:g} steps={n}': base_config(quick, None, stage(lr, n), mixer=m)
            for m in MIXERS for lr in LRS for n in (QUICK_STEPS if quick else STEPS)}


def figure(rows):
    "One panel per mixer: the error after stage 1 (share of zeros) against steps, a line per learning rate."
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    fig = make_subplots(rows=1, cols=len(MIXERS), subplot_titles=MIXERS, shared_yaxes=True)
    for j, m in enumerate(MIXERS):
        for k, lr in enumerate(LRS):
            pts = sorted((int(r['name'].rsplit('=', 1)[1]), r['summary']['after']['mean']) for r in rows
                         if r['name'].startswith(f'{m} lr={lr:g} '))
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode='lines+markers', name=f'lr {lr:g}',
                                     legendgroup=str(lr), showlegend=j == 0, line=dict(color=('#636efa', '#00cc96', '#ef553b')[k])),
                          row=1, col=j + 1)
        fig.add_hline(y=0.75, line_dash='dot', row=1, col=j + 1)
    fig.update_xaxes(type='log', title_text='stage-1 steps')
    fig.update_yaxes(title_text='held-out ‖M_s − A‖_F / ‖A‖_F', row=1, col=1)
    fig.update_layout(title='Stage 1 alone: matrix error after it, by steps and learning rate (dotted: the demo target 0.75)',
                      height=380, width=1200)
    return fig


if __name__ == '__main__':
    args = parse(__doc__)
    if '--seeds' not in sys.argv: args.seeds = (0,)
    cfgs = configs(args.quick)
    rows = run_configs('stage1_sweep', cfgs, args, dict(mixers=MIXERS, lrs=LRS, steps=QUICK_STEPS if args.quick else STEPS),
                       callbacks=lambda: [MatrixError()])
    print('\n| run | start / zeros | after stage 1 / zeros |\n|---|---|---|')
    for r in rows: print(f"| {r['name']} | {r['summary']['start']['mean']:.3f} | {r['summary']['after']['mean']:.3f} |")
    write_figure('stage1_sweep', args, figure(rows))
