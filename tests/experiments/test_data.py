"""Data readers: IDX against the real MNIST, checksums, missing files, Omniglot split, digits."""

from __future__ import annotations

import gzip
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch

from latentgrad.experiments.data.digits import load_digits
from latentgrad.experiments.data.files import (
    DataError,
    dataset_dir,
    verify_checksum,
    verify_checksums,
)
from latentgrad.experiments.data.idx import load_idx_dataset, read_idx
from latentgrad.experiments.data.omniglot import load_omniglot


def write_idx(path: Path, data: torch.Tensor) -> None:
    header = bytes([0, 0, 0x08, data.dim()]) + struct.pack(f">{data.dim()}i", *data.shape)
    payload = header + data.to(torch.uint8).numpy().tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_read_idx_roundtrips_a_written_file(tmp_path: Path, name: str) -> None:
    data = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    write_idx(tmp_path / name, data)
    assert torch.equal(read_idx(tmp_path / name), data)


def test_read_idx_rejects_bad_magic_and_truncated_data(tmp_path: Path) -> None:
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x08\x01" + struct.pack(">i", 3) + b"abc")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">i", 5) + b"abc")
    with pytest.raises(ValueError, match="announces shape"):
        read_idx(tmp_path / "short.idx")


def test_idx_reader_matches_real_mnist_shapes_and_label_counts(mnist_dir: Path) -> None:
    xtr, ytr = load_idx_dataset("mnist", "train", mnist_dir)
    xte, yte = load_idx_dataset("mnist", "test", mnist_dir)
    assert xtr.shape == (60000, 28, 28) and xtr.dtype == torch.uint8
    assert xte.shape == (10000, 28, 28) and yte.shape == (10000,)
    counts = torch.bincount(ytr, minlength=10)
    assert counts[0] == 5923 and counts[1] == 6742 and counts.sum() == 60000
    assert torch.bincount(yte, minlength=10)[0] == 980
    assert int(xtr.max()) == 255 and int(xtr.min()) == 0


def _copy_mnist(src: Path, dst: Path) -> None:
    dst.mkdir()
    for f in src.iterdir():
        shutil.copy(f, dst / f.name)


def test_checksum_mismatch_names_the_file(mnist_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "mnist"
    _copy_mnist(mnist_dir, bad)
    sums = (bad / "SHA256SUMS").read_text().replace("1a1a05", "000000")
    (bad / "SHA256SUMS").write_text(sums)
    with pytest.raises(ValueError, match=r"checksum mismatch for .*t10k-images-idx3-ubyte\.gz"):
        load_idx_dataset("mnist", "test", bad)


def test_checksum_passes_without_sums_file_and_with_matching_sums(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"hello")
    verify_checksum(f)  # no SHA256SUMS: nothing to check
    digest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  x.bin\n")
    verify_checksum(f)
    f.write_bytes(b"hellO")
    with pytest.raises(ValueError, match="checksum mismatch"):
        verify_checksum(f)


def test_missing_file_error_names_expected_file_and_where(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\.gz.*LATENTGRAD_DATA"):
        load_idx_dataset("fashion_mnist", "train", tmp_path)


def test_dataset_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTGRAD_DATA", str(tmp_path))
    assert dataset_dir("mnist") == tmp_path / "mnist"
    assert dataset_dir("mnist", "/elsewhere") == Path("/elsewhere")
    monkeypatch.delenv("LATENTGRAD_DATA")
    assert dataset_dir("mnist") == Path("data") / "mnist"


def test_unknown_dataset_and_split_are_rejected() -> None:
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_idx_dataset("cifar", "train")
    with pytest.raises(ValueError, match="split must be"):
        load_idx_dataset("mnist", "valid")


def test_omniglot_reference_split_and_resize(tmp_path: Path) -> None:
    from matplotlib.image import imsave

    rng = torch.Generator().manual_seed(0)
    for subset, n_chars in (("images_background", 2), ("images_evaluation", 3)):
        for c in range(n_chars):
            folder = tmp_path / subset / "alphabet" / f"character{c:02d}"
            folder.mkdir(parents=True)
            for i in range(2):
                img = (torch.rand(105, 105, generator=rng) > 0.5).float()
                imsave(folder / f"{c:02d}_{i}.png", img.numpy(), cmap="gray", vmin=0, vmax=1)
    train, test = load_omniglot(tmp_path, size=28, eval_in_train=4)
    assert train.shape == (4 + 4, 28, 28) and test.shape == (2, 28, 28)
    assert train.min() >= 0 and train.max() <= 1
    with pytest.raises(DataError, match="not more than"):
        load_omniglot(tmp_path, eval_in_train=6)
    with pytest.raises(FileNotFoundError, match="images_background"):
        load_omniglot(tmp_path / "nothing")
    odd = tmp_path / "images_evaluation" / "alphabet" / "character02" / "02_1.png"
    imsave(odd, torch.zeros(50, 60).numpy(), cmap="gray", vmin=0, vmax=1)
    with pytest.raises(DataError, match=re.escape(f"{odd} is (50, 60) pixels")):
        load_omniglot(tmp_path, eval_in_train=4)
    odd.write_bytes(b"not a PNG")
    with pytest.raises(DataError, match=re.escape(f"cannot read the image {odd}")):
        load_omniglot(tmp_path, eval_in_train=4)


def test_digits_are_scaled_to_unit_interval() -> None:
    x, y = load_digits()
    assert x.shape == (1797, 8, 8) and y.shape == (1797,)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_read_idx_rejects_a_truncated_header(tmp_path: Path) -> None:
    """A header announcing more dimensions than the file holds raised struct.error."""
    (tmp_path / "hdr.idx").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(tmp_path / "hdr.idx")


@pytest.mark.parametrize(
    ("shape", "got"), [((8,), r"\(8,\)"), ((8, 14, 56), r"\(8, 14, 56\)")], ids=["1d", "14x56"]
)
def test_idx_images_of_another_shape_are_refused_naming_the_file(
    shape: tuple[int, ...], got: str, tmp_path: Path
) -> None:
    """Images that are not 28x28 (a labels file in their place: IndexError in the middle of the
    run; 14x56 bytes: silently trained on scrambled images) are refused when loaded."""
    from latentgrad.experiments.data.idx import IDX_FILES

    files = {"images": torch.zeros(shape, dtype=torch.uint8),
             "labels": torch.zeros(8, dtype=torch.uint8)}  # fmt: skip
    for part, data in files.items():
        header = bytes([0, 0, 0x08, data.dim()]) + struct.pack(f">{data.dim()}i", *data.shape)
        name = IDX_FILES[("test", part)]
        (tmp_path / name).write_bytes(gzip.compress(header + data.numpy().tobytes()))
    with pytest.raises(DataError, match=f"images must have shape \\(N, 28, 28\\), got {got}"):
        load_idx_dataset("mnist", "test", tmp_path)


def test_a_listops_file_that_is_not_text_is_named(tmp_path: Path) -> None:
    from latentgrad.experiments.data.listops import read_listops_tsv

    (tmp_path / "train.tsv").write_bytes(b"\x1f\x8b\x08\x00binary")
    with pytest.raises(DataError, match=r"train\.tsv is not a text file"):
        read_listops_tsv(tmp_path / "train.tsv", 12)


def test_sums_files_from_the_root_down_are_checked(tmp_path: Path) -> None:
    f = tmp_path / "a" / "b" / "x.bin"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"hello")
    digest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  ./a/b/x.bin\n")  # `find . | sha256sum`
    (tmp_path / "a" / "SHA256SUMS").write_text(f"{digest}  b/x.bin\n")
    verify_checksums([f], tmp_path)
    (tmp_path / "a" / "SHA256SUMS").write_text(f"{'0' * 64}  b/x.bin\n")
    with pytest.raises(DataError, match=f"checksum mismatch for {f}: .* {tmp_path / 'a'}/SHA256"):
        verify_checksums([f], tmp_path)
    verify_checksum(f)  # without a root only the SHA256SUMS beside the file counts


def test_omniglot_images_are_checked_against_sha256sums(tmp_path: Path) -> None:
    from matplotlib.image import imsave

    files = []
    for subset in ("images_background", "images_evaluation"):
        folder = tmp_path / subset / "alphabet" / "character00"
        folder.mkdir(parents=True)
        for i in range(2):
            files.append(folder / f"00_{i}.png")
            imsave(files[-1], torch.eye(105).numpy() * (i + 1) / 2, cmap="gray", vmin=0, vmax=1)
    (tmp_path / "SHA256SUMS").write_text(
        f"{'0' * 64}  images_evaluation/alphabet/character00/00_1.png\n"
    )
    with pytest.raises(DataError, match=f"checksum mismatch for {files[-1]}"):
        load_omniglot(tmp_path, eval_in_train=1)
