"""Forward time and memory of every mixer against sequence length, on log-log axes: softmax attention's quadratic
slope beside the subquadratic mixers' linear one.

Each mixer of `ssm_distill.mixers.MIXERS` is built at the built-in teacher's width (d_model 256, 8 heads of 32),
default options, and runs its parallel (chunked) forward on one random sequence `[1, T, 256]` under `torch.no_grad`.
All mixers of one length run interleaved (the order rotates per repeat), median of repeats of this process's CPU time
(steadier than wall time on a shared machine; both are kept); memory is the peak resident-set growth of one call
(Linux). The slope of log(CPU time) and log(memory) against log(T), fitted on the three
longest lengths each mixer reached, is the growth exponent: ~1 linear, ~2 quadratic. A mixer predicted (from its growth so
far) to need more than `--max-call-s` or `--max-gib` at the next length is skipped there, and the row says why.

    python benchmarks/scaling.py              # T = 256 .. 16384
    python benchmarks/scaling.py --quick      # T = 256, 1024, 4096, one repeat: about a minute

Writes benchmarks/results/scaling-cpu.json and scaling-cpu.html.
"""
from __future__ import annotations
import argparse, sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakMemory, elapsed, extrapolate, loglog_figure, loglog_slope, machine, median, now, rotated, write_results


def build(names:list[str], d_model:int, n_heads:int) -> dict:
    from ssm_distill.mixers import MIXERS
    torch.manual_seed(0)
    return {n: MIXERS[n](d_model, n_heads).eval() for n in names}


@torch.no_grad()
def bench(mixers:dict, lengths:list[int], d_model:int, repeats:int, max_call_s:float, max_gib:float) -> list[dict]:
    from tqdm import tqdm
    rows, hist_t, hist_m = [], {}, {}
    bar = tqdm(total=len(lengths) * len(mixers) * (repeats + 1), desc='scaling', mininterval=0.5)
    for T in lengths:
        x = torch.randn(1, T, d_model, generator=torch.Generator().manual_seed(T))
        skipped = {}
        for n in mixers:
            t_pred, m_pred = extrapolate(hist_t.get(n, []), T), extrapolate(hist_m.get(n, []), T)
            if t_pred is not None and t_pred > max_call_s: skipped[n] = f'predicted {t_pred:.0f} s per call > --max-call-s {max_call_s:g}'
            elif m_pred is not None and m_pred > max_gib * 2**30: skipped[n] = f'predicted {m_pred / 2**30:.1f} GiB > --max-gib {max_gib:g}'
        peaks, times = {}, {n: [] for n in mixers}
        for n in mixers:                                        # a first call measures memory (and warms up)
            if n not in skipped:
                with PeakMemory() as mem: mixers[n](x)
                peaks[n] = mem.bytes
            bar.update(1)
        for r in range(repeats):
            for n in rotated(list(mixers), r):
                if n not in skipped:
                    t0 = now(); mixers[n](x); times[n].append(elapsed(t0))
                bar.update(1)
        for n in mixers:
            if n in skipped: rows.append(dict(mixer=n, T=T, skipped=skipped[n])); continue
            rows.append(dict(mixer=n, T=T, seconds=median([w for w, _ in times[n]]), cpu_seconds=median([c for _, c in times[n]]),
                             peak_bytes=peaks[n], repeats=repeats))
            hist_t.setdefault(n, []).append((T, rows[-1]['cpu_seconds']))
            hist_m.setdefault(n, []).append((T, max(peaks[n], 1)))
    bar.close()
    return rows


def slopes(rows:list[dict], last:int=3) -> dict:
    "Per mixer: the log-log slope of time and of memory against T on its `last` longest measured lengths."
    out = {}
    for n in dict.fromkeys(r['mixer'] for r in rows):
        rs = sorted((r for r in rows if r['mixer'] == n and 'seconds' in r), key=lambda r: r['T'])[-last:]
        out[n] = dict(lengths=[r['T'] for r in rs], time=loglog_slope([r['T'] for r in rs], [r['cpu_seconds'] for r in rs]),
                      memory=loglog_slope([r['T'] for r in rs], [r['peak_bytes'] for r in rs]))
    return out


def figure(rows:list[dict], title:str):
    "Time and memory against T, one line per mixer, with gray guides of slope 1 and 2 through softmax attention's first point."
    import plotly.graph_objects as go
    panels = {'cpu_seconds': 'forward CPU time (s)', 'peak_bytes': 'peak memory growth (bytes)'}
    fig = loglog_figure(rows, 'mixer', 'T', 'sequence length T', panels, title)
    Ts = sorted({r['T'] for r in rows})
    for col, key in enumerate(panels, 1):
        base = next((r for r in rows if r['mixer'] == 'softmax_attention' and key in r), None)
        if base is None: continue
        for k, dash in ((1, 'dot'), (2, 'dash')):
            fig.add_trace(go.Scatter(x=Ts, y=[base[key] * (T / base['T']) ** k for T in Ts], name=f'slope {k}', mode='lines',
                                     line=dict(color='gray', dash=dash), legendgroup=f'slope {k}', showlegend=col == 1), row=1, col=col)
    return fig


def main(argv=None):
    from ssm_distill.mixers import MIXERS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--lengths', type=int, nargs='+', default=[256, 1024, 4096, 8192, 16384])
    p.add_argument('--mixers', nargs='+', default=list(MIXERS), choices=list(MIXERS))
    p.add_argument('--d-model', type=int, default=256)
    p.add_argument('--heads', type=int, default=8)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=1, help='torch threads (default 1: the machine is shared)')
    p.add_argument('--max-call-s', type=float, default=30.)
    p.add_argument('--max-gib', type=float, default=4.)
    p.add_argument('--quick', action='store_true', help='T = 256, 1024, 4096, one repeat')
    a = p.parse_args(argv)
    if a.quick: a.lengths, a.repeats = [256, 1024, 4096], 1
    torch.set_num_threads(a.threads)
    meta = dict(machine(a.threads), d_model=a.d_model, heads=a.heads, batch=1, repeats=a.repeats,
                method='each mixer\'s parallel forward on [1, T, d_model], no grad; interleaved per T, median; peak memory = '
                       'resident-set growth of one call (Linux); slopes (CPU time): least squares on log-log, three longest lengths')
    rows = bench(build(a.mixers, a.d_model, a.heads), sorted(a.lengths), a.d_model, a.repeats, a.max_call_s, a.max_gib)
    data = dict(meta=meta, rows=rows, slopes=slopes(rows), gpu=dict(rows='not measured', why=meta['gpu']))
    out = write_results('scaling', 'cpu', data, figure(rows, f"mixer forward vs sequence length (CPU, {a.threads} thread(s), "
                                                             f"d_model {a.d_model}, {a.heads} heads)"))
    for n, s in data['slopes'].items(): print(f"{n:>18}  time slope {s['time']}  memory slope {s['memory']}  (T = {s['lengths']})")
    print(f'wrote {out}')
    return data


if __name__ == '__main__':
    main()
