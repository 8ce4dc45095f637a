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


def test_a_seeded_generator_gives_the_batches_of_the_loader_shuffled_by_it() -> None:
    """``generator=``: the per-example ``DataLoader(shuffle=True, generator=...)``'s batches,
    whatever torch's global RNG holds."""
    reference = passes(DataLoader(DATA, batch_size=4, shuffle=True,
                                  generator=torch.Generator().manual_seed(3)))  # fmt: skip
    got = passes(batched_loader(DATA, 4, True, generator=torch.Generator().manual_seed(3)))
    assert_same(got, reference)


def test_a_resumed_pass_replays_the_generator_of_a_batched_loader() -> None:
    """The resumable loader finds the generator under the batch sampler and replays it: a loader
    restored mid-run yields the batches of the uninterrupted one (as the per-example loader)."""
    def make(batched: bool) -> ResumableLoader:
        gen = torch.Generator().manual_seed(3)
        inner = (batched_loader(DATA, 4, True, generator=gen) if batched
                 else DataLoader(DATA, batch_size=4, shuffle=True, generator=gen))
        return ResumableLoader(inner, (1, 0))

    full = passes(make(True), 3)
    assert_same(full, passes(make(False), 3))
    resumed = make(True)
    resumed.load_state_dict({"passes": 2, "position": 1})  # pass 1 after its first batch
    torch.manual_seed(5)
    tail = [list(batch) for _ in range(2) for batch in resumed]
    assert_same(tail, full[4:])
