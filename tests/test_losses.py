"Tests of ssm_distill.losses beyond the notebook: reference formulas, gradients, masks, mappings, bad inputs."
import math
import pytest, torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from ssm_distill.core import SsmDistillError
from ssm_distill.losses import (LOSSES, LAYER_MAPS, matrix_orientation_loss, hidden_state_alignment_loss, layerwise, kd_loss,
                                od_loss, hs_loss, hidden_projectors, HiddenProjector, resolve_mapping, minilm_relation_loss,
                                default_relation_heads, direct_minilm_loss, QKVProjector)

torch.manual_seed(0)

def test_every_loss_returns_scalar_and_float_logs():
    M = torch.rand(2, 2, 63, 63); h = torch.randn(2, 63, 16); z = torch.randn(2, 63, 11)
    qkv = [torch.randn(2, 63, 16) for _ in range(3)]
    calls = [matrix_orientation_loss(M, M.flip(-1)), hidden_state_alignment_loss(h, h + 1), kd_loss(z, z.flip(-1)),
             od_loss(z, z.flip(-1)), hs_loss([h] * 3, [h + 1] * 5, 'uniform'), minilm_relation_loss(qkv, qkv[::-1], 4),
             direct_minilm_loss(qkv, qkv[::-1])]
    for loss, logs in calls:
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert logs and all(type(v) is float for v in logs.values())

def test_matrix_orientation_reference():
    Ms, Mt = torch.rand(2, 3, 5, 5), torch.rand(2, 3, 5, 5)
    ref = torch.stack([torch.sqrt(((Ms[b, h] - Mt[b, h]) ** 2).sum()) for b in range(2) for h in range(3)]).mean()
    torch.testing.assert_close(matrix_orientation_loss(Ms, Mt)[0], ref)
    with pytest.raises(SsmDistillError, match='4 dims'): matrix_orientation_loss(Ms[0], Mt[0])

def test_teacher_is_detached_and_student_gets_gradients():
    hs = torch.randn(2, 64, 16, requires_grad=True); ht = torch.randn(2, 64, 16, requires_grad=True)
    loss, _ = layerwise('hidden_state_alignment', {0: hs, 1: hs * 2}, {0: ht, 1: ht}, mask=torch.ones(2, 64))
    loss.backward()
    assert hs.grad is not None and hs.grad.abs().sum() > 0 and ht.grad is None

def test_hidden_state_mask_ignores_nan_padding():
    hs, ht = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    hs[1, 2:] = float('nan'); m = torch.ones(2, 4); m[1, 2:] = 0
    loss, _ = hidden_state_alignment_loss(hs, ht, mask=m)
    assert torch.isfinite(loss)

@pytest.mark.parametrize('T', [1, 63])
def test_kd_gradcheck(T):
    zs = torch.randn(2, T, 5, dtype=torch.float64, requires_grad=True); zt = torch.randn(2, T, 5, dtype=torch.float64)
    # the soft term's gradient w.r.t. the logits is tau * (q - p) / (B*T) after the tau**2 scaling
    loss, _ = kd_loss(zs, zt, temperature=2.0)
    g, = torch.autograd.grad(loss, zs)
    expect = 2.0 * (F.softmax(zs / 2, -1) - F.softmax(zt / 2, -1)) / (2 * T)
    torch.testing.assert_close(g, expect.detach())

def test_kd_bf16_logits_computed_in_float32():
    zs, zt = torch.randn(2, 8, 50), torch.randn(2, 8, 50)
    l32 = kd_loss(zs, zt)[0]; l16 = kd_loss(zs.bfloat16(), zt.bfloat16())[0]
    assert l16.dtype == torch.float32 and abs(l16 - l32) < 0.05

@settings(max_examples=25, deadline=None)
@given(st.floats(0.5, 4.0), st.integers(0, 10_000))
def test_kl_nonnegative_and_ce_minus_entropy(tau, seed):
    g = torch.Generator().manual_seed(seed)
    zs, zt = torch.randn(2, 3, 7, generator=g) * 3, torch.randn(2, 3, 7, generator=g) * 3
    _, logs = kd_loss(zs, zt, temperature=tau)
    assert logs['kd/kl'] >= -1e-6
    assert math.isclose(logs['kd/ce'] - logs['kd/teacher_entropy'], logs['kd/kl'], abs_tol=1e-5)

def test_kd_hard_labels_ignore_index():
    zs, zt = torch.randn(1, 4, 6), torch.randn(1, 4, 6)
    lab = torch.tensor([[1, 2, -100, -100]])
    _, logs = kd_loss(zs, zt, labels=lab)
    torch.testing.assert_close(torch.tensor(logs['kd/hard_ce']), F.cross_entropy(zs[0, :1], lab[0, 1:2]))

HAND = {  # (L_T, L_S): {mapping: table}, written by hand from the definitions in the notebook
    (12, 6): dict(last=[(6, [12])], uniform=[(i, [2 * i]) for i in range(1, 7)],
                  uniform_consecutive=[(i, [2 * i - 1, 2 * i]) for i in range(1, 7)],
                  uniform_last=[(i, [2 * i]) for i in range(1, 7)]),
    (6, 3): dict(last=[(3, [6])], uniform=[(1, [2]), (2, [4]), (3, [6])],
                 uniform_consecutive=[(1, [1, 2]), (2, [3, 4]), (3, [5, 6])], uniform_last=[(1, [2]), (2, [4]), (3, [6])]),
    (7, 3): dict(last=[(3, [7])], uniform=[(1, [2]), (2, [4]), (3, [6])],
                 uniform_consecutive=[(1, [1, 2, 3]), (2, [4, 5, 6]), (3, [7])],
                 uniform_last=[(1, [2]), (2, [4]), (3, [6, 7])]),
}

@pytest.mark.parametrize('depths', list(HAND), ids=lambda d: f'LT{d[0]}-LS{d[1]}')
def test_mapping_tables(depths):
    lt, ls = depths
    for name, table in HAND[depths].items(): assert LAYER_MAPS[name](ls, lt) == table, name
    assert LAYER_MAPS['last_k'](ls, lt, k=2) == [(ls - 1, [lt - 1]), (ls, [lt])]

@settings(max_examples=50, deadline=None)
@given(st.integers(1, 24), st.integers(1, 48))
def test_uniform_consecutive_partitions_teacher(ls, lt):
    if ls > lt:
        with pytest.raises(SsmDistillError, match='more layers'): LAYER_MAPS['uniform_consecutive'](ls, lt)
        return
    pairs = LAYER_MAPS['uniform_consecutive'](ls, lt)
    assert [j for _, js in pairs for j in js] == list(range(1, lt + 1))
    assert pairs[0][0] == 1 and all(len(js) <= math.ceil(lt / ls) for _, js in pairs)
    uni = LAYER_MAPS['uniform'](ls, lt)
    assert [i for i, _ in uni] == list(range(1, ls + 1)) and all(1 <= js[0] <= lt for _, js in uni)
    assert LAYER_MAPS['uniform_last'](ls, lt)[-1][1][-1] == lt

def test_hs_loss_reference_and_errors():
    ht = [torch.randn(2, 5, 16) for _ in range(13)]; hsd = [torch.randn(2, 5, 16, requires_grad=True) for _ in range(7)]
    loss, logs = hs_loss(hsd, ht, 'uniform_consecutive')
    ref = sum(F.mse_loss(hsd[i], ht[j]) for i in range(1, 7) for j in (2 * i - 1, 2 * i))
    torch.testing.assert_close(loss, ref)
    assert len(logs) == 13
    with pytest.raises(SsmDistillError, match="unknown layer map 'middle'"): hs_loss(hsd, ht, 'middle')
    with pytest.raises(SsmDistillError, match='output_hidden_states=True'): hs_loss(hsd[:1], ht)
    with pytest.raises(SsmDistillError, match='takes options'): hs_loss(hsd, ht, 'last', k=3)
    with pytest.raises(SsmDistillError, match='only apply to a named mapping'): resolve_mapping([(1, [2])], 6, 12, k=2)
    with pytest.raises(SsmDistillError, match='no entry for student layer 6'):
        hs_loss([h[..., :8] for h in hsd], ht, 'last', projections=hidden_projectors([(1, [1])], 8, 16))
    # an explicit mapping may use the embeddings (layer 0)
    assert 'hs/s0_t0' in hs_loss(hsd, ht, [(0, [0]), (6, [12])])[1]

def test_hs_projection_shared_module_and_mask():
    ht = [torch.randn(2, 5, 16) for _ in range(4)]; hsd = [torch.randn(2, 5, 8) for _ in range(4)]
    proj = HiddenProjector(8, 16)
    m = torch.ones(2, 5); m[0, 3:] = 0
    loss, _ = hs_loss(hsd, ht, 'uniform', projections=proj, mask=m)
    ref = sum(((proj(hsd[i]) - ht[i]) ** 2).mean(-1)[m.bool()].mean() for i in range(1, 4))
    torch.testing.assert_close(loss, ref)

def _relation_reference(s, t, A, mask=None):
    "Row-by-row MiniLMv2 loss with F.kl_div, batch by batch and head by head (slow, obvious)."
    total = 0.
    for xs, xt in zip(s, t):
        rows = []
        for b in range(xs.shape[0]):
            keep = torch.arange(xs.shape[1]) if mask is None else mask[b].nonzero().flatten()
            for a in range(A):
                hs_, ht_ = xs[b, keep].chunk(A, -1)[a], xt[b, keep].chunk(A, -1)[a]
                ls = F.log_softmax(hs_ @ hs_.T / math.sqrt(hs_.shape[-1]), -1)
                lt = F.log_softmax(ht_ @ ht_.T / math.sqrt(ht_.shape[-1]), -1)
                rows.append(F.kl_div(ls, lt, log_target=True, reduction='none').sum(-1))
        total = total + torch.cat(rows).mean()
    return total

@pytest.mark.parametrize('A', [1, 2, 8])
def test_minilm_matches_reference(A):
    s = [torch.randn(2, 7, 16) for _ in range(3)]; t = [torch.randn(2, 7, 24) for _ in range(3)]
    torch.testing.assert_close(minilm_relation_loss(s, t, A)[0], _relation_reference(s, t, A), atol=1e-5, rtol=1e-5)
    m = torch.ones(2, 7, dtype=torch.long); m[0, 5:] = 0
    torch.testing.assert_close(minilm_relation_loss(s, t, A, mask=m)[0], _relation_reference(s, t, A, m), atol=1e-5, rtol=1e-5)

def test_minilm_head_layout_and_default_heads():
    t = [torch.randn(2, 6, 768) for _ in range(3)]
    l_flat, _ = minilm_relation_loss([x[..., :384] for x in t], t)      # default: 48 heads, d_r 8 and 16
    l_heads, _ = minilm_relation_loss([x[..., :384].reshape(2, 6, 6, 64) for x in t], [x.reshape(2, 6, 12, 64) for x in t])
    torch.testing.assert_close(l_flat, l_heads)
    assert default_relation_heads(768) == 48 and default_relation_heads(1024) == 64 and default_relation_heads(768, 384) == 48

def test_minilm_gradcheck():
    s = [torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    t = [torch.randn(1, 4, 8, dtype=torch.float64) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda *x: minilm_relation_loss(x, t, 2, causal=True)[0], tuple(s), fast_mode=True)

def test_minilm_errors():
    s = [torch.randn(2, 4, 16) for _ in range(3)]
    with pytest.raises(SsmDistillError, match='must divide both widths'): minilm_relation_loss(s, [torch.randn(2, 4, 20)] * 3, 8)
    with pytest.raises(SsmDistillError, match='T=5'): minilm_relation_loss(s, [torch.randn(2, 5, 16)] * 3, 4)
    with pytest.raises(SsmDistillError, match='same width within each model'):
        minilm_relation_loss(s, [torch.randn(2, 4, 16), torch.randn(2, 4, 8), torch.randn(2, 4, 8)], 4)
    with pytest.raises(SsmDistillError, match=r'\[B, T, D\]'): minilm_relation_loss([x[0] for x in s], s, 4)

def test_direct_minilm_mask_and_projection():
    s = [torch.randn(2, 5, 8) for _ in range(3)]; t = [torch.randn(2, 5, 16) for _ in range(3)]
    proj = QKVProjector(8, 16); m = torch.ones(2, 5); m[1, 1:] = 0
    loss, logs = direct_minilm_loss(s, t, proj, mask=m)
    ref = sum(((p(x) - y) ** 2).mean(-1)[m.bool()].mean() for p, x, y in zip((proj.q, proj.k, proj.v), s, t))
    torch.testing.assert_close(loss, ref)
    assert set(logs) == {'direct_minilm', 'direct_minilm/q', 'direct_minilm/k', 'direct_minilm/v'}

def test_registry_names():
    assert LOSSES['mha'] is LOSSES['minilm'] is minilm_relation_loss
    with pytest.raises(SsmDistillError, match='choose one of'): LOSSES['cosine']


def test_losses_do_not_import_students():
    "losses sits below students: mixing_error comes from matrices, and importing losses loads no student code."
    import subprocess, sys
    out = subprocess.run([sys.executable, '-c', 'import sys, ssm_distill.losses; print("ssm_distill.students" in sys.modules)'],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == 'False'
