"What every reproduction shares: its command line, the base run, stage recipes at a token split, results and figures."
from __future__ import annotations
import argparse, json, logging, os, platform, time, warnings
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ssm_distill.config import StageConfig, stage_budgets
from ssm_distill.demo import demo_config
from ssm_distill.core import require
from ssm_distill.sweeps import fmt_mean_std, sweep, sweep_table, vary
from ssm_distill.train import load_run_teacher

HERE = Path(__file__).parent
RESULTS = HERE/'results'
SEEDS = (0, 1, 2)
# the reported metrics: held-out perplexity and top-1 agreement with the teacher (no zero-shot benchmark is
# meaningful for a 4-layer, 4096-token-vocabulary teacher; `eval.direct_scores` exists but is at chance here)
METRICS = ('student_perplexity', 'teacher_agreement')
# seq_len and batch are the demo's (`ssm-distill demo`); the held-out set: 32 blocks of 128 tokens (the demo uses 64)
SEQ_LEN, BATCH, EVAL_BLOCKS = 128, 8, 32
QUICK = dict(seq_len=32, batch_size=4, eval_blocks=8, max_tokens=40_000)


def parse(doc:str) -> argparse.Namespace:
    "The command line of every script: --quick (tiny budgets, one seed, results under results/quick/), --seeds, --missing."
    p = argparse.ArgumentParser(description=doc)
    p.add_argument('--quick', action='store_true', help='tiny budgets and one seed (seconds): checks the script runs')
    p.add_argument('--seeds', type=int, nargs='+', default=None, help='seeds (each sets seed and data.seed; default 0 1 2)')
    p.add_argument('--out', default=None, help='results folder (default experiments/results, or results/quick with --quick)')
    p.add_argument('--missing', action='store_true',
                   help='run only the configs missing from the results file (new mixers or variants) and merge them in')
    a = p.parse_args()
    a.seeds = tuple(a.seeds or ((0,) if a.quick else SEEDS))
    a.out = Path(a.out) if a.out else (RESULTS/'quick' if a.quick else RESULTS)
    quiet()
    return a


def quiet():
    "Keep the output to the tables: no per-run info logs, no weight-loading bars."
    logging.getLogger('ssm_distill').setLevel(logging.WARNING)
    os.environ.setdefault('HF_HUB_DISABLE_PROGRESS_BARS', '1')
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error(); hf_logging.disable_progress_bar()
    warnings.filterwarnings('ignore', category=UserWarning)


def base_config(quick:bool, total_tokens:int, stages:list[dict]|None=None, **student):
    "The demo's run (built-in teacher, Phi-Mamba student, QKV copy) at `total_tokens`, with `stages` and student fields."
    cfg = demo_config()
    data = dict(seq_len=SEQ_LEN, batch_size=BATCH, eval_blocks=EVAL_BLOCKS) if not quick else QUICK
    changes = {**{f'data.{k}': v for k, v in data.items()}, **{f'student.{k}': v for k, v in student.items()},
               'checkpoint_every': 0, 'total_tokens': total_tokens}
    if stages is not None: changes['stages'] = stages
    return vary(cfg, **changes)


# MOHAWK's stages as this package names them, and the learning rates of the demo
STAGE_KINDS = {1: 'matrix_orientation', 2: 'hidden_state_alignment', 3: 'kd'}
STAGE_LR = {1: 1e-2, 2: 3e-3, 3: 1e-3}


def default_shares(quick:bool, total:int) -> dict[int, float]:
    "The package's default split of `total` as shares: MOHAWK's, stage 1 raised to its `min_steps` (`config.stage_budgets`)."
    d = QUICK if quick else dict(seq_len=SEQ_LEN, batch_size=BATCH)
    cfg = demo_config()   # not validated: at small budgets stage 2's share is under one step, which `recipe` rounds up
    cfg = replace(cfg, total_tokens=total, stages=[StageConfig(STAGE_KINDS[s], lr=STAGE_LR[s]) for s in STAGE_KINDS],
                  data=replace(cfg.data, seq_len=d['seq_len'], batch_size=d['batch_size']))
    return {s: b / total for s, b in zip(STAGE_KINDS, stage_budgets(cfg))}


def recipe(stages:tuple[int, ...], # MOHAWK stages kept, e.g. (2, 3)
           total:int, # the run's token budget
           shares:dict[int, float], # each stage's share of `total` in the full recipe, e.g. {1: 1/8, 2: 2/8, 3: 5/8}
           step_tokens:int, # tokens per optimizer step (stage budgets are rounded to whole steps)
          ) -> list[dict]:
    "The stage list of `stages` at equal total tokens: a dropped stage's tokens go to the next kept stage (the last: to the one before)."
    budget = {s: 0.0 for s in stages}
    for s in sorted(shares):
        later = [k for k in stages if k >= s]
        budget[later[0] if later else stages[-1]] += shares[s] * total
    steps = {s: max(1, round(budget[s] / step_tokens)) for s in stages[:-1]}
    steps[stages[-1]] = max(1, round(total / step_tokens) - sum(steps.values()))   # the last takes what is left: equal totals
    return [dict(kind=STAGE_KINDS[s], lr=STAGE_LR[s], warmup=0.05, tokens=steps[s] * step_tokens) for s in stages]


def step_tokens(quick:bool) -> int:
    d = QUICK if quick else dict(seq_len=SEQ_LEN, batch_size=BATCH)
    return d['seq_len'] * d['batch_size']


def run_configs(name:str, configs:dict, args, meta:dict, teacher=None,
                callbacks=None, # () -> fresh callbacks per run, whose `measures()` join the run's numbers (`sweeps.run_seeds`)
               ) -> list[dict]:
    "Sweep `configs` over `args.seeds`, saving `<name>.json` after every config (a stopped run keeps what it finished)."
    t0, rows = time.time(), []
    meta = dict(meta, metrics=METRICS, configs={k: asdict(c) for k, c in configs.items()})
    def save(row):
        rows.append(row)
        print(f"  {row['name']}: " + ', '.join(f"{k} {fmt_mean_std(row['summary'][k], 3)}" for k in METRICS)
              + f" ({row['wall_s']:.0f} s)", flush=True)
        write_results(name, args, meta, rows, time.time() - t0)
    sweep(configs, seeds=args.seeds, teacher=teacher or load_run_teacher('builtin'), on_row=save, callbacks=callbacks)
    return rows


def write_results(name:str, args, meta:dict, rows:list[dict], wall_s:float) -> Path:
    "`<out>/<name>.json`: what was run (meta, seeds, mode), every run of every config, the summaries, the wall time."
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out/f'{name}.json'
    payload = dict(experiment=name, quick=args.quick, seeds=list(args.seeds), meta=meta, wall_s=wall_s,
                   machine=dict(python=platform.python_version(), torch=torch.__version__, threads=torch.get_num_threads()),
                   rows=rows)
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def merge_missing(name:str, cfgs:dict, args, meta:dict, run) -> list[dict]:
    "Run (`run(configs) -> rows`) only the configs `<out>/<name>.json` lacks, then write every row, in `cfgs` order."
    path = args.out/f'{name}.json'
    require(path.exists(), f"--missing adds rows to {path}, which does not exist; run the script without --missing first")
    old = json.loads(path.read_text())
    require(old['seeds'] == list(args.seeds), f"{path} was run with seeds {old['seeds']}; pass --seeds {' '.join(map(str, old['seeds']))}")
    have = {r['name']: r for r in old['rows']}
    todo = {k: c for k, c in cfgs.items() if k not in have}
    new = {r['name']: r for r in (run(todo) if todo else [])}
    (args.out/f'{name}.new.json').unlink(missing_ok=True)   # where `run` saved its rows as they finished
    rows = [have.get(k) or new[k] for k in cfgs if k in have or k in new]
    meta = dict(old['meta'], **{k: v for k, v in meta.items() if k != 'configs'},   # what this run says wins; configs add up
                configs={**old['meta']['configs'], **{k: asdict(c) for k, c in todo.items()}})
    write_results(name, args, meta, rows, old['wall_s'] + sum(r['wall_s'] for r in new.values()))
    return rows


def write_figure(name:str, args, fig) -> Path:
    "`<out>/<name>.html` (plotly.js from its CDN; kaleido, for PNGs, is not installed here)."
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out/f'{name}.html'
    fig.write_html(path, include_plotlyjs='cdn')
    return path


def bars(rows:list[dict], metric:str, title:str, x:list[str]|None=None, color:list[str]|None=None):
    "One bar per config: the mean of `metric` over seeds, the std as an error bar, each seed as a dot."
    import plotly.graph_objects as go
    x = x or [r['name'] for r in rows]
    fig = go.Figure(go.Bar(x=x, y=[r['summary'][metric]['mean'] for r in rows], marker_color=color,
                           error_y=dict(type='data', array=[r['summary'][metric]['std'] for r in rows]), name='mean ± std'))
    fig.add_trace(go.Scatter(x=[xi for xi, r in zip(x, rows) for _ in r['runs']], y=[s[metric] for r in rows for s in r['runs']],
                             mode='markers', marker=dict(color='black', size=5), name='one seed'))
    fig.update_layout(title=title, yaxis_title=metric.replace('_', ' '), xaxis_title='run', template='plotly_white')
    return fig


def table(rows:list[dict], keys=METRICS) -> str:
    "The rows as a markdown table of mean ± std, printed and returned."
    t = sweep_table(rows, keys)
    print(t)
    return t


def teacher_numbers(rows:list[dict]) -> dict:
    "The teacher's held-out perplexity (the same for every run: one split)."
    return rows[0]['summary']['teacher_perplexity']
