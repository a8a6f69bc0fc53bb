"Print every committed results file (results/*.json) as markdown tables: what experiments/README.md quotes."
import json, sys
from pathlib import Path

from runner import RESULTS
from ssm_distill.sweeps import fmt_mean_std, mean_std


def sweep_rows(res:dict) -> str:
    lines = ['| run | seeds | held-out perplexity | agreement with the teacher | perplexity / teacher |', '|---|---|---|---|---|']
    for r in res['rows']:
        s = r['summary']
        lines.append(f"| {r['name']} | {len(r['runs'])} | {fmt_mean_std(s['student_perplexity'], 1)} | "
                     f"{fmt_mean_std(s['teacher_agreement'], 3)} | {fmt_mean_std(s['perplexity_ratio'], 2)} |")
    return '\n'.join(lines)


def matrix_rows(res:dict) -> str:
    lines = ['| class | N | ‖M − A‖_F | relative to ‖A‖_F | steps | stopped |', '|---|---|---|---|---|---|']
    for r in res['rows']:
        lines.append(f"| {r['kind']} | {r['N']} | {'%.3f ± %.3f' % mean_std(r['error'])} | {'%.3f ± %.3f' % mean_std(r['relative'])} "
                     f"| {r['steps']} | {r['stopped']} |")
    return '\n'.join(lines)


def stage_rows(res:dict) -> str:
    "The measures taken after every stage (`<measure>@<stage>` in each row's summary), mean ± std."
    m = res['meta']['per_stage']
    stages = sorted({int(k.split('@')[1]) for k in res['rows'][0]['summary'] if '@' in k})
    lines = ['| run | ' + ' | '.join(f"{x} after {' / '.join(map(str, stages))}" for x in m) + ' |', '|---|' + '---|' * len(m)]
    for r in res['rows']:
        cell = lambda x: ' / '.join(fmt_mean_std(r['summary'][f'{x}@{s}'], 1 if x == 'perplexity' else 3) for s in stages)
        lines.append(f"| {r['name']} | " + ' | '.join(cell(x) for x in m) + ' |')
    return '\n'.join(lines)

def selection_rows(res:dict) -> str:
    "Each method's hybrid per budget and unit: the heads it kept (seed 0) and its measures, mean ± std."
    keys = [k for k in res['rows'][-1]['summary'] if k != 'teacher_perplexity']
    lines = ['| budget | unit | method | kept (seed 0) | KV bytes/token | ' + ' | '.join(keys) + ' |', '|---|---|---|---|---|' + '---|' * len(keys)]
    for r in res['rows']:
        lines.append(f"| {r['budget']} | {r['unit']} | {r['method']} | {r['choices'][0]} | {r['kv_bytes_per_token'][0]:,} | "
                     + ' | '.join(fmt_mean_std(r['summary'][k], 3) for k in keys) + ' |')
    return '\n'.join(lines)


TABLES = dict(matrix_classes=matrix_rows, selection_builtin=selection_rows, selection_mqar=selection_rows)   # default: sweep_rows

if __name__ == '__main__':
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    for f in sorted(folder.glob('*.json')):
        res = json.loads(f.read_text())
        print(f"\n### {res['experiment']} ({'quick' if res['quick'] else 'full'}, {res['wall_s'] / 60:.1f} min)\n")
        if 'teacher_perplexity' in res['rows'][0].get('summary', {}):
            print(f"teacher perplexity {res['rows'][0]['summary']['teacher_perplexity']['mean']:.2f}; seeds {res['seeds']}\n")
        print(TABLES.get(res['experiment'], sweep_rows)(res))
        if res['meta'].get('per_stage'): print('\n' + stage_rows(res))
