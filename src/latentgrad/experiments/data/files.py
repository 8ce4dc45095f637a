"""Locating dataset files on disk and checking them against a ``SHA256SUMS`` file.

Nothing is downloaded. A dataset directory is, in order of precedence: the ``path`` given by the
caller (config key ``data.path``), ``$LATENTGRAD_DATA/<name>``, or ``./data/<name>``.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

DATA_ENV = "LATENTGRAD_DATA"

#: errnos of a path the user cannot write (read-only file system, no permission)
UNWRITABLE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)
SUMS_FILE = "SHA256SUMS"


class DataError(ValueError):
    """A data file that exists but cannot be used (corrupt, wrong checksum, wrong format); the
    message names the file and what to do."""


def dataset_dir(name: str, path: str | os.PathLike[str] | None = None) -> Path:
    """Folder of ``name``: ``path``, else ``$LATENTGRAD_DATA/<name>``, else ``data/<name>``."""
    if path is not None:
        return Path(path).expanduser()
    root = os.environ.get(DATA_ENV)
    if root:
        return Path(root).expanduser() / name
    return Path("data") / name


def require_file(directory: Path, filename: str, dataset: str, folder: str | None = None) -> Path:
    """``directory/filename``; a missing file raises FileNotFoundError saying where to put it
    (``folder``: the data set's sub-folder under ``$LATENTGRAD_DATA``, named in the message)."""
    file = directory / filename
    if not file.is_file():
        where = (f"which must contain a '{folder}' folder" if folder is not None
                 else "a folder with one sub-folder per data set")
        raise FileNotFoundError(
            f"{dataset}: expected file '{filename}' in {directory.resolve()} but it does not "
            f"exist. Put the {dataset} files there, or point to their folder with the config key "
            f"data.path=DIR or the environment variable {DATA_ENV} ({where}). "
            "Nothing is downloaded."
        )
    return file


def sha256(file: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_sums(directory: Path) -> dict[str, str]:
    """Parse ``directory/SHA256SUMS`` (``<hex>  <filename>`` per line); empty if there is none."""
    sums_path = directory / SUMS_FILE
    if not sums_path.is_file():
        return {}
    sums: dict[str, str] = {}
    for lineno, line in enumerate(sums_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataError(
                f"{sums_path}:{lineno}: expected '<sha256 hex>  <filename>', got {line!r}"
            )
        sums[parts[1].lstrip("*").removeprefix("./")] = parts[0].lower()
    return sums


def verify_checksums(files: Iterable[Path], root: Path | None = None) -> None:
    """Check each file against every ``SHA256SUMS`` that lists it: the one beside it and, with
    ``root`` (a folder above the files), those in the folders from ``root`` down, which list it by
    its path relative to themselves. A mismatch raises DataError naming the file."""
    sums: dict[Path, dict[str, str]] = {}
    for file in files:
        base = file.parent if root is None else root
        parts = file.relative_to(base).parts
        actual = None
        for depth in range(len(parts)):
            folder = base.joinpath(*parts[:depth])
            if folder not in sums:
                sums[folder] = read_sums(folder)
            expected = sums[folder].get("/".join(parts[depth:]))
            if expected is None:
                continue
            actual = actual or sha256(file)
            if actual != expected:
                raise DataError(
                    f"checksum mismatch for {file}: SHA-256 is {actual}, but {folder / SUMS_FILE} "
                    f"expects {expected}. The file is corrupt or not the expected one; replace it."
                )


def verify_checksum(file: Path, root: Path | None = None) -> None:
    """``verify_checksums([file], root)``."""
    verify_checksums([file], root)
