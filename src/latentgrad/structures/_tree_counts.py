"""Matrix-tree log-counts and their gradients (marginals): the dense fast path on every row,
the log-domain elimination on the rows it does not trust.

Each function takes float64 log weights ``logw`` ``(B, n, n)`` (arc i -> j; diagonal ignored),
runs ``_dense_matrix_tree`` on the whole batch, then gathers the untrusted rows, recomputes them
with ``_matrix_tree`` (autograd of the elimination for the marginals) and scatters them back:
one batched call each, no loop over rows. Everything stays differentiable (twice and more).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._dense_matrix_tree import (
    dense_log_count_rooted_at_zero,
    dense_log_count_single_root,
    dense_log_count_undirected,
    dense_marginals_rooted_at_zero,
    dense_marginals_single_root,
    dense_marginals_undirected,
    symmetric_float64,
)
from ._matrix_tree import log_count_every_root, log_count_rooted_at_zero
from .base import autograd_gradients


def with_fallback(
    fast: Callable[..., tuple[Tensor, Tensor]], slow: Callable[..., Tensor], *args: Tensor
) -> Tensor:
    """``fast(*args)`` on every row; the rows it does not trust are gathered, recomputed by
    ``slow`` and scattered back (differentiable through both). ``args`` share the batch dim 0."""
    value, ok = fast(*args)
    if bool(ok.all()):
        return value
    bad = (~ok).nonzero().squeeze(-1)
    return value.index_put((bad,), slow(*(a.index_select(0, bad) for a in args)))


def _single_root_eliminated(logw: Tensor, root_scores: Tensor) -> Tensor:
    return torch.logsumexp(root_scores + log_count_every_root(logw), dim=-1)


def log_count_undirected(logw: Tensor) -> Tensor:
    """``log`` weighted spanning-tree count of symmetric ``logw``: ``(B,)``."""
    return with_fallback(dense_log_count_undirected, log_count_rooted_at_zero, logw)


def marginals_undirected(scores: Tensor) -> Tensor:
    """Edge marginals of the symmetrised scores ``(θ + θᵀ)/2`` (any float dtype; computed in
    float64): ``(B, n, n)`` symmetric, zero diagonal, in ``scores``' dtype."""

    def eliminated(raw: Tensor) -> Tensor:
        lw = symmetric_float64(raw)
        (grad,) = autograd_gradients(log_count_rooted_at_zero, lw)  # arcs oriented away from node 0
        return (grad + grad.mT).to(raw.dtype)

    return with_fallback(dense_marginals_undirected, eliminated, scores)


def log_count_rooted(logw: Tensor) -> Tensor:
    """``log`` weighted count of arborescences rooted at node 0: ``(B,)``."""
    return with_fallback(dense_log_count_rooted_at_zero, log_count_rooted_at_zero, logw)


def marginals_rooted(logw: Tensor) -> Tensor:
    """Arc marginals of arborescences rooted at node 0: ``(B, n, n)`` (column 0 zero), in the
    dtype of ``logw`` (any float dtype; computed in float64)."""

    def eliminated(raw: Tensor) -> Tensor:
        return autograd_gradients(log_count_rooted_at_zero, raw.to(torch.float64))[0].to(raw.dtype)

    return with_fallback(dense_marginals_rooted_at_zero, eliminated, logw)


def log_count_single_root(logw: Tensor, root_scores: Tensor) -> Tensor:
    """``log sum_j exp(ρ_j) A_j`` ``(B,)``; ``A_j``: arborescences rooted at j, ``ρ`` ``(B, n)``."""
    return with_fallback(dense_log_count_single_root, _single_root_eliminated, logw, root_scores)


def marginals_single_root(scores: Tensor) -> Tensor:
    """Single-root marginals ``(B, n, n)`` of ``scores`` (arc scores off the diagonal, root
    scores on it; any float dtype, computed in float64, returned in it): arcs off the diagonal,
    root children on it."""

    def eliminated(raw: Tensor) -> Tensor:
        def log_count(s: Tensor) -> Tensor:  # the elimination ignores the arcs' diagonal
            return _single_root_eliminated(s, s.diagonal(dim1=-2, dim2=-1))

        (grad,) = autograd_gradients(log_count, raw.to(torch.float64))
        return grad.to(raw.dtype)

    return with_fallback(dense_marginals_single_root, eliminated, scores)
