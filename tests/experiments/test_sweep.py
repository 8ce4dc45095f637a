"""``latentgrad sweep``: local pool, skip of finished cells, failure summary, Ray, Lightning DDP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latentgrad.experiments.cli import main
from latentgrad.experiments.config import ConfigError, sweep_grid, task_estimators, task_yaml
from latentgrad.experiments.sweep import _same_trainer, _threads_per_worker, parse_seeds, sweep
from latentgrad.experiments.tasks.registry import TASKS

TINY = ["profile=tiny", "trainer.max_epochs=2"]


def test_parse_seeds() -> None:
    assert parse_seeds("1-3") == [1, 2, 3]
    assert parse_seeds("43,45,50-52") == [43, 45, 50, 51, 52]
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds("3-1")
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds("a-b")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 5)), min_size=1, max_size=5))
def test_parse_seeds_is_the_ordered_union_of_the_ranges(ranges: list[tuple[int, int]]) -> None:
    text = ",".join(f"{lo}-{lo + n}" if n else str(lo) for lo, n in ranges)
    expected = list(dict.fromkeys(s for lo, n in ranges for s in range(lo, lo + n + 1)))
    assert parse_seeds(text) == expected


def test_sweep_two_local_workers_reports_failures_then_rerun_skips_finished(
    data_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a cell that is valid but fails when it runs: its only checkpoint is unreadable
    clash = tmp_path / "ssvae" / "sfe" / "seed1"
    (clash / "checkpoints").mkdir(parents=True)
    (clash / "checkpoints" / "last.ckpt").write_bytes(b"")
    code = sweep("ssvae", ["softmax", "sfe"], [1], TINY, out=str(tmp_path), workers=2)
    out = capsys.readouterr().out
    assert code == 1, out
    assert "1 finished, 0 skipped (already done), 1 failed" in out
    assert "FAILED sfe/seed1" in out
    assert "no intact checkpoint" in (clash / "sweep.log").read_text()
    result = json.loads((tmp_path / "ssvae" / "softmax" / "seed1" / "metrics.json").read_text())
    assert result["estimator"] == "softmax" and result["seed"] == 1
    assert sweep("ssvae", ["softmax"], [1], TINY, out=str(tmp_path), workers=2) == 0
    assert "0 finished, 1 skipped" in capsys.readouterr().out


def test_a_cell_another_process_is_running_is_left_to_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from latentgrad.experiments.runlock import hold_run_dir

    with hold_run_dir(tmp_path / "ssvae" / "softmax" / "seed1"):  # as a second sweep would
        code = sweep("ssvae", ["softmax"], [1], TINY, out=str(tmp_path))
    out = capsys.readouterr().out
    assert code == 1, out
    assert "skipped softmax/seed1: another process is running it | done 0, running 0, " in out
    assert "0 finished, 0 skipped (already done), 1 left to the other process" in out
    assert "0 failed" in out and "FAILED" not in out
    assert not (tmp_path / "ssvae" / "softmax" / "seed1" / "config.yaml").exists()


def test_a_finished_cell_is_skipped_only_with_the_config_it_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finished cell of another config refuses the grid, as --resume would; a longer run
    (trainer.* changed) continues the cell instead of skipping it."""
    grid = ("signal_game", ["sfe"], [1])
    assert sweep(*grid, ["profile=tiny", "trainer.max_epochs=1"], out=str(tmp_path)) == 0
    metrics = tmp_path / "signal_game" / "sfe" / "seed1" / "metrics.json"
    first = json.loads(metrics.read_text())["global_step"]
    refused = r"none was started: sfe/seed1: .* differs .* in optim.lr \(0.001 saved, 0.5 now\)"
    with pytest.raises(ConfigError, match=refused):
        sweep(*grid, ["profile=tiny", "trainer.max_epochs=1", "optim.lr=0.5"], out=str(tmp_path))
    assert sweep(*grid, ["profile=tiny", "trainer.max_epochs=2"], out=str(tmp_path)) == 0
    assert "1 finished, 0 skipped" in capsys.readouterr().out
    assert json.loads(metrics.read_text())["global_step"] > first
    # shorter than the cell has trained: refused before any cell starts (each cell failed after
    # its start, the grid "failed")
    with pytest.raises(ConfigError, match=r"none was started: .*trainer.max_epochs: .* already "
                                          r"trained 2 epochs, more than trainer.max_epochs=1"):
        sweep(*grid, ["profile=tiny", "trainer.max_epochs=1"], out=str(tmp_path))


def test_a_trainer_setting_added_after_a_run_is_no_difference_while_unset() -> None:
    saved = {"max_epochs": 2, "num_threads": 1}
    assert _same_trainer(saved, {"max_epochs": 2, "num_threads": 1, "loss_chunk": None})
    assert not _same_trainer(saved, {"max_epochs": 2, "num_threads": 1, "loss_chunk": 64})
    assert not _same_trainer(saved, {"max_epochs": 3, "num_threads": 1, "loss_chunk": None})
    assert not _same_trainer({**saved, "gone": 1}, {"max_epochs": 2, "num_threads": 1})
    assert not _same_trainer(None, {"max_epochs": 2})


def test_the_progress_bar_is_no_difference_between_a_finished_cell_and_its_sweep() -> None:
    """Every cell runs with --no-progress-bar while paper/faithful/cpu resolve progress_bar
    true: a re-run sweep restarted every finished cell ("0 skipped")."""
    saved = {"max_epochs": 2, "progress_bar": False}
    assert _same_trainer(saved, {"max_epochs": 2, "progress_bar": True})
    assert not _same_trainer(saved, {"max_epochs": 3, "progress_bar": False})


def test_sweep_with_one_invalid_cell_starts_none(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="2 of 4 cells are invalid, none was started: no_such"):
        sweep("ssvae", ["softmax", "no_such"], [1, 2], TINY, out=str(tmp_path))
    assert not tmp_path.joinpath("ssvae").exists()


@pytest.mark.ray
def test_sweep_on_a_local_ray_instance(data_env: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        assert sweep("ssvae", ["softmax"], [2], TINY, out=str(tmp_path), ray_address="auto") == 0
    finally:
        ray.shutdown()
    assert (tmp_path / "ssvae" / "softmax" / "seed2" / "metrics.json").exists()


def test_ddp_on_two_cpu_processes_with_gloo(data_env: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "latentgrad.experiments.cli", "run", "ssvae",
        "--estimator", "softmax", "--out", str(tmp_path),
        "--devices", "2", "--accelerator", "cpu", "--strategy", "ddp", *TINY,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gloo" in proc.stderr + proc.stdout or "distributed_backend" in proc.stderr + proc.stdout
    result = json.loads((tmp_path / "ssvae" / "softmax" / "seed0" / "metrics.json").read_text())
    # 64 unlabelled images, batch 16, split over 2 processes: 2 steps per main epoch;
    # the warm start (32 labelled images) takes 1 step
    assert result["global_step"] == 1 + 2
    config = (tmp_path / "ssvae" / "softmax" / "seed0" / "config.yaml").read_text()
    assert "devices: 2" in config and "strategy: ddp" in config


@pytest.mark.parametrize(("cores", "workers", "caller", "expected"), [
    (8, 2, None, "4"),  # the cores shared among the workers
    (8, 3, None, "2"),
    (2, 4, None, "1"),  # never fewer than one
    (8, 2, "1", "1"),  # the caller's OMP_NUM_THREADS caps them: sweeps side by side
    (8, 2, "16", "4"),  # but never raises them
    (8, 2, "", "4"),  # unset or not a count: ignored
    (8, 2, "0", "4"),
    (8, 2, "two", "4"),
])
def test_each_cell_gets_its_share_of_the_cores_capped_by_the_callers_omp_num_threads(
    monkeypatch: pytest.MonkeyPatch, cores: int, workers: int, caller: str | None, expected: str,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    environ = {} if caller is None else {"OMP_NUM_THREADS": caller}
    assert _threads_per_worker(workers, environ) == expected


def test_the_share_counts_the_cores_this_process_may_use_not_the_machines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert _threads_per_worker(1, {}) == "2"


def test_sweep_cli_rejects_bad_seeds_and_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "ssvae", "--estimators", "softmax", "--seeds", "x"]) == 2
    assert "--seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", "ssvae", "--estimators", "softmax", "--seeds", "1", "--workers", "2", "lr"])
    assert "unrecognized arguments: lr" in capsys.readouterr().err


def test_progress_lines_count_cells_and_estimate_the_time_left() -> None:
    import io

    from latentgrad.experiments.runlock import BUSY_EXIT_CODE
    from latentgrad.experiments.sweep import Progress

    now = [0.0]
    out = io.StringIO()
    progress = Progress("ssvae", total=5, workers=2, out=out, clock=lambda: now[0])
    progress.start("a/seed1")
    progress.start("b/seed1")
    now[0] = 60.0
    progress.end("a/seed1", 0)
    progress.start("c/seed1")
    now[0] = 100.0
    progress.end("b/seed1", 1)
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "[sweep ssvae 0/5] started a/seed1 | done 0, running 1, failed 0, waiting 4 | "
        "time left ~unknown"
    )
    # 4 cells left, 2 at a time, 60 s each
    assert lines[2] == (
        "[sweep ssvae 1/5] finished a/seed1 in 1m00s | done 1, running 1, failed 0, "
        "waiting 3 | time left ~2m00s"
    )
    # 3 left -> 2 rounds of the mean 80 s
    assert lines[4] == (
        "[sweep ssvae 2/5] FAILED b/seed1 (exit 1) after 1m40s | done 1, running 1, failed 1, "
        "waiting 2 | time left ~2m40s"
    )
    progress.start("d/seed1")
    now[0] = 101.0
    progress.end("d/seed1", BUSY_EXIT_CODE)  # ended at once: not a duration to average
    assert out.getvalue().splitlines()[-1] == (
        "[sweep ssvae 3/5] skipped d/seed1: another process is running it | done 1, running 1, "
        "failed 1, busy 1, waiting 1 | time left ~1m20s"
    )


def test_a_profile_names_the_seeds_its_sweep_runs() -> None:
    """``latentgrad sweep ssvae profile=paper`` needs no --seeds/--estimators: the published
    seeds and every estimator of the task; the command line still wins."""
    everything = task_estimators("ssvae")
    assert sweep_grid("ssvae", "paper", None, None) == (everything, "43-52")
    assert sweep_grid("ssvae", None, None, None) == (everything, "43-52")  # no profile = full
    assert sweep_grid("ssvae", "faithful", "sfe,softmax", "1") == (["sfe", "softmax"], "1")
    with pytest.raises(ConfigError, match=r"--seeds: required.*'tiny'"):
        sweep_grid("ssvae", "tiny", None, None)


def test_a_profile_set_in_the_config_file_names_the_seeds_too(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The grid read the profile from the command line only: with `profile: tiny` in --config,
    the sweep started the full profile's seeds (here: it must ask for --seeds, as profile=tiny
    on the command line does)."""
    config = tmp_path / "tiny.yaml"
    config.write_text("profile: tiny\n")
    assert main(["sweep", "ssvae", "--estimators", "softmax", "--config", str(config),
                 "--out", str(tmp_path / "runs")]) == 2
    assert "--seeds: required, since task 'ssvae' names no seeds for profile 'tiny'" in (
        capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


#: The published seeds of every packaged task's protocol (the papers' and releases' own).
PAPER_SEEDS = {
    "ssvae": "43-52",
    "signal_game": "322-331",
    "bitvector_vae": "42",
    "bitvector_vae_d128": "42",
    "mixed_vae": "10-14",
    "voting_regression": "0",
    "igr_vae": "5328,5945,8965,49,9337",
    "igr_sop": "5328,5945,8965,49,9337",
    "igr_countable": "0",
    "graph_layout": "42",
    "l2x": "0-4",
    "listops": "0-4",
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_sweeps_the_papers_seeds_under_paper_and_their_first_under_faithful(
    task: str,
) -> None:
    """``latentgrad sweep TASK profile=paper`` (every ``paper*`` profile, and no profile) is the
    published table, seeds included; a ``faithful*`` profile runs the first of those seeds."""
    profiles = task_yaml(task)["profiles"]
    paper = parse_seeds(PAPER_SEEDS[task])
    for profile in [None, *(p for p in profiles if p.startswith("paper"))]:
        assert parse_seeds(sweep_grid(task, profile, None, None)[1]) == paper
    for profile in (p for p in profiles if p.startswith("faithful")):
        seeds = parse_seeds(sweep_grid(task, profile, None, None)[1])
        assert seeds and seeds == paper[: len(seeds)]


def test_sweep_cli_without_seeds_for_a_profile_that_names_none_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["sweep", "ssvae", "profile=tiny"]) == 2
    assert "--seeds: required" in capsys.readouterr().err


def test_parse_seeds_refuses_seeds_past_the_range_before_listing_them() -> None:
    """A mistyped range (``5-99999999999999``) was listed in full before any check: a
    MemoryError, or the machine's memory exhausted."""
    with pytest.raises(ConfigError, match=r"--seeds: seeds must be in \[0, 4294967295\]"):
        parse_seeds("5-99999999999999")
    with pytest.raises(ConfigError, match="names more than 100000 seeds"):
        parse_seeds("0-4294967295")
    assert parse_seeds("4294967295") == [4294967295]


def test_an_estimator_named_twice_is_one_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--estimators sfe,sfe`` made two cells of one run directory: with two workers the
    progress display crashed with a KeyError (and the two runs raced for the directory)."""
    from latentgrad.experiments import sweep as sweep_module

    ran: list[list[str]] = []

    class Finished:
        def __init__(self, command: list[str], **_: object) -> None:
            ran.append(command)

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(sweep_module.subprocess, "Popen", Finished)
    assert sweep("signal_game", ["sfe", "sfe"], [0], ["profile=tiny"], out=str(tmp_path),
                 workers=2) == 0  # fmt: skip
    assert len(ran) == 1
    assert "sweep signal_game: 1 finished" in capsys.readouterr().out


def test_sigterm_stops_a_local_sweep_and_its_running_cell(data_env: Path, tmp_path: Path) -> None:
    """SIGTERM to the sweep reaches the cell it runs (which stops at the end of a batch, its
    checkpoints kept), no other cell starts, and the sweep exits 143 naming both. Before, the
    sweep died alone and left its cell training."""
    from latentgrad.experiments.stopping import STOPPED_EXIT_CODE

    cmd = [sys.executable, "-m", "latentgrad.experiments.cli", "sweep", "ssvae",
           "--estimators", "softmax,sfe", "--seeds", "0", "--out", str(tmp_path), "profile=tiny",
           "trainer.max_epochs=100000", "trainer.num_threads=1"]  # fmt: skip
    first = tmp_path / "ssvae" / "softmax" / "seed0"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own group: killed whole below
    try:
        deadline = time.monotonic() + 300
        while not (first / "checkpoints" / "last.ckpt").exists():  # it trains: stop it now
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):  # a cell left training (as before)
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == STOPPED_EXIT_CODE, output[-3000:]
    assert "STOPPED softmax/seed0 by SIGTERM" in output and "1 not started" in output
    assert "0 failed, 1 stopped by SIGTERM" in output  # a stopped cell is not a failed one
    assert "NOT STARTED sfe/seed0" in output
    assert "stopped by SIGTERM at step" in (first / "sweep.log").read_text()
    assert (first / "checkpoints" / "last.ckpt").exists() and not (first / "metrics.json").exists()
    assert not (tmp_path / "ssvae" / "sfe").exists()
