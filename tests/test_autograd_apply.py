"""``latentgrad._autograd.apply``: a Function with ``setup_context`` called through its ctx-style
twin outside ``torch.func`` (same values, derivatives, saved state), the original inside."""

from __future__ import annotations

import torch

from latentgrad._autograd import apply


class _Cube(torch.autograd.Function):
    """``(x³, x > 0)``: a differentiable and a non-differentiable output, a saved input, a
    ``jvp``, a backward that is itself differentiable."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, scale):
        return scale * x**3, x > 0

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, scale = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.scale = scale
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, grad, _):
        (x,) = ctx.saved_tensors
        return grad * 3 * ctx.scale * x**2, None

    @staticmethod
    def jvp(ctx, tangent, _):
        (x,) = ctx.saved_tensors
        return tangent * 3 * ctx.scale * x**2, None


def test_outside_transforms_the_twin_gives_the_same_values_and_derivatives() -> None:
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y, positive = apply(_Cube, x, 2.0)
    assert type(y.grad_fn).__name__.startswith("_CubeTwin")
    assert torch.equal(y, 2.0 * x.detach() ** 3) and torch.equal(positive, x.detach() > 0)
    assert not positive.requires_grad
    assert torch.autograd.gradcheck(lambda t: apply(_Cube, t, 2.0)[0], (x,),
                                    check_forward_ad=True, check_backward_ad=True)
    assert torch.autograd.gradgradcheck(lambda t: apply(_Cube, t, 2.0)[0], (x,))


def test_under_torch_func_the_original_function_runs() -> None:
    x = torch.randn(4, dtype=torch.float64)
    grads = torch.func.vmap(torch.func.grad(lambda t: apply(_Cube, t, 2.0)[0]))(x)
    torch.testing.assert_close(grads, 6.0 * x**2)
    _, tangent = torch.func.jvp(lambda t: apply(_Cube, t, 2.0)[0], (x,), (torch.ones_like(x),))
    torch.testing.assert_close(tangent, 6.0 * x**2)


def test_a_function_whose_forward_takes_ctx_is_applied_as_it_is() -> None:
    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, grad):
            return 2 * grad

    x = torch.ones(3, requires_grad=True)
    y = apply(Double, x)
    assert type(y.grad_fn).__name__ == "DoubleBackward"
    y.sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 2.0))
