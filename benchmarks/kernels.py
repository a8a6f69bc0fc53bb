"""Time every kernel family's chunked form against its quadratic (naive) and step-by-step (recurrent) forms.

On CPU: T in {256, 1024, 4096}; on CUDA, also against the fast kernels (flash-linear-attention, mamba-ssm) when
installed. All forms of one (family, T) are measured side by side in the same process, so the ratios compare like
with like. Peak memory: on CUDA from the allocator; on CPU the peak resident-set growth of a forked child that runs
just that one call. Writes benchmarks/results/kernels-<device>.json and prints the ratios.

    python benchmarks/kernels.py                       # CPU, the default lengths
    python benchmarks/kernels.py --device cuda         # GPU, with the fast kernels
    python benchmarks/kernels.py --lengths 256 1024 --families gla ssd
"""
from __future__ import annotations
import argparse, json, os, platform, statistics, subprocess, sys, time
from pathlib import Path

import torch
from tqdm import tqdm

from ssm_distill.kernels import FAMILIES
import ssm_distill.kernels_delta  # noqa: F401  (registers the delta-rule, mLSTM and selective-scan families)

RESULTS = Path(__file__).resolve().parent/'results'
NAIVE_BYTES_CAP = 2 * 2**30  # skip a quadratic form whose [B, H, T, T, K] intermediate would pass this
MAX_CALL_S = 60.  # a form slower than this per call is timed once; one expected to pass it at a longer T is skipped


def _sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def _time(fn, device, repeats):
    "`dict(seconds=, calls=)`: the median wall time of `repeats` calls after a warm-up call, or the warm-up alone\n\n    when that one took more than `MAX_CALL_S` (then `calls` is 1 and `seconds` includes any warm-up cost)."
    with torch.no_grad():
        t0 = time.perf_counter(); fn(); _sync(device); first = time.perf_counter() - t0
        if first > MAX_CALL_S: return dict(seconds=first, calls=1)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter(); fn(); _sync(device); times.append(time.perf_counter() - t0)
    return dict(seconds=statistics.median(times), calls=repeats)


def _too_slow(prev, T):
    "Why to skip a form at length `T` given its fastest `(T, seconds)` per step at shorter lengths, or None.\n\n    The fastest rate seen, times T (linear growth at least): on a shared machine one slow, noisy timing must not\n    skip a form that would fit."
    if prev is None or prev[1] * T / prev[0] <= MAX_CALL_S: return None
    return (f'{prev[1]:.0f} s per call at T={prev[0]}: at least {prev[1] * T / prev[0]:.0f} s expected at T={T}, '
            f'over the {MAX_CALL_S:.0f} s budget per call')


def _cpu_peak_bytes(family, form, T, B, H, K, chunk_size, dtype):
    "Peak resident-set growth of a fresh process that makes the inputs, then runs one call of `form` (Linux).\n\n    A fresh process, not a fork: a forked child of a process that has run OpenMP regions can deadlock."
    args = ['--measure', family, form, str(T), '--batch', str(B), '--heads', str(H), '--dim', str(K),
            '--chunk-size', str(chunk_size), '--dtype', str(dtype).replace('torch.', '')]
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def _rss_kib(field):
    "A field of /proc/self/status in KiB: 'VmRSS' (resident now) or 'VmHWM' (the resident peak)."
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'): return int(line.split()[1])
    raise KeyError(field)


def _measure_here(family, form, T, B, H, K, chunk_size, dtype):
    """The child side of `_cpu_peak_bytes`: print the peak RSS growth of one call.

    Not `ru_maxrss`: Linux keeps it across `execve`, so a child of a parent that once held 4 GiB reports 4 GiB
    whatever it does. The child resets its own high-water mark (`/proc/self/clear_refs`, Linux >= 4.0) once the
    inputs exist, then reports VmHWM - VmRSS around the call."""
    fam = FAMILIES[family]
    args = fam.inputs(B, T, H, K, K, dtype=dtype)
    fn = forms(fam, args, torch.device('cpu'), chunk_size)[form]
    with open('/proc/self/clear_refs', 'w') as f: f.write('5')  # VmHWM := VmRSS
    start = _rss_kib('VmRSS')
    with torch.no_grad(): fn()
    print(max(_rss_kib('VmHWM') - start, 0) * 1024)


def _cuda_peak_bytes(fn):
    "Peak CUDA allocation growth during one call of `fn`."
    torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    with torch.no_grad(): fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def forms(fam, args, device, chunk_size):
    "The callables to compare for one family: name -> zero-argument function."
    out = {'chunk': lambda: fam.chunk(**args, chunk_size=chunk_size),
           'recurrent': lambda: fam.recurrent(**args),
           'naive': lambda: fam.naive(**args)}
    if device.type == 'cuda' and fam.fast:
        out[fam.fast] = lambda: fam.op(**args, chunk_size=chunk_size, backend=fam.fast)
    return out


def bench(device, lengths, families, B, H, K, repeats, chunk_size, dtype):
    rows, last = [], {}  # last: (family, form) -> (T, seconds) of its fastest time per step so far
    todo = [(n, T) for n in families for T in sorted(lengths)]
    for name, T in tqdm(todo, desc='kernels', mininterval=0.5):
        fam = FAMILIES[name]
        args = {k: v.to(device) if torch.is_tensor(v) else v
                for k, v in fam.inputs(B, T, H, K, K, dtype=dtype).items()}
        row = dict(family=name, T=T, B=B, H=H, K=K, chunk_size=chunk_size, dtype=str(dtype).replace('torch.', ''))
        for form, fn in forms(fam, args, device, chunk_size).items():
            if form == 'naive' and B * H * T * T * K * dtype.itemsize > NAIVE_BYTES_CAP:
                row[form] = dict(skipped=f'quadratic intermediate over {NAIVE_BYTES_CAP / 2**30:.0f} GiB'); continue
            if why := _too_slow(last.get((name, form)), T):
                row[form] = dict(skipped=why); continue
            try:
                reps = 1 if form == 'recurrent' and T >= 4096 and device.type == 'cpu' else repeats
                row[form] = _time(fn, device, reps)
                prev = last.get((name, form))
                if prev is None or row[form]['seconds'] / T < prev[1] / prev[0]: last[name, form] = (T, row[form]['seconds'])
                if device.type == 'cuda': row[form]['peak_bytes'] = _cuda_peak_bytes(fn)
                elif form in ('chunk', 'naive') and row[form]['seconds'] > MAX_CALL_S:
                    row[form]['peak_bytes_skipped'] = f'one call takes over {MAX_CALL_S:.0f} s; not run again for memory'
                elif form in ('chunk', 'naive'):
                    row[form]['peak_bytes'] = _cpu_peak_bytes(name, form, T, B, H, K, chunk_size, dtype)
            except Exception as e:  # a backend that refuses these inputs is recorded, not fatal
                row[form] = dict(skipped=f'{type(e).__name__}: {str(e)[:200]}')
        c = row['chunk'].get('seconds')
        if c is None: rows.append(row); continue
        row['ratios'] = {f'{form}/chunk': round(v['seconds'] / c, 2)
                         for form, v in row.items() if isinstance(v, dict) and 'seconds' in v and form != 'chunk'}
        rows.append(row)
    return rows


def memory_growth(rows):
    "Peak-memory ratio between consecutive lengths for each family's chunked form (linear growth: about T2/T1)."
    out = {}
    for name in sorted({r['family'] for r in rows}):
        rs = sorted((r for r in rows if r['family'] == name and 'peak_bytes' in r['chunk']), key=lambda r: r['T'])
        out[name] = [dict(T=f"{a['T']}->{b['T']}", length_ratio=b['T'] / a['T'],
                          peak_ratio=round(b['chunk']['peak_bytes'] / max(a['chunk']['peak_bytes'], 1), 2))
                     for a, b in zip(rs, rs[1:])]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--lengths', type=int, nargs='+', default=[256, 1024, 4096])
    p.add_argument('--families', nargs='+', default=sorted(FAMILIES))
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--heads', type=int, default=4)
    p.add_argument('--dim', type=int, default=64, help='head dim (K = V)')
    p.add_argument('--chunk-size', type=int, default=64)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--dtype', default=None, help='float32 on CPU, bfloat16 on CUDA by default')
    p.add_argument('--update', action='store_true', help='replace only the measured (family, T) rows of the results file')
    p.add_argument('--measure', nargs=3, metavar=('FAMILY', 'FORM', 'T'), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.measure:
        fam, form, T = a.measure
        return _measure_here(fam, form, int(T), a.batch, a.heads, a.dim, a.chunk_size, getattr(torch, a.dtype))
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype or ('bfloat16' if device.type == 'cuda' else 'float32'))
    torch.manual_seed(0)
    load = os.getloadavg()  # the machine may be shared: timings are only as steady as its load
    rows = bench(device, a.lengths, a.families, a.batch, a.heads, a.dim, a.repeats, a.chunk_size, dtype)
    name = 'cuda' if device.type == 'cuda' else 'cpu'
    meta = dict(device=torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or platform.machine(),
                threads=torch.get_num_threads(), load_avg=dict(before=load, after=os.getloadavg()), torch=torch.__version__, python=sys.version.split()[0],
                time=time.strftime('%Y-%m-%d %H:%M:%S'))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS/f'kernels-{name}.json'
    if a.update and out.exists():  # keep the other rows, with the meta of the run that measured them
        old = json.loads(out.read_text())
        runs = old['meta'].get('runs', [old['meta']])
        new = {(r['family'], r['T']) for r in rows}
        rows = sorted([r for r in old['rows'] if (r['family'], r['T']) not in new] + rows, key=lambda r: (r['family'], r['T']))
        for r in rows: r.setdefault('run', 0)
        meta = dict(runs=runs + [dict(meta, families=sorted({f for f, _ in new}))])
        for r in rows:
            if (r['family'], r['T']) in new: r['run'] = len(runs)
    out.write_text(json.dumps(dict(meta=meta, rows=rows, memory_growth=memory_growth(rows)), indent=1))
    for r in rows:
        c = r['chunk']
        tail = '  '.join(f'{k}={v:g}x' for k, v in r.get('ratios', {}).items()) or c.get('skipped', '')
        print(f"{r['family']:>18} T={r['T']:>5}  chunk {c.get('seconds', float('nan')) * 1e3:9.2f} ms  {tail}")
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
