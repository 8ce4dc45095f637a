"""MNIST-format image splits for the VAE tasks: train = the first ``n_train`` images of the
training file, validation = the next ``n_validation``, test = the test file (its first ``n_test``).

Batches are ``(images,)`` with images ``(B, 784)`` uint8 (raw bytes); each task turns them into
its inputs (pixel / 255, byte targets, or binarised pixels). With ``eval_binarize_seed`` set, the
validation and test images are binarised once (``binarize``, that seed) and stored as 0 / 255, so
``binarize`` of them is the same fixed image at every evaluation while training images are
binarised afresh at every draw.

``dataset``: ``fashion_mnist``, ``mnist``, or ``auto`` (the default): Fashion-MNIST when its files
are found (``data.path`` or ``$LATENTGRAD_DATA/fashion_mnist``), otherwise MNIST standing in for
it, reported as ``mnist-substitute`` (``dataset_label``).
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from latentgrad.experiments.config import require
from latentgrad.experiments.data.batched import batched_loader
from latentgrad.experiments.data.files import dataset_dir
from latentgrad.experiments.data.idx import IDX_FILES, load_idx_dataset

DATASETS = ("auto", "fashion_mnist", "mnist")
TRAIN_IMAGES = 60000
TEST_IMAGES = 10000  # MNIST and Fashion-MNIST alike


@dataclass
class ImageDataConfig:
    """Splits and loaders (module docstring). ``path``: the folder of the IDX files (for
    ``auto``: of Fashion-MNIST; MNIST is then looked up in its default place)."""

    dataset: str = "auto"
    path: str | None = None
    n_train: int = 55000
    n_validation: int = 5000
    n_test: int | None = None
    batch_size: int = 64
    eval_batch_size: int = 100
    eval_binarize_seed: int | None = None
    num_workers: int = 0

    def validate(self) -> None:
        require(self.dataset in DATASETS, "dataset", f"must be one of {DATASETS}, got "
                f"{self.dataset!r}")
        for key in ("n_train", "n_validation", "batch_size", "eval_batch_size"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.n_test is None or 1 <= self.n_test <= TEST_IMAGES, "n_test",
                f"must be null or in [1, {TEST_IMAGES}] (the test images), got {self.n_test}")
        require(self.num_workers >= 0, "num_workers", "must be >= 0")
        require(
            self.n_train + self.n_validation <= TRAIN_IMAGES,
            "n_train",
            f"n_train + n_validation = {self.n_train + self.n_validation} exceeds the "
            f"{TRAIN_IMAGES} training images",
        )


def resolve_dataset(name: str, path: str | None) -> tuple[str, str | None, str]:
    """``(dataset to load, its path, label to report)`` for the configured ``name``."""
    if name != "auto":
        return name, path, name
    fashion = dataset_dir("fashion_mnist", path)
    if (fashion / IDX_FILES[("train", "images")]).is_file():
        return "fashion_mnist", path, "fashion_mnist"
    return "mnist", None, "mnist-substitute"


class ImageSplits(L.LightningDataModule):
    """Train / validation / test image splits as uint8 ``(N, 784)`` tensors."""

    def __init__(self, cfg: ImageDataConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train"):
            return
        cfg = self.cfg
        name, path, self.dataset_label = resolve_dataset(cfg.dataset, cfg.path)
        xtr, _ = load_idx_dataset(name, "train", path)
        xte, _ = load_idx_dataset(name, "test", path)
        xtr, xte = xtr.flatten(1), xte.flatten(1)
        end = cfg.n_train + cfg.n_validation
        validation, test = xtr[cfg.n_train : end], xte if cfg.n_test is None else xte[: cfg.n_test]
        if cfg.eval_binarize_seed is not None:
            gen = torch.Generator().manual_seed(cfg.eval_binarize_seed)
            validation, test = (
                (binarize(x, gen) * 255).to(torch.uint8) for x in (validation, test)
            )
        self.train = TensorDataset(xtr[: cfg.n_train])
        self.validation = TensorDataset(validation)
        self.test = TensorDataset(test)
        self.input_dim = xtr.shape[1]

    def images(self, split: str) -> Tensor:
        """All images of ``split`` (``train``, ``validation`` or ``test``), ``(N, 784)`` uint8."""
        return getattr(self, split).tensors[0]

    def _loader(self, dataset: TensorDataset, shuffle: bool, batch_size: int) -> DataLoader:
        return batched_loader(dataset, batch_size, shuffle, self.cfg.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, True, self.cfg.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.validation, False, self.cfg.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test, False, self.cfg.eval_batch_size)


def binarize(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Bernoulli binarisation ``1[u < pixel / 255]``, ``u ~ U(0, 1)``: uint8 -> float {0, 1}."""
    return torch.bernoulli(images.float() / 255.0, generator=generator)
