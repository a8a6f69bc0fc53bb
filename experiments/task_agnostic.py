"""(d) Task-agnostic transfer (Udagawa et al. 2023): MiniLMv2 relations (MHA) > hidden states (HS) > output distribution (OD)?

The built-in teacher (a causal LM, 4 layers) into a 2-layer Phi-Mamba student of the same width (each student layer
QKV-copied from teacher layers 1 and 3). Each transfer objective trains for three quarters of the tokens, then KD for
the last quarter stands in for the paper's downstream fine-tuning; KD alone for all tokens is the baseline. HS is run
with every layer map of `ssm_distill.losses.LAYER_MAPS` (but `last_k`, which is `last` at its default k = 1). Measures: held-out perplexity and agreement with the teacher.
"""
from runner import bars, base_config, parse, run_configs, step_tokens, table, write_figure
from ssm_distill.losses import LAYER_MAPS

# every layer map but last_k (with its default k = 1 it is 'last')
TRANSFERS = {'od': dict(kind='od'), **{f'hs {m}': dict(kind='hs', layer_map=m) for m in LAYER_MAPS if m != 'last_k'}, 'mha': dict(kind='mha')}
SHARE = 0.75   # of the tokens on the transfer objective; the rest on KD
FULL_TOKENS, QUICK_TOKENS = 8192, 512
STUDENT = dict(n_layers=2)


def stages(transfer:dict|None, total:int, step:int) -> list[dict]:
    "The transfer for SHARE of `total` (whole steps), then KD; KD alone if `transfer` is None."
    if transfer is None: return [dict(kind='kd', lr=1e-3, warmup=0.05, tokens=total)]
    first = max(1, round(SHARE * total / step)) * step
    return [dict(transfer, lr=1e-3, warmup=0.05, tokens=first), dict(kind='kd', lr=1e-3, warmup=0.05, tokens=total - first)]


def configs(quick:bool) -> dict:
    total, step = (QUICK_TOKENS if quick else FULL_TOKENS), step_tokens(quick)
    names = ['od', 'hs uniform', 'mha'] if quick else list(TRANSFERS)
    out = {f'{n} + kd': base_config(quick, total, stages(TRANSFERS[n], total, step), **STUDENT) for n in names}
    out['kd only'] = base_config(quick, total, stages(None, total, step), **STUDENT)
    return out


if __name__ == '__main__':
    args = parse(__doc__)
    rows = run_configs('task_agnostic', configs(args.quick), args,
                       dict(total_tokens=QUICK_TOKENS if args.quick else FULL_TOKENS, share=SHARE, student=STUDENT))
    table(rows)
    fig = bars(rows, 'student_perplexity', 'Task-agnostic transfer into a 2-layer student, then KD (mean ± std over seeds)')
    fig.update_layout(xaxis_title='transfer objective (3/4 of the tokens) + KD (1/4)',
                      yaxis_title='held-out perplexity (teacher: %.1f)' % rows[0]['summary']['teacher_perplexity']['mean'])
    write_figure('task_agnostic', args, fig)
