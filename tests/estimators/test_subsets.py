"""Relaxed k-subsets of the learning-to-explain baselines: the formulas, their low-temperature
limits, straight-through forward values, gradients and input errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from latentgrad.distributions.sst import draw_noise
from latentgrad.estimators.subsets import (
    CorrelatedSSTEstimator,
    L2XEstimator,
    SoftSubEstimator,
    l2x_relax,
    softsub_relax,
    topk_mask,
)
from latentgrad.structures import KSubset

F64 = torch.float64


def _gumbels(shape, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return -torch.empty(shape, dtype=F64).exponential_(generator=gen).log()


def test_l2x_is_the_elementwise_max_of_k_concretes() -> None:
    theta = torch.randn(3, 6, dtype=F64)
    g = _gumbels((2, 3, 6), 0)
    tau = torch.tensor(0.7, dtype=F64)
    want = torch.maximum(((theta + g[0]) / tau).softmax(-1), ((theta + g[1]) / tau).softmax(-1))
    torch.testing.assert_close(l2x_relax(theta, g, tau), want)


def test_l2x_at_low_temperature_is_the_union_of_the_draws_argmaxes() -> None:
    theta = torch.randn(4, 7, dtype=F64)
    g = _gumbels((3, 4, 7), 1)
    z = l2x_relax(theta, g, torch.tensor(1e-4, dtype=F64))
    want = torch.zeros_like(theta)
    for j in range(3):
        want.scatter_(-1, (theta + g[j]).argmax(-1, keepdim=True), 1.0)
    torch.testing.assert_close(z, want, atol=1e-6, rtol=0)


def test_softsub_sums_to_k_and_tends_to_gumbel_top_k() -> None:
    theta = torch.randn(5, 8, dtype=F64)
    g = _gumbels((5, 8), 2)
    z = softsub_relax(theta, g, 3, torch.tensor(0.5, dtype=F64), 1e-20)
    torch.testing.assert_close(z.sum(-1), torch.full((5,), 3.0, dtype=F64))
    assert bool((z >= 0).all())  # entries may exceed 1 at moderate temperatures
    cold = softsub_relax(theta, g, 3, torch.tensor(1e-4, dtype=F64), 1e-20)
    torch.testing.assert_close(cold, topk_mask(theta + g, 3), atol=1e-6, rtol=0)


def test_correlated_utilities_have_the_low_rank_plus_diagonal_covariance() -> None:
    torch.manual_seed(0)
    est = CorrelatedSSTEstimator(k=2, temperature=1.0, rank=2)
    scores = torch.zeros(1, 4, 4, dtype=F64)
    scores[0, :, 0] = torch.tensor([0.5, -1.0, 2.0, 0.0])
    scores[0, :, 1] = torch.tensor([0.0, -0.5, 0.3, 0.1])  # log sigma
    scores[0, :, 2:] = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, -1.0], [0.2, 0.3]])
    draws = est.utilities(scores.expand(20000, 4, 4))  # one draw per (identical) row
    sigma = scores[0, :, 1].exp()
    cov = torch.diag(sigma**2) + scores[0, :, 2:] @ scores[0, :, 2:].T
    # Monte Carlo with 20,000 draws: standard errors about 0.01-0.02 here
    torch.testing.assert_close(draws.mean(0), scores[0, :, 0], atol=0.06, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), cov, atol=0.1, rtol=0)


def test_correlated_sst_is_the_k_subset_marginals_of_the_utilities() -> None:
    est = CorrelatedSSTEstimator(k=3, temperature=0.5, rank=1)
    scores = torch.randn(2, 6, 3, dtype=F64)
    torch.manual_seed(5)
    seen = []
    out = est(scores, lambda z, rows: seen.append(z) or z.sum(-1))
    torch.manual_seed(5)
    u = est.utilities(scores)
    torch.testing.assert_close(seen[0], KSubset(6, 3).marginals(u / 0.5))
    torch.testing.assert_close(out.expected_loss, torch.full((2,), 3.0, dtype=F64))
    assert est.score_shape((6,)) == (6, 3)


@pytest.mark.parametrize(
    "make",
    [
        lambda st: L2XEstimator(3, 0.5, straight_through=st),
        lambda st: SoftSubEstimator(3, 0.5, straight_through=st),
        lambda st: CorrelatedSSTEstimator(3, 0.5, rank=2, straight_through=st),
    ],
)
@pytest.mark.parametrize("straight_through", [False, True])
def test_pathwise_gradients_and_straight_through_forward(make, straight_through: bool) -> None:
    est = make(straight_through)
    shape = (4, 7, 4) if isinstance(est, CorrelatedSSTEstimator) else (4, 7)
    scores = torch.randn(shape, dtype=F64, requires_grad=True)
    weights = torch.randn(7, dtype=F64)
    seen = []

    def loss_fn(z, rows):
        seen.append(z.detach())
        return z @ weights

    est(scores, loss_fn).loss.backward()
    assert scores.grad is not None and bool(scores.grad.abs().sum() > 0)
    z = seen[0]
    if straight_through:
        assert bool(((z == 0) | (z == 1)).all()) and bool((z.sum(-1) == 3).all())
    elif not isinstance(est, SoftSubEstimator):  # SoftSub's entries may exceed 1
        assert bool(((z >= 0) & (z <= 1 + 1e-12)).all())


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="fewer than k"):
        L2XEstimator(5, 1.0)(torch.randn(2, 3), lambda z, r: z.sum(-1))
    with pytest.raises(ValueError, match="finite"):
        SoftSubEstimator(1, 1.0)(torch.tensor([[0.0, float("nan")]]), lambda z, r: z.sum(-1))
    with pytest.raises(ValueError, match="last dimension"):
        CorrelatedSSTEstimator(1, 1.0, rank=2)(torch.randn(2, 3, 3), lambda z, r: z.sum(-1))
    with pytest.raises(ValueError, match="entropy_coeff"):
        L2XEstimator(1, 1.0, entropy_coeff=0.1)
    with pytest.raises(TypeError, match="straight_through"):
        SoftSubEstimator(1, 1.0, straight_through=1)
    with pytest.raises(ValueError, match="eps"):
        SoftSubEstimator(1, 1.0, eps=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize(("mu_scale", "log_sigma", "tau"),
                         [(1.0, 0.0, 0.5), (1e30, 5.0, 0.5), (1.0, 200.0, 1e-3), (3e37, 80.0, 1.0)])
def test_correlated_sst_utilities_are_finite_and_exact_up_to_a_row_scale(dtype, mu_scale, log_sigma,
                                                                         tau):
    """σ = exp(log σ) and U / τ overflow float32 from log σ ~ 89: the tempered utilities are the
    float64 U / τ of the same draw up to one positive factor per row (exactly U / τ when nothing
    overflows), within a few roundings of the largest term; the relaxed subset is then finite."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 5, 3, generator=g, dtype=F64)
    scores[..., 0] *= mu_scale
    scores[..., 1] = log_sigma + scores[..., 1]
    scores = scores.to(dtype)
    est = CorrelatedSSTEstimator(2, tau, rank=1)
    tau_t = torch.tensor(tau, dtype=dtype)
    torch.manual_seed(1)
    got = est.tempered_utilities(scores, tau_t).double()
    torch.manual_seed(1)  # the same draws, combined in float64
    work = scores.to(torch.promote_types(dtype, torch.float32))
    eps = draw_noise(work[..., 0].shape, work[..., 0], "gaussian").double()
    eta = draw_noise(torch.Size((3, 1)), work[..., 0], "gaussian").double()
    x = scores.double()
    want = (x[..., 0] + x[..., 1].exp() * eps + (x[..., 2:] @ eta.unsqueeze(-1)).squeeze(-1)) / tau
    assert torch.isfinite(got).all()
    ratio = got.abs().amax(-1, keepdim=True) / want.abs().amax(-1, keepdim=True)
    err = (got / ratio - want).abs().amax(-1)
    ulp = torch.finfo(work.dtype).eps
    assert (err <= 16 * ulp * want.abs().amax(-1)).all(), err
    if mu_scale == 1.0 and log_sigma == 0.0:  # nothing overflows: U / τ itself
        ones = torch.ones(3, dtype=F64)
        torch.testing.assert_close(ratio.squeeze(-1), ones, rtol=8 * ulp, atol=0)
    torch.manual_seed(1)
    out = est(scores, lambda z, rows: z.square().sum(-1))
    z = out.latents.double()
    assert torch.isfinite(z).all() and torch.allclose(z.sum(-1), torch.full((3,), 2.0, dtype=F64),
                                                       atol=8 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_correlated_sst_at_log_scales_of_1e8_stays_within_the_subset_range(dtype) -> None:
    """At log σ ~ 1e8 the logs' sums and differences round by units in float32 (8 at 1e8): the
    row scale keeps a margin of a few ulps, so the tempered utilities never exceed the range the
    k-subset marginals accept (before: a ValueError from KSubset in 5 of 50 draws)."""
    g = torch.Generator().manual_seed(3)
    scores = (1e8 * torch.randn(3, 4, 3, generator=g, dtype=F64)).to(dtype)
    est = CorrelatedSSTEstimator(2, 0.5)
    for seed in range(50):
        torch.manual_seed(seed)
        out = est(scores, lambda z, rows: z.sum(-1))
        z = out.latents.double()
        assert torch.isfinite(z).all()
        torch.testing.assert_close(z.sum(-1), torch.full((3,), 2.0, dtype=F64),
                                   atol=8 * torch.finfo(dtype).eps, rtol=0)


def _reference_relaxation(name: str, scores: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    """The relaxed k-hot of each estimator from the same draws (the global RNG re-seeded, drawn
    in the estimator's order), written from the definitions: Concrete draws and their max,
    Xie & Ermon's k softmax rounds, and the k-subset marginals by enumerating all subsets."""
    n = scores.shape[1]
    if name == "l2x":
        g = draw_noise(torch.Size((k, *scores.shape)), scores, "gumbel")
        draws = [torch.exp((scores + g[j]) / tau) for j in range(k)]
        return torch.stack([d / d.sum(-1, keepdim=True) for d in draws]).amax(0)
    if name == "softsub":
        w = scores + draw_noise(scores.shape, scores, "gumbel")
        a, total = torch.zeros_like(w), torch.zeros_like(w)
        for _ in range(k):
            w = w + torch.log(torch.clamp(1.0 - a, min=1e-20))
            a = torch.exp(w / tau) / torch.exp(w / tau).sum(-1, keepdim=True)
            total = total + a
        return total
    mu, sigma, factors = scores[..., 0], scores[..., 1].exp(), scores[..., 2:]
    eps = draw_noise(mu.shape, mu, "gaussian")
    eta = draw_noise(torch.Size((scores.shape[0], factors.shape[-1])), mu, "gaussian")
    u = (mu + sigma * eps + (factors * eta.unsqueeze(1)).sum(-1)) / tau
    subsets = torch.tensor([[float(i in c) for i in range(n)]
                            for c in itertools.combinations(range(n), k)], dtype=F64)
    weights = torch.softmax(u @ subsets.T, dim=-1)  # p(x) ∝ exp <x, U / τ>
    return weights @ subsets


@pytest.mark.parametrize("name", ["l2x", "softsub", "corr_sst"])
@pytest.mark.parametrize("straight_through", [False, True])
def test_pathwise_gradient_matches_the_relaxation_written_from_its_definition(
    name: str, straight_through: bool
) -> None:
    """The loss and the gradient the estimator hands back are those of its relaxation at the same
    noise (straight-through: the loss at the hard top-k, the relaxation's Jacobian)."""
    k, tau = 2, 0.6
    make = {"l2x": L2XEstimator, "softsub": SoftSubEstimator}.get(name)
    est = (make(k, tau, straight_through=straight_through) if make is not None
           else CorrelatedSSTEstimator(k, tau, rank=2, straight_through=straight_through))
    shape = (3, 6, 4) if name == "corr_sst" else (3, 6)
    gen = torch.Generator().manual_seed(7)
    scores = torch.randn(shape, generator=gen, dtype=F64).requires_grad_(True)
    w = torch.randn(6, generator=gen, dtype=F64)

    def loss_fn(z, rows):
        return (z @ w) ** 2 + z.square().sum(-1)

    torch.manual_seed(11)
    out = est(scores, loss_fn)
    (got,) = torch.autograd.grad(out.loss, scores)
    torch.manual_seed(11)
    relaxed = _reference_relaxation(name, scores, k, tau)
    z = relaxed
    if straight_through:
        hard = torch.zeros_like(relaxed).scatter_(-1, relaxed.detach().topk(k).indices, 1.0)
        z = hard + relaxed - relaxed.detach()
    ref = loss_fn(z, None).mean()
    (want,) = torch.autograd.grad(ref, scores)
    torch.testing.assert_close(out.loss.detach(), ref.detach())
    torch.testing.assert_close(got, want)
