"""The task skeleton: config sections, estimator construction, decoder-call accounting and the
test-time readings, on a toy task with a categorical latent."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from latentgrad.estimators.base import EstimatorOutput
from latentgrad.experiments.config import ConfigError, build, to_dict
from latentgrad.experiments.tasks.base import BestWeights, LatentTask, TaskConfig, adam

K = 5


@dataclass
class ToyConfig(TaskConfig):
    task: str = "toy"
    estimator: str = "softmax"


class Toy(LatentTask):
    config_class = ToyConfig

    def __init__(self, config: dict) -> None:
        super().__init__(config, None, width=K)
        self.estimator = self.make_estimator(K, 3)
        self.table = torch.linspace(0.0, 1.0, K, dtype=torch.float64)

    def loss_fn(self, z, rows):
        return z @ self.table


def toy(estimator: str, **optim: float) -> Toy:
    return Toy(to_dict(build(ToyConfig, {"estimator": estimator, "optim": optim})))


def test_config_has_the_shared_sections_and_checks_the_estimator() -> None:
    cfg = build(ToyConfig, {"estimator": "sfe", "optim": {"lr": 0.01}})
    assert set(to_dict(cfg)) == {
        "task", "estimator", "seed", "profile", "optim", "estimator_args", "trainer"
    }
    with pytest.raises(ConfigError, match="estimator: must be one of"):
        build(ToyConfig, {"estimator": "nope"})
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        build(ToyConfig, {"optim": {"lr": 0.0}})


def test_optimizer_is_adam_with_the_configured_settings() -> None:
    model = toy("softmax", lr=0.01, weight_decay=0.5)
    model.w = torch.nn.Parameter(torch.zeros(2))
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["weight_decay"] == 0.5


def test_readings_mode_and_expected_for_exact_marginalization() -> None:
    model = toy("softmax").eval()
    scores = torch.tensor([[0.0, 2.0, 1.0, -1.0, 0.5], [3.0, 0.0, 0.0, 0.0, 0.0]],
                          dtype=torch.float64)
    readings, out = model.readings(scores, model.loss_fn)
    assert set(readings) == {"mode", "expected"}
    torch.testing.assert_close(readings["mode"], model.table[[1, 0]])
    torch.testing.assert_close(readings["expected"], scores.softmax(-1) @ model.table)
    assert out.support_size.tolist() == [K, K]


def test_readings_of_a_sampling_estimator_are_mode_and_a_fresh_sample() -> None:
    model = toy("sfe").eval()
    scores = torch.tensor([[0.0, 50.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    readings, _ = model.readings(scores, model.loss_fn)
    assert set(readings) == {"mode", "sample"}
    torch.testing.assert_close(readings["sample"], model.table[[1]])  # p(1) = 1 - 4e-22


def test_decoder_calls_accumulate_and_give_epoch_quantiles() -> None:
    model = toy("sparsemax")
    model.on_train_epoch_start()
    assert model.epoch_call_quantiles() == {}
    for calls in ([1, 2], [3, 4, 5]):
        n = len(calls)
        zeros = torch.zeros(n)
        model.record_step(EstimatorOutput(zeros.sum(), zeros, torch.tensor(calls), zeros))
    assert model.summary()["decoder_calls"] == 3.0
    assert model.epoch_call_quantiles() == {"q25": 2.0, "median": 3.0, "q75": 4.0}
    model.on_train_epoch_start()  # a new epoch starts a new list; the run's mean stays
    assert model.epoch_call_quantiles() == {}
    assert model.mean_decoder_calls() == 3.0


class Logged(Toy):
    """Logs ``gated`` only on ``logging_step()`` steps and ``always`` on every step."""

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.gated_steps: list[int] = []
        self.built_steps: list[int] = []

    def training_step(self, batch: object, batch_idx: int) -> torch.Tensor:
        value = batch[0].float().sum() + 0.0 * self.w
        self.log("always", value)
        if self.logging_step():
            self.log("gated", value)
            self.gated_steps.append(self.global_step)

        def built() -> dict[str, torch.Tensor]:
            self.built_steps.append(self.global_step)
            return {"built": value}

        self.log_train(built)
        return (self.w - 1.0) ** 2

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.arange(7.0)), batch_size=1)


def test_logging_step_holds_exactly_on_the_steps_the_logger_writes(tmp_path: Path) -> None:
    """Out of a trainer every step logs; in one, a metric logged only when ``logging_step()``
    holds reaches the CSV log at the same steps, with the same values, as one logged always; so
    does one built by ``log_train``'s callable, which is called on those steps only."""
    assert toy("softmax").logging_step()
    trainer = L.Trainer(max_epochs=2, log_every_n_steps=3, logger=CSVLogger(tmp_path),
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    model = Logged(to_dict(build(ToyConfig, {"estimator": "softmax"})))
    trainer.fit(model)
    with open(next(tmp_path.rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    assert [int(row["step"]) for row in rows] == model.gated_steps == [2, 5, 8, 11]  # of 0-13
    assert model.built_steps == model.gated_steps
    assert all(row["gated"] == row["built"] == row["always"] != "" for row in rows)


def test_adam_takes_the_fused_update_with_the_same_steps() -> None:
    """``adam`` is ``torch.optim.Adam`` with ``fused=True``: over a few steps with two parameter
    groups and weight decay, the parameters follow the per-tensor update (float64, so rounding
    differences stay far inside ``assert_close``'s tolerance)."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(3)]
    grads = [[torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in start]
             for _ in range(5)]

    def train(make: object) -> list[torch.Tensor]:
        params = [p.clone().requires_grad_() for p in start]
        groups = [{"params": params[:2], "lr": 0.1, "weight_decay": 0.01},
                  {"params": params[2:], "lr": 0.05}]
        opt = make(groups, betas=(0.8, 0.9))
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            opt.step()
        return params

    fast = train(adam)
    assert all(group["fused"] for group in adam(fast, lr=0.1).param_groups)
    for got, want in zip(fast, train(lambda g, **k: torch.optim.Adam(g, foreach=False, **k)),
                         strict=True):
        torch.testing.assert_close(got, want)


def test_best_weights_keep_the_best_validation_score_and_swap_in_for_a_block() -> None:
    """The weights of the best validation epoch (higher score is better) are what a block
    inside ``swapped`` sees; the module's own come back after it; ``state``/``load`` carry them
    through a checkpoint."""
    net = torch.nn.Linear(2, 1)
    best = BestWeights(("weight",))
    first = net.weight.detach().clone()
    for score, count in ((-3.0, 4), (-1.0, 2)):  # epoch mean -7/3
        best.add(torch.tensor(score), count)
    best.update(net, step=10)
    with torch.no_grad():
        net.weight.add_(1.0)
    best.add(torch.tensor(-2.5), 6)  # worse than -7/3: not kept
    best.update(net, step=20)
    assert best.step == 10 and best.value == pytest.approx(-7 / 3)
    with best.swapped(net):
        assert torch.equal(net.weight, first)
    assert torch.equal(net.weight, first + 1.0)
    restored = BestWeights(("weight",))
    restored.load(best.state())
    with restored.swapped(net):
        assert torch.equal(net.weight, first)
