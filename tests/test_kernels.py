"""Property and reference tests for `ssm_distill.kernels` (gated-linear family, softmax, linear attention, S4D).

The notebook `nbs/01_kernels.ipynb` holds the small lessons; here: random shapes (hypothesis), gradients,
bfloat16, state chaining, bad input, comparisons with flash-linear-attention's naive references (code nobody
here wrote), and GPU tests of the fast kernels against the references."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st, HealthCheck

from ssm_distill.core import SsmDistillError, fast_backend_refusal
from ssm_distill import kernels as K
from ssm_distill.kernels import FAMILIES, mix

OURS = ['simple_gla', 'retention', 'ssd', 'gla', 'linear_attention', 'softmax_attention', 's4d']
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


def _inputs(name, B, T, H, Kd, V, seed=0, dtype=torch.float64):
    return FAMILIES[name].inputs(B, T, H, Kd, V, dtype=dtype, generator=torch.Generator().manual_seed(seed))

def _close(a, b, atol=1e-8, rtol=1e-6):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)

def _slice(args, name, t0, t1):
    "The arguments of time steps t0:t1 (per-time tensors are [B, T, ...]; per-head parameters stay)."
    T = args[FAMILIES[name].value].shape[1]
    per_time = lambda x: torch.is_tensor(x) and x.dim() >= 3 and x.shape[1] == T  # [H], [H, N]: parameters
    return {n: (x[:, t0:t1] if per_time(x) else x) for n, x in args.items()}


# --- the four forms agree ------------------------------------------------------------------------------------

shapes = st.fixed_dictionaries(dict(B=st.integers(1, 2), T=st.integers(1, 70), H=st.integers(1, 3),
                                    Kd=st.integers(1, 8), V=st.integers(1, 6), C=st.sampled_from([1, 3, 16, 64]),
                                    seed=st.integers(0, 2**16)))

@pytest.mark.parametrize('name', OURS)
@SETTINGS
@given(s=shapes)
def test_forms_agree(name, s):
    "chunk == recurrent == naive == mix(mixing_matrix, v) == op(backend='torch'), float64, atol 1e-8."
    spec = FAMILIES[name]
    args = _inputs(name, s['B'], s['T'], s['H'], s['Kd'], s['V'], s['seed'])
    o, _ = spec.chunk(**args, chunk_size=s['C'])
    assert o.shape == args[spec.value].shape and o.isfinite().all()
    _close(spec.recurrent(**args)[0], o)
    _close(spec.naive(**args)[0], o)
    _close(mix(spec.mixing_matrix(**args), args[spec.value]), o)
    _close(spec.op(**args, chunk_size=s['C'], backend='torch')[0], o)

@pytest.mark.parametrize('name', OURS)
@SETTINGS
@given(s=shapes, cut=st.floats(0, 1))
def test_state_chaining(name, s, cut):
    "Running [0:T1] then [T1:T] from the first part's final state equals one run (chunked and recurrent)."
    spec = FAMILIES[name]
    args = _inputs(name, s['B'], s['T'], s['H'], s['Kd'], s['V'], s['seed'])
    T = s['T']
    if T < 2: return
    T1 = 1 + int(cut * (T - 2))  # both parts non-empty
    o, S = spec.chunk(**args, output_final_state=True, chunk_size=s['C'])
    o1, S1 = spec.chunk(**_slice(args, name, 0, T1), output_final_state=True, chunk_size=s['C'])
    o2, S2 = spec.recurrent(**_slice(args, name, T1, T), initial_state=S1, output_final_state=True)
    _close(torch.cat([o1, o2], 1), o)
    o3, S3 = spec.chunk(**_slice(args, name, T1, T), initial_state=S1, output_final_state=True, chunk_size=s['C'])
    _close(o3, o2)
    if spec.has_state:
        _close(S2, S); _close(S3, S)
        assert tuple(S.shape[:2]) == (s['B'], s['H'])

def test_t1_is_one_step():
    "T = 1 through the recurrent form is one generation step, from a zero state or a given one."
    for name in OURS:
        spec = FAMILIES[name]
        args = _inputs(name, 2, 5, 2, 4, 3)
        o, _ = spec.chunk(**args, chunk_size=2)
        state = None
        for t in range(5):
            o_t, state = spec.recurrent(**_slice(args, name, t, t + 1), initial_state=state, output_final_state=True)
            _close(o_t, o[:, t:t + 1])


# --- per-channel gates: secondary chunking, factorised and exact paths ------------------------------------------

def _strong(g, where, value):
    "`g` with the steps `where` set to a log gate `value` (very strong decays force the exact diagonal blocks)."
    g = g.clone(); g[:, where] = value
    return g

@SETTINGS
@given(s=shapes, sub=st.sampled_from([1, 2, 4, 16]), strength=st.sampled_from([1., 30., 400.]), mixed=st.booleans())
def test_subchunk_scan_matches_recurrent(s, sub, strength, mixed):
    "`gated_chunk_scan` with per-channel gates == the recurrent scan, float64 atol 1e-8, ordinary, strong and mixed gates."
    args = _inputs('gla', s['B'], s['T'], s['H'], s['Kd'], s['V'], s['seed'])
    g = args['g'] * strength
    if mixed: g = _strong(args['g'], slice(s['T'] // 3, 2 * s['T'] // 3), -strength)  # a strong stretch in the middle
    S0 = torch.randn(s['B'], s['H'], s['Kd'], s['V'], dtype=torch.float64)
    o, S = K.gated_chunk_scan(args['q'], args['k'], args['v'], g, S0, chunk_size=s['C'], sub_chunk=sub)
    o_r, S_r = K.gated_recurrent_scan(args['q'], args['k'], args['v'], g, S0)
    assert o.isfinite().all()
    _close(o, o_r); _close(S, S_r)

@pytest.mark.parametrize('strong', [False, True], ids=['factorised', 'exact'])
def test_subchunk_scores_path(strong):
    "Both paths of `subchunk_scores` equal `decayed_scores`; the exact one is taken only past `factorised_limit`."
    args = _inputs('gla', 2, 64, 2, 8, 4)
    g = _strong(args['g'], slice(16, 32), -400.) if strong else args['g']
    beta = -g[:, 16:32].sum(1)  # (B, H, K): the decay across sub-chunk 1
    assert bool((beta.amax(-1) > K.factorised_limit(torch.float64)).all()) == strong
    _close(K.subchunk_scores(args['q'], args['k'], g), K.decayed_scores(args['q'], args['k'], g), atol=1e-12)

@pytest.mark.parametrize('T', [63, 64, 130])
def test_gla_strong_decay_float32(T):
    "A log gate of -30 at every step (float32): finite, and equal to the recurrent form."
    args = _f32(_inputs('gla', 2, T, 2, 16, 16))
    for g in (torch.full_like(args['g'], -30.), _strong(args['g'], slice(T // 2, None), -30.)):
        o, S = K.chunk_gla(**{**args, 'g': g}, output_final_state=True)
        o_r, S_r = K.recurrent_gla(**{**args, 'g': g}, output_final_state=True)
        assert o.isfinite().all() and S.isfinite().all()
        _close(o, o_r, atol=1e-4, rtol=1e-4); _close(S, S_r, atol=1e-4, rtol=1e-4)

@pytest.mark.parametrize('strong', [False, True], ids=['factorised', 'exact'])
def test_gradcheck_subchunk(strong):
    "Gradients through the secondary chunking (chunks of 4 in sub-chunks of 2), both paths."
    args = _inputs('gla', 1, 9, 1, 2, 2, seed=4)
    g = _strong(args['g'], slice(2, 4), -400.) if strong else args['g']
    xs = tuple(x.clone().requires_grad_() for x in (args['q'], args['k'], args['v'], g))
    f = lambda q, k, v, g: K.gated_chunk_scan(q, k, v, g, chunk_size=4, sub_chunk=2)[0]
    assert torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-6)


# --- gradients -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', OURS)
def test_gradcheck_chunk(name):
    "`torch.autograd.gradcheck` of each chunked form (two chunks plus padding) on tiny float64 inputs."
    spec = FAMILIES[name]
    args = _inputs(name, 1, 5, 1, 2, 2, seed=1)
    names = [n for n, x in args.items() if torch.is_tensor(x) and x.is_floating_point()]
    def f(*xs):
        return spec.chunk(**{**args, **dict(zip(names, xs))}, chunk_size=2)[0]
    xs = tuple(args[n].clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-6)

def test_gradcheck_state():
    "Gradients flow into the initial state."
    args = _inputs('gla', 1, 5, 1, 2, 2, seed=2)
    S0 = torch.randn(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda S: K.chunk_gla(**args, initial_state=S, chunk_size=2)[0], (S0,))

def test_hedgehog_grad():
    "The learnable Hedgehog map trains: gradients reach its weight through the chunked linear attention."
    fm = K.HedgehogFeatureMap(8, 2, identity_init=False)
    args = _inputs('linear_attention', 2, 20, 2, 8, 4, dtype=torch.float32)
    o, _ = K.linear_attention(**{**args, 'feature_map': fm})
    o.square().mean().backward()
    assert fm.weight.grad is not None and fm.weight.grad.abs().sum() > 0
    assert K.linear_attention_mixing_matrix(args['q'], args['k'], feature_map=fm).shape == (2, 2, 20, 20)


# --- dtypes ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('name', OURS)
def test_low_precision(name, dtype):
    "float32 and bfloat16 run, keep their dtype and stay close to the float64 result."
    spec = FAMILIES[name]
    ref_args = _inputs(name, 2, 63, 2, 16, 16)
    args = {n: x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() else x for n, x in ref_args.items()}
    ref, _ = spec.chunk(**ref_args, chunk_size=16)
    o, _ = spec.chunk(**args, chunk_size=16)
    assert o.dtype == dtype and o.isfinite().all()
    tol = 1e-4 if dtype == torch.float32 else 0.1
    err = (o.double() - ref).abs().max() / ref.abs().max().clamp_min(1)
    assert err < tol, f'{name} {dtype}: relative error {err:.3g}'


# --- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', OURS)
def test_chunk_size_zero(name):
    args = _inputs(name, 1, 8, 2, 4, 4)
    with pytest.raises(SsmDistillError, match='positive integer'):
        FAMILIES[name].op(**args, chunk_size=0)

@pytest.mark.parametrize('name', OURS)
def test_wrong_rank(name):
    spec = FAMILIES[name]
    args = _inputs(name, 1, 8, 2, 4, 4)
    args[spec.value] = args[spec.value][0]
    with pytest.raises(SsmDistillError, match='dims'):
        spec.op(**args)

@pytest.mark.parametrize('name', ['simple_gla', 'retention', 'gla', 'linear_attention', 'softmax_attention'])
def test_mismatched_heads(name):
    args = _inputs(name, 1, 8, 2, 4, 4)
    args['k'] = args['k'][:, :, :1]
    with pytest.raises(SsmDistillError, match='H=1'):
        FAMILIES[name].op(**args)

@pytest.mark.parametrize('name,arg,bad,msg', [
    ('simple_gla', 'g', lambda g: -g, r'log-space gates <= 0'),
    ('gla', 'g', lambda g: -g, r'-F.softplus\(x\) or F.logsigmoid\(x\)'),
    ('retention', 'gamma', lambda g: g + 1, r'\(0, 1\]'),
    ('ssd', 'A', lambda a: -a, 'A must be negative'),
    ('s4d', 'log_a', lambda a: -a, 'log_a has an entry'),
])
def test_positive_log_decay(name, arg, bad, msg):
    args = _inputs(name, 1, 8, 2, 4, 4)
    args[arg] = bad(args[arg])
    with pytest.raises(SsmDistillError, match=msg):
        FAMILIES[name].op(**args)

def test_ssd_groups_and_backend():
    args = _inputs('ssd', 1, 8, 3, 4, 4)
    args['B'] = args['C'] = torch.randn(1, 8, 2, 4, dtype=torch.float64)
    with pytest.raises(SsmDistillError, match='must divide the heads'):
        K.ssd(**args)
    with pytest.raises(SsmDistillError, match="backend='fla' is not available"):
        K.ssd(**_inputs('ssd', 1, 8, 2, 4, 4), backend='fla')

def test_unknown_feature_map_and_family():
    args = _inputs('linear_attention', 1, 8, 2, 4, 4)
    with pytest.raises(SsmDistillError, match='choose one of'):
        K.linear_attention(**{**args, 'feature_map': 'cosine'})
    with pytest.raises(SsmDistillError, match='unknown kernel family'):
        FAMILIES['transformer']


# --- references written elsewhere: flash-linear-attention's naive.py -------------------------------------------
# fla's naive references compute in float32 whatever the input dtype; we compare in float32.

def _fla(module):
    "Import one of fla's naive modules or skip (fla is a dev extra)."
    return pytest.importorskip(module, reason='flash-linear-attention not installed')

def _f32(args): return {n: x.float() if torch.is_tensor(x) else x for n, x in args.items()}

@pytest.mark.parametrize('T', [1, 63, 64])
def test_gla_vs_fla(T):
    "fla's `naive_recurrent_gla` ([B, T, H, K] in, scale K**-0.5), outputs and final state, with an initial state."
    fla_gla = _fla('fla.ops.gla.naive')
    args = _f32(_inputs('gla', 2, T, 2, 16, 16))
    S0 = torch.randn(2, 2, 16, 16)
    ref, ref_S = fla_gla.naive_recurrent_gla(args['q'], args['k'], args['v'], args['g'], initial_state=S0,
                                             output_final_state=True)
    o, S = K.gla(**args, initial_state=S0, output_final_state=True, chunk_size=16)
    _close(o, ref, atol=1e-4, rtol=1e-4); _close(S, ref_S, atol=1e-4, rtol=1e-4)

@pytest.mark.parametrize('T', [1, 63, 64])
def test_simple_gla_vs_fla(T):
    "fla's naive recurrent, chunk and parallel simple GLA; its parallel form's matrix is our mixing matrix."
    fla_sg = _fla('fla.ops.simple_gla.naive')
    args = _f32(_inputs('simple_gla', 2, T, 2, 16, 16))
    q, k, v, g = args['q'], args['k'], args['v'], args['g']
    S0 = torch.randn(2, 2, 16, 16)
    o, S = K.simple_gla(**args, scale=0.3, initial_state=S0, output_final_state=True, chunk_size=16)
    ref, ref_S = fla_sg.naive_recurrent_simple_gla(q, k, v, g, scale=0.3, initial_state=S0, output_final_state=True)
    _close(o, ref, atol=1e-4, rtol=1e-4); _close(S, ref_S, atol=1e-4, rtol=1e-4)
    ref_c, ref_cS = fla_sg.naive_chunk_simple_gla(q, k, v, g, initial_state=S0, output_final_state=True,
                                                  chunk_size=16, scale=0.3)
    _close(o, ref_c, atol=1e-4, rtol=1e-4); _close(S, ref_cS, atol=1e-4, rtol=1e-4)
    ref_p, A = fla_sg.naive_parallel_simple_gla(q, k, v, g, scale=0.3)
    _close(K.simple_gla_mixing_matrix(q, k, g, scale=0.3), A, atol=1e-4, rtol=1e-4)

def test_retention_vs_fla():
    "fla's `naive_retention` ([B, H, T, D] layout, RetNet's fixed gammas 1 - 2**(-5-h))."
    naive_retention = _fla('fla.ops.retention.naive').naive_retention
    args = _f32(_inputs('retention', 2, 63, 4, 16, 16))
    ref = naive_retention(*(args[n].transpose(1, 2) for n in 'qkv')).transpose(1, 2)
    _close(K.retention(**args, chunk_size=16)[0], ref, atol=1e-4, rtol=1e-4)

@pytest.mark.parametrize('normalize', [False, True])
def test_linear_attention_vs_fla(normalize):
    "fla's `naive_recurrent_linear_attn` on elu+1 features (fla applies feature maps in its layer, not the op)."
    naive_recurrent_linear_attn = _fla('fla.ops.linear_attn.naive').naive_recurrent_linear_attn
    args = _f32(_inputs('linear_attention', 2, 63, 2, 16, 16))
    q, k, v = args['q'], args['k'], args['v']
    ref, _ = naive_recurrent_linear_attn(F.elu(q) + 1, F.elu(k) + 1, v, normalize=normalize)
    o, _ = K.linear_attention(q, k, v, feature_map='elu', normalize=normalize, eps=1e-10, chunk_size=16)
    _close(o, ref, atol=1e-4, rtol=1e-4)


# --- other references -------------------------------------------------------------------------------------------

def test_softmax_vs_sdpa():
    "torch's scaled_dot_product_attention, causal and not, with a key padding mask."
    args = _inputs('softmax_attention', 2, 63, 2, 16, 8)
    mask = torch.ones(2, 63, dtype=torch.bool); mask[1, :7] = False
    q, k, v = (args[n].transpose(1, 2) for n in 'qkv')
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None]).transpose(1, 2)
    _close(K.softmax_attention(**args, causal=False, attention_mask=mask, chunk_size=16)[0], ref)
    ref_c = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    _close(K.softmax_attention(**args, chunk_size=16)[0], ref_c)

def test_ssd_matches_explicit_mamba2_recurrence():
    "SSD against Mamba-2's recurrence written out per (head, channel): h = exp(dt A) h + dt B x, y = C h + D x."
    g = torch.Generator().manual_seed(3)
    Bsz, T, H, P, G, N = 1, 9, 4, 3, 2, 5
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)
    x, dt, A, B, C, D, bias, z = r(Bsz, T, H, P), r(Bsz, T, H), -r(H).exp(), r(Bsz, T, G, N), r(Bsz, T, G, N), r(H, P), r(H), r(Bsz, T, H, P)
    y, S = K.ssd(x, dt, A, B, C, D=D, z=z, dt_bias=bias, dt_softplus=True, output_final_state=True, chunk_size=4)
    d = F.softplus(dt + bias)
    h = torch.zeros(Bsz, H, P, N, dtype=torch.float64)  # mamba's [B, H, P, N]
    ys = []
    for t in range(T):
        Bt, Ct = B[:, t].repeat_interleave(H // G, 1), C[:, t].repeat_interleave(H // G, 1)  # (B, H, N)
        h = (d[:, t] * A).exp()[..., None, None] * h + d[:, t, :, None, None] * x[:, t, :, :, None] * Bt[:, :, None]
        ys.append(torch.einsum('bhpn,bhn->bhp', h, Ct) + D * x[:, t])
    ref = torch.stack(ys, 1) * F.silu(z)
    _close(y, ref); _close(S, h.transpose(-1, -2))

def test_toeplitz_fft():
    "The FFT convolution equals the Toeplitz matrix product for any kernel."
    v = torch.randn(2, 50, 3, 4, dtype=torch.float64); kern = torch.randn(3, 64, dtype=torch.float64)
    _close(K.toeplitz_mixer(v, kern), mix(K.toeplitz_matrix(kern[:, :50])[None].expand(2, -1, -1, -1), v))


# --- fast kernels (GPU only) --------------------------------------------------------------------------------------

FAST = [n for n in OURS if FAMILIES[n].fast]

@pytest.mark.cuda
@cuda
@pytest.mark.parametrize('T', [63, 256])
@pytest.mark.parametrize('name', FAST)
def test_fast_matches_reference(name, T):
    "backend='auto' on CUDA (fla / mamba-ssm) equals the PyTorch reference, outputs and gradients, float32."
    spec = FAMILIES[name]
    pytest.importorskip(spec.fast)
    args = {n: x.cuda().float() if torch.is_tensor(x) else x for n, x in _inputs(name, 2, T, 2, 64, 64).items()}
    if why := fast_backend_refusal(spec.fast, torch.zeros(1, device='cuda', requires_grad=True)):
        pytest.skip(f'backend=auto falls back to the reference here: {why}')
    if name == 'ssd': args['D'] = None  # compared separately below through the skip
    grads = {}
    for backend in ('auto', 'torch'):
        leaves = {n: x.detach().clone().requires_grad_() if torch.is_tensor(x) and n != 'gamma' else x
                  for n, x in args.items()}
        o, _ = spec.op(**leaves, backend=backend)
        o.backward(torch.ones_like(o))
        grads[backend] = (o.detach(), {n: x.grad for n, x in leaves.items() if torch.is_tensor(x) and x.grad is not None})
    (o_f, g_f), (o_t, g_t) = grads['auto'], grads['torch']
    scale = o_t.abs().max().clamp_min(1)
    assert (o_f - o_t).abs().max() / scale < 5e-3
    for n in g_t:
        assert (g_f[n] - g_t[n]).abs().max() / g_t[n].abs().max().clamp_min(1) < 5e-3, n

@pytest.mark.cuda
@cuda
@pytest.mark.parametrize('name', [n for n in FAST if FAMILIES[n].has_state])
def test_fast_state(name):
    "The fast path's final state equals the reference's and continues a sequence."
    spec = FAMILIES[name]
    pytest.importorskip(spec.fast)
    args = {n: x.cuda().float() if torch.is_tensor(x) else x for n, x in _inputs(name, 2, 128, 2, 64, 64).items()}
    o_f, S_f = spec.op(**args, output_final_state=True, backend='auto')
    o_t, S_t = spec.op(**args, output_final_state=True, backend='torch')
    assert (S_f - S_t).abs().max() / S_t.abs().max().clamp_min(1) < 5e-3
    o2_f, _ = spec.op(**args, initial_state=S_t, backend='auto')
    o2_t, _ = spec.op(**args, initial_state=S_t, backend='torch')
    assert (o2_f - o2_t).abs().max() / o2_t.abs().max().clamp_min(1) < 5e-3


def test_old_names_of_the_delta_ops_warn_and_are_the_same_objects():
    "The delta-rule, mLSTM and selective-scan ops moved to kernels_delta; their old names still answer, with a warning."
    from ssm_distill import kernels_delta as KD
    assert len(K._MOVED_TO_DELTA) == 21 and set(K._MOVED_TO_DELTA) <= set(KD.__all__)
    for name in K._MOVED_TO_DELTA:
        with pytest.warns(DeprecationWarning, match=f'ssm_distill.kernels.{name} moved to ssm_distill.kernels_delta'):
            assert getattr(K, name) is getattr(KD, name)
    with pytest.warns(DeprecationWarning):
        from ssm_distill.kernels import chunk_delta_rule
    assert chunk_delta_rule is KD.chunk_delta_rule
    assert '__getattr__' not in K.__all__ and not set(K._MOVED_TO_DELTA) & set(K.__all__)
    with pytest.raises(AttributeError, match='no_such_op'): K.no_such_op
