"""User tasks and estimators from a temporary package: entry points and ``--plugin``."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from latentgrad.experiments import plugins
from latentgrad.experiments.cli import main
from latentgrad.experiments.estimators import ESTIMATORS
from latentgrad.experiments.tasks.registry import TASKS

TOY_TASK = '''
"""A toy task: x ~ N(0, I_4), a categorical code z over 3 values, loss ||x - W z||^2."""

from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from latentgrad.experiments.config import build
from latentgrad.experiments.tasks.base import LatentTask, TaskConfig

CONFIG_FILE = Path(__file__).with_name("toy.yaml")


@dataclass
class DataConfig:
    n: int = 32
    batch_size: int = 8


@dataclass
class Config(TaskConfig):
    task: str = "toy"
    estimator: str = "sfe"
    data: DataConfig = field(default_factory=DataConfig)


class Data(L.LightningDataModule):
    def __init__(self, cfg):
        super().__init__()
        self.x = torch.randn(cfg.n, 4, generator=torch.Generator().manual_seed(0))
        self.batch_size = cfg.batch_size

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x), batch_size=self.batch_size)

    test_dataloader = val_dataloader


class Toy(LatentTask):
    config_class = Config

    def __init__(self, config, run_dir=None):
        super().__init__(config, run_dir)
        self.encoder = torch.nn.Linear(4, 3)
        self.decoder = torch.nn.Linear(3, 4)
        self.estimator = self.make_estimator(3, 4)

    def loss_fn(self, x):
        return lambda z, rows: (x[rows] - self.decoder(z)).square().sum(-1)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        out = self.estimate(self.encoder(x), self.loss_fn(x), x)
        self.record_step(out)
        self.log_dict(self.step_logs(out))
        return out.loss

    def validation_step(self, batch, batch_idx):
        (x,) = batch
        self.log("val/loss", self.readings(self.encoder(x), self.loss_fn(x), x)[0]["mode"].mean())

    def test_step(self, batch, batch_idx):
        (x,) = batch
        self.log("test/loss", self.readings(self.encoder(x), self.loss_fn(x), x)[0]["mode"].mean())


def build_run(config, run_dir):
    return Toy(config, run_dir), Data(build(Config, config).data)


REPORT_METRICS = {"test/loss": ("test loss", False)}
CURVE_METRICS = ("val/loss",)
'''

TOY_YAML = """
defaults:
  trainer: {max_epochs: 2, log_every_n_steps: 1, progress_bar: false, num_threads: 1}
estimators:
  sfe: {}
  softmax: {optim: {lr: 0.01}}
profiles:
  tiny: {data: {n: 16}}
"""

TOY_ESTIMATOR = '''
from latentgrad.estimators.score_function import ScoreFunction
from latentgrad.experiments.estimators import EstimatorSpec


def _plain(cfg, num_classes, features_dim):
    return ScoreFunction(baseline=None, entropy_coeff=cfg.entropy_coeff)


SPEC = EstimatorSpec(_plain, "softmax", "toy: score function without baseline",
                     args=("entropy_coeff",))
'''

ENTRY_POINTS = """
[latentgrad.tasks]
toy = toyplug.task

[latentgrad.estimators]
plain_sfe = toyplug.estimator:SPEC
"""


@pytest.fixture
def toy_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``toyplug`` (a task, an estimator, a ``--plugin`` module) importable here and in
    subprocesses; the registries are restored afterwards."""
    root = tmp_path / "site"
    pkg = root / "toyplug"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "task.py").write_text(TOY_TASK)
    (pkg / "toy.yaml").write_text(TOY_YAML)
    (pkg / "estimator.py").write_text(textwrap.dedent(TOY_ESTIMATOR))
    (pkg / "plugin.py").write_text(
        "from latentgrad.experiments.plugins import register_task\n"
        "register_task('toy', 'toyplug.task')\n"
    )
    monkeypatch.syspath_prepend(str(root))
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setattr(plugins, "_loaded_entry_points", False)
    tasks, estimators = dict(TASKS), dict(ESTIMATORS)
    yield root
    TASKS.clear()
    TASKS.update(tasks)
    ESTIMATORS.clear()
    ESTIMATORS.update(estimators)
    for name in [m for m in sys.modules if m.split(".")[0] == "toyplug"]:
        del sys.modules[name]


def _install_entry_points(root: Path) -> None:
    """What installing a distribution that declares the entry points leaves on sys.path."""
    info = root / "toyplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)


def test_entry_point_task_and_estimator_list_run_sweep_and_report(
    toy_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _install_entry_points(toy_package)
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "toy  (profiles: tiny)" in listing
    assert "plain_sfe            toy: score function without baseline" in listing
    assert "ssvae  (profiles:" in listing  # built-in tasks stay
    out = tmp_path / "runs"
    assert main(["run", "toy", "--estimator", "plain_sfe", "--out", str(out), "profile=tiny"]) == 0
    result = json.loads((out / "toy" / "plain_sfe" / "seed0" / "metrics.json").read_text())
    assert result["global_step"] == 2 * 2 and result["metrics"]["test/loss"] > 0
    code = main(["sweep", "toy", "--estimators", "sfe,softmax", "--seeds", "1", "--out", str(out),
                 "--workers", "2", "profile=tiny"])  # fmt: skip
    sweep_out = capsys.readouterr().out
    assert code == 0, sweep_out
    assert "2 finished, 0 skipped (already done), 0 failed" in sweep_out
    assert "[sweep toy 2/2] finished" in sweep_out
    assert main(["report", str(out / "toy")]) == 0
    report = (out / "toy" / "report.md").read_text()
    assert "test loss" in report and "plain_sfe" in report and "softmax" in report


def test_plugin_module_registers_a_task_for_this_command_only(
    toy_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "runs")
    args = ["run", "toy", "--estimator", "softmax", "--out", out, "profile=tiny"]
    assert main(args) == 2
    assert "task must be one of" in capsys.readouterr().err
    assert main(["--plugin", "toyplug.plugin", *args]) == 0
    capsys.readouterr()
    assert main(["--plugin", "toyplug.nothing", "list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after Lightning's stale log lines)
    assert err.startswith("latentgrad list: error: --plugin toyplug.nothing: cannot import")
