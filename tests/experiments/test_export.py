"""``latentgrad export`` copies a sweep's finished cells without checkpoints or TensorBoard logs
into RESULTS/runs, and unfinished cells with their last checkpoint into RESULTS/in_progress, from
where they resume exactly where they stopped."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from _kill import run_args

from latentgrad.experiments.cli import main
from latentgrad.experiments.export import export

HERE = Path(__file__).parent
RECORDS = {"config.yaml", "command.txt", "run.json", "sweep.log", "csv/version_0/metrics.csv"}


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _cell(root: Path, name: str, finished: bool, checkpoint: bool) -> Path:
    """A sweep cell as the runner leaves it: records, TensorBoard logs, checkpoints (with an
    orphan temp file of a killed write), weights a task saved beside its records (ssvae's
    warm start), the lock file of a run still training (or killed)."""
    cell = root / name
    for rel in RECORDS | {"tb/version_0/events.out", "checkpoints/.last.ckpt.x1.tmp", ".lock",
                          "warmstart.ckpt"}:
        (cell / rel).parent.mkdir(parents=True, exist_ok=True)
        (cell / rel).write_text(f"{name}/{rel}")
    if checkpoint:
        for rel in ("checkpoints/last.ckpt", "checkpoints/epoch=0-step=3.ckpt"):
            (cell / rel).write_text(f"{name}/{rel}")
    if finished:
        (cell / "metrics.json").write_text("{}")
    return cell


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    root = tmp_path / "sweep" / "task"
    _cell(root, "sfe/seed0", finished=True, checkpoint=True)
    _cell(root, "sfe/seed1", finished=False, checkpoint=True)
    _cell(root, "nvil/seed0", finished=False, checkpoint=False)  # stopped before its first save
    return root


def test_finished_cells_are_copied_without_checkpoints_weights_or_tensorboard_logs(
    sweep_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    assert export(sweep_dir, out) == {"finished": ["sfe/seed0"], "in_progress": []}
    assert _files(out) == {f"runs/sfe/seed0/{rel}" for rel in RECORDS | {"metrics.json"}}
    assert (out / "runs/sfe/seed0/sweep.log").read_text() == "sfe/seed0/sweep.log"


def test_unfinished_cells_keep_their_records_and_last_checkpoint_only(
    sweep_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    assert export(sweep_dir, out, in_progress=True)["in_progress"] == ["sfe/seed1"]
    snapshot = out / "in_progress/sfe/seed1"
    assert _files(snapshot) == RECORDS | {"checkpoints/last.ckpt"}
    assert (snapshot / "checkpoints/last.ckpt").read_text() == "sfe/seed1/checkpoints/last.ckpt"
    assert not (out / "in_progress/nvil").exists()  # nothing to resume from


def test_a_later_export_replaces_each_copy_and_drops_the_snapshot_of_a_finished_cell(
    sweep_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    export(sweep_dir, out, in_progress=True)
    (out / "runs/sfe/seed0/stale.txt").write_text("from an earlier export")
    (sweep_dir / "sfe/seed1/metrics.json").write_text("{}")  # the cell finished since
    (sweep_dir / "sfe/seed1/csv/version_1").mkdir()
    (sweep_dir / "sfe/seed1/csv/version_1/metrics.csv").write_text("resumed")
    assert export(sweep_dir, out, in_progress=True)["finished"] == ["sfe/seed0", "sfe/seed1"]
    assert not (out / "runs/sfe/seed0/stale.txt").exists()
    assert "csv/version_1/metrics.csv" in _files(out / "runs/sfe/seed1")
    assert not (out / "in_progress").exists()  # its last snapshot gone, the empty folders too
    assert not [p for p in out.rglob(".*")]  # no working copies left behind


def test_a_folder_without_cells_is_refused_with_what_to_pass(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(FileNotFoundError, match="OUT/<task>"):
            export(folder, tmp_path / "results")
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latentgrad export: error: sweep_dir") and err.count("\n") == 1
    assert not (tmp_path / "results").exists()


def _args(out: Path) -> list[str]:
    return run_args("signal_game", "nvil", out)


def test_an_exported_snapshot_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    assert main(_args(tmp_path / "reference")) == 0
    reference = tmp_path / "reference/signal_game/nvil/seed0/metrics.json"
    killed = tmp_path / "killed"
    cmd = [sys.executable, str(HERE / "_kill.py"), "step", "3", *_args(killed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    results = tmp_path / "results"
    assert main(["export", str(killed / "signal_game"), "--out", str(results),
                 "--in-progress"]) == 0  # fmt: skip
    assert (results / "in_progress/nvil/seed0/checkpoints/last.ckpt").is_file()

    # another machine: a fresh sweep folder from the committed snapshot
    resumed = tmp_path / "resumed"
    shutil.copytree(results / "in_progress", resumed / "signal_game")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*_args(resumed), "--resume"]) == 0
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]  # moving is fine
    got = resumed / "signal_game/nvil/seed0/metrics.json"
    assert got.read_bytes() == reference.read_bytes()
    assert json.loads(got.read_text())["global_step"] > 3
    # the moved folder's last.ckpt itself was kept up to date (Lightning ignored the checkpoint
    # state saved under the old folder and wrote last-v1.ckpt beside a stale last.ckpt)
    ckpts = resumed / "signal_game/nvil/seed0/checkpoints"
    assert "last-v1.ckpt" not in {p.name for p in ckpts.iterdir()}
    final = torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"]
    assert final == json.loads(got.read_text())["global_step"]

    assert main(["export", str(resumed / "signal_game"), "--out", str(results)]) == 0
    assert (results / "runs/nvil/seed0/metrics.json").read_bytes() == reference.read_bytes()
    assert not (results / "in_progress").exists()
    assert (results / "report.md").is_file()
