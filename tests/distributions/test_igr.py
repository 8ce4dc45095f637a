"""IGR-I, IGR-SB and IGR-Planar against brute force: autograd Jacobians, quadrature, Monte Carlo."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats
from torch.autograd.functional import jacobian
from torch.distributions import kl_divergence

from _references import planar_ref, softmax_pp_ref, sticks_ref
from latentgrad.distributions.igr import (
    IGR,
    IGRPlanar,
    IGRStickBreaking,
    PlanarFlow,
    one_hot_argmax,
    uniform_prior_loc,
)

D = torch.float64


def brute_log_density(kappa: torch.Tensor, loc, scale, map_fn) -> torch.Tensor:
    """log N(κ) − log|det ∂ψ_{1:K−1}/∂κ| with the Jacobian from autograd (one unbatched point)."""
    jac = jacobian(lambda x: map_fn(x)[:-1], kappa)
    gauss = torch.distributions.Normal(loc, scale).log_prob(kappa).sum()
    return gauss - torch.linalg.slogdet(jac)[1]


def params(k1: int, seed: int, batch=()):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(*batch, k1, generator=g, dtype=D)
    scale = 0.5 + torch.rand(*batch, k1, generator=g, dtype=D)
    return loc, scale


# --------------------------------------------------------------------------------------- IGR-I


@settings(max_examples=10, deadline=None)
@given(
    k1=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    tau=st.floats(0.2, 2.0),
    delta=st.floats(0.3, 3.0),
)
def test_igr_log_prob_matches_autograd_change_of_variables(k1, seed, tau, delta):
    loc, scale = params(k1, seed)
    noise = torch.randn(k1, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    kappa = loc + scale * noise
    psi = softmax_pp_ref(kappa, tau, delta)
    expected = brute_log_density(kappa, loc, scale, lambda x: softmax_pp_ref(x, tau, delta))
    d = IGR(loc, scale, tau, delta)
    torch.testing.assert_close(d.log_prob(psi), expected, rtol=1e-9, atol=1e-9)


def test_igr_rsample_log_prob_agrees_with_log_prob_of_the_sample():
    loc, scale = params(4, 0, batch=(3,))
    d = IGR(loc, scale, torch.tensor([0.3, 0.7, 1.5], dtype=D), delta=0.5)
    psi, log_q = d.rsample_with_log_prob((7,))
    assert psi.shape == (7, 3, 5) and log_q.shape == (7, 3)
    torch.testing.assert_close(d.log_prob(psi), log_q, rtol=1e-8, atol=1e-8)


def _variant(name: str):
    loc, scale = params(4, 3, batch=(2,))
    loc.requires_grad_(True)
    if name == "IGR-I":
        return IGR(loc, scale, 0.5)
    if name == "IGR-SB":  # a truncation that drops sticks in some draws
        return IGRStickBreaking(loc, scale, 0.5, eps=0.05)
    flows = [PlanarFlow(4, (2,)).double(), PlanarFlow(4, (2,)).double()]
    return IGRPlanar(loc, scale, 0.5, flows=flows)


@pytest.mark.parametrize("variant", ["IGR-I", "IGR-SB", "IGR-Planar"])
def test_rsample_is_the_draw_of_rsample_with_log_prob_and_differentiable(variant):
    """rsample skips the density but draws the same point from the same noise."""
    d = _variant(variant)
    torch.manual_seed(5)
    alone = d.rsample((6,))
    torch.manual_seed(5)
    with_density, _ = d.rsample_with_log_prob((6,))
    torch.testing.assert_close(alone, with_density, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(alone.pow(2).sum(), d.loc)
    torch.manual_seed(5)
    (expected,) = torch.autograd.grad(d.rsample_with_log_prob((6,))[0].pow(2).sum(), d.loc)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_igr_kl_closed_form_matches_monte_carlo():
    torch.manual_seed(0)
    loc_p, scale_p = params(3, 1, batch=(2,))
    loc_q, scale_q = params(3, 2, batch=(2,))
    p, q = IGR(loc_p, scale_p, 0.5), IGR(loc_q, scale_q, 0.5)
    psi, log_p = p.rsample_with_log_prob((20_000,))
    terms = log_p - q.log_prob(psi)
    se = terms.std(0) / math.sqrt(terms.shape[0])
    exact = kl_divergence(p, q)
    assert exact.shape == (2,)
    assert ((terms.mean(0) - exact).abs() < 4 * se).all()
    # the closed form is the Gaussian KL of the noise
    gauss = torch.distributions.kl_divergence(
        torch.distributions.Normal(loc_p, scale_p), torch.distributions.Normal(loc_q, scale_q)
    ).sum(-1)
    torch.testing.assert_close(exact, gauss)


def test_igr_kl_requires_same_temperature_and_delta():
    loc, scale = params(3, 0)
    with pytest.raises(ValueError, match="same temperature and delta"):
        kl_divergence(IGR(loc, scale, 0.5), IGR(loc, scale, 0.6))
    with pytest.raises(ValueError, match="same temperature and delta"):
        kl_divergence(IGR(loc, scale, 0.5), IGR(loc, scale, 0.5, delta=2.0))


def _zero_temperature_pmf_quad(mu: np.ndarray, sig: np.ndarray) -> np.ndarray:
    """Adaptive quadrature of P(k) = ∫_0^∞ N(t; μ_k, σ_k²) Π_{j≠k} Φ((t − μ_j)/σ_j) dt."""
    k1, out = len(mu), []
    for k in range(k1):

        def integrand(t, k=k):
            others = [stats.norm.cdf((t - mu[j]) / sig[j]) for j in range(k1) if j != k]
            return stats.norm.pdf(t, mu[k], sig[k]) * np.prod(others)

        lo, hi = max(0.0, mu[k] - 12 * sig[k]), max(0.0, mu[k] + 12 * sig[k])
        points = [m for m in mu if lo < m < hi] or None
        value = integrate.quad(integrand, lo, hi, epsabs=1e-14, epsrel=1e-12, limit=500,
                               points=points)[0]
        out.append(value if hi > lo else 0.0)
    out.append(np.prod(stats.norm.cdf(-mu / sig)))
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zero_temperature_pmf_matches_scipy_quad(seed):
    rng = np.random.default_rng(seed)
    mu, sig = rng.normal(size=3), rng.uniform(0.4, 2.0, size=3)
    pmf = IGR(torch.tensor(mu), torch.tensor(sig), 0.5).zero_temperature_pmf()
    np.testing.assert_allclose(pmf.numpy(), _zero_temperature_pmf_quad(mu, sig), atol=1e-10)
    assert abs(pmf.sum().item() - 1) < 1e-10


@pytest.mark.parametrize(
    ("mu", "sig"),
    [([1.0, 1.5, 0.2], [3.0, 0.02, 0.05]), ([3.0, 3.1, 2.9], [0.1, 2.0, 0.01])],
)
def test_zero_temperature_pmf_resolves_very_different_scales(mu, sig):
    mu, sig = np.array(mu), np.array(sig)
    pmf = IGR(torch.tensor(mu), torch.tensor(sig), 0.5).zero_temperature_pmf()
    np.testing.assert_allclose(pmf.numpy(), _zero_temperature_pmf_quad(mu, sig), atol=1e-10)


def test_zero_temperature_pmf_matches_mean_of_samples_at_small_temperature():
    torch.manual_seed(0)
    loc, scale = params(4, 3, batch=(2,))
    loc.requires_grad_(True)
    d = IGR(loc, scale, 0.01)
    pmf = d.zero_temperature_pmf()
    samples = d.sample((20_000,))
    se = samples.std(0) / math.sqrt(samples.shape[0])
    assert ((samples.mean(0) - pmf).abs() < 4 * se + 2e-3).all()


@pytest.mark.parametrize("k", [2, 3, 5, 10])
@pytest.mark.parametrize("scale", [0.3, 1.0, 2.5])
def test_uniform_prior_has_uniform_zero_temperature_pmf(k, scale):
    prior = IGR.uniform_prior(k, temperature=0.5, scale=scale, dtype=D)
    assert prior.event_shape == (k,)
    torch.testing.assert_close(prior.zero_temperature_pmf(), torch.full((k,), 1 / k, dtype=D))
    torch.testing.assert_close(prior.loc, uniform_prior_loc(k, scale).expand(k - 1))


def test_zero_temperature_pmf_is_differentiable():
    loc, scale = params(2, 0)
    loc.requires_grad_(True)
    scale.requires_grad_(True)
    torch.autograd.gradcheck(
        lambda m, s: IGR(m, s, 0.5).zero_temperature_pmf(n_nodes=16), (loc, scale)
    )


def test_binary_igr_is_igr_with_two_categories():
    # ψ_1 = σ((κ − τ log δ)/τ): density of ψ_1 = N(κ) · dκ/dψ_1 with κ = τ logit(ψ_1) + τ log δ
    tau, delta = 0.4, 2.0
    d = IGR(torch.tensor([0.3], dtype=D), torch.tensor([0.8], dtype=D), tau, delta)
    psi1 = torch.linspace(0.01, 0.99, 9, dtype=D)
    kappa = tau * torch.logit(psi1) + tau * math.log(delta)
    normal = torch.distributions.Normal(torch.tensor(0.3, dtype=D), torch.tensor(0.8, dtype=D))
    expected = normal.log_prob(kappa) + torch.log(
        tau / (psi1 * (1 - psi1))
    )
    value = torch.stack([psi1, 1 - psi1], dim=-1)
    torch.testing.assert_close(d.log_prob(value), expected)


def test_igr_sample_hard_is_one_hot_argmax():
    d = IGR(*params(4, 0, batch=(3,)), 0.5)
    torch.manual_seed(0)
    psi = d.sample((6,))
    torch.manual_seed(0)
    hard = d.sample_hard((6,))
    assert hard.shape == (6, 3, 5)
    torch.testing.assert_close(hard, one_hot_argmax(psi))
    assert ((hard == 0) | (hard == 1)).all() and (hard.sum(-1) == 1).all()


def test_entropy_mc_matches_gaussian_entropy_plus_expected_log_jacobian():
    torch.manual_seed(0)
    d = IGR(*params(3, 5), 0.7)
    psi = d.sample((20_000,))
    # H(ψ) = H(κ) + E[log|det ∂ψ/∂κ|], the latter = E[Σ log ψ] − (K−1) log τ
    h_kappa = torch.distributions.Normal(d.loc, d.scale).entropy().sum()
    log_jacobian = psi.log().sum(-1)
    expected = h_kappa + log_jacobian.mean() - 3 * math.log(0.7)
    _, log_q = d.rsample_with_log_prob((20_000,))
    se = math.hypot(log_q.std().item(), log_jacobian.std().item()) / math.sqrt(20_000)
    assert abs(d.entropy_mc(20_000).item() - expected.item()) <= 5 * se


# ------------------------------------------------------------------------------------- IGR-SB


@settings(max_examples=8, deadline=None)
@given(k1=st.integers(1, 5), seed=st.integers(0, 10_000), tau=st.floats(0.2, 2.0))
def test_igr_sb_log_prob_matches_autograd_change_of_variables(k1, seed, tau):
    loc, scale = params(k1, seed)
    noise = torch.randn(k1, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    kappa = loc + scale * noise

    def map_fn(x):
        return softmax_pp_ref(sticks_ref(x), tau, 1.0)

    expected = brute_log_density(kappa, loc, scale, map_fn)
    d = IGRStickBreaking(loc, scale, tau, eps=0.0)
    torch.testing.assert_close(d.log_prob(map_fn(kappa)), expected, rtol=1e-8, atol=1e-8)


def test_igr_sb_truncated_sample_density_is_that_of_the_kept_sticks():
    torch.manual_seed(0)
    loc, scale = params(12, 4, batch=(3,))
    d = IGRStickBreaking(loc - 1.0, scale, 0.5, eps=0.1)
    psi, log_q = d.rsample_with_log_prob((4,))
    n = int((psi[0, 0] > 0).sum()) - 1  # kept sticks
    assert 1 <= n < 12 and ((psi > 0).sum(-1) == n + 1).all()
    torch.testing.assert_close(d.log_prob(psi), log_q, rtol=1e-8, atol=1e-8)
    # a truncated draw is a draw of the (n + 1)-category IGR-SB built on the first n sticks
    short = IGRStickBreaking(loc[..., :n] - 1.0, scale[..., :n], 0.5, eps=0.0)
    torch.testing.assert_close(short.log_prob(psi[..., : n + 1]), log_q, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("quantile", [1.0, 0.5])
def test_truncation_rule_keeps_one_minus_eps_mass(quantile):
    torch.manual_seed(0)
    loc, scale = params(30, 6, batch=(8, 3))
    d = IGRStickBreaking(loc - 1.0, scale, 0.5, eps=0.05, quantile=quantile)
    sticks = sticks_ref(loc - 1.0 + scale * torch.randn(50, 8, 3, 30, dtype=D))
    n = d.truncation_level(sticks)
    assert n < 30  # not clipped at K_max − 1
    kept = sticks[..., :n].sum(-1)
    frac = (kept > 1 - 0.05).double().mean().item()
    assert frac >= quantile
    # the level is minimal: one stick fewer loses the guarantee for some draw (quantile 1)
    if quantile == 1.0:
        assert (sticks[..., : n - 1].sum(-1) <= 1 - 0.05).any()


def test_truncation_inspects_every_latent_variable():
    # variable 0 needs one stick; variable 2 needs many (the reference only looked at variable 0)
    loc = torch.full((3, 15), -2.0, dtype=D)
    loc[0] = 6.0
    d = IGRStickBreaking(loc, 0.01, 0.5, eps=0.01)
    psi = d.sample((4,))
    assert ((psi > 0).sum(-1) > 10).all()


def test_igr_sb_approximates_a_poisson_and_keeps_one_minus_eps_mass():
    torch.manual_seed(0)
    lam, k_max, eps = 3.0, 40, 1e-3
    k = np.arange(k_max - 1)
    pmf = stats.poisson.pmf(k, lam)
    # stick fraction η_k = P(X = k) / P(X >= k), so logit η_k = log P(X = k) − log P(X > k)
    loc = torch.tensor(stats.poisson.logpmf(k, lam) - stats.poisson.logsf(k, lam), dtype=D)
    d = IGRStickBreaking(loc, 1e-3, 0.05, eps=eps)
    psi = d.sample((500,))
    n = int((psi[0] > 0).sum()) - 1
    assert n < k_max - 1  # truncated well before K_max
    assert n >= stats.poisson.ppf(1 - eps, lam)  # enough sticks for the Poisson's 1 − eps mass
    sticks = 0.05 * (torch.log(psi[..., :n]) - torch.log(psi[..., n : n + 1]))  # softmax++ inverse
    assert (sticks.sum(-1) >= 1 - eps).all()
    np.testing.assert_allclose(sticks.mean(0).numpy(), pmf[:n], atol=2e-3)


def test_igr_sb_kl_is_gaussian_kl_and_matches_monte_carlo_without_truncation():
    torch.manual_seed(0)
    p = IGRStickBreaking(*params(3, 1), 0.5, eps=0.0)
    q = IGRStickBreaking(*params(3, 2), 0.5, eps=0.0)
    psi, log_p = p.rsample_with_log_prob((20_000,))
    terms = log_p - q.log_prob(psi)
    se = terms.std() / math.sqrt(terms.numel())
    assert abs(terms.mean() - kl_divergence(p, q)) < 4 * se


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_igr_sb_kl_bounds_the_kl_of_the_truncated_variables(eps):
    """Truncated at one level (one draw call), both variables are the same map of their
    Gaussians: their KL (Monte Carlo of the truncated log-densities) is at most the Gaussian KL
    that ``kl_divergence`` returns (data processing), below it when sticks are dropped."""
    torch.manual_seed(1)
    p = IGRStickBreaking(*params(6, 1), 0.5, eps=eps, quantile=0.5)
    q = IGRStickBreaking(*params(6, 2), 0.5, eps=eps, quantile=0.5)
    psi, log_p = p.rsample_with_log_prob((20_000,))
    assert int((psi[0] > 0).sum()) < psi.shape[-1], "the toy must drop sticks"
    terms = log_p - q.log_prob(psi)
    se = terms.std() / math.sqrt(terms.numel())
    assert terms.mean() + 5 * se < kl_divergence(p, q)  # strictly: dropped sticks lose information


def test_igr_sb_log_prob_rejects_mixed_truncation_levels_and_points_outside_the_image():
    d = IGRStickBreaking(*params(4, 0), 0.5, eps=0.0, validate_args=False)
    mixed = torch.tensor([[0.5, 0.3, 0.2, 0.0, 0.0], [0.4, 0.3, 0.2, 0.1, 0.0]], dtype=D)
    with pytest.raises(ValueError, match="truncation levels"):
        d.log_prob(mixed)
    # sticks τ(log ψ_k − log ψ_last) = 0.5·log(0.1/0.8) < 0: not an image point
    with pytest.raises(ValueError, match="outside the image"):
        d.log_prob(torch.tensor([0.1, 0.1, 0.8, 0.0, 0.0], dtype=D))


# --------------------------------------------------------------------------------- IGR-Planar


def flows_for(k1: int, n: int, seed: int, batch=()):
    torch.manual_seed(seed)
    return [PlanarFlow(k1, batch).double() for _ in range(n)]


def test_planar_flow_log_det_matches_autograd():
    flow = flows_for(4, 1, 0)[0]
    z = torch.randn(4, dtype=D)
    _, log_det = flow(z)
    jac = jacobian(lambda x: flow(x)[0], z)
    torch.testing.assert_close(log_det, torch.linalg.slogdet(jac)[1])
    torch.testing.assert_close(flow(z)[0], planar_ref(z, flow))


def test_planar_flow_near_the_dtypes_max_keeps_the_sign_of_an_overflowing_projection():
    """z near float32's max with w of both signs beyond 1: w_k z_k overflow to +inf and -inf and
    wᵀz was inf - inf = NaN (an IGR-Planar draw then raised "x contains NaN"); wᵀz = 2e38 is
    now summed from z scaled by its largest entry (tanh saturates: h = 1, log|det| = 0); f(z) is
    float64's within a few float32 roundings of û (16 eps: softplus, a norm, a 2x cancellation)."""
    flow = PlanarFlow(3)
    with torch.no_grad():
        flow.w.copy_(torch.tensor([2.0, -2.0, 0.5]))
        flow.u.copy_(torch.tensor([0.3, -0.2, 0.1]))
    z = torch.tensor([3e38, 2e38, 0.0])
    out, log_det = flow(z)
    want, want_log_det = flow.double()(z.double())
    rtol = 16 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(out.double(), want, rtol=rtol, atol=0)
    torch.testing.assert_close(log_det.double(), want_log_det, rtol=rtol, atol=0)


def test_igr_planar_draw_whose_gaussian_overflows_has_no_nan():
    """loc + scale·ε beyond float32 entered the flows as ±inf (NaN inside, then "x contains
    NaN" from softmax++); it is clamped to the vertex it points at before the flows, as IGR-I's
    draw is (its density there lies beyond float32: +inf, not NaN)."""
    torch.manual_seed(0)
    flows = [PlanarFlow(3) for _ in range(2)]
    loc = torch.full((64, 3), 3e38)
    psi, log_q = IGRPlanar(loc, torch.full((64, 3), 1e38), 0.5, flows).rsample_with_log_prob()
    assert torch.isfinite(psi).all() and not log_q.isnan().any()
    torch.testing.assert_close(psi.sum(-1), torch.ones(64))


def test_planar_invertibility_constraint_holds_for_adversarial_u():
    flow = flows_for(3, 1, 0)[0]
    with torch.no_grad():
        flow.u.copy_(-10 * flow.w)  # w^T u << -1: the raw flow would fold space
    wu_hat = (flow.w * flow.u_hat()).sum()
    assert wu_hat > -1
    torch.testing.assert_close(wu_hat, torch.nn.functional.softplus((flow.w * flow.u).sum()) - 1)
    z = torch.randn(100, 3, dtype=D) * 3
    torch.testing.assert_close(flow.inverse(flow(z)[0]), z)


def test_planar_reference_form_normalises_by_norm_not_squared_norm():
    flow = flows_for(3, 1, 1)[0]
    ref = PlanarFlow(3, reference_form=True).double()
    ref.load_state_dict(flow.state_dict())
    with torch.no_grad():
        flow.w.mul_(3.0)
        ref.w.mul_(3.0)
    assert (flow.w * flow.u_hat()).sum() > -1
    # the reference code's û = u + (softplus(wᵀu) - 1 - wᵀu) w / ‖w‖, so
    # wᵀû = wᵀu + (softplus(wᵀu) - 1 - wᵀu) ‖w‖ (not softplus(wᵀu) - 1 unless ‖w‖ = 1)
    wu = (ref.w * ref.u).sum()
    expected = wu + (torch.nn.functional.softplus(wu) - 1 - wu) * ref.w.norm()
    torch.testing.assert_close((ref.w * ref.u_hat()).sum(), expected)
    assert not torch.allclose(expected, torch.nn.functional.softplus(wu) - 1)


def test_planar_inverse_gradient_is_the_implicit_function_gradient():
    flow = flows_for(3, 1, 2)[0]
    y = torch.randn(5, 3, dtype=D, requires_grad=True)
    torch.autograd.gradcheck(flow.inverse, (y,))


def test_planar_inverse_parameter_gradients_match_finite_differences():
    flow = flows_for(3, 1, 3)[0]
    y = torch.randn(4, 3, dtype=D)
    c = torch.randn(4, 3, dtype=D)
    (c * flow.inverse(y)).sum().backward()
    h = 1e-6
    for param in (flow.u, flow.w, flow.b):
        numeric = torch.zeros_like(param)
        with torch.no_grad():
            for i in range(param.numel()):
                flat = param.view(-1)
                flat[i] += h
                up = (c * flow.inverse(y)).sum()
                flat[i] -= 2 * h
                down = (c * flow.inverse(y)).sum()
                flat[i] += h
                numeric.view(-1)[i] = (up - down) / (2 * h)
        torch.testing.assert_close(param.grad, numeric, rtol=1e-6, atol=1e-7)


def test_igr_planar_log_prob_matches_autograd_change_of_variables():
    k1, tau = 3, 0.6
    loc, scale = params(k1, 7)
    flows = flows_for(k1, 2, 7)
    kappa = loc + scale * torch.randn(k1, dtype=D)

    def map_fn(x):
        for f in flows:
            x = planar_ref(x, f)
        return softmax_pp_ref(x, tau, 1.0)

    expected = brute_log_density(kappa, loc, scale, map_fn)
    d = IGRPlanar(loc, scale, tau, flows)
    with torch.no_grad():
        torch.testing.assert_close(d.log_prob(map_fn(kappa)), expected, rtol=1e-8, atol=1e-8)
    psi, log_q = d.rsample_with_log_prob((6,))
    torch.testing.assert_close(d.log_prob(psi), log_q, rtol=1e-7, atol=1e-7)


def test_kl_mc_broadcasts_a_prior_of_a_larger_batch_like_kl_divergence():
    """kl_divergence broadcasts the batch shapes; kl_mc raised torch's size mismatch for a prior
    of a larger batch, and does raise a ValueError naming the prior where they do not
    broadcast."""
    torch.manual_seed(0)
    q = IGR(torch.randn(3, dtype=D), torch.ones(3, dtype=D), 0.5)
    prior = IGR(torch.randn(4, 3, dtype=D), torch.full((4, 3), 0.7, dtype=D), 0.5)
    exact = kl_divergence(q, prior)
    estimate = q.kl_mc(prior, 20_000)
    assert estimate.shape == exact.shape == (4,)
    terms = q.expand((4,)).rsample_with_kl(prior, (20_000,))[2]
    se = terms.std(0) / 20_000**0.5
    assert ((estimate - exact).abs() <= 5 * se).all()
    with pytest.raises(ValueError, match=r"prior's batch shape \(4,\) does not broadcast"):
        IGR(torch.zeros(2, 3), 1.0, 0.5).kl_mc(IGR(torch.zeros(4, 3), 1.0, 0.5), 2)


def test_igr_planar_kl_mc_matches_log_density_difference_and_reduces_to_igr_kl():
    torch.manual_seed(0)
    loc, scale = params(3, 8, batch=(2,))
    prior = IGR(torch.zeros(3, dtype=D), 1.0, 0.5)
    # with no flows the MC estimate converges to the closed form of IGR-I
    no_flow = IGRPlanar(loc, scale, 0.5, [])
    exact = kl_divergence(IGR(loc, scale, 0.5), prior)
    psi, log_q = no_flow.rsample_with_log_prob((40_000,))
    se = (log_q - prior.log_prob(psi)).std(0) / math.sqrt(40_000)  # of a 40,000-draw mean
    assert ((no_flow.kl_mc(prior, 40_000) - exact).abs() <= 5 * se).all()
    d = IGRPlanar(loc, scale, 0.5, flows_for(3, 2, 8, batch=(2,)))
    psi, log_q = d.rsample_with_log_prob((20_000,))
    terms = log_q - prior.log_prob(psi)
    se = math.sqrt(2) * terms.std(0) / math.sqrt(20_000)  # of a difference of two such means
    assert ((d.kl_mc(prior, 20_000) - terms.mean(0)).abs() <= 5 * se).all()


@pytest.mark.parametrize("variant", ["I", "SB", "planar"])
def test_sampled_kl_is_log_density_ratio_at_the_returned_sample(variant):
    loc, scale = params(3, 11, batch=(2,))
    prior_loc, prior_scale = params(3, 12)
    if variant == "I":
        q, p = IGR(loc, scale, 0.5), IGR(prior_loc, prior_scale, 0.5)
    elif variant == "SB":
        q = IGRStickBreaking(loc, scale, 0.5, eps=0.2)
        p = IGRStickBreaking(prior_loc, prior_scale, 0.5, eps=0.2)
    else:
        q, p = IGRPlanar(loc, scale, 0.5, flows_for(3, 2, 11)), IGR(prior_loc, prior_scale, 0.5)
    psi, log_q, kl = q.rsample_with_kl(p, (5,))
    with torch.no_grad():
        torch.testing.assert_close(log_q, q.log_prob(psi), rtol=1e-7, atol=1e-7)
        if variant == "SB":  # the prior's density of the same truncated variable
            n = int((psi[0, 0] > 0).sum()) - 1
            short = IGRStickBreaking(prior_loc[:n], prior_scale[:n], 0.5, eps=0.0)
            log_p = short.log_prob(psi[..., : n + 1])
        else:
            log_p = p.log_prob(psi)
        torch.testing.assert_close(kl, log_q - log_p, rtol=1e-7, atol=1e-7)
    with pytest.raises(TypeError, match="prior"):
        q.rsample_with_kl(IGRPlanar(prior_loc, prior_scale, 0.5, []))


def test_igr_planar_gradients_reach_flow_parameters():
    flows = flows_for(3, 2, 9)
    loc, scale = params(3, 9)
    d = IGRPlanar(loc.requires_grad_(True), scale, 0.5, flows)
    psi, log_q = d.rsample_with_log_prob((4,))
    (psi[..., 0].sum() + log_q.sum()).backward()
    for f in flows:
        assert f.u.grad is not None and torch.isfinite(f.u.grad).all()
    assert torch.isfinite(loc.grad).all()


# ---------------------------------------------------------------------------------------- API


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", ["I", "SB", "planar"])
def test_shapes_dtypes_expand_and_gradients(dtype, variant):
    loc = torch.randn(3, 4, dtype=dtype, requires_grad=True)
    tau = torch.tensor(0.5, dtype=dtype, requires_grad=True)
    if variant == "I":
        d = IGR(loc, 0.8, tau)
    elif variant == "SB":
        d = IGRStickBreaking(loc, 0.8, tau, eps=0.0)
    else:
        d = IGRPlanar(loc, 0.8, tau, [PlanarFlow(4).to(dtype)])
    assert d.batch_shape == (3,) and d.event_shape == (5,)
    psi, log_q = d.rsample_with_log_prob((2, 6))
    assert psi.shape == (2, 6, 3, 5) and log_q.shape == (2, 6, 3)
    assert psi.dtype == dtype and log_q.dtype == dtype
    assert torch.isfinite(log_q).all()
    (psi[..., 0].sum() + log_q.sum()).backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(tau.grad).all()
    e = d.expand((7, 3))
    assert type(e) is type(d) and e.batch_shape == (7, 3)
    assert e.sample((2,)).shape == (2, 7, 3, 5)
    assert e.entropy_mc(3).shape == (7, 3)
    assert d.sample().requires_grad is False


def test_temperature_per_batch_element_broadcasts():
    d = IGR(torch.zeros(4, 2, dtype=D), 1.0, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=D))
    assert d.batch_shape == (4,)
    with pytest.raises(ValueError, match="does not broadcast"):
        IGR(torch.zeros(4, 2, dtype=D), 1.0, torch.ones(3, dtype=D))


def test_bad_parameters_raise_clear_errors():
    loc = torch.zeros(3, 2, dtype=D)
    with pytest.raises(ValueError, match="scale"):
        IGR(loc, torch.tensor([1.0, -1.0], dtype=D), 0.5, validate_args=True)
    with pytest.raises(ValueError, match="loc"):
        IGR(torch.tensor([0.0, float("nan")], dtype=D), 1.0, 0.5, validate_args=True)
    with pytest.raises(ValueError, match="temperature"):
        IGR(loc, 1.0, -0.5, validate_args=True)
    with pytest.raises(ValueError, match="delta"):
        IGR(loc, 1.0, 0.5, delta=0.0)
    with pytest.raises(TypeError, match="loc"):
        IGR(torch.zeros(3, 2, dtype=torch.long), 1.0, 0.5)
    with pytest.raises(TypeError, match="temperature"):
        IGR(loc, 1.0, "hot")
    with pytest.raises(ValueError, match="eps"):
        IGRStickBreaking(loc, 1.0, 0.5, eps=1.0)
    with pytest.raises(ValueError, match="quantile"):
        IGRStickBreaking(loc, 1.0, 0.5, eps=0.1, quantile=0.0)
    with pytest.raises(ValueError, match="dim"):
        IGRPlanar(loc, 1.0, 0.5, [PlanarFlow(3).double()])
    with pytest.raises(ValueError, match="param_shape"):
        IGRPlanar(loc, 1.0, 0.5, [PlanarFlow(2, (4,)).double()])
    with pytest.raises(ValueError, match="n_nodes"):
        IGR(loc, 1.0, 0.5).zero_temperature_pmf(n_nodes=8)


def test_out_of_support_values_raise():
    d = IGR(torch.zeros(2, dtype=D), 1.0, 0.5, validate_args=True)
    for bad in ([0.5, 0.5, 0.0], [0.5, 0.6, 0.1], [0.5, float("nan"), 0.5]):
        with pytest.raises(ValueError, match="support"):
            d.log_prob(torch.tensor(bad, dtype=D))
    sb = IGRStickBreaking(torch.zeros(3, dtype=D), 1.0, 0.5, eps=0.0, validate_args=True)
    with pytest.raises(ValueError, match="support"):
        sb.log_prob(torch.tensor([0.5, 0.0, 0.5, 0.0], dtype=D))  # zero inside the prefix


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [0.05, 0.01, 1e-8])
@pytest.mark.parametrize("family", ["igr", "planar"])
def test_low_temperature_draws_stay_in_the_open_simplex_with_finite_log_prob(family, tau, dtype):
    """Underflowing entries are raised to the dtype's smallest normal number (draws used to have
    exact zeros: 82% in float32 at tau = 0.05), so log_prob is finite on every draw."""
    gen = torch.Generator().manual_seed(0)
    loc = 3 * torch.randn(200, 4, generator=gen, dtype=dtype)
    if family == "igr":
        dist = IGR(loc, 1.0, tau)
    else:
        dist = IGRPlanar(loc, 1.0, tau, [f.to(dtype) for f in flows_for(4, 2, 0, batch=(200,))])
    x = dist.sample()
    assert bool((x > 0).all())
    tol = math.sqrt(torch.finfo(dtype).eps)
    assert bool(((x.sum(-1) - 1).abs() <= tol).all())
    assert torch.isfinite(dist.log_prob(x)).all()


@pytest.mark.parametrize("family", ["I", "SB", "planar"])
def test_log_scale_replaces_the_log_of_a_clamped_scale_in_densities_and_kls(family):
    """σ = exp(ξ) underflows float32 at ξ = -200 (clamped to the smallest normal number, whose log
    is -87): with ``log_scale=ξ`` the Gaussian part of every log-density uses ξ itself, so the
    draw's log q exceeds the clamped one by exactly Σ (log σ_clamped − ξ), and the KL equals the
    float64 closed form."""
    loc = torch.tensor([[0.3, -0.2, 0.1], [1.0, 0.5, -1.0]])
    xi = torch.tensor([[-200.0, -150.0, 0.5], [-90.0, 2.0, -300.0]])
    clamped = xi.exp().clamp_min(torch.finfo(torch.float32).tiny)

    def make(scale, at=loc, **kw):
        if family == "I":
            return IGR(at, scale, 0.5, **kw)
        if family == "SB":
            return IGRStickBreaking(at, scale, 0.5, eps=0.0, **kw)
        torch.manual_seed(3)
        return IGRPlanar(at, scale, 0.5, [PlanarFlow(3), PlanarFlow(3)], **kw)

    torch.manual_seed(0)
    psi, log_q = make(clamped, log_scale=xi).rsample_with_log_prob()
    torch.manual_seed(0)
    psi_c, log_q_c = make(clamped).rsample_with_log_prob()
    torch.testing.assert_close(psi, psi_c, rtol=0, atol=0)
    shift = (clamped.log() - xi).double().sum(-1)  # ≈ 163 and 297 nats
    torch.testing.assert_close(log_q.double() - log_q_c.double(), shift, rtol=4e-7, atol=0)
    if family != "planar":
        prior = make(torch.ones_like(xi), torch.zeros_like(loc))
        got = kl_divergence(make(clamped, log_scale=xi), prior).double()
        x, m = xi.double(), loc.double()
        want = 0.5 * ((2 * x).exp() + m.square() - 1 - 2 * x).sum(-1)
        torch.testing.assert_close(got, want, rtol=2e-7, atol=0)
        with pytest.raises(ValueError, match="log_scale"):
            make(clamped, log_scale=xi[:, :2])


def test_gaussian_kl_in_half_precision_is_computed_in_float32():
    """σ = exp(-50) underflows float16 and μ² = 3600 loses bits in bfloat16: from the log-scale,
    computed in float32, the KL is within one rounding of the half dtype of the float64 value."""
    loc = torch.tensor([[3.0, -60.0, 0.25]])
    xi = torch.tensor([[-50.0, 4.0, -0.5]])
    for dtype in (torch.float16, torch.bfloat16):
        info = torch.finfo(dtype)
        scale = xi.exp().clamp(info.tiny, info.max).to(dtype)
        p = IGR(loc.to(dtype), scale, 0.5, log_scale=xi.to(dtype))
        q = IGR(torch.zeros(1, 3, dtype=dtype), 1.0, 0.5)
        got = kl_divergence(p, q).double()
        x, m = xi.to(dtype).double(), loc.to(dtype).double()
        want = 0.5 * ((2 * x).exp() + m.square() - 1 - 2 * x).sum(-1)
        torch.testing.assert_close(got, want, rtol=torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("tau", [1e-8, 1e-3, 1.0, 1e4])
def test_igr_sb_log_prob_is_finite_on_its_own_draws_at_any_temperature(dtype, tau):
    """ψ in its dtype pins the sticks τ(log ψ_k − log ψ_last + log δ) down only to ~2τ·eps: a
    draw whose remainder is that close to 0 once read as outside the image and was refused
    (float32 already at τ = 1). log_prob now takes it as the image point at that resolution
    from the boundary: finite on every draw, while values clearly outside are still refused."""
    if torch.tensor(tau, dtype=dtype) == 0:
        pytest.skip("temperature not representable")
    g = torch.Generator().manual_seed(0)
    loc = (torch.randn(6, 4, generator=g, dtype=D) * 10).to(dtype)
    scale = (0.5 + torch.rand(6, 4, generator=g, dtype=D)).to(dtype)
    dist = IGRStickBreaking(loc, scale, torch.tensor(tau, dtype=dtype), eps=0.1)
    torch.manual_seed(0)
    x = dist.rsample((8,))
    assert torch.isfinite(dist.log_prob(x)).all()


def test_log_scale_is_checked_only_when_validating():
    """A non-finite ``log_scale`` is refused with validation on and not read with it off (the
    estimator passes ξ it has already checked)."""
    loc, scale = torch.zeros(2, 3), torch.ones(2, 3)
    bad = torch.full((2, 3), float("nan"))
    with pytest.raises(ValueError, match="log_scale"):
        IGR(loc, scale, 1.0, log_scale=bad, validate_args=True)
    dist = IGR(loc, scale, 1.0, log_scale=bad, validate_args=False)  # accepted unchecked
    assert dist.log_scale is not None and torch.isnan(dist.log_scale).all()  # as given


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_kl_is_finite_where_one_over_the_prior_scale_or_the_loc_gap_overflows(dtype):
    """``(μ_p − μ_q)·exp(−log σ_q)`` overflowed where σ_q is below the smallest normal number
    (float32: log σ_q < -87.3): NaN for identical distributions (0 · inf), inf for KLs of ~1e26;
    and ``μ_p − μ_q`` overflowed at locations ±3e38 (float32) with σ_q = 1e30 (KL 1.8e17).
    Against the closed form in mpmath at the dtype's inputs, to 8 eps per unit of the exponents
    (exp turns their rounding into relative errors) times the summed terms' magnitude."""
    if dtype == torch.float32:
        cases = [(0.3, -100.0, 0.3, -100.0), (0.3, -100.0, 0.3, -99.0),
                 (1e-30, -100.0, 0.0, -100.0), (3e38, 0.0, -3e38, math.log(1e30)),
                 (0.0, -88.0, 0.0, -89.0)]
    else:
        cases = [(0.3, -1000.0, 0.3, -1000.0), (1e-300, -750.0, 0.0, -750.0),
                 (1.7e308, 0.0, -1.7e308, 700.0)]
    mu_p, ls_p, mu_q, ls_q = (torch.tensor(c, dtype=dtype) for c in zip(*cases, strict=True))
    mu_p.requires_grad_(True)
    ls_p.requires_grad_(True)
    info = torch.finfo(dtype)

    def make(m, ls):
        scale = ls.detach().exp().clamp(info.tiny, info.max)
        return IGR(m.unsqueeze(-1), scale.unsqueeze(-1), 0.5, log_scale=ls.unsqueeze(-1))

    got = kl_divergence(make(mu_p, ls_p), make(mu_q, ls_q))
    for i, (a, la, b, lb) in enumerate(zip(*(t.tolist() for t in (mu_p, ls_p, mu_q, ls_q)))):
        with mpmath.workdps(50):
            r = 2 * (mpmath.mpf(la) - lb)
            terms = (mpmath.exp(r), ((mpmath.mpf(a) - b) / mpmath.exp(lb)) ** 2, -1 - r)
            want = float(sum(terms) / 2)
            tol = 8 * info.eps * (1 + abs(la) + abs(lb)) * float(sum(abs(t) for t in terms) / 2)
        assert abs(got[i].item() - want) <= tol, (cases[i], got[i].item(), want)
    grads = torch.autograd.grad(got[0], (mu_p, ls_p))  # identical distributions: a minimum
    assert all(bool((g == 0).all()) for g in grads)
