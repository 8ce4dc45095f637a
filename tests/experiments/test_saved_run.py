"""load_run rebuilds a trained run's model with its checkpoint's weights, safely, and names what
is wrong with a folder or checkpoint that cannot give one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from latentgrad.experiments.checkpoint import CheckpointError
from latentgrad.experiments.cli import main
from latentgrad.experiments.config import ConfigError
from latentgrad.experiments.saved_run import load_run


def _train(out: Path, *extra: str) -> Path:
    argv = ["run", "signal_game", "--estimator", "sfe", "--out", str(out), "profile=tiny",
            "trainer.checkpoint_every_n_steps=2", *extra]  # fmt: skip
    assert main(argv) == 0
    return out / "signal_game" / "sfe" / "seed0"


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("runs"))


def _same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    mine = model.state_dict()
    return mine.keys() == state.keys() and all(torch.equal(mine[k], state[k]) for k in state)


def test_the_model_has_the_last_checkpoints_weights_and_is_in_eval_mode(cell: Path) -> None:
    model, data = load_run(cell)
    saved = torch.load(cell / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert _same_weights(model, saved)
    assert not model.training and not any(m.training for m in model.modules())
    data.setup()
    assert next(iter(data.val_dataloader())) is not None


def test_training_changed_the_weights_that_are_loaded(cell: Path) -> None:
    from latentgrad.experiments.runner import saved_config
    from latentgrad.experiments.tasks.signal_game import build_run

    untrained, _ = build_run(saved_config(cell / "config.yaml"), None)
    saved = torch.load(cell / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not _same_weights(untrained, saved)  # so the test above can fail


def test_another_checkpoint_of_the_run_can_be_chosen(cell: Path) -> None:
    (periodic,) = [p for p in (cell / "checkpoints").iterdir() if p.name != "last.ckpt"]
    model, _ = load_run(cell, checkpoint=periodic)
    assert _same_weights(model, torch.load(periodic, weights_only=True)["state_dict"])


def test_a_folder_without_a_run_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"run_dir: .*config\.yaml does not exist"):
        load_run(tmp_path)


def test_a_config_of_no_known_task_is_named(cell: Path, tmp_path: Path) -> None:
    shutil.copytree(cell, tmp_path / "cell")
    config = tmp_path / "cell" / "config.yaml"
    config.write_text(config.read_text().replace("task: signal_game", "task: no_such_task"))
    with pytest.raises(ConfigError, match=r"config\.yaml: task must be one of .*'no_such_task'"):
        load_run(tmp_path / "cell")


def test_a_missing_checkpoint_is_named(cell: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"checkpoint: .*nothing\.ckpt does not exist"):
        load_run(cell, checkpoint=tmp_path / "nothing.ckpt")


class _Payload:
    """A class: unpickling it would run code, which weights_only refuses."""


def test_a_checkpoint_that_needs_unpickling_code_is_refused_not_run(
    cell: Path, tmp_path: Path
) -> None:
    ckpt = tmp_path / "foreign.ckpt"
    state = torch.load(cell / "checkpoints" / "last.ckpt", weights_only=True)
    state["extra"] = _Payload()
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_run(cell, checkpoint=ckpt)


def test_weights_of_another_model_are_refused_with_the_mismatch(
    cell: Path, tmp_path: Path
) -> None:
    other = _train(tmp_path, "model.hidden_dim=16")
    with pytest.raises(CheckpointError, match=r"another model .*size mismatch"):
        load_run(cell, checkpoint=other / "checkpoints" / "last.ckpt")
