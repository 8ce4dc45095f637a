"""Images for the examples: MNIST from ``$LATENTGRAD_DATA/mnist`` when present, else the 8x8
digits bundled with scikit-learn (labelled as such), flattened and binarised at 0.5."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor


def binary_images(n: int, seed: int = 0) -> tuple[Tensor, str]:
    """-> (``n`` images ``(n, D)`` in {0, 1} float32, the data set's name)."""
    root = os.environ.get("LATENTGRAD_DATA")
    if root and (Path(root) / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        from latentgrad.experiments.data.idx import read_idx

        images = read_idx(Path(root) / "mnist" / "train-images-idx3-ubyte.gz").float() / 255
        name = "MNIST"
    else:
        from latentgrad.experiments.data.digits import load_digits

        images, _ = load_digits()
        name = "sklearn 8x8 digits (MNIST not found under $LATENTGRAD_DATA/mnist)"
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return (images[pick].flatten(1) > 0.5).float(), name
