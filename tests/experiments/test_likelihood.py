"""Importance-sampled log-likelihoods against the exact log p(x) of models small enough to
enumerate or integrate: discrete (3 bits), continuous (linear Gaussian) and mixed (one Hard
Concrete bit) latents, and the sparse support-plus-remainder estimator."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from latentgrad.distributions.mixed_binary import HardConcrete, MixedUniform
from latentgrad.experiments.tasks.likelihood import (
    importance_log_likelihood,
    log_mean_exp,
    support_log_likelihood,
)

D, B = 3, 4
ALL_Z = torch.tensor([[(i >> j) & 1 for j in range(D)] for i in range(2**D)], dtype=torch.float64)


def _bits_model(seed: int = 0):
    """Uniform prior on {0,1}^3; x (B, 5) binary, p(x|z) Bernoulli(sigmoid(W z + c))."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, D, generator=g, dtype=torch.float64) * 2
    c = torch.randn(5, generator=g, dtype=torch.float64)
    x = torch.bernoulli(torch.full((B, 5), 0.5, dtype=torch.float64), generator=g)

    def log_lik(z):  # (n, B, D) -> (n, B)
        return Bernoulli(logits=z @ w.T + c).log_prob(x).sum(-1)

    def log_joint(z):
        return log_lik(z) - D * math.log(2)

    exact = torch.logsumexp(log_joint(ALL_Z[:, None].expand(-1, B, -1)), 0)
    return log_joint, exact


def test_log_mean_exp_is_the_log_of_the_mean() -> None:
    x = torch.randn(7, 3, dtype=torch.float64)
    torch.testing.assert_close(log_mean_exp(x, 0), x.exp().mean(0).log())
    assert log_mean_exp(torch.full((3,), -math.inf), 0) == -math.inf


def test_discrete_is_exact_for_any_sample_count_when_the_proposal_is_the_posterior() -> None:
    log_joint, exact = _bits_model()
    # the posterior over the 8 values as a categorical proposal
    post = (log_joint(ALL_Z[:, None].expand(-1, B, -1)) - exact).T.exp()  # (B, 8)

    def sample(n):
        return ALL_Z[torch.multinomial(post, n, replacement=True).T]

    def log_q(z):
        idx = (z * 2 ** torch.arange(D, dtype=z.dtype)).sum(-1).long()
        return post.log().T.gather(0, idx)

    for n in (1, 5):
        got = importance_log_likelihood(log_joint, sample, log_q, n, chunk=2)
        torch.testing.assert_close(got, exact)


def test_discrete_bernoulli_proposal_converges_to_the_exact_log_likelihood() -> None:
    torch.manual_seed(0)
    log_joint, exact = _bits_model(1)
    q = Bernoulli(logits=torch.randn(B, D, dtype=torch.float64))
    n = 20000
    got = importance_log_likelihood(
        log_joint, lambda k: q.sample((k,)), lambda z: q.log_prob(z).sum(-1), n, chunk=4096
    )
    # weights are bounded by max p(x,z)/q(z); the relative error of the mean is ~ std/sqrt(n)
    assert (got - exact).abs().max() < 0.05


def test_continuous_gaussian_is_exact_with_the_posterior_proposal() -> None:
    """z ~ N(0, 1), x|z ~ N(z, s^2): p(x) = N(0, 1 + s^2), posterior N(x/(1+s^2), s^2/(1+s^2))."""
    s2 = 0.5
    x = torch.tensor([-1.0, 0.3, 2.0], dtype=torch.float64)
    prior, post = Normal(0.0, 1.0), Normal(x / (1 + s2), (s2 / (1 + s2)) ** 0.5)

    def log_joint(z):
        return prior.log_prob(z) + Normal(z, s2**0.5).log_prob(x)

    exact = Normal(0.0, (1 + s2) ** 0.5).log_prob(x)
    got = importance_log_likelihood(log_joint, lambda n: post.sample((n,)), post.log_prob, 3)
    torch.testing.assert_close(got, exact)
    wide = Normal(torch.zeros_like(x), 2.0)
    torch.manual_seed(0)
    got = importance_log_likelihood(log_joint, lambda n: wide.sample((n,)), wide.log_prob, 20000)
    assert (got - exact).abs().max() < 0.03


def test_mixed_hard_concrete_proposal_in_the_direct_sum_measure() -> None:
    """One mixed bit y with the mixed-uniform prior and x|y ~ Bernoulli(sigmoid(4y - 2)):
    p(x) = (p(x|0) + p(x|1) + ∫_0^1 p(x|y) dy) / 3 (trapezoid rule on 20,001 points)."""
    x = torch.tensor([0.0, 1.0], dtype=torch.float64)
    prior = MixedUniform(dtype=torch.float64)

    def log_lik(y):
        return Bernoulli(logits=4 * y - 2).log_prob(x)

    def log_joint(y):
        return prior.log_prob(y) + log_lik(y)

    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)[:, None].expand(-1, 2)
    integral = torch.trapezoid(log_lik(grid).exp(), grid[:, 0], dim=0)
    ends = log_lik(torch.zeros(1, 2, dtype=torch.float64)).exp()[0]
    ends = ends + log_lik(torch.ones(1, 2, dtype=torch.float64)).exp()[0]
    exact = ((ends + integral) / 3).log()
    q = HardConcrete(torch.tensor([-0.5, 0.7], dtype=torch.float64), 2 / 3, (-0.1, 1.1))
    assert 0 < float(q.prob_zero().min()) and 0 < float(q.prob_one().min())
    torch.manual_seed(0)
    got = importance_log_likelihood(log_joint, lambda n: q.sample((n,)), q.log_prob, 40000)
    assert (got - exact).abs().max() < 0.02


def test_support_plus_remainder_is_exact_on_full_support_and_unbiased_on_part() -> None:
    log_joint, exact = _bits_model(2)
    prior = Bernoulli(probs=torch.full((B, D), 0.5, dtype=torch.float64))

    def sample_prior(n):
        return prior.sample((n,))

    def log_prior(z):
        return prior.log_prob(z).sum(-1)

    full = ALL_Z[None].expand(B, -1, -1)
    mask = torch.ones(B, 2**D, dtype=torch.bool)
    got = support_log_likelihood(log_joint, full, mask, sample_prior, log_prior, 64)
    torch.testing.assert_close(got, exact)  # every prior draw lies in the support: no remainder
    # part of the space as support (padded with repeats that the mask turns off)
    mask = torch.zeros(B, 2**D, dtype=torch.bool)
    mask[:, :3] = True
    mask[0, 3:6] = True
    torch.manual_seed(0)
    n = 4000
    draws = torch.stack(
        [support_log_likelihood(log_joint, full, mask, sample_prior, log_prior, n).exp()
         for _ in range(5)]
    )
    # the remainder's prior estimate has at most 8 distinct terms: error ~ max p(x|z)/sqrt(n)
    torch.testing.assert_close(draws.mean(0).log(), exact, atol=0.05, rtol=0)
    # the support part alone is a lower bound (up to the rounding of exp then log)
    on_support = log_joint(ALL_Z[:, None].expand(-1, B, -1)).T.masked_fill(~mask, -math.inf)
    eps = 8 * torch.finfo(torch.float64).eps * exact.abs().max()
    assert bool((draws.log() >= torch.logsumexp(on_support, -1) - eps).all())


def test_bad_counts_and_mask_shapes_are_rejected() -> None:
    log_joint, _ = _bits_model()
    with pytest.raises(ValueError, match="n_samples"):
        importance_log_likelihood(log_joint, lambda n: None, lambda z: None, 0)
    with pytest.raises(ValueError, match="chunk"):
        importance_log_likelihood(log_joint, lambda n: None, lambda z: None, 4, chunk=0)
    with pytest.raises(ValueError, match="mask"):
        support_log_likelihood(
            log_joint, ALL_Z[None].expand(B, -1, -1), torch.ones(B, 3, dtype=torch.bool),
            lambda n: None, lambda z: None, 4,
        )


def test_every_wide_val_every_th_validation_takes_the_wide_sample_count() -> None:
    """Correia et al.'s bit-vector protocol: S = 16 on validation, 64 every 20th epoch."""
    from latentgrad.experiments.config import resolve
    from latentgrad.experiments.tasks.bitvector_vae import Config
    from latentgrad.experiments.tasks.likelihood import ImportanceConfig

    importance = resolve(Config, "bitvector_vae", "sfe", 42, {"profile": "faithful"}).importance
    counts = [importance.val_samples_at(epoch) for epoch in range(40)]
    assert counts[19] == counts[39] == 64 and set(counts[:19] + counts[20:39]) == {16}
    assert ImportanceConfig().val_samples_at(19) == 16  # off unless set
