"""IDX (optionally gzip) reader for MNIST and Fashion-MNIST, which share file names and format.

IDX: 2 zero bytes, a dtype byte (0x08 = uint8), the number of dimensions, then each dimension as
a big-endian int32, then the data in C order (LeCun et al., http://yann.lecun.com/exdb/mnist/).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from latentgrad.experiments.data.files import (
    DataError,
    dataset_dir,
    require_file,
    verify_checksum,
)

IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
IDX_DATASETS = ("mnist", "fashion_mnist")


def read_idx(file: str | os.PathLike[str]) -> Tensor:
    """Read one IDX file (gzip if named ``*.gz``) into a uint8 tensor of its stored shape."""
    file = Path(file)
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rb") as fh:
            raw = fh.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(
            f"{file} is not a valid gzip file ({err or 'truncated'}); replace it with an intact "
            "copy"
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{file} is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise DataError(
            f"{file}: only unsigned-byte IDX data (type 0x08) is supported, got 0x{raw[2]:02x}"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{file}: truncated IDX header ({len(raw)} bytes, {header} needed for {ndim} "
            "dimensions)"
        )
    shape = struct.unpack(f">{ndim}i", raw[4:header])
    if any(n < 0 for n in shape):
        raise DataError(f"{file}: IDX header announces a negative dimension, shape {shape}")
    count = 1
    for n in shape:
        count *= n
    if len(raw) - header != count:
        raise DataError(
            f"{file}: header announces shape {shape} ({count} bytes) but holds {len(raw) - header}"
        )
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


@lru_cache(maxsize=8)
def _load_split(directory: str, split: str, name: str) -> tuple[Tensor, Tensor]:
    directory_path = Path(directory)
    out = []
    for part in ("images", "labels"):
        file = require_file(directory_path, IDX_FILES[(split, part)], name, name)
        verify_checksum(file)
        out.append(read_idx(file))
    images, labels = out
    for part, tensor, wanted, shape in (("images", images, (28, 28), "(N, 28, 28)"),
                                        ("labels", labels, (), "(N,)")):
        if tensor.dim() != len(wanted) + 1 or tuple(tensor.shape[1:]) != wanted:
            raise DataError(
                f"{directory_path / IDX_FILES[(split, part)]}: {name} {part} must have shape "
                f"{shape}, got {tuple(tensor.shape)}; is it the right file?"
            )
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{name} {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels.long()


def load_idx_dataset(
    name: str, split: str, path: str | os.PathLike[str] | None = None
) -> tuple[Tensor, Tensor]:
    """MNIST-format ``split`` ('train' or 'test') -> (images (N, 28, 28) uint8, labels (N,) int64).

    Files are looked up by ``experiments.data.files.dataset_dir`` and checked against SHA256SUMS.
    Results are cached per process; treat them as read-only.
    """
    if name not in IDX_DATASETS:
        raise ValueError(f"dataset must be one of {IDX_DATASETS}, got {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = dataset_dir(name, path)
    return _load_split(str(directory.resolve()), split, name)
