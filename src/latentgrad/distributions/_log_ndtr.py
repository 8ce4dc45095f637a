"""``log Φ(u)``, the log of the standard normal CDF, with a gradient that stays exact in the tail.

The compiled kernel (below) computes the value from three identities:

    log Φ(u) = log1p(−erfc(u/√2)/2)                               u ≥ −1 (torch's formula),
             = log(erfc(−u/√2)/2)                                 −c ≤ u < −1,
             = −u²/2 − log(−u) − ½ log 2π + log S(u)              u < −c,
      S(u) = Σ_k (−1)^k (2k−1)!! u^(−2k)   (the asymptotic, Mills ratio, series; 9 terms),

the middle line being torch's ``erfcx`` form unscaled, while ``erfc(−u/√2)`` stays above
tiny/eps (c = 11 in float32, 36 in float64); the series' error at ``u = −c`` is below 1e-11
relative. The gradient is the inverse Mills ratio ``λ(u) = φ(u)/Φ(u)``. ``torch.special.log_ndtr``
takes it as ``exp(−u²/2 − log Φ(u))/√(2π)``, which cancels two terms of size u²/2: its relative
error grows like eps·u²/2 (float32: 5% at u = −1000, 0.4 instead of 10⁵ at u = −10⁵; float64:
inf at u = −10¹⁰). Neither path here uses it where it cancels.

Two paths give the same values up to rounding:
- ``log_ndtr`` in general: torch's ``log_ndtr`` for the value and ``λ(u) = √(2/π)/erfcx(−u/√2)``
  for the gradient (no cancellation at any u; differentiable again, and under ``torch.func``
  transforms);
- CPU float32 tensors of at least ``FUSED_MIN_SIZE`` elements: one kernel that
  ``torch.compile`` generates for the three identities (inductor's vectorised C++; torch's
  scalar ``erfcx`` costs about 30 ns per element on one CPU thread, this about a quarter of
  that), and one for λ in the backward: the exp form above −c (error below eps·c²/2 there) and
  ``λ(u) = −u / S(u)`` below. Code being compiled, ``torch.func`` transforms, and every call once
  a compilation has failed (``latentgrad._compile``) take the general path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from latentgrad._autograd import apply
from latentgrad._compile import Compiled, transforms_active

FUSED_MIN_SIZE = 16384  # elements from which the compiled kernel is used (its call overhead and
# one compilation per process pay off: a density's quadrature nodes, 100 x 97 x 10 in the VAE)
_TAIL = {torch.float32: -11.0, torch.float64: -36.0}  # c: erfc(-c/√2) > tiny / eps
_SERIES_TERMS = 8
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_SQRT_HALF = math.sqrt(0.5)


def _mills_series(u: Tensor) -> Tensor:
    """S(u) = Σ_{k=0}^{8} (−1)^k (2k−1)!! u^(−2k), so that Φ(u) ≈ φ(u) S(u) / (−u) for u ≪ 0."""
    inv = 1 / (u * u)
    term, series = torch.ones_like(u), torch.ones_like(u)
    for k in range(1, _SERIES_TERMS + 1):
        term = term * (-(2 * k - 1) * inv)
        series = series + term
    return series


def _log_ndtr_tail(u: Tensor) -> Tensor:
    """log Φ(u) = −u²/2 − log(−u) − ½ log 2π + log S(u), for u < −c."""
    return -0.5 * u * u - torch.log(-u) - _LOG_SQRT_2PI + torch.log(_mills_series(u))


def log_ndtr_kernel(u: Tensor) -> Tensor:
    """``log Φ(u)`` elementwise by the three identities of the module docstring."""
    t = u * math.sqrt(0.5)
    low = u < -1
    e = torch.special.erfc(torch.where(low, -t, t))
    body = torch.where(low, torch.log(0.5 * e), torch.log1p(-0.5 * e))
    return torch.where(u < _TAIL[u.dtype], _log_ndtr_tail(u), body)


def inverse_mills_kernel(u: Tensor, value: Tensor) -> Tensor:
    """λ(u) = φ(u)/Φ(u) from ``value`` = log Φ(u): ``exp(−u²/2 − value)/√(2π)`` above −c,
    ``−u / S(u)`` below (module docstring)."""
    tail = u < _TAIL[u.dtype]
    direct = torch.exp(-(value + 0.5 * u * u)) * _INV_SQRT_2PI
    return torch.where(tail, -u / _mills_series(u), direct)


def _times_ratio(grad: Tensor, ratio: Tensor) -> Tensor:
    """``grad · λ``, 0 where ``grad`` is 0: λ(−inf) = inf, and a caller that masks such an entry
    out (``torch.where``) sends it a zero gradient, which must stay 0, not 0 · inf = NaN."""
    return torch.where(grad == 0, 0.0, grad * ratio)


_KERNEL = Compiled(log_ndtr_kernel)
_GRAD_KERNEL = Compiled(inverse_mills_kernel)


class _LogNdtr(torch.autograd.Function):
    """``u`` -> the ``value`` ``log Φ(u)`` computed from it; gradient ``λ(u)`` (compiled)."""

    @staticmethod
    def forward(ctx: FunctionCtx, u: Tensor, value: Tensor) -> Tensor:
        ctx.save_for_backward(u, value)
        return value.view_as(value)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        u, value = ctx.saved_tensors
        if torch.is_grad_enabled():  # a double backward: the general path's λ, differentiable
            # (``once_differentiable`` here gave a gradient with no graph when ``grad`` did not
            # require grad, silently dropping the λ' terms, e.g. of d/da ∇_u log Φ(a u))
            return _times_ratio(grad, inverse_mills(u)), None
        ratio = _GRAD_KERNEL(u, value)
        if ratio is None:
            ratio = inverse_mills_kernel(u, value)
        return _times_ratio(grad, ratio), None


def inverse_mills(u: Tensor) -> Tensor:
    """λ(u) = φ(u)/Φ(u) = √(2/π) / erfcx(−u/√2): no cancellation at any u (one special function
    per entry). Where autograd records (``u`` requires grad in grad mode, or a ``torch.func``
    transform is active), the form ``_differentiable_inverse_mills``, whose derivative stays
    finite where erfcx overflows."""
    if (torch.is_grad_enabled() and u.requires_grad) or transforms_active():
        return _differentiable_inverse_mills(u)
    return _SQRT_2_OVER_PI / torch.special.erfcx(-u * _SQRT_HALF)


def _differentiable_inverse_mills(u: Tensor) -> Tensor:
    """λ(u) as √(2/π)/erfcx(−u/√2) for u ≤ 0 and φ(u)/Φ(u) itself for u > 0 (Φ ≥ ½: no
    cancellation either). erfcx(−u/√2) overflows from u ≈ 13.2 in float32 and 37.7 in float64,
    where its derivative made λ' = inf/inf = NaN: a NaN second derivative of log Φ."""
    upper = u > 0
    lower = torch.where(upper, 0.0, u)
    positive = torch.where(upper, u, 0.0)
    body = torch.exp(-0.5 * positive * positive) * _INV_SQRT_2PI / torch.special.ndtr(positive)
    return torch.where(upper, body, _SQRT_2_OVER_PI / torch.special.erfcx(-lower * _SQRT_HALF))


class _PlainLogNdtr(torch.autograd.Function):
    """torch's ``log_ndtr`` with the gradient ``λ(u)`` from ``inverse_mills`` (differentiable
    again, and under ``torch.func`` transforms)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(u: Tensor) -> Tensor:
        return torch.special.log_ndtr(u)

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> Tensor:
        (u,) = ctx.saved_tensors
        return _times_ratio(grad, inverse_mills(u))

    @staticmethod
    def jvp(ctx: FunctionCtx, tangent: Tensor) -> Tensor:
        """Forward mode (``torch.func.jvp``, ``jacfwd``, ``hessian``): ``λ(u)`` times the
        tangent, as the backward."""
        (u,) = ctx.saved_tensors
        return _times_ratio(tangent, inverse_mills(u))


def _fused_applies(u: Tensor) -> bool:
    return (u.device.type == "cpu" and u.dtype == torch.float32 and u.numel() >= FUSED_MIN_SIZE
            and not torch.compiler.is_compiling() and not transforms_active())


def _log_ndtr_plain(u: Tensor) -> Tensor:
    """torch's ``log_ndtr`` (its value), with the exact gradient λ(u)."""
    return apply(_PlainLogNdtr, u)


def log_ndtr(u: Tensor) -> Tensor:
    """``log Φ(u)`` elementwise, differentiable, with an exact gradient φ(u)/Φ(u) at any u
    (``torch.special.log_ndtr``'s loses it below u ≈ −100 in float32; module docstring).
    Half-precision ``u`` is evaluated in float32 (torch has no half-precision kernel) and the
    result cast back."""
    if u.dtype in (torch.float16, torch.bfloat16):
        return log_ndtr(u.float()).to(u.dtype)
    if not _fused_applies(u):
        return _log_ndtr_plain(u)
    flat = u.detach().reshape(-1)
    torch._dynamo.mark_dynamic(flat, 0)  # one compilation for every size
    with torch.no_grad():
        value = _KERNEL(flat)
    if value is None:
        return _log_ndtr_plain(u)
    value = value.view(u.shape)
    if torch.is_grad_enabled() and u.requires_grad:
        return _LogNdtr.apply(u, value)
    return value
