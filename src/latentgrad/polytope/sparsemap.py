"""SparseMAP: the Euclidean projection of scores onto a structure's marginal polytope.

μ*(θ) = argmax_{μ ∈ conv 𝒵} <θ, μ> − ½‖μ‖² (Niculae et al., 2018), returned with a sparse
distribution p over structures such that μ* = Σ_z p_z z.

Two solvers. Where conv 𝒵 is a box cut by at most one cardinality constraint (bit vectors with
or without a budget, k-subsets, categorical), a threshold search gives μ* and sorting gives a
decomposition into vertices (:mod:`latentgrad.polytope._cardinality`); autograd differentiates
both. Any other structure goes through the batched active-set solver of
:mod:`latentgrad.polytope.active_set`, whose backward works on the final active set
A⁺ = {p_z > 0}: with P the p-block of [[ZᵀZ, 1], [1ᵀ, 0]]⁻¹, ∂p/∂s = P and s_z = <θ, z>, so the
VJP is ∂L/∂θ = Z P (∂L/∂p + Zᵀ ∂L/∂μ): one small linear solve, no unrolling of iterations.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._autograd import apply
from .._validation import check_choice, check_finite
from ..structures.base import Structure
from ._bordered import bordered_solve
from ._cardinality import cardinality_bounds, decompose, project
from .active_set import solve_active_set
from .result import SparseMAPResult

DEFAULT_MAX_ITER = 1000
DEFAULT_TOL = 1e-9
SOLVERS = ("auto", "active_set", "threshold")


class _ActiveSetWeights(torch.autograd.Function):
    """``p(s)``: weights on a fixed active set as a function of its structure scores ``s``.

    Forward returns the solver's weights; backward returns ``P g`` (P symmetric). The backward
    is linear in ``g`` with ``P`` constant on the active set, and is computed with autograd
    tracking ``g``: a double backward (``create_graph``) gets ``d(P g)/dg = P`` and a zero
    second derivative in the scores (p is piecewise linear in them). (``once_differentiable``
    silently cut that path: ``torch.autograd.grad`` never reached its error node and returned
    zeros, e.g. for a gradient penalty through the marginals.)"""

    @staticmethod
    def forward(support_scores: Tensor, weights: Tensor, gram: Tensor, mask: Tensor) -> Tensor:
        return weights.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        _, _, gram, mask = inputs
        ctx.save_for_backward(gram, mask)

    @staticmethod
    def backward(ctx: Any, grad_weights: Tensor) -> tuple[Tensor | None, ...]:
        gram, mask = ctx.saved_tensors
        return bordered_solve(gram, mask, grad_weights), None, None, None


def _check_structure(structure: object) -> Structure:
    if not isinstance(structure, Structure):
        raise TypeError(f"structure must be a latentgrad Structure, got {type(structure).__name__}")
    return structure


def _check_init(
    init: object, structure: Structure, batch: torch.Size, ref: Tensor
) -> tuple[Tensor, Tensor] | None:
    """``init``: a :class:`SparseMAPResult` or a pair ``(support, weights)`` -> flat tensors."""
    if init is None:
        return None
    if isinstance(init, SparseMAPResult):
        support, weights = init.support, init.weights
    elif isinstance(init, tuple) and len(init) == 2:
        support, weights = init
    else:
        raise TypeError("init must be a SparseMAPResult or a pair (support, weights)")
    for name, x in (("init support", support), ("init weights", weights)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    shape = structure.score_shape
    n = weights.shape[-1] if weights.dim() else 0
    if tuple(weights.shape) != (*batch, n) or tuple(support.shape) != (*batch, n, *shape) or n < 1:
        raise ValueError(
            f"init must hold support (*batch, S, *score_shape) = {(*batch, 'S', *shape)} and "
            f"weights (*batch, S) with S >= 1, got {tuple(support.shape)} and "
            f"{tuple(weights.shape)}"
        )
    weights = weights.detach().to(ref.dtype).reshape(-1, n)
    support = support.detach().to(ref.dtype).reshape(-1, n, *shape)
    check_finite(weights, "init weights")
    if bool((weights < 0).any()) or bool((weights.sum(-1) <= 0).any()):
        raise ValueError("init weights must be nonnegative with a positive sum per example")
    if bool(((support != 0) & (support != 1)).any()):
        raise ValueError("init support must hold 0/1 structures")
    used = support[weights > 0]
    if used.numel() and not bool(structure.contains(used).all()):
        raise ValueError(f"init support must hold structures of {structure!r} where its weight is "
                         "positive; got a 0/1 tensor that is not one")
    return support, weights


def check_solver_options(structure: Structure, max_iter: int = DEFAULT_MAX_ITER,
                         tol: float = DEFAULT_TOL, solver: str = "auto") -> None:
    """``ValueError`` naming the option where ``max_iter``, ``tol`` or ``solver`` is not one
    ``sparsemap`` accepts for ``structure``."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < math.inf:
        raise ValueError(f"tol must be a positive finite float, got {tol!r}")
    check_choice(solver, "solver", SOLVERS)
    if solver == "threshold" and cardinality_bounds(structure) is None:
        raise ValueError(
            f"solver='threshold' needs a BitVector, KSubset or Categorical structure, got "
            f"{structure!r}; use solver='active_set'"
        )


def sparsemap(
    scores: Tensor,
    structure: Structure,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    init: SparseMAPResult | tuple[Tensor, Tensor] | None = None,
    solver: str = "auto",
) -> SparseMAPResult:
    """SparseMAP over ``structure``: a sparse distribution whose marginals are the projection of
    ``scores`` onto the marginal polytope.

    Args:
        scores: ``(*batch, *structure.score_shape)`` finite floating-point scores θ.
        structure: any :class:`~latentgrad.structures.base.Structure`; only its ``argmax`` (MAP
            oracle) and ``score`` are called. ``score`` must be a weighted sum of products
            ``Σ_i w_i θ_i z_i`` (every latentgrad structure; ``SpanningTree`` counts each edge
            once), and ``Σ_i w_i a_i b_i`` is the inner product of the projection.
        max_iter: cap on active-set iterations (each adds or drops one structure).
        tol: tolerance of the optimality test <θ − μ, z⁺ − μ> ≤ tol + ρ, z⁺ = MAP(θ − μ), in
            the units of θ (absolute: the ½‖μ‖² term fixes the scale). The gap bounds
            ½‖μ − μ*‖². ρ is what rounding of θ − μ can hide, a few ulps of max |θ| per
            coordinate: negligible below |θ| ≈ 1e5; beyond, the marginals are resolved to about
            ten ulps of max |θ| (2e-7 at 1e8), and rows with max |θ| ≥ 2⁴³ ≈ 8.8e12 are never
            certified ``exact``. Much below the default (≲ 1e-10 on 128 bits) the solver chases
            rounding noise and builds ill-conditioned active sets.
        init: warm start, a previous result (or a pair ``(support, weights)`` with the shapes of
            :class:`SparseMAPResult`); its positive-weight structures start the active set.
            Rows whose set is affinely dependent start from MAP(θ) instead.
        solver: ``"threshold"`` for structures whose marginal polytope is a box cut by at most
            one cardinality constraint (``BitVector`` with or without budget, ``KSubset``,
            ``Categorical``): the projection by a threshold search and a decomposition into at
            most |F| + 1 structures (F the fractional marginals), no iterations
            (:mod:`latentgrad.polytope._cardinality`; ``max_iter``, ``tol`` and ``init`` are
            not used). ``"active_set"`` for any structure. ``"auto"`` (default): the threshold
            solver where it applies, else the active set.

    Returns:
        :class:`SparseMAPResult`; ``weights`` and ``marginals`` are differentiable in ``scores``.
        ``exact`` is False where the iteration cap (or a numerical stall) stopped a row first
        (always True, with ``n_iter`` 0, for the threshold solver). Both solvers run in
        float64 whatever the input dtype (Gram matrices of 0/1 structures are ill-conditioned:
        in float32 the bordered inverse loses the simplex constraint within a few dozen
        updates; the threshold solver's cumulative sums need the precision too); the outputs
        are cast back to the dtype of ``scores``.
    """
    structure = _check_structure(structure)
    structure.check_scores(scores)
    check_finite(scores, "scores")
    check_solver_options(structure, max_iter, tol, solver)
    shape = structure.score_shape
    batch = structure.batch_shape(scores)
    bounds = cardinality_bounds(structure)
    theta = scores.to(torch.float64).reshape(-1, *shape)
    warm = _check_init(init, structure, batch, theta)
    if bounds is not None and solver != "active_set":
        return _threshold_sparsemap(theta, bounds, scores.dtype, batch)
    structure.check_range(theta)  # the structures' scores <θ, z> must not overflow float64

    with torch.no_grad():
        sol = solve_active_set(theta.detach(), structure, max_iter, float(tol), warm)

    width = sol.weights.shape[1]
    keep = sol.weights > 0
    # s_z = <θ, z> = Σ_i w_i θ_i z_i and μ = Σ_z p_z z, as batched matrix products.
    wtheta = (sol.metric * theta.flatten(1)).unsqueeze(1)
    support_scores = (wtheta @ sol.structures.mT).squeeze(1)
    weights = apply(_ActiveSetWeights, support_scores, sol.weights, sol.gram, keep)
    marginals = (weights.unsqueeze(1) @ sol.structures).squeeze(1)
    support = sol.structures.view(-1, width, *shape)

    out = scores.dtype
    return SparseMAPResult(
        support=support.to(out).reshape(*batch, width, *shape),
        weights=weights.to(out).reshape(*batch, width),
        marginals=marginals.to(out).reshape(*batch, *shape),
        support_size=keep.sum(1).reshape(batch),
        n_iter=sol.n_iter.reshape(batch),
        exact=sol.exact.reshape(batch),
    )


def _threshold_sparsemap(
    theta: Tensor, bounds: tuple[int, int], dtype: torch.dtype, batch: torch.Size
) -> SparseMAPResult:
    """SparseMAP on a cardinality polytope: ``theta`` ``(B, n)`` float64 -> the result, cast to
    ``dtype`` and reshaped to ``batch``."""
    lo, hi = bounds
    marginals, fixed = project(theta, lo, hi)
    support, weights, support_size = decompose(marginals, hi, fixed, dtype)
    width, n = support.shape[1:]
    done = torch.ones(batch, dtype=torch.bool, device=theta.device)
    return SparseMAPResult(
        support=support.reshape(*batch, width, n),
        weights=weights.to(dtype).reshape(*batch, width),
        marginals=marginals.to(dtype).reshape(*batch, n),
        support_size=support_size.reshape(batch),
        n_iter=torch.zeros(batch, dtype=torch.long, device=theta.device),
        exact=done,
    )
