"""Mixed variables on [0, 1]: masses + densities vs scipy quadrature, entropies, KLs, sampling."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats
from torch.distributions import kl_divergence

from latentgrad.distributions.mixed_binary import (
    BinaryGaussianSparsemax,
    HardConcrete,
    MixedUniform,
)

D = torch.float64

CASES = {
    "gauss": [
        lambda: BinaryGaussianSparsemax(torch.tensor(0.3, dtype=D), torch.tensor(0.4, dtype=D)),
        lambda: BinaryGaussianSparsemax(torch.tensor(-0.5, dtype=D), torch.tensor(1.3, dtype=D)),
        lambda: BinaryGaussianSparsemax(torch.tensor(1.4, dtype=D), torch.tensor(0.05, dtype=D)),
    ],
    "hard_concrete": [
        lambda: HardConcrete(torch.tensor(0.5, dtype=D), torch.tensor(2 / 3, dtype=D)),
        lambda: HardConcrete(torch.tensor(-2.0, dtype=D), torch.tensor(0.3, dtype=D)),
        lambda: HardConcrete(torch.tensor(1.0, dtype=D), torch.tensor(1.5, dtype=D), (-0.5, 1.2)),
        lambda: HardConcrete(torch.tensor(-0.7, dtype=D), torch.tensor(2.0, dtype=D)),
        lambda: HardConcrete(torch.tensor(4.0, dtype=D), torch.tensor(0.05, dtype=D)),
    ],
}
ALL = [(fam, i) for fam, lst in CASES.items() for i in range(len(lst))]


def make(fam, i):
    return CASES[fam][i]()


def density(dist):
    return lambda y: math.exp(dist.log_prob(torch.tensor(y, dtype=D)).item())


def quad(f):
    return integrate.quad(f, 0, 1, epsabs=1e-13, epsrel=1e-12, limit=200)[0]


@pytest.mark.parametrize(("fam", "i"), ALL)
def test_masses_plus_integrated_density_sum_to_one(fam, i):
    dist = make(fam, i)
    total = dist.prob_zero() + dist.prob_one() + quad(density(dist))
    assert abs(total.item() - 1) < 1e-9


@pytest.mark.parametrize(("fam", "i"), ALL)
def test_cdf_is_mass_at_zero_plus_integrated_density(fam, i):
    dist = make(fam, i)
    p = density(dist)
    for y in (0.0, 0.2, 0.7, 0.999):
        expected = dist.prob_zero().item() + integrate.quad(p, 0, y, epsabs=1e-13)[0]
        assert abs(dist.cdf(torch.tensor(y, dtype=D)).item() - expected) < 1e-9
    assert dist.cdf(torch.tensor(1.0, dtype=D)).item() == 1.0


@pytest.mark.parametrize(("fam", "i"), ALL)
def test_entropy_and_mean_match_quadrature(fam, i):
    dist = make(fam, i)
    p0, p1 = dist.prob_zero().item(), dist.prob_one().item()
    p = density(dist)
    h = -sum(m * math.log(m) for m in (p0, p1) if m > 0)
    h -= quad(lambda y: p(y) * math.log(p(y)) if p(y) > 0 else 0.0)
    assert abs(dist.entropy().item() - h) < 1e-8
    assert abs(dist.mean.item() - (p1 + quad(lambda y: y * p(y)))) < 1e-9


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["gauss", "hard_concrete"]), st.floats(-4, 4), st.floats(0.05, 3.0))
def test_any_member_is_normalised_and_has_entropy_at_most_log3(fam, location, spread):
    # log 3 is the largest direct-sum entropy on [0, 1]: ⅓ at 0, ⅓ at 1, ⅓ uniform inside.
    loc, other = torch.tensor(location, dtype=D), torch.tensor(spread, dtype=D)
    dist = BinaryGaussianSparsemax(loc, other) if fam == "gauss" else HardConcrete(loc, other)
    total = dist.prob_zero() + dist.prob_one() + quad(density(dist))
    assert abs(total.item() - 1) < 1e-7
    assert dist.entropy().item() <= math.log(3) + 1e-12
    assert kl_divergence(dist, MixedUniform(dtype=D)).item() >= -1e-12


def test_gaussian_entropy_is_differentiable_and_matches_finite_differences():
    def entropy(loc, scale):
        return BinaryGaussianSparsemax(loc, scale).entropy()

    args = (torch.tensor([0.2, 1.5, -0.3], dtype=D, requires_grad=True),
            torch.tensor([0.5, 0.2, 2.0], dtype=D, requires_grad=True))
    assert torch.autograd.gradcheck(entropy, args)


def test_hard_concrete_entropy_and_kl_are_differentiable():
    def f(log_alpha, beta):
        p = HardConcrete(log_alpha, beta)
        q = HardConcrete(log_alpha.flip(0), beta.flip(0))
        return p.entropy() + kl_divergence(p, q)

    args = (torch.tensor([0.2, 1.5, -0.3], dtype=D, requires_grad=True),
            torch.tensor([0.5, 0.7, 2.0], dtype=D, requires_grad=True))
    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("fam", ["gauss", "hard_concrete"])
def test_kl_same_family_matches_quadrature_and_vanishes_at_equality(fam):
    dists = [make(fam, i) for i in range(len(CASES[fam]))]
    for p in dists:
        for q in dists:
            fp, fq = density(p), density(q)
            expected = sum(
                a.item() * math.log(a.item() / b.item())
                for a, b in ((p.prob_zero(), q.prob_zero()), (p.prob_one(), q.prob_one()))
                if a.item() > 0
            )
            expected += quad(lambda y, fp=fp, fq=fq: fp(y) * math.log(fp(y) / fq(y))
                             if fp(y) > 0 else 0.0)
            kl = kl_divergence(p, q).item()
            assert kl >= -1e-12
            assert abs(kl - expected) < 1e-7 * max(1.0, abs(expected))
        assert abs(kl_divergence(p, p).item()) < 1e-12


@pytest.mark.parametrize(("fam", "i"), ALL)
def test_samples_hit_faces_with_their_probabilities_and_log_prob_averages_to_entropy(fam, i):
    torch.manual_seed(i)
    dist = make(fam, i)
    n = 40000
    y = dist.rsample((n,))
    assert y.shape == (n,) and ((y >= 0) & (y <= 1)).all()
    faces = (y == 0, y == 1, (y > 0) & (y < 1))
    counts = np.array([face.sum().item() for face in faces])
    p0, p1 = dist.prob_zero().item(), dist.prob_one().item()
    expected = np.array([p0, p1, 1 - p0 - p1]) * n
    keep = expected > 1e-9
    assert counts[~keep].sum() == 0
    if keep.sum() > 1:
        assert stats.chisquare(counts[keep], expected[keep]).pvalue > 1e-3
    neg_lp = -dist.log_prob(y)
    stderr = neg_lp.std().item() / math.sqrt(n)
    assert abs(neg_lp.mean().item() - dist.entropy().item()) < 4 * stderr + 1e-9


@pytest.mark.parametrize("fam", ["gauss", "hard_concrete"])
def test_kl_matches_its_monte_carlo_estimate(fam):
    torch.manual_seed(5)
    p, q = make(fam, 0), make(fam, 1)
    y = p.sample((40000,))
    ratio = p.log_prob(y) - q.log_prob(y)
    stderr = ratio.std().item() / math.sqrt(len(y))
    assert abs(ratio.mean().item() - kl_divergence(p, q).item()) < 4 * stderr


@pytest.mark.parametrize(("fam", "i"), ALL)
def test_kl_to_uniform_mixed_prior_is_log3_minus_entropy(fam, i):
    torch.manual_seed(2)
    p = make(fam, i)
    prior = MixedUniform(dtype=D)
    kl = kl_divergence(p, prior)
    torch.testing.assert_close(kl, math.log(3) - p.entropy())
    assert kl >= 0
    y = p.sample((20000,))
    ratio = p.log_prob(y) - prior.log_prob(y)
    assert abs(ratio.mean() - kl) <= 5 * ratio.std() / 20000**0.5 + 1e-12  # (a point mass: 0)


def test_uniform_mixed_prior_normalised_and_samples():
    torch.manual_seed(0)
    prior = MixedUniform(dtype=D).expand((2, 3))
    assert prior.batch_shape == (2, 3)
    y = prior.sample((30000,))
    assert y.shape == (30000, 2, 3)
    se = (2 / 9 / y.numel()) ** 0.5  # of a frequency of probability 1/3
    for mass in ((y == 0).double().mean(), (y == 1).double().mean()):
        assert abs(mass - 1 / 3) <= 5 * se
    torch.testing.assert_close(prior.log_prob(y[:2]), torch.full((2, 2, 3), -math.log(3),
                                                                dtype=D))
    torch.testing.assert_close(prior.entropy(), torch.full((2, 3), math.log(3), dtype=D))


def test_gaussian_sparsemax_sampler_uses_the_same_scale_as_the_density():
    # A bug of the reference code: noise std σ/√2 in the sampler. Interior samples of ours are
    # N(μ, σ²) restricted to (0, 1): compare their empirical cdf with the model cdf.
    torch.manual_seed(1)
    dist = BinaryGaussianSparsemax(torch.tensor(0.5, dtype=D), torch.tensor(0.3, dtype=D))
    y = dist.sample((20000,))
    inner = y[(y > 0) & (y < 1)].numpy()
    p0, z = dist.prob_zero().item(), 1 - dist.prob_zero().item() - dist.prob_one().item()

    def cdf(v):
        return (dist.cdf(torch.as_tensor(v, dtype=D)).numpy() - p0) / z

    assert stats.kstest(inner, cdf).pvalue > 1e-3


def test_rsample_gradients_flow_only_through_the_interior():
    loc = torch.tensor([-5.0, 0.5, 6.0], dtype=D, requires_grad=True)
    y = BinaryGaussianSparsemax(loc, torch.tensor(0.1, dtype=D)).rsample()
    y.sum().backward()
    torch.testing.assert_close(loc.grad, torch.tensor([0.0, 1.0, 0.0], dtype=D))
    assert y[0] == 0 and y[2] == 1
    log_alpha = torch.tensor([-30.0, 0.0, 30.0], dtype=D, requires_grad=True)
    y = HardConcrete(log_alpha, 0.5).rsample()
    assert y[0] == 0 and y[2] == 1 and 0 <= y[1] <= 1
    y.sum().backward()
    assert log_alpha.grad[0] == 0 and log_alpha.grad[2] == 0


def test_hard_concrete_gate_probability_is_the_l0_closed_form():
    log_alpha, beta = torch.tensor([-1.0, 0.0, 2.0], dtype=D), 2 / 3
    dist = HardConcrete(log_alpha, beta)
    expected = torch.sigmoid(log_alpha - beta * math.log(0.1 / 1.1))
    torch.testing.assert_close(1 - dist.prob_zero(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtypes_and_expand(dtype):
    for dist in (BinaryGaussianSparsemax(torch.zeros(4, dtype=dtype), 1.0),
                 HardConcrete(torch.zeros(4, dtype=dtype), 0.5)):
        assert dist.batch_shape == (4,) and dist.event_shape == ()
        y = dist.rsample((3,))
        assert y.shape == (3, 4) and y.dtype == dtype
        assert dist.log_prob(y).shape == (3, 4) and dist.log_prob(y).dtype == dtype
        assert dist.entropy().dtype == dtype and torch.isfinite(dist.entropy()).all()
        big = dist.expand((2, 4))
        assert big.batch_shape == (2, 4) and big.entropy().shape == (2, 4)
        assert kl_divergence(big, dist).shape == (2, 4)
        assert kl_divergence(big, MixedUniform(dtype=dtype)).shape == (2, 4)


def test_bad_parameters_and_values_raise():
    with pytest.raises(ValueError, match="scale"):
        BinaryGaussianSparsemax(torch.zeros(2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="loc"):
        BinaryGaussianSparsemax(torch.tensor([float("nan")]), 1.0)
    with pytest.raises(TypeError, match="loc"):
        BinaryGaussianSparsemax("a", 1.0)
    with pytest.raises(ValueError, match="temperature"):
        HardConcrete(torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="stretch"):
        HardConcrete(torch.zeros(2), 0.5, stretch=(0.1, 1.1))
    for stretch in [(-math.inf, 1.1), (-0.1, math.inf), (-1e300, 1e300), (float("nan"), 1.1)]:
        with pytest.raises(ValueError, match=r"stretch must be \(l, r\) with -1000 <= l < 0"):
            HardConcrete(torch.zeros(2), 0.5, stretch=stretch)
    with pytest.raises(TypeError, match=r"stretch must be a pair of numbers"):
        HardConcrete(torch.zeros(2), 0.5, stretch=(-0.1, 1.1, 2.0))
    with pytest.raises(ValueError, match="quadrature_nodes"):
        HardConcrete(torch.zeros(2), 0.5, quadrature_nodes=1)
    dist = HardConcrete(torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="support"):
        dist.log_prob(torch.tensor([0.5, 1.2]))
    with pytest.raises(ValueError, match="support"):
        BinaryGaussianSparsemax(torch.zeros(2), 1.0).log_prob(torch.tensor([float("nan"), 0.0]))
    with pytest.raises(ValueError, match="support"):
        MixedUniform().log_prob(torch.tensor(-0.1))


@pytest.mark.parametrize(("log_alpha", "beta"), [(0.0, 10.0), (1.0, 30.0), (-3.0, 100.0),
                                                 (0.0, 1e3), (-1e3, 700.0), (800.0, 2e3)])
def test_hard_concrete_entropy_and_kl_at_high_temperature_match_quadrature(log_alpha, beta):
    """At large β the interval of the logistic variable is 4.8β long and its density a narrow
    peak: the rule places its nodes in σ(L), so the entropy and the KL match adaptive quadrature
    in y (the rule in L once put 30 units of logistic mass there and was off by ~1.4 nats); the
    32-point rule's error is ~5e-5 at β = 10 and falls like 1/β². float32 agrees with float64
    within its rounding of the terms (|log α|, the result)."""
    p = HardConcrete(torch.tensor(log_alpha, dtype=D), torch.tensor(beta, dtype=D))
    q = HardConcrete(torch.tensor(0.3, dtype=D), torch.tensor(2 / 3, dtype=D))
    fp, fq = density(p), density(q)
    peak = float(p._y_of_noise(torch.tensor(0.0, dtype=D)))  # y at the logistic median

    def integral(f):
        return integrate.quad(f, 0, 1, points=[peak], epsabs=1e-14, epsrel=1e-12, limit=500)[0]

    masses = [(p.prob_zero().item(), q.prob_zero().item()), (p.prob_one().item(),
                                                             q.prob_one().item())]
    h = -sum(m * math.log(m) for m, _ in masses if m > 0)
    h -= integral(lambda y: fp(y) * math.log(fp(y)) if fp(y) > 0 else 0.0)
    kl = sum(m * math.log(m / n) for m, n in masses if m > 0)
    kl += integral(lambda y: fp(y) * math.log(fp(y) / fq(y)) if fp(y) > 0 else 0.0)
    tol = 1e-4 * (10 / beta) ** 2 + 1e-8
    assert abs(p.entropy().item() - h) <= tol * (1 + abs(h))
    assert abs(kl_divergence(p, q).item() - kl) <= tol * (1 + abs(kl))
    p32 = HardConcrete(torch.tensor(log_alpha), torch.tensor(beta))
    q32 = HardConcrete(torch.tensor(0.3), torch.tensor(2 / 3))
    eps = torch.finfo(torch.float32).eps
    for got, want in ((p32.entropy(), p.entropy()), (kl_divergence(p32, q32), kl_divergence(p, q))):
        assert abs(got.item() - want.item()) <= 64 * eps * (1 + abs(want.item()) + abs(log_alpha))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e3, 1e10])
def test_gaussian_sparsemax_kl_of_a_wide_p_matches_quadrature(dtype, scale):
    """A wide p puts a sliver 1/σ of standard-normal mass on (0, 1): the closed-form second
    truncated moment cancelled to −4e-11 at σ = 1e10 (true 1.3e-31) and the KL, which multiplies
    it by (σ_p/σ_q)², came out 0 (true 1.545); 1% low at σ = 1e3 in float32."""
    p = BinaryGaussianSparsemax(torch.tensor(0.0, dtype=dtype), torch.tensor(scale, dtype=dtype))
    q = BinaryGaussianSparsemax(torch.tensor(0.0, dtype=dtype), torch.tensor(0.5, dtype=dtype))
    p_masses = stats.norm.cdf(0), stats.norm.sf(1 / scale)
    q_masses = stats.norm.cdf(0), stats.norm.sf(2)
    masses = sum(m * math.log(m / n) for m, n in zip(p_masses, q_masses, strict=True))
    interior = integrate.quad(lambda y: stats.norm.pdf(y, 0, scale) * (
        stats.norm.logpdf(y, 0, scale) - stats.norm.logpdf(y, 0, 0.5)), 0, 1, epsabs=1e-300,
        epsrel=1e-12)[0]
    want = masses + interior
    rounding = 64 * torch.finfo(dtype).eps + 1e-9  # the reference's quadrature: 1e-9
    assert abs(kl_divergence(p, q).item() - want) <= rounding * want
    assert p._truncated_moments()[2].item() >= 0


def test_gaussian_sparsemax_at_tiny_scales_has_finite_gradients_and_an_infinite_kl():
    """σ = 1e-30 in float32: (value − μ)/σ² overflowed in the backward, so a zero upstream
    gradient became NaN; a KL that is merely beyond float32 came out inf − inf = NaN."""
    scale = torch.tensor([1e-30], requires_grad=True)
    loc = torch.tensor([1e4], requires_grad=True)
    dist = BinaryGaussianSparsemax(loc, scale)
    value = dist.entropy() + dist.log_prob(torch.tensor([1.0])) + dist.mean
    grads = torch.autograd.grad(value.sum(), (loc, scale))
    assert all(torch.isfinite(g).all() for g in grads)
    wide = BinaryGaussianSparsemax(torch.tensor([0.0]), torch.tensor([0.5]))
    assert kl_divergence(wide, dist).item() == math.inf


def test_hard_concrete_at_the_largest_finite_log_alpha_is_a_point_mass_without_nan():
    """log α = ±finfo.max puts all mass on 1 / 0: entropy 0 and finite gradients (the interior
    quadrature's 0 weight times log sech(∞) = -∞ used to give NaN)."""
    big = torch.finfo(torch.float32).max
    log_alpha = torch.tensor([big, -big], requires_grad=True)
    dist = HardConcrete(log_alpha, 0.5)
    entropy = dist.entropy()
    torch.testing.assert_close(entropy, torch.zeros(2))
    entropy.sum().backward()
    assert torch.isfinite(log_alpha.grad).all()
    # the quadrature's midpoint (L0 + L1)/2 overflowed there: NaN KLs and temperature gradients
    temperature = torch.tensor([0.5, 0.5], requires_grad=True)
    dist = HardConcrete(torch.tensor([big, -big]), temperature)
    q = HardConcrete(torch.zeros(2), 0.5)
    kl = kl_divergence(dist, q)
    torch.testing.assert_close(kl, -torch.stack([q.log_prob_one()[0], q.log_prob_zero()[1]]))
    (kl + dist.entropy() + dist.mean + kl_divergence(dist, MixedUniform())).sum().backward()
    assert torch.isfinite(temperature.grad).all()


@pytest.mark.parametrize("scale", [1e-20, 1e-30, 1e-38])
def test_gaussian_sparsemax_kl_at_scales_whose_square_underflows_float32(scale):
    """σ² underflows float32 below ~1e-19: the KL must not divide by it (0/0 was NaN). It is 0
    at equality and, where float32 can hold it, the float64 value; beyond, +inf, not NaN."""
    loc_p = torch.tensor([0.3, -0.2, 1.5, 0.5])
    loc_q = torch.tensor([0.3, -0.1, 1.5, 0.5 + 1e-3])
    sigma = torch.full((4,), scale)

    def kl(dtype, a, b):
        p = BinaryGaussianSparsemax(a.to(dtype), sigma.to(dtype))
        return kl_divergence(p, BinaryGaussianSparsemax(b.to(dtype), sigma.to(dtype)))

    assert torch.equal(kl(torch.float32, loc_p, loc_p), torch.zeros(4))
    got, want = kl(torch.float32, loc_p, loc_q), kl(torch.float64, loc_p, loc_q)
    assert not got.isnan().any()
    fits = want < torch.finfo(torch.float32).max
    torch.testing.assert_close(got[fits].double(), want[fits], rtol=1e-5, atol=1e-6)
    assert (got[~fits] == math.inf).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_narrow_gaussian_sparsemax_point_masses_have_exact_gradients(dtype):
    # log P(0) = log Φ(−μ/σ) at μ = 3, σ = 1e-3 (u = −3000): torch's log_ndtr gradient is about
    # 5% off there in float32; d/dμ log Φ(−μ/σ) = −λ(u)/σ with λ = φ/Φ in 50-digit arithmetic
    loc = torch.tensor(3.0, dtype=dtype, requires_grad=True)
    scale = torch.tensor(1e-3, dtype=dtype)
    (got,) = torch.autograd.grad(BinaryGaussianSparsemax(loc, scale).log_prob_zero(), loc)
    with mpmath.workdps(50):
        want = float(-mpmath.npdf(-3000) / mpmath.ncdf(-3000) / mpmath.mpf("1e-3"))
    assert got.item() == pytest.approx(want, rel=32 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_gaussian_sparsemax_entropy_and_prior_kl_have_finite_gradients_at_huge_locations(
    dtype, scale
):
    """|μ| up to finfo.max / 8: the masses are 0 or 1 (log P = −inf for one of them) and μ/σ may
    overflow; entropy and KL to the uniform mixed prior are 0 and log 3 with zero gradient
    (P log P at P = 0 and the truncated moments at infinite bounds used to give 0 · inf = NaN)."""
    top = torch.finfo(dtype).max / 8
    loc = torch.tensor([top, -top, 1e20, -1e20, 3.0], dtype=dtype, requires_grad=True)
    dist = BinaryGaussianSparsemax(loc, torch.tensor(scale, dtype=dtype))
    prior = MixedUniform(dtype=dtype).expand(loc.shape)
    entropy, kl = dist.entropy(), kl_divergence(dist, prior)
    huge = slice(0, 4)
    assert torch.equal(entropy[huge], torch.zeros(4, dtype=dtype))
    torch.testing.assert_close(kl[huge], torch.full((4,), math.log(3), dtype=dtype))
    for value in (entropy, kl):
        (grad,) = torch.autograd.grad(value.sum(), loc)
        assert torch.isfinite(grad).all() and torch.equal(grad[huge], torch.zeros(4, dtype=dtype))


@pytest.mark.parametrize(("dtype", "size"), [(torch.float32, 1e20), (torch.float32, 1e30),
                                           (torch.float64, 1e160)])
def test_gaussian_sparsemax_kl_has_zero_gradient_where_a_point_mass_rounds_to_zero(dtype, size):
    """At μ = ±size one of p's point masses rounds to 0 (log P = -inf) and the other to 1: the
    KL to q = (μ 0, σ 1) is -log Q1 = -log Φ(-1) (all mass at 1) or -log Q0 = log 2 (at 0),
    with zero gradient in μ and σ. The mass term's branch not taken, P (log P - log Q) at
    log P = -inf, used to give a NaN gradient under a finite value."""
    loc = torch.tensor([size, -size], dtype=dtype, requires_grad=True)
    scale = torch.ones(2, dtype=dtype, requires_grad=True)
    q = BinaryGaussianSparsemax(torch.zeros(2, dtype=dtype), torch.ones(2, dtype=dtype))
    kl = kl_divergence(BinaryGaussianSparsemax(loc, scale), q)
    want = torch.tensor([-stats.norm.logcdf(-1.0), math.log(2)], dtype=D)
    eps = torch.finfo(dtype).eps  # -log Q from log Φ, a few roundings
    torch.testing.assert_close(kl.double(), want, rtol=8 * eps, atol=0)
    kl.sum().backward()
    assert torch.equal(loc.grad, torch.zeros(2, dtype=dtype))
    assert torch.equal(scale.grad, torch.zeros(2, dtype=dtype))


@pytest.mark.parametrize("temperature", [1e-20, 1e-30])
def test_hard_concrete_rsample_at_tiny_temperatures_has_zero_gradient(temperature):
    """At β <= 1e-20 every float32 sample is clipped to 0 or 1 (unless |log α + L| < 2.4 β),
    where y does not depend on β or log α: both gradients are 0, as in the float64 computation
    of clip(l + (r − l)σ((log α + L)/β), 0, 1) from the same noise L. The backward computed
    (log α + L)/β², which overflows float32 (from β ≈ 1e-19), times 0: NaN."""
    from latentgrad._noise import logistic

    beta = torch.tensor([temperature], requires_grad=True)
    log_alpha = torch.tensor([0.5], requires_grad=True)
    torch.manual_seed(0)
    y = HardConcrete(log_alpha, beta).rsample((1000,))
    torch.manual_seed(0)
    noise = logistic(torch.Size([1000, 1]), log_alpha).double()
    beta64, log_alpha64 = (t.detach().double().requires_grad_() for t in (beta, log_alpha))
    y64 = (-0.1 + 1.2 * torch.sigmoid((log_alpha64 + noise) / beta64)).clamp(0, 1)
    assert torch.equal(y.double(), y64) and ((y == 0) | (y == 1)).all()
    y.sum().backward()
    y64.sum().backward()
    assert torch.equal(beta.grad.double(), beta64.grad)
    assert torch.equal(log_alpha.grad.double(), log_alpha64.grad)


@pytest.mark.parametrize(("fam", "i"), ALL)
def test_samples_follow_the_point_masses_and_the_interior_cdf(fam, i):
    """20,000 draws: the frequencies of 0 and 1 within 5 standard errors of the point masses,
    and the interior draws distributed as the normalised interior cdf (Kolmogorov-Smirnov)."""
    torch.manual_seed(10 + i)
    dist = make(fam, i)
    n = 20000
    y = dist.sample((n,))
    p0, p1 = dist.prob_zero().item(), dist.prob_one().item()
    for freq, p in (((y == 0).double().mean().item(), p0), ((y == 1).double().mean().item(), p1)):
        assert abs(freq - p) <= 5 * (p * (1 - p) / n) ** 0.5 + 1e-12, (freq, p)
    inner = y[(y > 0) & (y < 1)].numpy()
    if inner.size < 100:  # (almost) all mass on the endpoints
        return

    def cdf(v):
        return (dist.cdf(torch.as_tensor(v, dtype=D)).numpy() - p0) / (1 - p0 - p1)

    assert stats.kstest(inner, cdf).pvalue > 1e-3


def test_mixed_uniform_samples_and_mean_match_its_definition():
    """A third of the draws at 0, a third at 1 (binomial, 5 s.e.), the rest uniform on (0, 1)
    (Kolmogorov-Smirnov); the mean 1/2."""
    torch.manual_seed(11)
    n = 30000
    y = MixedUniform(dtype=D).expand((3,)).sample((n // 3,)).flatten()
    se = math.sqrt(n * (1 / 3) * (2 / 3))
    for mass in ((y == 0).sum().item(), (y == 1).sum().item()):
        assert abs(mass - n / 3) <= 5 * se
    interior = y[(y > 0) & (y < 1)].numpy()
    assert stats.kstest(interior, "uniform").pvalue > 1e-4
    torch.testing.assert_close(MixedUniform(dtype=D).mean, torch.tensor(0.5, dtype=D))
    assert abs(y.mean().item() - 0.5) <= 5 * y.std().item() / math.sqrt(n)
