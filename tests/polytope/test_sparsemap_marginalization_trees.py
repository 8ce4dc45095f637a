"""SparseMAP marginalization over trees: the estimator's expected loss and gradient against the
brute-force projection onto the tree polytope (all trees enumerated).

For a linear loss ``l(z) = <c, z>`` the expected loss is ``<c, mu*>`` with ``mu*`` the unique
SparseMAP marginals, whatever decomposition of ``mu*`` into trees the estimator picked, so the
value and its gradient are functions of the scores alone.
"""

from __future__ import annotations

import pytest
import torch
from _polytope_bruteforce import project_bruteforce

from latentgrad.estimators import SparseMAPMarginalization
from latentgrad.structures import Arborescence, SpanningTree

F64 = torch.float64
B = 3
TREES = [SpanningTree(4), Arborescence(4, root=0), Arborescence(4)]


def _scores_of(structure, x: torch.Tensor) -> torch.Tensor:
    """Scores from free parameters: symmetrised for undirected trees."""
    return (x + x.mT) / 2 if isinstance(structure, SpanningTree) else x


def _bruteforce_expected_loss(structure, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    scores = _scores_of(structure, x)
    mu = torch.stack([project_bruteforce(scores[b], structure) for b in range(B)])
    return (c * mu).flatten(1).sum(-1)


@pytest.mark.parametrize("structure", TREES, ids=repr)
def test_linear_loss_value_and_gradient_match_the_bruteforce_projection(structure):
    gen = torch.Generator().manual_seed(3)
    n = structure.n
    x = 1.5 * torch.randn(B, n, n, generator=gen, dtype=F64)
    c = torch.randn(B, n, n, generator=gen, dtype=F64)

    def loss_fn(z, rows):
        return (z * c[rows]).flatten(1).sum(-1)

    est = SparseMAPMarginalization(structure)
    xr = x.clone().requires_grad_(True)
    out = est(_scores_of(structure, xr), loss_fn)
    torch.testing.assert_close(out.expected_loss.detach(),
                               _bruteforce_expected_loss(structure, x, c))  # fmt: skip
    (grad,) = torch.autograd.grad(out.loss, xr)
    eps = 1e-6
    fd = torch.zeros_like(x)
    for i in range(n * n):
        e = torch.zeros(n * n, dtype=F64)
        e[i] = eps
        e = e.view(n, n)
        up = _bruteforce_expected_loss(structure, x + e, c)
        down = _bruteforce_expected_loss(structure, x - e, c)
        fd.view(B, -1)[:, i] = (up - down) / (2 * eps) / B
    torch.testing.assert_close(grad, fd, atol=1e-6, rtol=1e-5)
