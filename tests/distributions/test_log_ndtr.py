"""log Φ for the densities (``distributions/_log_ndtr.py``): the kernel's three identities against
``torch.special.log_ndtr`` in float64 across every regime and boundary, gradients φ/Φ against
50-digit arithmetic (mpmath) from u = 8 down to u = −1e15 on both paths, the compiled float32
path's values, gradcheck of both backwards, which inputs take which path, the fallback when
compilation fails, and Gaussian-sparsemax's log-density through it against the plain one."""

from __future__ import annotations

import mpmath
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

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


def _inverse_mills_truth(u: torch.Tensor) -> torch.Tensor:
    """φ(u)/Φ(u) in 50-digit arithmetic, rounded to float64."""
    with mpmath.workdps(50):
        ratios = [mpmath.npdf(x) / mpmath.ncdf(x) for x in u.double().tolist()]
    return torch.tensor([float(r) for r in ratios], dtype=torch.float64)


# from the upper tail through every regime into the far lower tail, where torch's own gradient
# exp(−u²/2 − log Φ(u))/√(2π) cancels two terms of size u²/2 (float32: 5% off at u = −1000)
TAIL_POINTS = [8.0, 3.0, 0.0, -0.5, -1.0, -3.0, -10.5, -11.5, -35.5, -36.5, -100.0, -1e3, -1e5,
               -1e8, -1e15]


def _gradient_tolerance(u: torch.Tensor) -> torch.Tensor:
    """Relative error allowed on φ/Φ: above −c the direct form's eps·u²/2 (the rounding of log Φ
    is exponentiated), a few eps below it (−u / S(u) rounds a handful of times)."""
    eps = torch.finfo(u.dtype).eps
    c = -ln._TAIL[u.dtype]
    return 8 * eps * (1 + 0.5 * u.double().clamp(min=-c).square())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_is_the_inverse_mills_ratio_down_to_the_far_lower_tail(dtype: torch.dtype) -> None:
    u = torch.tensor(TAIL_POINTS, dtype=dtype, requires_grad=True)
    (got,) = torch.autograd.grad(ln.log_ndtr(u).sum(), u)
    want = _inverse_mills_truth(u.detach())
    err = (got.double() - want).abs() / want
    assert bool((err <= _gradient_tolerance(u.detach())).all()), err


@pytest.mark.usefixtures("fused_works")
def test_large_float32_inputs_take_the_compiled_kernel_with_exact_values_and_gradients() -> None:
    u = _grid(torch.float32)
    assert u.numel() >= ln.FUSED_MIN_SIZE
    x = u.clone().requires_grad_()
    y = ln.log_ndtr(x)
    assert _took_fused(y)
    _assert_rounding_close(y.detach(), u)
    points = torch.tensor(TAIL_POINTS)
    v = points.repeat(ln.FUSED_MIN_SIZE // len(TAIL_POINTS) + 1).requires_grad_()
    y = ln.log_ndtr(v)
    assert _took_fused(y)
    (got,) = torch.autograd.grad(y.sum(), v)
    want = _inverse_mills_truth(points).repeat(v.numel() // len(TAIL_POINTS))
    err = (got.double() - want).abs() / want
    assert bool((err <= _gradient_tolerance(v.detach())).all()), float(err.max())
    with torch.no_grad():
        assert ln.log_ndtr(x).grad_fn is None


def test_backward_passes_gradcheck_and_gradgradcheck() -> None:
    u = torch.linspace(-50, 6, 57, dtype=torch.float64).requires_grad_()

    def fused(x: torch.Tensor) -> torch.Tensor:
        return ln._LogNdtr.apply(x, ln.log_ndtr_kernel(x.detach()))

    assert gradcheck(fused, (u,))
    assert gradgradcheck(fused, (u,))  # its backward is differentiable (second derivatives)


def test_plain_path_passes_gradcheck_and_gradgradcheck() -> None:
    u = torch.cat([torch.linspace(-60, 6, 45, dtype=torch.float64),
                   torch.tensor([-1e3], dtype=torch.float64)]).requires_grad_()
    assert gradcheck(ln.log_ndtr, (u,))
    assert gradgradcheck(ln.log_ndtr, (u,))


def test_plain_path_works_under_torch_func() -> None:
    u = torch.tensor([-1e3, -20.0, 0.0, 3.0], dtype=torch.float64)
    grads = torch.func.vmap(torch.func.grad(ln.log_ndtr))(u)
    torch.testing.assert_close(grads, _inverse_mills_truth(u), rtol=1e-13, atol=0)


@pytest.mark.parametrize(("dtype", "size"), [(torch.float64, 1 << 15), (torch.float32, 100)])
def test_small_or_float64_inputs_take_torchs_log_ndtr_values(dtype: torch.dtype, size: int) -> None:
    u = torch.linspace(-60, 5, size, dtype=dtype, requires_grad=True)
    y = ln.log_ndtr(u)
    assert not _took_fused(y)
    assert torch.equal(y, torch.special.log_ndtr(u))


def test_failed_compilation_falls_back_to_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no compiler")

    monkeypatch.setitem(compile_state, "failed", False)
    monkeypatch.setattr(torch, "compile", failing)
    monkeypatch.setattr(ln._KERNEL, "compiled", None)
    u = torch.linspace(-30, 5, ln.FUSED_MIN_SIZE)
    assert torch.equal(ln.log_ndtr(u), ln._log_ndtr_plain(u))
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


@pytest.mark.parametrize("size", [4, ln.FUSED_MIN_SIZE])
def test_an_entry_masked_out_at_minus_infinity_gets_a_zero_gradient(size: int) -> None:
    """λ(−inf) = inf; a caller that drops that entry with ``torch.where`` sends it a zero
    gradient, which stays 0 (0 · inf would be NaN), on both paths."""
    u = torch.linspace(-3, 3, size).index_fill(0, torch.tensor([0]), -torch.inf)
    u.requires_grad_()
    kept = torch.isfinite(u)
    (grad,) = torch.autograd.grad(torch.where(kept, ln.log_ndtr(u), 0.0).sum(), u)
    assert grad[0] == 0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_evaluated_in_float32_and_returned_as_given(dtype: torch.dtype) -> None:
    """torch has no half-precision log_ndtr kernel ("not implemented for 'Half'")."""
    u = torch.tensor([-50.0, -3.0, 0.0, 2.0], dtype=dtype, requires_grad=True)
    y = ln.log_ndtr(u)
    (grad,) = torch.autograd.grad(y.sum(), u)
    assert y.dtype == grad.dtype == dtype
    want = ln.log_ndtr(u.detach().float())
    torch.testing.assert_close(y.float(), want.to(dtype).float(), rtol=0, atol=0)
    torch.testing.assert_close(grad.float(), _inverse_mills_truth(u.detach()).float(),
                               rtol=torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_second_derivative_is_finite_and_exact_in_the_upper_tail(dtype: torch.dtype) -> None:
    """(log Φ)'' = λ' = −λ (u + λ). ``inverse_mills`` took λ as √(2/π)/erfcx(−u/√2), which
    overflows from u ≈ 13.2 (float32) / 37.7 (float64): its derivative was inf/inf = NaN there."""
    u = torch.tensor([0.0, 2.0, 8.0, 13.0, 14.0, 20.0, 38.0, 40.0, 1e3], dtype=dtype,
                     requires_grad=True)
    (g,) = torch.autograd.grad(ln.log_ndtr(u).sum(), u, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), u)
    assert bool(torch.isfinite(h).all()), h
    lam = _inverse_mills_truth(u.detach())
    want = -lam * (u.detach().double() + lam)
    # λ' = −λ (u + λ) doubles λ's relative error; below tiny, subnormals round absolutely
    allowed = 4 * _gradient_tolerance(u.detach()) * want.abs() + torch.finfo(dtype).tiny
    assert bool(((h.double() - want).abs() <= allowed).all()), (h, want)


def test_compiled_paths_backward_is_differentiable_again() -> None:
    """The compiled path's backward was ``once_differentiable``: with a first-order gradient
    that does not require grad, its result carried no graph, so d/da ∇_u log Φ(a u) silently
    lost the λ' term (32918 instead of 60939 on 16384 float32 normals). A double backward
    now takes the general path's differentiable λ (no compilation needed to check it)."""
    g = torch.Generator().manual_seed(0)
    u = (3 * torch.randn(64, generator=g, dtype=torch.float64)).requires_grad_()
    a = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)

    def second(fn):
        (grad_u,) = torch.autograd.grad(fn(a * u).sum(), u, create_graph=True)
        return torch.autograd.grad(grad_u.sum(), (u, a))

    fused = second(lambda x: ln._LogNdtr.apply(x, ln.log_ndtr_kernel(x.detach())))
    plain = second(ln.log_ndtr)
    for got, want in zip(fused, plain):
        torch.testing.assert_close(got, want)


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # vmap fallback
def test_plain_path_supports_forward_mode() -> None:
    """The general path is documented to work under ``torch.func`` transforms, but its Function
    had no ``jvp``: ``torch.func.jvp``/``jacfwd``/``hessian`` of log Φ, and of every density
    through it (``GaussianSparsemax.log_prob``), raised NotImplementedError."""
    u = torch.tensor([-1e3, -20.0, 0.0, 3.0, 40.0], dtype=torch.float64)
    lam = _inverse_mills_truth(u)
    _, tangent_out = torch.func.jvp(ln.log_ndtr, (u,), (torch.ones_like(u),))
    torch.testing.assert_close(tangent_out, lam, rtol=1e-13, atol=0)
    # λ' = −λ (u + λ); u + λ cancels in the far lower tail, so compare from u = −20 up
    hess = torch.func.hessian(lambda x: ln.log_ndtr(x).sum())(u[1:]).diagonal()
    torch.testing.assert_close(hess, -lam[1:] * (u[1:] + lam[1:]), rtol=1e-12, atol=1e-300)

    g = torch.Generator().manual_seed(0)
    loc = torch.randn(2, 4, generator=g, dtype=torch.float64)
    value = GaussianSparsemax(loc, 0.7).sample((3,))
    direction = torch.randn(loc.shape, generator=g, dtype=torch.float64)

    def log_prob(m: torch.Tensor) -> torch.Tensor:
        return GaussianSparsemax(m, 0.7).log_prob(value)

    _, forward = torch.func.jvp(log_prob, (loc,), (direction,))
    reverse = torch.func.jacrev(log_prob)(loc)  # (3, 2, 2, 4)
    torch.testing.assert_close(forward, torch.einsum("sbij,ij->sb", reverse, direction))
