"""Concrete / Binary Concrete densities and Monte Carlo entropy/KL against torch, quadrature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from torch.distributions import (
    Independent,
    Normal,
    RelaxedBernoulli,
    RelaxedOneHotCategorical,
    TransformedDistribution,
)
from torch.distributions.relaxed_bernoulli import LogitRelaxedBernoulli
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical
from torch.distributions.transforms import (
    ExpTransform,
    ReshapeTransform,
    StickBreakingTransform,
)

from latentgrad.distributions.concrete import (
    binary_concrete_log_prob,
    binary_concrete_logit_log_prob,
    concrete_log_prob,
    exp_concrete_log_prob,
    relaxed_entropy,
    relaxed_kl,
)
from latentgrad.distributions.igr import IGR

D = torch.float64


def binary_density(y: float, logit: float, tau: float) -> float:
    v = math.log(y) - math.log1p(-y)
    t = logit - tau * v
    log_pv = math.log(tau) + t - 2 * math.log1p(math.exp(t)) if t < 30 else math.log(tau) - t
    return math.exp(log_pv) / (y * (1 - y))


@settings(max_examples=10, deadline=None)
@given(k=st.integers(2, 6), seed=st.integers(0, 10_000), tau=st.floats(0.1, 3.0))
def test_exp_concrete_log_prob_matches_torch(k, seed, tau):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, k, generator=g, dtype=D) * 2
    dist = ExpRelaxedCategorical(torch.tensor(tau, dtype=D), logits=logits)
    x = dist.sample((4,))
    torch.testing.assert_close(exp_concrete_log_prob(x, logits, tau), dist.log_prob(x))
    y = x.exp()
    torch.testing.assert_close(
        concrete_log_prob(y, logits, tau),
        RelaxedOneHotCategorical(torch.tensor(tau, dtype=D), logits=logits).log_prob(y),
    )


def test_exp_concrete_with_two_categories_is_the_binary_concrete_logit_density():
    # the ExpConcrete density is the density of the log-ratios x_k − x_K; for K = 2 that is the
    # Binary Concrete logit v = x_1 − x_2 = (θ_1 − θ_2 + L)/τ
    v = torch.linspace(-8, 8, 33, dtype=D)
    logits = torch.tensor([0.7, -0.4], dtype=D)
    x = torch.stack([torch.nn.functional.logsigmoid(v), torch.nn.functional.logsigmoid(-v)], -1)
    expected = binary_concrete_logit_log_prob(v, logits[0] - logits[1], 0.6)
    torch.testing.assert_close(exp_concrete_log_prob(x, logits, 0.6), expected)


def test_exp_concrete_density_integrates_to_one_over_log_ratios():
    # x = log_softmax([u_1, u_2, 0]); the density is one over the log-ratios u (trapezoid rule on a
    # box holding all but ~e^-40 of the mass; the integrand is smooth and decays exponentially)
    logits = torch.tensor([0.5, -0.3, 0.1], dtype=D)
    grid = torch.linspace(-40, 40, 801, dtype=D)
    u1, u2 = torch.meshgrid(grid, grid, indexing="ij")
    x = torch.log_softmax(torch.stack([u1, u2, torch.zeros_like(u1)], -1), -1)
    density = exp_concrete_log_prob(x, logits, 1.5).exp()
    total = torch.trapezoid(torch.trapezoid(density, grid, dim=-1), grid)
    assert abs(total.item() - 1) < 1e-6


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")  # y^(τ−1) endpoints
@pytest.mark.parametrize("tau", [0.3, 1.0, 2.0])
def test_binary_concrete_density_matches_torch_and_integrates_to_one(tau):
    logits = torch.tensor([-1.2, 0.0, 2.5], dtype=D)
    y = RelaxedBernoulli(torch.tensor(tau, dtype=D), logits=logits).sample((5,))
    torch.testing.assert_close(
        binary_concrete_log_prob(y, logits, tau),
        RelaxedBernoulli(torch.tensor(tau, dtype=D), logits=logits).log_prob(y),
    )
    v = torch.linspace(-30, 30, 13, dtype=D)
    torch.testing.assert_close(
        binary_concrete_logit_log_prob(v.unsqueeze(-1), logits, tau),
        LogitRelaxedBernoulli(torch.tensor(tau, dtype=D), logits=logits).log_prob(v.unsqueeze(-1)),
    )
    for logit in logits.tolist():
        total, _ = integrate.quad(binary_density, 0, 1, args=(logit, tau), limit=200)
        assert abs(total - 1) < 1e-6


def test_logit_form_is_finite_where_y_rounds_to_zero_or_one():
    v = torch.tensor([-200.0, 200.0])
    out = binary_concrete_logit_log_prob(v, torch.tensor(0.0), 0.5)
    assert torch.isfinite(out).all()



@pytest.mark.parametrize("dtype", [torch.float32, D])
def test_concrete_log_probs_at_logits_near_the_largest_finite_value(dtype):
    """ExpConcrete/Concrete: Σ t − K lse(t), t = θ − τx, overflowed to inf − inf (NaN) at equal
    logits of ±2e38 in float32, and at 1e38 (float64 too) θ absorbed τx: 0 instead of -4.005 and
    gradient -2 instead of 0.11; logits [3e38, 3e38, 0] gave NaN / gradient [-2, -2, 1] instead of
    [-0.31, -0.69, 1]. Binary logit form: t − 2 softplus(t) overflowed to -inf at t = 3e38
    (value -3e38). Against float64 references from the logits normalised first (torch; the
    logit form in float64 where it does not overflow), to 16 eps of the value's magnitude."""
    big = 0.9 * torch.finfo(dtype).max
    eps = torch.finfo(dtype).eps
    x = torch.log_softmax(torch.tensor([0.3, -0.2, 0.1], dtype=D), -1).to(dtype)
    tau = torch.tensor(0.5, dtype=D)
    for row in ([big / 2] * 3, [-big / 2] * 3, [big / 3] * 3, [big, big, 0.0]):
        logits = torch.tensor(row, dtype=dtype, requires_grad=True)
        ref_logits = logits.detach().double().requires_grad_(True)
        want = ExpRelaxedCategorical(tau, logits=ref_logits).log_prob(x.double())
        (want_grad,) = torch.autograd.grad(want, ref_logits)
        got = exp_concrete_log_prob(x, logits, 0.5)
        (grad,) = torch.autograd.grad(got, logits)
        tol = 16 * eps * (1 + abs(want.item()))
        assert abs(got.item() - want.item()) <= tol, (row, got.item(), want.item())
        torch.testing.assert_close(grad.double(), want_grad, rtol=0, atol=16 * eps)
        y = x.exp()
        want_y = want - x.double().sum()
        got_y = concrete_log_prob(y, logits.detach(), 0.5)
        assert abs(got_y.item() - want_y.item()) <= tol, (row, got_y.item(), want_y.item())
    logit = torch.tensor(big, dtype=dtype, requires_grad=True)
    got = binary_concrete_logit_log_prob(torch.tensor(0.5, dtype=dtype), logit, 0.5)
    t = logit.detach().double() - 0.25
    want = math.log(0.5) + t - 2 * torch.nn.functional.softplus(t)
    if torch.isfinite(want):  # float32's largest logits fit float64
        assert abs(got.item() - want.item()) <= 16 * eps * abs(want.item())
    assert torch.isfinite(got)
    (grad,) = torch.autograd.grad(got, logit)
    assert abs(grad.item() + 1) <= eps


def _binary_entropy_quad(logit: float, tau: float) -> float:
    def integrand(y):
        p = binary_density(y, logit, tau)
        return -p * math.log(p) if p > 0 else 0.0

    return integrate.quad(integrand, 0, 1, limit=400)[0]


def test_relaxed_entropy_matches_quadrature_for_binary_concrete():
    torch.manual_seed(0)
    logits = torch.tensor([-1.0, 0.5], dtype=D)
    dist = RelaxedBernoulli(torch.tensor(0.8, dtype=D), logits=logits)
    n = 40_000
    est = relaxed_entropy(dist, n)
    expected = torch.tensor([_binary_entropy_quad(t, 0.8) for t in logits.tolist()], dtype=D)
    # standard error from a second batch of draws
    y = dist.sample((n,))
    se = dist.log_prob(y).std(0) / math.sqrt(n)
    assert est.shape == (2,)
    assert ((est - expected).abs() < 4 * se).all()


def test_relaxed_kl_matches_quadrature_with_different_temperatures():
    torch.manual_seed(0)
    tau_p, tau_q = 0.7, 0.5  # the prior's temperature differs (IGR's Gumbel-Softmax baseline)
    logits = torch.tensor([1.0, 0.0], dtype=D)
    p = RelaxedOneHotCategorical(torch.tensor(tau_p, dtype=D), logits=logits)
    q = RelaxedOneHotCategorical(torch.tensor(tau_q, dtype=D), logits=torch.zeros(2, dtype=D))

    def integrand(y):
        dp, dq = binary_density(y, 1.0, tau_p), binary_density(y, 0.0, tau_q)
        return dp * (math.log(dp) - math.log(dq)) if dp > 0 else 0.0

    expected = integrate.quad(integrand, 0, 1, limit=400)[0]
    n = 40_000
    est = relaxed_kl(p, q, n)
    x = p.base_dist.sample((n,))
    se = (p.base_dist.log_prob(x) - q.base_dist.log_prob(x)).std() / math.sqrt(n)
    assert abs(est.item() - expected) < 4 * se.item()


@pytest.mark.parametrize("kind", ["relaxed_categorical", "stick_breaking_chain"])
def test_relaxed_entropy_of_transformed_distribution_agrees_with_torch_log_prob(kind):
    if kind == "relaxed_categorical":
        tau, logits = torch.tensor(0.7, dtype=D), torch.randn(2, 4, dtype=D)
        dist = RelaxedOneHotCategorical(tau, logits=logits)
    else:  # a transform that changes the event dim: R^3 -> 4-simplex -> (2, 2) -> log
        base = Independent(Normal(torch.randn(2, 3, dtype=D), torch.ones(2, 3, dtype=D)), 1)
        chain = [StickBreakingTransform(), ReshapeTransform((4,), (2, 2)), ExpTransform().inv]
        dist = TransformedDistribution(base, chain)
    torch.manual_seed(0)
    est = relaxed_entropy(dist, 50)
    torch.manual_seed(0)
    expected = -dist.log_prob(dist.rsample((50,))).mean(0)
    assert est.shape == (2,)
    torch.testing.assert_close(est, expected)


def test_relaxed_kl_of_igr_pair_matches_closed_form():
    torch.manual_seed(0)
    p = IGR(torch.tensor([0.5, -0.2], dtype=D), 0.8, 0.5)
    q = IGR(torch.zeros(2, dtype=D), 1.0, 0.5)
    est = relaxed_kl(p, q, 40_000)
    y = p.rsample((40_000,))
    se = (p.log_prob(y) - q.log_prob(y)).std() / 40_000**0.5  # of a 40,000-draw mean
    assert abs(est.item() - torch.distributions.kl_divergence(p, q).item()) <= 5 * se.item()


def test_relaxed_entropy_is_finite_and_differentiable_at_low_temperature_in_float32():
    logits = torch.tensor([3.0, -2.0, 0.0, 1.0], requires_grad=True)
    dist = RelaxedOneHotCategorical(torch.tensor(0.05), logits=logits)
    h = relaxed_entropy(dist, 256)
    assert torch.isfinite(h)
    h.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_a_minus_inf_logit_excludes_its_category_from_the_density():
    """Draws put x = -inf (y = 0) on an excluded category; the density is the Concrete density of
    the other categories, with finite gradients, and -inf off that face."""
    logits = torch.tensor([0.3, -1.2, float("-inf"), 0.8], dtype=D, requires_grad=True)
    dist = ExpRelaxedCategorical(torch.tensor(0.7, dtype=D), logits=logits)
    x = dist.rsample((64,)).detach()
    assert (x[:, 2] == float("-inf")).all()
    kept = [0, 1, 3]
    want = ExpRelaxedCategorical(torch.tensor(0.7, dtype=D), logits=logits[kept]).log_prob(
        x[:, kept])
    got = exp_concrete_log_prob(x, logits, 0.7)
    torch.testing.assert_close(got, want)
    got.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[2] == 0
    y = x.exp()
    torch.testing.assert_close(concrete_log_prob(y, logits.detach(), 0.7),
                               want.detach() - x[:, kept].sum(-1))
    off_face = torch.log(torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=D))
    assert exp_concrete_log_prob(off_face, logits.detach(), 0.7).item() == float("-inf")
    missing = torch.log(torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=D))
    assert exp_concrete_log_prob(missing, logits.detach(), 0.7).item() == float("-inf")


def test_bad_inputs_raise():
    logits = torch.zeros(3, dtype=D)
    with pytest.raises(ValueError, match="temperature"):
        exp_concrete_log_prob(torch.log(torch.full((3,), 1 / 3, dtype=D)), logits, -1.0)
    with pytest.raises(ValueError, match="x must be log-probabilities"):
        exp_concrete_log_prob(torch.zeros(3, dtype=D), logits, 1.0)
    with pytest.raises(ValueError, match="must be > 0 at every category that logits do not"):
        concrete_log_prob(torch.tensor([0.5, 0.5, 0.0], dtype=D), logits, 1.0)
    with pytest.raises(ValueError, match="open interval"):
        binary_concrete_log_prob(torch.tensor([0.0, 0.5], dtype=D), logits[:2], 1.0)
    with pytest.raises(ValueError, match="NaN"):
        binary_concrete_logit_log_prob(torch.tensor([float("nan")]), torch.zeros(1), 1.0)
    with pytest.raises(ValueError, match="broadcast"):
        binary_concrete_logit_log_prob(torch.zeros(2), torch.zeros(3), 1.0)
    with pytest.raises(TypeError, match="logits"):
        binary_concrete_logit_log_prob(torch.zeros(2), torch.zeros(2, dtype=torch.long), 1.0)
    dist = RelaxedBernoulli(torch.tensor(0.5), logits=torch.zeros(2))
    with pytest.raises(ValueError, match="n_samples"):
        relaxed_entropy(dist, 0)
    with pytest.raises(ValueError, match="event_shape"):
        relaxed_kl(
            RelaxedOneHotCategorical(torch.tensor(0.5), logits=torch.zeros(3)),
            IGR(torch.zeros(3), 1.0, 0.5),
            4,
        )


def test_temperature_may_vary_over_the_batch():
    logits = torch.randn(4, 3, dtype=D)
    tau = torch.tensor([0.2, 0.5, 1.0, 2.0], dtype=D)
    x = torch.log_softmax(torch.randn(4, 3, dtype=D), -1)
    out = exp_concrete_log_prob(x, logits, tau)
    expected = torch.stack(
        [exp_concrete_log_prob(x[i], logits[i], tau[i].item()) for i in range(4)]
    )
    torch.testing.assert_close(out, expected)
    assert np.isfinite(out.numpy()).all()
