"""Generated data sets cached on disk, verified on every load.

``cached_arrays(directory, name, params, generate)`` returns ``generate()`` (a dict of numpy
arrays) the first time and writes it to ``directory/<name>.npz`` (atomically) beside
``directory/<name>.json``, which records the generator parameters and the file's SHA-256. Later
calls with the same parameters load the ``.npz`` after checking its SHA-256. A file whose hash
differs (truncated, edited, bit rot), a damaged record or data file, a record made with other
parameters, or one file without its partner raises ``DataError`` naming the file (delete the
files, or use another folder, to regenerate). Nothing is ever silently regenerated over existing
files. A folder the user cannot write (read-only data folder, no permission) does not stop the
run: the generated arrays are returned uncached, with a warning that names the folder (the next
run generates them again).
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from latentgrad.experiments.checkpoint import atomic_write_bytes, atomic_write_text
from latentgrad.experiments.data.files import UNWRITABLE_ERRNOS, DataError, sha256


def cache_paths(directory: str | Path, name: str) -> tuple[Path, Path]:
    """``(data file, record file)`` of the cached set ``name`` in ``directory``."""
    directory = Path(directory)
    return directory / f"{name}.npz", directory / f"{name}.json"


def _load(data_path: Path, record_path: Path, params: dict[str, Any]) -> dict[str, np.ndarray]:
    try:
        record = json.loads(record_path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:  # not UTF-8, not JSON, or not a mapping
        raise DataError(
            f"the cache record {record_path} is damaged ({err}); delete it and {data_path} to "
            "regenerate"
        ) from None
    if record.get("params") != json.loads(json.dumps(params)):
        raise DataError(
            f"cached data {data_path} was generated with parameters {record.get('params')}, not "
            f"{params}; delete {data_path} and {record_path} (or use another cache folder) to "
            "regenerate"
        )
    actual = sha256(data_path)
    if actual != record.get("sha256"):
        raise DataError(
            f"cached data {data_path} is corrupt: its SHA-256 is {actual}, but {record_path} "
            f"records {record.get('sha256')}; delete both files to regenerate"
        )
    try:
        with np.load(data_path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(
            f"cached data {data_path} cannot be read ({err}); delete it and {record_path} to "
            "regenerate"
        ) from None


def cached_arrays(
    directory: str | Path,
    name: str,
    params: dict[str, Any],
    generate: Callable[[], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Load the verified cache ``name`` made with ``params`` (JSON-serialisable), or generate,
    save and return it (module docstring)."""
    data_path, record_path = cache_paths(directory, name)
    if data_path.exists() or record_path.exists():
        if not (data_path.exists() and record_path.exists()):
            present = data_path if data_path.exists() else record_path
            raise DataError(
                f"cached data is incomplete: {present} exists without its partner; delete it to "
                "regenerate"
            )
        return _load(data_path, record_path, params)
    arrays = generate()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        atomic_write_bytes(buffer.getvalue(), data_path)
        record = {"params": params, "sha256": sha256(data_path), "arrays": sorted(arrays)}
        atomic_write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", record_path)
    except OSError as err:
        if err.errno not in UNWRITABLE_ERRNOS:
            raise
        data_path.unlink(missing_ok=True)  # no data file without its record
        warnings.warn(
            f"cannot cache the generated data set {name} in {data_path.parent} "
            f"({err.strerror}): using it uncached, so every run generates it again; point the "
            "task's data path at a writable folder to keep it", stacklevel=2)
    return arrays
