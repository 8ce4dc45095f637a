"""Gauss–Legendre rule by the Golub–Welsch eigenvalue method (torch only).

Nodes and weights are computed once per size in float64 on the CPU and cached, with their cast
to each device/dtype that asks for them (a copy from the host to an accelerator waits for it, so
it is made once, not at every call). The cached tensors are made outside inference mode: a first
call under ``torch.inference_mode`` (a validation loop) must not leave tensors that autograd
refuses to save later. Used by the mixed distributions for deterministic, differentiable 1-D
integrals (Gaussian-sparsemax density, Hard Concrete entropy, mean and KL).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor


@lru_cache(maxsize=16)
def _legendre(n: int) -> tuple[Tensor, Tensor]:
    with torch.inference_mode(False):
        k = torch.arange(1, n, dtype=torch.float64)
        off = k / torch.sqrt(4 * k * k - 1)
        nodes, vecs = torch.linalg.eigh(torch.diag(off, 1) + torch.diag(off, -1))
        return nodes, 2 * vecs[0] ** 2


@lru_cache(maxsize=64)
def _cast(n: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    nodes, weights = _legendre(n)
    with torch.inference_mode(False):
        return nodes.to(device, dtype), weights.to(device, dtype)


def gauss_legendre(n: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Nodes x (n,) in (-1, 1) and weights (n,) with sum_i w_i f(x_i) ~ integral_{-1}^{1} f,
    on ``like``'s device in its dtype (shared: do not modify them in place).

    Exact for polynomials of degree < 2n; no weight is tiny (all of order 1/n), so the
    eigenvector formula is accurate to ~1e-11 relative (unlike Gauss–Hermite tail weights).
    """
    if torch.compiler.is_compiling():  # traced: no tensor of the trace may enter the cache
        nodes, weights = _legendre(int(n))
        return nodes.to(like), weights.to(like)
    return _cast(int(n), like.device, like.dtype)
