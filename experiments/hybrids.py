"""(c) Hybrids: held-out perplexity against how many of the teacher's 4 attention layers the student keeps, and which.

MOHAWK 1+2+3 (the split of `mohawk_stages.py`) into a Phi-Mamba student whose `student.attention_layers` keep the
teacher's attention (QKV-copied, trained in stage 3); stages 1-2 align the mixer layers only. The papers' hybrids
(e.g. Mamba-in-the-Llama, MOHAWK's hybrid Phi-Mamba) recover more of the teacher with more attention kept.
"""
from runner import bars, base_config, parse, recipe, run_configs, step_tokens, table, write_figure

SHARES = {1: 1/8, 2: 2/8, 3: 5/8}   # the split (c) was measured with (before stage 1 had its 40 steps)

KEPT = ([], [0], [3], [0, 3], [1, 2])   # none; the first or the last; both ends or the middle two
FULL_TOKENS, QUICK_TOKENS = 8192, 512


def configs(quick:bool) -> dict:
    total = QUICK_TOKENS if quick else FULL_TOKENS
    kept = KEPT[:2] if quick else KEPT
    return {f"attention {k or 'none'}": base_config(quick, total, recipe((1, 2, 3), total, SHARES, step_tokens(quick)),
                                                    attention_layers=k) for k in kept}


if __name__ == '__main__':
    args = parse(__doc__)
    rows = run_configs('hybrids', configs(args.quick), args, dict(total_tokens=QUICK_TOKENS if args.quick else FULL_TOKENS,
                                                                  shares=SHARES, kept=KEPT))
    table(rows)
    n = [r['name'].count(',') + 1 if '[' in r['name'] else 0 for r in rows]
    fig = bars(rows, 'student_perplexity', 'Hybrid students: held-out perplexity by kept attention layers (mean ± std over seeds)',
               color=[('#636efa', '#ef553b', '#00cc96')[k] for k in n])
    fig.update_layout(xaxis_title='teacher attention layers kept (0-based; colour: how many)',
                      yaxis_title='held-out perplexity (teacher: %.1f)' % rows[0]['summary']['teacher_perplexity']['mean'])
    write_figure('hybrids', args, fig)
