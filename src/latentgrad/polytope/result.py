"""``SparseMAPResult``: a sparse distribution over structures and its marginals."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class SparseMAPResult(NamedTuple):
    """Output of :func:`~latentgrad.polytope.sparsemap.sparsemap` and
    :func:`~latentgrad.polytope.topk_sparsemax.topk_sparsemax`.

    support: ``(*batch, S, *score_shape)`` 0/1 structures, heaviest first, zero-padded past
        ``support_size`` (S is the largest support size in the batch).
    weights: ``(*batch, S)`` a distribution over ``support`` (zero on the padding);
        differentiable in the scores.
    marginals: ``(*batch, *score_shape)`` ``sum_j weights_j support_j``; differentiable.
    support_size: ``(*batch,)`` long, number of structures with positive weight.
    n_iter: ``(*batch,)`` long, active-set iterations spent (0 for top-k sparsemax).
    exact: ``(*batch,)`` bool certificate. SparseMAP: the solver stopped at an optimum, i.e.
        the Frank-Wolfe gap passed the tolerance test, or the MAP oracle's best structure for
        θ − μ was already active (gap zero up to rounding); False after the iteration cap.
        Top-k sparsemax: ``support_size < k``, so the result equals sparsemax over all
        structures.
    """

    support: Tensor
    weights: Tensor
    marginals: Tensor
    support_size: Tensor
    n_iter: Tensor
    exact: Tensor
