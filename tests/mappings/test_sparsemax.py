"""sparsemax: exact vs a sorting reference; closed-form backward; properties; dtypes; errors."""

from __future__ import annotations

import importlib

import entmax
import pytest
import torch
from _mapping_refs import hard_rows, rowwise, sparsemax_sort_reference
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

from latentgrad.mappings import sparsemax, sparsemax_threshold

# the package re-exports the function under the module's name: fetch the module itself
sparsemax_module = importlib.import_module("latentgrad.mappings._sparsemax")
support_module = importlib.import_module("latentgrad.mappings._support")
rows_strategy = st.lists(st.floats(-20, 20, allow_nan=False), min_size=1, max_size=12)


@pytest.mark.parametrize("k", [1, 2, 5, 17, 300, 1000])
@pytest.mark.parametrize("seed", [0, 1])
def test_sparsemax_matches_sorting_reference(k, seed):
    x = hard_rows(seed, k)
    expected = rowwise(sparsemax_sort_reference, x)
    torch.testing.assert_close(sparsemax(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 5, 17, 300])
def test_sparsemax_by_sorting_is_sparsemax_with_the_same_gradient(k):
    # the fixed-shape variant (threshold by sorting whole rows, dense backward)
    x = hard_rows(4, k).requires_grad_()
    y = sparsemax_module.sparsemax_by_sorting(x)
    torch.testing.assert_close(y, rowwise(sparsemax_sort_reference, x.detach()), rtol=0,
                               atol=1e-12)
    v = torch.randn_like(y)
    (got,) = torch.autograd.grad(y, x, v)
    (expected,) = torch.autograd.grad(sparsemax(x), x, v)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    z = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda t: sparsemax_module.sparsemax_by_sorting(t, dim=1), (z,))


def test_sparsemax_matches_entmax_package():
    x = torch.randn(40, 50, dtype=torch.float64) * 2
    torch.testing.assert_close(sparsemax(x), entmax.sparsemax(x, dim=-1), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("scale", "sparse_path"), [(3.0, True), (0.01, False)], ids=["sparse", "dense"]
)
@pytest.mark.parametrize("k", [200, 1000], ids=["entrywise", "blocks"])
def test_both_search_paths_are_exact(scale, sparse_path, k):
    # Peaked rows go through the short candidate list (found entry by entry on short rows, via
    # block maxima from 512 entries), flat rows through the full-row fallback.
    x = torch.randn(30, k, dtype=torch.float64) * scale
    row_max = x.amax(1)
    _, flat, _, sizes = sparsemax_module._support(x, row_max)
    assert (flat is not None) == sparse_path
    torch.testing.assert_close(
        sparsemax(x), rowwise(sparsemax_sort_reference, x), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(sizes, (sparsemax(x) > 0).sum(1).double())


def test_threshold_and_support_size():
    x = hard_rows(3, 9)
    tau, size = sparsemax_threshold(x)
    p = sparsemax(x)
    torch.testing.assert_close(p, (x - tau).clamp_min(0), rtol=0, atol=1e-9)
    assert torch.equal(size.squeeze(-1), (p > 0).sum(-1))
    assert tau.shape == (x.shape[0], 1) and size.dtype == torch.int64


@pytest.mark.parametrize("scale", [3.0, 0.02], ids=["sparse", "dense"])
def test_gradcheck_and_gradgradcheck(scale):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 3, 40, generator=g, dtype=torch.float64) * scale).requires_grad_()
    assert gradcheck(lambda t: sparsemax(t, dim=1), (x,), fast_mode=True)
    assert gradgradcheck(lambda t: sparsemax(t, dim=-1), (x,), fast_mode=True)


def test_backward_matches_closed_form_jacobian():
    x = torch.randn(6, dtype=torch.float64) * 2
    p = sparsemax(x)
    s = (p > 0).double()
    expected = torch.diag(s) - torch.outer(s, s) / s.sum()
    torch.testing.assert_close(torch.func.jacrev(sparsemax)(x), expected)
    v = torch.randn(6, dtype=torch.float64)
    _, jv = torch.func.jvp(sparsemax, (x,), (v,))
    torch.testing.assert_close(jv, expected @ v)


@given(rows_strategy, st.floats(-100, 100))
def test_properties_simplex_shift_invariance_support(row, c):
    x = torch.tensor(row, dtype=torch.float64)
    p = sparsemax(x)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(sparsemax(x + c), p, rtol=0, atol=1e-10)
    tau, size = sparsemax_threshold(x)
    assert int(size) == int((p > 0).sum())
    # tau = max + (threshold of the shifted row) is rounded once more than p itself, so an entry
    # within an ulp of tau may sit on either side: compare the support away from that band
    clear = (x - tau).abs() > 1e-12 * max(1.0, float(tau.abs()))
    assert torch.equal((p > 0)[clear], (x > tau)[clear])


@given(rows_strategy, st.randoms(use_true_random=False))
def test_permutation_equivariance_and_symmetric_jacobian(row, rnd):
    x = torch.tensor(row, dtype=torch.float64)
    perm = list(range(len(row)))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    torch.testing.assert_close(sparsemax(x[perm]), sparsemax(x)[perm], rtol=0, atol=1e-12)
    jac = torch.func.jacrev(sparsemax)(x)
    torch.testing.assert_close(jac, jac.T)
    torch.testing.assert_close(jac.sum(0), torch.zeros_like(x))


def test_bad_dim_raises():
    with pytest.raises(ValueError, match="dim=3"):
        sparsemax(torch.randn(2, 3), dim=3)
    with pytest.raises(ValueError, match="at least one entry"):
        sparsemax_threshold(torch.randn(2, 0))
    assert sparsemax(torch.randn(2, 0)).shape == (2, 0)
    assert sparsemax_threshold(torch.randn(0, 4))[0].shape == (0, 1)


@pytest.mark.parametrize("k", [5000, 4099], ids=["divisible", "prime"])
@pytest.mark.parametrize("flat_row", [False, True], ids=["blocked", "blocked-fallback"])
def test_long_rows_are_exact_through_the_blocked_candidate_search(flat_row, k):
    # Long rows go through block maxima (blocks of 32: K mod 32 tail columns); flat rows make
    # too many blocks qualify and the search falls back to full rows (dense). sparsemax itself
    # blocks 5000 by 25 (no tail) and the prime 4099 by 32 (3 tail columns).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, k, generator=g, dtype=torch.float64) * 3
    x[2, ::3] = float("-inf")
    x[3, k - 5 :] += 20.0  # the winners sit in the tail columns
    if flat_row:  # two flat rows of eight: a quarter of all entries are candidates
        x[1] *= 1e-3
        x[5] *= 1e-3
    row_max = x.amax(1)
    blocked = support_module._blocked_candidates(x, row_max, 1.0, 32, None)
    assert (blocked is None) == flat_row
    torch.testing.assert_close(
        sparsemax(x), rowwise(sparsemax_sort_reference, x), rtol=0, atol=1e-12
    )
    assert (sparsemax_module._support(x, row_max)[1] is None) == flat_row
    x.requires_grad_()
    v = torch.randn(8, k, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((sparsemax(x) * v).sum(), x)
    p = sparsemax(x.detach())
    s = (p > 0).double()
    expected = s * (v - (s * v).sum(-1, keepdim=True) / s.sum(-1, keepdim=True))
    torch.testing.assert_close(grad, expected)
