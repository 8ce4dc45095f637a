"""Exact Gibbs samplers shared by the simple structures: categorical draws and backward sampling
through the count DP; the clamped noise comes from ``latentgrad._noise``.

All functions draw under ``torch.no_grad`` from detached scores, take an optional
``torch.Generator`` and work in at least float32 (the DP tables of half-precision scores lose
too much otherwise). No loop over examples or samples: the count sampler loops over items only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._noise import gumbel_perturbed, uniform


def row_max_shift(scores: Tensor) -> Tensor:
    """The detached row maximum ``(..., 1)`` of ``scores`` ``(..., n)`` (0 for a row without a
    finite entry): subtracting it before adding noise or summing scores keeps the sampler's
    arithmetic at the scale of the score differences, not of a large common offset (float32
    scores of 1e7 are spaced by 1, so noise added at that magnitude is rounded to integers)."""
    if not scores.numel():
        return scores.new_zeros((*scores.shape[:-1], 1))
    top = scores.detach().amax(-1, keepdim=True)
    return torch.where(torch.isfinite(top), top, 0.0)


def categorical(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row from ``softmax(logits)`` by Gumbel-max: ``(..., K)`` -> ``(...)`` long.

    ``-inf`` logits are never drawn (each row needs one finite entry). The logits are shifted by
    their row maximum first (``row_max_shift``; softmax is unchanged), so the Gumbel noise is not
    rounded at the scale of a large common offset."""
    return gumbel_perturbed(logits - row_max_shift(logits), generator).argmax(-1)


def count_prefix_table(scores: Tensor, max_count: int) -> Tensor:
    """``a[..., i, j] = log e_j(θ_1..θ_i)`` for ``i = 0..n``, ``j = 0..max_count``.

    The sequential elementary-symmetric recursion ``a_{i,j} = logaddexp(a_{i-1,j},
    a_{i-1,j-1} + θ_i)``, ``a_{0,0} = 0``, ``a_{0,j>0} = -inf``; ``-inf`` items leave the row
    unchanged. ``(*batch, n)`` -> ``(*batch, n + 1, max_count + 1)``.
    """
    batch, n = scores.shape[:-1], scores.shape[-1]
    row = torch.full((*batch, max_count + 1), float("-inf"), dtype=scores.dtype,
                     device=scores.device)
    row[..., 0] = 0.0
    rows = [row]
    for i in range(n):
        take = torch.cat([row.new_full((*batch, 1), float("-inf")), row[..., :-1]], dim=-1)
        row = torch.logaddexp(row, take + scores[..., i : i + 1])
        rows.append(row)
    return torch.stack(rows, dim=-2)


def sample_with_counts(table: Tensor, scores: Tensor, count: Tensor,
                       generator: torch.Generator | None) -> Tensor:
    """Backward sampling of ``z`` with ``sum z = count`` from ``p(z) ∝ exp(<θ, z>)``.

    ``table`` ``(*batch, n + 1, C + 1)`` from ``count_prefix_table(scores, C)``, ``scores``
    ``(*batch, n)`` and ``count`` ``(*sample, *batch)`` long (reachable counts ``<= C``).
    For ``i = n..1``: ``P(z_i = 1 | c ones among items 1..i) = exp(θ_i + a_{i-1,c-1} - a_{i,c})``;
    a count that must take every remaining item (``c = i``) or none (``c = 0``) is forced, so
    rounding can never produce an inadmissible structure. Returns ``(*sample, *batch, n)`` 0/1.
    """
    n = scores.shape[-1]
    shape = count.shape
    table = table.expand(*shape, *table.shape[-2:])
    theta = scores.expand(*shape, n)
    pad = table.new_full((*shape, n + 1, 1), float("-inf"))
    table = torch.cat([pad, table], dim=-1)  # column j + 1 holds count j; column 0 is count -1
    log_u = uniform((*shape, n), scores, generator).log()
    z = torch.zeros((*shape, n), dtype=scores.dtype, device=scores.device)
    c = count.clone()
    for i in range(n, 0, -1):
        here = table[..., i, :].gather(-1, (c + 1).unsqueeze(-1)).squeeze(-1)
        before = table[..., i - 1, :].gather(-1, c.unsqueeze(-1)).squeeze(-1)
        log_on = theta[..., i - 1] + before - here
        on = (log_u[..., i - 1] < log_on) | (c >= i)
        on = on & (c > 0)
        z[..., i - 1] = on.to(z.dtype)
        c = c - on.long()
    return z
