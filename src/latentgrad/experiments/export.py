"""``latentgrad export``: the part of a sweep worth committing, copied into a results folder.

A sweep writes one folder per cell, ``OUT/<task>/<estimator>/seed<S>/``: its records
(``config.yaml``, ``command.txt``, ``run.json``, the CSV logs under ``csv/``, ``sweep.log``,
``metrics.json`` once it finished), TensorBoard logs (``tb/``) and checkpoints. ``export`` copies

- every finished cell (one with ``metrics.json``) without ``checkpoints/``, ``tb/`` and the
  weights a task saves beside its records (``*.ckpt``, e.g. ssvae's ``warmstart.ckpt``) to
  ``RESULTS/runs/<estimator>/seed<S>/``, the folder ``latentgrad report`` reads;
- with ``in_progress``, every unfinished cell that has a ``checkpoints/last.ckpt`` (without
  ``tb/``, the other checkpoints and weights) to ``RESULTS/in_progress/<estimator>/seed<S>/``:
  the one file a resumed run needs; copied back
  into a sweep's folder, it continues where it stopped (``latentgrad sweep ... --resume``).

Each copy replaces the cell's previous one as a whole (built beside it, then renamed into place),
and a cell that has finished loses its ``in_progress`` snapshot. Checkpoints are written
atomically by the runner, so a cell that is still running exports its last complete checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from latentgrad.experiments.checkpoint import LAST, TEMP_SUFFIX
from latentgrad.experiments.runlock import LOCK_FILE

#: What a cell holds besides its records: large folders a resumed run rebuilds, the lock of a
#: run still training.
_NOT_RECORDS = ("checkpoints", "tb", LOCK_FILE)


def sweep_cells(sweep_dir: Path) -> list[Path]:
    """The cell folders ``<estimator>/seed<S>`` of a sweep's task folder, sorted."""
    return sorted(p for p in sweep_dir.glob("*/seed*") if p.is_dir())


def _records_only(cell: Path):
    """``shutil.copytree``'s filter for ``cell``: no checkpoint or TensorBoard folder and no
    weights (``*.ckpt``) at its top, no orphan temp file of an interrupted write anywhere."""
    top = str(cell)

    def ignored(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n.endswith(TEMP_SUFFIX)}
        if folder == top:
            skip.update(n for n in names if n in _NOT_RECORDS or n.endswith(".ckpt"))
        return skip

    return ignored


def _replace(cell: Path, dest: Path, checkpoint: bool) -> None:
    """Copy ``cell``'s records (and its ``last.ckpt`` if ``checkpoint``) to ``dest``, replacing
    what was there only once the copy is complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fresh, stale = (dest.with_name(f".{dest.name}.{tag}") for tag in ("export", "replaced"))
    for leftover in (fresh, stale):  # of an export that was interrupted
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.copytree(cell, fresh, ignore=_records_only(cell))
    if checkpoint:
        (fresh / "checkpoints").mkdir()
        shutil.copy2(cell / "checkpoints" / LAST, fresh / "checkpoints" / LAST)
    if dest.exists():
        dest.rename(stale)
    fresh.rename(dest)
    shutil.rmtree(stale, ignore_errors=True)


def _remove_snapshot(path: Path, root: Path) -> None:
    """Delete ``path`` and the folders above it, up to ``root``, that it leaves empty."""
    shutil.rmtree(path, ignore_errors=True)
    for folder in path.parents:
        if folder == root.parent or not folder.is_dir() or any(folder.iterdir()):
            break
        folder.rmdir()


def export(sweep_dir: str | Path, out: str | Path, in_progress: bool = False) -> dict[str, list]:
    """Copy the records of the sweep's task folder ``sweep_dir`` (``OUT/<task>``) into ``out``
    (module docstring). Returns the cells copied, as ``"<estimator>/seed<S>"``, under
    ``"finished"`` and ``"in_progress"``; raises ``FileNotFoundError`` when ``sweep_dir`` holds
    no cell."""
    sweep_dir, out = Path(sweep_dir), Path(out)
    cells = sweep_cells(sweep_dir) if sweep_dir.is_dir() else []
    if not cells:
        raise FileNotFoundError(
            f"sweep_dir {str(sweep_dir)!r} holds no cells <estimator>/seed<S>: pass a sweep's "
            "task folder, OUT/<task>"
        )
    done: dict[str, list] = {"finished": [], "in_progress": []}
    for cell in cells:
        name = f"{cell.parent.name}/{cell.name}"
        if (cell / "metrics.json").is_file():
            _replace(cell, out / "runs" / name, checkpoint=False)
            _remove_snapshot(out / "in_progress" / name, out / "in_progress")
            done["finished"].append(name)
        elif in_progress and (cell / "checkpoints" / LAST).is_file():
            _replace(cell, out / "in_progress" / name, checkpoint=True)
            done["in_progress"].append(name)
    return done
