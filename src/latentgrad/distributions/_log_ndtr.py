"""``log Φ(u)``, the log of the standard normal CDF, for the densities' many evaluations.

``torch.special.log_ndtr`` evaluates ``log(erfcx(−u/√2)/2) − u²/2`` below ``u = −1`` with a
scalar ``erfcx`` (about 30 ns per element on one CPU thread). On the CPU, float32 tensors of at
least ``FUSED_MIN_SIZE`` elements go instead through one kernel that ``torch.compile`` generates
(inductor's vectorised C++), about 4 times faster, from the same identities:

    log Φ(u) = log1p(−erfc(u/√2)/2)                               u ≥ −1 (torch's formula),
             = log(erfc(−u/√2)/2)                                 −c ≤ u < −1,
             = −u²/2 − log(−u) − ½ log 2π + log Σ_k (−1)^k (2k−1)!! u^(−2k)    u < −c,

the middle line being torch's ``erfcx`` form unscaled, while ``erfc(−u/√2)`` stays above
tiny/eps (c = 11 in float32, 36 in float64), and the last one the asymptotic (Mills ratio)
series, 9 terms, whose error at ``u = −c`` is below 1e-11 relative. The gradient is torch's,
``φ(u)/Φ(u) = exp(−u²/2 − log Φ(u))/√(2π)``. Other devices and dtypes, smaller tensors,
``torch.func`` transforms, code being compiled, and every call once a compilation has failed
(``latentgrad._compile``) take ``torch.special.log_ndtr``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from latentgrad._compile import Compiled, transforms_active

FUSED_MIN_SIZE = 16384  # elements from which the compiled kernel is used (its call overhead and
# one compilation per process pay off: a density's quadrature nodes, 100 x 97 x 10 in the VAE)
_TAIL = {torch.float32: -11.0, torch.float64: -36.0}  # c: erfc(-c/√2) > tiny / eps
_SERIES_TERMS = 8
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def log_ndtr_kernel(u: Tensor) -> Tensor:
    """``log Φ(u)`` elementwise by the three identities of the module docstring."""
    t = u * math.sqrt(0.5)
    low = u < -1
    e = torch.special.erfc(torch.where(low, -t, t))
    body = torch.where(low, torch.log(0.5 * e), torch.log1p(-0.5 * e))
    inv = 1 / (u * u)
    term, series = torch.ones_like(u), torch.ones_like(u)
    for k in range(1, _SERIES_TERMS + 1):
        term = term * (-(2 * k - 1) * inv)
        series = series + term
    tail = -0.5 * u * u - torch.log(-u) - _LOG_SQRT_2PI + torch.log(series)
    return torch.where(u < _TAIL[u.dtype], tail, body)


_KERNEL = Compiled(log_ndtr_kernel)


class _LogNdtr(torch.autograd.Function):
    """``u`` -> the ``value`` ``log Φ(u)`` computed from it, with torch's gradient."""

    @staticmethod
    def forward(ctx: FunctionCtx, u: Tensor, value: Tensor) -> Tensor:
        ctx.save_for_backward(u, value)
        return value.view_as(value)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        u, value = ctx.saved_tensors
        return grad * torch.exp(-(value + 0.5 * u * u)) / math.sqrt(2 * math.pi), None


def _fused_applies(u: Tensor) -> bool:
    return (u.device.type == "cpu" and u.dtype == torch.float32 and u.numel() >= FUSED_MIN_SIZE
            and not torch.compiler.is_compiling() and not transforms_active())


def log_ndtr(u: Tensor) -> Tensor:
    """``log Φ(u)`` elementwise, differentiable: ``torch.special.log_ndtr`` up to rounding
    (module docstring)."""
    if not _fused_applies(u):
        return torch.special.log_ndtr(u)
    flat = u.detach().reshape(-1)
    torch._dynamo.mark_dynamic(flat, 0)  # one compilation for every size
    with torch.no_grad():
        value = _KERNEL(flat)
    if value is None:
        return torch.special.log_ndtr(u)
    value = value.view(u.shape)
    if torch.is_grad_enabled() and u.requires_grad:
        return _LogNdtr.apply(u, value)
    return value
