"""A user's mistake on the command line: exit status 2, one line on stderr, nothing written."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import pytest
import torch

from latentgrad.experiments.cli import main
from latentgrad.experiments.data.idx import IDX_FILES

RUN = ["run", "ssvae", "--estimator", "softmax"]


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI, check status 2 and a single stderr line without a traceback; the line."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refuses the arguments themselves
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "no_such_task", "--estimator", "softmax"], "task must be one of ssvae"),
        ([*RUN, "--seed", "-1"], "--seed: must be >= 0, got -1"),
        ([*RUN, "--seed", "two"], "--seed: expected a non-negative integer"),
        ([*RUN, "optim.lr=inf"], "optim.lr: must be a finite number"),
        ([*RUN, "optim.lr=.nan"], "optim.lr: must be a finite number"),
        ([*RUN, "optim.lr=1" + "0" * 400], "optim.lr: must be a finite number"),
        ([*RUN, "profile=[tiny]"], "profile: unknown profile ['tiny']"),
        (["sweep", "ssvae", "--seeds", "1", "profile=[tiny]"], "profile: expected a profile name"),
        (
            ["run", "signal_game", "--estimator", "sfe", "profile=tiny",
             "estimator_args.baseline=bogus"],
            "the model cannot be built from this config: baseline must be one of",
        ),
        ([*RUN, "estimator_args.entropy_coeff=-.inf"], "estimator_args.entropy_coeff: must be a"),
        ([*RUN, "model.encoder_hidden=[4,"], "malformed YAML"),
        ([*RUN, "--accelerator", "bogus"], "invalid accelerator name"),
        ([*RUN, "--devices", "0"], "trainer.devices: must be >= 1"),
        ([*RUN, "--devices", "two"], "--devices: invalid int value"),
        ([*RUN, "--strategy", "bogus"], "invalid strategy name"),
        (
            ["run", "ssvae", "--estimator", "sparsemax", "estimator_args.temperature=0.5"],
            "estimator_args.temperature: does not apply to estimator 'sparsemax'",
        ),
        (
            ["sweep", "ssvae", "--estimators", "softmax,nope", "--seeds", "1"],
            "1 of 2 cells are invalid, none was started: nope/seed1",
        ),
        (
            [
                "sweep",
                "ssvae",
                "--estimators",
                "gumbel,sfe",
                "--seeds",
                "1",
                "estimator_args.k_ss=2",
            ],
            "gumbel/seed1: estimator_args.k_ss: does not apply",
        ),
        (["sweep", "ssvae", "--estimators", "softmax", "--seeds", "1,-3"], "--seeds"),
    ],
)
def test_user_mistakes_exit_2_with_one_line_and_write_nothing(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _one_line_error(capsys, [*argv, "--out", str(tmp_path / "runs")])
    assert message in line
    assert not (tmp_path / "runs").exists()


def test_malformed_config_file_names_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 0.1\n  weight_decay: [1,\n")
    line = _one_line_error(capsys, [*RUN, "--config", str(bad), "--out", str(tmp_path / "runs")])
    assert f"--config {bad}: malformed YAML (line 4" in line
    assert not (tmp_path / "runs").exists()
    line = _one_line_error(capsys, [*RUN, "--config", str(tmp_path), "--out", str(tmp_path / "r")])
    assert f"--config: file {tmp_path} is a folder, not a YAML file" in line


def test_config_file_with_a_key_twice_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    twice = tmp_path / "twice.yaml"
    twice.write_text("optim:\n  lr: 0.1\n  lr: 0.01\n")  # PyYAML alone keeps 0.01 silently
    line = _one_line_error(capsys, [*RUN, "--config", str(twice), "--out", str(tmp_path / "r")])
    assert f"--config {twice}: malformed YAML (line 3, column 3): duplicate key 'lr'" in line
    assert not (tmp_path / "r").exists()


def _fake_mnist(folder: Path, n: int = 200) -> None:
    """A small MNIST-format folder (gzip IDX files, random pixels)."""
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for (split, part), name in IDX_FILES.items():
        count = n if split == "train" else n // 2
        shape = (count, 28, 28) if part == "images" else (count,)
        high = 256 if part == "images" else 10
        data = torch.randint(0, high, shape, generator=gen, dtype=torch.uint8)
        header = bytes([0, 0, 0x08, len(shape)]) + struct.pack(f">{len(shape)}i", *shape)
        (folder / name).write_bytes(gzip.compress(header + data.numpy().tobytes()))


@pytest.mark.parametrize("damage", ["checksum", "truncated gzip", "not gzip"])
def test_damaged_data_files_exit_2_naming_the_file(
    damage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mnist = tmp_path / "data" / "mnist"
    _fake_mnist(mnist)
    target = mnist / IDX_FILES[("train", "images")]
    if damage == "checksum":
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        (mnist / "SHA256SUMS").write_text(f"{digest[::-1]}  {target.name}\n")
        expected = f"checksum mismatch for {target}"
    elif damage == "truncated gzip":
        target.write_bytes(target.read_bytes()[:-100])
        expected = f"{target} is not a valid gzip file"
    else:
        target.write_bytes(b"garbage" * 10)
        expected = f"{target} is not a valid gzip file"
    monkeypatch.setenv("LATENTGRAD_DATA", str(tmp_path / "data"))
    line = _one_line_error(capsys, [*RUN, "profile=tiny", "--out", str(tmp_path / "runs")])
    assert expected in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["ssvae", "--estimator", "sum_and_sample", "estimator_args.k_ss=11"],
         "estimator_args.k_ss (11) exceeds the 10 values of the latent"),
        (["bitvector_vae", "--estimator", "topk_sparsemax", "model.latent_bits=3",
          "estimator_args.topk=9"],
         "estimator_args.topk (9) exceeds the 8 values of the latent"),
    ],
)
def test_a_k_above_the_latent_values_is_refused_before_training(
    argv: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The k best values of a latent must exist: the data-derived size is known once the model is
    built, which happens before the first step, not during it."""
    _fake_mnist(tmp_path / "data" / "mnist")
    monkeypatch.setenv("LATENTGRAD_DATA", str(tmp_path / "data"))
    line = _one_line_error(
        capsys, ["run", *argv, "profile=tiny", "--out", str(tmp_path / "runs")]
    )
    assert line.endswith(expected)
    assert not (tmp_path / "runs").exists()


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    import latentgrad

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"latentgrad {latentgrad.__version__}"


def test_out_under_a_file_and_a_damaged_metrics_file_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("x")
    line = _one_line_error(capsys, [*RUN, "profile=tiny", "--out", str(tmp_path / "afile" / "sub")])
    assert "--out: cannot create the run directory" in line
    cell = tmp_path / "runs" / "sfe" / "seed1"
    cell.mkdir(parents=True)
    (cell / "metrics.json").write_text('{"task": "signal_game", "estim')
    line = _one_line_error(capsys, ["report", str(tmp_path / "runs")])
    assert f"{cell / 'metrics.json'} is not a valid metrics.json" in line


@pytest.mark.parametrize(
    "how", [["trainer=3"], ["trainer.max_epochs=1", "trainer=[1]"], ["--config", "FILE"]]
)
def test_a_trainer_section_that_is_not_a_mapping_is_named(
    how: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``trainer=3`` crashed with an AttributeError in the huge-pages check of ``run``."""
    (tmp_path / "t.yaml").write_text("trainer: 3\n")
    how = [str(tmp_path / "t.yaml") if arg == "FILE" else arg for arg in how]
    line = _one_line_error(capsys, [*RUN, "profile=tiny", *how, "--out", str(tmp_path / "runs")])
    assert "trainer: expected a mapping of TrainerConfig fields" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"task": None}, "'task': expected str, got missing"),
        ({"metrics": None}, "'metrics': expected dict, got missing"),
        ({"seed": None}, "'seed': expected int, got missing"),
        ({"metrics": {"test/acc": "high"}}, "metrics['test/acc']: expected a number, got 'high'"),
        ({"task": "no_such_task"}, "task must be one of"),
    ],
    ids=["no task", "no metrics", "no seed", "text metric", "unknown task"],
)
def test_a_metrics_file_without_what_the_report_reads_is_named(
    edit: dict, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Such a metrics.json raised a KeyError, TypeError or ValueError from ``report``."""
    import json

    result = {"task": "signal_game", "estimator": "sfe", "seed": 0, "profile": "tiny",
              "metrics": {"test/acc": 0.5}}  # fmt: skip
    for key, value in edit.items():
        if value is None:
            del result[key]
        else:
            result[key] = value
    cell = tmp_path / "runs" / "sfe" / "seed0"
    cell.mkdir(parents=True)
    (cell / "metrics.json").write_text(json.dumps(result))
    line = _one_line_error(capsys, ["report", str(tmp_path / "runs")])
    assert str(cell / "metrics.json") in line and expected in line, line


@pytest.mark.parametrize("code", ["EROFS", "EACCES"])
def test_an_unwritable_output_folder_is_one_line(tmp_path: Path, capsys, monkeypatch, code):
    """A read-only file system or a folder without permission (as a non-root user meets them;
    simulated, since root bypasses permissions): one line naming the path and status 2 (a
    traceback and status 1 before; the handler in ``main`` serves every subcommand)."""
    import errno

    def refuse(self, *args, **kwargs):
        raise OSError(getattr(errno, code), "simulated", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    line = _one_line_error(capsys, [*RUN, "profile=tiny", "--out", str(tmp_path / "ro")])
    assert line.startswith("latentgrad run: error: cannot write") and str(tmp_path / "ro") in line


def test_a_sigterm_after_the_run_is_recorded_keeps_exit_status_0(tmp_path: Path) -> None:
    """The race the helper saw: a scheduler's SIGTERM arriving between the recorded finish and
    the exit turned the status into 143. Simulated with a run that returns at once and a SIGTERM
    sent right after main() returns, in a process whose entry point is main()."""
    import subprocess
    import sys

    script = (
        "import os, signal, sys\n"
        "import latentgrad.experiments.runner as runner\n"
        "runner.run = lambda *a, **k: {'metrics': {'x': 1.0}}\n"
        "from latentgrad.experiments.cli import main\n"
        "sys.argv = ['latentgrad', 'run', 'ssvae', '--estimator', 'sfe', 'profile=tiny']\n"
        "code = main()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finished ssvae/sfe/seed0" in done.stdout


@pytest.mark.parametrize("damage", ["checksum", "wrong label"])
def test_damaged_listops_file_is_a_data_error_not_a_config_error(
    damage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "listops"
    folder.mkdir()
    train = folder / "train.tsv"
    train.write_text("7\t[SM 9 8 ]\n")
    if damage == "checksum":
        (folder / "SHA256SUMS").write_text(f"{'0' * 64}  train.tsv\n")
        expected = f"checksum mismatch for {train}"
    else:
        train.write_text("7\t[SM 9 8 ]\n5\t[SM 9 8 ]\n")
        expected = f"{train}:2: label 5, but the expression gives 7"
    argv = ["run", "listops", "--estimator", "edges_sst", "profile=tiny", "data.source=tsv",
            f"data.path={folder}", "--out", str(tmp_path / "runs")]
    line = _one_line_error(capsys, argv)
    assert expected in line and "config" not in line
    assert not (tmp_path / "runs").exists()
