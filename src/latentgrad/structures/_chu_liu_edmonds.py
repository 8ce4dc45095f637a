"""Batched Chu–Liu/Edmonds: maximum arborescence of a dense digraph, all examples in lockstep.

Each round every non-root node picks its best incoming arc; the chosen arcs form a functional
graph whose cycles (found by pointer doubling) are contracted simultaneously, with the arcs
entering a cycle node v re-scored ``s[u, v] - s[best(v), v]`` (Chu & Liu 1965; Edmonds 1967).
Every entry of the contracted score matrix remembers the original arc it stands for, so the
expansion needs only the per-round best arcs and node maps. A round costs O(n^2) per example
(group maxima by ``scatter_reduce``); there are at most n - 1 rounds. Python loops run over
rounds and pointer-doubling steps, never over examples. The algorithm needs only +, - and a
total order on arc weights, so it also runs on lexicographic (priority, score) weights: that is
how the single-root constraint is imposed exactly (fewest root children first).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._host import host_reads_free


def _doubling_steps(n: int) -> int:
    return max(1, math.ceil(math.log2(n))) + 1


def _cycle_nodes(parent: Tensor, movable: Tensor) -> Tensor:
    """Nodes on a cycle of the functional graph ``parent`` ``(B, n)`` (fixed points excluded)."""
    jump = parent
    for _ in range(_doubling_steps(parent.shape[-1])):
        jump = jump.gather(1, jump)
    on_image = torch.zeros_like(movable).scatter_(1, jump, True)
    return on_image & movable


def _cycle_labels(parent: Tensor, on_cycle: Tensor) -> Tensor:
    """The smallest node of each node's cycle (identity off cycles), ``(B, n)``."""
    label = torch.arange(parent.shape[-1], device=parent.device).expand_as(parent)
    smallest, jump = label, parent
    for _ in range(_doubling_steps(parent.shape[-1])):
        smallest = torch.minimum(smallest, smallest.gather(1, jump))
        jump = jump.gather(1, jump)
    return torch.where(on_cycle, smallest, label)


def _first_lexmax(levels: list[Tensor], dim: int) -> Tensor:
    """Position of the lexicographic maximum of ``levels`` along ``dim`` (first on ties)."""
    attains = torch.ones_like(levels[0], dtype=torch.bool)
    for level in levels:
        masked = level.masked_fill(~attains, float("-inf"))
        attains = attains & (masked == masked.amax(dim=dim, keepdim=True))
    return attains.to(torch.uint8).argmax(dim=dim)


def _group_lexmax(levels: list[Tensor], label: Tensor, dim: int) -> tuple[list[Tensor], Tensor]:
    """Lexicographic max of ``levels`` ``(B, n, n)`` over the entries of ``dim`` that share a
    label, and the (first) position attaining it. Empty groups give ``-inf`` and position 0."""
    n = levels[0].shape[-1]
    index = (label[:, :, None] if dim == 1 else label[:, None, :]).expand_as(levels[0])
    attains = torch.ones_like(levels[0], dtype=torch.bool)
    grouped_levels = []
    for level in levels:
        masked = level.masked_fill(~attains, float("-inf"))
        grouped = torch.full_like(level, float("-inf")).scatter_reduce(
            dim, index, masked, reduce="amax", include_self=False
        )
        attains = attains & (masked == grouped.gather(dim, index))
        grouped_levels.append(grouped)
    position = torch.arange(n, device=label.device)
    position = (position[None, :, None] if dim == 1 else position[None, None, :]).expand_as(index)
    candidate = torch.where(attains, position, n)
    first = torch.full_like(candidate, n).scatter_reduce(dim, index, candidate, reduce="amin")
    return grouped_levels, first.clamp_max(n - 1)


def max_arborescence_heads(scores: Tensor, root: Tensor, priority: Tensor | None = None) -> Tensor:
    """Head of every node in a maximum arborescence rooted at ``root``.

    Args:
        scores: ``(B, n, n)``, ``scores[b, i, j]`` = score of arc i -> j; finite (the diagonal and
            the column of the root are ignored).
        root: ``(B,)`` long, the root of each example.
        priority: optional ``(B, n, n)`` integer-valued arc priorities, compared before the
            scores: the arborescence with the largest total priority wins, ties broken by score.
            Edmonds' algorithm is exact over this ordered group (no big-M constant).

    Returns:
        ``(B, n)`` long: ``heads[b, j]`` is the head of j; ``heads[b, root[b]] = root[b]``.
    """
    batch, n = scores.shape[0], scores.shape[-1]
    device = scores.device
    nodes = torch.arange(n, device=device)
    rows = torch.arange(batch, device=device)
    # Work in float64: contracted scores are sums and differences of the inputs.
    levels = [scores.to(torch.float64)]
    if priority is not None:
        levels.insert(0, priority.to(torch.float64))
    invalid = (nodes[:, None] == nodes[None, :])[None] | (nodes == root[:, None])[:, None, :]
    levels = [level.masked_fill(invalid, float("-inf")) for level in levels]
    flat_arc = (nodes[:, None] * n + nodes[None, :]).expand(batch, n, n)
    active = torch.ones(batch, n, dtype=torch.bool, device=device)
    comp = nodes.expand(batch, n)
    movable = nodes != root[:, None]
    rounds = []
    # each contraction leaves at least one movable node fewer, and a cycle needs two: at most
    # n - 2 contractions. Where reading on the host is not free (an accelerator), all of them
    # run: a round without a cycle changes nothing (every label is the node itself).
    for contractions in range(max(n - 1, 1)):
        parent = torch.where(movable, _first_lexmax(levels, dim=1), nodes)
        best_arc = flat_arc.gather(1, parent[:, None, :]).squeeze(1)
        if contractions >= n - 2:
            break
        on_cycle = _cycle_nodes(parent, movable)
        if host_reads_free(on_cycle) and not bool(on_cycle.any()):
            break
        label = _cycle_labels(parent, on_cycle)
        rounds.append((on_cycle, label, comp, best_arc))
        adjusted = []
        for level in levels:
            best = level.gather(1, parent[:, None, :]).squeeze(1)
            adjusted.append(level - torch.where(on_cycle, best, torch.zeros_like(best))[:, None, :])
        by_head, head_pos = _group_lexmax(adjusted, label, dim=1)
        levels, dep_pos = _group_lexmax(by_head, label, dim=2)
        head_pos = head_pos.gather(2, dep_pos)
        flat_arc = flat_arc[rows[:, None, None], head_pos, dep_pos]
        merged = on_cycle & (label != nodes)
        active = active & ~merged
        movable = movable & ~merged
        comp = label.gather(1, comp)
        both_active = active[:, :, None] & active[:, None, :]
        invalid = (nodes[:, None] == nodes[None, :])[None] | ~both_active
        levels = [level.masked_fill(invalid, float("-inf")) for level in levels]
    arc = best_arc
    for on_cycle, label, comp, best_arc in reversed(rounds):
        outer = arc.gather(1, label)
        entered = comp.gather(1, outer % n) == nodes
        arc = torch.where(~on_cycle | entered, outer, best_arc)
    heads = torch.where(nodes == root[:, None], nodes, arc // n)
    return heads
