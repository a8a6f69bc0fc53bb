"Tests of ssm_distill.mixers beyond the notebook: every mixer, every form, and references written by others."
import pytest, torch
from torch import nn
import torch.nn.functional as F

from ssm_distill.core import SsmDistillError
from ssm_distill.mixers import (MIXERS, AttentionWeights, apply_rotary, rotary_cos_sin, expand_kv,
                                mixer_from_attention, call_with, values_path)
from ssm_distill.mixers import tiny_mixer as tiny, tiny_rotary as rotary_for   # the notebook's float64 helpers

NAMES = sorted(MIXERS)
F64 = torch.float64


@pytest.mark.parametrize('T', [1, 63, 64])
@pytest.mark.parametrize('name', NAMES)
def test_forward_equals_stepping(name, T):
    m, x = tiny(name, T=T)
    rot = rotary_for(m, T)
    y = m(x, rotary=rot)
    state, ys = m.init_state(2), []
    for t in range(T):
        y_t, state = m.step(x[:, t], state, rotary=tuple(r[:, t] for r in rot)); ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y, atol=1e-8, rtol=0)


@pytest.mark.parametrize('name', ['mamba2', 'phi_mamba', 'gla', 'deltanet', 'mlstm', 'linear_attention'])
def test_optional_rotary(name):
    "Mixers built with rotary=True rotate q/k (C/B): forward == stepping, and the output depends on the rotary."
    m, x = tiny(name, T=20, rotary=True)
    rot = rotary_for(m, 20)
    y = m(x, rotary=rot)
    state, ys = m.init_state(2), []
    for t in range(20):
        y_t, state = m.step(x[:, t], state, rotary=tuple(r[:, t] for r in rot)); ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y, atol=1e-8, rtol=0)
    plain = MIXERS[name](32, 2).to(F64); plain.load_state_dict(m.state_dict())
    assert (plain(x) - y).abs().max() > 1e-3


@pytest.mark.parametrize('name', NAMES)
def test_prefill_then_generate(name):
    m, x = tiny(name, T=63)
    rot = rotary_for(m, 63); at = lambda t: tuple(r[:, t] for r in rot)
    y = m(x, rotary=rot)
    y1, state = m(x[:, :37], rotary=at(slice(0, 37)), return_state=True)
    y2, state = m(x[:, 37:50], state, rotary=at(slice(37, 50)), return_state=True)   # a second chunk continues
    ys = [y1, y2]
    for t in range(50, 63):
        y_t, state = m.step(x[:, t], state, rotary=at(t)); ys.append(y_t[:, None])
    torch.testing.assert_close(torch.cat(ys, 1), y, atol=1e-8, rtol=0)


@pytest.mark.parametrize('name', NAMES)
def test_materialize(name):
    m, x = tiny(name, T=63)
    rot = rotary_for(m, 63)
    M = m.materialize(x, rotary=rot)
    assert M.shape == (2, 2, 63, 63)
    assert M.triu(1).abs().max() == 0                                   # causal
    if name != 'mamba':                                                 # mamba's matrix is per channel (averaged)
        torch.testing.assert_close(values_path(m, x, rot), m(x, rotary=rot), atol=1e-8, rtol=0)


@pytest.mark.parametrize('name', NAMES)
def test_left_padding(name):
    m, x = tiny(name, T=20)
    rot = rotary_for(m, 20)
    xp = torch.cat([torch.randn(2, 6, 32, dtype=F64), x], 1)
    mask = torch.ones(2, 26, dtype=torch.long); mask[0, :6] = 0; mask[1, :2] = 0
    rotp = tuple(torch.cat([r[:, :1].expand(-1, 6, -1), r], 1) for r in rot)
    yp = m(xp, rotary=rotp, attention_mask=mask)
    torch.testing.assert_close(yp[0, 6:], m(x, rotary=rot)[0], atol=1e-8, rtol=0)
    assert yp.isfinite().all()


@pytest.mark.parametrize('name', NAMES)
def test_gradients_and_float32(name):
    torch.manual_seed(0)
    m = MIXERS[name](32, 2)
    x = torch.randn(2, 17, 32, requires_grad=True)
    m(x).square().mean().backward()
    assert x.grad.isfinite().all()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in m.parameters())


@pytest.mark.parametrize('name', NAMES)
def test_qkv_copy_from_gqa_teacher(name):
    w = AttentionWeights.random(32, 4, n_kv_heads=2, bias=True, dtype=F64)
    m = mixer_from_attention(name, w)
    if name == 'softmax_attention':
        parts, want = dict(q='q', k='k', v='v'), dict(q=w.wq, k=w.wk, v=w.wv)
    else:
        parts, want = m.qkv_parts, dict(q=w.wq, k=expand_kv(w.wk, 2, 8), v=expand_kv(w.wv, 2, 8))
    for teacher, part in parts.items():
        torch.testing.assert_close(m.in_proj.weight[m.in_proj.slice(part)].detach(), want[teacher])
    torch.testing.assert_close(m.out_proj.weight.detach(), w.wo)
    assert m(torch.randn(2, 5, 32, dtype=F64)).isfinite().all()


@pytest.mark.parametrize('name', NAMES)
def test_qk_norms_are_copied_and_required(name):
    "A teacher with per-head q/k RMSNorm (Qwen3): the copy carries the norms onto the parts copied from q and k."
    w = AttentionWeights.random(32, 4, dtype=F64)
    w.qk_norm, w.qk_norm_eps = 'rms', 1e-6
    w.q_norm, w.k_norm = {'weight': torch.rand(8, dtype=F64) + 0.5}, {'weight': torch.rand(8, dtype=F64) + 0.5}
    m = mixer_from_attention(name, w)
    for t, norm in m.qk_norms.items(): torch.testing.assert_close(norm.weight.detach(), getattr(w, f'{t}_norm')['weight'])
    assert set(m.qk_norms) == {t for t in 'qk' if t in (dict(q=1, k=1) if name == 'softmax_attention' else m.qkv_parts)}
    assert m(torch.randn(2, 5, 32, dtype=F64)).isfinite().all()
    with pytest.raises(SsmDistillError, match="build it with qk_norm='rms'"):
        mixer_from_attention(name, w, init=False, qk_norm=None).init_from_attention(w)


def test_phi_mamba_without_decay_is_causal_qk():
    w = AttentionWeights.random(32, 4, n_kv_heads=2, dtype=F64)
    m = mixer_from_attention('phi_mamba', w, bias=True)
    with torch.no_grad():
        a = m.in_proj.slice('A_log'); m.in_proj.weight[a] = 0; m.in_proj.bias[a] = -40.0
    x = torch.randn(2, 16, 32, dtype=F64)
    q = (x @ w.wq.T).unflatten(-1, (4, 8)); k = (x @ expand_kv(w.wk, 2, 8).T).unflatten(-1, (4, 8))
    torch.testing.assert_close(m.materialize(x), torch.einsum('bthd,bshd->bhts', q, k).tril(), atol=1e-8, rtol=0)
    # gate 1, identity conv, D = 1: the output is out_proj(M v + v)
    v = (x @ expand_kv(w.wv, 2, 8).T).unflatten(-1, (4, 8))
    ref = torch.einsum('bhts,bshv->bthv', m.materialize(x), v) + v
    torch.testing.assert_close(m(x), ref.flatten(2) @ w.wo.T, atol=1e-5, rtol=1e-5)


def test_mixing_matrix_formulas():
    "y == out_proj(gate * (M @ v) + D x) for the layers whose output is that simple."
    m, x = tiny('mamba2'); _, e, _ = m.kernel_inputs(x)
    y = torch.einsum('bhts,bshp->bthp', m.materialize(x), e['x']) + m.D[:, None] * e['x']
    torch.testing.assert_close(m(x), m.out_proj(m.norm(y.flatten(2), e['z'])), atol=1e-10, rtol=0)
    m, x = tiny('phi_mamba'); _, e, _ = m.kernel_inputs(x)
    y = torch.einsum('bhts,bshp->bthp', m.materialize(x), e['x']) + m.D[:, None] * e['x']
    torch.testing.assert_close(m(x), m.out_proj(y.flatten(2) * F.silu(e['z'] + m.z_bias)), atol=1e-10, rtol=0)
    m, x = tiny('gla'); a, e, _ = m.kernel_inputs(x)
    o = torch.einsum('bhts,bshv->bthv', m.materialize(x), a['v'])
    torch.testing.assert_close(m(x), m.out_proj(m.norm(o.flatten(2), e['z'])), atol=1e-10, rtol=0)
    m, x = tiny('linear_attention'); a, _, _ = m.kernel_inputs(x)
    o = torch.einsum('bhts,bshv->bthv', m.materialize(x), a['v'])
    torch.testing.assert_close(m(x), m.out_proj(o.flatten(2)), atol=1e-10, rtol=0)
    m, x = tiny('mamba', expand=2); a, _, _ = m.kernel_inputs(x)
    Md = call_with(m.kernel.mixing_matrix, a, D=None, z=None)
    y = (torch.einsum('bdts,bds->bdt', Md, a['u']) + m.D[:, None] * a['u']) * F.silu(a['z'])
    torch.testing.assert_close(m(x), m.out_proj(y.mT), atol=1e-10, rtol=0)


# ---- references written by others --------------------------------------------------------------------------

def _hf_weights(sd, conv_name):
    return {k.replace('conv1d.', f'convs.{conv_name}.'): v for k, v in sd.items()}


@pytest.mark.parametrize('groups', [1, 2])
def test_mamba2_matches_transformers(groups):
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
    torch.manual_seed(0)
    hf = Mamba2Mixer(Mamba2Config(hidden_size=32, num_heads=4, head_dim=16, state_size=8, n_groups=groups, expand=2,
                                  chunk_size=16, num_hidden_layers=1, vocab_size=10), layer_idx=0).double().eval()
    for p in hf.parameters(): nn.init.normal_(p, std=0.3)
    m = MIXERS['mamba2'](32, 4, head_dim=16, d_state=8, n_groups=groups, chunk_size=16).double()
    m.load_state_dict(_hf_weights(hf.state_dict(), 'xBC'))
    x = torch.randn(2, 37, 32, dtype=F64)
    with torch.no_grad():   # transformers' gated RMSNorm runs in float32
        torch.testing.assert_close(m(x), hf(x), atol=1e-5, rtol=1e-5)


def test_mamba_matches_transformers_and_mambapy():
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer
    import mambapy.mamba
    torch.manual_seed(0)
    hf = MambaMixer(MambaConfig(hidden_size=32, state_size=8, intermediate_size=64, time_step_rank=4,
                                num_hidden_layers=1, vocab_size=10), layer_idx=0).double().eval()
    for p in hf.parameters(): nn.init.normal_(p, std=0.2)
    m = MIXERS['mamba'](32, 2, expand=2, d_state=8, dt_rank=4).double()
    m.load_state_dict(_hf_weights(hf.state_dict(), 'x'))
    x = torch.randn(2, 37, 32, dtype=F64)
    with torch.no_grad():
        y = m(x); tol = 1e-6 * y.abs().max().item()      # A and D are cast to float32 in both references
        torch.testing.assert_close(y, hf(x), atol=tol, rtol=1e-6)
        for pscan in (False, True):
            mp = mambapy.mamba.MambaBlock(mambapy.mamba.MambaConfig(d_model=32, n_layers=1, d_state=8, expand_factor=2,
                                                                      dt_rank=4, pscan=pscan)).double()
            mp.load_state_dict(hf.state_dict())
            torch.testing.assert_close(y, mp(x), atol=tol, rtol=1e-6)


def _llama_attention(D=32, H=4, Hkv=2, bias=True):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=D, num_attention_heads=H, num_key_value_heads=Hkv, attention_bias=bias,
                      intermediate_size=64, num_hidden_layers=1, vocab_size=10)
    cfg._attn_implementation = 'eager'
    att = LlamaAttention(cfg, layer_idx=0).eval()
    for p in att.parameters(): nn.init.normal_(p, std=0.3)
    w = AttentionWeights(att.q_proj.weight, att.k_proj.weight, att.v_proj.weight, att.o_proj.weight,
                         att.q_proj.bias, att.k_proj.bias, att.v_proj.bias, att.o_proj.bias, n_heads=H,
                         n_kv_heads=Hkv, head_dim=D // H, rotary_dim=D // H, scale=att.scaling)
    return att, LlamaRotaryEmbedding(cfg), w


@pytest.mark.parametrize('Hkv,bias', [(4, False), (2, True), (1, True)])
def test_softmax_attention_reproduces_hf_llama(Hkv, bias):
    att, rope, w = _llama_attention(Hkv=Hkv, bias=bias)
    T = 11
    x = torch.randn(2, T, 32)
    mask = torch.ones(2, T, dtype=torch.long); mask[1, :3] = 0            # row 1 left-padded
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    cos, sin = rope(x, pos)
    allowed = torch.ones(T, T, dtype=torch.bool).tril()[None] & mask.bool()[:, None, :]
    add = torch.zeros(2, 1, T, T).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
    with torch.no_grad():
        y_hf, p_hf = att(x, position_embeddings=(cos, sin), attention_mask=add)
        m = mixer_from_attention('softmax_attention', w)
        y = m(x, rotary=(cos, sin), attention_mask=mask)
        keep = mask.bool()
        torch.testing.assert_close(y[keep], y_hf[keep], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m.materialize(x[:1], rotary=(cos[:1], sin[:1])), p_hf[:1], atol=1e-6, rtol=1e-5)


def test_partial_rotary_matches_hf_neox():
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb
    q, k = torch.randn(2, 7, 3, 16, dtype=F64), torch.randn(2, 7, 3, 16, dtype=F64)
    cos, sin = rotary_cos_sin(torch.arange(7), 4, dtype=F64)
    cos, sin = cos.expand(2, -1, -1), sin.expand(2, -1, -1)
    qh, kh = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    torch.testing.assert_close(apply_rotary(q, cos, sin, 4), qh.transpose(1, 2))
    torch.testing.assert_close(apply_rotary(k, cos, sin), kh.transpose(1, 2))


# ---- bad input ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('make, msg', [
    (lambda: MIXERS['mamba3'], "unknown mixer 'mamba3'"),
    (lambda: MIXERS['gla'](30, 4), 'does not divide d_model=30'),
    (lambda: MIXERS['gla'](32, 4, n_kv_heads=3), 'n_kv_heads=3 does not divide'),
    (lambda: MIXERS['gla'](32, 4, d_state=8), "no option(s) ['d_state']"),
    (lambda: MIXERS['mamba2'](32, 4, n_groups=3), 'n_groups=3 does not divide'),
    (lambda: MIXERS['deltanet'](32, 4).init_from_attention(AttentionWeights.random(32, 2)), 'head_dim=w.head_dim'),
    (lambda: MIXERS['softmax_attention'](32, 4).init_from_attention(AttentionWeights.random(32, 4, n_kv_heads=2)),
     'n_kv_heads=2'),
    (lambda: MIXERS['mamba2'](32, 4, d_state=4).init_from_attention(AttentionWeights.random(32, 4)), 'd_state=None'),
    (lambda: MIXERS['mamba'](32, 4, expand=2).init_from_attention(AttentionWeights.random(32, 4)), 'expand=1'),
    (lambda: MIXERS['gla'](32, 4).init_from_attention(AttentionWeights.random(32, 4, bias=True)), 'bias=True'),
    (lambda: MIXERS['gla'](32, 4)(torch.randn(1, 3, 16)), 'd_model=32'),
    (lambda: MIXERS['gla'](32, 4)(torch.randn(3, 32)), '3 dims'),
    (lambda: MIXERS['retnet'](32, 4, rotary=True)(torch.randn(1, 3, 32)), 'rotary=(cos, sin)'),
    (lambda: AttentionWeights(torch.zeros(32, 16), torch.zeros(8, 16), torch.zeros(16, 16), torch.zeros(16, 32),
                              n_heads=4, n_kv_heads=2), 'wk has shape (8, 16)'),
])
def test_bad_input(make, msg):
    with pytest.raises(SsmDistillError, match=None) as e: make()
    assert msg in str(e.value), str(e.value)
