"""sparsemax: exact vs a sorting reference; closed-form backward; properties; dtypes; errors."""

from __future__ import annotations

import importlib

import entmax
import pytest
import torch
from _mapping_refs import entmax_root_reference, hard_rows, rowwise, sparsemax_sort_reference
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

from latentgrad.mappings import entmax15, sparsemax, sparsemax_threshold
from latentgrad.mappings._support import row_maxima

# the package re-exports the function under the module's name: fetch the module itself
sparsemax_module = importlib.import_module("latentgrad.mappings._sparsemax")
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
    # Peaked rows go through the short candidate lists (found entry by entry on short rows, via
    # block maxima from 512 entries), flat rows through the full-row fallback.
    x = torch.randn(30, k, dtype=torch.float64) * scale
    _, found = sparsemax_module._solve(x, row_maxima(x, sparsemax_module._SPREAD))
    assert (found is not None) == sparse_path
    torch.testing.assert_close(
        sparsemax(x), rowwise(sparsemax_sort_reference, x), rtol=0, atol=1e-12
    )
    _, size = sparsemax_threshold(x)
    torch.testing.assert_close(size.squeeze(1), (sparsemax(x) > 0).sum(1))


@settings(max_examples=25, deadline=None)
@given(k=st.integers(512, 3000), scale=st.sampled_from([0.5, 3.0, 30.0]), seed=st.integers(0, 99))
def test_block_screened_candidates_are_exact_at_any_row_length(k, scale, seed):
    """Rows long enough for the block screening, of every length (blocks with and without a
    tail column): sparsemax and entmax15 against the sorting / root-finding references and their
    backward against the closed-form Jacobian applied to a cotangent."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, k, generator=gen, dtype=torch.float64) * scale
    torch.testing.assert_close(sparsemax(x), rowwise(sparsemax_sort_reference, x), rtol=0,
                               atol=1e-12)  # fmt: skip
    torch.testing.assert_close(entmax15(x), rowwise(entmax_root_reference, x, 1.5), rtol=0,
                               atol=1e-10)  # fmt: skip
    v = torch.randn(3, k, generator=gen, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    p = sparsemax(xr)
    (grad,) = torch.autograd.grad((p * v).sum(), xr)
    s = (p.detach() > 0).double()
    want = s * (v - (s * v).sum(-1, keepdim=True) / s.sum(-1, keepdim=True))
    torch.testing.assert_close(grad, want, rtol=0, atol=1e-12)


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
    with pytest.raises(ValueError, match="at least one entry"):
        sparsemax(torch.randn(2, 0))
    assert sparsemax_threshold(torch.randn(0, 4))[0].shape == (0, 1)


def _peaked_rows(k, seed=0):
    """Float64 rows (8, k) for the candidate search: peaked, -inf entries, winners in the tail
    columns, a row with 180 entries near its maximum, all in the support (a wide list)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, k, generator=g, dtype=torch.float64) * 3
    x[2, ::3] = float("-inf")
    x[3, k - 5 :] += 20.0  # the winners sit in the tail columns
    x[6, :180] = 20.0 + 1e-3 * torch.randn(180, generator=g, dtype=torch.float64)
    return x


def _sparsemax_grad(x, v):
    p = sparsemax(x.detach())
    s = (p > 0).double()
    return s * (v - (s * v).sum(-1, keepdim=True) / s.sum(-1, keepdim=True))


@pytest.mark.parametrize("k", [400, 1000, 1024, 4099], ids=["short", "tail", "divisor", "prime"])
@pytest.mark.parametrize("wide", [False, True], ids=["sorted", "michelot"])
def test_candidate_lists_sorted_or_iterated_are_exact_with_exact_gradients(k, wide):
    # Candidate lists up to _SORTED_UP_TO long are sorted, longer ones go through Michelot's
    # iteration from the screening bound; long rows are screened by block maxima (1000 leaves
    # tail columns, 1024 is a multiple of the block count, 4099 is prime).
    x = _peaked_rows(k)
    if not wide:
        x[6] = x[0]
    _, found = sparsemax_module._solve(x, row_maxima(x, sparsemax_module._SPREAD))
    assert found is not None
    assert (found.values.shape[1] > sparsemax_module._SORTED_UP_TO) == wide
    torch.testing.assert_close(
        sparsemax(x), rowwise(sparsemax_sort_reference, x), rtol=0, atol=1e-12
    )
    v = torch.randn(8, k, dtype=torch.float64)
    x.requires_grad_()
    (grad,) = torch.autograd.grad(sparsemax(x), x, v)
    torch.testing.assert_close(grad, _sparsemax_grad(x, v))
    _, jv = torch.func.jvp(sparsemax, (x.detach(),), (v,))
    torch.testing.assert_close(jv, _sparsemax_grad(x, v))


@pytest.mark.parametrize("k", [1000, 4099])
def test_long_flat_rows_fall_back_to_the_dense_path(k):
    x = _peaked_rows(k)
    x[1] *= 1e-4  # a flat row: its candidate list is the whole row
    _, found = sparsemax_module._solve(x, row_maxima(x, sparsemax_module._SPREAD))
    assert found is None
    torch.testing.assert_close(
        sparsemax(x), rowwise(sparsemax_sort_reference, x), rtol=0, atol=1e-12
    )
    x.requires_grad_()
    v = torch.randn(8, k, dtype=torch.float64)
    (grad,) = torch.autograd.grad(sparsemax(x), x, v)
    torch.testing.assert_close(grad, _sparsemax_grad(x, v))


@pytest.mark.parametrize("k", [600, 1000])
def test_gradcheck_through_the_blocked_search(k):
    x = _peaked_rows(k)[[0, 3, 6]].requires_grad_()
    assert gradcheck(sparsemax, (x,), fast_mode=True)
    assert gradgradcheck(sparsemax, (x,), fast_mode=True)


@pytest.mark.parametrize("k", [1000, 4096])
def test_float32_dense_rows_sum_to_one_within_the_summation_bound(k):
    """Rows near-constant (three entries raised by up to 0.3): the support is almost the whole
    row. The threshold's last Michelot update summed gaps to a lower iterate (up to 0.3 each),
    and the rounding of that sum put ``sum p`` off by up to 13,845 eps at K = 4096. Bound: the
    final correction sums K gaps of the output itself, so ``|sum p - 1| <= K eps``."""
    g = torch.Generator().manual_seed(0)
    eps = torch.finfo(torch.float32).eps
    for noise in (0.0, 1e-4, 2e-4):
        x = torch.zeros(8, k).scatter_(
            1, torch.randint(0, k, (8, 3), generator=g), torch.rand(8, 3, generator=g) * 0.3 + 1e-5)
        x += noise * torch.randn(8, k, generator=g)
        p = sparsemax(x, dim=-1)
        assert float((p.double().sum(-1) - 1).abs().max()) <= k * eps
