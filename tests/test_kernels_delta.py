"Tests for ssm_distill.kernels_delta beyond the notebook: random shapes, gradients, states, foreign references."
import pytest, torch
import torch.nn.functional as F
from einops import rearrange
from hypothesis import given, settings, strategies as st
from torch.autograd import gradcheck

from ssm_distill.core import SsmDistillError
from ssm_distill.kernels import FAMILIES
from ssm_distill.kernels_delta import (
    chunk_delta_rule, recurrent_delta_rule, naive_delta_rule, delta_rule_mixing_matrix, delta_rule,
    chunk_gated_delta_rule, recurrent_gated_delta_rule, naive_gated_delta_rule, gated_delta_rule_mixing_matrix,
    gated_delta_rule, chunk_mlstm, recurrent_mlstm, naive_mlstm, mlstm_mixing_matrix, mlstm,
    chunk_selective_scan, recurrent_selective_scan, naive_selective_scan, selective_scan_mixing_matrix,
    selective_scan, channels_to_heads)

F64 = torch.float64
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
mix = lambda M, v: torch.einsum('bhts,bshv->bthv', M, v)


def rand(seed, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return lambda *s: torch.randn(*s, generator=gen, dtype=dtype)

def delta_inputs(B=2, T=13, H=2, K=4, V=3, seed=0, dtype=F64):
    r = rand(seed, dtype)
    return dict(q=r(B, T, H, K), k=F.normalize(r(B, T, H, K), dim=-1), v=r(B, T, H, V),
                g=F.logsigmoid(r(B, T, H) + 2), beta=r(B, T, H).sigmoid())

def mlstm_inputs(B=2, T=13, H=2, K=4, V=3, seed=0, dtype=F64):
    r = rand(seed, dtype)
    return dict(q=r(B, T, H, K), k=r(B, T, H, K), v=r(B, T, H, V), i=5 * r(B, T, H), f=r(B, T, H) + 3)

def scan_inputs(B=2, Dch=4, N=3, T=13, G=None, seed=0, dtype=F64):
    r = rand(seed, dtype)
    bc = (B, N, T) if G is None else (B, G, N, T)
    return dict(u=r(B, Dch, T), delta=r(B, Dch, T), A=-r(Dch, N).abs() - 0.1, B=r(*bc), C=r(*bc), D=r(Dch),
                z=r(B, Dch, T), delta_bias=r(Dch), delta_softplus=True)

def close(a, b, atol=1e-8): torch.testing.assert_close(a, b, atol=atol, rtol=0)

shapes = dict(B=st.integers(1, 2), T=st.integers(1, 40), H=st.integers(1, 3), K=st.integers(1, 6),
              V=st.integers(1, 5), C=st.integers(1, 16), seed=st.integers(0, 2**16))


# ---------------------------------------------------------------- chunked == recurrent == naive == M @ v
@settings(max_examples=20, deadline=None)
@given(**shapes, gated=st.booleans())
def test_delta_forms_agree(B, T, H, K, V, C, seed, gated):
    x = delta_inputs(B, T, H, K, V, seed)
    S0 = rand(seed + 1)(B, H, K, V)
    if not gated: x.pop('g')
    chunk, rec, naive, matrix = ((chunk_gated_delta_rule, recurrent_gated_delta_rule, naive_gated_delta_rule,
                                  gated_delta_rule_mixing_matrix) if gated else
                                 (chunk_delta_rule, recurrent_delta_rule, naive_delta_rule, delta_rule_mixing_matrix))
    o_c, S_c = chunk(**x, initial_state=S0, output_final_state=True, chunk_size=C)
    o_r, S_r = rec(**x, initial_state=S0, output_final_state=True)
    close(o_c, o_r); close(S_c, S_r)
    o = chunk(**x, chunk_size=C)[0]
    M = matrix(**x)
    assert M.shape == (B, H, T, T)
    close(mix(M, x['v']), o); close(naive(**x)[0], o); close(rec(**x)[0], o)


@settings(max_examples=20, deadline=None)
@given(**shapes)
def test_mlstm_forms_agree(B, T, H, K, V, C, seed):
    x = mlstm_inputs(B, T, H, K, V, seed)
    o_c, st_c = chunk_mlstm(**x, output_final_state=True, chunk_size=C)
    o_r, st_r = recurrent_mlstm(**x, output_final_state=True)
    close(o_c, o_r); [close(a, b) for a, b in zip(st_c, st_r)]
    close(naive_mlstm(**x)[0], o_r)
    close(mix(mlstm_mixing_matrix(x['q'], x['k'], x['i'], x['f']), x['v']), o_r)
    # from a non-empty state (the state of a random prefix)
    y = mlstm_inputs(B, 3, H, K, V, seed + 1)
    st0 = recurrent_mlstm(**y, output_final_state=True)[1]
    o_c, st_c = chunk_mlstm(**x, initial_state=st0, output_final_state=True, chunk_size=C)
    o_r, st_r = recurrent_mlstm(**x, initial_state=st0, output_final_state=True)
    close(o_c, o_r); [close(a, b) for a, b in zip(st_c, st_r)]


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 2), T=st.integers(1, 40), Dch=st.sampled_from([2, 4, 6]), N=st.integers(1, 4),
       G=st.sampled_from([None, 1, 2]), C=st.integers(1, 16), seed=st.integers(0, 2**16),
       gate=st.booleans())
def test_selective_scan_forms_agree(B, T, Dch, N, G, C, seed, gate):
    x = scan_inputs(B, Dch, N, T, G, seed)
    if not gate: x.update(z=None, D=None, delta_bias=None, delta_softplus=False, delta=x['delta'].abs())
    h0 = rand(seed + 1)(B, Dch, N)
    y_c, h_c = chunk_selective_scan(**x, return_last_state=True, initial_state=h0, chunk_size=C)
    y_r, h_r = recurrent_selective_scan(**x, return_last_state=True, initial_state=h0)
    close(y_c, y_r); close(h_c, h_r)
    y = chunk_selective_scan(**x, chunk_size=C)[0]
    M = selective_scan_mixing_matrix(**x)
    assert M.shape == (B, Dch, T, T)
    close(torch.einsum('bdts,bds->bdt', M, x['u']), y); close(naive_selective_scan(**x)[0], y)
    close(recurrent_selective_scan(**x)[0], y)


@pytest.mark.parametrize('T', [1, 63, 64])
def test_lengths_around_the_chunk(T):
    "T=1 (one step), T one short of the chunk, T a whole chunk: chunked equals stepped."
    x = delta_inputs(T=T, K=16, V=16)
    close(chunk_gated_delta_rule(**x)[0], recurrent_gated_delta_rule(**x)[0])
    x = mlstm_inputs(T=T, K=16, V=16)
    close(chunk_mlstm(**x)[0], recurrent_mlstm(**x)[0])
    x = scan_inputs(T=T, N=16)
    close(chunk_selective_scan(**x)[0], recurrent_selective_scan(**x)[0])


# ---------------------------------------------------------------- states chain
def test_states_chain():
    "Two halves, the second from the first's final state, equal the whole; so do T=1 steps."
    x = delta_inputs(T=20)
    o, S = chunk_gated_delta_rule(**x, output_final_state=True, chunk_size=8)
    S_h, outs = None, []
    for t in range(20):
        o_t, S_h = gated_delta_rule(**{n: a[:, t:t + 1] for n, a in x.items()}, initial_state=S_h,
                                    output_final_state=True)
        outs.append(o_t)
    close(torch.cat(outs, 1), o); close(S_h, S)
    x = mlstm_inputs(T=20)
    o, st_ = chunk_mlstm(**x, output_final_state=True, chunk_size=8)
    o1, s1 = chunk_mlstm(**{n: a[:, :9] for n, a in x.items()}, output_final_state=True, chunk_size=4)
    o2, s2 = chunk_mlstm(**{n: a[:, 9:] for n, a in x.items()}, initial_state=s1, output_final_state=True)
    close(torch.cat([o1, o2], 1), o); [close(a, b) for a, b in zip(s2, st_)]
    x = scan_inputs(T=20, G=2)
    y, h = selective_scan(**x, return_last_state=True, chunk_size=8)
    cut = lambda s: {n: (a[..., s] if n in ('u', 'delta', 'B', 'C', 'z') else a) for n, a in x.items()}
    y1, h1 = selective_scan(**cut(slice(0, 9)), return_last_state=True)
    y2, h2 = selective_scan(**cut(slice(9, None)), initial_state=h1, return_last_state=True)
    close(torch.cat([y1, y2], -1), y); close(h2, h)


# ---------------------------------------------------------------- gradients
def leaves(d): return {n: (t.detach().requires_grad_() if torch.is_tensor(t) else t) for n, t in d.items()}

def test_gradcheck_delta():
    x = leaves(delta_inputs(B=1, T=5, H=2, K=3, V=2))
    S0 = torch.randn(1, 2, 3, 2, dtype=F64, requires_grad=True)
    assert gradcheck(lambda q, k, v, g, beta, S0: chunk_gated_delta_rule(
        q, k, v, g, beta, initial_state=S0, output_final_state=True, chunk_size=2), (*x.values(), S0))
    assert gradcheck(lambda q, k, v, g, beta: chunk_delta_rule(q, k, v, beta, chunk_size=3)[0], tuple(x.values()))
    assert gradcheck(lambda q, k, g, beta: gated_delta_rule_mixing_matrix(q, k, g, beta),
                     (x['q'], x['k'], x['g'], x['beta']))

def test_gradcheck_mlstm():
    x = leaves(mlstm_inputs(B=1, T=5, H=2, K=3, V=2))
    assert gradcheck(lambda *a: chunk_mlstm(*a, chunk_size=2, output_final_state=True)[0], tuple(x.values()))
    assert gradcheck(lambda q, k, v, i, f: mlstm_mixing_matrix(q, k, i, f), tuple(x.values()))

def test_gradcheck_selective_scan():
    x = leaves(scan_inputs(B=1, Dch=2, N=2, T=5, G=1))
    args = tuple(t for t in x.values() if torch.is_tensor(t))
    assert gradcheck(lambda u, d, A, B, C, D, z, db: chunk_selective_scan(
        u, d, A, B, C, D, z, db, True, chunk_size=2)[0], args)


# ---------------------------------------------------------------- code nobody here wrote
def test_against_fla_naive():
    "fla's references: float32, some [B, H, T, D]; gated chunk takes (g, beta), gated recurrent (beta, g)."
    from fla.ops.delta_rule.naive import delta_rule_recurrence, delta_rule_chunkwise
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule, naive_chunk_gated_delta_rule
    x = delta_inputs(T=32, K=8, V=8, dtype=torch.float32)
    S0 = torch.randn(2, 2, 8, 8)
    hf = lambda t: rearrange(t, 'b t h ... -> b h t ...')
    o, S = chunk_delta_rule(x['q'], x['k'], x['v'], x['beta'], initial_state=S0, output_final_state=True, chunk_size=8)
    o_ref, S_ref = delta_rule_recurrence(*map(hf, (x['q'], x['k'], x['v'], x['beta'])), initial_state=S0)
    close(o, hf(o_ref), 1e-4); close(S, S_ref, 1e-4)
    o_ref, S_ref = delta_rule_chunkwise(*map(hf, (x['q'], x['k'], x['v'], x['beta'])), chunk_size=8)
    close(chunk_delta_rule(x['q'], x['k'], x['v'], x['beta'])[0], hf(o_ref), 1e-4)
    o, S = chunk_gated_delta_rule(**x, initial_state=S0, output_final_state=True, chunk_size=8)
    o_ref, S_ref = naive_recurrent_gated_delta_rule(x['q'], x['k'], x['v'], x['beta'], x['g'], initial_state=S0,
                                                    output_final_state=True)
    close(o, o_ref, 1e-4); close(S, S_ref, 1e-4)
    o_ref, S_ref = naive_chunk_gated_delta_rule(x['q'], x['k'], x['v'], x['g'], x['beta'], chunk_size=16,
                                                initial_state=S0, output_final_state=True)
    close(o, o_ref, 1e-4); close(S, S_ref, 1e-4)


def test_against_mambapy():
    from mambapy.mamba import MambaBlock
    x = scan_inputs(T=21, dtype=torch.float32)
    delta = F.softplus(x['delta'] + x['delta_bias'][:, None])
    y, _ = selective_scan(x['u'], delta, x['A'], x['B'], x['C'], x['D'])
    btc = lambda t: rearrange(t, 'b c t -> b t c')
    cfg = type('cfg', (), dict(config=type('c', (), dict(d_inner=4, d_state=3))))()
    for ref in (MambaBlock.selective_scan, MambaBlock.selective_scan_seq):
        close(y, btc(ref(cfg, btc(x['u']), btc(delta), x['A'], btc(x['B']), btc(x['C']), x['D'])), 1e-4)


def test_selective_scan_rederived():
    "Mamba-1 from its definition: y_t = sum_{s<=t} C_t . (prod_{j=s+1..t} exp(dt_j A)) (dt_s B_s u_s) + D u_t."
    x = scan_inputs(B=1, Dch=3, N=2, T=7)
    dt = F.softplus(x['delta'] + x['delta_bias'][:, None])[0]                # (Dch, T)
    u, A, Bm, Cm, D, z = x['u'][0], x['A'], x['B'][0], x['C'][0], x['D'], x['z'][0]
    y = torch.zeros_like(u)
    for d in range(3):
        for t in range(7):
            for s in range(t + 1):
                decay = torch.exp(dt[d, s + 1:t + 1, None] * A[d]).prod(0)  # (N,)
                y[d, t] += (Cm[:, t] * decay * Bm[:, s]).sum() * dt[d, s] * u[d, s]
            y[d, t] = (y[d, t] + D[d] * u[d, t]) * F.silu(z[d, t])
    close(chunk_selective_scan(**x, chunk_size=3)[0][0], y)


# ---------------------------------------------------------------- matrices, dtypes, registry
def test_mixing_matrices_causal_and_heads():
    x = delta_inputs(T=9)
    for M in (delta_rule_mixing_matrix(x['q'], x['k'], x['beta']),
              mlstm_mixing_matrix(**{n: a for n, a in mlstm_inputs(T=9).items() if n != 'v'})):
        assert M.shape == (2, 2, 9, 9) and M.triu(1).abs().max() == 0
    M = selective_scan_mixing_matrix(**scan_inputs(Dch=6, T=9))
    H2 = channels_to_heads(M, 2)
    assert H2.shape == (2, 2, 9, 9); close(H2[:, 1], M[:, 3:].mean(1))
    with pytest.raises(SsmDistillError, match='divisible'): channels_to_heads(M, 4)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_low_precision(dtype):
    "Low-precision inputs compute in float32 and come back in their dtype (reference: the same rounded inputs)."
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    low = lambda d: {n: (a.to(dtype) if torch.is_tensor(a) else a) for n, a in d.items()}
    up = lambda d: {n: (a.float() if torch.is_tensor(a) else a) for n, a in d.items()}
    for op, ref, x in ((gated_delta_rule, chunk_gated_delta_rule, delta_inputs(T=20, dtype=torch.float32)),
                       (mlstm, chunk_mlstm, mlstm_inputs(T=20, dtype=torch.float32))):
        o = op(**low(x), chunk_size=8)[0]
        assert o.dtype == dtype; close(o.float(), ref(**up(low(x)))[0], tol)
    x = scan_inputs(T=20, dtype=torch.float32)
    y = selective_scan(**low(x), chunk_size=8)[0]
    assert y.dtype == dtype; close(y.float(), chunk_selective_scan(**up(low(x)))[0], tol)


@pytest.mark.parametrize('name', ['delta_rule', 'gated_delta_rule', 'mlstm', 'selective_scan'])
def test_registered_family_contract(name):
    "The FAMILIES entry works generically: inputs(...) -> all forms agree; state chaining via output_final_state."
    fam = FAMILIES[name]
    args = fam.inputs(2, 11, 2, 3, 2, generator=torch.Generator().manual_seed(0))
    o, S = fam.chunk(**args, chunk_size=4, output_final_state=True)
    M, val = fam.mixing_matrix(**args), args[fam.value]
    applied = torch.einsum('bdts,bds->bdt', M, val) if fam.value == 'u' else mix(M, val)
    close(applied, o); close(fam.naive(**args)[0], o); close(fam.op(**args, backend='torch')[0], o)
    o_r, S_r = fam.recurrent(**args, output_final_state=True)
    close(o_r, o)
    for a, b in zip(S if isinstance(S, tuple) else (S,), S_r if isinstance(S_r, tuple) else (S_r,)): close(a, b)


# ---------------------------------------------------------------- bad input
def test_bad_input():
    x = delta_inputs(T=5)
    bad = [(lambda: chunk_gated_delta_rule(**{**x, 'g': -x['g']}), '<= 0'),
           (lambda: chunk_delta_rule(x['q'], x['k'], x['v'], 3 * x['beta']), r'\[0, 2\]'),
           (lambda: chunk_delta_rule(x['q'], x['k'][:, :, :1], x['v'], x['beta']), 'H='),
           (lambda: chunk_delta_rule(x['q'][0], x['k'], x['v'], x['beta']), 'dims'),
           (lambda: chunk_delta_rule(x['q'], x['k'], x['v'], x['beta'], chunk_size=0), 'chunk'),
           (lambda: recurrent_delta_rule(x['q'], x['k'], x['v'], x['beta'], initial_state=torch.zeros(2, 2, 4, 4)), 'V='),
           (lambda: chunk_mlstm(**mlstm_inputs(), initial_state=torch.zeros(2, 2, 4, 3)), 'tuple'),
           (lambda: chunk_mlstm(**{**mlstm_inputs(), 'i': torch.zeros(2, 13, 3)}), 'H='),
           (lambda: selective_scan(**{**scan_inputs(), 'A': torch.rand(4, 3, dtype=F64)}), '<= 0'),
           (lambda: selective_scan(**{**scan_inputs(), 'B': torch.zeros(2, 13, 3, dtype=F64)}), 'N='),
           (lambda: selective_scan(**scan_inputs(G=3, Dch=4)), 'groups'),
           (lambda: selective_scan(**scan_inputs(), backend='fla'), 'not available')]
    for fn, msg in bad:
        with pytest.raises(SsmDistillError, match=msg): fn()


# ---------------------------------------------------------------- fast kernels (GPU machine)
@pytest.mark.cuda
@cuda
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float32])
@pytest.mark.parametrize('gated', [False, True])
def test_fla_kernels_match(dtype, gated):
    x = {n: a.cuda() for n, a in delta_inputs(T=100, K=32, V=32, dtype=torch.float32).items()}
    if not gated: x.pop('g')
    S0 = torch.randn(2, 2, 32, 32, device='cuda')
    op, ref = (gated_delta_rule, chunk_gated_delta_rule) if gated else (delta_rule, chunk_delta_rule)
    o, S = op(**{n: a.to(dtype) for n, a in x.items()}, initial_state=S0, output_final_state=True, backend='fla')
    o_ref, S_ref = ref(**x, initial_state=S0, output_final_state=True)
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-3
    close(o.float(), o_ref, tol); close(S.float(), S_ref, tol)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize('G', [None, 2])
def test_mamba_ssm_kernel_matches(G):
    x = {n: (a.cuda().float() if torch.is_tensor(a) else a) for n, a in scan_inputs(T=100, N=16, G=G).items()}
    y, h = selective_scan(**x, return_last_state=True, backend='mamba_ssm')
    y_ref, h_ref = chunk_selective_scan(**x, return_last_state=True)
    close(y, y_ref, 1e-3); close(h, h_ref, 1e-3)
