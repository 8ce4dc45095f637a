"""Argument and input checks shared by the estimators (one clear error naming the argument)."""

from __future__ import annotations

from torch import Tensor

from .._validation import check_tensor
from ..structures.base import Structure


def check_leave_one_out(baseline: str | None, n_samples: int) -> None:
    """``baseline="leave_one_out"`` averages the other samples: it needs ``n_samples >= 2``."""
    if baseline == "leave_one_out" and n_samples < 2:
        raise ValueError("baseline='leave_one_out' needs n_samples >= 2")


def check_last_dim(x: Tensor, structure: Structure, name: str = "scores") -> None:
    """Require the last dimension of ``x`` to be that of ``structure``'s scores (a categorical
    structure given as ``Categorical(K)``, or a bit vector's D)."""
    size = structure.score_shape[-1]
    if x.shape[-1] != size:
        raise ValueError(f"{name} must have last dimension {size} for {structure!r}, got shape "
                         f"{tuple(x.shape)}")


def check_batched(scores: object, name: str, structure: Structure) -> Tensor:
    """Require a float tensor ``(B, *structure.score_shape)``: one structure per example, exactly
    one batch dimension (``B = 0`` allowed; the trailing sizes are the structure's check)."""
    x = check_tensor(scores, name)
    if x.dim() != 1 + structure.event_dim:
        want = ", ".join(map(str, structure.score_shape))
        raise ValueError(f"{name} must have shape (B, {want}), one {structure!r} per example "
                         f"(several latents per example: flatten them into the batch), got "
                         f"shape {tuple(x.shape)}")
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
