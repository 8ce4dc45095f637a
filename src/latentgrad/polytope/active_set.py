"""Batched active-set solver for SparseMAP in distribution form.

SparseMAP (Niculae et al., 2018) projects scores θ onto the marginal polytope conv 𝒵:
μ* = argmax_{μ ∈ conv 𝒵} <θ, μ> − ½‖μ‖². Written over a distribution p on an active set A ⊂ 𝒵,
it is ``min_{p ∈ Δ(A)} ½ pᵀGp − sᵀp`` with G_{zz'} = <z, z'>, s_z = <θ, z>, solved by the
active-set method of Nocedal & Wright (2006, §16.5) as in Martins et al. (2015, AD³):
start from A = {MAP(θ)}; solve the equality-constrained KKT system on A; if its solution is
infeasible, step back to the boundary and drop a vertex; otherwise ask the MAP oracle for
z⁺ = MAP(θ − μ) (θ − μ rounded to a grid of 256 ulps of 1 plus four of max |θ|, so that ties
are broken by the oracle, not by rounding noise) and stop when the Frank-Wolfe gap
<θ − μ, z⁺ − μ> is below tol plus what that rounding can hide (μ is then optimal), else add z⁺
to A.

All rows iterate in lockstep with done-masks; active sets are padded to a capacity that follows
the largest one in steps of ``_STEP`` (per-step work is O(C·D + C²) per row, memory-bound, so
padding is paid for at every step); the inverse of the bordered KKT matrix is kept up to date
in O(C²) per step and refactorised every ``_REFRESH`` iterations, and for any row whose
solution drifts off 1ᵀp̂ = 1 by more than ``_DRIFT``. The structure is used through its MAP oracle
``argmax`` and its ``score``, which must be a weighted sum of products
``score(θ, z) = Σ_i w_i θ_i z_i`` (w = 1 for most structures; the upper-triangle mask for
``SpanningTree``, which counts each undirected edge once). The inner product of the projection
is the same form, <a, b> = Σ_i w_i a_i b_i, so every pairwise product is one batched matmul on
flattened structures. Finished rows are compacted away once they are half of the rows in
flight; as they leave, their weights are re-solved from scratch on their final active sets,
certified a posteriori by one more oracle call (``exact``) and compacted to the support.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .._validation import validation_enabled
from ..structures.base import Structure
from ._bordered import bordered_matrix, rank_one_update

_STEP = 4
_REFRESH = 32
_TIE_GRID = 256
_DRIFT = 1e-9
_RESOLVED = 2.0**43


class ActiveSetSolution(NamedTuple):
    """Solver output, compacted: ``structures`` (B, S, D) flattened 0/1 structures with positive
    weight, heaviest first, zero-padded to the largest support S; ``weights`` (B, S) (zero on the
    padding); ``gram`` (B, S, S) their Gram matrix; ``n_iter`` (B,) long; ``exact`` (B,) the
    a-posteriori optimality certificate of the weights; ``metric`` (D,) the weights w of the
    inner product <a, b> = Σ_i w_i a_i b_i (see :func:`score_weights`)."""

    structures: Tensor
    weights: Tensor
    gram: Tensor
    n_iter: Tensor
    exact: Tensor
    metric: Tensor


def score_weights(structure: Structure, theta: Tensor, z: Tensor) -> Tensor:
    """The weights w ``(D,)`` of ``score(θ, z) = Σ_i w_i θ_i z_i``, read off by autograd, and
    checked against ``structure.score`` on ``theta`` ``(B, *score_shape)`` and its MAP ``z``
    (with validation on)."""
    # also under torch.inference_mode (Lightning's evaluation loops): a normal tensor, autograd on
    with torch.inference_mode(False), torch.enable_grad():
        probe = torch.zeros(structure.score_shape, dtype=theta.dtype, device=theta.device)
        probe.requires_grad_(True)
        (w,) = torch.autograd.grad(structure.score(probe, torch.ones_like(probe)), probe)
    w = w.reshape(-1)
    if validation_enabled() and not torch.allclose(  # a value check: one sync
            structure.score(theta, z), (theta.flatten(1) * z.flatten(1)) @ w,
            rtol=1e-9, atol=1e-9):
        raise ValueError(
            f"sparsemap needs {type(structure).__name__}.score to be a weighted sum of products "
            "sum_i w_i theta_i z_i; it is not"
        )
    return w


def _snap(resid: Tensor, grid: Tensor) -> Tensor:
    """Round ``resid`` (B, D) to multiples of ``grid`` (B,): values equal up to rounding noise
    become exactly equal, so the oracle's own deterministic tie-breaking decides, not the
    noise (the weights p are not unique; a deterministic path keeps them locally smooth)."""
    g = grid.unsqueeze(1)
    return (resid / g).round_().mul_(g)


def _gap_closed(
    wr: Tensor, z_new: Tensor, mu: Tensor, w: Tensor, grid: Tensor, tol: float
) -> Tensor:
    """The optimality test ``(R,)``: Frank-Wolfe gap <θ − μ, z⁺ − μ> ≤ tol + ρ, with ``wr``
    (R, D) = w ⊙ (θ − μ), z⁺ ``z_new`` and μ ``mu`` (R, D), ``grid`` (R,).

    The gap bounds the objective's suboptimality, in the units of θ, whose scale the ½‖μ‖²
    term fixes: the tolerance is absolute, not relative to |θ| (on tied scores of 1e8 a
    relative test accepts gaps of order 1, i.e. a vertex instead of the projection).
    ρ = grid·Σ_i w_i |z⁺_i − μ_i| is what the rounding of θ − μ and its snapping to ``grid`` can
    hide: below tol for |θ| ≲ 1e5, the resolution of the answer beyond."""
    diff = z_new - mu
    return _dot(wr, diff) <= tol + grid * (diff.abs() @ w)


def _matvec(mat: Tensor, x: Tensor) -> Tensor:
    """``mat @ x`` for ``mat`` (R, m, n) and ``x`` (R, n), computed as xᵀ matᵀ: the same sums,
    by a batched kernel that streams ``mat`` much faster on CPU than the column form."""
    return (x.unsqueeze(1) @ mat.mT).squeeze(1)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise inner products ``(R, n), (R, n) -> (R,)`` in one batched product."""
    return (a.unsqueeze(1) @ b.unsqueeze(2)).view(-1)


def _bordered_apply(rows: Tensor, x: Tensor) -> Tensor:
    """``rows @ [1; x]`` for ``rows`` (R, m, C+1) and ``x`` (R, C), without building [1; x]."""
    return torch.baddbmm(rows[:, :, 0].unsqueeze(1), x.unsqueeze(1), rows[:, :, 1:].mT).squeeze(1)


def _pad(x: Tensor, dim: int, size: int, value: float = 0.0) -> Tensor:
    if x.shape[dim] == size:
        return x
    shape = list(x.shape)
    shape[dim] = size - x.shape[dim]
    return torch.cat([x, x.new_full(shape, value)], dim=dim)


_ROW_FIELDS = ("theta", "grid", "rows", "ref", "z", "p", "mask", "s", "sq_norms", "gram", "minv")
_FLAG_FIELDS = ("done", "n_iter", "just_added")


class _State:
    """Per-row solver state, padded to a common capacity C (private to :func:`solve_active_set`).

    theta (R, D) flattened scores, grid (R,) tie-snapping grid, rows (R,) indices into the
    caller's batch; ref (R, D) a reference structure (the MAP); z (R, C, D) flattened
    structures, p (R, C), mask (R, C), s (R, C) = <θ, z − ref> (the scores shifted by the
    same constant within a row, which leaves the KKT solution unchanged: the bordered solve
    then works with score differences, not with |<θ, z>|, which at |θ| ~ 1e8 would leave
    its weights only ~1e-7 accurate and 1ᵀp̂ ≠ 1 by as much),
    gram (R, C, C) and its diagonal sq_norms (R, C), minv (R, C+1, C+1) the inverse of the
    bordered KKT matrix; done (R,) bool, n_iter (R,) long, just_added (R,) the slot
    added by the previous iteration (-1 if none).

    z, gram and minv are views of larger storage (``_stores``), so that the capacity C can
    follow the largest active set in small steps without copying them at every step."""

    def __init__(self, **fields: Tensor) -> None:
        self.__dict__.update(fields)
        self._stores = (self.z, self.gram, self.minv)

    @classmethod
    def build(
        cls, theta: Tensor, w: Tensor, grid: Tensor, ref: Tensor, z: Tensor, p: Tensor, cap: int
    ):
        p = _pad(p, 1, cap)
        mask = p > 0
        z = _pad(z, 1, cap) * mask.unsqueeze(-1)
        gram = (z * w) @ z.mT
        minv, info = torch.linalg.inv_ex(bordered_matrix(gram, mask))
        rows = torch.arange(theta.shape[0], device=theta.device)
        return cls(
            theta=theta,
            grid=grid,
            rows=rows,
            ref=ref,
            z=z,
            p=torch.where(mask, p, 0.0),
            mask=mask,
            s=torch.where(mask, _matvec(z - ref.unsqueeze(1), w * theta), 0.0),
            sq_norms=torch.diagonal(gram, dim1=1, dim2=2).clone(),
            gram=gram,
            minv=minv,
            info=info,
            done=torch.zeros_like(rows, dtype=torch.bool),
            n_iter=torch.zeros_like(rows),
            just_added=torch.full_like(rows, -1),
        )

    @property
    def capacity(self) -> int:
        return self.p.shape[1]

    def select(self, idx: Tensor) -> _State:
        """The rows ``idx``, on fresh storage of the current capacity."""
        return _State(**{k: getattr(self, k)[idx] for k in _ROW_FIELDS + _FLAG_FIELDS})

    def grow(self, cap: int, max_cap: int) -> None:
        """Widen the capacity to ``cap``: the new slots are inactive (zero structures and Gram
        entries, identity rows of M⁻¹). The storage of z, gram and minv doubles when it runs
        out (its untouched tail costs no memory traffic); otherwise the wider capacity is a
        wider view of it."""
        old, rows = self.capacity, self.p.shape[0]
        zs, gs, ms = self._stores
        if cap > zs.shape[1]:
            size = min(max_cap, 2 * cap)
            zs = self.z.new_empty(rows, size, self.z.shape[2])
            zs[:, :old] = self.z
            gs = self.gram.new_empty(rows, size, size)
            gs[:, :old, :old] = self.gram
            ms = self.minv.new_empty(rows, size + 1, size + 1)
            ms[:, : old + 1, : old + 1] = self.minv
            self._stores = (zs, gs, ms)
        zs[:, old:cap] = 0.0
        gs[:, old:cap, :cap] = 0.0
        gs[:, :old, old:cap] = 0.0
        ms[:, old + 1 : cap + 1, : cap + 1] = 0.0
        ms[:, : old + 1, old + 1 : cap + 1] = 0.0
        ms[:, old + 1 : cap + 1, old + 1 : cap + 1].diagonal(dim1=1, dim2=2).fill_(1.0)
        self.z, self.gram, self.minv = zs[:, :cap], gs[:, :cap, :cap], ms[:, : cap + 1, : cap + 1]
        self.p = _pad(self.p, 1, cap)
        self.mask = _pad(self.mask, 1, cap, False)
        self.s = _pad(self.s, 1, cap)
        self.sq_norms = _pad(self.sq_norms, 1, cap)


def _initial_state(
    theta: Tensor,
    w: Tensor,
    grid: Tensor,
    z_map: Tensor,
    init: tuple[Tensor, Tensor] | None,
    cap: int,
) -> _State:
    """A = {MAP(θ)}, or the given warm start; warm rows whose positive-weight structures are
    affinely dependent (singular KKT matrix) restart from MAP."""
    ones = torch.ones_like(theta[:, :1])
    if init is None:
        return _State.build(theta, w, grid, z_map, z_map.unsqueeze(1), ones, cap)
    z, p = init
    cap = max(cap, z.shape[1])
    state = _State.build(theta, w, grid, z_map, z, p / p.sum(1, keepdim=True), cap)
    mat = bordered_matrix(state.gram, state.mask)
    bad = (state.info != 0) | (torch.linalg.matrix_rank(mat, hermitian=True) < mat.shape[-1])
    if bool(bad.any()):
        z = torch.where(bad.view(-1, 1, 1), _pad(z_map.unsqueeze(1), 1, z.shape[1]), z)
        p = torch.where(bad.unsqueeze(1), _pad(ones, 1, p.shape[1]), p)
        state = _State.build(theta, w, grid, z_map, z, p / p.sum(1, keepdim=True), cap)
    return state


def solve_active_set(
    theta: Tensor,
    structure: Structure,
    max_iter: int,
    tol: float,
    init: tuple[Tensor, Tensor] | None = None,
) -> ActiveSetSolution:
    """Run the batched active-set method (no autograd).

    theta: ``(B, *score_shape)`` float64 scores. init: optional warm start, a pair
    ``(structures (B, S0, *score_shape), weights (B, S0))`` with nonnegative weights, the
    positive-weight structures affinely independent (as returned by a previous solve).
    Compacting finished rows away keeps the iterations on contiguous tensors, without
    per-step gathers; the capacity follows the largest active set in steps of ``_STEP``.
    """
    shape = structure.score_shape
    z_map = structure.argmax(theta)
    w = score_weights(structure, theta, z_map)
    z_map = z_map.flatten(1)
    theta = theta.flatten(1)
    max_cap = theta.shape[1] + 1
    eps = torch.finfo(theta.dtype).eps
    grid = eps * (_TIE_GRID + 4 * theta.abs().amax(1))
    warm = None if init is None else (init[0].flatten(2), init[1])
    state = _initial_state(theta, w, grid, z_map, warm, min(_STEP, max_cap))
    min_sq_dist = 0.5 * w[w > 0].min()
    finished: list[_Chunk] = []

    for it in range(max_iter):
        n_live = int((~state.done).sum())
        if n_live == 0:
            break
        if 2 * n_live <= state.done.numel():
            done = state.select(state.done.nonzero().squeeze(1))
            finished.append(_finish(done, structure, w, tol, min_sq_dist))
            state = state.select((~state.done).nonzero().squeeze(1))
        live = ~state.done
        if state.capacity < max_cap and bool((state.mask.all(1) & live).any()):
            state.grow(min(state.capacity + _STEP, max_cap), max_cap)
        _iterate(state, structure, w, shape, live, tol, eps, min_sq_dist)
        if (it + 1) % _REFRESH == 0:
            state.minv.copy_(torch.linalg.inv_ex(bordered_matrix(state.gram, state.mask))[0])

    finished.append(_finish(state, structure, w, tol, min_sq_dist))
    return _assemble(finished, theta.shape[0], w)


def _iterate(
    st: _State,
    structure: Structure,
    w: Tensor,
    shape: tuple[int, ...],
    live: Tensor,
    tol: float,
    eps: float,
    min_sq_dist: Tensor,
) -> None:
    """One active-set step for the ``live`` rows of ``st``, in place; other rows are unchanged."""
    cap = st.capacity
    st.n_iter += live

    # Equality-constrained minimiser on A: [ν; p̂] = M⁻¹ [1; s].
    p_hat = torch.where(st.mask, _bordered_apply(st.minv[:, 1:], st.s), 0.0)
    drifted = (live & ((p_hat.sum(1) - 1.0).abs() > _DRIFT)).nonzero().squeeze(1)
    if drifted.numel():  # the updated inverse lost accuracy (1ᵀp̂ = 1 exactly): refactorise
        st.minv[drifted] = torch.linalg.inv_ex(bordered_matrix(st.gram[drifted], st.mask[drifted]))[
            0
        ]
        p_hat = torch.where(st.mask, _bordered_apply(st.minv[:, 1:], st.s), 0.0)
    feasible = (p_hat >= 0).all(1)

    # Optimality test at p̂ (rows where p̂ is feasible): Frank-Wolfe gap <θ − μ, z⁺ − μ>.
    p_test = torch.where(feasible.unsqueeze(1), p_hat, st.p)
    mu = (p_test.unsqueeze(1) @ st.z).squeeze(1)
    resid = st.theta - mu
    z_new = structure.argmax(_snap(resid, st.grid).view(-1, *shape)).flatten(1)
    wr = w * resid
    optimal = _gap_closed(wr, z_new, mu, w, st.grid, tol)
    converged = live & feasible & optimal
    wants_add = live & feasible & ~optimal

    # Add z⁺ unless it is already active (‖z⁺ − z‖² = 0), no slot is left, or it lies on
    # the affine hull of A: with b = [1; <z, z⁺>] the new row of M, w = M⁻¹b and the Schur
    # complement σ = ‖z⁺‖² − bᵀw (squared distance to the hull) ≈ 0. Those rows stop there.
    wz = w * z_new
    g_row = torch.where(st.mask, _matvec(st.z, wz), 0.0)
    sq_norm = z_new @ w  # ‖z⁺‖² = Σ_i w_i z_i, z 0/1
    sq_dist = st.sq_norms + sq_norm.unsqueeze(1) - 2 * g_row
    duplicate = (st.mask & (sq_dist < min_sq_dist)).any(1)
    slot = (~st.mask).to(torch.uint8).argmax(1)
    adding = wants_add & ~duplicate & ~st.mask.all(1)
    w_add = _bordered_apply(st.minv, g_row)
    sigma = sq_norm - w_add[:, 0] - (g_row * w_add[:, 1:]).sum(1)
    adding = adding & (sigma > 100 * eps * (1.0 + sq_norm))

    # Step back towards p̂ until the first weight hits zero; drop that vertex.
    d = p_hat - st.p
    ratio = torch.where(st.mask & (d < 0), st.p / torch.where(d < 0, -d, 1.0), math.inf)
    alpha, leave = ratio.min(1)
    back = live & ~feasible
    stall = back & (leave == st.just_added)
    removing = back & ~stall
    leave_hot = torch.nn.functional.one_hot(leave, cap).bool() & removing.unsqueeze(1)
    p_back = (st.p + alpha.clamp(max=1.0).unsqueeze(1) * d).clamp_min(0.0)
    p_back = torch.where(leave_hot, 0.0, p_back)

    # Write back: one in-place rank-one update of M⁻¹, the new structure's row of G.
    rank_one_update(st.minv, w_add, sigma, torch.where(adding, slot, leave), adding, removing)
    add_hot = torch.nn.functional.one_hot(slot, cap).bool() & adding.unsqueeze(1)
    ia = adding.nonzero().squeeze(1)
    cols = slot[ia]
    st.z[ia, cols] = z_new[ia]
    st.gram[ia, cols] = g_row[ia]
    st.gram[ia, :, cols] = g_row[ia]
    st.gram[ia, cols, cols] = st.sq_norms[ia, cols] = sq_norm[ia]
    st.p = torch.where(removing.unsqueeze(1), p_back, st.p)
    st.p = torch.where((live & feasible).unsqueeze(1), p_hat, st.p)
    st.mask = (st.mask & ~leave_hot) | add_hot
    s_new = _dot(w * (z_new - st.ref), st.theta).unsqueeze(1)
    st.s = torch.where(add_hot, s_new, torch.where(st.mask, st.s, 0.0))
    st.just_added = torch.where(adding, slot, torch.where(live, -1, st.just_added))
    # A z⁺ that is active or on the affine hull of A scores exactly ν = <θ − μ, μ> at the KKT
    # point of A (an affine function equal to ν on A): its gap is zero up to rounding.
    st.done = st.done | converged | (wants_add & ~adding) | stall


def _polish(state: _State) -> tuple[Tensor, Tensor]:
    """Final weights: a fresh KKT solve on the final active sets (undoes the drift of the
    rank-one updates) where it is feasible, else the iterate; clamped and renormalised.
    Also returns which rows hold the KKT point of their active set."""
    rhs = torch.cat([torch.ones_like(state.s[:, :1]), state.s], dim=1)
    x, info = torch.linalg.solve_ex(bordered_matrix(state.gram, state.mask), rhs.unsqueeze(-1))
    fresh = torch.where(state.mask, x[:, 1:, 0], 0.0)
    kkt = (info == 0) & (fresh >= 0).all(1) & torch.isfinite(fresh).all(1)
    weights = torch.where(kkt.unsqueeze(1), fresh, torch.where(state.mask, state.p, 0.0))
    weights = weights.clamp_min(0.0)
    return weights / weights.sum(1, keepdim=True), kkt


def _certify(
    state: _State,
    weights: Tensor,
    kkt: Tensor,
    structure: Structure,
    w: Tensor,
    tol: float,
    min_sq_dist: Tensor,
) -> Tensor:
    """A-posteriori optimality certificate of the returned weights (one more oracle call):
    the Frank-Wolfe gap passes the tolerance test, or the weights are the KKT point of their
    active set and MAP(θ − μ) is one of its structures (then the gap is zero up to rounding).
    The oracle sees θ − μ unsnapped, so the slack is two ulps of |θ| per coordinate (the
    rounding of θ − μ), not the tie grid. The marginals are resolved to about ten ulps of
    max |θ|; rows with max |θ| ≥ 2⁴³ (an ulp ≥ 2⁻⁹, ten of them a few hundredths of a marginal)
    are never certified."""
    mu = (weights.unsqueeze(1) @ state.z).squeeze(1)
    resid = state.theta - mu
    z_new = structure.argmax(resid.view(-1, *structure.score_shape)).flatten(1)
    ulps = 2 * torch.finfo(resid.dtype).eps * (1.0 + state.theta.abs().amax(1))
    optimal = _gap_closed(w * resid, z_new, mu, w, ulps, tol)
    g_row = _matvec(state.z, w * z_new)
    sq_dist = state.sq_norms + (z_new @ w).unsqueeze(1) - 2 * g_row
    active = (state.mask & (sq_dist < min_sq_dist)).any(1)
    resolved = state.theta.abs().amax(1) < _RESOLVED
    return (optimal | (kkt & active)) & resolved


class _Chunk(NamedTuple):
    """Finished rows: ``rows`` (R,) batch indices and their :class:`ActiveSetSolution` fields,
    compacted to the chunk's largest support."""

    rows: Tensor
    structures: Tensor
    weights: Tensor
    gram: Tensor
    n_iter: Tensor
    exact: Tensor


def _finish(
    state: _State, structure: Structure, w: Tensor, tol: float, min_sq_dist: Tensor
) -> _Chunk:
    """Polish and certify the rows of ``state``; keep the positive weights, heaviest first."""
    weights, kkt = _polish(state)
    exact = _certify(state, weights, kkt, structure, w, tol, min_sq_dist)
    order = torch.argsort(weights, dim=1, descending=True, stable=True)
    width = max(int((weights > 0).sum(1).max()), 1) if weights.shape[0] else 1
    idx = order[:, :width]
    weights = weights.gather(1, idx)
    z = state.z.gather(1, idx.unsqueeze(-1).expand(-1, -1, state.z.shape[2]))
    z.masked_fill_((weights == 0).unsqueeze(-1), 0.0)
    gram = state.gram.gather(1, idx.unsqueeze(-1).expand(-1, -1, state.capacity))
    gram = gram.gather(2, idx.unsqueeze(1).expand(-1, width, -1))
    return _Chunk(state.rows, z, weights, gram, state.n_iter, exact)


def _assemble(chunks: list[_Chunk], batch: int, metric: Tensor) -> ActiveSetSolution:
    """Merge the finished chunks: pad to the largest support and restore the batch order."""
    if len(chunks) == 1:  # no row was compacted away: the rows are in batch order
        return ActiveSetSolution(*chunks[0][1:], metric)
    width = max(c.weights.shape[1] for c in chunks)
    first = chunks[0]
    structures = first.structures.new_zeros(batch, width, first.structures.shape[2])
    weights = first.weights.new_zeros(batch, width)
    gram = first.gram.new_zeros(batch, width, width)
    n_iter = first.n_iter.new_empty(batch)
    exact = first.exact.new_empty(batch)
    for c in chunks:
        k = c.weights.shape[1]
        structures[c.rows, :k] = c.structures
        weights[c.rows, :k] = c.weights
        gram[c.rows, :k, :k] = c.gram
        n_iter[c.rows] = c.n_iter
        exact[c.rows] = c.exact
    return ActiveSetSolution(structures, weights, gram, n_iter, exact, metric)
