"Tests of ssm_distill.matrices beyond the notebook: every class fits, never ends above its start, and keeps shapes."
import pytest, torch
from ssm_distill.core import SsmDistillError
from ssm_distill.matrices import (MATRIX_CLASSES, FitConfig, descend, diagonal_means, fit_matrix_class, frobenius_errors,
                                  toeplitz_fit)

@pytest.fixture(scope='module', autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def attention(B=2, H=2, T=19, seed=0):
    "Causal softmax probabilities of random scores (an odd length on purpose)."
    t = torch.arange(T)
    s = 2 * torch.randn(B, H, T, T, generator=torch.Generator().manual_seed(seed))
    return s.masked_fill(t[:, None] < t[None], -torch.inf).softmax(-1)

@pytest.mark.parametrize('kind', sorted(MATRIX_CLASSES))
def test_every_class_fits_and_never_ends_above_its_start(kind):
    A = attention()
    fit = fit_matrix_class(A, kind, 3, steps=30, lr=0.03)
    assert fit.errors.shape == (2, 2) and fit.matrices.shape == A.shape
    assert fit.matrices.isfinite().all()
    torch.testing.assert_close(fit.errors, frobenius_errors(fit.matrices, A))
    if fit.start_errors is not None:
        assert (fit.errors <= fit.start_errors + 1e-5).all()
        assert fit.errors.mean() < fit.start_errors.mean() or kind == 'lti'   # the LTI start is already least squares
    assert (fit.matrices.triu(1).abs() < 1e-6).all()                          # causal

def test_toeplitz_is_the_projection_and_the_float64_option():
    A = attention(seed=1).double()
    fit = fit_matrix_class(A, 'toeplitz', dtype='float64')
    torch.testing.assert_close(fit.matrices, toeplitz_fit(A))
    # the residual is orthogonal to every Toeplitz direction: each diagonal of A - M sums to zero
    torch.testing.assert_close(diagonal_means(A - fit.matrices), torch.zeros(2, 2, 19, dtype=torch.float64))
    assert fit_matrix_class(A, 'ssd', 2, steps=3, dtype='float64').matrices.dtype == torch.float64

def test_heads_are_fitted_independently():
    "Each head's result does not depend on the other heads of the batch (per-head best, per-head parameters)."
    A = attention(B=1, H=3, seed=2)
    both = fit_matrix_class(A, 'ssd', 3, steps=40, lr=0.03)
    alone = fit_matrix_class(A[:, 1:2], 'ssd', 3, steps=40, lr=0.03)
    torch.testing.assert_close(both.errors[:, 1:2], alone.errors, rtol=1e-4, atol=1e-5)

def test_descend_stops_on_a_plateau_and_reports_divergence():
    x = torch.zeros(3, requires_grad=True)
    d = descend([x], lambda: ((x - 1).pow(2).sum(), (x - 1).abs()), FitConfig(steps=500, lr=0.1, patience=10))
    assert d.stopped == 'plateau' and d.steps < 500
    y = torch.ones(2, requires_grad=True)
    d = descend([y], lambda: ((y * float('nan')).sum(), y.detach()), FitConfig(steps=5))
    assert d.stopped == 'diverged'

def test_errors_name_the_fix():
    A = attention()
    with pytest.raises(SsmDistillError, match='state size'): fit_matrix_class(A, 'diagonal')
    with pytest.raises(SsmDistillError, match='steps'): fit_matrix_class(A, 'ssd', 2, steps=-1)
    with pytest.raises(SsmDistillError, match='float64'): fit_matrix_class(A, 'ssd', 2, dtype='half')
    lr = fit_matrix_class(A, 'low_rank', 2, steps=2)
    with pytest.raises(SsmDistillError, match='N=2'): fit_matrix_class(A, 'ssd', 3, init=lr)
