"""The row-wise plumbing every threshold mapping shares (``_rowwise.map_rows``): any dim and
layout, empty and single-category rows, half precision computed in float32, ``-inf`` entries, and
the input errors — checked on sparsemax, entmax15 and entmax_bisect alike."""

from __future__ import annotations

import pytest
import torch

from latentgrad.mappings import entmax15, entmax_bisect, sparsemax

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _bisect(x, dim=-1):
    return entmax_bisect(x, 1.7, dim=dim)


MAPPINGS = pytest.mark.parametrize(
    "fn", [sparsemax, entmax15, _bisect], ids=["sparsemax", "entmax15", "bisect"]
)


@MAPPINGS
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_any_dim_and_non_contiguous(fn, device, dim):
    x = torch.randn(5, 6, 7, dtype=torch.float64, device=device) * 2
    expected = fn(x.movedim(dim, -1).contiguous()).movedim(-1, dim)
    torch.testing.assert_close(fn(x, dim=dim), expected)
    xt = x.transpose(0, 2)  # non-contiguous view
    assert not xt.is_contiguous()
    torch.testing.assert_close(fn(xt, dim=dim), fn(xt.contiguous(), dim=dim))


@MAPPINGS
def test_empty_batch_and_single_category(fn):
    x = torch.randn(0, 5, requires_grad=True)
    y = fn(x)
    assert y.shape == (0, 5)
    y.sum().backward()
    x1 = torch.randn(4, 1, requires_grad=True)
    y1 = fn(x1)
    torch.testing.assert_close(y1, torch.ones(4, 1))
    y1.sum().backward()
    torch.testing.assert_close(x1.grad, torch.zeros(4, 1))


@MAPPINGS
@pytest.mark.parametrize("shape, dim", [((3, 0), -1), ((0, 0), 1), ((0, 4), 0)])
def test_rows_of_no_entries_are_refused(fn, shape, dim):
    # a row of no entries has no distribution (an empty batch of rows has none to give)
    with pytest.raises(ValueError, match=r"x must have at least one entry along dim="):
        fn(torch.zeros(shape), dim=dim)


@MAPPINGS
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_is_computed_in_float32(fn, dtype):
    x = torch.randn(8, 30) * 3
    x_low = x.to(dtype).requires_grad_()
    y = fn(x_low)
    assert y.dtype == dtype
    # computed in float32 and rounded once: exactly the float32 result cast to the dtype (a
    # native half-precision computation is off by a few ulps of the dtype)
    want = fn(x_low.detach().float()).to(dtype)
    torch.testing.assert_close(y, want, atol=0, rtol=0)
    y.backward(torch.randn_like(y))
    assert x_low.grad.dtype == dtype


@MAPPINGS
def test_neg_inf_entries_get_zero_and_zero_gradient(fn):
    x = torch.tensor([[0.5, float("-inf"), 0.2, float("-inf")]], requires_grad=True)
    p = fn(x)
    assert p[0, 1] == 0 and p[0, 3] == 0
    p.backward(torch.randn_like(p))
    assert torch.isfinite(x.grad).all() and x.grad[0, 1] == 0


@MAPPINGS
@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.tensor([[float("-inf")] * 3, [0.0, 1.0, 2.0]]), ValueError, "entirely -inf"),
        (torch.tensor([[0.0, float("nan")]]), ValueError, "NaN"),
        (torch.tensor([[0.0, float("inf")]]), ValueError, r"\+inf"),
        (torch.tensor([[1, 2]]), TypeError, "floating"),
        ([[0.0, 1.0]], TypeError, "torch.Tensor"),
        (torch.tensor(1.0), ValueError, "at least 1 dimension"),
    ],
)
def test_bad_input_raises(fn, x, error, match):
    with pytest.raises(error, match=match):
        fn(x)
