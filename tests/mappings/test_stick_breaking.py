"""Stick-breaking (IGR-SB): formula, log-space logit version, inverses, log-dets vs autograd."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from latentgrad.mappings import (
    log_stick_breaking_logits,
    stick_breaking,
    stick_breaking_inverse,
    stick_breaking_log_abs_det_jacobian,
    stick_breaking_logits,
    stick_breaking_logits_inverse,
    stick_breaking_logits_log_abs_det_jacobian,
)

fractions = st.lists(st.floats(0.01, 0.99), min_size=1, max_size=7)
logits = st.lists(st.floats(-6, 6, allow_nan=False), min_size=1, max_size=7)


def _loop_reference(eta: list[float]) -> list[float]:
    """pi_k = eta_k prod_{j<k}(1 - eta_j); the remainder last — one stick at a time."""
    rest, out = 1.0, []
    for e in eta:
        out.append(e * rest)
        rest *= 1.0 - e
    return [*out, rest]


@given(fractions)
def test_stick_breaking_matches_the_sequential_definition(eta):
    x = torch.tensor(eta, dtype=torch.float64)
    pi = stick_breaking(x)
    torch.testing.assert_close(pi, torch.tensor(_loop_reference(eta), dtype=torch.float64))
    torch.testing.assert_close(pi.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(stick_breaking_inverse(pi), x)


@given(logits)
def test_logit_version_equals_sigmoid_then_stick_breaking_and_inverts(kappa):
    k = torch.tensor(kappa, dtype=torch.float64)
    pi = stick_breaking_logits(k)
    torch.testing.assert_close(pi, stick_breaking(torch.sigmoid(k)))
    torch.testing.assert_close(log_stick_breaking_logits(k), pi.log())
    torch.testing.assert_close(stick_breaking_logits_inverse(pi), k, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(
        stick_breaking_logits_inverse(log_stick_breaking_logits(k), log_input=True), k
    )


def test_log_space_survives_where_products_underflow():
    # Every stick takes 99.3% of what is left: pi_k ~ 0.0067^k underflows float32 by k = 20.
    kappa = torch.full((1, 300), 5.0, dtype=torch.float32)
    log_pi = log_stick_breaking_logits(kappa)
    assert torch.isfinite(log_pi).all()
    torch.testing.assert_close(
        log_pi[0, 50], (torch.nn.functional.logsigmoid(torch.tensor(5.0))
                        + 50 * torch.nn.functional.logsigmoid(torch.tensor(-5.0)))
    )


@given(fractions)
def test_log_det_matches_autograd_jacobian(eta):
    x = torch.tensor(eta, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: stick_breaking(t)[:-1], x)
    expected = torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(stick_breaking_log_abs_det_jacobian(x), expected)


def test_log_det_ignores_the_last_fraction_even_at_one():
    # pi_{1:K-1} does not depend on the last fraction: its weight is 0, value and gradient finite
    eta = torch.tensor([0.5, 1.0], dtype=torch.float64, requires_grad=True)
    log_det = stick_breaking_log_abs_det_jacobian(eta)
    torch.testing.assert_close(log_det, torch.log1p(torch.tensor(-0.5, dtype=torch.float64)))
    (grad,) = torch.autograd.grad(log_det, eta)
    torch.testing.assert_close(grad, torch.tensor([-2.0, 0.0], dtype=torch.float64))
    one = torch.ones(1, requires_grad=True)
    (grad,) = torch.autograd.grad(stick_breaking_log_abs_det_jacobian(one), one)
    assert grad.item() == 0.0


@given(logits)
def test_logit_log_det_matches_autograd_jacobian(kappa):
    k = torch.tensor(kappa, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: stick_breaking_logits(t)[:-1], k)
    expected = torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(stick_breaking_logits_log_abs_det_jacobian(k), expected)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_any_dim_and_batch(dim):
    eta = torch.rand(3, 4, 5, dtype=torch.float64) * 0.9 + 0.05
    pi = stick_breaking(eta, dim=dim)
    torch.testing.assert_close(pi, stick_breaking(eta.movedim(dim, -1)).movedim(-1, dim))
    torch.testing.assert_close(stick_breaking_inverse(pi, dim=dim), eta)
    torch.testing.assert_close(
        stick_breaking_log_abs_det_jacobian(eta, dim=dim),
        stick_breaking_log_abs_det_jacobian(eta.movedim(dim, -1)),
    )
    kappa = torch.logit(eta)
    torch.testing.assert_close(stick_breaking_logits(kappa, dim=dim), pi)
    torch.testing.assert_close(stick_breaking_logits_inverse(pi, dim=dim), kappa)


def test_gradients_and_edge_shapes():
    kappa = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(stick_breaking_logits, (kappa,))
    assert torch.autograd.gradgradcheck(stick_breaking_logits, (kappa,))
    eta = torch.rand(2, 4, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(stick_breaking, (eta,))
    torch.testing.assert_close(stick_breaking(torch.zeros(3, 0)), torch.ones(3, 1))
    assert stick_breaking(torch.zeros(0, 3)).shape == (0, 4)
    half = stick_breaking(torch.rand(2, 3).to(torch.bfloat16))
    assert half.dtype == torch.bfloat16


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        stick_breaking(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="eta"):
        stick_breaking_log_abs_det_jacobian(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="kappa contains NaN"):
        stick_breaking_logits(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="open simplex"):
        stick_breaking_inverse(torch.tensor([0.5, 0.5, 0.0]))
    with pytest.raises(TypeError, match="floating"):
        stick_breaking(torch.tensor([1, 0]))


@pytest.mark.parametrize("log_input", [False, True])
def test_inverses_refuse_points_off_the_simplex(log_input):
    """Entries in (0, 1] whose sum is not 1 were mapped to sticks that do not round-trip."""
    from latentgrad.mappings import softmax_pp_inverse

    pi = torch.tensor([[0.5, 0.6, 0.1]], dtype=torch.float64)
    arg = pi.log() if log_input else pi
    off = "0.182" if log_input else "0.2"  # log 1.2 or 1.2 - 1
    with pytest.raises(ValueError, match=f"pi must be normalised .* up to {off}"):
        stick_breaking_logits_inverse(arg, log_input=log_input)
    with pytest.raises(ValueError, match="psi must be normalised"):
        softmax_pp_inverse(arg, 1.0, log_input=log_input)
    if not log_input:
        with pytest.raises(ValueError, match="pi must be normalised"):
            stick_breaking_inverse(pi)
    ok = torch.softmax(torch.randn(4, 1000), -1)  # float32 rows of 1,000: rounding only
    stick_breaking_inverse(ok)
    stick_breaking_logits_inverse(ok.log(), log_input=True)
