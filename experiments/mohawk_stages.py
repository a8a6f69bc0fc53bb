"""(a) MOHAWK's stage ablation at equal tokens, and MOHAWK against KD alone across four budgets (the budget curve).

Built-in teacher -> Phi-Mamba student (QKV copy at the teacher's scale), the demo's data (blocks of 128 tokens,
batches of 8) and learning rates (stage 1: 1e-2, stage 2: 3e-3, stage 3: 1e-3). The paper (Bick et al. 2024,
Phi-Mamba, average zero-shot accuracy) reports stages 1+2+3: 62.7, 2+3: 62.3, 3 only: 54.5, 2 only: 53.3. Here the
measures are held-out perplexity, top-1 agreement with the teacher and, after every stage, stage 1's own measure
(the held-out matrix error as a share of predicting zeros).

The full recipe splits each budget as the package does by default (`config.stage_budgets`): MOHAWK's shares
(2.7% / 5.3% / 92%), with stage 1 raised to its 40 steps, at most a quarter of the budget. At equal tokens a
dropped stage's tokens go to the next stage kept.
"""
from runner import base_config, bars, default_shares, parse, recipe, run_configs, step_tokens, table, write_figure
from ssm_distill.callbacks import Callback

ABLATION = {'1+2+3': (1, 2, 3), '2+3': (2, 3), '3 only': (3,), '2 only': (2,)}
FULL_BUDGETS, QUICK_BUDGETS = (8192, 32768, 131072, 524288), (512, 1024)


class MatrixErrors(Callback):
    "Stage 1's measure at the start and after every stage: the held-out matrix error as a share of predicting zeros."
    def __init__(self): self.after = []

    def on_stage_start(self, d, stage):
        if not self.after: e = d.matrix_error(); self.after.append(e['error'] / e['zeros'])

    def on_stage_end(self, d, stage, metrics):
        e = d.matrix_error(); self.after.append(e['error'] / e['zeros'])

    def measures(self) -> dict: return {f'matrix@{i}': v for i, v in enumerate(self.after)}   # @0: the start


def configs(quick:bool) -> dict:
    "The ablation at the second budget, then MOHAWK (1+2+3) and KD only (3 only) at the others."
    budgets = QUICK_BUDGETS if quick else FULL_BUDGETS
    at, st = budgets[1], step_tokens(quick)
    run = lambda stages, total: base_config(quick, total, recipe(stages, total, default_shares(quick, total), st))
    out = {f'{name} @{at}': run(s, at) for name, s in ABLATION.items()}
    for b in budgets:
        if b != at: out[f'1+2+3 @{b}'], out[f'3 only @{b}'] = run((1, 2, 3), b), run((3,), b)
    return out


def budget_figure(rows, metric='student_perplexity'):
    "MOHAWK and KD-only against the token budget (mean ± std over seeds)."
    import plotly.graph_objects as go
    fig = go.Figure()
    for label, prefix in (('MOHAWK 1+2+3', '1+2+3 @'), ('KD only (3 only)', '3 only @')):
        rs = sorted((r for r in rows if r['name'].startswith(prefix)), key=lambda r: int(r['name'].split('@')[1]))
        fig.add_trace(go.Scatter(x=[int(r['name'].split('@')[1]) for r in rs], y=[r['summary'][metric]['mean'] for r in rs],
                                 error_y=dict(type='data', array=[r['summary'][metric]['std'] for r in rs]), name=label, mode='lines+markers'))
    fig.update_layout(title='MOHAWK vs KD only', xaxis_title='training tokens', xaxis_type='log',
                      yaxis_title=metric.replace('_', ' '), template='plotly_white')
    return fig


if __name__ == '__main__':
    args = parse(__doc__)
    budgets = QUICK_BUDGETS if args.quick else FULL_BUDGETS
    meta = dict(shares={b: default_shares(args.quick, b) for b in budgets}, budgets=budgets, ablation=ABLATION)
    rows = run_configs('mohawk_stages', configs(args.quick), args, meta, callbacks=lambda: [MatrixErrors()])
    table(rows)
    from plotly.subplots import make_subplots
    abl = [r for r in rows if any(r['name'].startswith(n + ' @') for n in ABLATION) and r['name'].split(' @')[0] in ABLATION
           and r['name'].endswith(f"@{budgets[1]}")]
    fig = make_subplots(1, 2, subplot_titles=('stage ablation at equal tokens', 'MOHAWK vs KD only'))
    for t in bars(abl, 'student_perplexity', '').data: fig.add_trace(t, 1, 1)
    for t in budget_figure(rows).data: fig.add_trace(t, 1, 2)
    fig.update_xaxes(title_text='stages', row=1, col=1); fig.update_xaxes(title_text='training tokens', type='log', row=1, col=2)
    fig.update_yaxes(title_text='held-out perplexity (teacher: %.1f)' % rows[0]['summary']['teacher_perplexity']['mean'])
    fig.update_layout(template='plotly_white', title='MOHAWK stages (Phi-Mamba student of the built-in teacher)')
    write_figure('mohawk_stages', args, fig)
