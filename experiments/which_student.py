"""(e) Haller et al.: which students recover most of the teacher, and do QKV copying and hidden-state alignment help?

Every mixer of `ssm_distill.mixers.MIXERS` as a student of the built-in teacher at one token budget, initialised by
QKV copy, by matrix mixing (QKV copy, then each mixer fitted to the teacher's attention matrices) or at random, and
trained with hidden-state alignment (MOHAWK stage 2) before KD or by KD alone, at equal tokens.
"""
from runner import base_config, merge_missing, parse, recipe, run_configs, step_tokens, table, write_figure
from ssm_distill.mixers import MIXERS

# (init, hidden-state alignment): the default recipe first, then one change each
VARIANTS = {'qkv_copy+align': ('qkv_copy', True), 'qkv_copy': ('qkv_copy', False),
            'mixing+align': ('mixing', True), 'random+align': ('random', True)}
SHARES = {2: 0.25, 3: 0.75}   # with alignment: a quarter of the tokens align hidden states, the rest is KD
FULL_TOKENS, QUICK_TOKENS = 8192, 512
MIXING_STEPS = 100   # Adam steps of the mixing init per layer (students.fit_mixing_matrix; its default is 300)


def student_config(mixer:str, variant:str, quick:bool, total:int):
    "The run of one mixer and one variant of VARIANTS."
    init, align = VARIANTS[variant]
    stages = recipe((2, 3) if align else (3,), total, SHARES, step_tokens(quick))
    return base_config(quick, total, stages, mixer=mixer, init=init,
                       options=dict(mixing_steps=MIXING_STEPS) if init == 'mixing' else {})


ABLATED = ('phi_mamba', 'gla', 'mamba2', 'retnet', 'deltanet')   # the mixers that get every variant, one per family; the others get the default


def configs(quick:bool, total:int|None=None) -> dict:
    "Every mixer with the default variant, then the other variants of the ABLATED mixers: `<mixer> <variant>` -> RunConfig."
    total = total or (QUICK_TOKENS if quick else FULL_TOKENS)
    mixers = list(ABLATED[:2]) if quick else list(MIXERS)
    first, *others = VARIANTS
    pairs = [(m, first) for m in mixers] + [(m, v) for m in (ABLATED[:2] if quick else ABLATED) for v in (others[:1] if quick else others)]
    return {f'{m} {v}': student_config(m, v, quick, total) for m, v in pairs}


def figure(rows, metric='teacher_agreement'):
    "Grouped bars: one group per mixer, one bar per variant."
    import plotly.graph_objects as go
    fig = go.Figure()
    for v in VARIANTS:
        rs = [r for r in rows if r['name'].split(' ')[1] == v]
        if not rs: continue
        fig.add_trace(go.Bar(name=v, x=[r['name'].split(' ')[0] for r in rs], y=[r['summary'][metric]['mean'] for r in rs],
                             error_y=dict(type='data', array=[r['summary'][metric]['std'] for r in rs])))
    fig.update_layout(barmode='group', title='Which student? (mean ± std over seeds)', xaxis_title='student mixer',
                      yaxis_title=metric.replace('_', ' '), template='plotly_white')
    return fig


if __name__ == '__main__':
    args = parse(__doc__)
    cfgs = configs(args.quick)
    meta = dict(total_tokens=(QUICK_TOKENS if args.quick else FULL_TOKENS), shares=SHARES, variants=VARIANTS,
                mixing_steps=MIXING_STEPS, ablated=ABLATED)
    rows = (merge_missing('which_student', cfgs, args, meta, lambda todo: run_configs('which_student.new', todo, args, meta))
            if args.missing else run_configs('which_student', cfgs, args, meta))
    table(rows)
    write_figure('which_student', args, figure(rows))
