"""The task skeleton: config sections, estimator construction, decoder-call accounting and the
test-time readings, on a toy task with a categorical latent."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from latentgrad.estimators.base import EstimatorOutput
from latentgrad.experiments.config import ConfigError, build, to_dict
from latentgrad.experiments.tasks.base import LatentTask, TaskConfig

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
