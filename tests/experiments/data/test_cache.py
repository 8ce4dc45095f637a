"""The on-disk cache of generated data sets: written once, reused, and never a reason to fail a
run when its folder cannot be written."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from latentgrad.experiments.data import cache
from latentgrad.experiments.data.cache import cache_paths, cached_arrays


def _generate() -> dict[str, np.ndarray]:
    return {"x": np.arange(6.0).reshape(2, 3)}


def test_generated_once_then_loaded(tmp_path) -> None:
    first = cached_arrays(tmp_path, "toy", {"seed": 1}, _generate)
    assert all(p.exists() for p in cache_paths(tmp_path, "toy"))

    def fail() -> dict[str, np.ndarray]:
        raise AssertionError("the cache should have been reused")

    np.testing.assert_array_equal(cached_arrays(tmp_path, "toy", {"seed": 1}, fail)["x"],
                                  first["x"])


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EROFS])
@pytest.mark.parametrize("failing", ["atomic_write_bytes", "atomic_write_text"])
def test_unwritable_folder_returns_the_data_uncached_with_a_warning(tmp_path, monkeypatch, code,
                                                                    failing) -> None:
    def refuse(data, path) -> None:
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(cache, failing, refuse)  # text: the data file is written, its record not
    with pytest.warns(UserWarning, match=f"cannot cache the generated data set toy in {tmp_path}"):
        arrays = cached_arrays(tmp_path, "toy", {"seed": 1}, _generate)
    np.testing.assert_array_equal(arrays["x"], _generate()["x"])
    assert not any(p.exists() for p in cache_paths(tmp_path, "toy"))  # no half-written cache


def test_other_write_errors_propagate(tmp_path, monkeypatch) -> None:
    def full(data, path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(cache, "atomic_write_bytes", full)
    with pytest.raises(OSError, match="No space"):
        cached_arrays(tmp_path, "toy", {"seed": 1}, _generate)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="file permissions do not bind root")
def test_read_only_folder(tmp_path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.warns(UserWarning, match="cannot cache"):
            arrays = cached_arrays(folder, "toy", {"seed": 1}, _generate)
    finally:
        folder.chmod(0o755)
    assert arrays["x"].shape == (2, 3)
    assert list(folder.iterdir()) == []
