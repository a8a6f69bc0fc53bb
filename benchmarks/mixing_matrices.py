"""Time every kernel family's materialised mixing matrix (`FAMILIES[name].mixing_matrix`), and the per-channel ones
(GLA, Mamba-1's selective scan) against their naive twins built through the per-channel `[N, T, T]` decay tensor.

Each row is one (family, T), measured side by side in one process: seconds per call (median of `--repeats`), the
ratio to SSD's matrix at the same shape, per output matrix (Mamba-1 returns one `[T, T]` matrix per channel, the
others one per head), and for the per-channel families the naive/fast ratio. Peak memory on CPU:
the resident-set growth of a fresh child process that runs just that call (as in `benchmarks/kernels.py`). Writes
benchmarks/results/mixing_matrices-<device>.json.

    python benchmarks/mixing_matrices.py                      # CPU, T = 128 and 512
    python benchmarks/mixing_matrices.py --lengths 512 --families gla ssd selective_scan
"""
from __future__ import annotations
import argparse, json, os, platform, subprocess, sys, time

import torch

from ssm_distill.kernels import FAMILIES, decayed_scores, default_scale
from ssm_distill.kernels_delta import naive_selective_scan_mixing_matrix
from kernels import RESULTS, NAIVE_BYTES_CAP, _rss_kib, _time   # benchmarks/kernels.py, next to this file

NAIVES = {   # family -> its mixing matrix through the per-channel decay tensor, and that tensor's size in elements
    'gla': (lambda a: decayed_scores(a['q'] * default_scale(a.get('scale'), a['q'].shape[-1]), a['k'], a['g']),
            lambda a: a['q'].numel() * a['q'].shape[1]),                                   # [B, H, K, T, T]
    'selective_scan': (lambda a: naive_selective_scan_mixing_matrix(**a),
                       lambda a: a['A'].numel() * a['u'].shape[0] * a['u'].shape[-1] ** 2),  # [B, Dch, N, T, T]
}


def inputs(family, T, B, H, K, V, dtype):
    "The family's random valid arguments (V: values per head; Mamba-1's channels are H * V)."
    torch.manual_seed(0)
    return FAMILIES[family].inputs(B, T, H, K, V, dtype=dtype)


def call(family, form, args):
    "The zero-argument call of `form` ('fast': the family's `mixing_matrix`, 'naive': its naive twin)."
    if form == 'naive': return lambda: NAIVES[family][0](args)
    return lambda: FAMILIES[family].mixing_matrix(**args)


def peak_bytes(family, form, T, a):
    "Peak resident-set growth of one call in a fresh process (Linux)."
    cmd = [sys.executable, __file__, '--measure', family, form, str(T), '--batch', str(a.batch), '--heads', str(a.heads),
           '--dim', str(a.dim), '--values', str(a.values), '--dtype', a.dtype]
    return int(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def measure_here(family, form, T, a):
    "The child side of `peak_bytes`: reset the high-water mark once the inputs exist, print the growth of one call."
    fn = call(family, form, inputs(family, T, a.batch, a.heads, a.dim, a.values, getattr(torch, a.dtype)))
    with open('/proc/self/clear_refs', 'w') as f: f.write('5')  # VmHWM := VmRSS
    start = _rss_kib('VmRSS')
    with torch.no_grad(): fn()
    print(max(_rss_kib('VmHWM') - start, 0) * 1024)


def bench(a):
    dtype, rows = getattr(torch, a.dtype), []
    for T in a.lengths:
        ssd_s = None
        for family in sorted(a.families, key=lambda f: f != 'ssd'):   # SSD first: the yardstick
            args = inputs(family, T, a.batch, a.heads, a.dim, a.values, dtype)
            row = dict(family=family, T=T, B=a.batch, H=a.heads, K=a.dim, V=a.values, dtype=a.dtype)
            forms = ['fast'] + (['naive'] if family in NAIVES else [])
            for form in forms:
                if form == 'naive' and NAIVES[family][1](args) * dtype.itemsize > NAIVE_BYTES_CAP:
                    row[form] = dict(skipped=f'decay tensor over {NAIVE_BYTES_CAP / 2**30:.0f} GiB'); continue
                row[form] = _time(call(family, form, args), torch.device('cpu'), a.repeats)
                row[form]['peak_bytes'] = peak_bytes(family, form, T, a)
            with torch.no_grad(): row['matrices'] = call(family, 'fast', args)()[..., 0, 0].numel()   # [T, T] matrices out
            per_matrix = row['fast']['seconds'] / row['matrices']
            if family == 'ssd': ssd_s = per_matrix
            row['ratios'] = {'fast/ssd per matrix': round(per_matrix / ssd_s, 2)}
            if 'seconds' in row.get('naive', {}): row['ratios']['naive/fast'] = round(row['naive']['seconds'] / row['fast']['seconds'], 1)
            rows.append(row)
            print(f"{family:>18} T={T:>4}  {row['fast']['seconds'] * 1e3:9.2f} ms  {row['fast']['peak_bytes'] / 2**20:8.1f} MiB  "
                  + '  '.join(f'{k}={v:g}x' for k, v in row['ratios'].items()), flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--lengths', type=int, nargs='+', default=[128, 512])
    p.add_argument('--families', nargs='+', default=sorted(FAMILIES))
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--heads', type=int, default=4)
    p.add_argument('--dim', type=int, default=64, help='key dim / state size N')
    p.add_argument('--values', type=int, default=16, help='value dim per head (Mamba-1: channels per head)')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--dtype', default='float32')
    p.add_argument('--measure', nargs=3, metavar=('FAMILY', 'FORM', 'T'), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.measure: return measure_here(a.measure[0], a.measure[1], int(a.measure[2]), a)
    load = os.getloadavg()  # a shared machine: timings are only as steady as its load
    rows = bench(a)
    meta = dict(device=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                load_avg=dict(before=load, after=os.getloadavg()), torch=torch.__version__, python=sys.version.split()[0],
                time=time.strftime('%Y-%m-%d %H:%M:%S'))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS/'mixing_matrices-cpu.json'
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
