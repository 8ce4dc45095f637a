"""Stick-breaking: (0, 1)^{K-1} -> the K-simplex (used by IGR-SB, Potapczynski et al., 2020).

    pi_k = eta_k prod_{j<k} (1 - eta_j)  (k < K),   pi_K = prod_{j<K} (1 - eta_j)   (the remainder).

The Jacobian of the first K-1 outputs is lower triangular:
``log |det d pi_{1:K-1} / d eta| = sum_k sum_{j<k} log(1 - eta_j)``. The logit version takes
``eta = sigmoid(kappa)`` and works in log space with cumulative sums of ``logsigmoid(-kappa)``;
its log-det adds ``sum_k [logsigmoid(kappa_k) + logsigmoid(-kappa_k)]``.

All functions map along ``dim`` and are compositions of differentiable torch ops (closed-form
backward passes, differentiable to any order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from latentgrad._dtypes import working_dtype
from latentgrad._validation import (
    check_finite,
    check_min_dim,
    check_tensor,
    violated,
)
from latentgrad.mappings._rowwise import check_sums_to_one, normalize_dim


def _prepare(v: object, dim: int, name: str) -> tuple[Tensor, int]:
    """Validated tensor in its working dtype with ``dim`` moved last; returns ``(v, dim >= 0)``."""
    v = check_tensor(v, name)
    check_min_dim(v, name, 1)
    dim = normalize_dim(v, dim)
    return v.to(working_dtype(v.dtype)).movedim(dim, -1), dim


def _check_eta(eta: Tensor) -> None:
    if violated(eta, lambda e: (e >= 0) & (e <= 1)):
        raise ValueError("eta must lie in [0, 1] (stick fractions), with no NaN")


def _check_pi(pi: Tensor, log_input: bool, dtype: torch.dtype) -> None:
    """Entries in (0, 1] (or their logs), rows summing to 1 within ``dtype``'s rounding (the
    caller's dtype; ``pi`` is in the working dtype)."""
    if log_input:
        if violated(pi, lambda p: (p <= 0) & (p > float("-inf"))):
            raise ValueError("pi (log-probabilities of the open simplex) must be finite and <= 0")
    elif violated(pi, lambda p: (p > 0) & (p <= 1)):
        raise ValueError("pi must lie in the open simplex: entries in (0, 1], no NaN")
    check_sums_to_one(pi, "pi", log_input, dtype)


def stick_breaking(eta: Tensor, dim: int = -1) -> Tensor:
    """Break a unit stick: eta (..., K-1, ...) in [0, 1] -> pi (..., K, ...) on the simplex.

    ``pi_k = eta_k prod_{j<k}(1 - eta_j)`` for k < K and ``pi_K = prod_j (1 - eta_j)``.
    """
    eta_w, dim = _prepare(eta, dim, "eta")
    _check_eta(eta_w)
    rest = torch.cumprod(1.0 - eta_w, dim=-1)
    before = F.pad(rest[..., :-1], (1, 0), value=1.0)
    pi = torch.cat([eta_w * before, rest[..., -1:] if eta_w.shape[-1] else before], dim=-1)
    return pi.movedim(-1, dim).to(eta.dtype)


def stick_breaking_inverse(pi: Tensor, dim: int = -1) -> Tensor:
    """Inverse of ``stick_breaking``: pi (..., K, ...) with entries > 0 -> eta (..., K-1, ...).

    ``eta_k = pi_k / sum_{j >= k} pi_j`` (the fraction of the remaining stick).
    """
    pi_w, dim = _prepare(pi, dim, "pi")
    _check_pi(pi_w, False, pi.dtype)
    tail = pi_w.flip(-1).cumsum(-1).flip(-1)
    eta = pi_w[..., :-1] / tail[..., :-1]
    return eta.movedim(-1, dim).to(pi.dtype)


def stick_breaking_log_abs_det_jacobian(eta: Tensor, dim: int = -1) -> Tensor:
    """``log |det d pi_{1:K-1} / d eta| = sum_{j<K} (K - 1 - j) log(1 - eta_j)``: (...) with
    ``dim`` removed (``-inf`` where a stick fraction other than the last equals 1)."""
    eta_w, dim = _prepare(eta, dim, "eta")
    _check_eta(eta_w)
    n = eta_w.shape[-1]
    weights = torch.arange(n - 1, 0, -1, device=eta_w.device, dtype=eta_w.dtype)
    # the last fraction has weight 0: left out, so that eta_last = 1 has a finite gradient (0)
    return (weights * torch.log1p(-eta_w[..., :-1])).sum(-1).to(eta.dtype)


def log_stick_breaking_logits(kappa: Tensor, dim: int = -1) -> Tensor:
    """``log stick_breaking(sigmoid(kappa))``: kappa (..., K-1, ...) finite -> (..., K, ...).

    ``log pi_k = logsigmoid(kappa_k) + sum_{j<k} logsigmoid(-kappa_j)``, remainder
    ``sum_j logsigmoid(-kappa_j)``; no product of small numbers is ever formed.
    """
    kappa_w, dim = _prepare(kappa, dim, "kappa")
    check_finite(kappa_w, "kappa")
    log_rest = F.logsigmoid(-kappa_w)
    cum = log_rest.cumsum(-1)
    before = F.pad(cum[..., :-1], (1, 0))
    last = cum[..., -1:] if kappa_w.shape[-1] else before
    log_pi = torch.cat([F.logsigmoid(kappa_w) + before, last], dim=-1)
    return log_pi.movedim(-1, dim).to(kappa.dtype)


def stick_breaking_logits(kappa: Tensor, dim: int = -1) -> Tensor:
    """``stick_breaking(sigmoid(kappa))`` in log space: (..., K-1, ...) -> (..., K, ...)."""
    return log_stick_breaking_logits(kappa, dim).exp()


def stick_breaking_logits_inverse(pi: Tensor, dim: int = -1, log_input: bool = False) -> Tensor:
    """Inverse of ``stick_breaking_logits``: pi (..., K, ...) -> kappa (..., K-1, ...).

    ``kappa_k = log pi_k - log sum_{j > k} pi_j``; pass ``log pi`` with ``log_input=True`` for
    accuracy with tiny probabilities.
    """
    pi_w, dim = _prepare(pi, dim, "pi")
    _check_pi(pi_w, log_input, pi.dtype)
    log_pi = pi_w if log_input else pi_w.log()
    log_tail = log_pi.flip(-1).logcumsumexp(-1).flip(-1)
    kappa = log_pi[..., :-1] - log_tail[..., 1:]
    return kappa.movedim(-1, dim).to(pi.dtype)


def stick_breaking_logits_log_abs_det_jacobian(kappa: Tensor, dim: int = -1) -> Tensor:
    """``log |det d pi_{1:K-1} / d kappa|`` for ``pi = stick_breaking(sigmoid(kappa))``:
    ``sum_j (K - 1 - j) logsigmoid(-kappa_j) + sum_k [logsigmoid(kappa_k) + logsigmoid(-kappa_k)]``,
    (...) with ``dim`` removed."""
    kappa_w, dim = _prepare(kappa, dim, "kappa")
    check_finite(kappa_w, "kappa")
    n = kappa_w.shape[-1]
    weights = torch.arange(n, 0, -1, device=kappa_w.device, dtype=kappa_w.dtype)
    terms = weights * F.logsigmoid(-kappa_w) + F.logsigmoid(kappa_w)
    return terms.sum(-1).to(kappa.dtype)
