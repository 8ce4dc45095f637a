"""Comparison of a computation run on the CPU and on the GPU (float64).

``LATENTGRAD_TEST_DEVICE`` (default ``cuda``) names the device under test; ``cpu`` dry-runs the
comparisons without a GPU (the test code itself, CPU against CPU).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

DEVICE = torch.device(os.environ.get("LATENTGRAD_TEST_DEVICE", "cuda"))

#: float64 on both devices; reductions run in a different order on the GPU
RTOL, ATOL = 1e-7, 1e-9


def to(x, device: torch.device):
    """``x`` (a tensor, or a tuple / NamedTuple / list / dict of them) on ``device``."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(to(v, device) for v in x))
    if isinstance(x, (tuple, list)):
        return type(x)(to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to(v, device) for k, v in x.items()}
    return x


def assert_same(cpu_out, gpu_out, rtol: float = RTOL, atol: float = ATOL) -> None:
    """Equal structure; every GPU tensor lives on the device and matches its CPU twin."""
    if isinstance(cpu_out, torch.Tensor):
        assert isinstance(gpu_out, torch.Tensor) and gpu_out.device.type == DEVICE.type
        assert gpu_out.dtype == cpu_out.dtype and gpu_out.shape == cpu_out.shape
        torch.testing.assert_close(gpu_out.cpu(), cpu_out, rtol=rtol, atol=atol, equal_nan=True)
    elif isinstance(cpu_out, (tuple, list)):
        assert len(cpu_out) == len(gpu_out)
        for a, b in zip(cpu_out, gpu_out, strict=True):
            assert_same(a, b, rtol, atol)
    elif isinstance(cpu_out, dict):
        assert cpu_out.keys() == gpu_out.keys()
        for key in cpu_out:
            assert_same(cpu_out[key], gpu_out[key], rtol, atol)
    else:
        assert cpu_out == gpu_out


def same_on_gpu(fn: Callable, *args, grad: bool = True, rtol=RTOL, atol=ATOL) -> None:
    """``fn(*args)`` on the CPU and on CUDA give the same outputs and, when ``grad``, the same
    gradients of ``<outputs, fixed random cotangents>`` w.r.t. every floating-point tensor arg."""
    results = []
    for device in (torch.device("cpu"), DEVICE):
        leaves = [
            to(a, device).detach().requires_grad_(grad and a.is_floating_point())
            if isinstance(a, torch.Tensor)
            else to(a, device)
            for a in args
        ]
        out = fn(*leaves)
        grads = ()
        if grad:
            flat = [o for o in (out if isinstance(out, tuple) else (out,)) if _differentiable(o)]
            gen = torch.Generator().manual_seed(0)
            total = sum(
                (o * torch.randn(o.shape, generator=gen, dtype=o.dtype).to(device)).sum()
                for o in flat
            )
            inputs = [x for x in leaves if isinstance(x, torch.Tensor) and x.requires_grad]
            if flat and inputs:
                grads = torch.autograd.grad(total, inputs, allow_unused=True)
                grads = tuple(
                    torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)
                )
        results.append((_detach(out), grads))
    assert_same(results[0], results[1], rtol, atol)


def _differentiable(x) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point() and x.requires_grad


def _detach(x):
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_detach(v) for v in x))
    if isinstance(x, (tuple, list)):
        return type(x)(_detach(v) for v in x)
    return x
