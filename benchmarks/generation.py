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

Writes benchmarks/results/generation-<device>.json (rows, ratios to the teacher, the issue's targets and how far from
them) and generation-<device>.html. On CPU the ratios and targets use CPU time (the machine is shared); on CUDA, wall time.
"""
from __future__ import annotations
import argparse, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CudaPeakMemory, PeakMemory, elapsed, extrapolate, loglog_figure, loglog_slope, machine, median, now, rotated, write_results

STUDENTS = {'phi_mamba': dict(mixer='phi_mamba'), 'mamba2': dict(mixer='mamba2'), 'gla': dict(mixer='gla'),
            'gated_deltanet': dict(mixer='gated_deltanet'), 'hybrid_mamba2_attn1': dict(mixer='mamba2', attention_layers=[1]),
            # the same phi_mamba student with each mixer's one-token step compiled (StudentForCausalLM.compile_decoding)
            'phi_mamba_compiled': dict(mixer='phi_mamba', compile=True)}


def build_models(max_positions:int, names:list[str], device:torch.device=torch.device('cpu')) -> tuple[dict, object]:
    "The teacher (rotary positions extended to `max_positions`) and the students, all in eval mode, float32, on `device`."
    from ssm_distill.builtin import load_builtin_teacher
    from ssm_distill.students import build_student
    model, tok = load_builtin_teacher()
    model.config.max_position_embeddings = max(max_positions, model.config.max_position_embeddings)
    models = {'teacher': model}
    for n in names:
        torch.manual_seed(0)
        opts = dict(STUDENTS[n]); compiled = opts.pop('compile', False)
        models[n] = build_student(model, **opts).eval().to(device)
        if compiled:   # compile once here (about a minute per layer), not inside a timed call
            models[n].compile_decoding().generate(torch.randint(3, 100, (1, 8), device=device), max_new_tokens=3, do_sample=False)
    models['teacher'] = model.to(device)
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
        for r in range(reps[T]):
            for n in rotated(list(models), r):
                if n not in skipped: runs[n].append(measure(models[n], ids, new))
                bar.update(1)
        for n in models:
            if n in skipped:
                rows.append(dict(model=n, context=T, skipped=skipped[n])); continue
            row = dict(model=n, context=T, new_tokens=new, repeats=reps[T],
                       **{k: median([m[k] for m in runs[n]]) for k in runs[n][0]})
            rows.append(row)
            hist_t.setdefault(n, []).append((T, row['total_s']))
            hist_m.setdefault(n, []).append((T, max(row['prefill_peak_bytes'], row['decode_peak_bytes'], 1)))
    bar.close()
    return rows


def ratios(rows:list[dict]) -> list[dict]:
    "Per context and student: tokens/s (wall and CPU time), prefill time and memory as multiples of the teacher's."
    t = {r['context']: r for r in rows if r['model'] == 'teacher' and 'decode_ms' in r}
    out = []
    for r in rows:
        if r['model'] == 'teacher' or 'decode_ms' not in r or r['context'] not in t: continue
        tr = t[r['context']]
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


@torch.no_grad()
def profile_step(model, ids:torch.Tensor, steps:int=16) -> dict:
    """Where one decode step's time goes: the forward alone vs `generate`'s per-token time, time per module kind (hooks),
    and the aten ops (torch.profiler): their count per step, their total self time, the top ones."""
    from torch.profiler import ProfilerActivity, profile
    from ssm_distill.students import cache_arg
    if hasattr(model, 'mixer_layers'):
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


def figure(rows:list[dict], title:str):
    return loglog_figure(rows, 'model', 'context', 'context (tokens)', {'tokens_per_s': 'decode tokens/s', 'prefill_s': 'prefill time (s)',
                         'cache_bytes': 'cache after the call (bytes)'}, title, dashed=('teacher',))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--contexts', type=int, nargs='+', default=[512, 2048, 8192, 32768])
    p.add_argument('--new', type=int, default=32, help='new tokens per call (default 32)')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--long-repeats', type=int, default=1, help='repeats at contexts >= 16384 (default 1: minutes per call)')
    p.add_argument('--students', nargs='+', default=list(STUDENTS), choices=list(STUDENTS))
    p.add_argument('--threads', type=int, default=1, help='torch threads (default 1: the machine is shared)')
    p.add_argument('--max-call-s', type=float, default=240., help='skip a model whose next call is predicted to take longer')
    p.add_argument('--max-gib', type=float, default=8., help='skip a model whose next call is predicted to need more memory')
    p.add_argument('--quick', action='store_true', help='contexts 256 1024, 16 new tokens, 2 repeats')
    p.add_argument('--profile', action='store_true', help='also profile one decode step of each model at the first context')
    p.add_argument('--name', default='generation', help='results file stem (default generation)')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'], help='cpu (default) or cuda')
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == 'cuda' and not torch.cuda.is_available(): p.error('--device cuda: no CUDA GPU is visible here')
    if a.quick: a.contexts, a.new, a.repeats = [256, 1024], 16, 2
    torch.set_num_threads(a.threads)
    meta = dict(machine(a.threads, device), teacher='built-in teacher (Llama, 4 layers, hidden 256, 8 heads x 32, vocab 4096), trained '
                'weights, rotary positions extended from 256 to the longest context (timing only)',
                method='Hugging Face generate, greedy, batch 1, random prompt; prefill = until the first new token, decode = per '
                       'later token; interleaved per context, median of repeats; wall and CPU time (ratios and targets on CPU '
                       'time on CPU, the machine is shared; wall time on CUDA, synchronised at each new token); peak memory = resident-set '
                       'growth on CPU (Linux), the CUDA allocator\'s peak above the start on CUDA',
                new_tokens=a.new, repeats=a.repeats, repeats_from_16k=a.long_repeats)
    models, tok = build_models(max(a.contexts) + a.new, a.students, device)
    rows = bench(models, sorted(a.contexts), a.new, a.repeats, a.max_call_s, a.max_gib, len(tok), a.long_repeats, device=device)
    rats = ratios(rows)
    data = dict(meta=meta, rows=rows, ratios=rats, targets=targets(rows, rats, device.type),
                decode_cpu_ms_slope_vs_context={n: loglog_slope([r['context'] for r in rows if r['model'] == n and 'decode_ms' in r],
                                                                [r['decode_cpu_ms'] for r in rows if r['model'] == n and 'decode_ms' in r])
                                            for n in models},
                **({} if device.type == 'cuda' else dict(gpu=dict(rows='not measured', why=meta['gpu']))))
    if a.profile:
        ids = torch.randint(3, len(tok), (1, min(a.contexts)), generator=torch.Generator().manual_seed(1)).to(device)
        data['profile'] = dict(context=min(a.contexts), models={n: profile_step(m, ids) for n, m in models.items()})
    where = meta['gpu'] if device.type == 'cuda' else f"CPU, {a.threads} thread(s), {meta['cpu']}"
    out = write_results(a.name, device.type, data, figure(rows, f"decode: teacher vs students ({where})"))
    for r in rows:
        if 'skipped' in r: print(f"{r['model']:>20} T={r['context']:>6}  skipped: {r['skipped']}"); continue
        print(f"{r['model']:>20} T={r['context']:>6}  decode {r['decode_ms']:7.2f} ms/token (CPU {r['decode_cpu_ms']:7.2f} ms)  "
              f"prefill {r['prefill_s']:7.3f} s  prefill peak {r['prefill_peak_bytes'] / 2**20:7.1f} MiB  "
              f"decode peak {r['decode_peak_bytes'] / 2**20:6.1f} MiB  cache {r['cache_bytes'] / 2**10:9.1f} KiB")
    for r in rats: print(f"{r['model']:>20} T={r['context']:>6}  tokens/s x{r['tokens_per_s_vs_teacher']} (CPU time x{r['tokens_per_cpu_s_vs_teacher']})  "
                         f"prefill x{r['prefill_time_vs_teacher']} (CPU time x{r['prefill_cpu_time_vs_teacher']})")
    print(f'wrote {out}')
    return data


if __name__ == '__main__':
    main()
