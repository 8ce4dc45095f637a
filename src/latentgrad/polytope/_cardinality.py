"""SparseMAP in closed form on cardinality polytopes P = {μ ∈ [0, 1]ⁿ : lo ≤ Σ μ ≤ hi}.

Bit vectors (lo = 0, hi = d), bit vectors with a budget B (0, B), k-subsets (k, k) and
categorical variables (1, 1): the box cut by at most one linear constraint, with integer bounds,
so P is exactly the convex hull of its 0/1 points (the constraint matrix is totally unimodular).

Projection (Niculae et al., 2018, §3; the capped-simplex projection of Wang & Lu, 2015):
μ = clip(θ − τ, 0, 1) with τ = 0 where lo ≤ Σ clip(θ, 0, 1) ≤ hi, and otherwise the root of
f(τ) = Σ clip(θ − τ, 0, 1) = K, K the violated bound. f is piecewise linear with breakpoints
θᵢ and θᵢ − 1: one sort of the 2n breakpoints locates the piece holding K, on which τ is
τ = (Σ_F θᵢ + |O| − K) / |F| (F the fractional coordinates, O those at 1). No active set.

Decomposition into at most |F| + 1 structures (Carathéodory's bound on the face of μ), from
sorted breakpoints on [0, 1): each fractional coordinate i covers an arc of length μᵢ of the
circle [0, 1), the structure at u ∈ [0, 1) is O ∪ {i : u ∈ arcᵢ}, and the weight of a structure
is the length of the interval of u that selects it.
- Box face (no active constraint and |O| + |F| ≤ hi): arcs [0, μᵢ), the staircase
  1[μ > u] (sorting the fractional values; the sets are nested).
- Otherwise systematic sampling (Madow, 1949): consecutive arcs [C_{i−1}, C_i) mod 1 with
  C the cumulative sum of μ_F, so every u selects exactly ⌊Σ μ_F⌋ or ⌈Σ μ_F⌉ coordinates: exactly
  K − |O| on the constraint, at most hi − |O| elsewhere.
The weights are differences of the sorted breakpoints, differentiable in θ by autograd (the
same piecewise-linear function as the active set's weights on the same support).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..structures.base import Structure
from ..structures.bitvector import BitVector
from ..structures.categorical import Categorical
from ..structures.ksubset import KSubset

_GRID_ULPS = 8


def cardinality_bounds(structure: Structure) -> tuple[int, int] | None:
    """``(lo, hi)`` when ``structure``'s marginal polytope is {μ ∈ [0,1]ⁿ : lo ≤ Σμ ≤ hi} (the
    exact classes, not subclasses, which may redefine the oracles), else None."""
    kind = type(structure)
    if kind is BitVector:
        return 0, structure.d if structure.budget is None else structure.budget
    if kind is KSubset:
        return structure.k, structure.k
    if kind is Categorical:
        return 1, 1
    return None


def _threshold(theta: Tensor, target: Tensor) -> Tensor:
    """The root τ ``(B,)`` of Σᵢ clip(θᵢ − τ, 0, 1) = target for ``theta`` ``(B, n)`` and integer
    ``target`` ``(B,)`` in [0, n] (no autograd).

    Walking the 2n breakpoints c (θᵢ and θᵢ − 1) downwards, f rises with slope m_j = #{θᵢ ≥ c_j}
    − #{θᵢ − 1 ≥ c_j} between c_j and c_{j+1}; f(c_j) is a cumulative sum, K lies on the last
    piece starting below it, and linear interpolation there gives τ."""
    n = theta.shape[1]
    breaks, idx = torch.cat([theta, theta - 1.0], 1).sort(1, descending=True)
    slope = torch.where(idx < n, 1.0, -1.0).to(theta.dtype).cumsum(1)
    rise = slope[:, :-1] * (breaks[:, :-1] - breaks[:, 1:])
    f = torch.cat([torch.zeros_like(rise[:, :1]), rise.cumsum(1)], 1)
    piece = ((f < target.unsqueeze(1)).sum(1, keepdim=True) - 1).clamp(0, 2 * n - 2)
    left, f_left = breaks.gather(1, piece), f.gather(1, piece)
    return (left - (target.unsqueeze(1) - f_left) / slope.gather(1, piece).clamp_min(1.0))[:, 0]


def project(theta: Tensor, lo: int, hi: int) -> tuple[Tensor, Tensor]:
    """μ = argmin_{μ ∈ P} ‖μ − θ‖² for ``theta`` ``(B, n)``, differentiable; also returns the
    row's active cardinality ``(B,)`` (K where Σμ = K is enforced, else NaN).

    Runs on θ − θ_(K) clamped to [−2, 2] (see below), exact at any scale of θ.
    τ is searched without autograd and then recomputed on the piece it found,
    τ = (Σ_F θ + |O| − K) / |F|, which is exact there and carries the gradient
    ∂τ/∂θᵢ = 1[i ∈ F] / |F|."""
    n = theta.shape[1]
    with torch.no_grad():
        clipped = theta.clamp(0.0, 1.0).sum(1)
        below, above = clipped < lo, clipped > hi
        fixed = below | above if lo < hi else torch.ones_like(below)
        target = torch.where(below, float(lo), float(hi))
        # where Σμ = K is enforced, τ lies in [θ_(K) − 1, θ_(K)) (θ_(K) the K-th largest score):
        # coordinates more than 2 away from θ_(K) are 0 or 1 whatever τ, so the search runs on
        # θ − θ_(K) clamped to [−2, 2], exact at any scale (θ and θ − 1 are equal in float64
        # from |θ| ~ 1e16 on, and the sums of the formula below round at the scale of |θ|)
        constrained = lo > 0 or hi < n
        anchor = torch.zeros_like(clipped)
        if constrained:
            largest = theta.topk(min(max(hi, 1), n), dim=1).values  # θ_(1) ≥ … ≥ θ_(hi)
            rank = (target.long() - 1).clamp(0, largest.shape[1] - 1).unsqueeze(1)
            anchor = torch.where(fixed, largest.gather(1, rank)[:, 0], 0.0)
    theta = (theta - anchor.unsqueeze(1)).clamp(-2.0, 2.0)
    with torch.no_grad():
        tau0 = _threshold(theta, target) if constrained else torch.zeros_like(clipped)
        tau0 = torch.where(fixed, tau0, 0.0)
        shifted = theta - tau0.unsqueeze(1)
        inside = (shifted > 0) & (shifted < 1)
        one = (shifted >= 1).to(theta.dtype)
        frac = inside.to(theta.dtype)
        n_frac = frac.sum(1)
    # on its piece, Σ_F (θ − τ) + |O| = K
    tau = ((theta * frac).sum(1) + one.sum(1) - target) / n_frac.clamp_min(1.0)
    tau = torch.where(fixed, tau, 0.0)
    mu = torch.where(inside, (theta - tau.unsqueeze(1)).clamp(0.0, 1.0), one)
    return mu, torch.where(fixed, target, float("nan"))


def decompose(
    mu: Tensor, hi: int, fixed: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """Structures and weights with ``Σ_j weights_j support_j = mu`` for ``mu`` ``(B, n)`` in P.

    ``fixed`` ``(B,)`` the cardinality K where Σ mu = K is enforced (NaN elsewhere). Returns
    ``support`` ``(B, S, n)`` 0/1 in ``dtype``, ``weights`` ``(B, S)`` heaviest first, zero
    past ``support_size`` ``(B,)``; S is the largest support size (at least 1), one host sync."""
    rows, n = mu.shape
    value = mu.detach()
    one, frac = value >= 1, (value > 0) & (value < 1)
    n_one = one.sum(1, keepdim=True).to(mu.dtype)
    on_face = fixed.isnan().unsqueeze(1)
    staircase = on_face & (n_one + frac.sum(1, keepdim=True) <= hi)

    # systematic sampling: C the cumulative mass of μ_F, its values clamped so that every step
    # lies in [0, 1] and the chain closes exactly on K − |O| (stays below hi − |O| on the face)
    # despite rounding; the clamps bind only at rounding level, the gradient passes through
    cum = (mu * frac).cumsum(1)
    total = torch.where(on_face, hi - n_one, fixed.unsqueeze(1) - n_one)
    after = frac.sum(1, keepdim=True) - frac.cumsum(1)
    least = torch.where(on_face, -float("inf"), total - after)
    raw = cum.detach()
    cum = cum + (torch.clamp(raw, least, total) - raw)
    whole = cum.detach().floor()
    wraps = whole.diff(dim=1, prepend=torch.zeros_like(whole[:, :1])) > 0
    ends = torch.where(staircase, mu * frac, cum - whole)

    # breakpoints on [0, 1]: a leading 0 (the start of the first arc), each arc's end, and 1
    breaks, order = torch.cat([torch.zeros_like(ends[:, :1]), ends], 1).sort(dim=1, stable=True)
    position = torch.empty_like(order).scatter_(
        1, order, torch.arange(n + 1, device=mu.device).expand(rows, -1)
    )
    breaks = torch.cat([breaks, torch.ones_like(breaks[:, :1])], 1)
    # breakpoints closer than the rounding of the cumulative sums are one breakpoint: each
    # takes the value of the first of its cluster (1 stays 1), so no sliver structure appears
    grid = _GRID_ULPS * n * max(hi, 1) * torch.finfo(mu.dtype).eps
    first = torch.cat([breaks.new_ones(rows, 1, dtype=torch.bool), breaks.diff(dim=1) >= grid], 1)
    index = torch.arange(n + 2, device=mu.device)
    cluster = torch.where(first, index, 0).cummax(1).values
    breaks = torch.cat([breaks.gather(1, cluster)[:, :-1], breaks[:, -1:]], 1)
    gaps = breaks.diff(dim=1)  # interval j = [breaks_j, breaks_j+1) selects structure j

    support_size = (gaps.detach() > 0).sum(1)
    width = max(int(support_size.max()), 1) if rows else 1
    weights, interval = gaps.sort(dim=1, descending=True, stable=True)
    weights, interval = weights[:, :width], interval[:, :width]
    start = torch.where(staircase, 0, position[:, :-1])
    covered = _cover(interval, start, position[:, 1:], wraps & ~staircase, frac, one, n)
    positive = (weights.detach() > 0).to(torch.uint8).unsqueeze(2)
    support = (covered.view(torch.uint8) * positive).to(dtype)
    return support, weights, support_size


def _cover(
    interval: Tensor, start: Tensor, end: Tensor, wraps: Tensor, frac: Tensor, one: Tensor, n: int
) -> Tensor:
    """Membership ``(B, S, n)`` bool of coordinate i in the structure of interval j.

    On a ring of R ≥ n + 3 positions (the n + 1 intervals, then unused ones), coordinate i is in
    structure j iff (j − lo_i) mod R < len_i: the arc from ``start`` to ``end`` (wrapping
    through the unused positions when ``wraps``), every position for coordinates at 1 and
    for full turns (lo = n + 2 puts the one uncovered position at n + 1), none at 0. With
    R = 256 the mod is uint8 wrap-around, the cheapest kernel."""
    ring, kind = (256, torch.uint8) if n + 3 <= 256 else (n + 3, torch.int32)
    full = one | (frac & wraps & (end >= start))
    lo = torch.where(full, n + 2, start)
    length = torch.where(wraps, ring - start + end, end - start)
    length = torch.where(full, ring - 1, torch.where(frac, length, 0))
    rel = interval.to(kind).unsqueeze(2) - lo.to(kind).unsqueeze(1)
    if ring != 256:
        rel = rel.remainder_(ring)
    return rel < length.to(kind).unsqueeze(1)
