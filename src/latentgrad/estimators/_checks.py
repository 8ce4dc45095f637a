"""Argument and input checks shared by the estimators (one clear error naming the argument)."""

from __future__ import annotations

from torch import Tensor

from .._validation import check_tensor
from ..structures.base import Structure


def check_leave_one_out(baseline: str | None, n_samples: int) -> None:
    """``baseline="leave_one_out"`` averages the other samples: it needs ``n_samples >= 2``."""
    if baseline == "leave_one_out" and n_samples < 2:
        raise ValueError("baseline='leave_one_out' needs n_samples >= 2")


def check_batched(scores: object, name: str, event_dim: int) -> Tensor:
    """Require a float tensor with exactly one batch dimension (``B = 0`` allowed)."""
    x = check_tensor(scores, name)
    if x.dim() != 1 + event_dim:
        want = "(B, K)" if event_dim == 1 else f"(B, *score_shape) with {event_dim} score dim(s)"
        raise ValueError(f"{name} must have shape {want}, got shape {tuple(x.shape)}")
    return x


def check_min_batched(x: object, name: str, min_dim: int) -> Tensor:
    """Require a float tensor with at least ``min_dim`` dimensions (the first, for
    ``min_dim > 0``, the batch; ``B = 0`` allowed)."""
    x = check_tensor(x, name)
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimensions, got shape {tuple(x.shape)}"
        )
    return x


def check_structure(structure: object) -> Structure | None:
    if structure is not None and not isinstance(structure, Structure):
        raise TypeError(f"structure must be a Structure or None, got {type(structure).__name__}")
    return structure
