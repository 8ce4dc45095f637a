"""Grids of runs (estimators x seeds) in a local process pool or on a Ray cluster.

Every cell's config is validated before any cell starts: one invalid cell refuses the whole grid
with a ``ConfigError`` naming it. Each grid cell is then one ``latentgrad run ... --resume``
subprocess (isolated: a crash fails that cell only) writing its output to ``<run_dir>/sweep.log``.
Cells whose ``metrics.json`` exists are skipped, unfinished ones resume from their last checkpoint;
a cell that another process is training (another sweep over the same ``--out``) is left to it and
counted as busy, neither done nor failed.
While it runs, one line per cell that starts or ends gives the counts done / running / failed /
waiting and an estimate of the time left; a summary is printed at the end; the return code is 1
when any cell failed or was stopped. A local sweep that receives SIGTERM passes it on to its
running cells (each stops at the end of a batch, its last checkpoint kept), starts no other cell
and returns ``STOPPED_EXIT_CODE``; rerunning it continues where it stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from latentgrad.experiments.config import ConfigError, parse_overrides, to_dict
from latentgrad.experiments.runlock import BUSY_EXIT_CODE
from latentgrad.experiments.runner import (
    MAX_SEED,
    METRICS_FILE,
    check_not_shortened,
    check_run,
    check_same_config,
    run_dir_for,
)
from latentgrad.experiments.stopping import STOPPED_EXIT_CODE

#: The most seeds one ``--seeds`` may name: a grid is validated cell by cell before it starts, so
#: a mistyped range (``1-1000000000``) would otherwise exhaust memory or time before any message.
MAX_SEEDS = 100_000


def parse_seeds(text: str) -> list[int]:
    """``"1-10"`` -> [1..10]; ``"43,45,50-52"`` -> [43, 45, 50, 51, 52]."""
    ranges: list[tuple[int, int]] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.rsplit("-", 1)
                if int(hi) < int(lo):
                    raise ValueError
                ranges.append((int(lo), int(hi)))
            else:
                ranges.append((int(part), int(part)))
        if any(lo < 0 for lo, _ in ranges):
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"--seeds: expected non-negative seeds like '1-10' or '43,44,45', got {text!r}"
        ) from None
    if any(hi > MAX_SEED for _, hi in ranges):
        raise ConfigError(f"--seeds: seeds must be in [0, {MAX_SEED}], got {text!r}")
    if sum(hi - lo + 1 for lo, hi in ranges) > MAX_SEEDS:
        raise ConfigError(f"--seeds: {text!r} names more than {MAX_SEEDS} seeds")
    seeds = (seed for lo, hi in ranges for seed in range(lo, hi + 1))
    return list(dict.fromkeys(seeds))


@dataclass
class Cell:
    estimator: str
    seed: int
    command: list[str]
    run_dir: Path
    log: Path

    @property
    def name(self) -> str:
        return f"{self.estimator}/seed{self.seed}"


class Progress:
    """Per-cell progress of a sweep, one line per event on ``out``: the cell that started or
    ended, the counts done / running / failed / waiting, and the time left, estimated as the mean
    duration of the cells that ran to their end times the cells not ended, over the parallel
    workers. A cell that found its run directory busy (exit code ``BUSY_EXIT_CODE``) ends as
    busy: counted with the ended cells, not with the done or failed ones, and not timed; one
    that SIGTERM stopped (``stopped_by_sigterm``) is counted with the failed ones, named as
    stopped."""

    def __init__(
        self,
        task: str,
        total: int,
        workers: int,
        out: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.task, self.total, self.workers = task, total, workers
        self.out = out or sys.stdout
        self.clock = clock
        self.done = self.failed = self.busy = 0
        self.durations: list[float] = []
        self.started: dict[str, float] = {}
        self.lock = threading.Lock()

    def start(self, name: str) -> None:
        with self.lock:
            self.started[name] = self.clock()
            self._print(f"started {name}")

    def end(self, name: str, code: int) -> None:
        with self.lock:
            seconds = self.clock() - self.started.pop(name)
            if code == BUSY_EXIT_CODE:
                self.busy += 1
                self._print(f"skipped {name}: another process is running it")
                return
            self.durations.append(seconds)
            if code == 0:
                self.done += 1
                self._print(f"finished {name} in {_duration(seconds)}")
            elif stopped_by_sigterm(code):
                self.failed += 1
                self._print(f"STOPPED {name} by SIGTERM after {_duration(seconds)} (rerun the "
                            "sweep to continue it)")
            else:
                self.failed += 1
                self._print(f"FAILED {name} (exit {code}) after {_duration(seconds)}")

    @property
    def ended(self) -> int:
        return self.done + self.failed + self.busy

    def eta(self) -> str:
        left = self.total - self.ended
        if left == 0:
            return "0s"
        if not self.durations:
            return "unknown"
        mean = sum(self.durations) / len(self.durations)
        return _duration(mean * -(-left // self.workers))  # rounds of `workers` cells

    def _print(self, event: str) -> None:
        running = len(self.started)
        waiting = self.total - self.ended - running
        busy = f", busy {self.busy}" if self.busy else ""
        print(
            f"[sweep {self.task} {self.ended}/{self.total}] {event} | done "
            f"{self.done}, running {running}, failed {self.failed}{busy}, waiting {waiting} | "
            f"time left ~{self.eta()}",
            file=self.out,
            flush=True,
        )


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def stopped_by_sigterm(code: int) -> bool:
    """Whether a cell's exit ``code`` says SIGTERM ended it: the run's own status for it, or
    the signal itself (-15 from ``subprocess``) when it came before Lightning's handler was
    installed (while the data loaded)."""
    return code in (STOPPED_EXIT_CODE, -signal.SIGTERM)


def _execute(command: list[str], log: str, env: dict[str, str]) -> int:
    """Run one cell; stdout and stderr go to ``log``; returns the exit code."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        return subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode


class _Cells:
    """The local sweep's cell processes. ``stop`` (its SIGTERM handler) sends SIGTERM to every
    running cell and makes ``run`` start no other one (it returns ``None`` for those)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.running: set[subprocess.Popen] = set()
        self.stopped = False
        self.lock = threading.RLock()  # the handler runs on the main thread, between bytecodes

    def run(self, cell: Cell, progress: Progress) -> int | None:
        """Run ``cell`` to its end (output to its log) and return its exit code, or ``None``
        without starting it once the sweep was stopped."""
        with self.lock:
            if self.stopped:
                return None
            cell.log.parent.mkdir(parents=True, exist_ok=True)
            with open(cell.log, "a") as fh:  # the child holds its own descriptor
                proc = subprocess.Popen(cell.command, stdout=fh, stderr=subprocess.STDOUT,
                                        env=self.env)
            self.running.add(proc)
        progress.start(cell.name)
        code = proc.wait()
        with self.lock:
            self.running.discard(proc)
        progress.end(cell.name, code)
        return code

    def stop(self, signum: int, frame: object) -> None:
        with self.lock:
            self.stopped = True
            for proc in self.running:
                proc.send_signal(signal.SIGTERM)


def _threads_per_worker(workers: int, environ: dict[str, str]) -> str:
    """``OMP_NUM_THREADS`` of each local cell: the cores this process may run on (its CPU
    affinity) shared among ``workers``, and no more than the caller's own ``OMP_NUM_THREADS``
    when it sets one: two sweeps side by side on one machine each size themselves to all of it,
    and their threads would fight over the cores (4 threads on 2 cores made a graph_layout step
    6x slower: 9 s against 1.45), so the caller caps them with ``OMP_NUM_THREADS=1``."""
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    threads = max(1, cores // max(1, workers))
    cap = environ.get("OMP_NUM_THREADS", "").strip()
    if cap.isdigit() and int(cap) >= 1:
        threads = min(threads, int(cap))
    return str(threads)


def _check_cells(
    task: str,
    estimators: list[str],
    seeds: list[int],
    overrides: list[str],
    config_file: str | None,
    out: str,
) -> tuple[dict[tuple[str, int], dict[str, Any]], dict[tuple[str, int], Any]]:
    """Resolve every cell's config -> ``{(estimator, seed): config}`` and, for the cells whose
    run directory holds a run, ``{(estimator, seed): its saved trainer section}``; a
    ConfigError naming the invalid cells if any is, or whose run directory holds a run of
    another config (all but ``trainer.*`` must match, as for ``latentgrad run --resume``)."""
    parsed = parse_overrides(overrides)
    errors, configs, saved_trainers = [], {}, {}
    for estimator in estimators:
        for seed in seeds:
            try:
                module, cfg = check_run(task, estimator, seed, parsed, config_file)
                config = configs[estimator, seed] = to_dict(cfg)
                saved = run_dir_for(out, task, estimator, seed) / "config.yaml"
                if saved.exists():
                    saved_trainers[estimator, seed] = check_same_config(
                        saved, config, module, estimator).get("trainer")
                    check_not_shortened(saved.parent, config["trainer"])
            except ConfigError as err:
                errors.append(f"{estimator}/seed{seed}: {err}")
    if errors:
        raise ConfigError(
            f"{len(errors)} of {len(estimators) * len(seeds)} cells are invalid, none was "
            f"started: {'; '.join(errors)}"
        )
    return configs, saved_trainers


def sweep(
    task: str,
    estimators: list[str],
    seeds: list[int],
    overrides: list[str],
    out: str = "runs",
    workers: int = 1,
    ray_address: str | None = None,
    config_file: str | None = None,
    plugins: list[str] | None = None,
) -> int:
    """Run the grid; returns 0 when every cell finished (now or before), ``STOPPED_EXIT_CODE``
    when SIGTERM stopped the (local) sweep before that, else 1 (a cell failed or was stopped, or
    another process was still running one).

    ``overrides``: ``key=value`` strings passed to every cell, ``config_file`` its ``--config``,
    ``plugins`` the ``--plugin`` modules its runs import.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    estimators = list(dict.fromkeys(estimators))  # one cell per run directory, as for seeds
    configs, saved_trainers = _check_cells(task, estimators, seeds, overrides, config_file, out)
    extra_args = [*(["--config", config_file] if config_file else []), *overrides]
    cells, skipped = [], []
    for estimator in estimators:
        for seed in seeds:
            run_dir = run_dir_for(out, task, estimator, seed)
            trainer = configs[estimator, seed]["trainer"]
            same_trainer = _same_trainer(saved_trainers.get((estimator, seed)), trainer)
            if (run_dir / METRICS_FILE).exists() and same_trainer:
                skipped.append(f"{estimator}/seed{seed}")  # else the run continues (longer)
                continue
            command = [
                sys.executable, "-m", "latentgrad.experiments.cli",
                *(arg for module in plugins or [] for arg in ("--plugin", module)), "run", task,
                "--estimator", estimator, "--seed", str(seed), "--out", str(out), "--resume",
                "--no-progress-bar", *extra_args,
            ]  # fmt: skip
            cells.append(Cell(estimator, seed, command, run_dir, run_dir / "sweep.log"))
    if ray_address is not None:
        codes = _run_ray(cells, ray_address, task)
    else:
        local = _Cells(dict(os.environ, OMP_NUM_THREADS=_threads_per_worker(workers, os.environ)))
        progress = Progress(task, len(cells), workers)
        on_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, local.stop) if on_main_thread else None
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                codes = list(pool.map(lambda cell: local.run(cell, progress), cells))
        finally:
            if on_main_thread:
                signal.signal(signal.SIGTERM, previous)
        code = _summary(task, cells, codes, skipped)
        return STOPPED_EXIT_CODE if local.stopped and code else code
    return _summary(task, cells, codes, skipped)


def _same_trainer(saved: dict[str, Any] | None, now: dict[str, Any]) -> bool:
    """Whether a finished cell's saved trainer section is the one resolved now; a setting
    unset now (None) that the saved run predates is no difference, nor is a display setting
    (``_DISPLAY_ONLY``: every cell runs with ``--no-progress-bar``, whatever the sweep's
    profile resolves, so comparing it restarted every finished cell of a re-run sweep)."""
    if saved is None:
        return False
    return all(saved.get(key) == value for key, value in now.items()
               if key not in _DISPLAY_ONLY and (key in saved or value is not None)
               ) and set(saved) <= set(now)


_DISPLAY_ONLY = frozenset({"progress_bar"})  # trainer settings that change no result


def _summary(task: str, cells: list[Cell], codes: list[int | None], skipped: list[str]) -> int:
    """Print the sweep's summary; return 1 if a cell did not finish (failed, stopped, busy,
    not started), else 0."""
    ended = [(c, code) for c, code in zip(cells, codes) if code is not None]
    unfinished = [(c, code) for c, code in ended if code not in (0, BUSY_EXIT_CODE)]
    stopped = [(c, code) for c, code in unfinished if stopped_by_sigterm(code)]
    failed = [(c, code) for c, code in unfinished if not stopped_by_sigterm(code)]
    busy = [c for c, code in ended if code == BUSY_EXIT_CODE]
    unstarted = [c for c, code in zip(cells, codes) if code is None]
    print(f"sweep {task}: {codes.count(0)} finished, "
          f"{len(skipped)} skipped (already done), "
          + (f"{len(busy)} left to the other process running them, " if busy else "")
          + f"{len(failed)} failed"
          + (f", {len(stopped)} stopped by SIGTERM" if stopped else "")
          + (f", {len(unstarted)} not started (SIGTERM)" if unstarted else ""))  # fmt: skip
    for c, code in unfinished:
        what = "STOPPED by SIGTERM" if stopped_by_sigterm(code) else "FAILED"
        print(f"  {what} {c.estimator}/seed{c.seed} (exit {code}); log: {c.log}")
    for c in unstarted:
        print(f"  NOT STARTED {c.estimator}/seed{c.seed} (--resume runs it)")
    return 1 if unfinished or busy or unstarted else 0


def _run_ray(cells: list[Cell], address: str, task: str) -> list[int]:
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
        progress = Progress(task, len(cells), int(ray.cluster_resources().get("CPU", 1)))
        futures = {}
        for cell in cells:  # queued on the cluster: "running" counts queued cells too
            futures[remote.remote(cell.command, str(cell.log), env)] = cell
            progress.start(cell.name)
        codes, pending = {}, list(futures)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            codes[ready[0]] = ray.get(ready[0])
            progress.end(futures[ready[0]].name, codes[ready[0]])
        return [codes[f] for f in futures]
    finally:
        if started:
            ray.shutdown()
