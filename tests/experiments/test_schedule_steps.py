"""Temperature schedules advance exactly once per optimizer step that used them, in every way a
training loop is written: the experiment skeleton (``LatentTask`` under a Lightning ``Trainer``),
plain user Lightning code, and a hand-written loop (eager and compiled), with and without gradient
accumulation."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import lightning as L
import pytest
import torch

import latentgrad
from latentgrad.estimators import ExponentialDecay, GumbelSoftmax
from latentgrad.experiments.config import build, to_dict
from latentgrad.experiments.tasks.base import LatentTask, TaskConfig, current_temperatures

K, FEATURES, BATCHES = 5, 3, 12


def loss_fn(z, rows):
    return (z - 0.3).square().sum(-1)


@dataclass
class ToyConfig(TaskConfig):
    task: str = "toy"
    estimator: str = "st_gumbel"


class SkeletonTask(LatentTask):
    """An experiment task: the estimator comes from the registry (annealed ``ExponentialDecay``)."""

    config_class = ToyConfig

    def __init__(self) -> None:
        super().__init__(to_dict(build(ToyConfig, {})), None, width=K)
        self.estimator = self.make_estimator(K, FEATURES)
        self.encoder = torch.nn.Linear(FEATURES, K)

    def training_step(self, batch, batch_idx):
        return self.estimate(self.encoder(batch[0]), loss_fn).loss


class UserModule(L.LightningModule):
    """What a user writes: an estimator with a schedule, no stepping code, no callback."""

    def __init__(self) -> None:
        super().__init__()
        schedule = ExponentialDecay(1.0, 0.1, every=1, floor=0.01)
        self.estimator = GumbelSoftmax(schedule, straight_through=True)
        self.encoder = torch.nn.Linear(FEATURES, K)

    def training_step(self, batch, batch_idx):
        return self.estimator(self.encoder(batch[0]), loss_fn).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(module: L.LightningModule, accumulate: int) -> int:
    """Train ``BATCHES`` batches; return the number of optimizer steps taken."""
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(4 * BATCHES, FEATURES)), batch_size=4
    )
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=BATCHES, accumulate_grad_batches=accumulate,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data)
    return trainer.global_step


@pytest.mark.parametrize("accumulate", [1, 3])
@pytest.mark.parametrize("make", [SkeletonTask, UserModule], ids=["skeleton", "user_lightning"])
def test_lightning_training_advances_the_schedule_once_per_optimizer_step(make, accumulate):
    module = make()
    optimizer_steps = _fit(module, accumulate)
    assert optimizer_steps == BATCHES // accumulate
    assert int(module.estimator.temperature.num_steps) == optimizer_steps


def test_the_skeleton_logs_temperatures_without_marking_the_schedule_used():
    task = SkeletonTask().train()
    schedule = task.estimator.temperature
    (tau,) = current_temperatures(task.estimator)
    torch.testing.assert_close(tau, torch.tensor(schedule.tau0, dtype=torch.float64))
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1)
    optimizer.step()
    assert int(schedule.num_steps) == 0


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_hand_written_loop_advances_the_schedule_once_per_optimizer_step(compiled, accumulate):
    module = UserModule()
    optimizer = module.configure_optimizers()

    def step(x):  # the estimator call itself (not through the LightningModule)
        return module.estimator(module.encoder(x), loss_fn).loss

    taus = []
    # inside the block: torch.compile switches torch.distributions' validation off globally,
    # and leaving the block restores it
    with latentgrad.validate_args(False):
        if compiled:
            torch._dynamo.reset()
            step = torch.compile(step, backend="aot_eager", fullgraph=True)
        for batch in range(BATCHES):
            step(torch.randn(4, FEATURES)).backward()
            if (batch + 1) % accumulate == 0:
                optimizer.step()
                optimizer.zero_grad()
                taus.append(float(current_temperatures(module.estimator)[0]))
    steps = BATCHES // accumulate
    assert int(module.estimator.temperature.num_steps) == steps
    # the temperature the loop saw after optimizer step n is tau0 * exp(-rate * n)
    expected = [max(0.01, torch.exp(torch.tensor(-0.1 * n, dtype=torch.float64)).item())
                for n in range(1, steps + 1)]
    assert taus == pytest.approx(expected, rel=1e-12)
