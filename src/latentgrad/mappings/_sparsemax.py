"""sparsemax: the Euclidean projection onto the probability simplex (Martins & Astudillo, 2016).

    sparsemax(x) = argmin_{p in simplex} ||p - x||^2,   p_i = [x_i - tau]_+,   sum_i p_i = 1.

The full rows are never sorted. Since p_i <= 1, tau >= max(x) - 1, so only entries with
x_i > max(x) - 1 can be in the support; on long rows Michelot steps on the block maxima (a
subset of each row, see ``_support.candidates``) raise that lower bound, and only the few
entries above it are listed. The short lists are sorted for the exact threshold
(``_sorted_threshold``); long lists, or full rows when most entries are candidates, go through
Michelot's algorithm: Newton's method on the convex, decreasing, piecewise linear
f(t) = sum_i [x_i - t]_+ - 1 from a lower bound, t <- t + f(t) / #{x_i > t}, exact as soon as a
step drops no entry. Everything runs on the shifted x - max(x), so the result is exact at any
magnitude.
"""

from __future__ import annotations

import torch
from torch import Tensor

from latentgrad._dtypes import working_dtype
from latentgrad._host import host_reads_free
from latentgrad.mappings._fused import FusedMapping, sparsemax_kernel, sparsemax_vjp_kernel
from latentgrad.mappings._rowwise import check_scores, checked_maxima, map_rows
from latentgrad.mappings._support import (
    Candidates,
    Maxima,
    as_rows,
    candidates,
    one_thread,
    scatter_rows,
)

_TIGHTEN_STEPS = 2  # Michelot steps on the block maxima before the candidates are listed
_SORTED_UP_TO = 128  # candidate lists up to this long are sorted; longer ones iterate
_PAD = -2.0  # pads the candidate lists: below every threshold (tau >= -1 on the shifted scale)
_SPREAD = 2.0  # block layout for supports of a few entries (see ``_support.block_layout``)


def _solve(x: Tensor, maxima: Maxima) -> tuple[Tensor, Candidates | None]:
    """Threshold ``tau`` (N,) of sparsemax on the rows of the (N, K) matrix ``x`` relative to
    their maxima (no autograd), and the candidates that hold the support (``None`` when most
    entries are candidates: the dense path is then cheaper)."""
    found = candidates(x, maxima, 1.0, _PAD, _tighten)
    if found is None:
        z = x - maxima.rows.unsqueeze(1)
        if not host_reads_free(z):  # Michelot's convergence test would read on the host
            return _sorted_threshold(z), None
        return _michelot(z, z.new_full((z.shape[0], 1), -1.0)), None
    with one_thread():
        if found.values.shape[1] <= _SORTED_UP_TO:
            return _sorted_threshold(found.values), found
        return _michelot(found.values, found.bound), found


def _sorted_threshold(z: Tensor) -> Tensor:
    """Threshold (N,) of the short rows ``z`` (N, m) by sorting (Martins & Astudillo 2016,
    Alg. 1): with ``s`` sorted decreasingly and ``c`` its cumulative sums, ``tau = (c_k - 1) / k``
    at the largest k with ``1 + k s_k > c_k``, which is also the largest of all the
    ``(c_k - 1) / k`` (they rise up to that k and fall after it, entries below tau included;
    Condat 2016). A fixed handful of ops (no iteration): the short candidate lists are cheap to
    sort."""
    c = z.sort(dim=1, descending=True).values.cumsum_(dim=1)
    k = torch.arange(1, z.shape[1] + 1, dtype=z.dtype, device=z.device)
    return c.sub_(1.0).div_(k).amax(dim=1)


def _tighten(z: Tensor, bound: float) -> Tensor:
    """A higher lower bound (N, 1) on the threshold, from a subset ``z`` (N, W) of each shifted
    row that holds its maximum 0: Michelot steps from ``bound = -1 <= tau_S`` stay below the
    subset's threshold ``tau_S``, hence below the row's; lowered by a rounding allowance."""
    t = z.new_full((z.shape[0], 1), bound)
    for _ in range(_TIGHTEN_STEPS):
        gap = (z - t).relu_()
        t = torch.addcdiv(t, gap.sum(dim=1, keepdim=True).sub_(1.0),
                          gap.sign_().sum(dim=1, keepdim=True))
    allowance = 16 * torch.finfo(z.dtype).eps
    return t.mul_(1.0 + allowance).sub_(allowance)  # t - allowance * (1 - t)


def _michelot(z: Tensor, tau: Tensor) -> Tensor:
    """Michelot's iteration on the rows of ``z = x - max x`` (N, m) from lower bounds ``tau``
    (N, 1) on the threshold (``-1`` will do): the threshold (N,).

    With ``d = [z - t]_+``: ``t <- t + (sum d - 1) / #{d > 0}``; exact once the count repeats
    (the support shrinks at every other step, so at most m + 1 steps). That last step is taken
    too: the iterate before it came from gaps to a lower ``t`` (up to 1 each), whose rounded sum
    over a dense support put ``sum p`` off by ~1e4 eps in float32 at m = 4096; the last step's
    gaps are those of the output, and its correction removes that.
    """
    sizes = None
    for _ in range(z.shape[1] + 1):
        gap = (z - tau).relu_()
        excess = gap.sum(dim=1, keepdim=True).sub_(1.0)
        new_sizes = gap.sign_().sum(dim=1, keepdim=True)
        converged = sizes is not None and torch.equal(new_sizes, sizes)
        sizes = new_sizes
        tau = tau + excess / sizes
        if converged:
            break
    return tau.squeeze(1)


def _sparsemax_vjp(v: Tensor, y: Tensor, columns: Tensor | None) -> Tensor:
    """J v with J = diag(s) - s s^T / |S|, s = 1[y > 0], per row (J symmetric: VJP = JVP).

    ``y`` is the output (N, K) (dense form, ``columns is None``) or its values (N, m) at the
    candidates' ``columns`` (sparse form).
    """
    if columns is None:
        return _centred_on_support(v, y)
    with one_thread():
        jv = _centred_on_support(v.gather(1, columns), y)
    return scatter_rows(jv, columns, v.shape[1])


def _centred_on_support(v: Tensor, y: Tensor) -> Tensor:
    """``s * (v - <s, v> / |S|)`` per row, ``s = 1[y > 0]``, for ``v`` and ``y`` of one shape."""
    s = y.sign()  # float 0/1: cheaper than a bool mask on CPU
    vs = v * s
    mean = vs.sum(dim=1, keepdim=True).div_(s.sum(dim=1, keepdim=True))
    return torch.addcmul(vs, s, mean, value=-1.0)


class _Sparsemax(torch.autograd.Function):
    """(N, K) rows -> sparsemax rows: dense (``columns is None``: from ``x``, its row maxima and
    the threshold) or scattered from the output ``values`` (N, m) at the candidates' ``columns``
    (then computed by ``_sparsemax_rows``). A ``forward`` with ``ctx`` (see ``_rowwise.map_rows``
    for why and for ``torch.func``)."""

    @staticmethod
    def forward(ctx, x, row_max, tau, values, columns):
        if columns is None:
            y = (x - row_max.unsqueeze(1)).sub_(tau.unsqueeze(1)).clamp_min_(0.0)
            saved = (y,)
        else:
            y = scatter_rows(values, columns, x.shape[1])
            saved = (values, columns)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)
        return y

    @staticmethod
    def backward(ctx, grad_output):
        return _sparsemax_vjp(grad_output, *_saved(ctx)), None, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        return _sparsemax_vjp(x_tangent, *_saved(ctx))


def _saved(ctx) -> tuple[Tensor, Tensor | None]:
    """``(y, columns)`` as ``_sparsemax_vjp`` takes them (``columns`` None: the dense form)."""
    saved = ctx.saved_tensors
    return (saved[0], None) if len(saved) == 1 else saved


def _sparsemax_rows(x: Tensor, maxima: Maxima) -> Tensor:
    """The mapping on the (N, K) rows ``x`` with their ``maxima``; see ``map_rows``."""
    tau, found = _solve(x.detach(), maxima)
    row_max = maxima.rows
    if found is None:
        return _Sparsemax.apply(x, row_max, tau, None, None)
    with one_thread():
        values = found.values.sub_(tau.unsqueeze(1)).clamp_min_(0.0)
    return _Sparsemax.apply(x, row_max, tau, values, found.columns)


def sparsemax(x: Tensor, dim: int = -1) -> Tensor:
    """Sparsemax along ``dim``: ``p_i = [x_i - tau]_+`` with ``tau`` such that ``sum p = 1``.

    Args:
        x: scores (..., K, ...), float16/bfloat16/float32/float64; ``-inf`` entries get 0.
        dim: the dimension to normalise.

    Returns:
        ``p`` with ``x``'s shape and dtype, on the simplex along ``dim``. Backward is closed form:
        ``dx = s * (dp - <s, dp> / |S|)`` with ``s = 1[p > 0]``.

    With ``use_fused_kernels()`` on, CPU rows of 128 to 4096 entries run through compiled
    kernels (the same mapping, faster after a first call that compiles); see
    ``latentgrad.mappings``.

    Raises:
        TypeError: ``x`` is not a floating tensor.
        ValueError: ``x`` has a NaN, a ``+inf``, or a row that is entirely ``-inf``.
    """
    return map_rows(x, dim, _sparsemax_rows, _SPREAD, _FUSED, _centred_on_support)


_FUSED = FusedMapping(sparsemax_kernel, sparsemax_vjp_kernel, lambda y: y, _centred_on_support,
                      _sparsemax_rows, _SPREAD)


def _sorted_rows(x: Tensor, maxima: Maxima) -> Tensor:
    """The mapping on the (N, K) rows by sorting whole rows (see ``sparsemax_by_sorting``)."""
    tau = _sorted_threshold(x.detach() - maxima.rows.unsqueeze(1))
    return _Sparsemax.apply(x, maxima.rows, tau, None, None)


def sparsemax_by_sorting(x: Tensor, dim: int = -1) -> Tensor:
    """``sparsemax(x, dim)`` with the threshold found by sorting whole rows (O(K log K) per row)
    and the dense backward: every shape is fixed in advance, so (validation off) nothing waits
    for the device and ``torch.compile`` traces it as one graph. ``sparsemax`` is faster on long
    rows (its candidate lists have data-dependent sizes)."""
    return map_rows(x, dim, _sorted_rows, vjp=_centred_on_support)


def sparsemax_threshold(x: Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
    """Threshold and support size of sparsemax along ``dim`` (not differentiable).

    Returns ``tau`` (``x``'s dtype) and ``support_size`` (int64), both shaped like ``x`` with
    size 1 along ``dim``, such that ``sparsemax(x) = clamp(x - tau, min=0)`` up to the rounding
    of ``tau`` (computed on the max-shifted row, then shifted back).
    """
    x, dim = check_scores(x, dim)
    xw = x.detach().to(working_dtype(x.dtype))
    rows_x = as_rows(xw, dim)
    maxima = checked_maxima(rows_x, dim, _SPREAD)
    row_max = maxima.rows
    tau, found = _solve(rows_x, maxima)
    shifted = rows_x - row_max.unsqueeze(1) if found is None else found.values
    sizes = torch.gt(shifted, tau.unsqueeze(1)).sum(dim=1)
    shape = (*xw.movedim(dim, -1).shape[:-1], 1)
    tau = (row_max + tau).view(shape).movedim(-1, dim).to(x.dtype)
    return tau, sizes.view(shape).movedim(-1, dim)
