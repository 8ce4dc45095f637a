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
               tighten: Tighten | None = None) -> Candidates | None:
    """Entries of the (N, K) matrix ``x`` with ``x - row_max > -margin`` (``margin`` a float or
    (N,) tensor >= 0: minus a lower bound on the mapping's threshold on that shifted scale), or
    a few more (short rows are compared unshifted against ``lower_bound``; the threshold
    searches sort such extras out).

    On long rows the entries are screened through block maxima (see ``_blocked_candidates``);
    ``tighten(z, -margin)``, if given, returns a higher bound (N,) from the shifted block maxima
    ``z = block_max - row_max`` (N, W), any subset of a row: a threshold of that subset is a
    lower bound on the row's. Without it, only rows of ``_UNTIGHTENED_BLOCKED_FROM`` entries or
    more are screened by blocks (a loose margin makes most blocks qualify on shorter rows).

    Returns ``flat`` (M,) indices into ``x.view(-1)`` grouped by row (rows ascending), their
    ``rows`` (M,) and ``shifted = x_flat - row_max[rows]`` (M,); ``-inf`` entries never
    qualify. Returns ``None`` when a quarter or more of the entries qualify: then full-row
    (dense) computations are cheaper than flat lists.
    """
    n, k = x.shape
    block = _block_size(n, k) if tighten is not None or k >= _UNTIGHTENED_BLOCKED_FROM else 1
    if block > 1:
        return _blocked_candidates(x, row_max, margin, block, tighten)
    lower = lower_bound(row_max, margin)
    flat = torch.gt(x, lower.unsqueeze(1)).view(-1).nonzero().squeeze(1)
    if 4 * flat.numel() >= n * k:
        return None
    rows = torch.div(flat, k, rounding_mode="floor")
    return flat, rows, take(x, flat) - take(row_max, rows)


Tighten = Callable[[Tensor, "Tensor | float"], Tensor]
Candidates = tuple[Tensor, Tensor, Tensor]

_UNTIGHTENED_BLOCKED_FROM = 4096
_MIN_BLOCK = 4  # below this, one comparison over all entries is cheaper than block maxima
_MAX_BLOCK = 32
_MIN_WIDTH = 128  # blocks per row: strided maxima vectorise over this contiguous width
_GRAIN = 32768  # torch's intra-op grain (at::internal::GRAIN_SIZE): smaller ops run serially
_MAX_SERIAL_BLOCK = 64


def _block_size(n: int, k: int) -> int:
    """Entries per block for ``n`` rows of length ``k`` (1: no blocking): the largest that keeps
    ``_MIN_WIDTH`` blocks per row, or more where the (n, K / B) block maxima would otherwise
    exceed torch's parallel grain (the screening's dozen small ops on them then run on one
    thread: no thread hand-off each, which is what costs on a busy machine); a divisor of ``k``
    near that size if there is one (no tail columns to handle)."""
    block = min(_MAX_BLOCK, k // _MIN_WIDTH)
    if block < _MIN_BLOCK:
        return 1
    block = max(block, min(-(-n * k // _GRAIN), _MAX_SERIAL_BLOCK, k // _MIN_WIDTH))
    near = [b for b in range(block // 2, 2 * block) if k % b == 0]
    return min(near, key=lambda b: abs(b - block)) if near else block


def _blocked_candidates(x: Tensor, row_max: Tensor, margin: Tensor | float, block: int,
                        tighten: Tighten | None) -> Candidates | None:
    """``candidates`` screened by blocks: ``flat``, ``rows``, ``shifted``, or ``None`` if too many.

    A comparison and a ``nonzero`` over all N K entries cost more than a softmax, so this goes
    through blocks: block j of a row holds the columns ``j, j + W, j + 2 W, ...`` (W = K // B;
    a strided split whose maxima reduce over a middle dimension, which vectorises); only blocks
    whose maximum passes are expanded (an (H, B) gather), and the ``K mod B`` tail columns
    always are. Comparisons run on the shifted scale ``x - row_max`` (the one the threshold
    searches use; rounding is monotone, so a block whose shifted maximum fails holds no
    candidate).
    """
    n, k = x.shape
    n_blocks = k // block
    width = block * n_blocks
    shifted_max = x.as_strided((n, block, n_blocks), (k, n_blocks, 1)).amax(dim=1)
    shifted_max -= row_max.unsqueeze(1)
    bound = -margin if tighten is None else tighten(shifted_max, -margin)
    row_bound = bound.unsqueeze(1) if isinstance(bound, Tensor) else bound
    hit_rows, hit_blocks = torch.gt(shifted_max, row_bound).nonzero(as_tuple=True)
    if 4 * hit_rows.numel() * block >= n * k:  # as in ``candidates``: dense is cheaper
        return None
    steps = torch.arange(0, width, n_blocks, device=x.device)
    flat = (hit_rows * k + hit_blocks).unsqueeze(1) + steps  # (H, B)
    found = _within(x, flat, hit_rows, row_max, bound)
    if width < k:  # the tail columns, one more (shorter) block per row; regrouped by row
        all_rows = torch.arange(n, device=x.device)
        tail = (all_rows * k).unsqueeze(1) + torch.arange(width, k, device=x.device)
        tail_found = _within(x, tail, all_rows, row_max, bound)
        order = torch.argsort(torch.cat([found[1], tail_found[1]]), stable=True)
        found = tuple(torch.cat(pair)[order] for pair in zip(found, tail_found))
    return found


def _within(x: Tensor, flat: Tensor, rows: Tensor, row_max: Tensor,
            bound: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
    """The entries of the (H, B) index matrix ``flat`` into ``x`` (row ``rows[h]``) with
    ``x - row_max > bound``, in order: ``flat``, ``rows``, ``shifted`` (M,)."""
    width = flat.shape[1]
    flat = flat.view(-1)
    shifted = x.view(-1).index_select(0, flat).view(-1, width)
    shifted -= row_max.index_select(0, rows).unsqueeze(1)
    if isinstance(bound, Tensor):
        bound = bound.index_select(0, rows).unsqueeze(1)
    keep = torch.gt(shifted, bound).view(-1).nonzero().squeeze(1)
    rows = rows.index_select(0, torch.div(keep, width, rounding_mode="floor"))
    return flat.index_select(0, keep), rows, shifted.view(-1).index_select(0, keep)


def take(values: Tensor, index: Tensor) -> Tensor:
    """``values.view(-1)[index]`` for a 1-D ``index`` (``index_select``: several times faster
    than advanced indexing on CPU)."""
    return (values if values.dim() == 1 else values.reshape(-1)).index_select(0, index)


def padded(values: Tensor, rows: Tensor, n_rows: int, fill: float) -> tuple[Tensor, Tensor]:
    """Lay a flat list grouped by row out as an (n_rows, m) matrix, m the longest row, padding
    with ``fill``: per-row reductions then vectorise. Also returns each entry's column (M,)."""
    counts = torch.bincount(rows, minlength=n_rows)
    width = int(counts.max()) if rows.numel() else 0
    starts = counts.cumsum(0) - counts
    position = torch.arange(rows.numel(), device=rows.device) - take(starts, rows)
    out = values.new_full((n_rows, width), fill)
    out[rows, position] = values
    return out, position


def row_sum(values: Tensor, rows: Tensor, n_rows: int) -> Tensor:
    """Per-row sums of a flat (M,) list: (n_rows,)."""
    return values.new_zeros(n_rows).index_add(0, rows, values)


def scatter(values: Tensor, flat: Tensor, shape: torch.Size) -> Tensor:
    """Zeros of ``shape`` with ``values`` at the flat positions ``flat`` (differentiable)."""
    return values.new_zeros(shape.numel()).index_put_((flat,), values).view(shape)
