"""ContinuousCategorical: normaliser, density, mean, entropy and KL against 80-digit arithmetic and
numerical integration; exact draws (Kolmogorov-Smirnov on exact marginals, moments); gradients."""

from __future__ import annotations

import math

import mpmath
import numpy
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats
from torch.distributions import kl_divergence

from latentgrad.distributions import ContinuousCategorical
from latentgrad.distributions.continuous_categorical import _proposals, _propose, log_normalizer

D = torch.float64
mpmath.mp.dps = 80


def _log_z_mp(eta: list) -> mpmath.mpf:
    """log Σ_k e^{η_k} / Π_{i≠k} (η_k − η_i) in 80 digits (distinct nodes; floats or mpf)."""
    nodes = [mpmath.mpf(e) for e in eta]
    total = mpmath.mpf(0)
    for k, a in enumerate(nodes):
        denominator = mpmath.mpf(1)
        for i, b in enumerate(nodes):
            if i != k:
                denominator *= a - b
        total += mpmath.e**a / denominator
    return mpmath.log(total)


def _log_z_reference(eta: list) -> float:
    return float(_log_z_mp(eta))


def _integrate_simplex3(f) -> float:
    """∫ f(x1, x2, 1 − x1 − x2) over the 2-simplex (Lebesgue on x1, x2)."""
    value, _ = integrate.dblquad(lambda x2, x1: f(x1, x2, 1.0 - x1 - x2), 0.0, 1.0,
                                 0.0, lambda x1: 1.0 - x1, epsabs=1e-13, epsrel=1e-11)
    return value


@given(seed=st.integers(0, 2**31 - 1), k=st.integers(2, 6),
       scale=st.sampled_from([1e-3, 0.1, 1.0, 10.0, 1e3, 1e6, 1e30, 1e150, 1e300]))
@settings(max_examples=60, deadline=None)
def test_log_normalizer_matches_80_digit_arithmetic_at_every_spread(seed, k, scale):
    eta = torch.randn(k, generator=torch.Generator().manual_seed(seed), dtype=D) * scale
    want = _log_z_reference(eta.tolist())
    assert abs(float(log_normalizer(eta)) - want) <= 1e-12 * max(1.0, abs(want))


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 20, 64])
def test_equal_parameters_give_the_uniform_density_on_the_simplex(k):
    eta = torch.full((3, k), 2.5, dtype=D)  # every node tied: Z = e^{2.5} / (K - 1)!
    want = 2.5 - math.lgamma(k)
    assert torch.allclose(log_normalizer(eta), torch.full((3,), want, dtype=D),
                          rtol=1e-13, atol=1e-13)
    d = ContinuousCategorical(eta)
    assert torch.allclose(d.mean, torch.full((3, k), 1.0 / k, dtype=D), rtol=1e-12, atol=0)


@pytest.mark.parametrize("k", [12, 32])
@pytest.mark.parametrize("scale", [0.05, 1.0, 20.0])
def test_many_categories_match_a_high_precision_matrix_exponential(k, scale):
    eta = torch.randn(k, generator=torch.Generator().manual_seed(k), dtype=D) * scale
    mpmath.mp.dps = 120
    try:
        bidiagonal = mpmath.diag([mpmath.mpf(e) for e in eta.tolist()])
        for i in range(k - 1):
            bidiagonal[i, i + 1] = 1
        want = float(mpmath.log(mpmath.expm(bidiagonal, method="taylor")[0, k - 1]))
    finally:
        mpmath.mp.dps = 80
    assert abs(float(log_normalizer(eta)) - want) <= 1e-13 * abs(want)


def test_partly_tied_parameters_match_the_limit_of_distinct_ones():
    eta = torch.tensor([1.0, 1.0, -2.0, 0.5], dtype=D)
    want = _log_z_reference([1.0, 1 + mpmath.mpf("1e-30"), -2.0, 0.5])  # a smooth function
    assert abs(float(log_normalizer(eta)) - want) <= 1e-13


@pytest.mark.parametrize("eta", [[0.3, -1.2, 2.0], [8.0, -8.0, 0.0], [0.0, 0.0, 1e-9]])
def test_density_integrates_to_one_and_entropy_and_kl_match_quadrature(eta):
    p = ContinuousCategorical(torch.tensor(eta, dtype=D))
    other = [-1.0, 0.5, 0.25]
    q = ContinuousCategorical(torch.tensor(other, dtype=D))
    points = torch.distributions.Dirichlet(torch.ones(3, dtype=D)).sample((5,))
    for d, params in ((p, eta), (q, other)):  # log_prob = η·x − log Z, then integrated in Python
        want = points @ torch.tensor(params, dtype=D) - d.log_normalizer()
        assert torch.allclose(d.log_prob(points), want, rtol=0, atol=1e-13)
    log_z_p, log_z_q = float(p.log_normalizer()), float(q.log_normalizer())

    def log_p(*x):
        return sum(a * b for a, b in zip(eta, x, strict=True)) - log_z_p

    def log_q(*x):
        return sum(a * b for a, b in zip(other, x, strict=True)) - log_z_q

    assert abs(_integrate_simplex3(lambda *x: math.exp(log_p(*x))) - 1.0) < 1e-9
    want_h = _integrate_simplex3(lambda *x: -math.exp(log_p(*x)) * log_p(*x))
    want_kl = _integrate_simplex3(lambda *x: math.exp(log_p(*x)) * (log_p(*x) - log_q(*x)))
    want_mean = [_integrate_simplex3(lambda *x, i=i: x[i] * math.exp(log_p(*x))) for i in range(3)]
    assert abs(float(p.entropy()) - want_h) < 1e-8
    assert abs(float(kl_divergence(p, q)) - want_kl) < 1e-8
    assert torch.allclose(p.mean, torch.tensor(want_mean, dtype=D), rtol=0, atol=1e-9)


@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 6),
       scale=st.sampled_from([1e-6, 1.0, 30.0, 1e4, 1e40, 1e300]))
@settings(max_examples=60, deadline=None)
def test_mean_is_the_gradient_of_the_log_normalizer_and_sums_to_one(seed, k, scale):
    eta = (torch.randn(k, generator=torch.Generator().manual_seed(seed), dtype=D) * scale)
    eta.requires_grad_()
    (grad,) = torch.autograd.grad(log_normalizer(eta), eta)
    mean = ContinuousCategorical(eta).mean
    assert torch.isfinite(mean).all() and (mean > 0).all()
    assert abs(float(mean.detach().sum()) - 1.0) <= 1e-14
    # two routes through the matrix exponential: they agree to its accuracy (measured: 7e-13
    # relative at spread 1e300, 2e-14 up to 1e3)
    assert torch.allclose(mean, grad, rtol=1e-11, atol=0)


def test_mean_matches_finite_differences_of_the_80_digit_normaliser():
    eta = [0.7, -0.4, 2.1, 0.0]
    h = mpmath.mpf("1e-25")
    for i in range(4):
        up = [mpmath.mpf(e) + (h if j == i else 0) for j, e in enumerate(eta)]
        down = [mpmath.mpf(e) - (h if j == i else 0) for j, e in enumerate(eta)]
        want = float((_log_z_mp(up) - _log_z_mp(down)) / (2 * h))
        got = float(ContinuousCategorical(torch.tensor(eta, dtype=D)).mean[i])
        assert abs(got - want) < 1e-14


def test_gradcheck_of_log_prob_mean_entropy_and_kl():
    torch.manual_seed(0)
    eta = torch.randn(2, 4, dtype=D, requires_grad=True)
    other = torch.randn(2, 4, dtype=D, requires_grad=True)
    x = torch.distributions.Dirichlet(torch.ones(4, dtype=D)).sample((3, 2))

    def everything(a, b):
        p, q = ContinuousCategorical(a), ContinuousCategorical(b)
        return p.log_prob(x), p.mean, p.entropy(), kl_divergence(p, q)

    assert torch.autograd.gradcheck(everything, (eta, other))  # second order: test_higher_order


def test_log_prob_is_invariant_to_a_common_shift_of_the_logits():
    eta = torch.tensor([[0.5, -1.0, 2.0]], dtype=D)
    x = torch.tensor([0.2, 0.3, 0.5], dtype=D)
    a = ContinuousCategorical(eta).log_prob(x)
    b = ContinuousCategorical(eta + 1e3).log_prob(x)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


def _exact_cdf_k2(a: float):
    """CDF of x1 when K = 2: density ∝ e^{a x} on [0, 1], a = η1 − η2."""
    if a == 0:
        return lambda x: x
    return lambda x: math.expm1(a * x) / math.expm1(a)


@pytest.mark.parametrize("eta", [[0.0, 0.0], [3.0, 0.0], [-40.0, 0.0], [0.0, 1e-12]])
def test_draws_for_two_categories_follow_the_exact_marginal(eta):
    torch.manual_seed(0)
    x = ContinuousCategorical(torch.tensor(eta, dtype=D)).sample((4000,))
    assert (x >= 0).all() and torch.allclose(x.sum(-1), torch.ones(4000, dtype=D), atol=1e-15)
    cdf = numpy.vectorize(_exact_cdf_k2(eta[0] - eta[1]))
    assert stats.kstest(x[:, 0].numpy(), cdf).pvalue > 1e-4


def test_draws_for_three_categories_follow_the_exact_marginal_and_mean():
    eta = [1.5, -0.5, 0.0]
    d = ContinuousCategorical(torch.tensor(eta, dtype=D))
    torch.manual_seed(1)
    x = d.sample((4000,))
    assert (x >= 0).all() and torch.allclose(x.sum(-1), torch.ones(4000, dtype=D), atol=1e-15)
    log_z = float(d.log_normalizer())
    gap = eta[1] - eta[2]

    def marginal(t):  # ∫_0^{1−t} exp(η1 t + η2 u + η3 (1 − t − u)) du / Z
        return math.exp(eta[0] * t + eta[2] * (1 - t) - log_z) * math.expm1(gap * (1 - t)) / gap

    def cdf(values):
        return numpy.array([integrate.quad(marginal, 0.0, v, epsabs=1e-13)[0] for v in values])

    assert stats.kstest(x[:, 0].numpy(), cdf).pvalue > 1e-4
    error = (x.mean(0) - d.mean).abs()
    assert (error < 5 * x.std(0) / math.sqrt(4000)).all()


@pytest.mark.parametrize("eta", [[0.0] * 4, [0.0, -0.5, -1.0, -2.0], [0.0, -3.0, -9.0, -40.0]])
def test_both_proposals_accept_at_their_computed_rates(eta):
    rates = torch.tensor([eta], dtype=D)
    top = torch.zeros(1, 1, dtype=torch.long)
    log_z = float(log_normalizer(rates))
    want = {True: math.exp(math.lgamma(4) + log_z)}  # uniform: (K − 1)! Z
    want[False] = math.exp(log_z) / math.prod(  # corner: Z / Π ∫_0^1 e^{a x} dx
        1.0 if a == 0 else math.expm1(a) / a for a in eta[1:])
    uniform, acceptance = _proposals(rates, top)
    assert bool(uniform) == (want[True] >= want[False])
    assert abs(float(acceptance) - max(want.values())) < 1e-12
    torch.manual_seed(0)
    n = 20000
    for kind, rate in want.items():
        _, accepted = _propose(rates, top, torch.tensor([kind]), n)
        assert abs(accepted.double().mean() - rate) < 5 * math.sqrt(rate * (1 - rate) / n) + 1e-12


@pytest.mark.parametrize("k", [12, 30])
def test_draws_with_many_categories_have_the_exact_mean(k):
    eta = torch.randn(3, k, generator=torch.Generator().manual_seed(k), dtype=D) * 0.5
    eta[0] = 0.0  # uniform on the simplex: the corner proposal alone would accept 1 in (K − 1)!
    d = ContinuousCategorical(eta)
    torch.manual_seed(0)
    x = d.sample((4000,))
    assert ((x.mean(0) - d.mean).abs() < 5 * x.std(0) / math.sqrt(4000)).all()


def test_draws_at_extreme_spreads_are_finite_points_of_the_simplex():
    torch.manual_seed(0)
    for eta, dtype in (([1e300, -1e300, 0.0, 3.0], D), ([3e37, -3e37, 0.0, 1.0], torch.float32),
                       ([6e3, -6e3, 0.0, 1.0], torch.float16)):
        x = ContinuousCategorical(torch.tensor(eta, dtype=dtype)).sample((50,))
        assert x.dtype == dtype and torch.isfinite(x).all() and (x >= 0).all()
        assert torch.allclose(x.sum(-1).double(), torch.ones(50, dtype=D),
                              atol=4 * torch.finfo(dtype).eps)


def test_shapes_dtypes_expand_and_empty_batches():
    eta = torch.randn(3, 1, 4)
    d = ContinuousCategorical(eta)
    assert d.batch_shape == (3, 1) and d.event_shape == (4,)
    assert d.sample((2,)).shape == (2, 3, 1, 4) and d.sample().dtype == torch.float32
    x = torch.full((5, 1, 1, 4), 0.25)
    assert d.log_prob(x).shape == (5, 3, 1) and d.log_prob(x).dtype == torch.float32
    e = d.expand((3, 2))
    assert e.batch_shape == (3, 2) and torch.equal(e.mean[:, 0], e.mean[:, 1])
    empty = ContinuousCategorical(torch.zeros(0, 4))
    assert empty.sample((2,)).shape == (2, 0, 4) and empty.entropy().shape == (0,)
    assert ContinuousCategorical(eta).mode.sum(-1).eq(1).all()


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="logits"):
        ContinuousCategorical(torch.tensor([0.0, float("nan")]), validate_args=True)
    with pytest.raises(ValueError, match="logits"):
        ContinuousCategorical(torch.zeros(2, 0))
    with pytest.raises(TypeError, match="logits"):
        ContinuousCategorical([0.0, 1.0])
    d = ContinuousCategorical(torch.zeros(3), validate_args=True)
    with pytest.raises(ValueError, match="value"):
        d.log_prob(torch.tensor([0.5, 0.6, 0.1]))
    with pytest.raises(ValueError, match="same K"):
        kl_divergence(d, ContinuousCategorical(torch.zeros(4)))
