"""(b) MOHAWK's mixer ablation: students whose mixing matrices are Toeplitz, low-rank, SSD or diagonal, distilled alike.

Bick et al. 2024 (§5.1) fit each class of structured matrices to attention (`matrix_classes.py` repeats that) and
then distil students of the classes, finding that the class that fits attention better also makes the better student
(SSD-based Phi-Mamba over low-rank and Toeplitz mixers). Here the built-in teacher is distilled into four students
that differ only in their mixer: `toeplitz` (a long convolution per head, data-independent), `low_rank` (linear
attention with the identity feature map, no normaliser), `phi_mamba` (MOHAWK's discrete SSD) and `gla` (a decay per
step and key channel: diagonal). Each gets the QKV copy and the full MOHAWK recipe (1+2+3, split as
the package splits by default, as in `mohawk_stages.py`) at 32,768 tokens. After every stage the held-out matrix error
(stage 1's measure: ‖M_student − A_teacher‖_F per head), the relative hidden-state error (stage 2's: ‖mixer(x) −
attention(x)‖ / ‖attention(x)‖ per token, given the teacher's input) and the perplexity are measured on the held-out
blocks.
"""
from dataclasses import asdict

from runner import METRICS, base_config, default_shares, merge_missing, parse, recipe, run_configs, step_tokens, table, write_figure
from summary import stage_rows
from ssm_distill.eval import distill_metrics
from ssm_distill.callbacks import Callback
from ssm_distill.train import load_run_teacher

STUDENTS = {'toeplitz': 'Toeplitz', 'low_rank': 'low-rank', 'phi_mamba': 'SSD', 'gla': 'diagonal'}
STAGE_NAMES = ('1 matrix', '2 hidden', '3 KD')
COLOURS = dict(zip(STUDENTS.values(), ('#ef553b', '#ab63fa', '#636efa', '#00cc96')))   # by the student's name
FULL_TOKENS, QUICK_TOKENS = 32768, 512
PER_STAGE = ('mixing', 'hidden_rel', 'perplexity')   # measured after every stage


class StageErrors(Callback):
    "After every stage: the held-out matrix error, relative hidden-state error and perplexity of the student."
    def __init__(self): self.after = []

    def measures(self) -> dict:
        "`<measure>@<stage>` (stages from 1): what `sweeps.run_seeds` adds to the run's numbers."
        return {f'{k}@{i + 1}': v for i, row in enumerate(self.after) for k, v in row.items()}

    def on_stage_end(self, d, stage, metrics):
        r = distill_metrics(d.accelerator.unwrap_model(d.student), d.teacher, d.data.eval, batch_size=d.cfg.data.batch_size)
        mean = lambda per_layer: sum(per_layer) / len(per_layer)
        self.after.append(dict(mixing=mean([mean(h) for h in r.mixing_error.values()]),
                               hidden_rel=mean(list(r.hidden_rel_error.values())), perplexity=r.perplexity))


# the control: each student started at a fit of its matrices to the teacher's attention (the `mixing` init: QKV copy,
# then 100 Adam steps per layer on a calibration batch), which moves it toward its class's best matrices before stage 1
INITS = {'': dict(init='qkv_copy'), ' + mixing init': dict(init='mixing', options=dict(mixing_steps=100))}
CONTROL = False   # run the mixing-init control too (12 more runs); see experiments/README.md for when it was last measured


def configs(quick:bool) -> dict:
    total = QUICK_TOKENS if quick else FULL_TOKENS
    inits = INITS if CONTROL and not quick else dict(list(INITS.items())[:1])
    return {name + suffix: base_config(quick, total, recipe((1, 2, 3), total, default_shares(quick, total), step_tokens(quick)), mixer=mixer, **init)
            for suffix, init in inits.items() for mixer, name in STUDENTS.items()}


def figure(rows, teacher_ppl:float):
    "Three panels, one per measure, each student's mean ± std after each stage (colour: the class; dashed: the mixing init)."
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    titles = ('matrix error ‖M − A‖_F (stage 1)', 'relative hidden-state error (stage 2)', f'held-out perplexity (teacher {teacher_ppl:.1f})')
    fig = make_subplots(1, 3, subplot_titles=titles)
    for ci, m in enumerate(PER_STAGE):
        for r in rows:
            s = [r['summary'][f'{m}@{i}'] for i in (1, 2, 3)]
            fig.add_trace(go.Scatter(x=list(STAGE_NAMES), y=[x['mean'] for x in s], error_y=dict(type='data', array=[x['std'] for x in s]),
                                     name=r['name'], legendgroup=r['name'], showlegend=ci == 0, mode='lines+markers',
                                     line=dict(color=COLOURS[r['name'].split(' + ')[0]], dash='dash' if 'mixing' in r['name'] else 'solid')), 1, ci + 1)
    fig.update_xaxes(title_text='after stage'); fig.update_yaxes(type='log', col=3)
    fig.update_layout(template='plotly_white', title="MOHAWK's mixer ablation: one recipe, four matrix classes (mean ± std over seeds)")
    return fig


if __name__ == '__main__':
    args = parse(__doc__)
    teacher, cfgs = load_run_teacher('builtin'), configs(args.quick)
    meta = dict(total_tokens=QUICK_TOKENS if args.quick else FULL_TOKENS, shares=default_shares(args.quick, QUICK_TOKENS if args.quick else FULL_TOKENS), students=STUDENTS, inits=INITS,
                metrics=METRICS, per_stage=PER_STAGE, configs={k: asdict(c) for k, c in cfgs.items()})
    run = lambda todo, name: run_configs(name, todo, args, meta, teacher, callbacks=lambda: [StageErrors()])
    rows = (merge_missing('matrix_mixers', cfgs, args, meta, lambda todo: run(todo, 'matrix_mixers.new'))
            if args.missing else run(cfgs, 'matrix_mixers'))
    table(rows)
    print(stage_rows(dict(meta=meta, rows=rows)))
    write_figure('matrix_mixers', args, figure(rows, rows[0]['summary']['teacher_perplexity']['mean']))
