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
