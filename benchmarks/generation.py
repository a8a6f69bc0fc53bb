"""Decode speed of the teacher and its students: tokens/s, prefill time and memory, from 512 to 32k tokens of context.

The teacher is the built-in teacher (a 4-layer Llama: hidden 256, 8 heads of 32, vocabulary 4096) with its trained
weights and its rotary positions *extended* from 256 to the longest context measured (RoPE has no learned positions,
so the cost of a long context is the real one; only the quality past 256 tokens is untrained). The students are built
from it by QKV copy, at equal width and depth: phi_mamba, mamba2, gla, gated_deltanet, and a hybrid (mamba2 with layer 1
kept as attention).

Every model generates through Hugging Face `generate` (greedy, batch 1, a random prompt of `context` tokens, `--new`
tokens). A logits processor, called once per new token, splits the call: prefill = until the first token's logits,
decode = the rest, per token. Memory: the peak resident-set growth during the prefill and during the decode (separately,
in this process: the high-water mark is reset between them), and the bytes of the cache after the call (the student's
recurrent state, the teacher's keys and values). All models of one context run interleaved (the order rotates per
repeat); the median of `--repeats` calls is kept. A model whose next context is predicted (from its growth so far) to
take more than `--max-call-s` or more than `--max-gib` is skipped, and the row says why.

    python benchmarks/generation.py                 # contexts 512, 2048, 8192, 32768
    python benchmarks/generation.py --quick         # contexts 256, 1024, 16 new tokens: about a minute
    python benchmarks/generation.py --profile       # also: where one decode step's time goes (torch.profiler, hooks)
    python benchmarks/generation.py --device cuda   # on a GPU: wall time (synchronised), memory from the CUDA allocator
    python benchmarks/generation.py --quick --compiled   # eager and compiled, teacher and students, at 512 and 8k (minutes)

`--compiled` adds a compiled twin of every model (the same weights): the teacher through transformers' own route (its
`StaticCache` via `cache_implementation='static'`, and `generate` compiling the forward of each decoding step, a
`CompileConfig(fullgraph=True, dynamic=False)`), each student through `compile_decoding()` (a `StaticStudentCache`, the
whole one-token step compiled). The first call of a compiled model at each context compiles (the teacher's static cache
has a new length, so it recompiles per context; a pure student's state does not, so it compiles once): its time minus
a later call's is the row's `compile_s`. Each row also gets the bandwidth bound: bytes read per decoded token (every
weight once, the input embedding as one row unless tied; plus the cache: the teacher's keys and values, the student's
state and kept keys) over this process's measured copy bandwidth (`common.copy_bandwidth`, one thread), and how far the
CPU time per token is from it. Results go to generation-compiled-<device>.json/html, with the issue's targets for the
compiled pair (student/teacher >= 4.0x at 8k, >= 1.2x at 512, the student within 2x of its bound).

Writes benchmarks/results/generation-<device>.json (rows, ratios to the teacher, the issue's targets and how far from
them) and generation-<device>.html. On CPU the ratios and targets use CPU time (the machine is shared); on CUDA, wall time.
"""
from __future__ import annotations
import argparse, math, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CudaPeakMemory, PeakMemory, copy_bandwidth, elapsed, extrapolate, loglog_figure, loglog_slope, machine, median,
                    now, rotated, write_results)

STUDENTS = {'phi_mamba': dict(mixer='phi_mamba'), 'mamba2': dict(mixer='mamba2'), 'gla': dict(mixer='gla'),
            'gated_deltanet': dict(mixer='gated_deltanet'), 'hybrid_mamba2_attn1': dict(mixer='mamba2', attention_layers=[1])}
COMPILED = '_compiled'   # the suffix of a model's compiled twin


def compile_teacher(model):
    "Transformers' own compiled decoding: a `StaticCache`, and `generate` compiling the forward of each decoding step (on any device)."
    from transformers import CompileConfig
    cfg = CompileConfig(fullgraph=True, dynamic=False, mode='reduce-overhead' if model.device.type == 'cuda' else 'default')
    cfg._compile_all_devices = True   # transformers compiles only on accelerators unless asked
    model.generation_config.cache_implementation, model.generation_config.compile_config = 'static', cfg
    return model


def build_models(max_positions:int, names:list[str], device:torch.device=torch.device('cpu'),
                 compiled:bool=False) -> tuple[dict, object]: # True: also each model's compiled twin (`<name>_compiled`)
    "The teacher (rotary positions extended to `max_positions`) and the students, all in eval mode, float32, on `device`."
    from ssm_distill.builtin import load_builtin_teacher
    from ssm_distill.students import build_student
    def teacher():
        model, tok = load_builtin_teacher()
        model.config.max_position_embeddings = max(max_positions, model.config.max_position_embeddings)
        return model.to(device), tok
    model, tok = teacher()
    models = {'teacher': model}
    if compiled:
        torch._dynamo.config.recompile_limit = 64   # the teacher's static cache recompiles at each context
        models['teacher' + COMPILED] = compile_teacher(teacher()[0])
    for n in names:
        for twin in ([False, True] if compiled else [False]):
            torch.manual_seed(0)
            st = build_student(model, **STUDENTS[n]).eval().to(device)
            models[n + (COMPILED if twin else '')] = st.compile_decoding() if twin else st
    return models, tok


def tensor_bytes(obj, seen=None) -> int:
    "Bytes of every tensor reachable from `obj` (a cache: dicts, lists, layer objects), each counted once."
    seen = set() if seen is None else seen
    if id(obj) in seen: return 0
    seen.add(id(obj))
    if torch.is_tensor(obj): return obj.numel() * obj.element_size()
    if isinstance(obj, dict): return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set)): return sum(tensor_bytes(v, seen) for v in obj)
    if hasattr(obj, '__dict__') and not isinstance(obj, (type, torch.nn.Module)): return tensor_bytes(vars(obj), seen)
    return 0


class Clock:
    """A logits processor: records the time of each new token's logits; the first one ends the prefill (and its memory
    window). On CUDA it synchronises first, so a time is when the logits exist, not when their kernels were queued."""
    def __init__(self, mem): self.mem, self.times, self.prefill_peak = mem, [], None
    def __call__(self, input_ids, scores):
        if scores.is_cuda: torch.cuda.synchronize()
        self.times.append(now())
        if len(self.times) == 1: self.prefill_peak = self.mem.restart()
        return scores


@torch.no_grad()
def measure(model, ids:torch.Tensor, # (1, T) the prompt
            new:int) -> dict:
    "One `generate` call (on `ids`' device): prefill seconds, decode ms per token, tokens/s, prefill/decode peak growth, cache bytes."
    from transformers import LogitsProcessorList
    with (CudaPeakMemory() if ids.is_cuda else PeakMemory()) as mem:
        clock = Clock(mem)
        t0 = now()
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, return_dict_in_generate=True,
                             logits_processor=LogitsProcessorList([clock]), pad_token_id=0)
        if ids.is_cuda: torch.cuda.synchronize()
        t1 = now()
    require_tokens = out.sequences.shape[1] - ids.shape[1]
    assert require_tokens == new, f'generated {require_tokens} tokens, not {new}'
    (prefill_s, prefill_cpu_s), (decode_s, decode_cpu_s) = elapsed(t0, clock.times[0]), elapsed(clock.times[0], clock.times[-1])
    decode_s, decode_cpu_s = decode_s / (new - 1), decode_cpu_s / (new - 1)
    return dict(prefill_s=prefill_s, prefill_cpu_s=prefill_cpu_s, decode_ms=decode_s * 1e3, decode_cpu_ms=decode_cpu_s * 1e3,
                tokens_per_s=1 / decode_s, tokens_per_cpu_s=1 / decode_cpu_s, total_s=elapsed(t0, t1)[0],
                prefill_peak_bytes=clock.prefill_peak, decode_peak_bytes=mem.bytes,
                cache_bytes=tensor_bytes(out.past_key_values))


def bench(models:dict, contexts:list[int], new:int, repeats:int, max_call_s:float, max_gib:float, vocab:int,
          long_repeats:int=1, long_from:int=16384, device:torch.device=torch.device('cpu')) -> list[dict]:
    rows, hist_t, hist_m = [], {}, {}
    g = torch.Generator().manual_seed(0)
    from tqdm import tqdm
    reps = {T: long_repeats if T >= long_from else repeats for T in contexts}
    bar = tqdm(total=sum(reps.values()) * len(models), desc='generation', mininterval=0.5)
    for T in contexts:
        ids = torch.randint(3, vocab, (1, T), generator=g).to(device)
        runs, skipped = {n: [] for n in models}, {}
        for n in models:
            t_pred, m_pred = extrapolate(hist_t.get(n, []), T), extrapolate(hist_m.get(n, []), T)
            if t_pred is not None and t_pred > max_call_s: skipped[n] = f'predicted {t_pred:.0f} s per call > --max-call-s {max_call_s:g}'
            elif m_pred is not None and m_pred > max_gib * 2**30: skipped[n] = f'predicted {m_pred / 2**30:.1f} GiB > --max-gib {max_gib:g}'
        first = {n: measure(models[n], ids, new) for n in models if n.endswith(COMPILED) and n not in skipped}   # compiles
        for r in range(reps[T]):
            for n in rotated(list(models), r):
                if n not in skipped: runs[n].append(measure(models[n], ids, new))
                bar.update(1)
        for n in models:
            if n in skipped:
                rows.append(dict(model=n, context=T, skipped=skipped[n])); continue
            row = dict(model=n, context=T, new_tokens=new, repeats=reps[T],
                       **{k: median([m[k] for m in runs[n]]) for k in runs[n][0]})
            if n in first: row.update(first_call_s=first[n]['total_s'], compile_s=max(first[n]['total_s'] - row['total_s'], 0.))
            rows.append(row)
            hist_t.setdefault(n, []).append((T, row['total_s']))
            hist_m.setdefault(n, []).append((T, max(row['prefill_peak_bytes'], row['decode_peak_bytes'], 1)))
    bar.close()
    return rows


def reference(model:str) -> str:
    "The teacher a model is compared with: the compiled teacher for a compiled student, the eager one otherwise."
    return 'teacher' + COMPILED if model.endswith(COMPILED) else 'teacher'


def ratios(rows:list[dict]) -> list[dict]:
    "Per context and student: tokens/s (wall and CPU time), prefill time and memory as multiples of the teacher's (compiled against compiled)."
    t = {(r['model'], r['context']): r for r in rows if r['model'].startswith('teacher') and 'decode_ms' in r}
    out = []
    for r in rows:
        if r['model'].startswith('teacher') or 'decode_ms' not in r or (reference(r['model']), r['context']) not in t: continue
        tr = t[reference(r['model']), r['context']]
        out.append(dict(model=r['model'], context=r['context'], tokens_per_s_vs_teacher=round(r['tokens_per_s'] / tr['tokens_per_s'], 2),
                        tokens_per_cpu_s_vs_teacher=round(r['tokens_per_cpu_s'] / tr['tokens_per_cpu_s'], 2),
                        prefill_time_vs_teacher=round(r['prefill_s'] / tr['prefill_s'], 2),
                        prefill_cpu_time_vs_teacher=round(r['prefill_cpu_s'] / tr['prefill_cpu_s'], 2),
                        prefill_peak_vs_teacher=round(r['prefill_peak_bytes'] / max(tr['prefill_peak_bytes'], 1), 2),
                        cache_bytes_vs_teacher=round(r['cache_bytes'] / max(tr['cache_bytes'], 1), 3)))
    return out


def targets(rows:list[dict], rats:list[dict], on:str='cpu') -> dict:
    """The issue's targets (equal width and depth): student >= teacher tokens/s at 512, >= 5x at 8k, >= 10x at 32k;
    per-token time flat in context within 10%; decode memory flat. What each student reaches, on CPU time for `on='cpu'`
    (the machine is shared, see `common.now`), on wall time for `on='cuda'` (CPU time there counts only the launches)."""
    speed, ms = ('tokens_per_cpu_s_vs_teacher', 'decode_cpu_ms') if on == 'cpu' else ('tokens_per_s_vs_teacher', 'decode_ms')
    want = {512: 1.0, 8192: 5.0, 32768: 10.0}
    out = {}
    for n in sorted({r['model'] for r in rats}):
        mine = {r['context']: r for r in rows if r['model'] == n and 'decode_ms' in r}
        sp = {r['context']: r[speed] for r in rats if r['model'] == n}
        Ts = sorted(mine)
        flat = round(mine[Ts[-1]][ms] / mine[Ts[0]][ms], 2) if len(Ts) > 1 else None
        out[n] = dict(speedup={T: dict(target=w, reached=sp.get(T), met=None if T not in sp else sp[T] >= w) for T, w in want.items()},
                      **{f'{ms}_longest_over_shortest': flat}, flat_within_10pct=None if flat is None else flat <= 1.1,
                      cache_bytes_by_context={T: mine[T]['cache_bytes'] for T in Ts})
    return out


def weight_bytes(model) -> int:
    "Bytes of weights one decoding step reads: every parameter once, the input embedding as the one row it looks up (unless tied to the head)."
    total = sum(p.numel() * p.element_size() for p in model.parameters())    # a tied embedding is counted once
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if emb is not head: total -= (emb.shape[0] - 1) * emb.shape[1] * emb.element_size()
    return total


def add_bounds(rows:list[dict], models:dict) -> dict:
    """Per row: bytes read per decoded token (weights + the cache after the call), the copy bandwidth through a working set
    of that size (measured here, `common.copy_bandwidth`), the bound per token and the distance to it; returns the bandwidths."""
    seen = {}
    for r in rows:
        if 'decode_ms' not in r: continue
        n = r['bytes_per_token'] = weight_bytes(models[r['model']]) + r['cache_bytes']
        size = 2 ** round(math.log2(n))                                          # one measurement per power of two
        if size not in seen: seen[size] = copy_bandwidth(size)
        r['bandwidth_bytes_per_s'] = seen[size]
        r['bound_ms'] = n / seen[size] * 1e3
        r['times_bound_cpu'] = r['decode_cpu_ms'] / r['bound_ms']                # 1: at the bound
        r['pct_above_bound_cpu'] = round(100 * (r['times_bound_cpu'] - 1), 1)
    return {f'{s / 2**20:g} MiB': round(b / 1e9, 2) for s, b in sorted(seen.items())} | {'unit': 'GB/s, copy, one thread'}


def compiled_targets(rows:list[dict], rats:list[dict], on:str='cpu') -> dict:
    """The issue's targets for the compiled pair: student/teacher >= 4.0x at 8k and >= 1.2x at 512 (compiled against compiled),
    the student's compiled time per token within 2x of its own bandwidth bound; the eager ratios beside them."""
    speed, ms = ('tokens_per_cpu_s_vs_teacher', 'decode_cpu_ms') if on == 'cpu' else ('tokens_per_s_vs_teacher', 'decode_ms')
    want = {512: 1.2, 8192: 4.0}
    sp = {(r['model'], r['context']): r[speed] for r in rats}
    out = {}
    for n in sorted({r['model'][:-len(COMPILED)] for r in rats if r['model'].endswith(COMPILED)}):
        mine = {r['context']: r for r in rows if r['model'] == n + COMPILED and 'decode_ms' in r}
        out[n] = dict(speedup={T: dict(target=w, reached=sp.get((n + COMPILED, T)), eager=sp.get((n, T)),
                                       met=None if (n + COMPILED, T) not in sp else sp[n + COMPILED, T] >= w) for T, w in want.items()},
                      within_2x_of_bound={T: dict(times_bound=round(r[ms] / r['bound_ms'], 2), met=r[ms] <= 2 * r['bound_ms'])
                                          for T, r in mine.items()})
    return out


def compiled_table(rows:list[dict]) -> list[dict]:
    "One line per model and context: eager and compiled CPU ms per token, the bound, compile time (what the README shows)."
    by = {(r['model'], r['context']): r for r in rows if 'decode_ms' in r}
    out = []
    for (n, T), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if n.endswith(COMPILED) or (n + COMPILED, T) not in by: continue
        c, teacher, tc = by[n + COMPILED, T], by[('teacher', T)], by[('teacher' + COMPILED, T)]
        out.append(dict(model=n, context=T, eager_ms=round(r['decode_cpu_ms'], 2), compiled_ms=round(c['decode_cpu_ms'], 2),
                        bound_ms=round(c['bound_ms'], 2), compiled_times_bound=round(c['times_bound_cpu'], 2),
                        compile_s=round(c.get('compile_s', 0), 1),
                        eager_vs_teacher=None if n == 'teacher' else round(teacher['decode_cpu_ms'] / r['decode_cpu_ms'], 2),
                        compiled_vs_teacher=None if n == 'teacher' else round(tc['decode_cpu_ms'] / c['decode_cpu_ms'], 2),
                        prefill_peak_mib=round(r['prefill_peak_bytes'] / 2**20, 1)))
    return out


@torch.no_grad()
def profile_step(model, ids:torch.Tensor, steps:int=16) -> dict:
    """Where one decode step's time goes: the forward alone vs `generate`'s per-token time, time per module kind (hooks),
    and the aten ops (torch.profiler): their count per step, their total self time, the top ones."""
    from torch.profiler import ProfilerActivity, profile
    from ssm_distill.students import cache_arg
    if hasattr(model, '_compiled_step'):   # a compiled student: its static cache, the compiled step from the second token on
        from ssm_distill.students import StaticStudentCache
        cache = StaticStudentCache.for_model(model, ids.shape[1] + 3 * steps + 8)
    elif hasattr(model, 'mixer_layers'):
        from ssm_distill.students import StudentCache
        cache = StudentCache.for_model(model)
    else:
        from transformers import DynamicCache
        cache = DynamicCache()
    kw = {getattr(model, '_cache_arg', None) or cache_arg(type(model).forward): cache, 'use_cache': True, 'logits_to_keep': 1}
    tok, pos = model(ids, **kw).logits[:, -1:].argmax(-1), ids.shape[1]    # the prefill; the cache is updated in place

    def step():
        nonlocal tok, pos
        tok, pos = model(tok, position_ids=torch.tensor([[pos]]), **kw).logits[:, -1:].argmax(-1), pos + 1

    for _ in range(3): step()
    t0 = now()
    for _ in range(steps): step()
    forward_ms = elapsed(t0)[1] / steps * 1e3                                   # CPU time per step
    # time per module kind, with forward hooks (adds a little overhead of its own)
    spent, stack, handles = {}, {}, []
    kinds = {}
    for name, m in model.named_modules():
        k = type(m).__name__
        if name.count('.') <= 4 and k not in ('ModuleList',) and m is not model:
            kinds[m] = k
    for m, k in kinds.items():
        handles.append(m.register_forward_pre_hook(lambda mod, a, k=k: stack.__setitem__(id(mod), time.process_time())))
        handles.append(m.register_forward_hook(lambda mod, a, o, k=k: spent.__setitem__(k, spent.get(k, 0) + time.process_time() - stack.pop(id(mod)))))
    for _ in range(steps): step()
    for h in handles: h.remove()
    by_module = {k: round(v / steps * 1e3, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
    t0 = now()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps): step()
    profiled_ms = elapsed(t0)[1] / steps * 1e3                                  # CPU time per step, profiler on
    ev = [e for e in prof.key_averages() if e.key.startswith('aten::')]
    self_ms = sum(e.self_cpu_time_total for e in ev) / 1e3 / steps
    top = sorted(ev, key=lambda e: -e.self_cpu_time_total)[:12]
    return dict(forward_ms_per_step=round(forward_ms, 3), aten_ops_per_step=round(sum(e.count for e in ev) / steps, 1),
                aten_self_ms_per_step=round(self_ms, 3), cpu_ms_per_step_while_profiled=round(profiled_ms, 3),
                outside_aten_share_while_profiled=round(1 - self_ms / profiled_ms, 3),
                ms_per_step_by_module_kind_inclusive=by_module,
                top_aten_ops=[dict(op=e.key, calls_per_step=round(e.count / steps, 1), self_ms_per_step=round(e.self_cpu_time_total / 1e3 / steps, 4))
                              for e in top])


def compiled_figure(rows:list[dict], title:str):
    "Decode CPU ms per token against context, eager (dashed) and compiled (solid), each model's bandwidth bound dotted; prefill peak."
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    fig = make_subplots(rows=1, cols=2, subplot_titles=['decode CPU ms per token (dotted: bandwidth bound)', 'prefill peak memory (MiB)'])
    ok = [r for r in rows if 'decode_ms' in r]
    for n in dict.fromkeys(r['model'] for r in ok):
        rs = sorted((r for r in ok if r['model'] == n), key=lambda r: r['context'])
        x, dash = [r['context'] for r in rs], 'solid' if n.endswith(COMPILED) else 'dash'
        fig.add_trace(go.Scatter(x=x, y=[r['decode_cpu_ms'] for r in rs], name=n, legendgroup=n, mode='lines+markers',
                                 line=dict(dash=dash)), row=1, col=1)
        if n.endswith(COMPILED):
            fig.add_trace(go.Scatter(x=x, y=[r['bound_ms'] for r in rs], name=f'{n[:-len(COMPILED)]} bound', mode='lines',
                                     line=dict(dash='dot')), row=1, col=1)
        else:
            fig.add_trace(go.Scatter(x=x, y=[r['prefill_peak_bytes'] / 2**20 for r in rs], name=n, legendgroup=n, showlegend=False,
                                     mode='lines+markers'), row=1, col=2)
    for col in (1, 2):
        fig.update_xaxes(type='log', title_text='context (tokens)', row=1, col=col)
        fig.update_yaxes(type='log', row=1, col=col)
    fig.update_layout(title=title, height=450, width=1100)
    return fig


def figure(rows:list[dict], title:str):
    return loglog_figure(rows, 'model', 'context', 'context (tokens)', {'tokens_per_s': 'decode tokens/s', 'prefill_s': 'prefill time (s)',
                         'cache_bytes': 'cache after the call (bytes)'}, title, dashed=('teacher',))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--contexts', type=int, nargs='+', default=[512, 2048, 8192, 32768])
    p.add_argument('--new', type=int, default=32, help='new tokens per call (default 32)')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--long-repeats', type=int, default=1, help='repeats at contexts >= 16384 (default 1: minutes per call)')
    p.add_argument('--students', nargs='+', default=None, choices=list(STUDENTS), help='default: all (with --compiled: mamba2, hybrid)')
    p.add_argument('--threads', type=int, default=1, help='torch threads (default 1: the machine is shared)')
    p.add_argument('--max-call-s', type=float, default=240., help='skip a model whose next call is predicted to take longer')
    p.add_argument('--max-gib', type=float, default=8., help='skip a model whose next call is predicted to need more memory')
    p.add_argument('--quick', action='store_true', help='contexts 256 1024 (with --compiled: 512 8192), 16 new tokens, 2 repeats')
    p.add_argument('--compiled', action='store_true', help='also each model compiled (teacher: StaticCache + torch.compile; '
                   'students: compile_decoding), the bandwidth bound per context; default students mamba2 and the hybrid')
    p.add_argument('--profile', action='store_true', help='also profile one decode step of each model at the first context')
    p.add_argument('--name', default=None, help='results file stem (default generation, or generation-compiled with --compiled)')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'], help='cpu (default) or cuda')
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == 'cuda' and not torch.cuda.is_available(): p.error('--device cuda: no CUDA GPU is visible here')
    if a.quick: a.contexts, a.new, a.repeats = ([512, 8192] if a.compiled else [256, 1024]), 16, 2
    a.students = a.students or (['mamba2', 'hybrid_mamba2_attn1'] if a.compiled else list(STUDENTS))
    a.name = a.name or ('generation-compiled' if a.compiled else 'generation')
    torch.set_num_threads(a.threads)
    meta = dict(machine(a.threads, device), teacher='built-in teacher (Llama, 4 layers, hidden 256, 8 heads x 32, vocab 4096), trained '
                'weights, rotary positions extended from 256 to the longest context (timing only)',
                method='Hugging Face generate, greedy, batch 1, random prompt; prefill = until the first new token, decode = per '
                       'later token; interleaved per context, median of repeats; wall and CPU time (ratios and targets on CPU '
                       'time on CPU, the machine is shared; wall time on CUDA, synchronised at each new token); peak memory = resident-set '
                       'growth on CPU (Linux), the CUDA allocator\'s peak above the start on CUDA',
                new_tokens=a.new, repeats=a.repeats, repeats_from_16k=a.long_repeats)
    models, tok = build_models(max(a.contexts) + a.new, a.students, device, a.compiled)
    rows = bench(models, sorted(a.contexts), a.new, a.repeats, a.max_call_s, a.max_gib, len(tok), a.long_repeats, device=device)
    rats = ratios(rows)
    if a.compiled:
        meta['bandwidth_by_working_set'] = add_bounds(rows, models)
        meta['bandwidth_1GiB'] = round(copy_bandwidth(2**30) / 1e9, 2)   # DRAM, past the last cache level
    data = dict(meta=meta, rows=rows, ratios=rats, targets=targets(rows, rats, device.type),
                decode_cpu_ms_slope_vs_context={n: loglog_slope([r['context'] for r in rows if r['model'] == n and 'decode_ms' in r],
                                                                [r['decode_cpu_ms'] for r in rows if r['model'] == n and 'decode_ms' in r])
                                            for n in models},
                **({} if device.type == 'cuda' else dict(gpu=dict(rows='not measured', why=meta['gpu']))))
    if a.compiled: data.update(table=compiled_table(rows), compiled_targets=compiled_targets(rows, rats, device.type))
    if a.profile:   # the compiled teacher runs through generate's own compiled call, not a forward: not profiled here
        ids = torch.randint(3, len(tok), (1, min(a.contexts)), generator=torch.Generator().manual_seed(1)).to(device)
        data['profile'] = dict(context=min(a.contexts), models={n: profile_step(m, ids) for n, m in models.items() if n != 'teacher' + COMPILED})
    where = meta['gpu'] if device.type == 'cuda' else f"CPU, {a.threads} thread(s), {meta['cpu']}"
    fig = (compiled_figure if a.compiled else figure)(rows, f"decode: teacher vs students{', eager and compiled' if a.compiled else ''} ({where})")
    out = write_results(a.name, device.type, data, fig)
    for r in rows:
        if 'skipped' in r: print(f"{r['model']:>20} T={r['context']:>6}  skipped: {r['skipped']}"); continue
        print(f"{r['model']:>20} T={r['context']:>6}  decode {r['decode_ms']:7.2f} ms/token (CPU {r['decode_cpu_ms']:7.2f} ms)  "
              f"prefill {r['prefill_s']:7.3f} s  prefill peak {r['prefill_peak_bytes'] / 2**20:7.1f} MiB  "
              f"decode peak {r['decode_peak_bytes'] / 2**20:6.1f} MiB  cache {r['cache_bytes'] / 2**10:9.1f} KiB")
    for r in rats: print(f"{r['model']:>20} T={r['context']:>6}  tokens/s x{r['tokens_per_s_vs_teacher']} (CPU time x{r['tokens_per_cpu_s_vs_teacher']})  "
                         f"prefill x{r['prefill_time_vs_teacher']} (CPU time x{r['prefill_cpu_time_vs_teacher']})")
    for r in data.get('table', []): print(r)
    print(f'wrote {out}')
    return data


if __name__ == '__main__':
    main()
