"""One process per run directory.

Two processes training the same run (two sweeps over one ``--out``, a run started twice, a
``--resume`` while the first attempt still runs) would both load ``last.ckpt`` and overwrite each
other's checkpoints and records, and the run would end as neither attempt alone would have. While
a run trains, it holds an advisory lock on ``<run_dir>/.lock``; a second one fails at once with
``RunDirBusy`` naming the holder (pid and host), and ``latentgrad sweep`` skips such a cell.

The lock is ``fcntl.flock``: the operating system releases it when the holding process ends,
however it ends, so a killed run never blocks its own ``--resume``. Where ``flock`` is missing
(Windows) or refused by the file system, the run proceeds unlocked with a warning.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from latentgrad.experiments.config import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
BUSY_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): try again later


class RunDirBusy(ConfigError):
    """The run directory is held by another process."""


def _created_folders(folder: Path) -> list[Path]:
    """``folder`` and its missing parents, innermost first, that ``mkdir`` is about to create."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError, FileNotFoundError) as err:  # a file where a
        # folder should be, or a parent that cannot hold one (/proc)
        raise ConfigError(f"--out: cannot create the run directory {folder}: {err}") from None
    return missing


def _acquire(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its exclusive lock; None when locking is
    unsupported; RunDirBusy when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirBusy(
                f"run directory {path.parent} is in use by another process ({holder}); wait "
                "for it to end (a sweep skips this cell) or choose another --out"
            ) from None
        except OSError as err:
            os.close(fd)
            warnings.warn(
                f"cannot lock {path} ({err}); the run proceeds without protection against a "
                "second process on the same run directory",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        try:  # the holder before us may have removed the file after we opened it: retry
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    return fd


@contextmanager
def hold_run_dir(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``run_dir`` for this process (module docstring) inside the block.

    Raises ``RunDirBusy`` when another process holds it. Folders this call created are removed
    afterwards if they are still empty (a run refused before writing anything leaves nothing).
    """
    run_dir = Path(run_dir)
    created = _created_folders(run_dir)
    path = run_dir / LOCK_FILE
    fd = None
    try:
        if fcntl is None:  # pragma: no cover - Windows
            warnings.warn(
                "run directories are not locked on this platform (no fcntl)",
                RuntimeWarning,
                stacklevel=3,
            )
        else:
            fd = _acquire(path)
        yield
    finally:
        if fd is not None:  # removed while still held: a waiting opener then retries
            path.unlink(missing_ok=True)
            os.close(fd)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote something) or removed meanwhile
                break
