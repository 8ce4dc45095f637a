"""A trained run rebuilt for inspection: its model with a checkpoint's weights, and its data.

``load_run(run_dir)`` reads the run's ``config.yaml``, builds the task's LightningModule and
LightningDataModule from it as training built them, and loads ``checkpoints/last.ckpt`` (or another
checkpoint) into the model with ``torch.load(weights_only=True)``: nothing in the file is executed.
For probes after training: what a sender sends, where a posterior puts its mass, how far samples
lie from the vertices.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from latentgrad.experiments.checkpoint import LAST, CheckpointError, load_training_checkpoint
from latentgrad.experiments.config import ConfigError
from latentgrad.experiments.runner import saved_config
from latentgrad.experiments.tasks.registry import get_task

CONFIG_FILE = "config.yaml"


def load_run(
    run_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None
) -> tuple[Any, Any]:
    """``(model, data)`` of the run in ``run_dir`` (a folder written by ``latentgrad run`` or
    ``sweep``, or exported with ``latentgrad export``).

    ``model`` is the task's LightningModule on the CPU, in eval mode, with the weights of
    ``checkpoint`` (default ``run_dir/checkpoints/last.ckpt``); ``data`` is its
    LightningDataModule, not yet set up (call ``data.setup()`` before its dataloaders). Data files
    are found as in training (the config's paths, else ``LATENTGRAD_DATA``).

    Raises ``FileNotFoundError`` for a missing config or checkpoint, ``ConfigError`` for a
    ``config.yaml`` that is not a run's, and ``CheckpointError`` for a checkpoint that does not
    load with ``weights_only=True`` or holds weights of another model.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"run_dir: {config_path} does not exist (expected a run folder, holding the "
            "config.yaml that latentgrad run or sweep writes)"
        )
    config = saved_config(config_path)
    try:
        module = get_task(config.get("task"))
    except ValueError as err:
        raise ConfigError(f"{config_path}: {err}") from None
    path = Path(checkpoint) if checkpoint is not None else run_dir / "checkpoints" / LAST
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    state = load_training_checkpoint(path)
    model, data = module.build_run(config, None)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        # torch's first line says only "Error(s) in loading state_dict"; the next names a tensor
        details = "; ".join(line.strip() for line in str(err).strip().splitlines()[1:3])
        raise CheckpointError(
            f"checkpoint: {path} holds weights of another model than {config_path} builds "
            f"({details})"
        ) from None
    model.eval()
    return model, data
