"""Parameter constraints, parameter broadcasting and sample-shape checks shared by the
distributions.

torch's ``constraints.real`` admits ``±inf`` (it only rejects NaN), and its ``independent``
wrapper fails on tensors with zero elements; the constraints here reject non-finite values and
reduce over empty batches. With ``validate_args`` on, ``torch.distributions.Distribution`` raises
a ``ValueError`` naming the parameter that violates them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from .._dtypes import moderate_limit, working_dtype
from .._validation import broadcast_shapes, check_sample_shape


class _Finite(constraints.Constraint):
    """Finite reals (no NaN, no ``±inf``)."""

    def check(self, value: Tensor) -> Tensor:
        return torch.isfinite(value)


class _FinitePositive(constraints.Constraint):
    """Finite reals ``> 0``."""

    def check(self, value: Tensor) -> Tensor:
        return torch.isfinite(value) & (value > 0)


def _computed_max(value: Tensor) -> float:
    """The largest finite value of the dtype ``value`` is computed in (``working_dtype``)."""
    return torch.finfo(working_dtype(value.dtype)).max


class _Moderate(constraints.Constraint):
    """Finite reals of magnitude at most ``finfo.max / 8`` of the dtype they are computed in:
    differences and short sums of them stay finite."""

    def check(self, value: Tensor) -> Tensor:
        return torch.isfinite(value) & (value.abs() <= moderate_limit(value.dtype))

    def __repr__(self) -> str:
        return "Moderate(|x| <= finfo.max / 8)"


class _ModerateScale(constraints.Constraint):
    """Finite scales in ``[16 / sqrt(finfo.max), sqrt(finfo.max) / 16]`` of the dtype they are
    computed in: their squares and inverse squares (variances, precisions) and sums of those stay
    finite (float32: about 8.7e-19 to 1.2e18)."""

    def check(self, value: Tensor) -> Tensor:
        root = math.sqrt(_computed_max(value))
        return torch.isfinite(value) & (value >= 16 / root) & (value <= root / 16)

    def __repr__(self) -> str:
        return "ModerateScale(16 / sqrt(finfo.max) <= x <= sqrt(finfo.max) / 16)"


class _Independent(constraints.Constraint):
    """``base`` holding at every entry of the last ``reinterpreted`` (>= 1) dims (empty batches
    too)."""

    def __init__(self, base: constraints.Constraint, reinterpreted: int) -> None:
        self.base, self.reinterpreted = base, reinterpreted
        super().__init__()

    @property
    def is_discrete(self) -> bool:
        return self.base.is_discrete

    @property
    def event_dim(self) -> int:
        return self.base.event_dim + self.reinterpreted

    def check(self, value: Tensor) -> Tensor:
        result = self.base.check(value)
        return result.all(dim=tuple(range(-self.reinterpreted, 0)))

    def __repr__(self) -> str:
        return f"Independent({self.base!r}, {self.reinterpreted})"


class _Simplex(constraints.Constraint):
    """Points of the closed simplex along the last dim: entries >= 0 summing to 1 within
    ``max(1e-6, sqrt(eps))`` of the value's dtype (torch's ``simplex`` uses 1e-6, which rejects
    every half-precision point)."""

    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        tol = max(1e-6, math.sqrt(torch.finfo(value.dtype).eps)) if value.is_floating_point() else 0
        return (value >= 0).all(dim=-1) & ((value.sum(dim=-1) - 1).abs() <= tol)


simplex = _Simplex()


def independent(base: constraints.Constraint, reinterpreted: int) -> constraints.Constraint:
    """``constraints.independent`` that also checks tensors with zero elements."""
    return _Independent(base, reinterpreted)


finite = _Finite()
finite_positive = _FinitePositive()
finite_vector = independent(finite, 1)
finite_positive_vector = independent(finite_positive, 1)
moderate_vector = independent(_Moderate(), 1)
moderate_scale_vector = independent(_ModerateScale(), 1)


def validating(validate_args: bool | None) -> bool:
    """Whether a distribution built with ``validate_args`` checks its arguments (``None``: the
    global default, ``latentgrad.set_default_validate_args`` / torch's)."""
    return Distribution._validate_args if validate_args is None else bool(validate_args)


def broadcast_params(**params: Tensor | float) -> tuple[Tensor, ...]:
    """The named parameters broadcast to one shape (numbers become tensors like the first tensor
    parameter, as ``broadcast_all`` does); a ``ValueError`` naming them and their shapes when they
    do not broadcast (torch raises a bare ``RuntimeError``)."""
    like = next((p for p in params.values() if isinstance(p, Tensor)), torch.zeros(()))
    tensors = [
        p if isinstance(p, Tensor) else torch.tensor(p, dtype=like.dtype, device=like.device)
        for p in params.values()
    ]
    try:
        return tuple(torch.broadcast_tensors(*tensors))
    except RuntimeError:
        shapes = ", ".join(f"{name} of shape {tuple(p.shape)}" for name, p in params.items())
        raise ValueError(f"parameters do not broadcast: {shapes}") from None


def check_kl_shapes(
    p: Distribution, q: Distribution, events: tuple[object, object] | None = None
) -> None:
    """``kl_divergence(p, q)`` needs the same event shape (the same K; ``events`` overrides what
    is compared) and batch shapes that broadcast: a ``ValueError`` naming both otherwise."""
    name = f"kl_divergence({type(p).__name__}, {type(q).__name__})"
    ev_p, ev_q = events or (p.event_shape, q.event_shape)
    if tuple(ev_p) != tuple(ev_q):
        raise ValueError(
            f"{name} needs the same K (event shape), got {tuple(ev_p)} and {tuple(ev_q)}"
        )
    broadcast_shapes(p.batch_shape, q.batch_shape, error=lambda: (
        f"{name}: the batch shapes {tuple(p.batch_shape)} and {tuple(q.batch_shape)} do not "
        "broadcast"
    ))



def on_common_batch(p: Distribution, q: Distribution) -> tuple[Distribution, Distribution]:
    """``p`` and ``q`` expanded to their broadcast batch shape (as they are where it is theirs):
    a KL computed from p's quadrature nodes or draws, which carry p's batch shape, then lines up
    with a q of a larger batch."""
    shape = torch.broadcast_shapes(p.batch_shape, q.batch_shape)
    return (p if p.batch_shape == shape else p.expand(shape),
            q if q.batch_shape == shape else q.expand(shape))


class CheckedDistribution(Distribution):
    """A ``Distribution`` whose ``sample_shape`` arguments are validated (non-negative ints) before
    any tensor is built, and whose missing closed forms (``mean``, ``variance``, ``entropy``) say
    so and name the alternative (torch's base class raises a bare ``NotImplementedError``)."""

    def _extended_shape(self, sample_shape: Sequence[int] = ()) -> torch.Size:
        return super()._extended_shape(check_sample_shape(sample_shape))

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form mean; average "
                                  "draws of sample() instead")

    @property
    def variance(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form variance; estimate "
                                  "it from draws of sample() instead")

    def entropy(self) -> Tensor:
        hint = ("entropy_mc(n_samples)" if hasattr(self, "entropy_mc")
                else "a Monte Carlo average of -log_prob over draws, where log_prob exists")
        raise NotImplementedError(f"{type(self).__name__} has no closed-form entropy; use {hint}")


def checked_value(dist: Distribution, value: object, name: str = "value") -> Tensor:
    """``value`` ``(*sample, *batch, *event)`` for ``dist.log_prob``, broadcast against the batch:
    a tensor (floating point, or bool/int for a discrete support) whose trailing dims are the
    event shape and whose leading dims broadcast with the batch shape (``TypeError``/``ValueError``
    naming ``name`` otherwise); validated against the support when ``dist`` validates its
    arguments. Returns it expanded to the broadcast shape."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_complex() or not (value.is_floating_point() or dist.support.is_discrete):
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    event = dist.event_shape
    n_event = len(event)
    if value.dim() < n_event or value.shape[value.dim() - n_event :] != event:
        raise ValueError(
            f"{name} must end with the event shape {tuple(event)}, got shape {tuple(value.shape)}"
        )
    shape = broadcast_shapes(value.shape, dist.batch_shape + event, error=lambda: (
        f"{name} of shape {tuple(value.shape)} does not broadcast with the batch shape "
        f"{tuple(dist.batch_shape)} (event shape {tuple(event)})"
    ))
    if dist._validate_args:
        dist._validate_sample(value)
    return value.expand(shape)
