"""A ``LightningDataModule`` over in-memory train/valid/test ``TensorDataset`` splits."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from latentgrad.experiments.data.batched import batched_loader


class TensorSplits(L.LightningDataModule):
    """Splits ``train``, ``valid`` and ``test`` built once by ``load()`` (a subclass's job) into
    ``self.sets``; batches of ``cfg.batch_size`` (``batched_loader``: one indexing per tensor and
    batch), the training ones shuffled by a generator seeded with the run ``seed`` (the same
    order on every run with that seed)."""

    def __init__(self, cfg, seed: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = seed

    def load(self) -> dict[str, TensorDataset]:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if not hasattr(self, "sets"):
            self.sets = self.load()

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        return batched_loader(self.sets["train"], self.cfg.batch_size, True, generator=gen)

    def val_dataloader(self) -> DataLoader:
        return batched_loader(self.sets["valid"], self.cfg.batch_size)

    def test_dataloader(self) -> DataLoader:
        return batched_loader(self.sets["test"], self.cfg.batch_size)
