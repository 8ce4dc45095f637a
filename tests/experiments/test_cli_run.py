"""``latentgrad run`` end to end on the tiny profile, records, checkpoints and resume."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from _run_logs import csv_rows

from latentgrad.experiments.cli import main

# decoder calls per unlabelled example: sparsemax is data-dependent
EXPECTED_CALLS = {
    "softmax": 10.0,
    "sfe": 1.0,
    "sfe_plus": 2.0,
    "nvil": 1.0,
    "sum_and_sample": 2.0,
    "gumbel": 1.0,
    "st_gumbel": 1.0,
}
ESTIMATORS = [*EXPECTED_CALLS, "sparsemax"]


def run_dir(out: Path, estimator: str, seed: int = 0) -> Path:
    return out / "ssvae" / estimator / f"seed{seed}"


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_run_tiny_profile_records_everything(
    estimator: str, data_env: Path, tmp_path: Path
) -> None:
    code = main(
        [
            "run",
            "ssvae",
            "--estimator",
            estimator,
            "--seed",
            "3",
            "--out",
            str(tmp_path),
            "profile=tiny",
        ]
    )
    assert code == 0
    d = run_dir(tmp_path, estimator, 3)
    result = json.loads((d / "metrics.json").read_text())
    assert (result["task"], result["estimator"], result["seed"], result["profile"]) == (
        "ssvae",
        estimator,
        3,
        "tiny",
    )
    m = result["metrics"]
    assert 0.0 <= m["test/acc"] <= 1.0
    assert 0 < m["test/neg_elbo"] < math.inf
    if estimator == "sparsemax":
        assert 1.0 <= m["decoder_calls"] <= 10.0
    else:
        assert m["decoder_calls"] == EXPECTED_CALLS[estimator]
    config = yaml.safe_load((d / "config.yaml").read_text())
    assert (
        config["estimator"] == estimator
        and config["seed"] == 3
        and config["data"]["n_labelled"] == 32
    )
    info = json.loads((d / "run.json").read_text())
    assert info["seed"] == 3 and set(info["git"]) == {"commit", "dirty"}
    assert info["versions"]["torch"] == importlib.metadata.version("torch")
    assert "--estimator " + estimator in (d / "command.txt").read_text()
    ckpt = torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 2 + 4)  # end of the last epoch
    assert ckpt["hyper_parameters"]["config"]["estimator"] == estimator
    warm = torch.load(d / "warmstart.ckpt", weights_only=True)
    assert warm["epoch"] == 0 and "classifier.0.weight" in warm["state_dict"]
    rows = csv_rows(d)
    # epoch 0 is the labelled-only warm start: no estimator call, hence no decoder calls logged
    assert all(not r.get("train/decoder_calls") for r in rows if r["epoch"] == "0")
    assert any(r.get("train/decoder_calls") for r in rows if r["epoch"] == "1")
    assert any(r.get("test_epoch/neg_elbo") for r in rows)


def test_existing_run_needs_resume(
    data_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", "ssvae", "--estimator", "softmax", "--out", str(tmp_path), "profile=tiny"]
    assert main(args) == 0
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0  # finished with the same settings: nothing to do


def test_resume_continues_from_the_last_checkpoint(data_env: Path, tmp_path: Path) -> None:
    base = [
        "run",
        "ssvae",
        "--estimator",
        "sfe",
        "--out",
        str(tmp_path),
        "profile=tiny",
        "trainer.max_epochs=6",
    ]
    assert main([*base, "trainer.max_steps=3"]) == 0
    d = run_dir(tmp_path, "sfe")
    assert torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    first = json.loads((d / "metrics.json").read_text())
    assert first["global_step"] == 3
    assert main([*base, "trainer.max_steps=8", "--resume"]) == 0
    second = json.loads((d / "metrics.json").read_text())
    assert second["global_step"] == 8
    steps = [int(r["step"]) for r in csv_rows(d) if r.get("train/loss") or r.get("warmstart/loss")]
    assert max(steps) >= 7 and len(list((d / "csv").glob("version_*"))) == 2
    assert len((d / "command.txt").read_text().splitlines()) == 2
    info = json.loads((d / "run.json").read_text())
    assert len(info["attempts"]) == 2 and "finished" in info
    assert info["started"] == info["attempts"][0]["started"] <= info["attempts"][1]["started"]
    assert [(a["outcome"], a["global_step"]) for a in info["attempts"]] == [
        ("finished", 3), ("finished", 8)]
    assert all(a["cpu_s"] > 0 and a["wall_s"] > 0 for a in info["attempts"])
    assert info["compute"]["attempts_not_timed"] == 0
    from latentgrad.experiments.config import ConfigError
    from latentgrad.experiments.runner import run

    with pytest.raises(ConfigError, match="differs"):
        run("ssvae", "sfe", 0, {"profile": "tiny", "optim": {"lr": 0.5}}, out=tmp_path, resume=True)


def _change_saved_setting(d: Path, key: str, value: object) -> None:
    """Edit ``estimator_args.<key>`` in a run's ``config.yaml`` and its last checkpoint, as if the
    run had been started by a version whose task config had another default."""
    saved = yaml.safe_load((d / "config.yaml").read_text())
    saved["estimator_args"][key] = value
    (d / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    ckpt_path = d / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    ckpt["hyper_parameters"]["config"]["estimator_args"][key] = value
    torch.save(ckpt, ckpt_path)


@pytest.mark.parametrize("entry", ["run", "sweep"])
@pytest.mark.parametrize(("estimator", "resumes"), [("sfe", True), ("nvil", False)])
def test_a_changed_default_the_estimator_does_not_read_does_not_block_resume(
    tmp_path: Path, estimator: str, resumes: bool, entry: str
) -> None:
    """NVIL's baseline network (``estimator_args.nvil_hidden``) changed in the task config after
    other estimators' runs started: SFE does not read it and resumes (``run --resume`` and
    ``sweep``); NVIL's own run is refused, naming the setting."""
    from latentgrad.experiments.config import ConfigError
    from latentgrad.experiments.runner import run
    from latentgrad.experiments.sweep import sweep

    first = {"profile": "tiny", "trainer": {"max_epochs": 20, "max_steps": 3}}
    run("signal_game", estimator, 0, first, out=tmp_path)
    d = tmp_path / "signal_game" / estimator / "seed0"
    _change_saved_setting(d, "nvil_hidden", [3, 3])

    def resume() -> int:
        if entry == "run":
            longer = {"profile": "tiny", "trainer": {"max_epochs": 20, "max_steps": 5}}
            return run("signal_game", estimator, 0, longer, out=tmp_path,
                       resume=True)["global_step"]
        longer_args = ["profile=tiny", "trainer.max_epochs=20", "trainer.max_steps=5"]
        assert sweep("signal_game", [estimator], [0], longer_args, out=str(tmp_path)) == 0
        return json.loads((d / "metrics.json").read_text())["global_step"]

    if resumes:
        assert resume() == 5
    else:
        with pytest.raises(ConfigError, match=r"estimator_args\.nvil_hidden \(\[3, 3\] saved"):
            resume()


def test_killed_run_resumes_without_losing_finished_epochs(data_env: Path, tmp_path: Path) -> None:
    """SIGKILL one optimizer step into the third epoch (after the checkpoint of the second: the
    tiny profile's warm-start epoch of 32 // 16 steps, then main epochs of 64 // 16 steps); the
    resumed run keeps both finished epochs and trains exactly one more. The kill point is a step
    count (tests/experiments/_kill.py), not a wall-clock deadline, so a loaded machine only
    makes the test slower."""
    warm_steps, steps_per_epoch = 32 // 16, 64 // 16
    args = ["run", "ssvae", "--estimator", "softmax", "--out", str(tmp_path), "profile=tiny",
            "trainer.max_epochs=1000"]  # fmt: skip
    kill = [sys.executable, str(Path(__file__).parent / "_kill.py"), "step",
            str(warm_steps + steps_per_epoch + 1), *args]  # fmt: skip
    proc = subprocess.run(kill, capture_output=True, text=True, env=os.environ, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpt = run_dir(tmp_path, "softmax") / "checkpoints" / "last.ckpt"
    killed_at = torch.load(ckpt, weights_only=True)
    assert (killed_at["epoch"], killed_at["global_step"]) == (1, warm_steps + steps_per_epoch)
    code = main(
        ["run", "ssvae", "--estimator", "softmax", "--out", str(tmp_path), "profile=tiny",
         f"trainer.max_epochs={killed_at['epoch'] + 2}", "--resume"]
    )  # fmt: skip
    assert code == 0
    result = json.loads((run_dir(tmp_path, "softmax") / "metrics.json").read_text())
    # the checkpoint was written at the end of epoch killed_at["epoch"]: exactly one more epoch runs
    assert result["epochs"] == killed_at["epoch"] + 2
    assert result["global_step"] == killed_at["global_step"] + steps_per_epoch


def test_demo_trains_three_estimators_and_prints_the_table(
    data_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from latentgrad.experiments.demo import DEMO_ESTIMATORS, demo

    assert demo(str(tmp_path), str(data_env), seed=0, profile="tiny") == 0
    out = capsys.readouterr().out
    table = (tmp_path / "report.md").read_text()
    for est in DEMO_ESTIMATORS:
        assert f"| {est} | 1 (0) |" in table
        metrics = json.loads((run_dir(tmp_path, est) / "metrics.json").read_text())["metrics"]
        row = next(line for line in out.splitlines() if line.startswith(f"{est} "))
        assert f"{metrics['test/neg_elbo']:.2f}" in row and f"{metrics['decoder_calls']:.2f}" in row
    assert "What to look at:" in out and "Plots:" in out


def test_warm_start_keeps_best_validation_weights_then_fresh_adam(
    data_env: Path, tmp_path: Path
) -> None:
    args = ["run", "ssvae", "--estimator", "sfe", "--out", str(tmp_path), "profile=tiny"]
    assert main([*args, "optim.warmstart_epochs=3", "trainer.max_epochs=5"]) == 0
    d = run_dir(tmp_path, "sfe")
    val_acc = {int(r["epoch"]): float(r["val/acc"]) for r in csv_rows(d) if r.get("val/acc")}
    warm = [val_acc[e] for e in range(3)]
    best = warm.index(max(warm))  # first epoch reaching the best warm-start accuracy
    result = json.loads((d / "metrics.json").read_text())
    assert result["metrics"]["warmstart_best_epoch"] == best
    assert result["metrics"]["warmstart_val_acc"] == pytest.approx(max(warm))
    assert torch.load(d / "warmstart.ckpt", weights_only=True)["epoch"] == best
    ckpt = torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)
    opt = ckpt["optimizer_states"][0]
    group = opt["param_groups"][0]
    assert group["lr"] == 1e-4 and group["weight_decay"] == 1e-5  # the sfe main-phase settings
    # Adam's moments were reset at the switch: its step count covers the main phase only
    warm_steps, main_steps = 3 * (32 // 16), 2 * (64 // 16)
    assert ckpt["global_step"] == warm_steps + main_steps
    assert int(opt["state"][0]["step"]) == main_steps


@contextmanager
def sigterm_run(
    tmp_path: Path, point: str, n: int, *overrides: str
) -> Iterator[tuple[subprocess.CompletedProcess[str], Path]]:
    """A small ssvae softmax run (epoch checkpoints only) run once uninterrupted and once stopped
    by ``_kill.py POINT N``: checks that the stopped one exited 143 without ``metrics.json`` and
    yields its process and run folder; after the caller's checks, resumes it with ``--resume``
    and checks that it ends bit-identical to the uninterrupted run."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _kill import run_args

    from latentgrad.experiments.stopping import STOPPED_EXIT_CODE

    def args(out: Path) -> list[str]:
        return [*run_args("ssvae", "softmax", out), "trainer.checkpoint_every_n_steps=0",
                *overrides]  # fmt: skip

    assert main(args(tmp_path / "reference")) == 0
    out = tmp_path / "stopped"
    stop = [sys.executable, str(Path(__file__).parent / "_kill.py"), point, str(n), *args(out)]
    proc = subprocess.run(stop, capture_output=True, text=True, env=os.environ, timeout=600)
    assert proc.returncode == STOPPED_EXIT_CODE, proc.stderr[-2000:]
    d = run_dir(out, "softmax")
    assert not (d / "metrics.json").exists()
    yield proc, d
    assert main([*args(out), "--resume"]) == 0
    metrics = (run_dir(p, "softmax") / "metrics.json" for p in (tmp_path / "reference", out))
    assert next(metrics).read_bytes() == next(metrics).read_bytes()


def test_sigterm_stops_a_run_with_status_143_and_resume_ends_it_bit_identical(
    data_env: Path, tmp_path: Path
) -> None:
    """Lightning stops a run at the end of the batch that SIGTERM interrupted with a
    ``SystemExit`` without a code: the process exited 0 without ``metrics.json``, and a sweep
    reported the cell as finished. It exits 143 now, and ``--resume`` ends it as if never
    stopped. The stopped step is saved although only epochs are checkpointed: step 3 is the
    first of the second warm-start epoch, which a resume would otherwise train again."""
    with sigterm_run(tmp_path, "term", 3) as (proc, d):
        assert "stopped by SIGTERM at step 3" in proc.stderr and "--resume" in proc.stderr
        info = json.loads((d / "run.json").read_text())
        assert "finished" not in info
        assert (info["attempts"][-1]["outcome"], info["attempts"][-1]["global_step"]) == (
            "stopped by SIGTERM", 3)
        last = torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)
        assert last["global_step"] == 3


@pytest.mark.parametrize(("point", "n"), [("term", 2), ("term-validate", 1)])
def test_sigterm_in_an_epochs_last_batch_or_its_validation_stops_after_that_epoch(
    data_env: Path, tmp_path: Path, point: str, n: int
) -> None:
    """A SIGTERM in the last batch of an epoch (step 2: the first epoch has two) or in its
    validation (the first of its two batches) used to stop the run inside that validation,
    where no checkpoint is exact, so it resumed from the run's start. It is held until the
    epoch's end now: the validation finishes, the epoch is checkpointed, the run exits 143, and
    ``--resume`` ends it as if never stopped."""
    with sigterm_run(tmp_path, point, n, "data.eval_batch_size=32") as (_, d):
        last = torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)
        assert (last["epoch"], last["global_step"]) == (0, 2)
        val_epochs = [int(r["epoch"]) for r in csv_rows(d) if r.get("val/acc")]
        assert val_epochs == [0]  # the first epoch's validation ran to its end, once
