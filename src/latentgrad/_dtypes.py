"""The dtype a computation runs in, shared by every layer."""

from __future__ import annotations

import torch


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` promoted to at least float32: float16/bfloat16 -> float32, float32/float64
    unchanged (thresholds, DP tables and samplers need the range and precision)."""
    return torch.promote_types(dtype, torch.float32)


def moderate_limit(dtype: torch.dtype) -> float:
    """The largest magnitude of a "moderate" parameter (a location): ``finfo.max / 8`` of the
    dtype it is computed in (``working_dtype``), so that its differences and short sums stay
    finite."""
    return torch.finfo(working_dtype(dtype)).max / 8
