"""The pixel likelihood of the bit-vector VAE (``tasks/pixel_likelihood.py``): the shared pixel
layer with its fast weight gradient, the fused (torch.compile) path against the plain
cross-entropy path and a brute-force float64 reference (values and gradients, gradcheck of its
backward), the fallback when compilation fails, and bad input. Compiles the float64 kernels once
per test process."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import _compile_probe
from latentgrad.experiments.tasks import pixel_likelihood as pl

compile_state = _compile_probe.compile_state
VALUES, RANK = 256, 5


@pytest.fixture(scope="module")
def compiles() -> bool:
    """Whether ``torch.compile`` works here: the tests of the fused path itself skip where it
    does not; the fallback tests run anyway."""

    def probe() -> None:
        layer = torch.nn.Linear(RANK, VALUES).double()
        h = torch.randn(1, 4, RANK, dtype=torch.float64, requires_grad=True)
        pl.pixel_nll(h, torch.zeros(1, 4, dtype=torch.long), layer).sum().backward()

    return _compile_probe.compiles(probe)


@pytest.fixture
def fused_works(compiles: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    _compile_probe.require_compilation(compiles, monkeypatch, "the plain path")


def _record_rows(monkeypatch: pytest.MonkeyPatch, kernel: str) -> list[int]:
    """Wrap the compiled kernel ``pl.<kernel>``: the returned list gets the rows of each call."""
    rows: list[int] = []
    wrapped = getattr(pl, kernel)
    monkeypatch.setattr(pl, kernel, lambda h, *args: rows.append(h.shape[0]) or wrapped(h, *args))
    return rows


def _problem(n: int = 3, pixels: int = 40, seed: int = 0, scale: float = 3.0):
    """A float64 layer, features (n, pixels, 5) and byte targets; ``scale`` spreads the logits."""
    gen = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(RANK, VALUES).double()
    with torch.no_grad():
        layer.weight.copy_(scale * torch.randn(VALUES, RANK, dtype=torch.float64, generator=gen))
        layer.bias.copy_(torch.randn(VALUES, dtype=torch.float64, generator=gen))
    h = torch.randn(n, pixels, RANK, dtype=torch.float64, generator=gen)
    x = torch.randint(0, VALUES, (n, pixels), generator=gen)
    return layer, h, x


def _brute_force(h: torch.Tensor, x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """``Σ_p −log softmax(W h_np + b)[x_np]`` pixel by pixel (float64)."""
    out = []
    for n in range(h.shape[0]):
        total = torch.zeros((), dtype=h.dtype)
        for p in range(h.shape[1]):
            logits = layer.weight @ h[n, p] + layer.bias
            total = total - (logits[x[n, p]] - torch.logsumexp(logits, 0))
        out.append(total)
    return torch.stack(out)


def _took_fused(y: torch.Tensor) -> bool:
    """Whether ``y`` was computed through ``_FusedPixelNLL`` (its autograd graph)."""
    todo, seen = [y.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__.startswith("_FusedPixelNLL"):
            return True
        todo.extend(next_node for next_node, _ in node.next_functions)
    return False


def _values_and_grads(h: torch.Tensor, x: torch.Tensor, layer: torch.nn.Linear, fused: bool,
                      g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    h = h.detach().clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    y = pl.pixel_nll(h, x, layer, fused=fused)
    assert _took_fused(y) == fused
    y.backward(g)
    return y.detach(), h.grad, layer.weight.grad, layer.bias.grad


def _rounding_tolerances(h: torch.Tensor, layer: torch.nn.Linear,
                         g: torch.Tensor) -> tuple[float, float]:
    """Absolute tolerances for two float64 evaluations of the same sums in other orders: each
    pixel's logsumexp and target logit are within a few eps of the logits' magnitude L (r-term
    dot products, a V-term sum), summed over P pixels; a gradient entry sums up to V (∂h) or
    N·P (∂W, ∂b) terms of size |g| · max(|h|, |W|, 1)."""
    eps = torch.finfo(torch.float64).eps
    with torch.no_grad():
        logits = h @ layer.weight.T + layer.bias
        weight = layer.weight.detach()  # the fused kernel shifts the logits by their bound
        bound = layer.bias.max() + (h.abs() * weight.abs().max(0).values).sum(-1)
    magnitude = max(float(logits.abs().max()), float(bound.abs().max())) + 1.0
    n, pixels = h.shape[:2]
    terms = max(VALUES, n * pixels)
    size = float(g.abs().max()) * max(float(h.abs().max()), float(weight.abs().max()), 1.0)
    return 16 * eps * pixels * magnitude, 16 * eps * terms * size * magnitude


@pytest.mark.usefixtures("fused_works")
def test_fused_path_gives_the_plain_values_and_gradients() -> None:
    layer, h, x = _problem()
    g = torch.randn(h.shape[0], dtype=torch.float64)
    plain = _values_and_grads(h, x, layer, False, g)
    fused = _values_and_grads(h, x, layer, True, g)
    value_tol, grad_tol = _rounding_tolerances(h, layer, g)
    torch.testing.assert_close(fused[0], plain[0], rtol=0, atol=value_tol)
    torch.testing.assert_close(fused[0], _brute_force(h, x, layer), rtol=0, atol=value_tol)
    for got, want in zip(fused[1:], plain[1:], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=grad_tol)


@pytest.mark.usefixtures("fused_works")
@pytest.mark.parametrize("loose", [0, 1, 3])
def test_fused_path_shifts_by_the_bound_and_by_the_maximum_where_the_bound_is_loose(
    loose: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # features of size 1000 in `loose` of 8 pixels put the bound of their logits more than 800
    # nats above the maximum, where every shifted exponential underflows in float64 (below
    # exp(-745)): those pixels are redone with the maximum (a single one twice: the kernels take
    # two rows or more); elsewhere the bound is within 100 nats
    redone = _record_rows(monkeypatch, "_NLL_MAX")
    layer, h, x = _problem(n=1, pixels=8)
    h[:, :loose] *= 1000
    with torch.no_grad():
        logits = h @ layer.weight.T + layer.bias
        bound = layer.bias.max() + torch.maximum(h * layer.weight.max(0).values,
                                                 h * layer.weight.min(0).values).sum(-1)
    gap = (bound - logits.amax(-1))[0]
    assert float(gap[loose:].max()) < 100 and (loose == 0 or float(gap[:loose].min()) > 800)
    g = torch.randn(1, dtype=torch.float64)
    fused = _values_and_grads(h, x, layer, True, g)
    assert redone == {0: [], 1: [2], 3: [3]}[loose]
    value_tol, grad_tol = _rounding_tolerances(h, layer, g)
    torch.testing.assert_close(fused[0], _brute_force(h, x, layer), rtol=0, atol=value_tol)
    plain = _values_and_grads(h, x, layer, False, g)
    for got, want in zip(fused[1:], plain[1:], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=grad_tol)


@pytest.mark.usefixtures("fused_works")
@pytest.mark.parametrize("live", [0, 1, 2, 3])
def test_fused_backward_computes_only_the_rows_of_nonzero_gradient(
    live: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a self-critic baseline's decodes are read detached: their rows get a zero gradient, add
    # nothing to ∂W and ∂b and have ∂h = 0; the VJP kernel runs on the others when there are two
    # or more (3 images of 4 pixels: `live` images with a nonzero gradient)
    rows_seen = _record_rows(monkeypatch, "_NLL_VJP")
    layer, h, x = _problem(n=3, pixels=4)
    g = torch.randn(3, dtype=torch.float64).masked_fill(torch.arange(3) >= live, 0.0)
    fused = _values_and_grads(h, x, layer, True, g)
    plain = _values_and_grads(h, x, layer, False, g)
    assert rows_seen == [4 * live if 0 < live < 3 else 12]
    value_tol, grad_tol = _rounding_tolerances(h, layer, g)
    torch.testing.assert_close(fused[0], plain[0], rtol=0, atol=value_tol)
    for got, want in zip(fused[1:], plain[1:], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=grad_tol)
    assert bool((fused[1][live:] == 0).all())


@pytest.mark.usefixtures("fused_works")
def test_fused_backward_passes_gradcheck() -> None:
    layer, h, x = _problem(n=2, pixels=3, scale=1.0)
    rows = h.reshape(-1, RANK).requires_grad_()
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()

    def fused(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        y = pl._fused_nll(rows, x.reshape(-1), weight, bias)
        assert y is not None and (not torch.is_grad_enabled() or _took_fused(y))
        return y

    assert gradcheck(fused, (rows, weight, bias))


@pytest.mark.usefixtures("fused_works")
def test_fused_gradients_only_for_the_inputs_that_ask() -> None:
    layer, h, x = _problem(n=1, pixels=6)
    layer.requires_grad_(False)
    h.requires_grad_()
    y = pl.pixel_nll(h, x, layer)
    assert _took_fused(y)
    (grad_h,) = torch.autograd.grad(y.sum(), h)
    assert grad_h.shape == h.shape and layer.weight.grad is None
    with torch.no_grad():
        assert pl.pixel_nll(h, x, layer).grad_fn is None


@pytest.mark.parametrize("stage", ["forward", "backward"])
def test_failed_compilation_falls_back_to_the_plain_path(stage: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # no C++ compiler (say): a kernel's compilation raises; the plain path answers, and nothing
    # is compiled again
    attempts = []

    def failing(*args: object, **kwargs: object) -> None:
        attempts.append(1)
        raise RuntimeError("no compiler")

    monkeypatch.setitem(compile_state, "failed", False)
    monkeypatch.setattr(torch, "compile", failing)
    failing_kernel = pl._NLL_VJP if stage == "backward" else pl._NLL
    monkeypatch.setattr(failing_kernel, "compiled", None)
    if stage == "backward":  # the forward kernel works (a plain stand-in), only the VJP fails
        monkeypatch.setattr(pl._NLL, "compiled", pl.nll_kernel)
    layer, h, x = _problem(n=2, pixels=5)
    g = torch.randn(2, dtype=torch.float64)
    want = _values_and_grads(h, x, layer, False, g)
    value_tol, grad_tol = _rounding_tolerances(h, layer, g)
    for _ in range(2):
        h_in = h.clone().requires_grad_()
        layer.zero_grad(set_to_none=True)
        y = pl.pixel_nll(h_in, x, layer, fused=True)
        y.backward(g)
        torch.testing.assert_close(y.detach(), want[0], rtol=0, atol=value_tol)
        got = (h_in.grad, layer.weight.grad, layer.bias.grad)
        for a, b in zip(got, want[1:], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=grad_tol)
        assert compile_state["failed"]
    assert len(attempts) == 1


@pytest.mark.parametrize("fused", [False, True])
def test_bad_input_is_rejected_with_the_argument_named(fused: bool) -> None:
    layer, h, x = _problem(n=2, pixels=4)
    out_of_range = r"x must hold values in \[0, 256\), got values from \d+ to 256"
    with pytest.raises(ValueError, match=out_of_range):
        pl.pixel_nll(h, torch.where(x == x.max(), 256, x), layer, fused)
    with pytest.raises(ValueError, match="x must hold values in"):
        pl.pixel_nll(h, torch.where(x == x.max(), -1, x), layer, fused)
    with pytest.raises(ValueError, match=r"x must hold values in \[0, 256\), got values from -3"):
        pl.pixel_nll(h, torch.full((2, 4), -3, dtype=torch.int8), layer, fused)
    torch.testing.assert_close(pl.pixel_nll(h, x.to(torch.uint8), layer, fused),
                               pl.pixel_nll(h, x, layer, fused))  # bytes as they are stored
    with pytest.raises(TypeError, match="x must be an integer tensor"):
        pl.pixel_nll(h, x.double(), layer, fused)
    with pytest.raises(ValueError, match=r"x must have shape \(N, P\) = \(2, 4\)"):
        pl.pixel_nll(h, x[:, :3], layer, fused)
    with pytest.raises(ValueError, match=r"h must have shape \(N, P, 5\)"):
        pl.pixel_nll(h[..., :4], x, layer, fused)
    with pytest.raises(TypeError, match="h must be a floating-point tensor"):
        pl.pixel_nll(x, x, layer, fused)


def _pixel_logits(h: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """The plain path's logits ``layer(h)`` through ``_PixelLogits`` (its custom backward)."""
    return pl._PixelLogits.apply(h, layer.weight, layer.bias)


def test_pixel_logits_is_the_shared_linear_layer_with_its_gradients() -> None:
    """Values and gradients of _PixelLogits equal nn.Linear's (float64, autograd's own backward
    as the reference; gradcheck checks the custom backward against finite differences)."""
    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(5, 7).double()
    h = torch.randn(40, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    grad = torch.randn(40, 7, dtype=torch.float64, generator=gen)
    got = _pixel_logits(h, layer)
    want = layer(h)
    torch.testing.assert_close(got, want)
    params = (h, layer.weight, layer.bias)
    got_grads = torch.autograd.grad(got, params, grad)
    want_grads = torch.autograd.grad(want, params, grad)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)
    assert torch.autograd.gradcheck(
        lambda h, w, b: pl._PixelLogits.apply(h, w, b),
        (h[:6].detach().requires_grad_(), layer.weight.detach().clone().requires_grad_(),
         layer.bias.detach().clone().requires_grad_()),
    )


def test_pixel_logits_gives_only_the_gradients_asked_for() -> None:
    layer = torch.nn.Linear(5, 7).double().requires_grad_(False)
    h = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    (grad_h,) = torch.autograd.grad(_pixel_logits(h, layer).sum(), h)
    torch.testing.assert_close(grad_h, layer.weight.sum(0).expand(4, 5))
    layer.requires_grad_(True)
    _pixel_logits(h.detach(), layer).sum().backward()
    torch.testing.assert_close(layer.bias.grad, torch.full((7,), 4.0, dtype=torch.float64))
    torch.testing.assert_close(layer.weight.grad, h.detach().sum(0).expand(7, 5))
