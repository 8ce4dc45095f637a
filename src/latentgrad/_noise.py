"""Clamped noise draws shared by every layer.

Uniforms are clamped to ``[tiny, 1 - eps]`` of the dtype, so ``log u`` and ``log(1 - u)`` are
finite and the Gumbel and logistic draws built from them never hit ``±inf``. Every draw is in
``like``'s dtype and device; ``generator`` (on that device) makes it reproducible.
"""

from __future__ import annotations

import torch
from torch import Tensor


def uniform(
    shape: torch.Size | tuple[int, ...], like: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """U(0, 1) draws of ``shape``, clamped to ``[tiny, 1 - eps]``."""
    finfo = torch.finfo(like.dtype)
    u = torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)
    return u.clamp(finfo.tiny, 1.0 - finfo.eps)


def gumbel(
    shape: torch.Size | tuple[int, ...], like: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Finite Gumbel(0, 1) draws ``-log(-log u)``."""
    return -(-uniform(shape, like, generator).log()).log()


def gumbel_perturbed(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``x + gumbel(x.shape, x)``, the same draws, written ``x - log(-log u)`` (one operation
    fewer)."""
    return x - (-uniform(x.shape, x, generator).log()).log()


def logistic(
    shape: torch.Size | tuple[int, ...], like: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Finite Logistic(0, 1) draws ``log u - log(1 - u)``."""
    u = uniform(shape, like, generator)
    return u.log() - torch.log1p(-u)
