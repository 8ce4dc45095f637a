"""What every run directory records beside its results: command, config, seed, commit, versions."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import shlex
import subprocess
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from latentgrad.experiments.checkpoint import atomic_write_text

PACKAGES = (
    "latentgrad",
    "torch",
    "lightning",
    "numpy",
    "pyyaml",
    "matplotlib",
    "scikit-learn",
    "ray",
)


def git_commit() -> dict[str, Any]:
    """Commit of the source tree latentgrad is imported from, and whether it has local changes."""
    src = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=src, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": bool(dirty)}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


_START_KEYS = ("started", "host", "platform", "git")  # what an attempt records when it starts


def write_run_records(run_dir: Path, config: dict[str, Any], argv: list[str] | None) -> None:
    """Write ``config.yaml``, ``command.txt`` and ``run.json`` (seed, commit, versions, host).

    Each start of the run (the first and every resume) is appended to ``run.json``'s
    ``attempts`` (time, host, platform, commit); ``started`` stays the first start's time.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(yaml.safe_dump(config, sort_keys=False), run_dir / "config.yaml")
    command = shlex.join(["latentgrad", *argv]) if argv is not None else shlex.join(sys.argv)
    previous = (run_dir / "command.txt").read_text() if (run_dir / "command.txt").exists() else ""
    atomic_write_text(previous + command + "\n", run_dir / "command.txt")  # one line per attempt
    attempt = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "git": git_commit(),
    }
    attempts = [*_previous_attempts(run_dir / "run.json"), attempt]
    info = {
        "task": config["task"],
        "estimator": config["estimator"],
        "seed": config["seed"],
        "profile": config["profile"],
        # the first start only; each attempt's end (outcome, step, compute) stays in its entry
        **{k: attempts[0][k] for k in _START_KEYS if k in attempts[0]},
        "versions": package_versions(),
        "attempts": attempts,
    }
    atomic_write_text(json.dumps(info, indent=2) + "\n", run_dir / "run.json")


def _previous_attempts(path: Path) -> list[dict[str, Any]]:
    """The attempts recorded in an existing ``run.json`` (one written before ``attempts``
    existed counts as a single attempt); none if the file is missing or unreadable."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(info, dict):
        return []
    if isinstance(info.get("attempts"), list):
        return info["attempts"]
    return [{k: info[k] for k in _START_KEYS if k in info}] if "started" in info else []


class AttemptClock(NamedTuple):
    """Where an attempt's clocks stood at its start: ``time.monotonic()`` and
    ``time.process_time()`` (CPU time of every thread of the process)."""

    wall: float
    cpu: float


def start_clock() -> AttemptClock:
    return AttemptClock(time.monotonic(), time.process_time())


def record_attempt_end(run_dir: Path, clock: AttemptClock, global_step: int, outcome: str,
                       threads: int) -> None:
    """Complete the current (last) attempt in ``run.json`` with ``ended``, ``outcome``
    (``finished``, ``stopped by SIGTERM`` or ``error``), ``wall_s`` and ``cpu_s`` since
    ``clock`` (CPU time of the training process's threads; a data loader's worker processes
    are not counted), ``threads`` (torch's intra-op threads) and the ``global_step`` reached,
    and update the run's ``compute`` totals over its attempts (an attempt killed without a
    chance to record, SIGKILL or power loss, is counted in ``attempts_not_timed``)."""
    path = run_dir / "run.json"
    try:
        info = json.loads(path.read_text())
        attempt = info["attempts"][-1]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        # never in the way of the run's own outcome (its SIGTERM stop, its error)
        warnings.warn(f"{path}: the attempt's compute was not recorded ({err})", stacklevel=2)
        return
    attempt.update({
        "ended": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "outcome": outcome,
        "wall_s": round(time.monotonic() - clock.wall, 1),
        "cpu_s": round(time.process_time() - clock.cpu, 1),
        "threads": threads,
        "global_step": global_step,
    })
    timed = [a for a in info["attempts"] if "cpu_s" in a]
    info["compute"] = {
        "wall_hours": round(sum(a["wall_s"] for a in timed) / 3600, 3),
        "cpu_hours": round(sum(a["cpu_s"] for a in timed) / 3600, 3),
        "attempts_not_timed": len(info["attempts"]) - len(timed),
    }
    atomic_write_text(json.dumps(info, indent=2) + "\n", path)


def record_finish(run_dir: Path) -> None:
    """Add the finishing time to ``run.json`` (kept out of ``metrics.json``, whose bytes are the
    same for a resumed and an uninterrupted run)."""
    info = json.loads((run_dir / "run.json").read_text())
    info["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_text(json.dumps(info, indent=2) + "\n", run_dir / "run.json")
