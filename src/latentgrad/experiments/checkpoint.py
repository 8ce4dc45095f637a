"""Atomic, ``weights_only``-loadable checkpoints, and picking one to resume from.

Every file is written to a temporary file ``.<name>.<random>.tmp`` in the destination folder,
flushed to disk, then moved into place with ``os.replace``: a run killed mid-write leaves the
previous checkpoint intact, never a truncated one, and at worst an orphan temp file, which
``remove_temp_files`` deletes on the next start. Loading always uses
``torch.load(weights_only=True)``, so checkpoints must hold only tensors and plain Python
containers/scalars (configs are stored as plain dicts). ``resume_checkpoint`` picks the checkpoint
to resume from: ``last.ckpt``, or, when that one is unreadable (truncated, empty, corrupted), the
newest intact one beside it; ``prepare_resume`` restores ``last.ckpt`` from it and deletes the
files the configured ``ModelCheckpoint`` no longer manages.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

TEMP_SUFFIX = ".tmp"
LAST = "last.ckpt"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _finish(tmp: str, path: Path) -> None:
    """Give the temp file the permissions a plain ``open`` would, then move it into place."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(fh)`` on a temp file in ``path``'s folder, fsync it, then os.replace it onto
    ``path``; the temp file is removed if anything fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        _finish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(data: bytes, path: str | os.PathLike[str]) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + fsync + os.replace)."""
    _atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(text: str, path: str | os.PathLike[str]) -> None:
    atomic_write_bytes(text.encode(), path)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to ``path`` atomically."""
    _atomic_write(path, lambda fh: torch.save(obj, fh))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO: atomic local saves, ``weights_only=True`` loads."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict:
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint file {path} does not exist")
        return torch.load(
            path, map_location=map_location or (lambda storage, loc: storage), weights_only=True
        )


def remove_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the orphan temp files (``.<name>.<random>.tmp``) a killed atomic write left in
    ``folder``; returns the deleted paths."""
    removed = []
    for tmp in sorted(Path(folder).glob(f".*{TEMP_SUFFIX}")):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


class CheckpointError(ValueError):
    """No intact checkpoint to resume from; the message names every unreadable file."""


def _read(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(checkpoint, "") if ``path`` loads and holds a Lightning training state, else (None, why)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file: torch raises many types for bad bytes
        if str(err).startswith("Weights only load failed"):  # not torch's advice to retry
            # with weights_only=False: for bad bytes it is wrong, for a foreign file unsafe
            return None, ("damaged, or not a checkpoint that loads with weights_only=True "
                          "(it would need arbitrary code to unpickle)")
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, reason
    if not isinstance(ckpt, dict):
        return None, f"not a training checkpoint (a {type(ckpt).__name__}, not a mapping)"
    missing = [k for k in ("state_dict", "loops", "global_step") if k not in ckpt]
    if missing:
        return None, f"not a training checkpoint (no {', '.join(missing)})"
    return ckpt, ""


class CheckpointSummary(NamedTuple):
    """What a resume checks in a training checkpoint before loading it: the resolved run
    ``config`` it was written with (its ``hyper_parameters``; None when it holds none), the
    ``epochs`` it has started (an epoch cut mid-way by a step checkpoint counts) and its
    ``global_step``."""

    config: dict[str, Any] | None
    epochs: int
    global_step: int


def load_training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The training checkpoint at ``path``, loaded onto the CPU with ``weights_only=True``;
    ``CheckpointError`` naming the file and why when it is not an intact one."""
    ckpt, why = _read(Path(path))
    if ckpt is None:
        raise CheckpointError(f"{path} is unusable ({why})")
    return ckpt


def checkpoint_summary(path: Path) -> CheckpointSummary:
    """``CheckpointSummary`` of the checkpoint at ``path`` (one read); ``CheckpointError`` if it
    is not an intact training checkpoint."""
    try:
        ckpt = load_training_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"--resume: {err}") from None
    hparams = ckpt.get("hyper_parameters")
    config = hparams.get("config") if isinstance(hparams, dict) else None
    try:
        epochs = int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["started"])
    except (KeyError, TypeError, ValueError):
        epochs = int(ckpt.get("epoch", 0))
    return CheckpointSummary(config if isinstance(config, dict) else None, epochs,
                             int(ckpt["global_step"]))


def resume_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The checkpoint in ``folder`` to resume from: the intact ``*.ckpt`` with the largest global
    step (``last.ckpt`` on ties), with a warning naming both files when ``last.ckpt`` is missing or
    unreadable. ``None`` when ``folder`` holds no checkpoint; ``CheckpointError`` when it holds
    only unreadable ones.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    if not files:
        return None
    intact: dict[Path, int] = {}
    broken: dict[Path, str] = {}
    for file in files:
        ckpt, why = _read(file)
        if ckpt is None:
            broken[file] = why
        else:
            intact[file] = int(ckpt["global_step"])
    if not intact:
        details = "; ".join(f"{f.name}: {why}" for f, why in broken.items())
        raise CheckpointError(
            f"--resume: no intact checkpoint in {folder} ({details}); delete the folder to "
            "start over"
        )
    last = folder / LAST
    chosen = max(intact, key=lambda f: (intact[f], f == last))
    if last not in intact:
        warnings.warn(
            f"--resume: {last} is unusable ({broken.get(last, 'missing')}); resuming from "
            f"{chosen} instead (global step {intact[chosen]})",
            stacklevel=2,
        )
    return chosen


def prepare_resume(folder: str | os.PathLike[str], chosen: Path) -> Path:
    """Make ``folder/last.ckpt`` a copy of ``chosen`` whose ModelCheckpoint state points into
    ``folder`` (written atomically, when anything differs) and delete every other checkpoint but
    the periodic one that state manages (unreadable files, or ones from steps the resumed run
    redoes); returns the ``last.ckpt`` path to resume from. Resuming from ``last.ckpt`` lets
    Lightning replace the periodic file as usual: it never deletes the file a run resumed from.
    The state is re-anchored because Lightning ignores a ModelCheckpoint state saved under
    another folder (a run folder copied elsewhere, e.g. an exported snapshot): it would then keep
    the stale ``last.ckpt``, write ``last-v1.ckpt`` beside it and never delete the old periodic
    file."""
    folder = Path(folder)
    last = folder / LAST
    ckpt, _ = _read(chosen)
    assert ckpt is not None, f"{chosen} was checked intact"
    moved = False
    for callback in (ckpt.get("callbacks") or {}).values():
        if isinstance(callback, dict) and "last_model_path" in callback:
            moved |= _anchor(callback, folder, last)
    if chosen != last or moved:
        atomic_torch_save(ckpt, last)
    state, _ = _read(last)
    keep = {LAST, *_periodic_checkpoints(state or {})}
    for file in folder.glob("*.ckpt"):
        if file.name not in keep:
            file.unlink(missing_ok=True)
    return last


def _anchor(state: dict[str, Any], folder: Path, last: Path) -> bool:
    """Point a ModelCheckpoint ``state`` at ``folder`` (its files by name, ``last_model_path`` at
    ``last``); whether anything changed."""
    before = repr(state)
    home = os.path.realpath(folder)

    def here(path: str) -> str:
        return os.path.join(home, Path(path).name) if path else path

    state["dirpath"] = home
    for key in ("best_model_path", "kth_best_model_path"):
        if isinstance(state.get(key), str):
            state[key] = here(state[key])
    if isinstance(state.get("best_k_models"), dict):
        state["best_k_models"] = {here(k): v for k, v in state["best_k_models"].items()}
    state["last_model_path"] = os.path.realpath(last)
    return repr(state) != before


def _periodic_checkpoints(ckpt: dict[str, Any]) -> set[str]:
    """File names of the checkpoints that ``ckpt``'s ModelCheckpoint state still manages."""
    names = set()
    for state in (ckpt.get("callbacks") or {}).values():
        if isinstance(state, dict):
            for key in ("best_model_path", "last_model_path"):
                if state.get(key):
                    names.add(Path(state[key]).name)
    return names
