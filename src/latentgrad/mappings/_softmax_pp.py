"""softmax++ (Potapczynski et al., 2020, IGR): invertible map R^{K-1} -> the open K-simplex.

    psi = softmax([x_1 / tau, ..., x_{K-1} / tau, log delta]),
    psi_k = e^{x_k / tau} / (sum_j e^{x_j / tau} + delta)  (k < K),  psi_K = delta / (...).

Inverse: ``x_k = tau (log psi_k - log psi_K + log delta)``. Jacobian of the first K-1 outputs:
``log |det d psi_{1:K-1} / d x| = sum_{k=1}^{K} log psi_k - (K - 1) log tau``.

These are compositions of ``log_softmax`` and elementwise ops, whose backward passes are already
closed form; autograd therefore differentiates them to any order and ``torch.func`` works.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from latentgrad._dtypes import working_dtype
from latentgrad._validation import (
    broadcast_shapes,
    check_finite,
    check_min_dim,
    check_tensor,
    violated,
)
from latentgrad.mappings._rowwise import (
    check_scalar_or_tensor_positive,
    check_sums_to_one,
    normalize_dim,
)


def _log_param(value: Tensor | float, like: Tensor) -> Tensor | float:
    """``log(value)`` as a float or as a tensor in ``like``'s dtype."""
    if isinstance(value, Tensor):
        return value.to(like.dtype).log()
    return math.log(value)


def _check_x(x: object, dim: int, name: str) -> tuple[Tensor, int]:
    x = check_tensor(x, name)
    check_min_dim(x, name, 1)
    check_finite(x, name)
    return x, normalize_dim(x, dim)


def _param(value: Tensor | float, dim: int, like: Tensor, name: str) -> Tensor | float:
    """A tensor ``tau``/``delta`` broadcasts with the batch shape (``like``'s shape without
    ``dim``, aligned on the right) and gets a size-1 axis at ``dim``, unless it already has
    ``like.dim()`` dimensions (then it must broadcast with size 1 along ``dim``); a
    ``ValueError`` naming it when it does not broadcast."""
    if isinstance(value, Tensor):
        shape = tuple(value.shape)
        value = value.to(like.dtype)
        if value.dim() and value.dim() < like.dim():
            batch_rank = like.dim() - 1
            value = value.reshape((1,) * (batch_rank - value.dim()) + shape).unsqueeze(dim)
        broadcast_shapes(value.shape, like.shape, error=lambda: (
            f"{name} of shape {shape} does not broadcast with the batch shape "
            f"{tuple(like.shape[:dim] + like.shape[dim + 1 :])} "
            f"(the input's shape {tuple(like.shape)} without dim={dim})"
        ))
    return value


def log_softmax_pp(
    x: Tensor, tau: Tensor | float = 1.0, delta: Tensor | float = 1.0, dim: int = -1
) -> Tensor:
    """``log softmax_pp(x; tau, delta)``: (..., K-1, ...) -> (..., K, ...) along ``dim``.

    Args:
        x: finite logits with K-1 entries along ``dim``.
        tau: temperature > 0, a float or a tensor broadcastable to the batch shape (``x`` without
            ``dim``) or to ``x`` with size 1 along ``dim``.
        delta: mass parameter of the extra category K (> 0), same forms as ``tau``.
    """
    x, dim = _check_x(x, dim, "x")
    check_scalar_or_tensor_positive(tau, "tau")
    check_scalar_or_tensor_positive(delta, "delta")
    dtype = working_dtype(x.dtype)
    xw = x.to(dtype)
    tau_w = _param(tau, dim, xw, "tau")
    log_delta = _log_param(_param(delta, dim, xw, "delta"), xw)
    # shifted by c = max(0, max_k x_k) (detached; log_softmax is shift-invariant): x − c is exact
    # near the maximum, so a large common offset is not rounded at its own scale, and the
    # logits stay <= log delta (an overflow of (x − c)/tau to -inf only underflows a psi_k)
    shift = xw.detach().amax(dim=dim, keepdim=True).clamp_min(0) if xw.shape[dim] else 0.0
    scaled = (xw - shift) / tau_w
    last_shape = (*scaled.shape[:dim], 1, *scaled.shape[dim + 1 :])
    if isinstance(log_delta, Tensor):
        last = log_delta.to(device=x.device, dtype=dtype).expand(last_shape)
    else:  # filled on the device: a host scalar copied there would wait for it
        last = scaled.new_full(last_shape, log_delta)
    last = last - shift / tau_w
    return torch.cat([scaled, last], dim=dim).log_softmax(dim=dim).to(x.dtype)


def softmax_pp(
    x: Tensor, tau: Tensor | float = 1.0, delta: Tensor | float = 1.0, dim: int = -1
) -> Tensor:
    """softmax++: (..., K-1, ...) -> (..., K, ...) along ``dim``, into the open K-simplex.

    ``psi = softmax([x / tau, log delta])``; see ``log_softmax_pp`` for the arguments.
    """
    return log_softmax_pp(x, tau, delta, dim).exp()


def softmax_pp_inverse(
    psi: Tensor, tau: Tensor | float = 1.0, delta: Tensor | float = 1.0, dim: int = -1,
    log_input: bool = False,
) -> Tensor:
    """Inverse of softmax++: (..., K, ...) -> (..., K-1, ...), ``x_k = tau (log psi_k - log psi_K
    + log delta)``.

    Args:
        psi: points of the open simplex (entries > 0), or ``log psi`` if ``log_input``.
        tau, delta: as in ``log_softmax_pp``.
        log_input: read ``psi`` as log-probabilities (more accurate for tiny probabilities).
    """
    log_psi, dim = _check_psi(psi, dim, log_input)
    check_scalar_or_tensor_positive(tau, "tau")
    check_scalar_or_tensor_positive(delta, "delta")
    k = log_psi.shape[dim]
    head, last = log_psi.split([k - 1, 1], dim=dim)
    tau_w = _param(tau, dim, log_psi, "tau")
    log_delta = _log_param(_param(delta, dim, log_psi, "delta"), log_psi)
    return (tau_w * (head - last + log_delta)).to(psi.dtype)


def softmax_pp_log_abs_det_jacobian(
    psi: Tensor, tau: Tensor | float = 1.0, dim: int = -1, log_input: bool = False
) -> Tensor:
    """``log |det d psi_{1:K-1} / d x| = sum_{k=1}^{K} log psi_k - (K - 1) log tau``.

    Args:
        psi: softmax++ outputs (..., K, ...) (or their logs if ``log_input``).
        tau: the temperature used, as in ``log_softmax_pp``.

    Returns:
        (...) with ``dim`` removed. (delta does not enter: it only rescales psi_K.)
    """
    log_psi, dim = _check_psi(psi, dim, log_input)
    check_scalar_or_tensor_positive(tau, "tau")
    k = log_psi.shape[dim]
    log_tau = _log_param(_param(tau, dim, log_psi, "tau"), log_psi)
    if isinstance(log_tau, Tensor) and log_tau.dim():
        log_tau = log_tau.squeeze(dim - log_psi.dim())  # the size-1 axis ``_param`` aligned
    return (log_psi.sum(dim=dim) - (k - 1) * log_tau).to(psi.dtype)


def _check_psi(psi: object, dim: int, log_input: bool) -> tuple[Tensor, int]:
    """Validate simplex points (or their logs) with K >= 1 entries; return log psi in the working
    dtype and ``dim >= 0``."""
    psi = check_tensor(psi, "psi")
    check_min_dim(psi, "psi", 1)
    dim = normalize_dim(psi, dim)
    if psi.shape[dim] < 1:
        raise ValueError(f"psi must have an entry along dim={dim}, got shape {tuple(psi.shape)}")
    work = psi.to(working_dtype(psi.dtype))
    if log_input:
        if violated(work, lambda w: (w <= 0) & (w > float("-inf"))):
            raise ValueError("psi (log-probabilities of the open simplex) must be finite and <= 0")
        check_sums_to_one(work.movedim(dim, -1), "psi", True, psi.dtype)
        return work, dim
    if violated(work, lambda w: (w > 0) & (w <= 1)):
        raise ValueError("psi must lie in the open simplex: entries in (0, 1], no NaN")
    check_sums_to_one(work.movedim(dim, -1), "psi", False, psi.dtype)
    return work.log(), dim
