"""``batched_loader`` yields the batches of the per-example ``DataLoader`` it replaces."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from latentgrad.experiments.data.batched import batched_loader
from latentgrad.experiments.resumable import ResumableLoader

DATA = TensorDataset(torch.randn(10, 3, generator=torch.Generator().manual_seed(0)),
                     torch.arange(10))  # fmt: skip


def passes(loader: object, n: int = 2) -> list[list[torch.Tensor]]:
    """``n`` passes, every batch as a list of tensors, drawn after seeding torch with 5."""
    torch.manual_seed(5)
    return [list(batch) for _ in range(n) for batch in loader]


def assert_same(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert len(x) == len(y) and all(torch.equal(u, v) for u, v in zip(x, y, strict=True))


@pytest.mark.parametrize("shuffle", [True, False])
def test_same_batches_in_the_same_order_as_the_per_example_loader(shuffle: bool) -> None:
    reference = passes(DataLoader(DATA, batch_size=4, shuffle=shuffle))
    got = passes(batched_loader(DATA, 4, shuffle))
    assert_same(got, reference)
    assert [len(b[1]) for b in got] == [4, 4, 2] * 2
    assert (got[0][1].tolist() != got[3][1].tolist()) == shuffle  # reshuffled every pass


def test_same_batches_through_the_resumable_loader() -> None:
    reference = passes(ResumableLoader(DataLoader(DATA, batch_size=4, shuffle=True), (1, 0)))
    got = passes(ResumableLoader(batched_loader(DATA, 4, shuffle=True), (1, 0)))
    assert_same(got, reference)
