"""Exact Gibbs sampling of spanning trees and arborescences by sequential contraction.

To draw an arborescence rooted at node 0 from ``p(z) ∝ prod_{arcs} w`` (log weights ``logw``,
arc i -> j), decide the head of the highest-index node k of the current graph, then contract:

- Removing the arc ``head(k) -> k`` from an arborescence leaves a spanning forest rooted at
  {0, k} with ``head(k)`` in the tree of 0, so ``P(head(k) = u) ∝ w(u -> k) h(u)``, where
  ``h(u)`` is the probability that u lies in the tree of 0 of a random 2-forest. By Wilson's
  algorithm that is the probability that the walk from u, stepping to y with weight
  ``w(y -> u)``, hits 0 before k: an absorption probability, computed for every u at once by
  GTH elimination (Grassmann, Taksar & Heyman 1985), which only adds, multiplies and divides
  nonnegative numbers (no cancellation).
- Then k is contracted into u (u inherits k's out-arcs; k's other in-arcs and the arc k -> u
  disappear): the arborescences of G with ``head(k) = u`` correspond one to one to those of the
  contracted graph, weights multiplying. A contracted node is a set of original nodes whose
  out-arc weight is the sum of its members' arcs, so the original head of k is drawn among the
  members of u with probability ``∝ exp(logw[x, k])``.
- Continue with the graph on nodes ``0..k-1`` (indices never change: a node only absorbs
  higher-index nodes).

Arithmetic. The elimination runs in linear float64 arithmetic for an example whose root shares
``ρ_x = w(0 -> x) / sum_{y != x} w(y -> x)`` are all at least ``exp(-300)`` (contraction never
lowers a root share: in-arcs only merge or vanish and the root's group only grows): each row of
the walk is scaled by its largest entry before ``exp`` (entries in [0, 1]; contractions add
columns, so at most n: no overflow) and stays a list of nonnegative entries whose root entry is
at least ``ρ_x``, so no pivot row sum can vanish. Outside underflow every step is a sum or
product of nonnegative numbers, so ``h`` and the head probabilities carry relative errors of a
few ``n^2`` ulps; an entry below the smallest subnormal relative to its row is lost, which moves
a head probability by at most about ``n^5 2^-1074 / min ρ^2`` (below ``1e-45`` up to n = 1000).
Other examples (a node whose arc from the root scores more than 300 below its other in-arcs)
take the same elimination in log space (``logaddexp``: no underflow whatever the scores; 2-8x
slower from n = 10 to 50).

The n - 1 steps cost O(k^3) each: O(n^4) work per sample, O(n^2) sequential tensor operations,
vectorised over samples and examples (no loop over either). An undirected spanning tree is the
arborescence rooted at 0 of the symmetric weights (each tree has one orientation away from 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ._matrix_tree import log_count_every_root
from ._sampling import categorical
from ._tree_structure import symmetrized

if TYPE_CHECKING:
    from .arborescence import Arborescence
    from .spanning_tree import SpanningTree


# Below this log root share (see ``_log_root_share``) an example takes the log-space elimination.
_LINEAR_MIN_LOG_ROOT_SHARE = -300.0


def _log_absorption(w: Tensor) -> Tensor:
    """``log h(u)`` for u = 0..k-1 on the graph ``w`` ``(N, k+1, k+1)`` (log arc weights i -> j).

    ``h(u)`` is the probability that the walk from u that steps to y with weight ``w(y -> u)``
    (a candidate head of u) hits node 0 before node k. GTH elimination of the transient nodes
    k-1, ..., 1 (Kron reduction of the walk), then back-substitution
    ``h(m) = sum_y P_m(m -> y) h(y)``: only sums of positive terms, in log space.
    """
    k = w.shape[-1] - 1
    idx = torch.arange(k + 1, device=w.device)  # made there: no copy from the host
    order = torch.cat([idx[:1], idx[k:], idx[1:k]])  # 0, k, 1, ..., k - 1
    walk = w.mT[:, order][:, :, order]  # walk[x, y]: weight of the step x -> y; absorbing first
    steps: list[Tensor] = []
    for p in range(k, 1, -1):
        out = walk[:, p, :p]
        step = out - torch.logsumexp(out, dim=-1, keepdim=True)
        steps.append(step)
        walk = torch.logaddexp(walk[:, :p, :p], walk[:, :p, p, None] + step[:, None, :])
    log_h = [torch.zeros_like(w[:, 0, 0]), torch.full_like(w[:, 0, 0], float("-inf"))]
    for step in reversed(steps):
        log_h.append(torch.logsumexp(step + torch.stack(log_h, dim=-1), dim=-1))
    return torch.stack([log_h[0], *log_h[2:]], dim=-1)


def _linear_absorption(walk: Tensor, buf: Tensor) -> Tensor:
    """``log h(u)`` as ``_log_absorption``, by the same elimination in linear arithmetic.

    ``walk`` ``(N, k+1, k+1)``: ``walk[x, y] >= 0`` proportional (per row x) to ``w(y -> x)``,
    diagonal ignored; ``buf`` a scratch tensor of at least that size. Eliminating node p adds
    ``walk[x, p] * step_p`` to the rows still transient (in place), the pivot row becoming
    ``step_p`` after division by its sum; the back-substitution is one unit lower-triangular
    solve whose off-diagonal terms are nonnegative. Accurate when no root share is tiny (module
    docstring).
    """
    k = walk.shape[-1] - 1
    if k == 1:
        return walk.new_zeros(walk.shape[0], 1)
    work = buf[:, : k + 1, : k + 1]  # rows and columns in the order 0, k, 1, ..., k-1
    work[:, 2:, 0] = walk[:, 1:k, 0]
    work[:, 2:, 1] = walk[:, 1:k, k]
    work[:, 2:, 2:] = walk[:, 1:k, 1:k]
    for p in range(k, 1, -1):
        step = work[:, p, :p]
        step.div_(step.sum(-1, keepdim=True))
        work[:, 2:p, :p].addcmul_(work[:, 2:p, p : p + 1], step.unsqueeze(1))
    h = torch.linalg.solve_triangular(
        work[:, 2:, 2:].neg(), work[:, 2:, :1], upper=False, unitriangular=True
    )
    return torch.cat([walk.new_zeros(walk.shape[0], 1), h.squeeze(-1).log()], dim=-1)


def _linear_walk(logw: Tensor) -> Tensor:
    """``walk[x, y] = w(y -> x) / max_{y' != x} w(y' -> x)`` in [0, 1] (zero diagonal) from log
    weights ``(N, n, n)``: the row of x lists its candidate heads."""
    eye = torch.eye(logw.shape[-1], dtype=torch.bool, device=logw.device)
    walk = logw.mT.masked_fill(eye, float("-inf"))
    return walk.sub_(walk.amax(-1, keepdim=True)).exp_()


def _log_root_share(logw: Tensor) -> Tensor:
    """``min_x log(w(0 -> x) / sum_{y != x} w(y -> x))`` over x = 1..n-1: ``(N, n, n)`` -> ``(N,)``.

    Contraction never lowers a node's root share (its in-arcs only merge or vanish, the root's
    group only grows), so this bounds every step of the sampler."""
    n = logw.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=logw.device)
    into = torch.logsumexp(logw.masked_fill(eye, float("-inf")), dim=1)
    return (logw[:, 0, 1:] - into[:, 1:]).amin(-1)


def _pick_member(original: Tensor, group: Tensor, u: Tensor, k: int,
                 generator: torch.Generator | None) -> Tensor:
    """The original head of k among the members of the contracted node u, ``∝ exp(logw[x, k])``."""
    members = original[:, :, k].masked_fill(group != u.unsqueeze(1), float("-inf"))
    return categorical(members, generator)


def _contract_log(logw: Tensor, generator: torch.Generator | None) -> Tensor:
    """The contraction sampler (module docstring) on log weights, ``log h`` in log space."""
    num, n = logw.shape[0], logw.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=logw.device)
    original = logw.masked_fill(eye, 0.0)
    w = original
    group = torch.arange(n, device=logw.device).expand(num, n).clone()
    heads = torch.zeros(num, n, dtype=torch.long, device=logw.device)
    rows = torch.arange(num, device=logw.device)
    for k in range(n - 1, 0, -1):
        u = categorical(w[:, :k, k] + _log_absorption(w), generator)
        heads[:, k] = _pick_member(original, group, u, k, generator)
        merged = w[:, :k, :k].clone()
        merged[rows, u] = torch.logaddexp(w[rows, u, :k], w[:, k, :k])  # u absorbs k's out-arcs
        w = merged
        group = torch.where(group == k, u.unsqueeze(1), group)
    return heads


def _contract_linear(logw: Tensor, generator: torch.Generator | None) -> Tensor:
    """The same sampler on the walk in linear arithmetic: ``walk[x, y] = w(y -> x)`` scaled by
    the largest off-diagonal entry of row x; contracting k into u adds column k to column u."""
    num, n = logw.shape[0], logw.shape[-1]
    original = logw.masked_fill(torch.eye(n, dtype=torch.bool, device=logw.device), 0.0)
    walk = _linear_walk(logw)
    buf = torch.empty_like(walk)
    group = torch.arange(n, device=logw.device).expand(num, n).clone()
    heads = torch.zeros(num, n, dtype=torch.long, device=logw.device)
    rows = torch.arange(num, device=logw.device)[:, None]
    for k in range(n - 1, 0, -1):
        logits = walk[:, k, :k].log() + _linear_absorption(walk[:, : k + 1, : k + 1], buf)
        u = categorical(logits, generator)
        heads[:, k] = _pick_member(original, group, u, k, generator)
        cols = torch.arange(k, device=logw.device)
        walk[rows, cols, u.unsqueeze(1)] += walk[:, :k, k]  # u absorbs k's out-arcs
        group = torch.where(group == k, u.unsqueeze(1), group)
    return heads


def sample_heads_rooted_at_zero(logw: Tensor, generator: torch.Generator | None) -> Tensor:
    """Parent arrays of exact draws of arborescences rooted at node 0.

    ``logw`` ``(N, n, n)``: finite float64 log arc weights (``logw[b, i, j]`` for i -> j; the
    diagonal and column 0 are ignored). Returns ``(N, n)`` long heads with ``heads[:, 0] = 0``.
    Examples whose root shares are all at least ``exp(_LINEAR_MIN_LOG_ROOT_SHARE)`` take the
    linear elimination, the others the log-space one (module docstring); a batch that needs both
    is split, which costs one host-device synchronisation.
    """
    num, n = logw.shape[0], logw.shape[-1]
    if n == 1:
        return torch.zeros(num, 1, dtype=torch.long, device=logw.device)
    linear = _log_root_share(logw) >= _LINEAR_MIN_LOG_ROOT_SHARE
    if bool(linear.all()):
        return _contract_linear(logw, generator)
    heads = torch.zeros(num, n, dtype=torch.long, device=logw.device)
    heads[linear] = _contract_linear(logw[linear], generator)
    heads[~linear] = _contract_log(logw[~linear], generator)
    return heads


def _sample_heads(logw: Tensor, root: Tensor, generator: torch.Generator | None) -> Tensor:
    """Heads ``(N, n)`` of arborescences rooted at per-row ``root`` ``(N,)`` (``heads[root] =
    root``): relabel node ``(i + root) mod n`` as i, sample rooted at 0, map back."""
    num, n = logw.shape[0], logw.shape[-1]
    perm = (torch.arange(n, device=logw.device) + root.unsqueeze(1)) % n
    moved = logw.gather(1, perm.unsqueeze(2).expand(num, n, n))
    moved = moved.gather(2, perm.unsqueeze(1).expand(num, n, n))
    local = sample_heads_rooted_at_zero(moved, generator)
    return torch.empty_like(perm).scatter_(1, perm, perm.gather(1, local))


def _flat_draws(scores: Tensor, sample_shape: torch.Size | tuple[int, ...]) -> Tensor:
    """``(*batch, n, n)`` -> float64 ``(prod(sample_shape) * prod(batch), n, n)``, detached."""
    n = scores.shape[-1]
    work = scores.detach().to(torch.float64)
    return work.expand(*sample_shape, *work.shape).reshape(-1, n, n)


def _indicator(heads: Tensor, dtype: torch.dtype) -> Tensor:
    n = heads.shape[-1]
    z = torch.zeros(heads.shape[0], n, n, dtype=dtype, device=heads.device)
    return z.scatter_(1, heads.unsqueeze(1), 1.0)


def sample_spanning_tree(
    structure: SpanningTree,
    scores: Tensor,
    sample_shape: torch.Size | tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Exact draws from ``p(z) ∝ exp(sum_{i<j} θ_ij z_ij)``: validated symmetric scores
    ``(*batch, n, n)`` -> symmetric 0/1 adjacencies ``(*sample_shape, *batch, n, n)``."""
    n = structure.n
    with torch.no_grad():
        flat = _flat_draws(scores, sample_shape)
        root = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)
        z = _indicator(_sample_heads(symmetrized(flat), root, generator), scores.dtype)
        z[:, 0, 0] = 0
        z = z + z.mT
    return z.reshape(*sample_shape, *scores.shape[:-2], n, n)


def sample_arborescence(
    structure: Arborescence,
    scores: Tensor,
    sample_shape: torch.Size | tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Exact draws from ``p(z) ∝ exp(<θ, z>)`` over arborescences: validated scores
    ``(*batch, n, n)`` -> ``(*sample_shape, *batch, n, n)`` 0/1 (the structure's convention).

    Rooted at r: the contraction sampler on the graph relabelled so that r comes first.
    Single-root: first the root's child ``j ~ exp(θ_jj) A_j / Z`` (``A_j`` = arborescences rooted
    at j, all roots from one elimination), then an arborescence rooted at j; ``z[j, j] = 1``.
    """
    n = structure.n
    with torch.no_grad():
        flat = _flat_draws(scores, sample_shape)
        eye = torch.eye(n, dtype=torch.bool, device=flat.device)
        arcs = flat.masked_fill(eye, 0.0)
        if structure.root is None:
            root_logits = flat.diagonal(dim1=-2, dim2=-1) + log_count_every_root(arcs)
            root = categorical(root_logits, generator)
        else:
            root = torch.full((flat.shape[0],), structure.root, dtype=torch.long,
                              device=flat.device)
        z = _indicator(_sample_heads(arcs, root, generator), scores.dtype)
        if structure.root is not None:
            z[:, structure.root, structure.root] = 0
    return z.reshape(*sample_shape, *scores.shape[:-2], n, n)
