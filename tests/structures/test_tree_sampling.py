"""The contraction sampler's two eliminations: the linear one gives the head probabilities of
brute force and of the log-space one wherever it is used, the dispatch sends the examples it
cannot serve to the log-space one, and extreme finite scores give valid trees, never NaN."""

from __future__ import annotations

import pytest
import torch

from latentgrad.structures import tree_sampling as ts
from latentgrad.structures.arborescence import Arborescence
from latentgrad.structures.spanning_tree import SpanningTree

F64 = torch.float64
EPS = torch.finfo(F64).eps


def _head_probs(logw: torch.Tensor, log_h: torch.Tensor) -> torch.Tensor:
    """``P(head(k) = u) ∝ w(u -> k) h(u)`` for the last node k of ``logw`` ``(N, k+1, k+1)``."""
    return torch.softmax(logw[:, :-1, -1] + log_h, dim=-1)


def _linear_log_h(logw: torch.Tensor) -> torch.Tensor:
    walk = ts._linear_walk(logw)
    return ts._linear_absorption(walk, torch.empty_like(walk))


def _brute_head_probs(logw: torch.Tensor) -> torch.Tensor:
    """``P(head(n-1) = u)`` by enumerating the arborescences rooted at 0, ``(N, n-1)``."""
    n = logw.shape[-1]
    space = Arborescence(n, root=0).enumerate().to(F64)  # (T, n, n) 0/1
    probs = torch.softmax((logw[:, None] * space).sum((-2, -1)), dim=-1)  # (N, T)
    return probs @ space[:, : n - 1, n - 1]


def _graphs(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Log weights ``(8, n, n)`` of several kinds, with huge diagonals (which must be ignored)."""
    g = torch.Generator().manual_seed(seed)
    kinds = {f"normal x{s}": s * torch.randn(8, n, n, generator=g, dtype=F64) for s in (1, 30)}
    # ListOps' padding: the last nodes hang from the root at +1000, every other arc at -1000
    pad = 3 * torch.randn(8, n, n, generator=g, dtype=F64)
    pad[:, :, n // 2 :] = -1e3
    pad[:, n // 2 :, :] = -1e3
    pad[:, 0, n // 2 :] = 1e3
    kinds["padded +-1000"] = pad
    # a two-cycle 1 <-> 2 bound 290 above every other arc (root shares about exp(-290))
    cycle = torch.randn(8, n, n, generator=g, dtype=F64)
    cycle[:, 1, 2] = cycle[:, 2, 1] = 290.0
    kinds["two-cycle at 290"] = cycle
    for logw in kinds.values():
        logw.diagonal(dim1=-2, dim2=-1).copy_(2e3 * torch.rand(8, n, generator=g, dtype=F64) - 1e3)
    return kinds


def _tolerance(logw: torch.Tensor) -> float:
    """Both sides sum O(k^2) nonnegative terms whose logs are O(k max|logw|) in size: each
    probability is off by at most that many roundings of the largest term, times 8."""
    k = logw.shape[-1] - 1
    scale = logw.masked_fill(torch.eye(k + 1, dtype=torch.bool), 0).abs().max().item()
    return 8 * k * k * (1 + scale) * EPS


@pytest.mark.parametrize("n", [3, 4, 6])
def test_linear_head_probabilities_match_brute_force(n):
    for name, logw in _graphs(n, seed=n).items():
        assert (ts._log_root_share(logw) >= ts._LINEAR_MIN_LOG_ROOT_SHARE).all(), name
        log_h = _linear_log_h(logw)
        assert torch.isfinite(log_h).all(), name
        torch.testing.assert_close(_head_probs(logw, log_h), _brute_head_probs(logw),
                                   rtol=0, atol=_tolerance(logw), msg=name)


@pytest.mark.parametrize("n", [12, 30])
def test_linear_head_probabilities_match_the_log_space_elimination(n):
    for name, logw in _graphs(n, seed=n).items():
        log_h = _linear_log_h(logw)
        assert torch.isfinite(log_h).all(), name
        torch.testing.assert_close(_head_probs(logw, log_h),
                                   _head_probs(logw, ts._log_absorption(logw)),
                                   rtol=0, atol=_tolerance(logw), msg=name)


def _tight_pair(n: int, strength: float, seed: int) -> torch.Tensor:
    """Scores ``(n, n)`` N(0, 1) but for the arcs 1 -> 2 and 2 -> 1 at ``strength``: every tree
    takes exactly one of them, so the Gibbs distribution stays spread whatever the strength."""
    theta = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    theta[1, 2] = theta[2, 1] = strength
    return theta


def test_examples_with_a_tiny_root_share_take_the_log_space_elimination_and_stay_exact():
    tight = _tight_pair(5, 1e3, seed=1)  # root shares about exp(-1000): the log-space path
    edge = _tight_pair(5, 290.0, seed=2)  # about exp(-290): still the linear path
    theta = torch.stack([tight, edge, torch.randn(5, 5, generator=torch.Generator().manual_seed(3),
                                                  dtype=F64)])
    share = ts._log_root_share(theta)
    assert share[0] < ts._LINEAR_MIN_LOG_ROOT_SHARE <= share[1:].min()
    structure = Arborescence(5, root=0)
    z = structure.sample(theta, (4000,), generator=torch.Generator().manual_seed(4))
    mu = structure.marginals(theta)
    assert ((0.05 < mu[:2, 1, 2]) & (mu[:2, 1, 2] < 0.95)).all()  # spread, not the MAP tree
    freq = z.mean(0)
    stderr = (mu * (1 - mu) / 4000).sqrt()
    assert ((freq - mu).abs() <= 5 * stderr + 1e-12).all()


def _assert_valid(structure, z: torch.Tensor) -> None:
    """Each draw of ``z`` ``(..., n, n)`` is a spanning tree / an arborescence of ``structure``."""
    n = structure.n
    assert set(z.unique().tolist()) <= {0.0, 1.0}
    if isinstance(structure, SpanningTree):
        assert (z == z.mT).all() and (z.sum((-2, -1)) == 2 * (n - 1)).all()
        reach = torch.linalg.matrix_power(torch.eye(n, dtype=z.dtype) + z, n - 1)
        assert (reach > 0).all()
        return
    root = structure.root
    arcs = z.clone()
    if root is None:
        assert (z.diagonal(dim1=-2, dim2=-1).sum(-1) == 1).all()
        start = z.diagonal(dim1=-2, dim2=-1).argmax(-1)
        arcs.diagonal(dim1=-2, dim2=-1).zero_()
    else:
        start = torch.full(z.shape[:-2], root, dtype=torch.long)
        assert (z[..., :, root] == 0).all()
    heads = z.sum(-2)
    assert (heads.sum(-1) == n - (root is not None)).all() and (heads <= 1).all()
    reach = torch.linalg.matrix_power(torch.eye(n, dtype=z.dtype) + arcs, n - 1)
    from_start = reach.gather(-2, start[..., None, None].expand(*start.shape, 1, n))
    assert (from_start > 0).all()


@pytest.mark.parametrize(
    "structure", [SpanningTree(9), Arborescence(9, root=0), Arborescence(9, root=4),
                  Arborescence(9)], ids=repr)
@pytest.mark.parametrize("kind", ["normal x1000", "uniform +-1000", "mixed"])
def test_extreme_finite_scores_give_valid_trees(structure, kind):
    g = torch.Generator().manual_seed(5)
    shape = (6, 9, 9)
    if kind == "normal x1000":
        theta = 1e3 * torch.randn(shape, generator=g, dtype=F64)
    elif kind == "uniform +-1000":
        theta = 2e3 * torch.rand(shape, generator=g, dtype=F64) - 1e3
    else:  # half the examples moderate, half extreme: both eliminations in one batch
        theta = torch.randn(shape, generator=g, dtype=F64) * torch.tensor([1.0, 1e3]).repeat(3)[
            :, None, None].to(F64)
    if isinstance(structure, SpanningTree):
        theta = (theta + theta.mT) / 2
    for dtype in (F64, torch.float32):
        z = structure.sample(theta.to(dtype), (16,), generator=torch.Generator().manual_seed(6))
        assert not z.isnan().any()
        _assert_valid(structure, z)
