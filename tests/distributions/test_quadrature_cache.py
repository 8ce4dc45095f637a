"""Mixed distributions whose first call comes under ``torch.inference_mode`` (Lightning's sanity
check and validation run before training): later differentiable calls still work. Their
quadrature nodes are cached per size and dtype; a cache filled under inference mode held
inference tensors, which autograd refuses to save (float64 HardConcrete.entropy raised)."""

from __future__ import annotations

import pytest
import torch

from latentgrad.distributions import GaussianSparsemax, HardConcrete
from latentgrad.distributions._gauss_quadrature import _cast, _legendre


def _hard_concrete_entropy(x: torch.Tensor) -> torch.Tensor:
    return HardConcrete(x, 0.5).entropy().sum()


def _gaussian_sparsemax_log_prob(x: torch.Tensor) -> torch.Tensor:
    y = GaussianSparsemax(x.detach(), 1.0).sample((4,))
    return GaussianSparsemax(x, 1.0).log_prob(y).sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [_hard_concrete_entropy, _gaussian_sparsemax_log_prob])
def test_differentiable_after_a_first_call_under_inference_mode(dtype, value):
    _legendre.cache_clear()  # make this test's inference-mode call the first one in the process
    _cast.cache_clear()
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=dtype)
    with torch.inference_mode():
        inside = value(x)
    x.requires_grad_(True)
    outside = value(x)
    (grad,) = torch.autograd.grad(outside, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    if value is _hard_concrete_entropy:  # deterministic: the same value in either mode
        torch.testing.assert_close(outside.detach(), inside)
