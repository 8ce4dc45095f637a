"""Temperature schedules for relaxed estimators.

A schedule is a small ``nn.Module``: calling it returns the current temperature as a 0-dim tensor,
``step()`` advances it by one optimisation step. The step counter lives in a buffer, so it is saved
in checkpoints with ``state_dict``. The configured initial temperature is a constant attribute and
is never overwritten; a learnable temperature is its own schedule (``Learnable``), not a decay
applied to a parameter.

Schedules advance by themselves: a call in training mode with gradients enabled marks the
schedule as used, and the next ``step()`` of ANY ``torch.optim`` optimizer (a global post-step
hook, so Lightning, accelerate and hand-written loops alike) advances every marked schedule once.
So the temperature follows the optimisation steps that used it, gradient accumulation included,
and is never silently frozen. A loop written for manual stepping keeps the same schedule: an
explicit ``step()`` right after an optimizer step that already advanced the schedule is a no-op,
and one before it takes the place of the automatic advance. ``auto_step=False`` leaves stepping
to the caller. A copy (``copy.deepcopy``, or ``torch.save`` then ``torch.load`` of the module)
of an auto-stepped schedule is auto-stepped too, independently of the original.

A temperature must be finite and positive in the scores' dtype, not only as a Python float:
``Constant.like`` and ``ExponentialDecay.like`` raise a ``ValueError`` where it rounds to 0 or
infinity there (``Learnable`` clamps instead; its docstring).
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from .._validation import check_positive_int


def _check_positive_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {value}")
    return value


def _check_representable(low: float, high: float, dtype: torch.dtype) -> None:
    """Raise unless every temperature in ``[low, high]`` is finite and positive in ``dtype``
    (rounding is monotone, so the two ends decide). From ``finfo`` alone, no tensor: the
    smallest subnormal and ``max`` bound the accepted values (the few just outside, which may
    round to them, are refused too)."""
    info = torch.finfo(dtype)
    smallest = info.smallest_normal * info.eps  # the smallest subnormal
    for value in (low, high):
        if not smallest <= value <= info.max:
            raise ValueError(
                f"temperature {value:g} is {'0' if value < smallest else 'infinite'} in the "
                f"scores' dtype {dtype}; expected a temperature that is positive and finite in "
                f"{dtype} ({smallest:.3g} to {info.max:.3g}), or scores in a wider dtype"
            )


_AUTO_STEPPED: weakref.WeakSet[TemperatureSchedule] = weakref.WeakSet()
_HOOK: list[object] = []


def _advance_used_schedules(optimizer: object, args: object, kwargs: object) -> None:
    """Optimizer post-step hook: advance every auto-stepped schedule used since the last step."""
    for schedule in list(_AUTO_STEPPED):
        if schedule.used_since_step:
            schedule.used_since_step = False
            schedule.advance()
            schedule.advanced_by_optimizer = True


class TemperatureSchedule(nn.Module):
    """Base class: ``schedule()`` -> current temperature (0-dim tensor), ``step()`` advances it.

    Fixed schedules return float64 (cast by the caller to its working dtype and device); a learnable
    one returns its parameter's dtype with the gradient attached. Subclasses with state register
    with ``auto_step`` (module docstring) and call ``mark_used()`` in ``forward``.
    """

    used_since_step = False
    advanced_by_optimizer = False

    def forward(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def like(self, x: Tensor) -> Tensor:
        """The current temperature as a 0-dim tensor in ``x``'s dtype and on its device (as
        ``schedule()``, a call that counts as a use)."""
        return self().to(device=x.device, dtype=x.dtype)

    def advance(self) -> None:
        """Move the state one optimisation step on (no-op for schedules without state)."""

    def step(self) -> None:
        """Advance by one optimisation step, unless the optimizer step that just ran already did
        (auto-stepped schedules; module docstring)."""
        self.used_since_step = False
        if self.advanced_by_optimizer:
            self.advanced_by_optimizer = False
            return
        self.advance()

    def _register_auto_step(self, auto_step: bool) -> None:
        if not isinstance(auto_step, bool):
            raise TypeError(f"auto_step must be a bool, got {type(auto_step).__name__}")
        self.auto_step = auto_step
        self._enrol()

    def _enrol(self) -> None:
        """Join the schedules the optimizer hook advances, where ``auto_step`` is on."""
        if getattr(self, "auto_step", False):
            if not _HOOK:
                _HOOK.append(register_optimizer_step_post_hook(_advance_used_schedules))
            _AUTO_STEPPED.add(self)

    def __setstate__(self, state: dict) -> None:
        """Restore a copy (``copy.deepcopy``, unpickling), auto-stepped as the original was."""
        super().__setstate__(state)
        self._enrol()

    def mark_used(self) -> None:
        """Record a training-mode call with gradients (the next optimizer step advances us)."""
        if self.training and torch.is_grad_enabled():
            self.used_since_step = True
            self.advanced_by_optimizer = False


class Constant(TemperatureSchedule):
    """A fixed temperature ``tau``."""

    def __init__(self, tau: float) -> None:
        super().__init__()
        self.tau = _check_positive_float(tau, "tau")
        self._like: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def forward(self) -> Tensor:
        return torch.tensor(self.tau, dtype=torch.float64)

    def like(self, x: Tensor) -> Tensor:
        """``tau`` in ``x``'s dtype and device, built once per dtype and device (the same
        rounding as ``schedule().to(x)``; one built in inference mode is not kept, as it could
        not be saved for a later backward). ``ValueError`` naming the dtype where ``tau`` is 0
        or infinite in it."""
        key = (x.device, x.dtype)
        tau = self._like.get(key)
        if tau is None:
            _check_representable(self.tau, self.tau, x.dtype)
            tau = torch.tensor(self.tau, dtype=x.dtype, device=x.device)
            if not torch.is_inference_mode_enabled():
                self._like[key] = tau
        return tau

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


class ExponentialDecay(TemperatureSchedule):
    """``tau(step) = max(floor, tau0 * exp(-rate * every * floor(step / every)))``.

    The temperature changes only every ``every`` steps (Jang et al. 2017 anneal this way). It
    decays from ``tau0`` down to ``floor``, so ``floor <= tau0`` and a finite ``rate`` are
    required. ``tau0`` is kept as configured (the reference runs ignored it and started from 1.0
    with floor 0.5: pass ``tau0=1.0, floor=0.5`` to reproduce them). The step counter is the
    buffer ``num_steps``; it advances after each optimizer step that followed a training call
    (``auto_step=True``), or on ``step()``.
    """

    num_steps: Tensor
    _checked_dtypes: frozenset[torch.dtype] = frozenset()

    def __init__(
        self,
        tau0: float,
        rate: float,
        every: int = 1000,
        floor: float = 0.5,
        auto_step: bool = True,
    ) -> None:
        super().__init__()
        self.tau0 = _check_positive_float(tau0, "tau0")
        if (
            isinstance(rate, bool)
            or not isinstance(rate, (int, float))
            or not (math.isfinite(rate) and rate >= 0)
        ):
            raise ValueError(f"rate must be a finite non-negative float, got {rate!r}")
        self.every = check_positive_int(every, "every")
        self.rate = float(rate)
        self.floor = _check_positive_float(floor, "floor")
        if self.floor > self.tau0:
            raise ValueError(
                f"floor ({self.floor}) must not exceed tau0 ({self.tau0}): the temperature decays "
                "from tau0 down to floor"
            )
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))
        self._register_auto_step(auto_step)

    def forward(self) -> Tensor:
        self.mark_used()
        epochs = torch.div(self.num_steps, self.every, rounding_mode="floor").to(torch.float64)
        tau = self.tau0 * torch.exp(-self.rate * self.every * epochs)
        return tau.clamp(min=self.floor)

    def like(self, x: Tensor) -> Tensor:
        """As the base class, after checking once per dtype (no sync) that the temperatures the
        schedule can take, ``[floor, tau0]``, are finite and positive in ``x``'s dtype
        (``ValueError`` naming the dtype otherwise)."""
        if x.dtype not in self._checked_dtypes:
            _check_representable(self.floor, self.tau0, x.dtype)
            self._checked_dtypes = self._checked_dtypes | {x.dtype}
        return super().like(x)

    def advance(self) -> None:
        self.num_steps.add_(1)

    def extra_repr(self) -> str:
        return f"tau0={self.tau0}, rate={self.rate}, every={self.every}, floor={self.floor}"


class Learnable(TemperatureSchedule):
    """A trainable temperature ``tau = softplus(free) > 0``, initialised at ``init``.

    ``like`` clamps the temperature into the positive finite range of the scores' dtype
    (``[finfo.tiny, finfo.max]``) rather than checking it, as a check would cost a host-device
    sync every step: the clamp acts only where the temperature is beyond what that dtype resolves
    (a ``free`` parameter below about -87 in float32), and there the gradient to ``free`` is 0.
    """

    def __init__(self, init: float) -> None:
        super().__init__()
        init = _check_positive_float(init, "init")
        # softplus^{-1}(y) = y + log(-expm1(-y)), stable for small and large y
        self.free = nn.Parameter(torch.tensor(init + math.log(-math.expm1(-init))))

    def forward(self) -> Tensor:
        return F.softplus(self.free)

    def like(self, x: Tensor) -> Tensor:
        """The temperature in ``x``'s dtype and on its device, clamped into that dtype's positive
        finite range (class docstring)."""
        finfo = torch.finfo(x.dtype)
        return self().to(device=x.device, dtype=x.dtype).clamp(finfo.tiny, finfo.max)


def as_schedule(
    temperature: float | TemperatureSchedule, name: str = "temperature"
) -> TemperatureSchedule:
    """A float becomes ``Constant(temperature)``; a schedule is returned as is."""
    if isinstance(temperature, TemperatureSchedule):
        return temperature
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        return Constant(_check_positive_float(temperature, name))
    got = type(temperature).__name__
    raise TypeError(f"{name} must be a positive float or a TemperatureSchedule, got {got}")
