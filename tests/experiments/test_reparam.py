"""The experiments' pathwise reference estimator: its surrogate is the sample mean of the loss
plus the closed-form KL, and an empty batch has loss 0 rather than NaN."""

import pytest
import torch
from torch.distributions import Dirichlet, Independent, Normal, kl_divergence

from latentgrad.experiments.reparam import Reparameterized


def _scores(family: str, b: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if family == "gaussian":
        return (torch.randn(b, 3, generator=g, dtype=torch.float64),
                torch.rand(b, 3, generator=g, dtype=torch.float64) + 0.5)
    return torch.rand(b, 3, generator=g, dtype=torch.float64) + 0.5


@pytest.mark.parametrize("family", ["gaussian", "dirichlet"])
def test_loss_is_the_sample_mean_plus_the_closed_form_kl(family: str) -> None:
    est = Reparameterized(family, n_samples=4, kl_coeff=0.5)
    scores = _scores(family, 5)
    seen = []

    def loss_fn(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        seen.append((z.detach().clone(), rows.clone()))
        return (z**2).sum(-1)

    out = est(scores, loss_fn)
    z, rows = seen[0]
    assert rows.tolist() == list(range(5)) * 4
    q = Independent(Normal(*scores), 1) if family == "gaussian" else Dirichlet(scores)
    ones = torch.ones(3, dtype=torch.float64)
    prior = Independent(Normal(0 * ones, ones), 1) if family == "gaussian" else Dirichlet(ones)
    per_example = (z**2).sum(-1).view(4, 5).mean(0)
    expected = (per_example + 0.5 * kl_divergence(q, prior)).mean()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.expected_loss, per_example)


@pytest.mark.parametrize("family", ["gaussian", "dirichlet"])
def test_an_empty_batch_has_loss_zero_with_a_graph(family: str) -> None:
    scores = _scores(family, 0)
    leaves = scores if isinstance(scores, tuple) else (scores,)
    for leaf in leaves:
        leaf.requires_grad_(True)
    out = Reparameterized(family)(scores, lambda z, rows: z.sum(-1))
    assert out.loss.item() == 0.0
    assert out.logs["kl"] == 0.0
    out.loss.backward()
    assert all(leaf.grad is not None and leaf.grad.shape == leaf.shape for leaf in leaves)


@pytest.mark.parametrize("family", ["gaussian", "dirichlet"])
def test_latents_are_draws_of_q_and_the_gaussian_gradient_is_pathwise(family: str) -> None:
    """The loss sees draws of q (mean and variance within 5 standard errors of q's), and for
    the Gaussian the gradient of E[|z|^2] matches the closed form (2μ, 2σ) within 5 standard
    errors of the per-draw pathwise gradients (2z, 2zε)."""
    n = 20000
    scores = _scores(family, 1)
    leaves = scores if isinstance(scores, tuple) else (scores,)
    leaves = tuple(leaf.clone().requires_grad_(True) for leaf in leaves)
    seen = []

    def loss_fn(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        seen.append(z.detach().clone())
        return (z**2).sum(-1)

    est = Reparameterized(family, n_samples=n, kl_coeff=0.0)
    out = est(leaves if family == "gaussian" else leaves[0], loss_fn)
    z = seen[0]
    if family == "gaussian":
        mean, std = leaves[0].detach()[0], leaves[1].detach()[0]
        var = std**2
    else:
        alpha = leaves[0].detach()[0]
        a0 = alpha.sum()
        mean, var = alpha / a0, alpha * (a0 - alpha) / (a0**2 * (a0 + 1))
    assert ((z.mean(0) - mean).abs() <= 5 * (var / n).sqrt()).all()
    var_se = (((z - mean) ** 2).var(0) / n).sqrt()
    assert ((z.var(0) - var).abs() <= 5 * var_se).all()
    if family == "gaussian":
        grads = torch.autograd.grad(out.loss, leaves)
        eps = (z - mean) / std
        for got, want, per_draw in zip(grads, (2 * mean, 2 * std), (2 * z, 2 * z * eps)):
            se = per_draw.std(0) / n**0.5
            assert ((got[0] - want).abs() <= 5 * se).all(), (got, want, se)
