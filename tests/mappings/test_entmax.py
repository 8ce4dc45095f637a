"""entmax15 and entmax_bisect: exact against root-finding references, closed-form backward in x
and alpha, properties, dtypes, errors."""

from __future__ import annotations

import importlib

import entmax
import pytest
import torch
from _mapping_refs import entmax_root_reference, hard_rows, rowwise, sparsemax_sort_reference
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

from latentgrad.mappings import entmax15, entmax_bisect
from latentgrad.mappings._support import row_maxima

# the package re-exports the function under the module's name: fetch the module itself
entmax_module = importlib.import_module("latentgrad.mappings._entmax")
rows_strategy = st.lists(st.floats(-20, 20, allow_nan=False), min_size=1, max_size=12)


def _bisect(alpha):
    return lambda x, dim=-1: entmax_bisect(x, alpha, dim=dim)


# ---------------------------------------------------------------------------------------------
# exactness
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5, 17, 300])
@pytest.mark.parametrize("seed", [0, 1])
def test_entmax15_matches_root_finding_reference(k, seed):
    x = hard_rows(seed, k)
    expected = rowwise(entmax_root_reference, x, 1.5)
    torch.testing.assert_close(entmax15(x), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("alpha", [1.0, 1.01, 1.25, 1.5, 2.0, 3.5])
@pytest.mark.parametrize("k", [1, 6, 60])
def test_entmax_bisect_matches_root_finding_reference(alpha, k):
    x = hard_rows(k, k)
    expected = rowwise(entmax_root_reference, x, alpha)
    torch.testing.assert_close(entmax_bisect(x, alpha), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("alpha", [1 + 1e-7, 1 + 1e-5, 1.001, 1.1, 1.5, 3.0])
def test_entmax_bisect_in_float32_is_float64_within_float32_rounding(alpha):
    """Near alpha = 1 the threshold is solved in logit units: t = p_max^(alpha-1) would round at
    eps absolute, an error eps/(alpha - 1) in log p (6e-2 at alpha = 1 + 1e-7)."""
    x = 3 * torch.randn(40, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = entmax_bisect(x.float(), alpha).double()
    torch.testing.assert_close(got, entmax_bisect(x, alpha), rtol=0, atol=32 * 1.2e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [4.0, 10.0, 12.0])
def test_entmax_bisect_at_large_alpha_on_nearly_flat_rows_is_near_uniform(dtype, alpha):
    """8 scores within 1e-15 of each other: p_max^(alpha-1) = 8^-(alpha-1) (1e-10 at alpha = 12)
    dwarfs (alpha - 1)·1e-15, so p is uniform to 1e-4 relative. Solved for the threshold nu,
    float32 could not resolve t below its rounding near 1 (6e-8): p was 0 everywhere, then NaN."""
    g = torch.Generator().manual_seed(1)
    for noise in (1e-30, 1e-15):
        x = (noise * torch.randn(8, 8, generator=g, dtype=torch.float64)).to(dtype)
        x.requires_grad_()
        p = entmax_bisect(x, alpha)
        torch.testing.assert_close(p.double(), torch.full((8, 8), 1 / 8, dtype=torch.float64),
                                   rtol=1e-4, atol=0)
        (grad,) = torch.autograd.grad(p[:, 0].sum(), x)
        assert torch.isfinite(grad).all()


def test_entmax_matches_entmax_package():
    x = torch.randn(30, 40, dtype=torch.float64) * 2
    torch.testing.assert_close(entmax15(x), entmax.entmax15(x, dim=-1), rtol=0, atol=1e-12)
    alpha = torch.rand(30, 1, dtype=torch.float64) + 1.1
    torch.testing.assert_close(
        entmax_bisect(x, alpha), entmax.entmax_bisect(x, alpha, n_iter=100), rtol=0, atol=1e-9
    )


def test_entmax_bisect_special_cases():
    x = hard_rows(5, 20)
    torch.testing.assert_close(entmax_bisect(x, 1.0), torch.softmax(x, -1), rtol=0, atol=1e-12)
    torch.testing.assert_close(entmax_bisect(x, 1.5), entmax15(x), rtol=0, atol=1e-10)
    torch.testing.assert_close(
        entmax_bisect(x, 2.0), rowwise(sparsemax_sort_reference, x), rtol=0, atol=1e-10
    )


@pytest.mark.parametrize(
    ("scale", "sparse_path"), [(3.0, True), (0.01, False)], ids=["sparse", "dense"]
)
def test_entmax15_both_search_paths_are_exact(scale, sparse_path):
    x = torch.randn(30, 200, dtype=torch.float64) * scale
    _, _, columns = entmax_module._solve(x, row_maxima(x, entmax_module._SPREAD))
    assert (columns is not None) == sparse_path
    expected = rowwise(entmax_root_reference, x, 1.5)
    torch.testing.assert_close(entmax15(x), expected, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [3.0, 0.02], ids=["sparse", "dense"])
def test_entmax15_gradcheck_and_gradgradcheck(scale):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 3, 40, generator=g, dtype=torch.float64) * scale).requires_grad_()
    assert gradcheck(lambda t: entmax15(t, dim=1), (x,), fast_mode=True)
    assert gradgradcheck(lambda t: entmax15(t, dim=-1), (x,), fast_mode=True)


def test_entmax15_jacobian_is_the_closed_form():
    x = torch.randn(7, dtype=torch.float64) * 2
    g = entmax15(x).sqrt()
    expected = torch.diag(g) - torch.outer(g, g) / g.sum()
    torch.testing.assert_close(torch.func.jacrev(entmax15)(x), expected)
    v = torch.randn(7, dtype=torch.float64)
    torch.testing.assert_close(torch.func.jvp(entmax15, (x,), (v,))[1], expected @ v)


@pytest.mark.parametrize("alpha", [1.0001, 1.3, 1.5, 2.0, 3.0])
def test_entmax_bisect_gradcheck_in_x_and_alpha(alpha):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 6, 4, generator=g, dtype=torch.float64) * 2).requires_grad_()
    a = torch.full((3, 1, 4), alpha, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda t, s: entmax_bisect(t, s, dim=1), (x, a), fast_mode=True)


@pytest.mark.parametrize("alpha", [1.3, 2.5])
def test_entmax_bisect_gradgradcheck_in_x_and_alpha(alpha):
    """The closed-form backward is itself differentiable (Hessian-vector products)."""
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(3, 5, generator=g, dtype=torch.float64) * 2).requires_grad_()
    a = torch.full((3, 1), alpha, dtype=torch.float64, requires_grad=True)
    assert gradgradcheck(lambda t, s: entmax_bisect(t, s, dim=1), (x, a))


def test_entmax_bisect_gradcheck_in_x_where_alpha_takes_the_limit_form():
    """alpha - 1 below eps^(1/3): the alpha-derivative takes its limit form; the x-derivative is
    still exact (alpha below 1 is outside the domain, so only x is perturbed)."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(3, 5, generator=g, dtype=torch.float64) * 2).requires_grad_()
    assert gradcheck(lambda t: entmax_bisect(t, 1.0 + 1e-7, dim=1), (x,))


@pytest.mark.parametrize("alpha", [1.0 + 1e-7, 1.3, 2.5])
def test_entmax_bisect_forward_mode_matches_central_differences(alpha):
    """``torch.func.jvp`` in x and alpha against central differences of the forward map (x
    tangent only next to alpha = 1, where alpha - h leaves the domain)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, generator=g, dtype=torch.float64) * 2
    a = torch.full((3, 1), alpha, dtype=torch.float64)
    tx = torch.randn(3, 5, generator=g, dtype=torch.float64)
    ta = torch.randn(3, 1, generator=g, dtype=torch.float64) * (alpha > 1.01)
    _, jv = torch.func.jvp(lambda t, s: entmax_bisect(t, s, dim=1), (x, a), (tx, ta))
    h = 1e-6
    fd = (entmax_bisect(x + h * tx, a + h * ta, dim=1)
          - entmax_bisect(x - h * tx, a - h * ta, dim=1)) / (2 * h)  # fmt: skip
    torch.testing.assert_close(jv, fd, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("alpha", [30.0, 50.0, 100.0])
def test_entmax_bisect_gradient_beyond_float32_range_is_inf_not_nan(alpha):
    """On a flat row of 8, p = 1/8 and dp/dx = g (I - 11^T/8) with g = 8^(alpha-2): 2e25 at
    alpha = 30 (float32 holds it), 2e43 and 8e88 at 50 and 100 (it does not). float32 must give
    the float64 values where they fit and the overflow's ±inf where they do not, never NaN
    (inf - inf in sum-then-subtract forms)."""
    x = torch.zeros(5, 8, dtype=torch.float64)
    v = torch.randn(5, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    v[0] = 1.0  # v_i = <h, v>: the exact gradient is 0 there, not inf * 0
    grads = {}
    for dtype in (torch.float32, torch.float64):
        xd = x.to(dtype).requires_grad_()
        (grads[dtype],) = torch.autograd.grad((entmax_bisect(xd, alpha) * v.to(dtype)).sum(), xd)
    reference, got = grads[torch.float64], grads[torch.float32].double()
    assert not got.isnan().any()
    assert (got[0] == 0).all() and (reference[0] == 0).all()
    fits = reference.abs() < torch.finfo(torch.float32).max / 2
    torch.testing.assert_close(got[fits], reference[fits], rtol=1e-5, atol=0)
    beyond = ~fits
    assert torch.equal(got[beyond], reference[beyond].sign() * float("inf"))
    assert beyond.any() == (alpha > 30)


def test_entmax_bisect_alpha_gradient_at_one_is_the_one_sided_limit():
    x = torch.randn(4, 7, dtype=torch.float64)
    v = torch.randn(4, 7, dtype=torch.float64)
    for a0 in (1.0, 1.0 + 1e-7):  # exactly 1, and inside the Taylor branch
        a = torch.full((4, 1), a0, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad((entmax_bisect(x, a) * v).sum(), a)
        h = 1e-5
        fd = ((entmax_bisect(x, a0 + h) - entmax_bisect(x, a0)) * v).sum(-1, keepdim=True) / h
        torch.testing.assert_close(grad, fd, rtol=1e-3, atol=1e-5)


def test_entmax_bisect_alpha_gradient_is_summed_to_alpha_shape():
    x = torch.randn(5, 3, 6, dtype=torch.float64)
    a_scalar = torch.tensor(1.4, dtype=torch.float64, requires_grad=True)
    a_rows = torch.full((5, 3, 1), 1.4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(5, 3, 6, dtype=torch.float64)
    (g_scalar,) = torch.autograd.grad((entmax_bisect(x, a_scalar) * v).sum(), a_scalar)
    (g_rows,) = torch.autograd.grad((entmax_bisect(x, a_rows) * v).sum(), a_rows)
    assert g_scalar.shape == () and g_rows.shape == (5, 3, 1)
    torch.testing.assert_close(g_scalar, g_rows.sum())


# ---------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------


@given(rows_strategy, st.floats(-100, 100), st.sampled_from(["15", 1.2, 2.5]))
def test_properties_simplex_shift_invariance_support(row, c, which):
    fn = entmax15 if which == "15" else _bisect(which)
    x = torch.tensor(row, dtype=torch.float64)
    p = fn(x)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(fn(x + c), p, rtol=0, atol=1e-9)
    if which == "15":
        # support = {x_i / 2 > tau}, tau recovered from the largest entry (away from ties at tau)
        i = int(p.argmax())
        margin = x / 2 - (x[i] / 2 - p[i].sqrt())
        clear = margin.abs() > 1e-9
        assert torch.equal((p > 0)[clear], (margin > 0)[clear])


@given(rows_strategy, st.randoms(use_true_random=False))
def test_entmax15_permutation_equivariance_and_symmetric_jacobian(row, rnd):
    x = torch.tensor(row, dtype=torch.float64)
    perm = list(range(len(row)))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    torch.testing.assert_close(entmax15(x[perm]), entmax15(x)[perm], rtol=0, atol=1e-12)
    jac = torch.func.jacrev(entmax15)(x)
    torch.testing.assert_close(jac, jac.T)
    torch.testing.assert_close(jac.sum(0), torch.zeros_like(x))


# ---------------------------------------------------------------------------------------------
# errors (the shared row-wise checks are in test_rowwise.py)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alpha", "error", "match"),
    [
        (0.5, ValueError, ">= 1"),
        (float("nan"), ValueError, ">= 1"),
        (torch.tensor([[0.9], [1.5]]), ValueError, ">= 1"),
        (torch.tensor([[float("nan")], [1.5]]), ValueError, ">= 1"),
        (torch.full((2, 3), 1.5), ValueError, "one value per row"),
        (torch.tensor([[2], [2]]), TypeError, "floating"),
        ("1.5", TypeError, "alpha"),
    ],
)
def test_bad_alpha_raises(alpha, error, match):
    with pytest.raises(error, match=match):
        entmax_bisect(torch.randn(2, 3), alpha)


@pytest.mark.parametrize("alpha", [1.5, 3.0])
def test_long_peaked_rows_search_a_short_list_exactly(alpha):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5000, generator=g, dtype=torch.float64) * 4
    x[2, ::3] = float("-inf")
    x[3, 4995:] += 20.0
    expected = rowwise(entmax_root_reference, x, alpha)
    torch.testing.assert_close(entmax_bisect(x, alpha), expected, rtol=0, atol=1e-9)
    if alpha == 1.5:
        torch.testing.assert_close(entmax15(x), expected, rtol=0, atol=1e-10)
        _, _, columns = entmax_module._solve(x, row_maxima(x, entmax_module._SPREAD))
        assert columns is not None


def _peaked_rows(k):
    """Float64 rows (6, k): peaked, -inf entries, winners in the tail columns, and a row with
    180 entries near its maximum, all in the support (a wide candidate list)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, k, generator=g, dtype=torch.float64) * 4
    x[2, ::3] = float("-inf")
    x[3, k - 5 :] += 20.0
    x[5, :180] = 30.0 + 1e-3 * torch.randn(180, generator=g, dtype=torch.float64)
    return x


def _entmax15_grad(x, v):
    g = entmax15(x.detach()).sqrt()
    return g * v - g * (g * v).sum(-1, keepdim=True) / g.sum(-1, keepdim=True)


@pytest.mark.parametrize("k", [400, 1000, 4099], ids=["short", "tail", "prime"])
@pytest.mark.parametrize("wide", [False, True], ids=["sorted", "newton"])
def test_entmax15_candidate_lists_sorted_or_iterated_are_exact(k, wide):
    # Lists up to _SORTED_UP_TO long are sorted, longer ones go through Newton's iteration from
    # the screening bound; the first-order backward (from sqrt(p) at the candidates) and the
    # differentiable one (through the output) give the same gradient.
    x = _peaked_rows(k)
    if not wide:
        x[5] = x[0]
    _, _, columns = entmax_module._solve(x, row_maxima(x, entmax_module._SPREAD))
    assert columns is not None and (columns.shape[1] > entmax_module._SORTED_UP_TO) == wide
    expected = rowwise(entmax_root_reference, x, 1.5)
    torch.testing.assert_close(entmax15(x), expected, rtol=0, atol=1e-10)
    v = torch.randn(6, k, dtype=torch.float64)
    x.requires_grad_()
    (grad,) = torch.autograd.grad(entmax15(x), x, v)
    (graph_grad,) = torch.autograd.grad(entmax15(x), x, v, create_graph=True)
    torch.testing.assert_close(grad, _entmax15_grad(x, v))
    torch.testing.assert_close(graph_grad, grad)


@pytest.mark.parametrize("k", [600, 1000])
def test_entmax15_gradcheck_through_the_blocked_search(k):
    x = _peaked_rows(k)[[0, 3]].requires_grad_()
    assert gradcheck(entmax15, (x,), fast_mode=True)
    assert gradgradcheck(entmax15, (x,), fast_mode=True)


@pytest.mark.parametrize("k", [1000, 4096])
@pytest.mark.parametrize("scale", [1e-4, 1e-3, 1.0], ids=["flat", "dense", "sparse"])
def test_entmax15_float32_is_float64_within_the_threshold_rounding(k, scale):
    """float32 against float64, on flat rows (dense Newton path) and peaked ones (sorted
    candidate lists). On the shifted scale ``z = (x - max x) / 2`` the support lies in
    ``[tau, 0]``, so ``z`` and ``tau`` carry ~``|tau| eps`` of rounding: ``sqrt(p) = [z - tau]_+``
    is off by ~``|tau| eps``, ``p`` by ``2 sqrt(p) |tau| eps + p eps`` and ``sum p`` by
    ``2 sqrt(|S|) |tau| eps + eps`` (Cauchy-Schwarz: ``sum sqrt(p) <= sqrt(|S|)``); bounds with
    4 ``|tau| eps``. The root was taken from the gaps to the last Newton iterate (on flat rows
    ``t = -1``: gaps near 1, whose spread cancelled against ``1 / |S|``), which put ``sum p``
    150-642 eps off on flat rows."""
    eps = torch.finfo(torch.float32).eps
    x = torch.randn(16, k, generator=torch.Generator().manual_seed(0)) * scale + 3.0
    p = entmax15(x).double()
    reference = entmax15(x.double())
    support = (reference > 0).sum(-1)
    tau = entmax_module._solve(x.double(), row_maxima(x.double(), entmax_module._SPREAD))[0]
    slack = 4 * tau.abs() * eps
    assert bool(((p.sum(-1) - 1).abs() <= 2 * support.sqrt() * slack + eps).all())
    bound = 2 * reference.sqrt() * slack.unsqueeze(1) + reference * eps
    assert bool(((p - reference).abs() <= bound).all())
