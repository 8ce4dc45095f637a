"""Config section shared by tasks that train on the first rows of a data set's fixed splits."""

from __future__ import annotations

from dataclasses import dataclass

from latentgrad.experiments.config import require


@dataclass
class SubsetConfig:
    """``path``: the data folder (default ``$LATENTGRAD_DATA/<name>``); ``n_train``/``n_test``:
    first rows of each split (null: all); loader batch sizes and workers."""

    path: str | None = None
    n_train: int | None = None
    n_test: int | None = None
    batch_size: int = 100
    eval_batch_size: int = 100
    num_workers: int = 0

    def validate(self) -> None:
        for key in ("n_train", "n_test"):
            value = getattr(self, key)
            require(value is None or value >= 1, key, f"must be null or >= 1, got {value}")
        for key in ("batch_size", "eval_batch_size"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
