"""Input checks shared by every layer: one clear ValueError naming the argument.

Each value check costs at most one host-device sync (a single reduction, then one ``bool()``).
Value checks (NaN, infinities, positivity) obey a global switch modeled on
``torch.distributions.Distribution.set_default_validate_args``: ``set_default_validate_args(False)``
or ``with validate_args(False):`` turns them off, so that no check forces a host-device
synchronisation and ``torch.compile`` sees no data-dependent branch (``violated`` is that switch
and the one reduction, for every value check). Type, shape and dimension checks read only
metadata and always run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.distributions import Distribution

_VALIDATE = True


def set_default_validate_args(value: bool) -> None:
    """Turn the value checks of every latentgrad layer on (default) or off, globally.

    Also sets ``torch.distributions.Distribution``'s default, so the distributions (ours and
    torch's) follow the same switch. With checks off, bad values give undefined results (NaN)
    instead of a ``ValueError``; use it once the model is known to be sound, for speed and
    ``torch.compile``.
    """
    global _VALIDATE
    if not isinstance(value, bool):
        raise TypeError(f"value must be a bool, got {type(value).__name__}")
    _VALIDATE = value
    Distribution.set_default_validate_args(value)


def validation_enabled() -> bool:
    """Whether the value checks run (``set_default_validate_args``)."""
    return _VALIDATE


@contextlib.contextmanager
def validate_args(value: bool) -> Iterator[None]:
    """Context manager: value checks on/off inside the block, the previous setting restored after
    (also torch.distributions' default)."""
    previous, previous_torch = _VALIDATE, Distribution._validate_args
    set_default_validate_args(value)
    try:
        yield
    finally:
        set_default_validate_args(previous)
        Distribution.set_default_validate_args(previous_torch)

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(x: object, name: str) -> Tensor:
    """Require a floating-point tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), "
            f"got {x.dtype}"
        )
    return x


def check_min_dim(x: Tensor, name: str, min_dim: int) -> None:
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimension(s), got shape {tuple(x.shape)}"
        )


def check_trailing_shape(x: Tensor, name: str, shape: tuple[int, ...]) -> None:
    """Require ``x.shape[-len(shape):] == shape``."""
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape) :]) != tuple(shape):
        raise ValueError(
            f"{name} must have trailing shape {tuple(shape)} "
            f"(batch..., {', '.join(map(str, shape))}), got shape {tuple(x.shape)}"
        )


def violated(x: Tensor, condition: Callable[[Tensor], Tensor]) -> bool:
    """Whether a value check fails: checks on, ``x`` not empty, and ``condition(x)`` (a bool
    tensor, any shape) false somewhere. One sync; with checks off ``condition`` is not even
    evaluated. Every value check of the package goes through here::

        if violated(y, lambda y: (y > 0) & (y < 1)):
            raise ValueError("y must lie in the open interval (0, 1)")
    """
    return _VALIDATE and x.numel() > 0 and not _holds_everywhere(condition(x))


def _holds_everywhere(ok: Tensor) -> bool:
    """``bool(ok.all())``; under ``torch.func`` transforms over every vmapped entry too (a
    batched tensor cannot be read on the host: its unwrapped value, with the vmapped dims, is
    read, through any grad wrappers around it)."""
    while torch._C._functorch.is_functorch_wrapped_tensor(ok):
        ok = torch._C._functorch.get_unwrapped(ok)
    return bool(ok.all())


def broadcast_shapes(*shapes: tuple[int, ...], error: Callable[[], str]) -> torch.Size:
    """``torch.broadcast_shapes(*shapes)``, or ``ValueError(error())`` where they do not
    broadcast (torch raises a bare ``RuntimeError``); ``error`` builds the message naming the
    arguments and their shapes, only then (the callers include per-step ``log_prob``s)."""
    try:
        return torch.broadcast_shapes(*shapes)
    except RuntimeError:
        raise ValueError(error()) from None


# ``check_no_nan`` and ``check_finite`` read a tensor's extremes, one reduction pass without a
# buffer, instead of testing every entry (``torch.isfinite`` is four elementwise passes and a mask
# on the CPU): NaN propagates through ``amax``/``aminmax``, so the extremes are finite exactly
# when every entry is.


def check_no_nan(x: Tensor, name: str) -> None:
    """Raise if any entry is NaN (one sync)."""
    if violated(x, lambda x: ~torch.isnan(x.amax())):
        raise ValueError(f"{name} contains NaN")


def check_finite(x: Tensor, name: str) -> None:
    """Raise if any entry is NaN or +-inf (one sync)."""
    if violated(x, lambda x: torch.isfinite(torch.stack(torch.aminmax(x)))):
        kind = "an infinite value" if _holds_everywhere(~torch.isnan(x)) else "NaN"
        raise ValueError(f"{name} contains {kind}; expected finite values")


def check_no_pos_inf(x: Tensor, name: str) -> None:
    """Raise if any entry is ``+inf`` (``-inf`` marks an excluded item and is allowed; one sync)."""
    if violated(x, lambda x: x != float("inf")):  # per entry: NaN would hide +inf in the max
        raise ValueError(f"{name} contains +inf; expected finite values or -inf")


def checked_row_max(x: Tensor, name: str, dim: int = -1) -> Tensor:
    """Maxima of the scores ``x`` along ``dim``, validating the rows on the way (one sync; see
    ``check_row_max``)."""
    return check_row_max(x.amax(dim=dim), name, dim)


def check_row_max(row_max: Tensor, name: str, dim: int) -> Tensor:
    """Validate scores through their row maxima ``row_max`` along ``dim`` (one sync); return them.

    A NaN, a ``+inf`` or an all ``-inf`` row makes its maximum non-finite (maxima propagate
    NaN), so one reduction checks all three; the error names ``dim``, the caller's view of the
    axis. ``-inf`` entries are allowed (they get probability zero). Unchecked (no sync) with
    validation off.
    """
    if _VALIDATE and not _holds_everywhere(torch.isfinite(row_max)):
        if not _holds_everywhere(~torch.isnan(row_max)):
            raise ValueError(f"{name} contains NaN")
        if not _holds_everywhere(row_max != float("inf")):
            raise ValueError(f"{name} contains +inf; expected finite values or -inf")
        raise ValueError(
            f"{name} has a row that is entirely -inf along dim={dim}: no entry to put mass on"
        )
    return row_max


def check_rows_valid(x: Tensor, name: str, dim: int = -1) -> None:
    """Scores along ``dim``: no NaN, no +inf, and at least one finite entry per row (one sync)."""
    if _VALIDATE and x.numel():
        checked_row_max(x, name, dim)


def check_choice(value: object, name: str, choices: tuple[object, ...]) -> object:
    """Require ``value`` to be one of ``choices``; return it."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_positive_int(value: object, name: str) -> int:
    """Require an ``int`` (not a bool) ``>= 1``; a ValueError names the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_positive(x: Tensor, name: str) -> None:
    """Raise unless every entry is ``> 0`` (one sync)."""
    if violated(x, lambda x: x > 0):
        raise ValueError(f"{name} must be strictly positive")


def check_generator(generator: object, like: Tensor, name: str = "generator") -> None:
    """Require ``None`` or a ``torch.Generator`` on the device type of ``like``."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != like.device.type:
        raise ValueError(
            f"{name} is on {generator.device.type}, the scores on {like.device.type}: "
            "draws need a generator on the scores' device")


def check_sample_shape(sample_shape: object, name: str = "sample_shape") -> torch.Size:
    """Require a sequence of non-negative ints (a ``torch.Size``, tuple or list); return it as a
    ``torch.Size``."""
    if isinstance(sample_shape, (torch.Size, tuple, list)):
        dims = tuple(sample_shape)
        if all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
            if any(d < 0 for d in dims):
                raise ValueError(f"{name} must have non-negative sizes, got {dims}")
            return torch.Size(dims)
    raise TypeError(
        f"{name} must be a torch.Size or a tuple of non-negative ints, got {sample_shape!r}"
    )
