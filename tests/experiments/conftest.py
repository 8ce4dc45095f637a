"""Shared fixtures: the real MNIST folder (tests that need it skip when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CANDIDATES = [os.environ.get("LATENTGRAD_DATA", "")]


def _mnist_dir() -> Path | None:
    for root in CANDIDATES:
        if root and (Path(root) / "mnist" / "train-images-idx3-ubyte.gz").is_file():
            return Path(root) / "mnist"
    return None


@pytest.fixture
def mnist_dir() -> Path:
    found = _mnist_dir()
    if found is None:
        pytest.skip("MNIST IDX files not found (set LATENTGRAD_DATA to a folder containing mnist/)")
    return found


@pytest.fixture
def data_env(mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """LATENTGRAD_DATA pointing at the real data, for CLI runs."""
    monkeypatch.setenv("LATENTGRAD_DATA", str(mnist_dir.parent))
    return mnist_dir
