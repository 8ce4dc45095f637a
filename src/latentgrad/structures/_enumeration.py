"""Shared helpers for the structures: argument checks, enumeration limits, batching."""

from __future__ import annotations

import torch
from torch import Tensor

MAX_ENUMERATE = 1 << 20


def check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    """Require an ``int`` (not bool) in ``[low, high]`` (``high=None``: unbounded)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        expected = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {expected}, got {value}")
    return value


def check_enumerable(count: int, what: str) -> None:
    """Refuse to enumerate more than ``MAX_ENUMERATE`` structures."""
    if count > MAX_ENUMERATE:
        raise ValueError(
            f"{what} has {count} structures; enumerate() is for small sizes "
            f"(at most {MAX_ENUMERATE})"
        )


def flatten_batch(scores: Tensor, event_dim: int) -> tuple[Tensor, torch.Size]:
    """``(*batch, *event)`` -> ``(N, *event)`` and the batch shape to restore."""
    batch = scores.shape[: scores.dim() - event_dim]
    return scores.reshape(batch.numel(), *scores.shape[scores.dim() - event_dim :]), batch
