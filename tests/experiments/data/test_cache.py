"""The on-disk cache of generated data sets: written once, reused, and never a reason to fail a
run when its folder cannot be written."""

from __future__ import annotations

import errno
import json
import os
import re

import numpy as np
import pytest

from latentgrad.experiments.data import cache
from latentgrad.experiments.data.cache import cache_paths, cached_arrays
from latentgrad.experiments.data.files import DataError, sha256


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


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        ("record not JSON", "json"),
        ("record a list", "json"),
        ("record not UTF-8", "json"),
        ("record other params", "npz"),
        ("data edited", "npz"),
        ("data not a zip, hash recorded", "npz"),
        ("record missing", "npz"),
        ("data missing", "json"),
    ],
)
def test_a_damaged_cache_is_a_data_error_naming_the_file(tmp_path, damage, named) -> None:
    cached_arrays(tmp_path, "toy", {"seed": 1}, _generate)
    data_path, record_path = cache_paths(tmp_path, "toy")
    record = json.loads(record_path.read_text())
    if damage == "record not JSON":
        record_path.write_text("{")
    elif damage == "record a list":
        record_path.write_text("[]")
    elif damage == "record not UTF-8":
        record_path.write_bytes(b"\xff\xfe")
    elif damage == "record other params":
        record_path.write_text(json.dumps({**record, "params": {"seed": 2}}))
    elif damage == "data edited":
        data_path.write_bytes(data_path.read_bytes()[:-1])
    elif damage == "data not a zip, hash recorded":
        data_path.write_bytes(b"garbage")
        record_path.write_text(json.dumps({**record, "sha256": sha256(data_path)}))
    else:
        (record_path if damage == "record missing" else data_path).unlink()
    file = record_path if named == "json" else data_path
    with pytest.raises(DataError, match=re.escape(str(file))) as info:
        cached_arrays(tmp_path, "toy", {"seed": 1}, _generate)
    assert "delete" in str(info.value)
