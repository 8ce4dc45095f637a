"""One process per run directory: a second one is refused, a killed holder blocks nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from latentgrad.experiments.cli import main
from latentgrad.experiments.runlock import BUSY_EXIT_CODE, LOCK_FILE, RunDirBusy, hold_run_dir

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX only")

_HOLDER = """
import sys, time
from latentgrad.experiments.runlock import hold_run_dir
with hold_run_dir(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(run_dir: Path) -> subprocess.Popen[str]:
    """Another process holding ``run_dir`` (it returns once the lock is taken)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_second_process_is_refused_naming_the_holder(tmp_path: Path) -> None:
    run_dir = tmp_path / "task" / "estimator" / "seed0"
    holder = _holder(run_dir)
    try:
        with pytest.raises(RunDirBusy, match=f"{run_dir} is in use by another process \\(pid "
                           f"{holder.pid} on "):  # fmt: skip
            with hold_run_dir(run_dir):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_a_lock_file_that_blocks_nothing(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (tmp_path / LOCK_FILE).exists()  # the stale file of the killed run
    with hold_run_dir(tmp_path):
        assert f"pid {os.getpid()} " in (tmp_path / LOCK_FILE).read_text()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_holder_in_the_same_process_is_also_exclusive(tmp_path: Path) -> None:
    with hold_run_dir(tmp_path), pytest.raises(RunDirBusy), hold_run_dir(tmp_path):
        pass
    with hold_run_dir(tmp_path):  # released: free again
        pass


def test_folders_it_created_go_when_nothing_was_written(tmp_path: Path) -> None:
    with hold_run_dir(tmp_path / "out" / "task" / "seed0"):
        pass
    assert list(tmp_path.iterdir()) == []
    with hold_run_dir(tmp_path / "out" / "task" / "seed0"):
        (tmp_path / "out" / "task" / "seed0" / "config.yaml").write_text("x")
    assert [p.name for p in (tmp_path / "out" / "task" / "seed0").iterdir()] == ["config.yaml"]


def test_cli_run_on_a_held_directory_exits_busy_without_touching_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "ssvae" / "softmax" / "seed0"
    argv = ["run", "ssvae", "--estimator", "softmax", "--out", str(tmp_path), "--resume"]
    with hold_run_dir(run_dir):
        assert main([*argv, "profile=tiny"]) == BUSY_EXIT_CODE
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("latentgrad run: error: run directory")
    assert "in use by another process" in err[0]
