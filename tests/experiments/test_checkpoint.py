"""Atomic writes, orphan temp files, and the choice of the checkpoint to resume from."""

from __future__ import annotations

import os
import shutil
import warnings
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from latentgrad.experiments import checkpoint as ck
from latentgrad.experiments.cli import main


def test_interrupted_save_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.ckpt"
    ck.atomic_torch_save({"step": torch.tensor(1)}, path)

    def crash(obj: object, fh: object) -> None:
        fh.write(b"partial")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ck.atomic_torch_save({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert int(torch.load(path, weights_only=True)["step"]) == 1
    assert list(tmp_path.iterdir()) == [path]  # the temp file was removed


def test_checkpoint_io_loads_weights_only(tmp_path: Path) -> None:
    io = ck.AtomicCheckpointIO()
    path = tmp_path / "c.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "note": "ok"}, path)
    assert io.load_checkpoint(path)["note"] == "ok"

    io.save_checkpoint({"obj": Fraction(1, 3)}, tmp_path / "bad.ckpt")  # not an allowed type
    with pytest.raises(Exception, match=r"[Ww]eights only"):
        io.load_checkpoint(tmp_path / "bad.ckpt")
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(tmp_path / "missing.ckpt")


def _training_state(step: int) -> dict:
    callbacks = {"ModelCheckpoint{}": {"best_model_path": "", "last_model_path": ""}}
    return {"state_dict": {"w": torch.full((2,), float(step))}, "loops": {}, "global_step": step,
            "callbacks": callbacks}  # fmt: skip


def test_orphan_temp_files_are_removed_and_nothing_else(tmp_path: Path) -> None:
    orphan = tmp_path / ".epoch=1-step=6.ckpt.k2j4x.tmp"
    orphan.write_bytes(b"half a checkpoint")
    keep = [tmp_path / "last.ckpt", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for f in keep:
        f.write_bytes(b"x")
    assert ck.remove_temp_files(tmp_path) == [orphan]
    assert sorted(tmp_path.iterdir()) == sorted(keep)


@pytest.mark.parametrize("damage", ["truncated", "empty", "corrupted", "missing"])
def test_unusable_last_checkpoint_falls_back_to_the_newest_intact_one(
    damage: str, tmp_path: Path
) -> None:
    ck.atomic_torch_save(_training_state(4), tmp_path / "epoch=0-step=4.ckpt")
    ck.atomic_torch_save(_training_state(6), tmp_path / "epoch=1-step=6.ckpt")
    last = tmp_path / "last.ckpt"
    ck.atomic_torch_save(_training_state(8), last)
    data = last.read_bytes()
    if damage == "truncated":
        last.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        last.write_bytes(b"")
    elif damage == "corrupted":
        last.write_bytes(bytes(b ^ 0x5A for b in data[:64]) + data[64:])
    else:
        last.unlink()
    with pytest.warns(UserWarning, match=r"last\.ckpt is unusable .*epoch=1-step=6\.ckpt"):
        chosen = ck.resume_checkpoint(tmp_path)
    assert chosen == tmp_path / "epoch=1-step=6.ckpt"
    assert ck.prepare_resume(tmp_path, chosen) == last
    # last.ckpt is now the step-6 state; the periodic files it does not manage are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    restored = torch.load(last, weights_only=True)
    assert int(restored["global_step"]) == 6
    # ModelCheckpoint then overwrites last.ckpt instead of writing last-v1.ckpt beside it
    assert restored["callbacks"]["ModelCheckpoint{}"]["last_model_path"] == os.path.realpath(last)


def test_a_last_checkpoint_of_random_bytes_is_named_damaged_without_torchs_advice(
        tmp_path: Path) -> None:
    """torch's weights-only error advises re-running with weights_only=False: wrong for bad
    bytes and unsafe for a foreign file; the warning says what the file is instead."""
    ck.atomic_torch_save(_training_state(6), tmp_path / "epoch=1-step=6.ckpt")
    (tmp_path / "last.ckpt").write_bytes(bytes(range(256)) * 8)
    with pytest.warns(UserWarning) as record:
        ck.resume_checkpoint(tmp_path)
    message = str(record[0].message)
    assert "damaged, or not a checkpoint that loads with weights_only=True" in message
    assert "weights_only` set to `False`" not in message


def test_intact_last_checkpoint_is_chosen_without_warning(tmp_path: Path) -> None:
    ck.atomic_torch_save(_training_state(6), tmp_path / "epoch=1-step=6.ckpt")
    ck.atomic_torch_save(_training_state(6), tmp_path / "last.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ck.resume_checkpoint(tmp_path) == tmp_path / "last.ckpt"
    assert ck.resume_checkpoint(tmp_path / "nothing here") is None


def test_no_intact_checkpoint_names_every_file(tmp_path: Path) -> None:
    (tmp_path / "last.ckpt").write_bytes(b"")
    torch.save({"just": "a dict"}, tmp_path / "other.ckpt")
    with pytest.raises(ck.CheckpointError, match=r"last\.ckpt: .*other\.ckpt: not a training"):
        ck.resume_checkpoint(tmp_path)


@pytest.mark.parametrize("payload", [5, torch.zeros(3), "text"], ids=["int", "tensor", "str"])
def test_a_checkpoint_that_is_not_a_mapping_is_unusable_not_a_crash(payload, tmp_path):
    torch.save(payload, tmp_path / "last.ckpt")
    kind = type(payload).__name__
    with pytest.raises(ck.CheckpointError, match=f"not a training checkpoint \\(a {kind}, not"):
        ck.resume_checkpoint(tmp_path)


def _sg(tmp_path: Path, *extra: str) -> list[str]:
    return ["run", "signal_game", "--estimator", "sfe", "--out", str(tmp_path), "profile=tiny",
            *extra]  # fmt: skip


def test_resume_cleans_temp_files_and_survives_a_corrupted_last_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_sg(tmp_path, "trainer.checkpoint_every_n_steps=2")) == 0
    folder = tmp_path / "signal_game" / "sfe" / "seed0" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=1-step=6.ckpt", "last.ckpt"]
    (folder / "last.ckpt").write_bytes((folder / "last.ckpt").read_bytes()[:1000])
    (folder / ".epoch=1-step=6.ckpt.x1y2z3.tmp").write_bytes(b"killed mid-write")
    with pytest.warns(UserWarning, match=r"last\.ckpt is unusable.*epoch=1-step=6\.ckpt"):
        code = main(_sg(tmp_path, "trainer.checkpoint_every_n_steps=2", "trainer.max_epochs=3",
                        "--resume"))  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=2-step=8.ckpt", "last.ckpt"]

    for file in folder.iterdir():
        file.write_bytes(b"")
    capsys.readouterr()
    code = main(_sg(tmp_path, "trainer.checkpoint_every_n_steps=2", "trainer.max_epochs=4",
                    "--resume"))  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "no intact checkpoint" in err and "last.ckpt" in err


def test_a_checkpoint_of_another_config_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A last.ckpt copied in from a run of another config failed inside load_state_dict with a
    traceback, after the run had recorded a new attempt."""
    other, mine = tmp_path / "other", tmp_path / "mine"
    assert main(_sg(other, "model.hidden_dim=16")) == 0
    assert main(_sg(mine)) == 0
    cell = mine / "signal_game" / "sfe" / "seed0"
    for file in (cell / "checkpoints").iterdir():
        file.unlink()
    shutil.copy(other / "signal_game/sfe/seed0/checkpoints/last.ckpt", cell / "checkpoints")
    records = (cell / "run.json").read_bytes()
    capsys.readouterr()
    assert main(_sg(mine, "trainer.max_epochs=3", "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "written by a run of another config" in err
    assert "differs in model.hidden_dim (" in err  # the key, not only its section
    assert (cell / "run.json").read_bytes() == records


@pytest.mark.parametrize(
    ("shorter", "message"),
    [
        ("trainer.max_epochs=1", "trainer.max_epochs: .* has already trained 2 epochs"),
        ("trainer.max_steps=3", "trainer.max_steps: .* has already trained 6 steps"),
    ],
)
def test_a_resume_that_would_shorten_the_run_is_refused_before_anything_is_written(
    shorter: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lower max_epochs than the checkpoint's failed inside Lightning with a traceback after
    config.yaml had been rewritten; a lower max_steps silently re-tested the longer model and
    recorded the lower value in config.yaml, so a later sweep skipped the cell as finished."""
    import re

    assert main(_sg(tmp_path, "trainer.max_epochs=2")) == 0
    cell = tmp_path / "signal_game" / "sfe" / "seed0"
    before = {p: p.read_bytes() for p in cell.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(_sg(tmp_path, "trainer.max_epochs=2", shorter, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert {p: p.read_bytes() for p in cell.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    "content", [b"{{{ : [", b"", b"- a list\n", b"\xff\xfe"], ids=["yaml", "empty", "list", "bytes"]
)
def test_an_unreadable_saved_config_is_named_not_a_traceback(
    content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A damaged config.yaml in the run folder raised yaml's ParserError, a TypeError or a
    UnicodeDecodeError from ``run --resume`` and ``sweep`` (and ``report``, where unparsable)."""
    cell = tmp_path / "signal_game" / "sfe" / "seed0"
    cell.mkdir(parents=True)
    (cell / "config.yaml").write_bytes(content)
    (cell / "metrics.json").write_text(
        '{"task": "signal_game", "estimator": "sfe", "seed": 0, "profile": "tiny", "metrics": {}}'
    )
    commands = [
        _sg(tmp_path, "--resume"),
        ["sweep", "signal_game", "--estimators", "sfe", "--seeds", "0", "--out", str(tmp_path),
         "profile=tiny"],
    ]  # fmt: skip
    if content in (b"{{{ : [", b"\xff\xfe"):  # the report reads a warm start from it, or 0
        commands.append(["report", str(tmp_path), "--out", str(tmp_path / "report")])
    for argv in commands:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f"{cell / 'config.yaml'} is not a readable run config" in err, err
