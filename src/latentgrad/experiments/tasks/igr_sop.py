"""Task ``igr_sop``: structured output prediction — the lower half of a binarised MNIST digit
from its upper half through two layers of stochastic binary units (Potapczynski et al. 2020,
§5.3; after Raiko et al. 2015).

Model: upper half (rows 0–13, 392 pixels) → Linear(392, H) → binary layer → Linear(H, H) →
binary layer → Linear(H, 392) Bernoulli logits of the lower half; a binary unit's value b ∈ [0, 1]
enters the next layer as 2b − 1. Each binary layer is a categorical latent with K = 2 whose first
category is "on", trained by the configured relaxation (built through the estimator registry,
no prior, no KL): ``gumbel`` — Binary Concrete σ((θ + L)/τ) (Concrete over the logits (θ, 0));
``igr_i`` — binary IGR σ(κ/τ), κ ~ N(μ, σ²); ``igr_planar`` — IGR with a planar flow on κ. The
IGR layers predict μ only with σ = 1 (``model.igr_scale=fixed``, the reference's runs), or μ and
log σ (``learned``); unlike the reference's code, our IGR uses τ. IGR-SB is not offered: with
K = 2 its single stick π = σ(κ) > 0 always wins the argmax, so its hard samples are constant.

Loss: ``−log p(x_low | z)`` at one relaxed sample per example (S = 1). Adam with
``lr_t = lr / (1 + decay · t)``, floored at ``lr_min``.
Test: ``nll`` = ``−log (1/S) Σ_s p(x_low | h_s)`` with S = ``model.eval_samples`` hard samples
(h = the argmax one-hot of each layer's draw, propagated to the next layer), in nats per image.

Cost (one CPU thread, CPU time through the runner): 12–17 ms per training step of batch 100
(IGR-I 12, IGR-Planar 15.5–17, Gumbel 15.5 or less), so a run of 93,700 steps takes 0.33–0.47
CPU-hours, testing on 10,000 images with 100 hard samples each about 1.2 minutes more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from latentgrad.estimators.base import LossFn
from latentgrad.experiments.config import build, require
from latentgrad.experiments.data.batched import batched_loader
from latentgrad.experiments.data.idx import load_idx_dataset
from latentgrad.experiments.data.subsets import SubsetConfig
from latentgrad.experiments.tasks.base import LatentTask, OptimConfig, TaskConfig, adam

ESTIMATORS = ("gumbel", "igr_i", "igr_planar")
SCALES = ("fixed", "learned")
HALF = 14  # rows of the upper half


@dataclass
class DataConfig(SubsetConfig):
    """MNIST rows used (see ``SubsetConfig``)."""


@dataclass
class ModelConfig:
    hidden: int = 240
    igr_scale: str = "fixed"
    eval_samples: int = 100

    def validate(self) -> None:
        require(self.hidden >= 1, "hidden", f"must be >= 1, got {self.hidden}")
        require(self.igr_scale in SCALES, "igr_scale", f"must be one of {SCALES}")
        require(self.eval_samples >= 1, "eval_samples", "must be >= 1")


@dataclass
class SOPOptimConfig(OptimConfig):
    """``lr_t = lr / (1 + decay · t)``, never below ``lr_min``."""

    decay: float = 1e-3
    lr_min: float = 1e-4

    def validate(self) -> None:
        super().validate()
        require(self.decay >= 0, "decay", f"must be >= 0, got {self.decay}")
        require(self.lr_min > 0, "lr_min", f"must be > 0, got {self.lr_min}")


@dataclass
class SOPConfig(TaskConfig):
    task: str = "igr_sop"
    estimator: str = "igr_i"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: SOPOptimConfig = field(default_factory=SOPOptimConfig)

    def validate(self) -> None:
        super().validate()
        require(self.estimator in ESTIMATORS, "estimator", f"must be one of {ESTIMATORS}")


Config = SOPConfig


# ----------------------------------------------------------------------------------------- data


def mnist_halves(split: str, path: str | None, n: int | None) -> tuple[Tensor, Tensor]:
    """Binarised MNIST (pixel/255 > 0.5) -> upper (N, 392) and lower (N, 392) halves."""
    images = (load_idx_dataset("mnist", split, path)[0][:n].float() / 255.0 > 0.5).float()
    return images[:, :HALF].flatten(1), images[:, HALF:].flatten(1)


class HalvesData(L.LightningDataModule):
    def __init__(self, cfg: DataConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def setup(self, stage: str | None = None) -> None:
        if not hasattr(self, "train"):
            c = self.cfg
            self.train = TensorDataset(*mnist_halves("train", c.path, c.n_train))
            self.test = TensorDataset(*mnist_halves("test", c.path, c.n_test))

    def train_dataloader(self) -> DataLoader:
        c = self.cfg
        return batched_loader(self.train, c.batch_size, shuffle=True, num_workers=c.num_workers)

    def test_dataloader(self) -> DataLoader:
        return batched_loader(self.test, self.cfg.eval_batch_size, num_workers=self.cfg.num_workers)


# ---------------------------------------------------------------------------------------- model


class SOP(LatentTask):
    """Two stochastic binary layers between the halves (module docstring)."""

    config_class = SOPConfig

    def __init__(self, config: dict, pixels: int, run_dir: str | None = None) -> None:
        super().__init__(config, run_dir, pixels=pixels)
        h = self.cfg.model.hidden
        self.igr = self.cfg.estimator != "gumbel"
        learned = self.igr and self.cfg.model.igr_scale == "learned"
        self.layer1 = nn.Linear(pixels, h * (2 if learned else 1))
        self.layer2 = nn.Linear(h, h * (2 if learned else 1))
        self.out = nn.Linear(h, pixels)
        kwargs = {"prior": None, "latent_shape": (h,)} if self.igr else {}
        self.estimator = self.make_estimator(2, pixels, **kwargs)
        self.estimator2 = self.make_estimator(2, h, **kwargs)
        self.hard = False  # test time: propagate argmax one-hots

    def layer_scores(self, layer: nn.Linear, inputs: Tensor) -> Tensor:
        """Scores of H binary units as categorical K = 2: Gumbel ``(N, H, 2)`` logits (θ, 0);
        IGR ``(N, H, 2, 1)`` (μ, log σ) with log σ = 0 unless learned."""
        a = layer(inputs)
        n, h = a.shape[0], self.cfg.model.hidden
        if not self.igr:
            return torch.stack([a, torch.zeros_like(a)], -1)
        mu, log_sigma = a.split(h, -1) if a.shape[-1] == 2 * h else (a, torch.zeros_like(a))
        return torch.stack([mu, log_sigma], -1).view(n, h, 2, 1)

    def bits(self, z: Tensor) -> Tensor:
        """``z`` ``(N, H, 2)`` -> the units' values 2b − 1 ``(N, H)`` (hard at test time)."""
        if self.hard:
            z = F.one_hot(z.argmax(-1), 2).to(z.dtype)
        return 2 * z[..., 0] - 1

    def loss_fn(self, x_low: Tensor) -> LossFn:
        """``−log p(x_low | z₁)``, the second layer drawn inside (one estimator call)."""

        def loss(z1: Tensor, rows: Tensor) -> Tensor:
            captured: list[Tensor] = []

            def loss2(z2: Tensor, rows2: Tensor) -> Tensor:
                logits = self.out(self.bits(z2))
                nll = F.binary_cross_entropy_with_logits(
                    logits, x_low[rows][rows2], reduction="none"
                ).sum(-1)
                captured.append(nll)
                return nll

            self.estimator2(self.layer_scores(self.layer2, self.bits(z1)), loss2)
            return captured[0]

        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x_up, x_low = batch
        out = self.estimate(self.layer_scores(self.layer1, x_up), self.loss_fn(x_low))
        self.record_step(out)
        self.log_train(lambda: {"train/loss": out.loss.detach(), **self.step_logs(out)})
        return out.loss

    @torch.no_grad()
    def test_nll(self, x_up: Tensor, x_low: Tensor) -> Tensor:
        """``−log (1/S) Σ_s p(x_low | h_s)`` over S hard samples, ``(B,)``."""
        s, b = self.cfg.model.eval_samples, x_up.shape[0]
        up = x_up.repeat(s, 1)
        low = x_low.repeat(s, 1)
        captured: list[Tensor] = []
        loss = self.loss_fn(low)

        def keep(z1: Tensor, rows: Tensor) -> Tensor:
            captured.append(loss(z1, rows))
            return captured[-1]

        self.hard = True
        try:
            self.estimate(self.layer_scores(self.layer1, up), keep)
        finally:
            self.hard = False
        nll = captured[0].view(s, b)
        return -(torch.logsumexp(-nll, 0) - math.log(s))

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("test/nll", self.test_nll(*batch).mean())

    def configure_optimizers(self) -> dict:
        o = self.cfg.optim
        opt = adam(self.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: max(1.0 / (1.0 + o.decay * t), o.lr_min / o.lr)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def build_run(config: dict, run_dir: str | None) -> tuple[SOP, HalvesData]:
    """The task entry point used by the runner: (LightningModule, LightningDataModule)."""
    cfg = build(SOPConfig, config)
    data = HalvesData(cfg.data)
    data.setup()
    return SOP(config, data.train.tensors[0].shape[1], run_dir), data


# metric name -> (label, higher is better); the report shows these, in this order
REPORT_METRICS = {"test/nll": ("test NLL of the lower half (nats)", False)}
CURVE_METRICS = ("train/loss",)
