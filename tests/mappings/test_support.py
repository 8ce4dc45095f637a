"""Candidate lists of the threshold mappings: block layout, block maxima, candidate screening."""

from __future__ import annotations

import pytest
import torch

from latentgrad.mappings import sparsemax
from latentgrad.mappings._support import (
    BLOCKED_FROM,
    LISTED_FROM,
    Maxima,
    block_layout,
    candidates,
    one_thread,
    row_maxima,
    scatter_rows,
)


@pytest.mark.parametrize("k", [512, 1000, 1024, 4099, 32000])
@pytest.mark.parametrize("spread", [2.0, 4.0])
def test_block_layout_covers_the_row_in_lane_multiples_or_divisors(k, spread):
    width, depth = block_layout(k, spread)
    assert depth >= 1 and (width % 32 == 0 or (k % width == 0 and width % 8 == 0))
    assert 0 <= k - width * depth < width  # the tail fits in one more entry per block


def test_block_layout_prefers_a_divisor_near_the_aim():
    assert block_layout(32000, 2.0) == (320, 100)  # aim 2 sqrt(32000) = 358: divisor 320
    assert block_layout(1000, 4.0) == (200, 5)  # a remainder of 8 lanes at 5 depths: no tail
    assert block_layout(1000, 2.0) == (64, 15)  # 40 would leave 8 lanes at 25 depths: a tail


@pytest.mark.parametrize("k", [BLOCKED_FROM - 1, 1000, 1024, 4099])
def test_row_maxima_are_the_row_maxima_and_the_blocks_hold_every_entry(k):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, k, generator=g, dtype=torch.float64)
    x[1, -3:] += 10.0  # a maximum in the tail columns
    x[2, ::2] = float("-inf")
    maxima = row_maxima(x, 2.0)
    assert torch.equal(maxima.rows, x.amax(1))
    if k < BLOCKED_FROM:
        assert maxima.blocks is None
        return
    width, _ = block_layout(k, 2.0)
    expected = torch.full((5, width), float("-inf"), dtype=x.dtype)
    for col in range(k):  # column c lies in block c mod width
        expected[:, col % width] = torch.maximum(expected[:, col % width], x[:, col])
    assert torch.equal(maxima.blocks, expected)


def test_row_maxima_propagate_nan_and_inf():
    x = torch.randn(3, 1000)
    x[0, 999] = float("nan")  # in the tail
    x[1, 3] = float("inf")
    x[2] = float("-inf")
    rows = row_maxima(x, 2.0).rows
    assert rows[0].isnan() and rows[1] == float("inf") and rows[2] == float("-inf")


def _listed(found):
    """Per row, the set of listed columns (padding dropped) and their values."""
    out = []
    for values, columns in zip(found.values, found.columns):
        keep = values > -10.0
        out.append(dict(zip(columns[keep].tolist(), values[keep].tolist())))
    return out


@pytest.mark.parametrize("k", [300, 1000, 1024, 4099])
@pytest.mark.parametrize("tightened", [False, True])
def test_candidates_list_every_entry_above_the_bound_with_its_shifted_value(k, tightened):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, k, generator=g, dtype=torch.float64) * 3
    x[3, k - 5 :] += 20.0  # the winners in the tail columns
    x[4, ::3] = float("-inf")
    x[5, :100] = 7.0 + 1e-3 * torch.randn(100, generator=g, dtype=torch.float64)  # many near max

    def tighten(z, bound):  # a valid higher bound: half way to the second largest block max
        return torch.maximum(z.topk(2, dim=1).values[:, 1:], torch.tensor(bound)) / 2

    maxima = row_maxima(x, 2.0)
    found = candidates(x, maxima, 1.0, -20.0, tighten if tightened else None)
    z = x - x.amax(1, keepdim=True)
    assert found.bound.shape == (7, 1) and bool((found.bound >= -1.0).all())
    for row, listed in enumerate(_listed(found)):
        must = (z[row] > found.bound[row]).nonzero().squeeze(1).tolist()
        assert set(must) <= set(listed)  # every entry above the bound, no duplicate column
        assert len(listed) == (found.values[row] > -20.0).sum()
        for col, value in listed.items():
            assert value == z[row, col] and value > -1.0 - 1e-12
    if not tightened:
        assert torch.equal(found.bound, torch.full((7, 1), -1.0, dtype=x.dtype))


@pytest.mark.parametrize("k", [300, 1000])
def test_candidates_give_up_when_the_lists_would_be_half_the_rows(k):
    x = torch.randn(4, k, dtype=torch.float64) * 1e-3  # every entry within 1 of the maximum
    assert candidates(x, row_maxima(x, 2.0), 1.0, -2.0) is None
    x[0] *= 1e6  # one peaked row: the padded width is still the flat rows' length
    assert candidates(x, row_maxima(x, 2.0), 1.0, -2.0) is None


def test_short_rows_are_not_listed():
    x = torch.full((3, LISTED_FROM), -5.0)
    x[:, 0] = 0.0  # one candidate per row
    assert candidates(x, row_maxima(x, 2.0), 1.0, -2.0) is not None
    assert candidates(x[:, 1:], row_maxima(x[:, 1:], 2.0), 1.0, -2.0) is None


def test_candidates_take_a_per_row_margin():
    x = torch.full((2, LISTED_FROM), -5.0)
    x[:, :3] = torch.tensor([0.0, -0.5, -1.5])
    found = candidates(x, Maxima(x.amax(1), None), torch.tensor([1.0, 2.0]), float("-inf"))
    assert [sorted(r) for r in _listed(found)] == [[0, 1], [0, 1, 2]]
    assert torch.equal(found.bound, torch.tensor([[-1.0], [-2.0]]))


def test_scatter_rows_adds_the_padding_zeros():
    values = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], requires_grad=True)
    columns = torch.tensor([[2, 0, 0], [1, 0, 0]])
    y = scatter_rows(values, columns, 4)
    assert torch.equal(y, torch.tensor([[0.5, 0.0, 0.5, 0.0], [0.0, 1.0, 0.0, 0.0]]))
    (grad,) = torch.autograd.grad(y, values, torch.arange(8.0).view(2, 4))
    assert torch.equal(grad, torch.tensor([[2.0, 0.0, 0.0], [5.0, 4.0, 4.0]]))


def test_one_thread_restores_the_thread_count_also_on_errors():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), one_thread():
            raise RuntimeError
        assert torch.get_num_threads() == 2
        x = torch.randn(64, 2000, dtype=torch.float64, requires_grad=True) * 3
        sparsemax(x).backward(torch.randn(64, 2000, dtype=torch.float64))  # the mappings use it
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
