"""Brute-force checks shared by the structure tests (float64, by enumerating every structure)."""

from __future__ import annotations

import torch

from latentgrad.structures import Arborescence, BitVector, Categorical, KSubset, SpanningTree

#: One small instance of every kind of structure (each enumerates in a few hundred values).
EVERY_KIND = [
    Categorical(3),
    BitVector(3),
    BitVector(3, budget=1),
    KSubset(4, 2),
    SpanningTree(3),
    Arborescence(3),
    Arborescence(3, root=1),
]


def brute(structure, scores):
    """All structures ``(N, d)`` and their scores ``(*batch, N)`` (``-inf`` never times 0)."""
    z = structure.enumerate().to(scores.dtype)
    values = torch.where(z.bool(), scores.unsqueeze(-2), torch.zeros_like(z)).sum(-1)
    return z, values


def assert_log_partition_gradient_is_marginals(structure, scores, gradgrad_marginals=False):
    """d log Z / d theta = mu; gradcheck and gradgradcheck of log Z; gradcheck of mu (and its
    gradgradcheck with ``gradgrad_marginals``). ``scores`` (*batch, d) float64, requiring grad."""
    (grad,) = torch.autograd.grad(structure.log_partition(scores).sum(), scores)
    torch.testing.assert_close(grad, structure.marginals(scores))
    assert torch.autograd.gradcheck(structure.log_partition, (scores,))
    assert torch.autograd.gradgradcheck(structure.log_partition, (scores,))
    assert torch.autograd.gradcheck(structure.marginals, (scores,))
    if gradgrad_marginals:
        assert torch.autograd.gradgradcheck(structure.marginals, (scores,))


def assert_marginal_jacobian_is_enumeration_covariance(structure, scores):
    """d mu / d theta = Cov_p(z) under the Gibbs distribution p, by enumeration; ``scores`` (d,)."""
    z, values = brute(structure, scores)
    p = torch.softmax(values, -1)
    mu = p @ z
    cov = (z * p.unsqueeze(-1)).T @ z - torch.outer(mu, mu)
    torch.testing.assert_close(torch.autograd.functional.jacobian(structure.marginals, scores), cov)
