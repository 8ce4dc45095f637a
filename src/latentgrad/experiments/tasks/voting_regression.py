"""Task ``voting_regression``: vote proportions with exact zeros by a GLM whose likelihood is
Mixed Dirichlet (Farinhas et al. 2022, §5.4), against a Dirichlet GLM and a continuous-categorical
GLM (Gordon-Rodriguez et al. 2020's model and baseline).

Data (``data/voting.py``): the UK 2019 general election by constituency (user spreadsheet,
``data.source=election``) or, by default, 650 synthetic rows from a known Mixed Dirichlet GLM
(``data.source=synthetic``). Split: Bernoulli(0.2) training rows (numpy seed ``split_seed``),
the rest validation, which is also the test set (as in the reference).

Models (``estimator`` names the likelihood; no gradient estimator is involved: the targets are
observed, the likelihood exact):

- ``mixed_dirichlet``: face scores ``s = clamp(W₁x + b₁, ±10)``, concentrations
  ``α = exp(clamp(W₂x + b₂, ±10)) + 1e−6``, loss ``−log p(y)`` in the direct-sum measure
  (``log P_F(f(y)) + log Dir(y_f; α_f)``);
- ``dirichlet``: ``α = exp(clamp(Wx + b, ±10)) + 1e−6`` and ``−log Dir(ỹ; α)`` on the smoothed
  targets ``ỹ = (y + ε)/(1 + Kε)``, ε = ``model.smoothing``;
- ``continuous_categorical``: natural parameters ``η = (Wx + b, 0)`` (K − 1 free, unclamped) and
  ``−log CC(ỹ; η)`` on the same smoothed targets (Adam lr 0.5 in the config, the paper's).

Full batch, Adam, gradient-norm clip ``optim.grad_clip`` per step, one step per epoch.

Readings on the validation rows: ``mean`` (Mixed Dirichlet: mean of ``eval_samples`` draws, 100
during training; the baselines: their exact means α/α₀ and ∇ log Z(η), where the reference
averaged draws of the continuous categorical) and ``mode`` (the Dirichlet mean on the most
probable face, closed form; the baselines, which have no faces: their means). Metrics per
reading: RMSE (root of the mean square over the K shares of a row) and MAE, averaged over rows;
``zero_acc``: per-coordinate accuracy of the predicted zero pattern of the most probable face
(the baselines: nothing is zero); ``face_acc``: rows whose whole zero pattern is right.
Synthetic data also report recovery of the true model: ``recovery/face_mae``
(mean |P̂(f_k = 1 | x) − P(f_k = 1 | x)|) and ``recovery/log_conc_mae`` (mean
|log α̂_k − log α_k| over (row, k) whose true face probability exceeds ½; α_k off the face is not
identifiable), over all rows.

Compute: the published protocol (400 full-batch steps, validation with 100 samples after each)
takes about 20 s per run on one thread, three quarters of it the validation draws (Gamma
sampling); checkpoints every 50 steps, not every one-step epoch. No reduced profile is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning as L
import torch
from torch import Tensor, nn
from torch.distributions import Dirichlet
from torch.utils.data import DataLoader, Dataset, TensorDataset

from latentgrad.distributions import ContinuousCategorical, MixedDirichlet, NonEmptyFaces
from latentgrad.experiments.config import build, require
from latentgrad.experiments.data.voting import (
    VotingData,
    load_election_xlsx,
    split_and_standardise,
    synthetic_voting,
)
from latentgrad.experiments.tasks.base import OptimConfig, TaskConfig, adam

LIKELIHOODS = ("mixed_dirichlet", "dirichlet", "continuous_categorical")
SOURCES = ("synthetic", "election")
CLAMP = 10.0
MIN_CONCENTRATION = 1e-6


@dataclass
class DataConfig:
    """``source``: ``synthetic`` (``n_rows`` rows, truth drawn from ``generator_seed``) or
    ``election`` (the spreadsheet at ``path``; default ``$LATENTGRAD_DATA/election``).
    ``num_classes``: K = parties kept + the remainder (the reference: 4 + 1)."""

    source: str = "synthetic"
    path: str | None = None
    n_rows: int = 650
    num_classes: int = 5
    generator_seed: int = 0
    p_train: float = 0.2
    split_seed: int = 0

    def validate(self) -> None:
        require(self.source in SOURCES, "source", f"must be one of {SOURCES}, got {self.source!r}")
        require(self.n_rows >= 20, "n_rows", f"must be >= 20, got {self.n_rows}")
        require(self.num_classes >= 2, "num_classes", f"must be >= 2, got {self.num_classes}")
        require(
            self.source != "synthetic" or self.num_classes == 5,
            "num_classes",
            "the synthetic model has K = 5 (4 parties + remainder)",
        )
        require(0 < self.p_train < 1, "p_train", f"must be in (0, 1), got {self.p_train}")


@dataclass
class ModelConfig:
    """``smoothing``: ε of the baselines' targets (Dirichlet, continuous categorical);
    ``train_samples`` / ``eval_samples``: draws behind the Mixed Dirichlet sample mean during
    training / at test."""

    smoothing: float = 1e-3
    train_samples: int = 100
    eval_samples: int = 1000

    def validate(self) -> None:
        require(self.smoothing > 0, "smoothing", f"must be > 0, got {self.smoothing}")
        for key in ("train_samples", "eval_samples"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")


@dataclass
class VotingOptimConfig(OptimConfig):
    """Adam plus the gradient-norm clip applied before every step."""

    grad_clip: float = 1.0

    def validate(self) -> None:
        super().validate()
        require(self.grad_clip > 0, "grad_clip", f"must be > 0, got {self.grad_clip}")


@dataclass
class VotingConfig(TaskConfig):
    task: str = "voting_regression"
    estimator: str = "mixed_dirichlet"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: VotingOptimConfig = field(default_factory=VotingOptimConfig)

    def validate(self) -> None:  # the estimator names a likelihood, not a gradient estimator
        require(
            self.estimator in LIKELIHOODS,
            "estimator",
            f"must be one of {LIKELIHOODS}, got {self.estimator!r}",
        )


Config = VotingConfig


# ----------------------------------------------------------------------------------------- data


def load_voting(cfg: DataConfig) -> VotingData:
    if cfg.source == "election":
        return load_election_xlsx(cfg.path, cfg.num_classes)
    return synthetic_voting(cfg.n_rows, cfg.num_classes, cfg.generator_seed)


class FullBatch(Dataset):
    """A dataset of one item: the tensors ``(x, y)`` of a whole split."""

    def __init__(self, tensors: tuple[Tensor, ...]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        if i != 0:
            raise IndexError(i)
        return self.tensors


class VotingDataModule(L.LightningDataModule):
    """One full batch of training rows per epoch; validation = test = the other rows.
    Every loader also carries the row's unstandardised index (for the recovery metrics)."""

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "split"):
            return
        self.data = load_voting(self.cfg)
        self.split = split_and_standardise(self.data, self.cfg.p_train, self.cfg.split_seed)
        s = self.split
        self.train = TensorDataset(s.x_train.float(), s.y_train.float())
        self.val = TensorDataset(s.x_val.float(), s.y_val.float())

    def _loader(self, ds: TensorDataset) -> DataLoader:
        """The whole split as one batch, handed over as is (a ``batch_size=len(ds)`` loader would
        index and re-stack the rows one by one at every step)."""
        return DataLoader(FullBatch(ds.tensors), batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val)


# ---------------------------------------------------------------------------------------- model


def _log_concentration(layer: nn.Linear, x: Tensor) -> Tensor:
    return layer(x).clamp(-CLAMP, CLAMP)


class MixedDirichletGLM(nn.Module):
    """``x (B, P) -> MixedDirichlet`` with batch (B,), event (K,) (module docstring)."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.scores = nn.Linear(num_features, num_classes)
        self.concentration = nn.Linear(num_features, num_classes)

    def forward(self, x: Tensor) -> MixedDirichlet:
        alpha = _log_concentration(self.concentration, x).exp() + MIN_CONCENTRATION
        return MixedDirichlet(self.scores(x).clamp(-CLAMP, CLAMP), alpha)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        return -self(x).log_prob(y)

    @torch.no_grad()
    def predict(self, x: Tensor, n_samples: int) -> dict[str, Tensor]:
        """``mean``: average of ``n_samples`` draws; ``mode``: α_f/α₀(f) on the mode face;
        ``face``: the mode face (B, K) 0/1."""
        dist = self(x)
        face = dist.faces.mode
        alpha = dist.concentration * face
        return {
            "mean": dist.sample((n_samples,)).mean(0),
            "mode": alpha / alpha.sum(-1, keepdim=True),
            "face": face,
        }

    @torch.no_grad()
    def face_marginals(self, x: Tensor) -> Tensor:
        return self(x).faces.marginals()

    @torch.no_grad()
    def log_concentration(self, x: Tensor) -> Tensor:
        return _log_concentration(self.concentration, x)


class OpenSimplexGLM(nn.Module):
    """A baseline GLM whose distribution lives on the open simplex (``forward`` in the subclass):
    trained on targets smoothed into it by ``(y + ε)/(1 + Kε)``, read by its exact mean (it has no
    faces: every share is predicted non-zero)."""

    def __init__(self, smoothing: float) -> None:
        super().__init__()
        self.smoothing = smoothing

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        return -self(x).log_prob(smoothed(y, self.smoothing))

    @torch.no_grad()
    def predict(self, x: Tensor, n_samples: int) -> dict[str, Tensor]:
        mean = self(x).mean
        return {"mean": mean, "mode": mean, "face": torch.ones_like(mean)}


def smoothed(y: Tensor, eps: float) -> Tensor:
    """Targets moved into the open simplex: ``(y + ε)/(1 + Kε)``."""
    return (y + eps) / (1 + y.shape[-1] * eps)


class DirichletGLM(OpenSimplexGLM):
    """``x (B, P) -> Dirichlet(exp(clamp(Wx + b)) + 1e−6)``."""

    def __init__(self, num_features: int, num_classes: int, smoothing: float) -> None:
        super().__init__(smoothing)
        self.concentration = nn.Linear(num_features, num_classes)

    def forward(self, x: Tensor) -> Dirichlet:
        return Dirichlet(_log_concentration(self.concentration, x).exp() + MIN_CONCENTRATION)


class ContinuousCategoricalGLM(OpenSimplexGLM):
    """``x (B, P) -> ContinuousCategorical(η)``, ``η = (Wx + b, 0)`` (the last class is the
    reference of the K − 1 free parameters)."""

    def __init__(self, num_features: int, num_classes: int, smoothing: float) -> None:
        super().__init__(smoothing)
        self.logits = nn.Linear(num_features, num_classes - 1)

    def forward(self, x: Tensor) -> ContinuousCategorical:
        free = self.logits(x)
        return ContinuousCategorical(torch.cat([free, free.new_zeros(*free.shape[:-1], 1)], -1))


def share_errors(y: Tensor, pred: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row RMSE ``sqrt(mean_k (y − ŷ)²)`` and MAE ``mean_k |y − ŷ|``, each (B,)."""
    diff = y - pred
    return diff.pow(2).mean(-1).sqrt(), diff.abs().mean(-1)


class VotingRegression(L.LightningModule):
    """The GLM of ``config.estimator``; ``config`` is the resolved config as a plain dict."""

    def __init__(self, config: dict, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.save_hyperparameters(
            {"config": config, "num_features": num_features, "num_classes": num_classes}
        )
        cfg = build(VotingConfig, config)
        self.cfg = cfg
        if cfg.estimator == "mixed_dirichlet":
            self.glm: nn.Module = MixedDirichletGLM(num_features, num_classes)
        elif cfg.estimator == "dirichlet":
            self.glm = DirichletGLM(num_features, num_classes, cfg.model.smoothing)
        else:
            self.glm = ContinuousCategoricalGLM(num_features, num_classes, cfg.model.smoothing)
        self.truth: dict[str, Tensor] = {}
        self.all_x: Tensor | None = None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.glm.loss(x, y).mean()
        self.log("train/loss", loss.detach(), prog_bar=True)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        torch.nn.utils.clip_grad_norm_(self.parameters(), self.cfg.optim.grad_clip)

    def evaluate(self, x: Tensor, y: Tensor, n_samples: int) -> dict[str, Tensor]:
        """Means over the rows of every metric (module docstring)."""
        pred = self.glm.predict(x, n_samples)
        out = {}
        for reading in ("mean", "mode"):
            rmse, mae = share_errors(y, pred[reading])
            out[f"{reading}_rmse"], out[f"{reading}_mae"] = rmse.mean(), mae.mean()
        right = (y > 0).to(y.dtype) == pred["face"]
        out["zero_acc"] = right.to(y.dtype).mean()
        out["face_acc"] = right.all(-1).to(y.dtype).mean()
        return out

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        stats = self.evaluate(*batch, self.cfg.model.train_samples)
        self.log_dict({f"val/{k}": v for k, v in stats.items()})

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        stats = self.evaluate(*batch, self.cfg.model.eval_samples)
        self.log_dict({f"test/{k}": v for k, v in stats.items()})

    def recovery(self) -> dict[str, float]:
        """Distance of the fitted model to the synthetic truth over all rows (module doc)."""
        if not self.truth or self.all_x is None or not isinstance(self.glm, MixedDirichletGLM):
            return {}
        x = self.all_x.to(self.device)
        raw = self.truth
        true_marg = NonEmptyFaces(raw["face_scores"]).marginals()
        fit_marg = self.glm.face_marginals(x.float()).to(true_marg)
        on = true_marg > 0.5
        log_conc = self.glm.log_concentration(x.float()).to(true_marg)
        return {
            "recovery/face_mae": float((fit_marg - true_marg).abs().mean()),
            "recovery/log_conc_mae": float((log_conc - raw["log_conc"]).abs()[on].mean()),
        }

    def summary(self) -> dict[str, float]:
        return self.recovery()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optim = self.cfg.optim
        return adam(self.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)


def build_run(config: dict, run_dir: str | None) -> tuple[VotingRegression, VotingDataModule]:
    """The task entry point used by the runner: (LightningModule, LightningDataModule)."""
    cfg = build(VotingConfig, config)
    data = VotingDataModule(cfg.data)
    data.setup()
    d, split = data.data, data.split
    model = VotingRegression(config, d.x.shape[1], d.y.shape[1])
    if d.truth:  # the truth in the standardised covariates of the fit (same rows, all of them)
        x_all = torch.empty_like(d.x)
        x_all[split.mask], x_all[~split.mask] = split.x_train, split.x_val
        model.all_x = x_all
        model.truth = {
            "face_scores": d.x @ d.truth["face_weight"] + d.truth["face_bias"],
            "log_conc": d.x @ d.truth["conc_weight"] + d.truth["conc_bias"],
        }
    return model, data


# metric name -> (label, higher is better); the report shows these, in this order
REPORT_METRICS = {
    "test/mean_rmse": ("RMSE, sample mean", False),
    "test/mean_mae": ("MAE, sample mean", False),
    "test/mode_rmse": ("RMSE, most probable mean", False),
    "test/mode_mae": ("MAE, most probable mean", False),
    "test/zero_acc": ("zero/non-zero accuracy", True),
    "test/face_acc": ("exact-face accuracy", True),
    "recovery/face_mae": ("face marginal error vs truth", False),
    "recovery/log_conc_mae": ("log-concentration error vs truth", False),
}
CURVE_METRICS = ("val/mean_rmse", "val/mode_rmse")
