"""Every finite input, up to the dtype's largest value, maps onto the simplex and equals the float64
mapping of the same input within the dtype's rounding; every row keeps at least one entry."""

from __future__ import annotations

import importlib

import pytest
import torch
from _mapping_refs import entmax_root_reference, rowwise, sparsemax_sort_reference
from hypothesis import given
from hypothesis import strategies as st

from latentgrad.mappings import entmax15, entmax_bisect, sparsemax, sparsemax_threshold
from latentgrad.mappings._support import row_maxima

sparsemax_module = importlib.import_module("latentgrad.mappings._sparsemax")

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
MAPPINGS = {
    "sparsemax": (sparsemax, sparsemax_sort_reference, ()),
    "entmax15": (entmax15, entmax_root_reference, (1.5,)),
    "bisect": (lambda x: entmax_bisect(x, 1.5), entmax_root_reference, (1.5,)),
    "bisect-1.2": (lambda x: entmax_bisect(x, 1.2), entmax_root_reference, (1.2,)),
}


def _tolerance(dtype: torch.dtype, k: int) -> float:
    """Output rounding (half an ulp of a value <= 1, i.e. eps) plus the threshold search in the
    working dtype (float32 at least): a sum over at most k shifted entries, a few ulps each."""
    work = torch.finfo(torch.promote_types(dtype, torch.float32)).eps
    return 2 * torch.finfo(dtype).eps + 8 * k * work


@st.composite
def extreme_rows(draw, dtype: torch.dtype) -> torch.Tensor:
    """(2, k) rows in ``dtype``: one spread over the whole finite range, one clustered within a
    few units (or ulps) of a centre anywhere in the range."""
    big = torch.finfo(dtype).max
    k = draw(st.integers(1, 8))
    wide = draw(st.lists(st.floats(-big, big), min_size=k, max_size=k))
    centre = draw(st.floats(-big, big))
    unit = draw(st.sampled_from([1.0, 0.25, abs(centre) * torch.finfo(dtype).eps]))
    offsets = draw(st.lists(st.integers(-12, 12), min_size=k, max_size=k))
    clustered = [centre + unit * o for o in offsets]
    x = torch.tensor([wide, clustered], dtype=torch.float64).clamp(-big, big)
    return x.to(dtype)


@pytest.mark.parametrize("name", list(MAPPINGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@given(data=st.data())
def test_finite_input_of_any_magnitude_gives_the_float64_mapping(name, dtype, data):
    fn, reference, args = MAPPINGS[name]
    x = data.draw(extreme_rows(dtype))
    p = fn(x)
    assert p.dtype == dtype and (p >= 0).all() and ((p > 0).sum(-1) >= 1).all()
    tol = _tolerance(dtype, x.shape[-1])
    expected = rowwise(reference, x.double(), *args)
    torch.testing.assert_close(p.double(), expected, rtol=0, atol=tol)
    torch.testing.assert_close(p.double().sum(-1), torch.ones(2, dtype=torch.float64), rtol=0,
                               atol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@given(data=st.data())
def test_threshold_is_finite_with_a_nonempty_support_at_any_magnitude(dtype, data):
    x = data.draw(extreme_rows(dtype))
    tau, size = sparsemax_threshold(x)
    assert torch.isfinite(tau).all()
    assert ((size >= 1) & (size <= x.shape[-1])).all()


@pytest.mark.parametrize("name", list(MAPPINGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_reported_huge_rows(name, dtype):
    # sparsemax([[1e8, 0]]) was [[0, 0]], entmax15 NaN; ties at 1e8 were wrong too.
    fn = MAPPINGS[name][0]
    big = torch.finfo(dtype).max
    for scale in (1e8, 1e16, 3e7, big):
        value = min(scale, big)
        x = torch.tensor([[value, 0.0], [value, value], [value, -value]], dtype=torch.float64)
        p = fn(x.to(dtype))
        expected = torch.tensor([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0]], dtype=dtype)
        torch.testing.assert_close(p, expected, rtol=0, atol=_tolerance(dtype, 2))


ALPHAS = {"sparsemax": 2.0, "entmax15": 1.5, "bisect": 1.5, "bisect-1.2": 1.2}


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_backward_at_two_tied_huge_scores_is_the_closed_form_jacobian(name):
    """Two entries tie at 1e30, the others lie 1e30 or more below: p = (1/2, 1/2, 0, ...) and,
    with g = p^(2 - alpha) on the support, J v = g (v - <g, v> / sum g) = c (v0 - v1) / 2 (1, -1,
    0, ...), c = (1/2)^(2 - alpha): not the zero gradient of a one-hot row."""
    fn = MAPPINGS[name][0]
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.full((4, 2), 1e30), -1e30 * (1 + torch.rand(4, 5, generator=g))], 1)
    x.requires_grad_()
    p = fn(x)
    torch.testing.assert_close(p[:, :2], torch.full((4, 2), 0.5), rtol=0, atol=1e-6)
    v = torch.randn(4, 7, generator=g)
    (grad,) = torch.autograd.grad((p * v).sum(), x)
    c = 0.5 ** (2.0 - ALPHAS[name])
    half_gap = c * (v[:, 0] - v[:, 1]) / 2
    want = torch.zeros(4, 7)
    want[:, 0], want[:, 1] = half_gap, -half_gap
    torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_backward_is_finite_at_huge_scores(name):
    fn = MAPPINGS[name][0]
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 7, generator=g) * 1e30).requires_grad_()
    p = fn(x)
    (grad,) = torch.autograd.grad((p * torch.randn(4, 7, generator=g)).sum(), x)
    assert torch.isfinite(grad).all()
    # J 1 = 0: moving every score alike changes nothing
    torch.testing.assert_close(grad.sum(-1), torch.zeros(4), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(MAPPINGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("k", [100, 1000], ids=["listed", "blocks"])
def test_long_rows_of_any_magnitude_through_the_candidate_lists(name, dtype, k):
    # Rows long enough for the candidate lists (and, from 512, the block screening): clustered
    # a few units or ulps around huge centres, peaked rows at huge offsets, and a row spread over
    # the whole range.
    fn, reference, args = MAPPINGS[name]
    big = torch.finfo(dtype).max
    g = torch.Generator().manual_seed(k)
    offsets = torch.randint(-12, 13, (k,), generator=g).double()
    rows = [1e20 + offsets, -1e30 + 0.25 * offsets, float(big) * (1 - 1e-6 * offsets)]
    rows += [c + 3 * torch.randn(k, generator=g, dtype=torch.float64) for c in (1e6, -3e7)]
    rows.append((torch.rand(k, generator=g, dtype=torch.float64) * 2 - 1) * float(big))
    for row in rows:  # one at a time: a flat row sends its whole batch to the dense path
        x = row.clamp(-float(big), float(big)).to(dtype).unsqueeze(0)
        p = fn(x)
        assert (p >= 0).all() and (p > 0).sum() >= 1
        expected = rowwise(reference, x.double(), *args)
        torch.testing.assert_close(p.double(), expected, rtol=0, atol=_tolerance(dtype, k))
    peaked = torch.stack(rows[3:]).to(dtype)  # these went through the candidate lists
    _, found = sparsemax_module._solve(peaked, row_maxima(peaked, sparsemax_module._SPREAD))
    assert found is not None
