"""Which attention to keep: every method scores [L, H] on a tiny teacher, `select` honours any budget and builds valid
students, a method added as a plug-in works, a zeroed head is the teacher without that head's output columns, and
Spearman's rho agrees with its textbook form."""
from dataclasses import dataclass

import pytest
import torch

from ssm_distill.core import SsmDistillError
from ssm_distill.eval import kv_cache_bytes_per_token
from ssm_distill.selection import (SELECTORS, Selector, ablated_head, chosen_heads, kv_bytes_per_token, rank_correlation,
                                   score_heads, select)
from ssm_distill.students import build_student
from ssm_distill.teachers import tiny_teacher

FAST = dict(matrix_error=dict(steps=5, seq_len=16), ablation_loss=dict(mixer='gla', blocks=1, seq_len=16),
            kl_restore=dict(mixer='gla', blocks=1, seq_len=16), retrieval=dict(n_keys=4, n_values=4, n_pairs=4, n=16, min_accuracy=0.0))


@pytest.fixture(scope='module')
def teacher(one_thread):
    return tiny_teacher('llama', num_hidden_layers=3)            # 3 layers, 2 query heads on 1 K/V head


@pytest.mark.parametrize('method', sorted(SELECTORS))
def test_every_method_scores_every_head(teacher, method):
    s = score_heads(teacher, method, **FAST.get(method, {}))
    assert s.shape == (3, 2) and s.dtype == torch.float32 and bool(torch.isfinite(s).all())


@pytest.mark.parametrize('unit', ['head', 'layer'])
def test_select_honours_the_budget_and_builds(teacher, unit):
    scores = torch.rand(3, 2, generator=torch.Generator().manual_seed(1))
    for budget in range(7):
        choice = select(scores, budget, unit)
        n = len(chosen_heads(choice, 2))
        assert n == (budget if unit == 'head' else 2 * int(budget / 2 + 0.5)), (budget, choice)
        if n < 6:   # a student keeps at least one mixer head (else it is the teacher)
            st = build_student(teacher, 'gla', **choice)
            assert kv_cache_bytes_per_token(st) == kv_bytes_per_token(teacher, choice)


def test_select_refuses_bad_budgets():
    for bad in (-1, 7, 2.0, True):
        with pytest.raises(SsmDistillError, match='give a number of heads 0..6'): select(torch.zeros(3, 2), bad)
    with pytest.raises(SsmDistillError, match='NaN'): select(torch.tensor([[float('nan'), 0.]]), 1)


def test_a_method_added_as_a_plugin(teacher):
    @dataclass
    class LastOptions:
        weight:float = 1.0 # how much later layers count

    @SELECTORS.register('later_layers')
    class LaterLayers(Selector):
        "Later layers first (a toy method)."
        Options = LastOptions
        def score(self, teacher, data): return self.opt.weight * torch.arange(teacher.n_layers)[:, None].float().expand(-1, teacher.n_heads)

    try:
        s = score_heads(teacher, 'later_layers', weight=2.0)
        assert s[2, 0] == 4.0 and select(s, 2, 'layer') == dict(attention_layers=[2])
        with pytest.raises(SsmDistillError, match='its options are: weight'): score_heads(teacher, 'later_layers', wieght=2.0)
    finally: del SELECTORS['later_layers']


def test_a_zeroed_head_is_the_teacher_without_its_output_columns(teacher):
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), ablated_head(teacher, 1, 1): zeroed = teacher.model(input_ids=ids).logits
    w = teacher.out_proj(1).weight
    keep = w.detach().clone()
    with torch.no_grad():
        w[:, teacher.head_dim:2 * teacher.head_dim] = 0
        cut = teacher.model(input_ids=ids).logits
        w.copy_(keep)
        full = teacher.model(input_ids=ids).logits
    torch.testing.assert_close(zeroed, cut)
    assert (zeroed - full).abs().max() > 1e-4


def test_rank_correlation_is_spearman():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 5, (4, 8), generator=g).float(), torch.randint(0, 5, (4, 8), generator=g).float()   # many ties
    def ranks(x):   # the textbook definition: 1 + the count below + half the count of the others equal to it
        x = x.flatten()
        return torch.stack([(x < v).sum() + ((x == v).sum() - 1) / 2 for v in x]).double()
    ra, rb = ranks(a) - ranks(a).mean(), ranks(b) - ranks(b).mean()
    assert rank_correlation(a, b) == pytest.approx((ra @ rb / (ra.norm() * rb.norm())).item(), abs=1e-12)
    with pytest.raises(SsmDistillError, match='same teacher'): rank_correlation(a, b[:2])
