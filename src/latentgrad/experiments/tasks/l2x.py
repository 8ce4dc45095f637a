"""Task ``l2x``: learning to explain by selecting k features (Chen et al. 2018; Paulus et al.
2020, §5.2), comparing relaxed k-subset distributions.

An explainer scores the features of an input; a relaxed k-hot vector ``z`` drawn from the scores
(the estimator: L2X, SoftSub, k-subset SST with the exponential-family entropy, k-subset SST at
correlated Gaussian utilities, each relaxed or straight-through) masks the input, and a predictor
sees only the masked input. Test time uses the hard top-k of the explainer's scores (for the
correlated SST, of the utilities' mean).

- ``data.source=synthetic`` (default, Chen et al. 2018, ``experiments.data.l2x``): 10 features,
  explainer ``10 -> 100 -> 100 -> 10`` score units per feature; predictor on ``x ⊙ z``:
  ``10 -> 200 -> BN -> 200 -> BN -> 2`` (ReLU for XOR and orange skin, SELU otherwise);
  cross-entropy against the soft labels. Metrics: ``acc`` of the predictor with the hard mask
  (against the more likely label), ``precision`` ``|selected ∩ relevant| / k`` and
  ``median_rank``: per row the median rank of its relevant features among the explainer's scores
  (1 = highest, ties broken at random), averaged over rows (best ``(k + 1) / 2``).
- ``data.source=beer`` (user-provided BeerAdvocate reviews, ``load_beer``) or
  ``data.source=beer_substitute`` (generated reviews, ``experiments.data.reviews``, the offline
  default, labelled ``beer-substitute`` in ``metrics.json``): word-level selector of
  Chen et al. 2018 on frozen word vectors (conv 100 k=3 -> max-pool -> dense 100 as global
  context; two more conv 100 k=3 as local context; concatenated, dropout 0.2, 1x1 conv 100,
  1x1 conv -> score units per word); predictor: mean of the selected words' vectors -> dense 250
  -> ReLU -> rating; squared error. Metrics: ``mse`` with the hard mask and ``precision`` of the
  selected words against the aspect's annotated sentences (annotated test reviews only).
  Padding is never selected; reviews shorter than k tokens are dropped. The paper's sizes are
  ``k`` in {5, 10, 15} (``data.k``).

Protocols (``configs/l2x.yaml``): profile ``paper`` is Chen et al.'s synthetic protocol as above
(10^6 training rows, one epoch of batch 1000, Adam 1e-3) with training seeds 0-4 (Chen et al.
ran seed 0 only), about 3 CPU-minutes per run on one thread; it fits, so there is no
``faithful`` profile. The review task's sizes, epochs and learning rates were never published;
the reviews use Adam 1e-3 as above but batches of 100 and no weight decay (the synthetic
protocol's decay 2e-3 keeps the word explainer's scores constant, so it never learns).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from latentgrad.estimators.subsets import CorrelatedSSTEstimator, topk_mask
from latentgrad.experiments.config import build, require
from latentgrad.experiments.data.files import dataset_dir
from latentgrad.experiments.data.l2x import DATASETS, NUM_FEATURES, load_beer, synthetic_l2x
from latentgrad.experiments.data.reviews import generated_reviews
from latentgrad.experiments.data.splits import TensorSplits
from latentgrad.experiments.tasks.base import LatentTask, OptimConfig, TaskConfig
from latentgrad.structures import KSubset

SOURCES = ("synthetic", "beer", "beer_substitute")
TEXT_SOURCES = ("beer", "beer_substitute")
RELU_DATASETS = ("xor", "orange_skin")
PAD_SCORE = -1e4  # score of padding words: never selected


@dataclass
class DataConfig:
    """Synthetic: ``dataset``, ``num_train`` rows from ``train_seed`` and ``num_valid`` from
    ``valid_seed`` (the validation rows are also the test rows, as in Chen et al. 2018).
    Beer: reviews under ``path`` (default ``$LATENTGRAD_DATA/beer``), ``aspect`` (1 = aroma),
    ``max_length`` tokens; beer_substitute: ``num_reviews`` (train, valid, test) generated reviews
    from ``train_seed``. ``k = 0``: the dataset's number of relevant features (reviews: 10);
    ``batch_size = 0``: 1000 on the synthetic data (Chen et al.), 100 on reviews."""

    source: str = "synthetic"
    dataset: str = "xor"
    num_train: int = 1_000_000
    num_valid: int = 100_000
    train_seed: int = 0
    valid_seed: int = 1
    legacy_swap: bool = False
    path: str | None = None
    aspect: int = 1
    max_length: int = 350
    num_reviews: list[int] = field(default_factory=lambda: [40_000, 5_000, 2_000])
    k: int = 0
    batch_size: int = 0

    def validate(self) -> None:
        require(self.source in SOURCES, "source", f"must be one of {SOURCES}, got {self.source!r}")
        require(self.dataset in DATASETS, "dataset", f"must be one of {list(DATASETS)}")
        for key in ("num_train", "num_valid", "max_length"):
            require(getattr(self, key) >= 2, key, f"must be >= 2, got {getattr(self, key)}")
        require(
            self.batch_size == 0 or self.batch_size >= 2,
            "batch_size",
            f"must be >= 2 (or 0: the source's default), got {self.batch_size}",
        )
        require(self.k >= 0, "k", f"must be >= 0 (0: the dataset's default), got {self.k}")
        require(
            len(self.num_reviews) == 3 and min(self.num_reviews) >= 1,
            "num_reviews",
            f"must be three sizes >= 1 (train, valid, test), got {self.num_reviews}",
        )
        require(
            self.source != "synthetic" or self.k <= NUM_FEATURES,
            "k",
            f"must be <= {NUM_FEATURES} on the synthetic data, got {self.k}",
        )

    @property
    def label(self) -> str:
        """The data actually used, for ``metrics.json``."""
        return {"synthetic": self.dataset, "beer": "beer", "beer_substitute": "beer-substitute"}[
            self.source
        ]

    @property
    def subset_size(self) -> int:
        if self.k:
            return self.k
        return DATASETS[self.dataset] if self.source == "synthetic" else 10


@dataclass
class ModelConfig:
    explainer_hidden: int = 100
    predictor_hidden: int = 200
    text_filters: int = 100
    text_hidden: int = 250
    dropout: float = 0.2

    def validate(self) -> None:
        for key in ("explainer_hidden", "predictor_hidden", "text_filters", "text_hidden"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class L2XOptimConfig(OptimConfig):
    """Adam ``lr`` and ``weight_decay``; ``weight_decay = None``: the source's default (2e-3 on
    the synthetic data, approximating Chen et al.'s L2 penalty 1e-3 on the weights; 0 on
    reviews, whose explainer it would shrink to constant scores: Adam normalises the decay's
    gradient, which dominates the explainer's small gradients at the start)."""

    weight_decay: float | None = None

    def validate(self) -> None:
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(
            self.weight_decay is None or self.weight_decay >= 0,
            "weight_decay",
            f"must be >= 0 (or null: the source's default), got {self.weight_decay}",
        )


@dataclass
class L2XConfig(TaskConfig):
    task: str = "l2x"
    estimator: str = "subset_sst"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: L2XOptimConfig = field(default_factory=L2XOptimConfig)

    def __post_init__(self) -> None:
        """Fill the source-dependent defaults (``data.batch_size = 0``,
        ``optim.weight_decay = None``), so the resolved config records the values used."""
        text = self.data.source in TEXT_SOURCES
        if not self.data.batch_size:
            self.data.batch_size = 100 if text else 1000
        if self.optim.weight_decay is None:
            self.optim.weight_decay = 0.0 if text else 2e-3


Config = L2XConfig


# ---------------------------------------------------------------------------------------- data


class L2XData(TensorSplits):
    """Synthetic batches ``(x, probs, relevant)``; review batches ``(tokens, lengths, rating,
    relevant)``; ``embeddings`` the reviews' word vectors (None for synthetic data)."""

    embeddings: Tensor | None = None

    def load(self) -> dict[str, TensorDataset]:
        cfg = self.cfg
        if cfg.source == "synthetic":
            splits = {
                "train": synthetic_l2x(cfg.dataset, cfg.num_train, cfg.train_seed, cfg.legacy_swap),
                "valid": synthetic_l2x(cfg.dataset, cfg.num_valid, cfg.valid_seed, cfg.legacy_swap),
            }
            splits["test"] = splits["valid"]
            keys = ("x", "probs", "relevant")
        else:
            if cfg.source == "beer":
                splits, matrix = load_beer(
                    dataset_dir("beer", cfg.path), cfg.aspect, cfg.max_length
                )
            else:
                splits, matrix = generated_reviews(
                    tuple(cfg.num_reviews), cfg.train_seed, cfg.aspect, cfg.max_length
                )
            self.embeddings = torch.from_numpy(matrix)
            for split in splits.values():
                split.setdefault("relevant", torch.zeros(split["tokens"].shape, dtype=bool).numpy())
                keep = split["lengths"] >= cfg.subset_size
                for key in split:
                    split[key] = split[key][keep]
            keys = ("tokens", "lengths", "rating", "relevant")
        return {
            name: TensorDataset(*(torch.from_numpy(split[k]) for k in keys))
            for name, split in splits.items()
        }


# --------------------------------------------------------------------------------------- model


def _activation(dataset: str) -> type[nn.Module]:
    return nn.ReLU if dataset in RELU_DATASETS else nn.SELU


class FeatureExplainer(nn.Module):
    """``(B, 10)`` -> score units ``(B, 10, u)`` (Chen et al.'s synthetic explainer)."""

    def __init__(self, hidden: int, units: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.units = units
        self.net = nn.Sequential(
            nn.Linear(NUM_FEATURES, hidden),
            act(),
            nn.Linear(hidden, hidden),
            act(),
            nn.Linear(hidden, NUM_FEATURES * units),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).view(x.shape[0], NUM_FEATURES, self.units)


class FeaturePredictor(nn.Module):
    """Masked features ``(B, 10)`` -> class logits ``(B, 2)``."""

    def __init__(self, hidden: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(NUM_FEATURES, hidden),
            act(),
            nn.BatchNorm1d(hidden),
            nn.Linear(hidden, hidden),
            act(),
            nn.BatchNorm1d(hidden),
            nn.Linear(hidden, 2),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class WordExplainer(nn.Module):
    """Word vectors ``(B, L, D)`` -> score units ``(B, L, u)`` (module docstring)."""

    def __init__(self, dim: int, filters: int, hidden: int, units: int, dropout: float) -> None:
        super().__init__()
        self.units = units
        self.first = nn.Conv1d(dim, filters, 3, padding=1)
        self.glob = nn.Linear(filters, hidden)
        self.local = nn.Sequential(
            nn.Conv1d(filters, filters, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(filters, filters, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Conv1d(hidden + filters, filters, 1),
            nn.ReLU(),
            nn.Conv1d(filters, units, 1),
        )

    def forward(self, emb: Tensor) -> Tensor:
        h = F.relu(self.first(emb.mT))  # (B, F, L)
        g = F.relu(self.glob(h.amax(-1)))[..., None].expand(-1, -1, h.shape[-1])
        return self.head(torch.cat([g, self.local(h)], dim=1)).mT


class L2X(LatentTask):
    """Explainer, relaxed k-subset estimator and predictor (module docstring)."""

    config_class = L2XConfig

    def __init__(self, config: dict, run_dir: str | None = None, embeddings=None) -> None:
        super().__init__(config, run_dir)
        cfg = self.cfg
        self.k = cfg.data.subset_size
        self.text = cfg.data.source in TEXT_SOURCES
        m = cfg.model
        if self.text:
            if embeddings is None:
                raise ValueError("the beer source needs the embedding matrix")
            self.register_buffer("embeddings", torch.as_tensor(embeddings))
            n, dim = cfg.data.max_length, self.embeddings.shape[1]
        else:
            n, act = NUM_FEATURES, _activation(cfg.data.dataset)
        self.estimator = self.spec.factory(
            cfg.estimator_args, n, n, structure=KSubset(n, self.k)
        )
        self.correlated = isinstance(self.estimator, CorrelatedSSTEstimator)
        units = 2 + self.estimator.rank if self.correlated else 1
        if self.text:
            self.explainer = WordExplainer(
                dim, m.text_filters, m.explainer_hidden, units, m.dropout
            )
            self.predictor = nn.Sequential(
                nn.Linear(dim, m.text_hidden), nn.ReLU(), nn.Linear(m.text_hidden, 1)
            )
        else:
            self.explainer = FeatureExplainer(m.explainer_hidden, units, act)
            self.predictor = FeaturePredictor(m.predictor_hidden, act)

    # ---- scores and predictions

    def scores(self, batch) -> tuple[Tensor, Tensor]:
        """The estimator's scores (``(B, n)``, or ``(B, n, 2 + r)`` when correlated) and the
        selection scores ``(B, n)`` whose top-k is the test-time subset."""
        if self.text:
            tokens, lengths = batch[0], batch[1]
            units = self.explainer(self.embeddings[tokens])
            pad = torch.arange(tokens.shape[1], device=tokens.device) >= lengths[:, None]
            units = units.masked_fill(pad[..., None], 0.0)
            units[..., 0] = units[..., 0].masked_fill(pad, PAD_SCORE)
        else:
            units = self.explainer(batch[0])
        select = units[..., 0]
        return (units if self.correlated else select), select

    def predict(self, batch, z: Tensor, rows: Tensor) -> Tensor:
        """Predictions for the examples ``rows`` masked by ``z`` ``(N, n)``: class logits
        ``(N, 2)`` (synthetic) or ratings ``(N,)`` (reviews)."""
        if self.text:
            words = self.embeddings[batch[0][rows]]
            return self.predictor((z[..., None] * words).sum(1) / self.k).squeeze(-1)
        return self.predictor(batch[0][rows] * z)

    def losses(self, batch, pred: Tensor, rows: Tensor) -> Tensor:
        if self.text:
            return (pred - batch[2][rows]).square()
        return -(batch[1][rows] * pred.log_softmax(-1)).sum(-1)

    def loss_fn(self, batch):
        def loss(z: Tensor, rows: Tensor) -> Tensor:
            return self.losses(batch, self.predict(batch, z, rows), rows)

        return loss

    # ---- training and evaluation

    def training_step(self, batch, batch_idx: int) -> Tensor:
        scores, _ = self.scores(batch)
        out = self.estimate(scores, self.loss_fn(batch))
        self.record_step(out)
        self.log_train(lambda: {"train/loss": out.loss.detach(), **self.step_logs(out)})
        return out.loss

    @torch.no_grad()
    def evaluate(self, batch) -> dict[str, Tensor]:
        _, select = self.scores(batch)
        mask = topk_mask(select, self.k)
        rows = torch.arange(mask.shape[0], device=mask.device)
        pred = self.predict(batch, mask, rows)
        relevant = batch[-1]
        stats = {"loss": self.losses(batch, pred, rows).mean()}
        if self.text:
            stats["mse"] = stats["loss"]
            annotated = relevant.any(-1)
            hits = (mask.bool() & relevant).sum(-1).to(mask.dtype) / self.k
            stats["precision"] = hits[annotated].mean() if bool(annotated.any()) else hits.sum()
            return stats
        stats["acc"] = (pred.argmax(-1) == batch[1].argmax(-1)).to(mask.dtype).mean()
        stats["precision"] = ((mask.bool() & relevant).sum(-1) / self.k).mean()
        jitter = torch.rand_like(select)
        higher = (select[:, None, :] > select[:, :, None]) | (
            (select[:, None, :] == select[:, :, None]) & (jitter[:, None, :] > jitter[:, :, None])
        )
        rank = 1 + higher.sum(-1).to(select.dtype)  # rank[b, i]: 1 + features scored above i
        per_row = rank[relevant].view(rank.shape[0], -1)
        stats["median_rank"] = per_row.quantile(0.5, dim=-1).mean()
        return stats

    def validation_step(self, batch, batch_idx: int) -> None:
        for key, value in self.evaluate(batch).items():
            self.log(f"val/{key}", value, prog_bar=key == "precision")

    def summary(self) -> dict:
        return {**super().summary(), "dataset": self.cfg.data.label}

    def test_step(self, batch, batch_idx: int) -> None:
        for key, value in self.evaluate(batch).items():
            self.log(f"test/{key}", value)


def build_run(config: dict, run_dir: str | None) -> tuple[L2X, L2XData]:
    """The task entry point used by the runner: (LightningModule, LightningDataModule)."""
    cfg = build(L2XConfig, config)
    data = L2XData(cfg.data, cfg.seed)
    data.setup()
    return L2X(config, run_dir, embeddings=data.embeddings), data


# metric name -> (label, higher is better); the report shows these, in this order
REPORT_METRICS = {
    "test/precision": ("precision of the selected features", True),
    "test/median_rank": ("median rank of relevant features", False),
    "test/acc": ("accuracy with the hard top-k mask", True),
    "test/mse": ("MSE with the hard top-k mask (reviews)", False),
    "test/loss": ("test loss with the hard top-k mask", False),
}
CURVE_METRICS = ("val/precision", "val/loss")
