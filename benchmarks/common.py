"""What the benchmarks share: the machine they ran on, in-process peak-memory growth (Linux), medians, log-log slopes,
interleaved order, and the results files (benchmarks/results/<name>-<device>.json and a plotly figure beside it)."""
from __future__ import annotations
import ctypes, gc, json, math, os, platform, statistics, sys, time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent/'results'
GPU_NOT_MEASURED = 'not measured: no GPU in the session that ran this; run with --device cuda on one'


def _first_line(path:str, key:str) -> str|None:
    try:
        for line in open(path):
            if line.startswith(key): return line.split(':', 1)[1].strip()
    except OSError: return None


def machine(threads:int, device:torch.device|None=None) -> dict:
    "The machine and software a run measured: CPU model, cores, memory, threads used, load before the run, versions, GPU."
    import transformers
    mem = _first_line('/proc/meminfo', 'MemTotal')
    return dict(cpu=_first_line('/proc/cpuinfo', 'model name') or platform.processor() or platform.machine(),
                cores=os.cpu_count(), memory_gib=round(int(mem.split()[0]) / 2**20, 1) if mem else None,
                torch_threads=threads, load_avg_before=os.getloadavg(), torch=torch.__version__,
                transformers=transformers.__version__, python=sys.version.split()[0], time=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
                gpu=torch.cuda.get_device_name(device) if device is not None and device.type == 'cuda' else GPU_NOT_MEASURED)


def rss_kib(field:str) -> int:
    "A field of /proc/self/status in KiB: 'VmRSS' (resident now) or 'VmHWM' (the resident high-water mark)."
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'): return int(line.split()[1])
    raise KeyError(field)


def _release():
    "Give freed memory back to the OS, so that the resident size is what is live (glibc's malloc_trim)."
    gc.collect()
    try: ctypes.CDLL('libc.so.6').malloc_trim(0)
    except OSError: pass


class PeakMemory:
    """Peak resident-memory growth of this process inside a `with` block (Linux >= 4.0: /proc/self/clear_refs resets the
    high-water mark). `restart()` returns the growth so far and starts a new window from the current resident size;
    after the block, `bytes` holds the last window's growth."""
    def _reset(self):
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')   # VmHWM := VmRSS
        self.start = rss_kib('VmRSS')

    def __enter__(self):
        _release(); self._reset(); return self

    def restart(self) -> int:
        peak = max(rss_kib('VmHWM') - self.start, 0) * 1024
        self._reset()
        return peak

    def __exit__(self, *exc):
        self.bytes = max(rss_kib('VmHWM') - self.start, 0) * 1024


class CudaPeakMemory:
    "`PeakMemory` on the CUDA allocator: the peak bytes allocated above the start of each window (same interface)."
    def _reset(self):
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); self.start = torch.cuda.memory_allocated()

    def __enter__(self):
        torch.cuda.empty_cache(); self._reset(); return self

    def restart(self) -> int:
        torch.cuda.synchronize()
        peak = max(torch.cuda.max_memory_allocated() - self.start, 0)
        self._reset()
        return peak

    def __exit__(self, *exc):
        torch.cuda.synchronize(); self.bytes = max(torch.cuda.max_memory_allocated() - self.start, 0)


def copy_bandwidth(nbytes:int, repeats:int=7) -> float:
    """Bytes/s that `dst.copy_(src)` moves (read + written) through a working set of `nbytes` (src and dst half each), at the
    current torch thread count, best of `repeats`: the rate at which a decode step could stream its `nbytes` from wherever
    they fit (a cache level, or DRAM beyond the last one)."""
    src = torch.rand(max(nbytes // 8, 1024)); dst = torch.empty_like(src)   # float32, nbytes / 2 each
    dst.copy_(src); times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); dst.copy_(src); times.append(time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / min(times)


def now() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). On a shared machine the CPU time is the steadier measure of the work
    done (other processes' load stretches the wall time, not it); single-threaded, the two agree on an idle machine."""
    return time.perf_counter(), time.process_time()


def elapsed(t0:tuple[float, float], t1:tuple[float, float]|None=None) -> tuple[float, float]:
    "(wall, CPU) seconds from `t0` to `t1` (default: now)."
    t1 = t1 or now()
    return t1[0] - t0[0], t1[1] - t0[1]


def rotated(names:list, r:int) -> list:
    "`names` rotated by `r`: repeat r starts with another entry, so no one always runs first (interleaving)."
    r %= len(names)
    return names[r:] + names[:r]


def median(xs:list[float]) -> float|None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def loglog_slope(xs:list[float], ys:list[float]) -> float|None:
    "The least-squares slope of log(y) against log(x): 1 for linear growth, 2 for quadratic; None under two points."
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y and y > 0]
    if len(pts) < 2: return None
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return round(sum((p[0] - mx) * (p[1] - my) for p in pts) / den, 3) if den else None


def write_results(name:str, device:str, data:dict, fig=None) -> Path:
    "Write benchmarks/results/<name>-<device>.json (and .html with the figure, plotly.js from its CDN); return the JSON path."
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS/f'{name}-{device}.json'
    out.write_text(json.dumps(data, indent=1, default=str))
    if fig is not None: fig.write_html(RESULTS/f'{name}-{device}.html', include_plotlyjs='cdn')
    return out


def extrapolate(history:list[tuple[int, float]], T:int) -> float|None:
    "A quantity measured at shorter lengths `[(T_i, value_i)]`, extrapolated to `T` with its last log-log growth (>= linear)."
    if not history: return None
    (T0, v0), slope = history[-1], 1.0
    if len(history) >= 2:
        (Ta, va), (Tb, vb) = history[-2], history[-1]
        if va > 0 and vb > 0: slope = max(1.0, math.log(vb / va) / math.log(Tb / Ta))
    return v0 * (T / T0) ** slope


def loglog_figure(rows:list[dict], series:str, # the row key whose values are the lines (model, mixer)
                  x:str, x_title:str, panels:dict[str, str], # y key -> panel title, one log-log panel each
                  title:str, dashed:tuple=()): # series drawn dashed (the reference)
    "A plotly figure: one log-log panel per `panels` entry, one line per value of `rows[i][series]` (rows lacking a key skipped)."
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels.values()))
    for n in dict.fromkeys(r[series] for r in rows):
        rs = [r for r in rows if r[series] == n and all(k in r for k in panels)]
        for col, key in enumerate(panels, 1):
            fig.add_trace(go.Scatter(x=[r[x] for r in rs], y=[r[key] for r in rs], name=n, legendgroup=n, showlegend=col == 1,
                                     mode='lines+markers', line=dict(dash='dash' if n in dashed else 'solid')), row=1, col=col)
    for col in range(1, len(panels) + 1):
        fig.update_xaxes(type='log', title_text=x_title, row=1, col=col)
        fig.update_yaxes(type='log', row=1, col=col)
    fig.update_layout(title=title, height=430, width=420 * len(panels) + 160)
    return fig
