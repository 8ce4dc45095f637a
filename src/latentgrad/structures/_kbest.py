"""Exact k-best oracles for bit vectors and count-constrained subsets.

Batched merges, each looping over the items only (never over examples):

- ``kbest_bitvector_flips``: unconstrained bit vectors. The MAP ``z* = 1[t > 0]``; every other
  vector is ``z*`` with a flip set ``F`` of cost ``sum_{i in F} |t_i|``. Items are visited by
  increasing ``|t_i|`` and a list of the k cheapest flip sets is merged with its shift by ``|t_i|``;
  the loop stops once ``|t_i|`` reaches the current k-th cost for every example.
- ``kbest_subsets``: the k best subsets of exactly / at most C items, by the k-best version of
  the elementary-symmetric DP ``best_{i,c} = top_k(best_{i-1,c} ∪ (best_{i-1,c-1} + t_i))`` for
  every count ``c <= C``, with back-pointers. Serves ``KSubset.topk``.
- ``kbest_budgeted_bitvectors``: at most B ones. Only a window of ``2k - 2`` items around the
  decision boundary of the MAP can change in the k best (argued there); the items above it are
  always on, those below always off, and the count DP runs on the window only.

Ties are broken deterministically by a stable sort (earlier list entries first); a missing
entry (fewer subsets than list slots) is NaN and ranks last.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._host import host_reads_free


def _best_first(values: Tensor) -> Tensor:
    """Permutation along the last dim: values descending, earlier entries first on ties, missing
    (NaN) entries last (a stable ascending sort of ``-values``, which ranks NaN above ``+inf``)."""
    return torch.sort(-values, dim=-1, stable=True).indices


def kbest_bitvector_flips(scores: Tensor, k: int) -> Tensor:
    """The k best unconstrained bit vectors, best first.

    scores: ``(N, d)`` (finite or ``-inf``); requires ``k <= 2**d``. Returns ``(N, k, d)`` bool.
    """
    n_rows, d = scores.shape
    cost_item = scores.abs()
    order = torch.argsort(cost_item, dim=-1, stable=True)
    sorted_cost = cost_item.gather(-1, order)
    cost = torch.zeros((n_rows, 1), dtype=scores.dtype, device=scores.device)
    flips = torch.zeros((n_rows, 1, d), dtype=torch.bool, device=scores.device)
    for i in range(d):
        a_i = sorted_cost[:, i : i + 1]
        if (cost.shape[1] == k and host_reads_free(cost)
                and bool((a_i >= cost[:, -1:]).all())):  # no later flip enters any row's k best
            break
        item = torch.nn.functional.one_hot(order[:, i], d).bool().unsqueeze(1)
        cand_cost = torch.cat([cost, cost + a_i], dim=1)
        cand_flips = torch.cat([flips, flips | item], dim=1)
        keep = min(cand_cost.shape[1], k)
        idx = torch.sort(cand_cost, dim=-1, stable=True).indices[:, :keep]
        cost = cand_cost.gather(1, idx)
        flips = cand_flips.gather(1, idx.unsqueeze(-1).expand(-1, -1, d))
    return (scores > 0).unsqueeze(1) ^ flips


def kbest_subsets(
    scores: Tensor, max_count: int, k: int, exact: bool, row_max_count: Tensor | None = None
) -> Tensor:
    """The k best subsets with exactly ``max_count`` items (``exact``) or at most ``max_count``.

    scores: ``(N, n)`` (finite or ``-inf``); requires at least k such subsets. Returns ``(N, k, n)``
    bool, best first. The DP keeps, for every count ``c <= max_count``, the k best subsets of the
    items seen so far (values and back-pointers only, O(n * max_count * k) work), then the chosen
    entries are traced back through the n steps. ``row_max_count`` (``(N,)`` long, at-most case
    only) lowers the cap per row to ``min(max_count, row_max_count)``.
    """
    n_rows, n = scores.shape
    c1 = max_count + 1
    dev = scores.device
    # values: (N, counts so far, list length), NaN where fewer subsets exist; count c > i + 1 is
    # impossible after i + 1 items, so the count axis grows by one per item up to c1
    values = torch.zeros((n_rows, 1, 1), dtype=scores.dtype, device=dev)
    pointers: list[tuple[Tensor, int]] = []
    for i in range(n):
        n_counts, length = values.shape[1:]
        missing = torch.full_like(values[:, :1], math.nan)
        # taking item i moves a subset of count c-1 to count c (candidates length..2*length-1)
        up_values = torch.cat([missing, values], dim=1)[:, : min(n_counts + 1, c1)]
        up_values = up_values + scores[:, i].view(n_rows, 1, 1)
        if n_counts < c1:
            values = torch.cat([values, missing], dim=1)
        candidates = torch.cat([values, up_values], dim=-1)
        idx = _best_first(candidates)[..., : min(2 * length, k)]
        values = candidates.gather(-1, idx)
        pointers.append((idx, length))
    length = values.shape[-1]
    if exact:
        count = torch.full((n_rows, k), max_count, dtype=torch.long, device=dev)
        pos = torch.arange(k, device=dev).expand(n_rows, k)
    else:
        if row_max_count is not None:
            counts = torch.arange(values.shape[1], device=dev).view(1, -1, 1)
            values = values.masked_fill(counts > row_max_count.view(n_rows, 1, 1), math.nan)
        best = _best_first(values.flatten(1))[:, :k]
        count, pos = best // length, best % length
    chosen = torch.zeros((n_rows, k, n), dtype=torch.bool, device=dev)
    for i in range(n - 1, -1, -1):
        idx, prev_length = pointers[i]
        p = idx.flatten(1).gather(1, count * idx.shape[-1] + pos)
        taken = p >= prev_length
        chosen[..., i] = taken
        pos = torch.where(taken, p - prev_length, p)
        count = count - taken.long()
    return chosen


def kbest_budgeted_bitvectors(scores: Tensor, budget: int, k: int) -> Tensor:
    """The k best bit vectors with at most ``budget`` ones, best first (exact).

    scores: ``(N, d)`` (finite or ``-inf``); requires at least k such vectors. Returns
    ``(N, k, d)`` bool.

    Rank the items by score, ``s_1 >= ... >= s_d`` (stable), let p = #{s_i > 0} and
    ``m = min(budget, p)`` (the MAP takes ranks 1..m). Every vector ``z`` that leaves out a rank
    ``j <= m - k + 1``, or takes a rank ``r >= m + k``, has at least k distinct vectors at least
    as good that are one move closer to the MAP: swapping rank j in for one of its taken ranks
    ``> j`` and adding an untaken rank ``<= m`` (when below the budget) give ``>= m - j + 1`` of
    them; swapping rank r out for an untaken rank ``< r`` and removing a taken rank ``> p`` give
    ``>= r - m``. Every move strictly lowers ``sum_{i in z} w(rank_i)`` with ``w(r) = r - d - 1``
    for ``r <= p`` and ``w(r) = r`` otherwise, so by induction each such z is beaten by k vectors
    that take ranks ``1..m-k+1`` and no rank ``>= m + k``: the k best lie among those. Hence the
    count DP of ``kbest_subsets`` runs on the ``min(d, 2k - 2)`` ranks in between (the window
    shifted to fit in ``1..d``) with the ranks above it forced on: O(d log d + k^3) per row
    instead of O(d * budget * k).
    """
    n_rows, d = scores.shape
    dev = scores.device
    width = min(d, 2 * k - 2)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranked = scores.gather(-1, order)
    top = (scores > 0).sum(-1).clamp(max=budget)
    start = (top - k + 1).clamp(min=0, max=d - width)  # ranks forced on, (N,)
    window = start.unsqueeze(-1) + torch.arange(width, device=dev)
    chosen = kbest_subsets(
        ranked.gather(-1, window), min(width, budget), k, exact=False, row_max_count=budget - start
    )
    forced = torch.arange(d, device=dev) < start.unsqueeze(-1)
    by_rank = forced.unsqueeze(1).expand(n_rows, k, d).clone()
    by_rank.scatter_(-1, window.unsqueeze(1).expand(n_rows, k, width), chosen)
    return torch.empty_like(by_rank).scatter_(-1, order.unsqueeze(1).expand(n_rows, k, d), by_rank)
