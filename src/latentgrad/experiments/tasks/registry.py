"""Task registry: a task is one module of ``experiments.tasks`` exposing ``Config`` (its dataclass
schema), ``build_run(config_dict, run_dir) -> (LightningModule, LightningDataModule)``,
``REPORT_METRICS`` and ``CURVE_METRICS``; its YAML lives in ``experiments/configs/<task>.yaml``.
``experiments.tasks.base`` is the skeleton tasks are built on (its docstring: how to add one)."""

from __future__ import annotations

import importlib
from types import ModuleType

TASKS = {
    "ssvae": "latentgrad.experiments.tasks.ssvae",
    "signal_game": "latentgrad.experiments.tasks.signal_game",
    "igr_vae": "latentgrad.experiments.tasks.igr_vae",
    "igr_sop": "latentgrad.experiments.tasks.igr_sop",
    "igr_countable": "latentgrad.experiments.tasks.igr_countable",
    "voting_regression": "latentgrad.experiments.tasks.voting_regression",
    "graph_layout": "latentgrad.experiments.tasks.graph_layout",
    "listops": "latentgrad.experiments.tasks.listops",
    "bitvector_vae": "latentgrad.experiments.tasks.bitvector_vae",
    "bitvector_vae_d128": "latentgrad.experiments.tasks.bitvector_vae",  # D = 128, own lrs
    "mixed_vae": "latentgrad.experiments.tasks.mixed_vae",
    "l2x": "latentgrad.experiments.tasks.l2x",
}


def get_task(name: str) -> ModuleType:
    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    return importlib.import_module(TASKS[name])
