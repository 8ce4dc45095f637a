"""Top-k sparsemax over a structure (Correia et al., 2020).

Take the k best structures z_1..z_k from ``structure.topk`` with scores s_j = <θ, z_j> and put
p = sparsemax(s) on them. The k-best set is treated as constant: the gradient flows through the
sparsemax Jacobian w.r.t. s and ∂s_j/∂θ = z_j. Sparsemax only sees score differences, so it is
given s_j − s_1 = <θ, z_j − z_1>, summed over the entries where z_j and z_1 differ: the rounding
then scales with those entries, not with the whole structure's score (at θ ≈ 1e4 in float32 the
plain sums are off by ~1e-3), and the gradient is unchanged (the Jacobian annihilates a shift
shared by all s_j). Certificate: when |supp p| < k every omitted
structure scores ≤ s_k ≤ τ, so p equals sparsemax over ALL structures.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_no_nan
from ..mappings import sparsemax
from ..structures.base import Structure
from .result import SparseMAPResult


def check_topk_oracle(structure: object) -> Structure:
    """``structure`` if it is a :class:`~latentgrad.structures.base.Structure` with an exact
    k-best oracle (``topk``), else a ``TypeError`` naming it."""
    if not isinstance(structure, Structure):
        raise TypeError(f"structure must be a latentgrad Structure, got {type(structure).__name__}")
    if type(structure).topk is Structure.topk:
        raise TypeError(f"structure {structure!r} has no exact k-best oracle (topk)")
    return structure


def topk_sparsemax(scores: Tensor, structure: Structure, k: int) -> SparseMAPResult:
    """Sparsemax over the ``k`` highest-scoring structures.

    Args:
        scores: ``(*batch, *structure.score_shape)`` floating-point scores θ; ``-inf`` entries are
            allowed where the structure allows them (a structure using one gets weight 0).
        structure: a :class:`~latentgrad.structures.base.Structure` with an exact ``topk``.
        k: number of structures to consider, ``1 <= k`` (and at most the structure's count).

    Returns:
        :class:`SparseMAPResult` with ``support`` the positive-weight structures, best first
        (``S = max support_size <= k``), ``weights`` = sparsemax of their scores (differentiable),
        ``marginals`` = Σ_j p_j z_j, ``n_iter`` = 0 and ``exact = support_size < k``.
    """
    check_topk_oracle(structure)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    structure.check_scores(scores)
    check_no_nan(scores, "scores")
    ev = structure.event_dim
    batch = structure.batch_shape(scores)

    z, _ = structure.topk(scores.detach(), k)
    z = z.detach()
    gaps = structure.score(scores.unsqueeze(-ev - 1), z - z.narrow(-ev - 1, 0, 1))  # s_j − s_1
    p = sparsemax(gaps, dim=-1)

    size = (p > 0).sum(-1)
    width = max(int(size.max()), 1) if size.numel() else 1
    p = p[..., :width]
    keep = (p > 0).view(*p.shape, *([1] * ev))
    support = torch.where(keep, z.narrow(-ev - 1, 0, width), 0.0)
    marginals = (p.view(*p.shape, *([1] * ev)) * support).sum(-ev - 1)
    return SparseMAPResult(
        support=support,
        weights=p,
        marginals=marginals,
        support_size=size,
        n_iter=torch.zeros(batch, dtype=torch.long, device=scores.device),
        exact=size < k,
    )
