"""(f) Which attention to keep: every selection method's hybrid at equal budgets, on the built-in teacher and on a recall teacher.

`ssm_distill.selection` scores every teacher head for keeping as softmax attention; `select` turns the scores into a
hybrid for a budget of heads, kept as single heads (`attention_heads`, a per-head hybrid) or rounded to whole layers
(`attention_layers`). Here each method's choice is distilled alike and measured:

- the built-in teacher (4 layers x 8 heads, one K/V head per query head): Phi-Mamba students keeping 8 or 16 heads
  (one or two layers' worth of KV cache), MOHAWK 1+2+3 at the package's default split of 8,192 tokens; held-out
  perplexity and top-1 agreement. `retrieval` needs a teacher that recalls, which this one does not (its copy accuracy
  is near zero), so it is scored on the second teacher only;
- MQAR teachers (4 x 4 Llamas of width 64 trained on `synthetic` multi-query associative recall, 16 pairs), one per
  seed, so that where the recall head sits differs between seeds: students keeping 1, 4 or 8 heads, stages 2+3 as in
  the associative_recall tutorial; held-out recall accuracy.

Scores are computed on training text (not the held-out blocks): once for the built-in teacher, per seed for the MQAR
teachers; `random` is drawn anew for every seed (its seed is the run's).
Methods that choose the same heads share their runs. Kept heads and kept layers both train in the stages that train
the whole model (`student.train_kept_heads: true`), so a per-head and a per-layer hybrid differ only in which heads.
A trained kept head can learn a look-up it did not do in the teacher, so the recall teachers also get one kept head
frozen as the teacher's (unit "head, frozen"): whether the chosen head itself carries the recall.
"""
from __future__ import annotations
import json, tempfile, time

import torch

from runner import base_config, default_shares, parse, recipe, step_tokens, write_figure, write_results
from ssm_distill.selection import SELECTORS, chosen_heads, correlation_table, kv_bytes_per_token, score_heads, select
from ssm_distill.sweeps import fmt_mean_std, seeded, summarise, vary
from ssm_distill.synthetic import MQARConfig, mqar_blocks, recall_eval, recall_run_config, tiny_llama, train_recall
from ssm_distill.teachers import load_teacher
from ssm_distill.data import build_data
from ssm_distill.train import Distiller, load_run_teacher, run_data_config

MIXER = 'phi_mamba'   # the demo's student
FULL_TOKENS, QUICK_TOKENS = 8192, 512
MQAR_TASK = dict(n_keys=16, n_values=16, n_pairs=16)
MQAR_SHAPE = dict(hidden_size=64, n_layers=4, n_heads=4)
MQAR_STEPS, MQAR_QUICK_STEPS, MQAR_BATCH = (30, 150), (3, 10), 32   # stage 2, stage 3 optimizer steps; sequences per step


def method_options(quick:bool) -> dict:
    "Each deterministic method's options (the student's mixer where a method builds or fits one)."
    small = dict(blocks=1, seq_len=32) if quick else {}
    return dict(uniform={}, matrix_error=dict(mixer=MIXER, steps=5 if quick else 100, **small),
                ablation_loss=dict(mixer=MIXER, **small), kl_restore=dict(mixer=MIXER, **small),
                retrieval=dict(**MQAR_TASK, n=64 if quick else 256))


def scores_of(teacher, methods, quick:bool, data:torch.Tensor, seed:int) -> dict[str, torch.Tensor]:
    "Every method's `[L, H]` scores of `teacher` on the training blocks `data`; `random` drawn with `seed`."
    opts = method_options(quick)
    return {m: score_heads(teacher, m, seed=seed) if m == 'random' else
               score_heads(teacher, m, data if m != 'retrieval' else None, **opts[m]) for m in methods}


def none_row(teacher_name:str, runs:Runs, seeds, keys) -> dict:
    "The student that keeps no attention: the baseline of every budget."
    got = [runs.get({}, s) for s in seeds]
    return dict(teacher=teacher_name, method='none', budget=0, unit='-', name=f'{teacher_name} none', choices=['none'], kept=[0],
                kv_bytes_per_token=[0], runs=got, summary=summarise(got, keys))


FROZEN = 'head, frozen'   # a unit of the rows whose kept heads stay the teacher's (student.train_kept_heads: false)


def cases(budgets:tuple[int, ...], n_heads:int, frozen:tuple[int, ...]=()) -> list[tuple[int, str]]:
    "(budget, unit) pairs: every budget as heads, as whole layers where it is at least one layer; `frozen` budgets as frozen heads."
    return [(b, u) for b in budgets for u in ('head', 'layer') if u == 'head' or b >= n_heads] + [(b, FROZEN) for b in frozen]


def key(choice:dict) -> str:
    "A choice as a stable string (what runs are shared by)."
    return json.dumps(dict(layers=sorted(choice.get('attention_layers', [])),
                           heads={str(l): sorted(hs) for l, hs in sorted(choice.get('attention_heads', {}).items())}))


def label(choice:dict, H:int) -> str:
    layers = choice.get('attention_layers', [])
    heads = ' '.join(f'L{l}H{h}' for l, hs in choice.get('attention_heads', {}).items() for h in hs)
    return ' '.join(filter(None, [f"layers {layers}" if layers else '', heads])) or 'none'


class Runs:
    "Every distinct choice run once per seed; rows per (method, budget, unit) point at them."
    def __init__(self, run_one): self.run_one, self.done = run_one, {}

    def get(self, choice:dict, seed:int, train_kept:bool=True) -> dict:
        k = (key(choice), seed, train_kept)
        if k not in self.done:
            t0 = time.time()
            self.done[k] = dict(seed=seed, **self.run_one(choice, seed, train_kept), wall_s=time.time() - t0)
        return self.done[k]


def table_rows(teacher_name:str, teacher, methods, budgets, seeds, scores_for_seed, runs:Runs, on_row, frozen=()) -> list[dict]:
    "One row per method, budget and unit: the choice (per seed for `random`), its runs, their summary."
    H, rows = teacher.n_heads, []
    for budget, unit in cases(budgets, H, frozen):
        for m in methods:
            t0, got, choices = time.time(), [], []
            for s in seeds:
                choice = select(scores_for_seed(m, s), budget, 'head' if unit == FROZEN else unit)
                choices.append(choice); got.append(runs.get(choice, s, unit != FROZEN))
            rows.append(dict(teacher=teacher_name, method=m, budget=budget, unit=unit,
                             name=f'{teacher_name} {budget} ({unit}) {m}',
                             choices=[label(c, H) for c in choices], kept=[len(chosen_heads(c, H)) for c in choices],
                             kv_bytes_per_token=[kv_bytes_per_token(teacher, c) for c in choices],
                             runs=got, summary=summarise(got, [k for k in got[0] if k not in ('seed', 'wall_s')]),
                             wall_s=time.time() - t0))
            on_row(rows[-1])
    return rows


def builtin_part(args, methods, save) -> tuple[list[dict], dict]:
    "Phi-Mamba hybrids of the built-in teacher, MOHAWK 1+2+3 at 8,192 tokens: perplexity and agreement."
    teacher = load_run_teacher('builtin')
    total = QUICK_TOKENS if args.quick else FULL_TOKENS
    stages = recipe((1, 2, 3), total, default_shares(args.quick, total), step_tokens(args.quick))
    base = base_config(args.quick, total, stages, train_kept_heads=True)
    data = build_data(run_data_config(base), teacher[1]).train[:8]   # training text (the held-out blocks are measured on)
    t = teacher[0]
    fixed = scores_of(t, [m for m in methods if m != 'random'], args.quick, data, seed=0)
    scores = {s: fixed | scores_of(t, ['random'], args.quick, data, seed=s) for s in args.seeds}   # random: a draw per seed

    def run_one(choice, seed, train_kept):
        cfg = vary(seeded(base, seed), **{'student.attention_layers': choice.get('attention_layers', []),
                                          'student.attention_heads': choice.get('attention_heads', {}),
                                          'student.train_kept_heads': train_kept},
                   out=tempfile.mkdtemp(prefix='selection-run-'))
        rep = Distiller(cfg, teacher=teacher, progress=False).run(resume=False, overwrite=True)
        return {k: rep[k] for k in ('student_perplexity', 'teacher_perplexity', 'teacher_agreement')}

    runs = Runs(run_one)
    none = none_row('builtin', runs, args.seeds, ['student_perplexity', 'teacher_perplexity', 'teacher_agreement'])
    save(none)
    rows = [none] + table_rows('builtin', t, methods, (4, 8) if args.quick else (8, 16), args.seeds,
                               lambda m, s: scores[s][m], runs, save)
    return rows, dict(scores={m: s.tolist() for m, s in fixed.items()}, stages=stages, total_tokens=total)


def mqar_teacher(seed:int, quick:bool):
    "A 4 x 4 Llama trained on MQAR from seed `seed` (where its recall head ends up differs between seeds)."
    task = MQARConfig(**MQAR_TASK)
    model = tiny_llama(task, **MQAR_SHAPE, seed=seed)
    hist = train_recall(model, task, steps=200 if quick else 1500, batch_size=64, lr=3e-3, stop_at=0.99, eval_every=25,
                        seed=seed, progress=False)
    return load_teacher(model).freeze(), dict(steps=hist[-1]['step'], recall=recall_eval(model, task))


def mqar_part(args, methods, save) -> tuple[list[dict], dict]:
    "Phi-Mamba hybrids of recall teachers (one per seed), stages 2+3: held-out recall."
    task = MQARConfig(**MQAR_TASK)
    steps = MQAR_QUICK_STEPS if args.quick else MQAR_STEPS
    train_ids, held = mqar_blocks(task, sum(steps) * MQAR_BATCH, n_eval=256, seed=0)
    teachers, scores, taught = {}, {}, {}
    for s in args.seeds:   # every seed its own teacher, scored on its own
        teachers[s], taught[s] = mqar_teacher(s, args.quick)
        scores[s] = scores_of(teachers[s], methods, args.quick, train_ids[:8], seed=s)

    def run_one(choice, seed, train_kept):
        cfg = recall_run_config(task, dict(mixer=MIXER, train_kept_heads=train_kept, **choice), steps, MQAR_BATCH, seed=seed)
        d = Distiller(cfg, teacher=(teachers[seed], None), data=(train_ids, held), progress=False)
        d.run(resume=False, overwrite=True)
        return dict(recall=recall_eval(d.student, task))

    runs = Runs(run_one)
    none = none_row('mqar', runs, args.seeds, ['recall'])
    save(none)
    t0 = teachers[args.seeds[0]]
    rows = [none] + table_rows('mqar', t0, methods, (1, 4) if args.quick else (1, 4, 8), args.seeds,
                               lambda m, s: scores[s][m], runs, save, frozen=(1,))
    first = {m: v.tolist() for m, v in scores[args.seeds[0]].items() if m != 'random'}
    return rows, dict(scores=first, scores_by_seed={s: {m: v.tolist() for m, v in sc.items()} for s, sc in scores.items()},
                      correlation_by_seed={s: correlation_table({m: v for m, v in sc.items() if m != 'random'}) for s, sc in scores.items()},
                      teachers=taught, task=MQAR_TASK, shape=MQAR_SHAPE, steps=steps, batch=MQAR_BATCH)


def print_table(rows:list[dict], metrics:tuple[str, ...]):
    print('\n| teacher | budget | unit | method | kept as attention (seed 0) | ' + ' | '.join(metrics) + ' |')
    print('|---|---|---|---|---|' + '---|' * len(metrics))
    for r in rows:
        print(f"| {r['teacher']} | {r['budget']} | {r['unit']} | {r['method']} | {r['choices'][0]} | "
              + ' | '.join(fmt_mean_std(r['summary'][k], 3) for k in metrics) + ' |')


def figure(rows:list[dict]):
    "One panel per teacher: each method's metric by budget and unit (mean ± std over seeds)."
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    panels = [('builtin', 'student_perplexity', 'built-in teacher: held-out perplexity (lower is better)'),
              ('mqar', 'recall', 'MQAR teacher: held-out recall (higher is better)')]
    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=[p[2] for p in panels], vertical_spacing=0.16)
    methods = list(dict.fromkeys(r['method'] for r in rows if r['method'] != 'none'))
    colours = dict(zip(methods, ('#636efa', '#ab63fa', '#ef553b', '#00cc96', '#ffa15a', '#19d3f3')))
    for i, (t, metric, _) in enumerate(panels, 1):
        rs = [r for r in rows if r['teacher'] == t and r['method'] != 'none']
        for m in methods:
            mine = [r for r in rs if r['method'] == m]
            if not mine: continue
            fig.add_trace(go.Bar(x=[f"{r['budget']} ({r['unit']})" for r in mine], y=[r['summary'][metric]['mean'] for r in mine],
                                 error_y=dict(type='data', array=[r['summary'][metric]['std'] for r in mine]),
                                 name=m, legendgroup=m, showlegend=i == 1, marker_color=colours[m]), row=i, col=1)
        base = [r for r in rows if r['teacher'] == t and r['method'] == 'none']
        if base: fig.add_hline(y=base[0]['summary'][metric]['mean'], line_dash='dot', row=i, col=1,
                               annotation_text='no attention kept')
    fig.update_layout(barmode='group', title='Which attention to keep: each method\'s hybrid, distilled alike (mean ± std over seeds)',
                      height=720, width=1000, template='plotly_white')
    return fig


PARTS = dict(builtin=(builtin_part, [m for m in SELECTORS if m != 'retrieval'], ('student_perplexity', 'teacher_agreement')),
             mqar=(mqar_part, list(SELECTORS), ('recall',)))


def run_part(part:str, args) -> list[dict]:
    "One teacher's rows, saved to `selection_<part>.json` as each finishes (with the scores and their rank correlations)."
    fn, methods, _ = PARTS[part]
    t0, rows, meta = time.time(), [], dict(mixer=MIXER, methods=methods)
    def save(row):
        rows.append(row)
        print(f"  {row['name']}: {row['choices'][0]}: " + ', '.join(f"{k} {fmt_mean_std(v, 3)}" for k, v in row['summary'].items()),
              flush=True)
        write_results(f'selection_{part}', args, meta, rows, time.time() - t0)
    meta.update(fn(args, methods, save)[1])
    meta['correlation'] = correlation_table({m: torch.tensor(s) for m, s in meta['scores'].items()})
    write_results(f'selection_{part}', args, meta, rows, time.time() - t0)
    return rows


if __name__ == '__main__':
    import sys
    part = sys.argv.pop(sys.argv.index('--part') + 1) if '--part' in sys.argv else None   # one teacher (two can run side by side)
    if part: sys.argv.remove('--part')
    args = parse(__doc__)
    for p in [part] if part else PARTS: run_part(p, args)
    rows = []
    for p, (_, _, metrics) in PARTS.items():   # the tables and the figure from whatever parts have results
        f = args.out/f'selection_{p}.json'
        if f.exists():
            rows += json.loads(f.read_text())['rows']
            print_table([r for r in rows if r['teacher'] == p], metrics)
    write_figure('selection', args, figure(rows))
