"""softmax++ (IGR): formula, inverse, log-det Jacobian vs autograd, limits, dtypes, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck

from latentgrad.mappings import (
    log_softmax_pp,
    softmax_pp,
    softmax_pp_inverse,
    softmax_pp_log_abs_det_jacobian,
)

lambdas = st.lists(st.floats(-30, 30, allow_nan=False), min_size=1, max_size=8)
temperatures = st.floats(0.05, 5.0)
deltas = st.floats(0.01, 10.0)


def _direct(x: torch.Tensor, tau: float, delta: float) -> torch.Tensor:
    """psi_k = e^{x_k/tau} / (sum_j e^{x_j/tau} + delta), psi_K = delta / (...), written out."""
    e = torch.exp(x / tau)
    denom = e.sum(-1, keepdim=True) + delta
    return torch.cat([e / denom, delta / denom], dim=-1)


def test_softmax_pp_matches_the_formula():
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(softmax_pp(x, 0.7, 2.5), _direct(x, 0.7, 2.5))
    torch.testing.assert_close(log_softmax_pp(x, 0.7, 2.5), _direct(x, 0.7, 2.5).log())


def test_log_softmax_pp_is_stable_for_extreme_logits():
    x = torch.tensor([[800.0, -800.0, 0.0]], dtype=torch.float64)
    out = log_softmax_pp(x, tau=0.5)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(1, dtype=torch.float64))


@given(lambdas, temperatures, deltas)
def test_inverse_round_trip_in_log_space(row, tau, delta):
    x = torch.tensor([row], dtype=torch.float64)
    log_psi = log_softmax_pp(x, tau, delta)
    torch.testing.assert_close(
        softmax_pp_inverse(log_psi, tau, delta, log_input=True), x, rtol=1e-9, atol=1e-9
    )


@given(
    st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=8), st.floats(0.3, 5.0), deltas
)
def test_inverse_round_trip_from_probabilities(row, tau, delta):
    # from psi itself (not its log) the round trip loses log(psi_min) digits: moderate |x / tau|
    x = torch.tensor([row], dtype=torch.float64)
    psi = softmax_pp(x, tau, delta)
    torch.testing.assert_close(softmax_pp_inverse(psi, tau, delta), x, rtol=1e-8, atol=1e-8)


@given(
    st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=6),
    st.floats(0.3, 5.0),  # |x / tau| <= 10: autograd's Jacobian itself stays accurate
    deltas,
)
def test_log_det_matches_autograd_jacobian(row, tau, delta):
    x = torch.tensor(row, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: softmax_pp(t, tau, delta)[:-1], x)
    expected = torch.linalg.slogdet(jac).logabsdet
    psi = softmax_pp(x, tau, delta)
    torch.testing.assert_close(softmax_pp_log_abs_det_jacobian(psi, tau), expected)
    log_psi = log_softmax_pp(x, tau, delta)
    torch.testing.assert_close(
        softmax_pp_log_abs_det_jacobian(log_psi, tau, log_input=True), expected
    )


def test_batched_tensor_parameters_and_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    tau = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    delta = torch.tensor([[0.3], [1.0], [4.0]], dtype=torch.float64, requires_grad=True)
    out = softmax_pp(x, tau, delta)
    for i in range(3):
        torch.testing.assert_close(out[i], _direct(x[i], tau[i].item(), delta[i, 0].item()))
    assert gradcheck(lambda a, b, c: softmax_pp(a, b, c), (x, tau, delta))
    psi = out.detach()
    assert gradcheck(lambda t: softmax_pp_log_abs_det_jacobian(psi, t), (tau,))
    assert softmax_pp_log_abs_det_jacobian(psi, tau).shape == (3,)


def test_zero_temperature_limit_is_one_hot():
    x = torch.tensor([[0.3, 1.2, -0.5], [-0.3, -1.0, -2.0]], dtype=torch.float64)
    psi = softmax_pp(x, tau=1e-3)
    torch.testing.assert_close(psi[0], torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(psi[1], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64))


def test_small_delta_starves_the_last_category():
    x = torch.zeros(1, 3, dtype=torch.float64)
    assert softmax_pp(x, delta=1e-6)[0, -1] < 1e-6
    torch.testing.assert_close(softmax_pp(x)[0], torch.full((4,), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_any_dim(dim):
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    out = softmax_pp(x, 0.8, 1.5, dim=dim)
    expected = softmax_pp(x.movedim(dim, -1), 0.8, 1.5).movedim(-1, dim)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(softmax_pp_inverse(out, 0.8, 1.5, dim=dim), x)
    torch.testing.assert_close(
        softmax_pp_log_abs_det_jacobian(out, 0.8, dim=dim),
        softmax_pp_log_abs_det_jacobian(out.movedim(dim, -1), 0.8),
    )


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_tensor_parameters_broadcast_with_the_batch_shape_at_any_dim(dim):
    """tau and delta of lower rank align on the right with the batch shape (the input's shape
    without dim), as a batch of rows would."""
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    tau = torch.rand(x.movedim(dim, -1).shape[-2], dtype=torch.float64) + 0.5
    delta = torch.rand(x.movedim(dim, -1).shape[-2], dtype=torch.float64) + 0.5
    out = softmax_pp(x, tau, delta, dim=dim)
    moved = x.movedim(dim, -1)
    expected = softmax_pp(moved, tau, delta).movedim(-1, dim)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(softmax_pp_inverse(out, tau, delta, dim=dim), x)


def test_single_category_empty_batch_and_low_precision():
    torch.testing.assert_close(softmax_pp(torch.zeros(2, 0)), torch.ones(2, 1))
    assert softmax_pp(torch.zeros(0, 3)).shape == (0, 4)
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(4, 3).to(dtype)
        out = softmax_pp(x, 0.5)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), softmax_pp(x.float(), 0.5), atol=1e-2, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"x": torch.tensor([[0.0, float("nan")]])}, "NaN"),
        ({"x": torch.tensor([[0.0, float("inf")]])}, "infinite"),
        ({"x": torch.tensor([[1, 2]])}, "floating"),
        ({"tau": 0.0}, "tau"),
        ({"tau": torch.tensor([1.0, -1.0])}, "tau"),
        ({"delta": -2.0}, "delta"),
        ({"delta": math.nan}, "delta"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = {"x": torch.zeros(2, 3), "tau": 1.0, "delta": 1.0} | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        softmax_pp(**args)


def test_inverse_rejects_points_outside_the_open_simplex():
    with pytest.raises(ValueError, match="open simplex"):
        softmax_pp_inverse(torch.tensor([[0.5, 0.5, 0.0]]))
    with pytest.raises(ValueError, match="open simplex"):
        softmax_pp_log_abs_det_jacobian(torch.tensor([[0.5, float("nan"), 0.5]]))
    with pytest.raises(ValueError, match="log-probabilities"):
        softmax_pp_inverse(torch.tensor([[0.1, 0.2]]), log_input=True)


def test_a_tensor_parameter_that_does_not_broadcast_is_refused_by_name():
    from latentgrad.mappings import softmax_pp_inverse, softmax_pp_log_abs_det_jacobian

    x, psi = torch.zeros(2, 3), torch.full((2, 4), 0.25)
    calls = [lambda: softmax_pp(x, tau=torch.ones(5)), lambda: softmax_pp(x, delta=torch.ones(5)),
             lambda: softmax_pp_inverse(psi, tau=torch.ones(5)),
             lambda: softmax_pp_log_abs_det_jacobian(psi, tau=torch.ones(5))]
    for call in calls:
        with pytest.raises(ValueError, match=r"(tau|delta) of shape \(5,\) does not broadcast"):
            call()
    per_row = torch.tensor([0.5, 2.0])
    assert softmax_pp_log_abs_det_jacobian(psi, tau=per_row).shape == (2,)
    torch.testing.assert_close(softmax_pp(x, tau=per_row), softmax_pp(x))  # x = 0: tau-free
