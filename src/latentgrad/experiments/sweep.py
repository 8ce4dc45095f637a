"""Grids of runs (estimators x seeds) in a local process pool or on a Ray cluster.

Every cell's config is validated before any cell starts: one invalid cell refuses the whole grid
with a ``ConfigError`` naming it. Each grid cell is then one ``latentgrad run ... --resume``
subprocess (isolated: a crash fails that cell only) writing its output to ``<run_dir>/sweep.log``.
Cells whose ``metrics.json`` exists are skipped, unfinished ones resume from their last checkpoint.
A summary is printed at the end; the return code is 1 when any cell failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from latentgrad.experiments.config import ConfigError, parse_overrides
from latentgrad.experiments.runner import METRICS_FILE, check_run, run_dir_for


def parse_seeds(text: str) -> list[int]:
    """``"1-10"`` -> [1..10]; ``"43,45,50-52"`` -> [43, 45, 50, 51, 52]."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.rsplit("-", 1)
                if int(hi) < int(lo):
                    raise ValueError
                seeds.extend(range(int(lo), int(hi) + 1))
            else:
                seeds.append(int(part))
        if any(s < 0 for s in seeds):
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"--seeds: expected non-negative seeds like '1-10' or '43,44,45', got {text!r}"
        ) from None
    return list(dict.fromkeys(seeds))


@dataclass
class Cell:
    estimator: str
    seed: int
    command: list[str]
    run_dir: Path
    log: Path


def _execute(command: list[str], log: str, env: dict[str, str]) -> int:
    """Run one cell; stdout and stderr go to ``log``; returns the exit code."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        return subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode


def _threads_per_worker(workers: int) -> str:
    return str(max(1, (os.cpu_count() or 1) // max(1, workers)))


def _check_cells(
    task: str,
    estimators: list[str],
    seeds: list[int],
    overrides: list[str],
    config_file: str | None,
) -> None:
    """Resolve every cell's config; a ConfigError naming the invalid cells if any is."""
    parsed = parse_overrides(overrides)
    errors = []
    for estimator in estimators:
        for seed in seeds:
            try:
                check_run(task, estimator, seed, parsed, config_file)
            except ConfigError as err:
                errors.append(f"{estimator}/seed{seed}: {err}")
    if errors:
        raise ConfigError(
            f"{len(errors)} of {len(estimators) * len(seeds)} cells are invalid, none was "
            f"started: {'; '.join(errors)}"
        )


def sweep(
    task: str,
    estimators: list[str],
    seeds: list[int],
    overrides: list[str],
    out: str = "runs",
    workers: int = 1,
    ray_address: str | None = None,
    config_file: str | None = None,
) -> int:
    """Run the grid; returns 0 when every cell finished (now or before), else 1.

    ``overrides``: ``key=value`` strings passed to every cell, ``config_file`` its ``--config``.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    _check_cells(task, estimators, seeds, overrides, config_file)
    extra_args = [*(["--config", config_file] if config_file else []), *overrides]
    cells, skipped = [], []
    for estimator in estimators:
        for seed in seeds:
            run_dir = run_dir_for(out, task, estimator, seed)
            if (run_dir / METRICS_FILE).exists():
                skipped.append(f"{estimator}/seed{seed}")
                continue
            command = [
                sys.executable, "-m", "latentgrad.experiments.cli", "run", task,
                "--estimator", estimator, "--seed", str(seed), "--out", str(out), "--resume",
                "--no-progress-bar", *extra_args,
            ]  # fmt: skip
            cells.append(Cell(estimator, seed, command, run_dir, run_dir / "sweep.log"))
    if ray_address is not None:
        codes = _run_ray(cells, ray_address)
    else:
        env = dict(os.environ, OMP_NUM_THREADS=_threads_per_worker(workers))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            codes = list(pool.map(lambda c: _execute(c.command, str(c.log), env), cells))
    failed = [(c, code) for c, code in zip(cells, codes) if code != 0]
    print(f"sweep {task}: {len(cells) - len(failed)} finished, "
          f"{len(skipped)} skipped (already done), "
          f"{len(failed)} failed")  # fmt: skip
    for c, code in failed:
        print(f"  FAILED {c.estimator}/seed{c.seed} (exit {code}); log: {c.log}")
    return 1 if failed else 0


def _run_ray(cells: list[Cell], address: str) -> list[int]:
    """One Ray task (1 CPU) per cell. ``address``: 'auto', 'local' (start one here) or host:port.

    On a multi-node cluster ``--out`` must be on a file system shared by all nodes.
    """
    try:
        import ray
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ConfigError(
            f"--ray needs the 'ray' package (pip install latentgrad[ray]): {err}"
        ) from None
    started = False
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, log_to_driver=False)
        started = True
    try:
        remote = ray.remote(num_cpus=1)(_execute)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        return ray.get([remote.remote(c.command, str(c.log), env) for c in cells])
    finally:
        if started:
            ray.shutdown()
