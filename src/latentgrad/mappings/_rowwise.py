"""Shared plumbing of the row-wise mappings: argument checks, the working dtype, ``vmap``.

Every mapping normalises along one dimension ``dim`` of a score tensor ``x``. Half-precision
inputs are computed in float32 and cast back; float32/float64 are computed as they are. Under
``torch.func.vmap`` a mapping with a closed-form VJP runs on the unbatched tensor, the vmapped
dimension being more rows (its solvers choose their work from the data, which ``vmap`` cannot
trace), with that VJP (J is symmetric: also the JVP) for the transforms around it; the other
``torch.func`` transforms take the same route.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from latentgrad._compile import transforms_active
from latentgrad._dtypes import working_dtype
from latentgrad._validation import check_min_dim, check_row_max, check_tensor, violated
from latentgrad.mappings._fused import FusedMapping
from latentgrad.mappings._support import Maxima, as_rows, from_rows, row_maxima


def normalize_dim(x: Tensor, dim: int, name: str = "dim") -> int:
    """Return ``dim`` as a non-negative index into ``x``'s dimensions, or raise ValueError."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{name} must be an int, got {type(dim).__name__}")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"{name}={dim} is out of range for a tensor of shape {tuple(x.shape)}")
    return dim % x.dim()


def check_scores(x: object, dim: int, name: str = "x") -> tuple[Tensor, int]:
    """Validate the type and shape of scores for a simplex mapping; return ``(x, dim >= 0)``.

    Requires a floating tensor with at least one dimension and at least one entry along ``dim``
    (a row of no entries has no distribution; an empty batch is fine). The values (no NaN, no
    ``+inf``, a non ``-inf`` entry in every row) are checked by ``checked_maxima``.
    """
    x = check_tensor(x, name)
    check_min_dim(x, name, 1)
    dim = normalize_dim(x, dim)
    if x.shape[dim] == 0:
        raise ValueError(
            f"{name} must have at least one entry along dim={dim}, got shape {tuple(x.shape)}")
    return x, dim


RowsVJP = Callable[[Tensor, Tensor], Tensor]  # (v, y) (N, K) rows -> J(y) v


def map_rows(x: object, dim: int, rows_fn: Callable[[Tensor, Maxima], Tensor],
             spread: float | None = None, fused: FusedMapping | None = None,
             vjp: RowsVJP | None = None) -> Tensor:
    """Apply a row-wise mapping along ``dim`` of the scores ``x``: validate them, run
    ``rows_fn(rows, maxima)`` on the (N, K) rows in the working dtype (``rows`` carries autograd,
    ``maxima`` are their checked row maxima, detached, with block maxima for ``spread``, see
    ``_support.row_maxima``) and return the (N, K) result in ``x``'s shape and dtype. An empty
    ``x`` maps to an empty copy. ``fused``, where it applies to the rows and its kernels are
    available, replaces ``rows_fn`` (it validates the rows itself). ``vjp``, the mapping's
    closed-form (symmetric) Jacobian product from its output, makes it work under
    ``torch.func.vmap`` (module docstring); with it, every ``torch.func`` transform (``grad``,
    ``jvp``, ``jacrev``, ``vmap``) goes through ``_UnderTransforms``, so the autograd Functions that
    ``rows_fn`` applies may take ``ctx`` in ``forward``: such a Function costs about 15 us per
    call against 90 for one with ``setup_context``, which ``torch.func`` requires (its ``apply``
    binds the arguments with ``inspect.signature`` on every call).
    """
    x, dim = check_scores(x, dim)
    if transforms_active():
        if vjp is not None:
            return _UnderTransforms.apply(
                x, dim, lambda t, d: map_rows(t, d, rows_fn, spread, fused, vjp), vjp)
        if _vmap_active():
            raise RuntimeError(
                "this mapping does not support torch.func.vmap (its solver chooses its work from "
                "the data); call it on the whole batch instead: it maps every row along dim")
    if x.numel() == 0:
        return x.clone()
    dtype = working_dtype(x.dtype)
    xw = x if x.dtype == dtype else x.to(dtype)
    plain = xw.dim() == 2 and dim == 1 and xw.is_contiguous()  # already (N, K) rows: no views
    rows_x = xw if plain else as_rows(xw, dim)
    y = fused(rows_x, dim) if fused is not None and fused.applies(rows_x) else None
    if y is None:
        y = rows_fn(rows_x, checked_maxima(rows_x.detach(), dim, spread))
    if not plain:
        y = from_rows(y, xw, dim)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def checked_maxima(rows: Tensor, dim: int, spread: float | None = None) -> Maxima:
    """``row_maxima`` of the (N, K) scores ``rows`` (``x`` along ``dim``), validated: no NaN, no
    ``+inf``, a non ``-inf`` entry in every row (one sync)."""
    maxima = row_maxima(rows, spread)
    check_row_max(maxima.rows, "x", dim)
    return maxima


def check_scalar_or_tensor_positive(value: object, name: str) -> None:
    """``value`` is a positive Python number or a floating tensor of positive finite entries
    (a tensor's values are checked with validation on: one sync)."""
    if isinstance(value, Tensor):
        check_tensor(value, name)
        if violated(value, lambda v: (v > 0) & torch.isfinite(v)):
            raise ValueError(f"{name} must be strictly positive and finite")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if not (value > 0 and value != float("inf")):
            raise ValueError(f"{name} must be strictly positive and finite, got {value}")
    else:
        raise TypeError(
            f"{name} must be a positive float or a floating tensor, got {type(value).__name__}"
        )


def _vmap_active() -> bool:
    """Whether a ``torch.func.vmap`` is among the active ``torch.func`` transforms."""
    if not transforms_active():
        return False
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return any(i.key() == TransformType.Vmap for i in retrieve_all_functorch_interpreters())


def _along(vjp: RowsVJP, v: Tensor, y: Tensor, dim: int) -> Tensor:
    """``vjp`` applied along ``dim`` of ``v`` and the output ``y`` (same shape), in the working
    dtype, returned in ``v``'s."""
    dtype = working_dtype(y.dtype)
    rows = vjp(as_rows(v.to(dtype), dim), as_rows(y.to(dtype), dim))
    return from_rows(rows, y, dim).to(v.dtype)


class _UnderTransforms(torch.autograd.Function):
    """``mapping(x, dim)`` (``dim`` >= 0) as every ``torch.func`` transform sees it: its ``vmap``
    rule maps the unbatched tensor, the vmapped dimension moved first, and its derivatives are
    the closed-form ``vjp`` from the output (pure tensor ops: they batch)."""

    @staticmethod
    def forward(x, dim, mapping, vjp):
        return mapping(x, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dim, ctx.vjp = inputs[1], inputs[3]
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return _along(ctx.vjp, grad_output, y, ctx.dim), None, None, None

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        (y,) = ctx.saved_tensors
        return _along(ctx.vjp, x_tangent, y, ctx.dim)

    @staticmethod
    def vmap(info, in_dims, x, dim, mapping, vjp):
        if in_dims[0] is None:
            return mapping(x, dim), None
        return mapping(x.movedim(in_dims[0], 0), dim + 1), 0


def check_sums_to_one(values: Tensor, name: str, log_input: bool, dtype: torch.dtype) -> None:
    """``ValueError`` naming ``name`` where a row (last dim) of probabilities (or of their logs,
    ``log_input``) does not sum to 1 within rounding: ``|sum - 1| <= 32 K eps`` of ``dtype``, the
    caller's (a row normalised in that dtype errs by at most about ``K eps / 2``)."""
    k = values.shape[-1]
    tol = 32 * max(k, 1) * torch.finfo(dtype).eps

    def error(v: Tensor) -> Tensor:  # computed only with validation on
        return (v.logsumexp(-1) if log_input else v.sum(-1) - 1.0).abs()

    if violated(values, lambda v: error(v) <= tol):
        worst = error(values).amax().item()
        kind = "log-sum-exp" if log_input else "sum - 1"
        raise ValueError(f"{name} must be normalised along its simplex dim (rows summing to 1): "
                         f"|{kind}| up to {worst:.3g}, beyond rounding ({tol:.3g})")
