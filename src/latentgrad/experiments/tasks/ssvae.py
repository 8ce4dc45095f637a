"""Task ``ssvae``: semi-supervised VAE on MNIST with a latent class y.

Correia et al. 2020, §5.1 (after Kingma et al. 2014, M2). Classifier q(y|x), encoder q(h|x, y)
(diagonal Gaussian, σ = exp), Bernoulli decoder p(x|y, h), priors uniform(y) and N(0, I).
``ℓ_U(x, y) = BCE(x, decoder(y, h)) + KL(q(h|x, y) || N(0, I))`` with one reparameterised h.
Labelled step: ``ℓ_U(x, y) + CE`` (sparsemax runs: sparsemax Fenchel-Young loss). Unlabelled:
the configured estimator's surrogate of ``E_q(y|x)[ℓ_U] - H(q(y|x))``. Step loss =
``mean_labelled + unlabelled_weight * estimator loss``. The run starts with ``warmstart_epochs``
epochs on labelled data only (Adam, ``warmstart_lr``); the best-validation-accuracy weights of that
phase are restored, saved as ``warmstart.ckpt`` in the run directory, and the main phase starts
with a fresh Adam.

Metrics: accuracy of argmax q(y|x); exact ``-ELBO = Σ_y q(y|x) ℓ_U(x, y) + KL(q(y|x) || U(K))``
(all K classes enumerated, h sampled once per pair) for every estimator; decoder calls per
unlabelled example (mean ``support_size`` over the main phase); ``acc_generative``, the accuracy
of ``argmin_y ℓ_U(x, y)`` (one h per pair), i.e. of the generative posterior
``p(y|x) ∝ exp(-ℓ_U(x, y))``.

Accuracy drop after the warm start (audited, genuine: the M2 objective, not a bug). Per
unlabelled x, ``E_q[ℓ_U] - H(q) = KL(q(y|x) || p(y|x)) - log Σ_y exp(-ℓ_U(x, y))``, so the
unlabelled term (weight 9 against the labelled CE's 1) pulls q(y|x) toward the generative
posterior, which is only as accurate as the class-conditional decoder (the 8-d Gaussian h can
explain an image without y). Evidence, ``cpu`` profile, softmax, seed 0: warm-start val accuracy
0.924 but ``acc_generative`` 0.728; main-phase epochs 0.786 / 0.780 / 0.789 (argmax q agrees
with argmin ℓ_U on 75% of images before, 83% after); ``unlabelled_weight=0`` keeps 0.932 / 0.932
(restore, fresh Adam and labelled CE work); unlabelled loss alone: 0.69 after 900 steps, close to
``acc_generative`` (0.67). A better decoder shrinks the drop: 30 warm-start epochs give 0.942
with ``acc_generative`` 0.836, then 0.896 / 0.877 / 0.894. Same objective and weights as the
reference code (deep-spin/sparse-marginalization-lvm: loss = supervised + unsupervised ·
n_unlabelled / n_labelled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from latentgrad.experiments.config import build, require
from latentgrad.experiments.data.batched import batched_loader
from latentgrad.experiments.data.digits import load_digits
from latentgrad.experiments.data.idx import IDX_DATASETS, load_idx_dataset
from latentgrad.experiments.estimators import mlp
from latentgrad.experiments.losses import sparsemax_loss
from latentgrad.experiments.tasks.base import LatentTask, OptimConfig, TaskConfig, adam

# train-split sizes of the datasets (digits has no separate test split: it is carved out first)
TRAIN_SIZES = {"mnist": 60000, "fashion_mnist": 60000, "digits": 1797}
NUM_CLASSES = 10


@dataclass
class DataConfig:
    """Splits: a permutation (seed ``split_seed``) of the train set gives, in order, ``n_test``
    test images (digits only), ``n_validation`` validation, ``n_labelled`` labelled, then
    ``n_unlabelled`` (null: the rest) unlabelled images. ``split_dir``: a folder with the
    reference's fixed index files (``validation_indx.npy``, ``labeled_train_indx.npy``,
    ``unlabeled_train_indx.npy``, indices into the train set), used instead of the permutation
    (the three sizes then come from the files)."""

    dataset: str = "mnist"
    path: str | None = None
    split_dir: str | None = None
    n_validation: int = 10000
    n_labelled: int = 5000
    n_unlabelled: int | None = None
    n_test: int | None = None
    split_seed: int = 0
    eval_binarize_seed: int = 1234
    batch_size: int = 64
    eval_batch_size: int = 1000
    num_workers: int = 0

    def validate(self) -> None:
        require(
            self.dataset in TRAIN_SIZES,
            "dataset",
            f"must be one of {list(TRAIN_SIZES)}, got {self.dataset!r}",
        )
        for key in ("n_validation", "n_labelled", "batch_size", "eval_batch_size"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(
            self.n_unlabelled is None or self.n_unlabelled >= 1,
            "n_unlabelled",
            "must be null or >= 1",
        )
        require(self.n_test is None or self.n_test >= 1, "n_test", "must be null or >= 1")
        require(self.num_workers >= 0, "num_workers", "must be >= 0")
        carved = (self.n_test or 0) if self.dataset == "digits" else 0
        require(
            self.dataset != "digits" or self.n_test is not None,
            "n_test",
            "must be set for dataset 'digits' (no test split: the test images are carved out)",
        )
        used = carved + self.n_validation + self.n_labelled + (self.n_unlabelled or 1)
        require(
            self.split_dir is not None or used <= TRAIN_SIZES[self.dataset],
            "n_validation",
            f"test + validation + labelled + unlabelled = {used} exceeds the "
            f"{TRAIN_SIZES[self.dataset]} "
            f"training images of {self.dataset}",
        )


@dataclass
class ModelConfig:
    classifier_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    encoder_hidden: list[int] = field(default_factory=lambda: [128, 128])
    decoder_hidden: list[int] = field(default_factory=lambda: [128, 128])
    latent_dim: int = 8

    def validate(self) -> None:
        require(self.latent_dim >= 1, "latent_dim", f"must be >= 1, got {self.latent_dim}")
        for key in ("classifier_hidden", "encoder_hidden", "decoder_hidden"):
            require(all(h >= 1 for h in getattr(self, key)), key, "layer widths must be >= 1")


@dataclass
class SSVAEOptimConfig(OptimConfig):
    """Adam settings of the main phase, plus the labelled-only warm start and the weight of the
    unlabelled term."""

    weight_decay: float = 1e-5
    warmstart_epochs: int = 100
    warmstart_lr: float = 1e-3
    unlabelled_weight: float = 9.0

    def validate(self) -> None:
        super().validate()
        require(self.warmstart_lr > 0, "warmstart_lr", f"must be > 0, got {self.warmstart_lr}")
        require(
            self.warmstart_epochs >= 0,
            "warmstart_epochs",
            f"must be >= 0, got {self.warmstart_epochs}",
        )
        require(self.unlabelled_weight >= 0, "unlabelled_weight", "must be >= 0")


@dataclass
class SSVAEConfig(TaskConfig):
    task: str = "ssvae"
    estimator: str = "softmax"
    eval_test_every_epoch: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: SSVAEOptimConfig = field(default_factory=SSVAEOptimConfig)

    def validate(self) -> None:
        super().validate()
        require(
            self.optim.warmstart_epochs < self.trainer.max_epochs,
            "optim.warmstart_epochs",
            f"({self.optim.warmstart_epochs}) must be smaller than trainer.max_epochs "
            f"({self.trainer.max_epochs}) "
            "so that the main phase runs",
        )


Config = SSVAEConfig


# ----------------------------------------------------------------------------------------- data


def _load_images(cfg: DataConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> train images (N, D) float in [0, 1], train labels, test images, test labels."""
    if cfg.dataset in IDX_DATASETS:
        xtr, ytr = load_idx_dataset(cfg.dataset, "train", cfg.path)
        xte, yte = load_idx_dataset(cfg.dataset, "test", cfg.path)
        return xtr.flatten(1).float() / 255.0, ytr, xte.flatten(1).float() / 255.0, yte
    x, y = load_digits()
    return x.flatten(1), y, x[:0].flatten(1), y[:0]


SPLIT_FILES = ("validation_indx.npy", "labeled_train_indx.npy", "unlabeled_train_indx.npy")


def _split_files(folder: Path, n_train: int) -> tuple[Tensor, Tensor, Tensor]:
    """The reference's fixed (validation, labelled, unlabelled) train indices from ``folder``."""
    import numpy as np

    from latentgrad.experiments.data.files import require_file

    out = []
    for name in SPLIT_FILES:
        idx = torch.as_tensor(np.load(require_file(folder, name, "ssvae split")), dtype=torch.long)
        if idx.dim() != 1 or idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= n_train:
            raise ValueError(
                f"{folder / name}: expected a non-empty 1-d array of indices in [0, {n_train})"
            )
        out.append(idx)
    if torch.cat(out).unique().numel() != sum(i.numel() for i in out):
        raise ValueError(f"{folder}: the split index files overlap or repeat indices")
    return out[0], out[1], out[2]


class SSVAEData(L.LightningDataModule):
    """Labelled / unlabelled / validation / test splits; eval images binarised once (seeded)."""

    def __init__(
        self, cfg: DataConfig, warmstart_epochs: int = 0, eval_test_every_epoch: bool = True
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.warmstart_epochs = warmstart_epochs
        self.eval_test_every_epoch = eval_test_every_epoch

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "unlabelled"):
            return
        cfg = self.cfg
        xtr, ytr, xte, yte = _load_images(cfg)
        perm = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(cfg.split_seed))
        start = 0

        def take(n: int | None) -> Tensor:
            nonlocal start
            idx = perm[start:] if n is None else perm[start : start + n]
            start += idx.shape[0]
            return idx

        if cfg.dataset == "digits":
            test_idx = take(cfg.n_test)
            xte, yte = xtr[test_idx], ytr[test_idx]
        elif cfg.n_test is not None:
            xte, yte = xte[: cfg.n_test], yte[: cfg.n_test]
        if cfg.split_dir is not None:
            val_idx, lab_idx, unl_idx = _split_files(Path(cfg.split_dir), xtr.shape[0])
        else:
            val_idx, lab_idx, unl_idx = (
                take(cfg.n_validation),
                take(cfg.n_labelled),
                take(cfg.n_unlabelled),
            )
        gen = torch.Generator().manual_seed(cfg.eval_binarize_seed)
        self.input_dim = xtr.shape[1]
        self.labelled = TensorDataset(xtr[lab_idx], ytr[lab_idx])
        self.unlabelled = TensorDataset(xtr[unl_idx])
        self.validation = TensorDataset(torch.bernoulli(xtr[val_idx], generator=gen), ytr[val_idx])
        self.test = TensorDataset(torch.bernoulli(xte, generator=gen), yte)

    def _loader(self, dataset: TensorDataset, shuffle: bool, batch_size: int) -> DataLoader:
        return batched_loader(dataset, batch_size, shuffle, self.cfg.num_workers)

    def train_dataloader(self) -> CombinedLoader | DataLoader:
        """Warm-start epochs: labelled batches only; then unlabelled batches each paired with a
        labelled batch (labelled loader cycled), one epoch = one pass over the unlabelled set."""
        labelled = self._loader(self.labelled, True, self.cfg.batch_size)
        if self.trainer is not None and self.trainer.current_epoch < self.warmstart_epochs:
            return CombinedLoader({"labelled": labelled}, mode="max_size_cycle")
        unlabelled = self._loader(self.unlabelled, True, self.cfg.batch_size)
        return CombinedLoader(
            {"unlabelled": unlabelled, "labelled": labelled}, mode="max_size_cycle"
        )

    def val_dataloader(self) -> list[DataLoader]:
        loaders = [self._loader(self.validation, False, self.cfg.eval_batch_size)]
        if self.eval_test_every_epoch:
            loaders.append(self._loader(self.test, False, self.cfg.eval_batch_size))
        return loaders

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test, False, self.cfg.eval_batch_size)


# ---------------------------------------------------------------------------------------- model


class SSVAE(LatentTask):
    """The semi-supervised VAE; ``config`` is the resolved config as a plain dict (checkpointed)."""

    config_class = SSVAEConfig

    def __init__(self, config: dict, input_dim: int, run_dir: str | None = None) -> None:
        super().__init__(config, run_dir, input_dim=input_dim)
        cfg = self.cfg
        self.mapping = self.spec.mapping
        k, m, d = NUM_CLASSES, cfg.model.latent_dim, input_dim
        self.classifier = mlp([d, *cfg.model.classifier_hidden, k])
        self.encoder = mlp([d + k, *cfg.model.encoder_hidden, 2 * m])
        self.decoder = mlp([m + k, *cfg.model.decoder_hidden, d])
        self.estimator = self.make_estimator(k, d)
        self.register_buffer("warmstart_best_acc", torch.full((), -1.0, dtype=torch.float64))
        self.register_buffer("warmstart_best_epoch", torch.full((), -1, dtype=torch.long))
        self.register_buffer("warmstart_done", torch.zeros((), dtype=torch.bool))
        self._best_state: dict[str, Tensor] | None = None

    # ---- the model's math (no estimator math here)

    def loss_u(self, x: Tensor, y: Tensor) -> Tensor:
        """``ℓ_U(x, y) = BCE(x | y, h) + KL(q(h|x,y) || N(0, I))``, (N, D), (N, K) -> (N,)."""
        mu, log_sigma = self.encoder(torch.cat([x, y], -1)).chunk(2, -1)
        h = mu + log_sigma.exp() * torch.randn_like(mu)
        logits = self.decoder(torch.cat([h, y], -1))
        bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        kl = 0.5 * (mu.square() + (2 * log_sigma).exp() - 1.0 - 2 * log_sigma).sum(-1)
        return bce + kl

    def q_y(self, scores: Tensor) -> Tensor:
        """q(y|x) from classifier scores: softmax, or sparsemax for sparsemax runs."""
        if self.mapping == "sparsemax":
            from latentgrad.mappings import sparsemax

            return sparsemax(scores, dim=-1)
        return scores.softmax(-1)

    def supervised_loss(self, scores: Tensor, y: Tensor) -> Tensor:
        if self.mapping == "sparsemax":
            return sparsemax_loss(scores, y)
        return F.cross_entropy(scores, y, reduction="none")

    def labelled_loss(self, x: Tensor, y: Tensor) -> Tensor:
        onehot = F.one_hot(y, NUM_CLASSES).to(x.dtype)
        return (self.loss_u(x, onehot) + self.supervised_loss(self.classifier(x), y)).mean()

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> (correct (B,), exact -ELBO (B,), generative correct (B,)), enumerating all K
        classes for every example. "Generative correct": ``argmin_y ℓ_U(x, y) == y_true``, the
        argmax of ``p(y|x) ∝ exp(-ℓ_U(x, y))``, the q(y|x) that minimises the unlabelled -ELBO."""
        scores = self.classifier(x)
        q = self.q_y(scores)
        b, k = q.shape
        eye = torch.eye(k, device=x.device, dtype=x.dtype)
        losses = self.loss_u(x.repeat_interleave(k, 0), eye.repeat(b, 1)).view(b, k)
        logq = torch.where(q > 0, q, torch.ones_like(q)).log()
        kl_y = (q * logq).sum(-1) + math.log(k)
        correct = (scores.argmax(-1) == y).to(x.dtype)
        return correct, (q * losses).sum(-1) + kl_y, (losses.argmin(-1) == y).to(x.dtype)

    # ---- Lightning hooks

    @property
    def in_warmstart(self) -> bool:
        return self.current_epoch < self.cfg.optim.warmstart_epochs

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """``batch``: ``{"labelled": (x, y)}`` in the warm start, plus ``"unlabelled": (x,)``."""
        xl, yl = batch["labelled"]
        lab = self.labelled_loss(torch.bernoulli(xl), yl)
        if "unlabelled" not in batch:
            self.log("warmstart/loss", lab, prog_bar=True)
            return lab
        (xu,) = batch["unlabelled"]
        xu = torch.bernoulli(xu)
        out = self.estimate(self.classifier(xu), lambda z, rows: self.loss_u(xu[rows], z), xu)
        loss = lab + self.cfg.optim.unlabelled_weight * out.loss
        self.record_step(out)
        self.log_train(lambda: {
            "train/loss": loss,
            "train/labelled": lab,
            "train/unlabelled": out.loss,
            **self.step_logs(out),
        })
        self.log("loss", loss, prog_bar=True, logger=False)
        return loss

    def validation_step(self, batch: tuple, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Main phase: accuracy, exact -ELBO and generative accuracy on validation (and test,
        ``test_epoch/``). Warm start: validation accuracy only, the one number it selects by
        (the K-fold -ELBO enumeration would cost 3x the warm start's own training)."""
        x, y = batch
        if self.in_warmstart:
            if dataloader_idx == 0:
                correct = (self.classifier(x).argmax(-1) == y).to(x.dtype)
                self.log("val/acc", correct.mean(), add_dataloader_idx=False, sync_dist=True)
            return
        correct, neg_elbo, gen_correct = self.evaluate(x, y)
        prefix = "val" if dataloader_idx == 0 else "test_epoch"
        self.log(f"{prefix}/acc", correct.mean(), add_dataloader_idx=False, sync_dist=True)
        self.log(
            f"{prefix}/acc_generative", gen_correct.mean(), add_dataloader_idx=False, sync_dist=True
        )
        self.log(
            f"{prefix}/neg_elbo",
            neg_elbo.mean(),
            add_dataloader_idx=False,
            sync_dist=True,
            prog_bar=True,
        )

    def test_step(self, batch: tuple, batch_idx: int) -> None:
        x, y = batch
        correct, neg_elbo, gen_correct = self.evaluate(x, y)
        self.log("test/acc", correct.mean(), sync_dist=True)
        self.log("test/acc_generative", gen_correct.mean(), sync_dist=True)
        self.log("test/neg_elbo", neg_elbo.mean(), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if not self.in_warmstart or self.trainer.sanity_checking:
            return
        acc = float(self.trainer.callback_metrics["val/acc"])
        if acc > float(self.warmstart_best_acc):
            self.warmstart_best_acc.fill_(acc)
            self.warmstart_best_epoch.fill_(self.current_epoch)
            self._best_state = {k: v.detach().clone() for k, v in self.state_dict().items()}

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.in_warmstart or bool(self.warmstart_done):
            return
        if self.cfg.optim.warmstart_epochs > 0 and self._best_state is not None:
            best = {k: v for k, v in self._best_state.items() if not k.startswith("warmstart_")}
            self.load_state_dict(best, strict=False)
            if self.run_dir is not None and self.trainer.is_global_zero:
                from latentgrad.experiments.checkpoint import atomic_torch_save

                atomic_torch_save(
                    {
                        "state_dict": best,
                        "epoch": int(self.warmstart_best_epoch),
                        "val_acc": float(self.warmstart_best_acc),
                    },
                    Path(self.run_dir) / "warmstart.ckpt",
                )
        self._best_state = None
        self.warmstart_done.fill_(True)
        for opt in self.trainer.optimizers:
            opt.state.clear()
            for group in opt.param_groups:
                group["lr"] = self.cfg.optim.lr
                group["weight_decay"] = self.cfg.optim.weight_decay

    def configure_optimizers(self) -> torch.optim.Optimizer:
        warm = self.cfg.optim.warmstart_epochs > 0
        return adam(
            self.parameters(),
            lr=self.cfg.optim.warmstart_lr if warm else self.cfg.optim.lr,
            weight_decay=0.0 if warm else self.cfg.optim.weight_decay,
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self._best_state is not None:
            checkpoint["warmstart_best_state"] = self._best_state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._best_state = checkpoint.get("warmstart_best_state")

    def summary(self) -> dict[str, float]:
        """Run-level numbers for ``metrics.json`` beyond the logged test metrics."""
        out = super().summary()
        if self.cfg.optim.warmstart_epochs > 0:
            out["warmstart_best_epoch"] = int(self.warmstart_best_epoch)
            out["warmstart_val_acc"] = float(self.warmstart_best_acc)
        return out


def build_run(config: dict, run_dir: str | None) -> tuple[SSVAE, SSVAEData]:
    """The task entry point used by the runner: (LightningModule, LightningDataModule)."""
    cfg = build(SSVAEConfig, config)
    data = SSVAEData(cfg.data, cfg.optim.warmstart_epochs, cfg.eval_test_every_epoch)
    data.setup()
    return SSVAE(config, data.input_dim, run_dir), data


# metric name -> (label, higher is better); the report shows these, in this order
REPORT_METRICS = {
    "test/acc": ("test accuracy", True),
    "test/neg_elbo": ("test -ELBO (nats)", False),
    "decoder_calls": ("decoder calls / example", False),
}
CURVE_METRICS = ("test_epoch/neg_elbo", "test_epoch/acc")
