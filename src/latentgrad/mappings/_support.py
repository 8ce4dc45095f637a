"""Sparse row bookkeeping shared by sparsemax and entmax15.

A threshold mapping only ever puts mass on entries within a fixed margin of the row maximum
(sparsemax: ``x_i > max x - 1``; 1.5-entmax: ``x_i > max x - 2``), so the threshold search runs on
a flat list of those candidates (``flat`` indices into the (N, K) matrix, their ``rows``) instead
of on full rows: after one blocked pass over the input, the work is proportional to the number of
candidates.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def as_rows(x: Tensor, dim: int) -> Tensor:
    """View/copy ``x`` as a contiguous (N, K) matrix with ``dim`` last."""
    return x.movedim(dim, -1).contiguous().view(-1, x.shape[dim])


def from_rows(y: Tensor, like: Tensor, dim: int) -> Tensor:
    """Inverse of ``as_rows``: (N, K) back to ``like``'s shape with ``dim`` in place."""
    return y.view(like.movedim(dim, -1).shape).movedim(-1, dim)


def lower_bound(row_max: Tensor, margin: Tensor | float) -> Tensor:
    """``row_max - margin`` (N,) rounded down: a bound that no rounding puts above the exact one.

    At large magnitudes ``row_max - 1`` rounds to ``row_max`` (float32 from 2^24); comparing
    entries with that rounded bound would drop the maximum itself. One ulp down is always at or
    below the exact value, and the few extra candidates it may admit are sorted out by the exact
    threshold search, which runs on the shifted ``x - row_max``.
    """
    return torch.nextafter(row_max - margin, row_max.new_tensor(float("-inf")))


def candidates(x: Tensor, row_max: Tensor, margin: Tensor | float,
               tighten: Tighten | None = None) -> tuple[Tensor, Tensor, Tensor] | None:
    """Entries of the (N, K) matrix ``x`` above ``row_max - margin`` (a per-row bound, ``margin``
    a float or (N,) tensor >= 0, rounded down by ``lower_bound``).

    On long rows the entries are screened through block maxima (see ``_blocked_candidates``);
    ``tighten(z, margin)``, if given, may shrink the margin from the shifted block maxima
    ``z = block_max - row_max`` (N, W), any subset of a row: a threshold of that subset is a
    lower bound on the row's. Without it, only rows of ``_UNTIGHTENED_BLOCKED_FROM`` entries or
    more are screened by blocks (a loose margin makes most blocks qualify on shorter rows).

    Returns ``flat`` (M,) indices into ``x.view(-1)`` grouped by row (rows ascending), their
    ``rows`` (M,) and ``shifted = x_flat - row_max[rows]`` (M,); ``-inf`` entries never
    qualify. Returns ``None`` when a quarter or more of the entries qualify: then full-row
    (dense) computations are cheaper than flat lists.
    """
    n, k = x.shape
    block = _block_size(k) if tighten is not None or k >= _UNTIGHTENED_BLOCKED_FROM else 1
    if block > 1:
        found = _blocked_candidates(x, row_max, margin, block, tighten)
        if found is None:
            return None
        flat, rows = found
    else:
        lower = lower_bound(row_max, margin)
        flat = torch.gt(x, lower.unsqueeze(1)).view(-1).nonzero().squeeze(1)
        rows = torch.div(flat, k, rounding_mode="floor")
    if 4 * flat.numel() >= n * k:
        return None
    return flat, rows, x.view(-1)[flat] - row_max[rows]


Tighten = Callable[[Tensor, "Tensor | float"], Tensor]

_UNTIGHTENED_BLOCKED_FROM = 4096
_MIN_BLOCK = 4  # below this, one comparison over all entries is cheaper than block maxima
_MAX_BLOCK = 32
_MIN_WIDTH = 128  # blocks per row: strided maxima vectorise over this contiguous width


def _block_size(k: int) -> int:
    """Entries per block for rows of length ``k`` (1: no blocking): the largest that keeps
    ``_MIN_WIDTH`` blocks per row, a divisor of ``k`` if one is at least half as large (no tail
    columns to handle)."""
    block = min(_MAX_BLOCK, k // _MIN_WIDTH)
    if block < _MIN_BLOCK:
        return 1
    divisor = next(b for b in range(block, 0, -1) if k % b == 0)
    return divisor if 2 * divisor >= block else block


def _blocked_candidates(x: Tensor, row_max: Tensor, margin: Tensor | float, block: int,
                        tighten: Tighten | None) -> tuple[Tensor, Tensor] | None:
    """``flat``/``rows`` of the entries above ``row_max - margin``, or ``None`` if too many.

    A comparison and a ``nonzero`` over all N K entries cost more than a softmax, so this goes
    through blocks: block j of a row holds the columns ``j, j + W, j + 2 W, ...`` (W = K // B;
    a strided split whose maxima reduce over a middle dimension, which vectorises); only blocks
    whose maximum is above the bound are expanded, and the ``K mod B`` tail columns always are.
    """
    n, k = x.shape
    n_blocks = k // block
    width = block * n_blocks
    block_max = x.as_strided((n, block, n_blocks), (k, n_blocks, 1)).amax(dim=1)
    if tighten is not None:
        margin = tighten(block_max - row_max.unsqueeze(1), margin)
    lower = lower_bound(row_max, margin)
    hits = torch.gt(block_max, lower.unsqueeze(1)).view(-1).nonzero().squeeze(1)
    if 4 * hits.numel() * block >= n * k:  # as in ``candidates``: dense is cheaper
        return None
    hit_rows = torch.div(hits, n_blocks, rounding_mode="floor")
    starts = hits + hit_rows * (k - n_blocks)  # = row * k + first column of the block
    steps = torch.arange(0, width, n_blocks, device=x.device)
    flat = (starts.unsqueeze(1) + steps).view(-1)
    rows = hit_rows.unsqueeze(1).expand(-1, block).reshape(-1)
    if width < k:
        tail = torch.arange(width, k, device=x.device)
        all_rows = torch.arange(n, device=x.device)
        flat = torch.cat([flat, (all_rows.unsqueeze(1) * k + tail).view(-1)])
        rows = torch.cat([rows, all_rows.repeat_interleave(k - width)])
    keep = torch.gt(x.view(-1)[flat], lower[rows]).nonzero().squeeze(1)
    flat, rows = flat[keep], rows[keep]
    if width < k:  # the tail columns were appended after all blocks: regroup by row
        order = torch.argsort(rows, stable=True)
        flat, rows = flat[order], rows[order]
    return flat, rows


def padded(values: Tensor, rows: Tensor, n_rows: int, fill: float) -> tuple[Tensor, Tensor]:
    """Lay a flat list grouped by row out as an (n_rows, m) matrix, m the longest row, padding
    with ``fill``: per-row reductions then vectorise. Also returns each entry's column (M,)."""
    counts = torch.bincount(rows, minlength=n_rows)
    width = int(counts.max()) if rows.numel() else 0
    position = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    out = values.new_full((n_rows, width), fill)
    out[rows, position] = values
    return out, position


def row_sum(values: Tensor, rows: Tensor, n_rows: int) -> Tensor:
    """Per-row sums of a flat (M,) list: (n_rows,)."""
    return values.new_zeros(n_rows).index_add(0, rows, values)


def scatter(values: Tensor, flat: Tensor, shape: torch.Size) -> Tensor:
    """Zeros of ``shape`` with ``values`` at the flat positions ``flat`` (differentiable)."""
    return values.new_zeros(shape.numel()).index_put_((flat,), values).view(shape)
