"""Candidate lists shared by the threshold mappings (sparsemax, 1.5-entmax, alpha-entmax).

A threshold mapping only ever puts mass on entries within a fixed margin of the row maximum
(sparsemax: ``x_i > max x - 1``; 1.5-entmax: ``x_i > max x - 2``), so its threshold search runs on
those candidates instead of on full rows. ``candidates`` finds them with a fixed handful of
tensor ops (no loop over rows; on long rows one full pass, the block maxima, which also give the
row maxima) and lays them out as a padded matrix (N, m), m the most candidates of any row:
per-row reductions then vectorise, and the output is scattered from it (``scatter_rows``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import NamedTuple

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


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the enclosed ops on the calling thread only; torch's intra-op thread count is restored
    after (with the OpenMP backend the count is per calling thread, though a thread that starts
    using torch meanwhile inherits it). The candidate lists are small: an op on them costs less
    than handing half of it to another thread, which a busy machine schedules late; the full
    passes (maxima, output) stay parallel."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Maxima(NamedTuple):
    """Row maxima ``rows`` (N,) of an (N, K) matrix and, for rows long enough to be screened by
    blocks, the (unshifted) block maxima ``blocks`` (N, W) (see ``block_layout``), else None."""

    rows: Tensor
    blocks: Tensor | None


class Candidates(NamedTuple):
    """Each row's candidates, padded to the longest row: ``values`` (N, m) the shifted scores
    ``x - max x`` followed by the padding ``fill``; ``columns`` (N, m) int64 their columns in
    ``x``, 0 under the padding; ``bound`` (N, 1) a lower bound on the threshold (shifted scale)
    that every candidate above it is listed for."""

    values: Tensor
    columns: Tensor
    bound: Tensor


Tighten = Callable[[Tensor, "Tensor | float"], Tensor]
Found = tuple[Tensor, Tensor, Tensor]  # rows, columns, shifted values (M,) of the candidates

LISTED_FROM = 64  # row length from which candidates are listed (shorter rows: dense)
BLOCKED_FROM = 512  # row length from which candidates are screened through block maxima
_UNTIGHTENED_BLOCKED_FROM = 4096  # the same without a ``tighten`` (a loose margin: many blocks)
_LANES = 32  # blocks per row come in multiples of this: their maxima reduce in vector lanes


@lru_cache(maxsize=256)
def block_layout(k: int, spread: float) -> tuple[int, int]:
    """``(width, depth)`` of the blocks of a row of ``k`` entries: ``width`` blocks of
    ``depth = k // width`` strided entries, block j holding the columns
    ``j, j + width, ..., j + (depth - 1) width`` and, for ``j < k - depth * width``, the tail
    column ``j + depth * width``.

    Screening costs about ``width`` per row and expanding the blocks above the bound about
    ``hits * k / width``, so ``width ~ sqrt(hits * k)``: ``spread ~ sqrt(hits)`` grows with the
    support size that a mapping expects. The strided maxima vectorise over ``_LANES`` blocks at a
    time, and a remainder of ``width mod _LANES`` costs extra at every depth: ``width`` is a
    multiple of ``_LANES``, or a divisor of ``k`` (no tail to expand) with a small remainder.
    """
    aim = spread * math.sqrt(k)
    divisors = [w for w in range(8, k // 2 + 1, 8) if k % w == 0 and aim / 2 <= w <= 2 * aim
                and (w % _LANES) * (k // w) <= k // 16]
    options = divisors or range(_LANES, max(_LANES, k // 2) + 1, _LANES)
    width = min(options, key=lambda w: abs(w - aim))
    return width, k // width


def row_maxima(x: Tensor, spread: float | None) -> Maxima:
    """``Maxima`` of the (N, K) matrix ``x``: through the block maxima (``block_layout`` with
    ``spread``) if ``spread`` is given and the rows are long enough to be screened by blocks (one
    strided reduction that vectorises over the blocks, then a short one), else directly. Both
    propagate NaN."""
    k = x.shape[1]
    if spread is None or k < BLOCKED_FROM:
        return Maxima(x.amax(dim=1), None)
    width, depth = block_layout(k, spread)
    body = depth * width
    blocks = x[:, :body].view(x.shape[0], depth, width).amax(dim=1)
    if body < k:  # the tail columns fold into the first blocks
        head = blocks[:, : k - body]
        torch.maximum(head, x[:, body:], out=head)
    return Maxima(blocks.amax(dim=1), blocks)


def candidates(x: Tensor, maxima: Maxima, margin: Tensor | float, fill: float,
               tighten: Tighten | None = None) -> Candidates | None:
    """The entries of the (N, K) matrix ``x`` with ``x - max x > -margin``, or a few more.

    ``margin`` (a float, or an (N,) tensor > 0) is minus a lower bound on the mapping's threshold
    on the shifted scale ``x - max x``; ``fill`` pads ``Candidates.values`` and must lie below
    every such bound. Extra candidates (a short row is compared unshifted with ``lower_bound``;
    a block holds entries besides its maximum) lie below the exact threshold, which the
    threshold searches find from the values alone.

    Rows with block maxima in ``maxima`` (or of ``_UNTIGHTENED_BLOCKED_FROM`` entries or more)
    are screened through them (``_blocked``): ``tighten(z, -margin)``, if given, returns a
    higher bound (N, 1) from the shifted block maxima ``z`` (N, W), a subset of each row that
    holds its maximum 0 (a threshold of a subset is a lower bound on the row's). Returns ``None``
    for rows shorter than ``LISTED_FROM`` or when the lists would be half as large as ``x`` or
    more: full-row (dense) computations are then cheaper.
    """
    n, k = x.shape
    if k < LISTED_FROM:
        return None
    blocks = maxima.blocks
    if blocks is None and k >= _UNTIGHTENED_BLOCKED_FROM:
        blocks = row_maxima(x, 1.0).blocks
    if blocks is None:
        bound, found = -margin, _entrywise(x, maxima.rows, margin)
    else:
        with one_thread():
            bound, found = _blocked(x, maxima.rows, blocks, margin, tighten)
    if found is None:
        return None
    bound = bound.view(n, 1) if isinstance(bound, Tensor) else x.new_full((n, 1), bound)
    with one_thread():
        return _padded(*found, bound, n, k, fill)


def _entrywise(x: Tensor, row_max: Tensor, margin: Tensor | float) -> Found | None:
    """``rows``, ``columns``, ``shifted`` (M,) of the candidates, found by comparing every entry
    with ``lower_bound``; ``None`` if half of them or more qualify."""
    n, k = x.shape
    flat = torch.gt(x, lower_bound(row_max, margin).unsqueeze(1)).view(-1).nonzero().squeeze(1)
    if 2 * flat.numel() >= n * k:
        return None
    rows = torch.div(flat, k, rounding_mode="floor")
    shifted = x.view(-1).index_select(0, flat).sub_(row_max.index_select(0, rows))
    return rows, flat.sub_(rows * k), shifted


def _blocked(x: Tensor, row_max: Tensor, blocks: Tensor, margin: Tensor | float,
             tighten: Tighten | None) -> tuple[Tensor | float, Found | None]:
    """The bound and ``_entrywise`` screened by the ``blocks`` (N, W) maxima: a block whose
    (shifted) maximum is at or below the bound holds no candidate, so only the blocks above it
    are expanded to their entries. Comparisons run on the shifted scale, where rounding is
    monotone."""
    n, k = x.shape
    width = blocks.shape[1]
    depth = k // width
    body = depth * width
    shifted_max = blocks - row_max.unsqueeze(1)
    bound = tighten(shifted_max, -margin) if tighten is not None else -margin
    if isinstance(bound, Tensor):
        bound = bound.view(n, 1)
    row_bound = bound
    hits = torch.gt(shifted_max, bound).view(-1).nonzero().squeeze(1)  # flat: row * width + j
    per_block = depth + (body < k)
    if 2 * hits.numel() * per_block >= n * k:
        return bound, None
    hit_rows = torch.div(hits, width, rounding_mode="floor")
    first = hits - hit_rows * width  # each hit block's first column
    # block j of row r holds x[r, j + d * width], d < per_block (the tail column d = depth only
    # for j < k - body): flat offsets into x, the missing tail read as -inf
    offsets = torch.arange(0, per_block * width, width, device=x.device)
    offsets = (hit_rows * k + first).unsqueeze(1) + offsets
    # index_select, not take: the same read, 3-4x faster on the CPU (take's generic indexing)
    flat = offsets.view(-1).clamp_(max=n * k - 1)
    values = x.reshape(-1).index_select(0, flat).view(-1, per_block)
    if body < k:
        values[:, depth].masked_fill_(first >= k - body, float("-inf"))
    values -= row_max.index_select(0, hit_rows).unsqueeze(1)
    if isinstance(bound, Tensor):
        bound = bound.index_select(0, hit_rows)
    keep = torch.gt(values, bound).view(-1).nonzero().squeeze(1)
    hit = torch.div(keep, per_block, rounding_mode="floor")
    shifted = values.view(-1).index_select(0, keep)
    columns = first.index_select(0, hit).add_(keep.sub_(hit * per_block).mul_(width))
    found = hit_rows.index_select(0, hit), columns, shifted
    return row_bound, found


def _padded(rows: Tensor, columns: Tensor, values: Tensor, bound: Tensor, n_rows: int, k: int,
            fill: float) -> Candidates | None:
    """Lay the flat lists (M,), grouped by row (rows ascending, every row present), out as
    ``Candidates`` (n_rows, m), m the longest row; ``None`` if that is half of ``k`` or more."""
    counts = torch.zeros(n_rows, dtype=rows.dtype, device=rows.device).index_add_(
        0, rows, torch.ones_like(rows))
    starts = counts.cumsum(0).sub_(counts)  # each row's first index in the flat lists
    position = torch.arange(rows.numel(), device=rows.device) - starts.index_select(0, rows)
    width = int(position.max()) + 1
    if 2 * width >= k:
        return None
    slots = position.add_(rows * width)
    padded_values = values.new_full((n_rows * width,), fill).index_copy_(0, slots, values)
    padded_columns = columns.new_zeros(n_rows * width).index_copy_(0, slots, columns)
    return Candidates(padded_values.view(n_rows, width), padded_columns.view(n_rows, width),
                      bound)


def scatter_rows(values: Tensor, columns: Tensor, k: int) -> Tensor:
    """(N, K) zeros with ``values`` (N, m) added at ``columns`` (N, m) of each row: the padding
    (column 0) must carry zeros (differentiable)."""
    return values.new_zeros(values.shape[0], k).scatter_add_(1, columns, values)
