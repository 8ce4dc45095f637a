"""Omniglot from the user's files (Lake et al. 2015), with the IGR reference split and resizing.

Expected layout (the official archives, unzipped): ``<dir>/images_background/<alphabet>/<character>/
*.png`` and ``<dir>/images_evaluation/...``, 105x105 images. Reference protocol (Potapczynski et al.
2020): pixels / 255, rounded, resized to 28x28 bilinearly; train = all of the background set plus
the first 5,065 evaluation images (sorted path order), test = the remaining evaluation images.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.image import imread
from torch import Tensor

from latentgrad.experiments.data.files import DataError, dataset_dir, verify_checksums

OMNIGLOT_SETS = ("images_background", "images_evaluation")
EVAL_IMAGES_IN_TRAIN = 5065


def _read_set(root: Path, directory: Path) -> Tensor:
    """The PNG images under ``root``, checked against the ``SHA256SUMS`` files in ``directory``
    (the data folder above ``root``) and below it."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"omniglot: expected folder '{root.name}' at {root.resolve()} "
            "(the unzipped official archive); "
            "set data.path or LATENTGRAD_DATA. Nothing is downloaded."
        )
    files = sorted(root.glob("*/*/*.png"))
    if not files:
        raise FileNotFoundError(
            f"omniglot: no PNG images found under {root.resolve()}/<alphabet>/<character>/"
        )
    verify_checksums(files, directory)
    images = []
    for file in files:
        try:
            img = torch.as_tensor(imread(file), dtype=torch.float32)
        except (OSError, ValueError, SyntaxError) as err:  # what PIL raises on a damaged PNG
            raise DataError(f"omniglot: cannot read the image {file} ({err})") from None
        if img.dim() == 3:  # RGB(A): keep the first channel
            img = img[..., 0]
        if images and img.shape != images[0].shape:
            raise DataError(f"omniglot: {file} is {tuple(img.shape)} pixels, the images before "
                            f"it {tuple(images[0].shape)}")
        if img.max() > 1.0:  # 8-bit values
            img = img / 255.0
        images.append(img.round())
    return torch.stack(images)


def load_omniglot(
    path: str | os.PathLike[str] | None = None,
    size: int = 28,
    eval_in_train: int = EVAL_IMAGES_IN_TRAIN,
) -> tuple[Tensor, Tensor]:
    """Omniglot -> (train (N_background + eval_in_train, size, size), test (rest, size, size)).

    float32 in [0, 1]; with the official archives and the defaults, 24,345 train images.
    """
    directory = dataset_dir("omniglot", path)
    background, evaluation = (_read_set(directory / name, directory) for name in OMNIGLOT_SETS)
    if evaluation.shape[0] <= eval_in_train:
        raise DataError(
            f"omniglot: the evaluation set holds {evaluation.shape[0]} images, not more than the "
            f"{eval_in_train} the reference split moves into training"
        )
    train = torch.cat([background, evaluation[:eval_in_train]])
    test = evaluation[eval_in_train:]

    def resize(x: Tensor) -> Tensor:
        return F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)[
            :, 0
        ]

    return resize(train), resize(test)
