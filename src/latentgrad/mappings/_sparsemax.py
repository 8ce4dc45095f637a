"""sparsemax: the Euclidean projection onto the probability simplex (Martins & Astudillo, 2016).

    sparsemax(x) = argmin_{p in simplex} ||p - x||^2,   p_i = [x_i - tau]_+,   sum_i p_i = 1.

The full rows are never sorted. Since p_i <= 1, tau >= max(x) - 1, so only entries with
x_i > max(x) - 1 can be in the support; on long rows a lower bound on tau from the block maxima
(a subset of each row, see ``_support.candidates``) narrows that list further. The short list of
candidates is sorted for the exact threshold (``_sorted_threshold``). When most entries are
candidates, Michelot's algorithm runs on full rows instead: Newton's method on the convex,
decreasing, piecewise linear f(t) = sum_i [x_i - t]_+ - 1 from the lower bound t_0 = max(x) - 1,
t <- (sum_{x_i > t} x_i - 1) / #{x_i > t}, exact as soon as a step drops no entry. Everything
runs on the shifted x - max(x), so the result is exact at any magnitude.
"""

from __future__ import annotations

import torch
from torch import Tensor

from latentgrad._dtypes import working_dtype
from latentgrad._validation import checked_row_max
from latentgrad.mappings._rowwise import check_scores, map_rows
from latentgrad.mappings._support import as_rows, candidates, padded, row_sum, scatter, take


def _support(x: Tensor, row_max: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:
    """Threshold of sparsemax on the rows of the (N, K) matrix ``x`` (no autograd).

    Returns ``tau`` (N,) relative to ``row_max``; the support as ``flat`` indices into
    ``x.view(-1)`` with their ``rows``, both ``None`` when most entries are candidates (then the
    dense path is cheaper); and the support ``sizes`` (N,) as floats.
    """
    return _solve(x, row_max)[:4]


def _solve(x: Tensor, row_max: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor,
                                                 Tensor | None]:
    """``_support`` and the output values on the support (``None`` on the dense path)."""
    found = candidates(x, row_max, 1.0, _tighten)
    if found is None:
        tau, sizes = _michelot(x - row_max.unsqueeze(1))
        return tau, None, None, sizes, None
    flat, rows, z = found
    tau = _sorted_threshold(padded(z, rows, x.shape[0], -2.0)[0])  # -2 < -1 <= tau
    values = z - take(tau, rows)
    support = torch.gt(values, 0.0).nonzero().squeeze(1)
    rows = take(rows, support)
    sizes = torch.bincount(rows, minlength=x.shape[0]).to(x.dtype)
    return tau, take(flat, support), rows, sizes, take(values, support)


def _sorted_threshold(z: Tensor) -> Tensor:
    """Threshold (N,) of the short rows ``z`` (N, m) by sorting (Martins & Astudillo 2016,
    Alg. 1): with ``s`` sorted decreasingly and ``c`` its cumulative sums, ``tau = (c_k - 1) / k``
    at the largest k with ``1 + k s_k > c_k``, which is also the largest of all the
    ``(c_k - 1) / k`` (they rise up to that k and fall after it; Condat 2016). A fixed handful of
    ops (no iteration): the short candidate lists are cheap to sort."""
    c = z.sort(dim=1, descending=True).values.cumsum_(dim=1)
    k = torch.arange(1, z.shape[1] + 1, dtype=z.dtype, device=z.device)
    return c.sub_(1.0).div_(k).amax(dim=1)


def _tighten(z: Tensor, bound: float) -> Tensor:
    """A higher lower bound (N,) on the threshold, from a subset ``z`` (N, W) of each shifted row
    that holds its maximum 0: one Michelot step from ``bound = -1 <= tau_S`` stays below the
    subset's threshold ``tau_S``, hence below the row's; lowered by a rounding allowance."""
    gap = (z - bound).relu_()
    t = (gap.sum(dim=1) - 1.0).div_(gap.sign_().sum(dim=1)).add_(bound)
    allowance = 16 * torch.finfo(z.dtype).eps
    return t.mul_(1.0 + allowance).sub_(allowance)  # t - allowance * (1 - t)


def _michelot(z: Tensor) -> tuple[Tensor, Tensor]:
    """Michelot's iteration on the rows of ``z = x - max x`` (N, m): ``tau`` and ``sizes`` (N,).

    With ``d = [z - t]_+``: ``t <- t + (sum d - 1) / #{d > 0}`` from ``t = -1``; exact once the
    count repeats (the support shrinks at every other step, so at most m + 1 steps).
    """
    tau = z.new_full((z.shape[0], 1), -1.0)
    sizes = None
    for _ in range(z.shape[1] + 1):
        gap = (z - tau).relu_()
        excess = gap.sum(dim=1, keepdim=True) - 1.0
        new_sizes = gap.sign_().sum(dim=1, keepdim=True)
        if sizes is not None and torch.equal(new_sizes, sizes):
            break
        sizes = new_sizes
        tau = tau + excess / sizes
    return tau.squeeze(1), sizes.squeeze(1)


def _sparsemax_vjp(v: Tensor, y: Tensor, flat: Tensor | None, rows: Tensor | None,
                   sizes: Tensor) -> Tensor:
    """J v with J = diag(s) - s s^T / |S|, s = 1[y > 0], per row (J symmetric: VJP = JVP).

    Sparse form (on the support ``flat``/``rows``) or dense form (``flat is None``).
    """
    if flat is None:
        support = y.sign()  # float 0/1: cheaper than a bool mask on CPU
        mean = (v * support).sum(dim=1, keepdim=True) / sizes.unsqueeze(1)
        return (v - mean) * support
    v_s = take(v, flat)
    mean = row_sum(v_s, rows, sizes.shape[0]) / sizes
    return scatter(v_s - take(mean, rows), flat, v.shape)


class _Sparsemax(torch.autograd.Function):
    """(N, K) rows -> sparsemax rows, given the threshold and support found by ``_solve``."""

    @staticmethod
    def forward(x, row_max, tau, flat, rows, sizes, values):
        if flat is None:
            return (x - row_max.unsqueeze(1)).sub_(tau.unsqueeze(1)).clamp_min_(0.0)
        return scatter(values, flat, x.shape)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, _, flat, rows, sizes, _ = inputs
        y = output if flat is None else None
        ctx.save_for_backward(y, flat, rows, sizes)
        ctx.save_for_forward(y, flat, rows, sizes)

    @staticmethod
    def backward(ctx, grad_output):
        dx = _sparsemax_vjp(grad_output, *ctx.saved_tensors)
        return dx, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        return _sparsemax_vjp(x_tangent, *ctx.saved_tensors)


def _sparsemax_rows(x: Tensor, row_max: Tensor) -> Tensor:
    """The mapping on the (N, K) rows ``x`` with row maxima ``row_max`` (N,); see ``map_rows``."""
    return _Sparsemax.apply(x, row_max, *_solve(x.detach(), row_max))


def sparsemax(x: Tensor, dim: int = -1) -> Tensor:
    """Sparsemax along ``dim``: ``p_i = [x_i - tau]_+`` with ``tau`` such that ``sum p = 1``.

    Args:
        x: scores (..., K, ...), float16/bfloat16/float32/float64; ``-inf`` entries get 0.
        dim: the dimension to normalise.

    Returns:
        ``p`` with ``x``'s shape and dtype, on the simplex along ``dim``. Backward is closed form:
        ``dx = s * (dp - <s, dp> / |S|)`` with ``s = 1[p > 0]``.

    Raises:
        TypeError: ``x`` is not a floating tensor.
        ValueError: ``x`` has a NaN, a ``+inf``, or a row that is entirely ``-inf``.
    """
    return map_rows(x, dim, _sparsemax_rows)


def _sorted_rows(x: Tensor, row_max: Tensor) -> Tensor:
    """The mapping on the (N, K) rows by sorting whole rows (see ``sparsemax_by_sorting``)."""
    z = x.detach() - row_max.unsqueeze(1)
    tau = _sorted_threshold(z)
    sizes = torch.gt(z, tau.unsqueeze(1)).sum(dim=1).to(z.dtype)
    return _Sparsemax.apply(x, row_max, tau, None, None, sizes, None)


def sparsemax_by_sorting(x: Tensor, dim: int = -1) -> Tensor:
    """``sparsemax(x, dim)`` with the threshold found by sorting whole rows (O(K log K) per row)
    and the dense backward: every shape is fixed in advance, so (validation off) nothing waits
    for the device and ``torch.compile`` traces it as one graph. ``sparsemax`` is faster on long
    rows (its candidate lists have data-dependent sizes)."""
    return map_rows(x, dim, _sorted_rows)


def sparsemax_threshold(x: Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
    """Threshold and support size of sparsemax along ``dim`` (not differentiable).

    Returns ``tau`` (``x``'s dtype) and ``support_size`` (int64), both shaped like ``x`` with
    size 1 along ``dim``, such that ``sparsemax(x) = clamp(x - tau, min=0)`` up to the rounding
    of ``tau`` (computed on the max-shifted row, then shifted back).
    """
    x, dim = check_scores(x, dim)
    if x.shape[dim] == 0:
        raise ValueError(f"x must have at least one entry along dim={dim}, got {tuple(x.shape)}")
    xw = x.detach().to(working_dtype(x.dtype))
    rows_x = as_rows(xw, dim)
    row_max = checked_row_max(rows_x, "x", dim=1, shown_dim=dim)
    tau, _, _, sizes = _support(rows_x, row_max)
    shape = (*xw.movedim(dim, -1).shape[:-1], 1)
    tau = (row_max + tau).view(shape).movedim(-1, dim).to(x.dtype)
    return tau, sizes.long().view(shape).movedim(-1, dim)
