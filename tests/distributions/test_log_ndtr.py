"""log Φ for the densities (``distributions/_log_ndtr.py``): the kernel's three identities against
``torch.special.log_ndtr`` in float64 across every regime and boundary, the compiled float32
path's values and gradients, gradcheck of its backward, which inputs take it, the fallback when
compilation fails, and Gaussian-sparsemax's log-density through it against the plain one."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import _compile_probe
from latentgrad.distributions import _log_ndtr as ln
from latentgrad.distributions.gaussian_sparsemax import GaussianSparsemax

compile_state = _compile_probe.compile_state


def _grid(dtype: torch.dtype) -> torch.Tensor:
    """Points in every regime (tail, erfc, log1p) and on both sides of their boundaries."""
    edges = torch.tensor([-1.0, -11.0, -36.0], dtype=torch.float64)
    near = (edges[:, None] + torch.linspace(-1e-3, 1e-3, 21, dtype=torch.float64)).flatten()
    return torch.cat([torch.linspace(-1e4, 40, 20001, dtype=torch.float64),
                      torch.linspace(-40, 8, 20001, dtype=torch.float64), near]).to(dtype)


def _assert_rounding_close(got: torch.Tensor, u: torch.Tensor) -> None:
    """Within a few eps of the value's magnitude (at least 1) of float64 ``log_ndtr``: the
    formulas and torch's differ by a few roundings of terms of that size."""
    want = torch.special.log_ndtr(u.double())
    eps = torch.finfo(u.dtype).eps
    err = (got.double() - want).abs() / want.abs().clamp_min(1.0)
    assert float(err.max()) <= 8 * eps, float(err.max()) / eps


@pytest.fixture(scope="module")
def compiles() -> bool:
    return _compile_probe.compiles(lambda: ln.log_ndtr(torch.zeros(ln.FUSED_MIN_SIZE)))


@pytest.fixture
def fused_works(compiles: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    _compile_probe.require_compilation(compiles, monkeypatch, "torch's log_ndtr")


def _took_fused(y: torch.Tensor) -> bool:
    return y.grad_fn is not None and type(y.grad_fn).__name__.startswith("_LogNdtr")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_is_log_ndtr_up_to_rounding_in_every_regime(dtype: torch.dtype) -> None:
    u = _grid(dtype)
    _assert_rounding_close(ln.log_ndtr_kernel(u), u)
    extremes = torch.tensor([-torch.inf, torch.inf, -1e30, 1e30], dtype=dtype)
    torch.testing.assert_close(ln.log_ndtr_kernel(extremes), torch.special.log_ndtr(extremes))


@pytest.mark.usefixtures("fused_works")
def test_large_float32_inputs_take_the_compiled_kernel_with_torchs_values_and_gradients() -> None:
    u = _grid(torch.float32)
    assert u.numel() >= ln.FUSED_MIN_SIZE
    x = u.clone().requires_grad_()
    y = ln.log_ndtr(x)
    assert _took_fused(y)
    _assert_rounding_close(y.detach(), u)
    # gradients φ/Φ = exp(−u²/2 − log Φ(u))/√(2π): a rounding of log Φ of relative size eps
    # moves them by eps·|log Φ| relative; compared where that is meaningful in float32
    v = torch.linspace(-40, 8, 2 * ln.FUSED_MIN_SIZE).requires_grad_()
    y = ln.log_ndtr(v)
    assert _took_fused(y)
    g = torch.rand(v.shape, generator=torch.Generator().manual_seed(0))
    (got,) = torch.autograd.grad(y, v, g)
    (want,) = torch.autograd.grad(torch.special.log_ndtr(v), v, g)
    rtol = 16 * torch.finfo(torch.float32).eps * (1 + float(y.detach().abs().max()))
    torch.testing.assert_close(got, want, rtol=rtol, atol=0)
    with torch.no_grad():
        assert ln.log_ndtr(x).grad_fn is None


def test_backward_passes_gradcheck() -> None:
    u = torch.linspace(-50, 6, 57, dtype=torch.float64).requires_grad_()
    assert gradcheck(lambda x: ln._LogNdtr.apply(x, ln.log_ndtr_kernel(x.detach())), (u,))


@pytest.mark.parametrize(("dtype", "size"), [(torch.float64, 1 << 15), (torch.float32, 100)])
def test_small_or_float64_inputs_take_torchs_log_ndtr(dtype: torch.dtype, size: int) -> None:
    u = torch.linspace(-30, 5, size, dtype=dtype, requires_grad=True)
    y = ln.log_ndtr(u)
    assert not _took_fused(y)
    assert torch.equal(y, torch.special.log_ndtr(u))


def test_failed_compilation_falls_back_to_torchs_log_ndtr(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no compiler")

    monkeypatch.setitem(compile_state, "failed", False)
    monkeypatch.setattr(torch, "compile", failing)
    monkeypatch.setattr(ln._KERNEL, "compiled", None)
    u = torch.linspace(-30, 5, ln.FUSED_MIN_SIZE)
    assert torch.equal(ln.log_ndtr(u), torch.special.log_ndtr(u))
    assert compile_state["failed"]


@pytest.mark.usefixtures("fused_works")
def test_gaussian_sparsemax_log_prob_through_the_kernel_equals_the_plain_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the VAE's sizes: 100 examples x 10 coordinates, 97 quadrature nodes per density
    gen = torch.Generator().manual_seed(0)
    loc = (3 * torch.randn(100, 10, generator=gen)).requires_grad_()
    scale = torch.rand(100, 10, generator=gen).add(0.2).requires_grad_()
    dist = GaussianSparsemax(loc, scale)
    torch.manual_seed(1)
    y = dist.rsample().detach()

    def log_prob_and_grads() -> tuple[torch.Tensor, ...]:
        value = dist.log_prob(y)
        return (value.detach(), *torch.autograd.grad(value.sum(), (loc, scale)))

    fused = log_prob_and_grads()
    monkeypatch.setattr(ln, "FUSED_MIN_SIZE", 1 << 62)
    plain = log_prob_and_grads()
    # float32 sums of K log Φ terms at up to 97 nodes of magnitude up to |g| + 1, then a
    # logsumexp: a few tens of eps of that magnitude at most (measured: under 1)
    eps = torch.finfo(torch.float32).eps
    for got, want in zip(fused, plain, strict=True):
        tol = 32 * eps * (1 + float(want.abs().max()))
        torch.testing.assert_close(got, want, rtol=0, atol=tol)
