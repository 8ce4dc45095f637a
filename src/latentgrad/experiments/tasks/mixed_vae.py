"""Task ``mixed_vae``: the MNIST VAE with a K-dimensional latent on the simplex (Farinhas et al.
2022 §5.3), with a Gaussian reference.

Data: MNIST train = the first 55,000 training images, validation = the last 5,000, test =
10,000; training images are binarised afresh at every draw (pixel > U(0, 1)); validation and
test images once, with ``data.eval_binarize_seed`` (the same images at every evaluation).

Model: decoder ``K → 500 → 500 → 784`` Bernoulli logits (ReLU; dropout ``model.dropout_gen``
before each linear layer); encoder ``784 → 500 → 500`` (dropout ``model.dropout_inf``) then a head
for the latent's parameters. ``ℓ(z) = −log p(x|z)`` (the distortion). Latents (the estimator):

- ``gaussian``: R^K, prior N(0, I), q diagonal Gaussian (softplus scale); reparameterised,
  closed-form KL (the continuous reference);
- ``dirichlet``: the simplex, prior Dir(1), q Dirichlet (concentrations softplus, clamped to
  ``[1e-3, 1e3]``); implicit reparameterisation, closed-form KL;
- ``mixed_dirichlet``: prior max-entropy faces (``estimator_args.face_prior``) × Dir(1) on each
  face; q Gibbs faces (scores clamped to ±10) × Dirichlet; faces by score function with a
  self-critic baseline, exact face KL, Dirichlet KL at the sampled face;
- ``gaussian_sparsemax``: q = sparsemax(μ + σε) (μ clamped to ±100, σ softplus clamped to
  ``[1e-3, 1e3]``), the Mixed Dirichlet prior (faces: ``estimator_args.face_prior``); pathwise,
  with ``−log p(y)`` added to the loss and the exact ``−log q(y)`` as entropy, i.e. a one-sample
  KL;
- ``softmax``: a one-hot latent with K values, uniform prior, exact marginalization;
- ``st_gumbel``: the same one-hot latent by straight-through Gumbel (logits clamped to ±10).

Optimisation: Adam with two parameter groups — the generator (``optim.lr``,
``optim.weight_decay``) and the inference network (``optim.lr_inference``,
``optim.weight_decay_inference``) — which is two Adam optimisers; each group's gradient is clipped
to global norm ``optim.clip_norm``; ``optim.warmup_steps`` > 0 ramps both rates linearly.

Metrics (validation every epoch, test at the end), nats: ``nll`` by importance sampling,
``log p̂(x) = logsumexp_s [log p(x|z_s) + log p(z_s) − log q(z_s|x)] − log S``, ``z_s ~ q``, in the
latent's base measure (Lebesgue on R^K or the simplex; the direct sum of the faces' Lebesgue
measures for the mixed latents), S = ``importance.val_samples`` / ``test_samples``; the one-hot
latents' log p(x) is exact (a sum over the K values). ``rate`` = KL(q ‖ prior) (closed form;
Mixed Dirichlet: exact face part ``rate_face`` plus the within-face part ``rate_dirichlet`` at
``importance.rate_samples`` sampled faces; Gaussian-sparsemax: the same number of samples of
``log q(y) − log p(y)``), ``distortion`` = E_q[ℓ] (one sample from the estimator, exact for
``softmax``), ``distortion_mode`` (ℓ at the mean, the Dirichlet mean on the most probable face,
sparsemax(μ), or the most probable value), ``neg_elbo`` = rate + distortion, ``nll_bpd`` = nll /
(784 ln 2).

Compute at the protocol's scale (K = 10, one CPU thread of the shared 2-core development machine,
other runs paused; docs/guide/tasks/mixed_vae.md has the table): a training step takes 15–17 ms
for ``gaussian``, ``dirichlet`` and ``st_gumbel``, about 27 ms for ``mixed_dirichlet`` (its
self-critic baseline decodes a second sample; 10% less since its face terms are computed once
per distribution: 27.5 vs 30.4 ms back to back) and 28–29 ms for ``gaussian_sparsemax`` (its
exact ``log_prob``), 15–16 ms for ``softmax`` (its K one-hot latents decoded once per batch;
64 ms when each image decoded them), plus 3–5 ms of Lightning and loader; the bare networks are
55–75% of a step. The test NLL (1,000 samples on
the 10,000 test images) takes about 4.5 minutes (``gaussian_sparsemax``: 10–12, its density:
log Φ at 97 quadrature nodes × K per sample), validation 13.5 s a pass (about 28 s). Profile
``faithful`` keeps all 500 epochs and validates after every 10th (validation selects nothing
here, so only the curves change): 1.5–2.75 CPU-hours per run, about 11 for one seed of the six.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Categorical, Distribution, kl_divergence

from latentgrad.distributions.faces import NonEmptyFaces
from latentgrad.distributions.gaussian_sparsemax import GaussianSparsemax
from latentgrad.distributions.mixed_dirichlet import MixedDirichlet
from latentgrad.estimators.base import LossFn
from latentgrad.experiments.config import build, require
from latentgrad.experiments.data.images import ImageDataConfig, ImageSplits, binarize
from latentgrad.experiments.estimators import mixed_dirichlet_prior, mlp
from latentgrad.experiments.tasks.base import (
    OptimConfig,
    SampledEvaluation,
    TaskConfig,
    adam,
    evaluation,
)
from latentgrad.experiments.tasks.likelihood import ImportanceConfig, importance_log_likelihood
from latentgrad.mappings import sparsemax

ESTIMATORS = ("gaussian", "dirichlet", "mixed_dirichlet", "gaussian_sparsemax", "softmax",
              "st_gumbel")
ONE_HOT = ("softmax", "st_gumbel")
ESTIMATOR_ARGS = {"gaussian_sparsemax": ("face_prior",)}  # its prior: the Mixed Dirichlet's
HEADS = {"gaussian": 2, "dirichlet": 1, "mixed_dirichlet": 2, "gaussian_sparsemax": 2,
         "softmax": 1, "st_gumbel": 1}  # parameters per latent coordinate
CONCENTRATION = (1e-3, 1e3)


@dataclass
class MixedModelConfig:
    latent_dim: int = 10
    hidden: list[int] = field(default_factory=lambda: [500, 500])
    dropout_inf: float = 0.0
    dropout_gen: float = 0.0

    def validate(self) -> None:
        require(self.latent_dim >= 2, "latent_dim", f"must be >= 2, got {self.latent_dim}")
        require(all(h >= 1 for h in self.hidden), "hidden", "layer widths must be >= 1")
        for key in ("dropout_inf", "dropout_gen"):
            value = getattr(self, key)
            require(0 <= value < 1, key, f"must be in [0, 1), got {value}")


@dataclass
class MixedOptimConfig(OptimConfig):
    """``lr``/``weight_decay``: the generator's; ``*_inference``: the inference network's."""

    lr_inference: float = 1e-3
    weight_decay_inference: float = 1e-6
    clip_norm: float = 5.0
    warmup_steps: int = 0

    def validate(self) -> None:
        super().validate()
        require(self.lr_inference > 0, "lr_inference", f"must be > 0, got {self.lr_inference}")
        require(self.weight_decay_inference >= 0, "weight_decay_inference", "must be >= 0")
        require(self.clip_norm > 0, "clip_norm", f"must be > 0, got {self.clip_norm}")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")


@dataclass
class MixedImportanceConfig(ImportanceConfig):
    """Importance sampling, plus the samples of the sampled parts of the rate."""

    rate_samples: int = 16

    def validate(self) -> None:
        super().validate()
        require(self.rate_samples >= 1, "rate_samples", f"must be >= 1, got {self.rate_samples}")


@dataclass
class MixedVAEConfig(TaskConfig):
    task: str = "mixed_vae"
    estimator: str = "mixed_dirichlet"
    data: ImageDataConfig = field(
        default_factory=lambda: ImageDataConfig(dataset="mnist", batch_size=100,
                                                eval_binarize_seed=1234)
    )
    model: MixedModelConfig = field(default_factory=MixedModelConfig)
    optim: MixedOptimConfig = field(default_factory=MixedOptimConfig)
    importance: MixedImportanceConfig = field(default_factory=MixedImportanceConfig)

    def validate(self) -> None:
        super().validate()
        require(self.estimator in ESTIMATORS, "estimator",
                f"mixed_vae supports {', '.join(ESTIMATORS)}, got {self.estimator!r}")


Config = MixedVAEConfig


class MixedVAE(SampledEvaluation):
    """Encoder, decoder and estimator of the simplex-latent VAE (module docstring)."""

    config_class = MixedVAEConfig
    # the protocol's second report: the test at the weights of the best validation NLL
    best_weights_prefixes = ("encoder.", "decoder.", "estimator.")

    def __init__(self, config: dict, input_dim: int, run_dir: str | None = None,
                 dataset_label: str = "") -> None:
        super().__init__(config, run_dir, input_dim=input_dim, dataset_label=dataset_label)
        m, name = self.cfg.model, self.cfg.estimator
        self.k, self.name, self.input_dim, self.dataset_label = (
            m.latent_dim, name, input_dim, dataset_label)
        self.encoder = mlp([input_dim, *m.hidden, HEADS[name] * m.latent_dim], m.dropout_inf)
        self.decoder = mlp([m.latent_dim, *m.hidden, input_dim], m.dropout_gen)
        # exact marginalization hands the loss category indices: the K one-hot latents are the
        # same for every image, so the loss decodes them once per batch (``category_distortion``)
        extra: dict = {"one_hot": False} if name == "softmax" else {}
        if name == "gaussian_sparsemax":  # its KL in the estimator: a score-function gradient
            extra["prior"] = mixed_dirichlet_prior(m.latent_dim, self.cfg.estimator_args.face_prior)
        self.estimator = self.make_estimator(m.latent_dim, input_dim, **extra)

    # ---- the model's math (no estimator math here)

    def scores(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Binary images ``(B, 784)`` -> the estimator's scores (module docstring)."""
        h = self.encoder(x)
        if self.name in ("softmax", "st_gumbel"):
            return h.clamp(-10, 10) if self.name == "st_gumbel" else h
        if self.name == "dirichlet":
            return F.softplus(h).clamp(*CONCENTRATION)
        a, b = h.chunk(2, -1)
        if self.name == "gaussian":
            return a, F.softplus(b)
        if self.name == "mixed_dirichlet":
            return a.clamp(-10, 10), F.softplus(b).clamp(*CONCENTRATION)
        return a.clamp(-100, 100), F.softplus(b).clamp(*CONCENTRATION)

    def distortion(self, x: Tensor, z: Tensor) -> Tensor:
        """``−log p(x|z)`` Bernoulli: images ``(N, 784)`` in {0, 1}, latents ``(N, K)`` ->
        ``(N,)``."""
        logits = self.decoder(z)
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)

    def category_distortion(self, x: Tensor) -> Tensor:
        """``−log p(x|e_k)`` of images ``(B, 784)`` at every one-hot latent -> ``(B, K)``: the
        decoder's K logit rows ``l_k`` once, then ``Σ_i softplus(l_ki) − x·l_k`` (the Bernoulli
        NLL; the same as ``distortion`` when the decoder has no active dropout)."""
        logits = self.decoder(torch.eye(self.k, dtype=x.dtype, device=x.device))
        return F.softplus(logits).sum(-1) - x @ logits.T

    def prior(self, like: Tensor) -> Distribution | None:
        """The estimator's prior of the continuous and mixed latents (their KL is trained there),
        event shape (K,), on ``like``'s device in its dtype; None for the one-hot latents (their
        prior is uniform)."""
        if self.name in ONE_HOT:
            return None
        return self.estimator.prior_like(like.new_empty(self.k))

    def shared_decodes(self) -> bool:
        """Whether every image may share the decoder's logits of one latent (no dropout active
        in the decoder)."""
        return not (self.training and self.cfg.model.dropout_gen > 0)

    def distortion_fn(self, x: Tensor) -> LossFn:
        """``ℓ(z, rows) = distortion(x[rows], z)``; category indices ``z`` ``(N,)`` (exact
        marginalization) read the batch's ``category_distortion``."""

        def loss(z: Tensor, rows: Tensor) -> Tensor:
            if not z.is_floating_point():
                if self.shared_decodes():
                    return self.category_distortion(x)[rows, z]
                z = F.one_hot(z, self.k).to(x.dtype)
            return self.distortion(x[rows], z)

        return loss

    def loss_fn(self, x: Tensor) -> LossFn:
        """Training ``loss_fn(z, rows)``: the distortion (every KL is the estimator's: a
        direct-sum log-density jumps between faces, so ``−log p(z)`` differentiated pathwise in z
        was a biased gradient of Gaussian-sparsemax's KL)."""
        return self.distortion_fn(x)

    def posterior(self, scores: Tensor | tuple[Tensor, Tensor]) -> Distribution:
        """q(z|x) as a distribution with ``sample`` and a ``log_prob`` in the latent's measure."""
        if self.name in ONE_HOT:
            return Categorical(logits=scores)
        if self.name in ("gaussian", "dirichlet"):
            return self.estimator.distribution(scores)
        if self.name == "mixed_dirichlet":
            return MixedDirichlet(NonEmptyFaces(scores[0]), scores[1])
        return GaussianSparsemax(*scores)

    def mode_latent(self, scores: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        if self.name in ONE_HOT:
            return super().mode_latent(scores)
        if self.name == "gaussian":
            return scores[0]
        if self.name == "dirichlet":
            return scores / scores.sum(-1, keepdim=True)
        if self.name == "mixed_dirichlet":
            alpha = NonEmptyFaces(scores[0]).mode * scores[1]
            return alpha / alpha.sum(-1, keepdim=True)
        return sparsemax(scores[0], dim=-1)

    def rate(self, scores: Tensor | tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        """KL(q ‖ prior) per example ``(B,)`` (and its parts for Mixed Dirichlet)."""
        q = self.posterior(scores)
        n = self.cfg.importance.rate_samples
        if self.name in ONE_HOT:
            return {"rate": math.log(self.k) - q.entropy()}
        if self.name in ("gaussian", "dirichlet"):
            return {"rate": kl_divergence(q, self.prior(q.mean))}
        prior = self.prior(scores[0])
        if self.name == "gaussian_sparsemax":
            y = q.sample((n,))
            return {"rate": (q.log_prob(y) - prior.log_prob(y)).mean(0)}
        face = kl_divergence(q.faces, prior.faces).clamp_min(0)
        within = q.dirichlet_kl(prior, q.faces.sample((n,))).mean(0)
        return {"rate": face + within, "rate_face": face, "rate_dirichlet": within}

    @evaluation()
    def log_likelihood(self, x: Tensor, scores: Tensor | tuple[Tensor, Tensor],
                       n_samples: int) -> Tensor:
        """``log p(x)`` ``(B,)``: exact for one-hot latents, importance-sampled otherwise."""
        b = x.shape[0]
        if self.name in ONE_HOT:
            return torch.logsumexp(-self.category_distortion(x), -1) - math.log(self.k)
        q = self.posterior(scores)
        prior = self.prior(x)

        def log_joint(z: Tensor) -> Tensor:
            n = z.shape[0]
            log_lik = -self.distortion(x.repeat(n, 1), z.flatten(0, 1)).view(n, b)
            return log_lik + prior.log_prob(z)

        return importance_log_likelihood(log_joint, lambda n: q.sample((n,)), q.log_prob,
                                         n_samples, self.cfg.importance.chunk(b))

    # ---- evaluation

    @evaluation()
    def evaluate(self, images: Tensor, n_samples: int) -> dict[str, Tensor]:
        """Per-example ``(B,)`` evaluation metrics (module docstring)."""
        x = binarize(images).to(self.decoder[-1].weight.dtype)
        scores = self.scores(x)
        readings, out = self.readings(scores, self.distortion_fn(x), x)
        rates = self.rate(scores)
        distortion = readings[self.estimator_reading]
        nll = -self.log_likelihood(x, scores, n_samples)
        return {
            "nll": nll,
            "nll_bpd": nll / (self.input_dim * math.log(2)),
            "neg_elbo": rates["rate"] + distortion,
            **rates,
            "distortion": distortion,
            "distortion_mode": readings["mode"],
            "decoder_calls": out.support_size.to(nll.dtype),
        }

    # ---- Lightning hooks

    def training_step(self, batch: tuple[Tensor], batch_idx: int) -> Tensor:
        x = binarize(batch[0]).to(self.decoder[-1].weight.dtype)
        out = self.estimate(self.scores(x), self.loss_fn(x), x)
        self.record_step(out)
        self.log_train(lambda: {"train/loss": out.loss.detach(), **self.step_logs(out)})
        return out.loss

    def parameter_groups(self) -> tuple[list[Tensor], list[Tensor]]:
        """(generator parameters, inference parameters: everything else)."""
        gen = list(self.decoder.parameters())
        ids = {id(p) for p in gen}
        return gen, [p for p in self.parameters() if id(p) not in ids]

    def configure_optimizers(self) -> dict:
        o = self.cfg.optim
        gen, inf = self.parameter_groups()
        opt = adam([
            {"params": gen, "lr": o.lr, "weight_decay": o.weight_decay},
            {"params": inf, "lr": o.lr_inference, "weight_decay": o.weight_decay_inference},
        ])
        warmup = o.warmup_steps

        def ramp(step: int) -> float:
            return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, ramp)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip each group's gradient to global norm ``optim.clip_norm`` (two optimisers)."""
        for params in self.parameter_groups():
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.clip_norm)


def build_run(config: dict, run_dir: str | None) -> tuple[MixedVAE, ImageSplits]:
    """The task entry point used by the runner: (LightningModule, LightningDataModule)."""
    cfg = build(MixedVAEConfig, config)
    data = ImageSplits(cfg.data)
    data.setup()
    return MixedVAE(config, data.input_dim, run_dir, data.dataset_label), data


# metric name -> (label, higher is better); the report shows these, in this order
REPORT_METRICS = {
    "test/nll": ("test NLL (nats, IS)", False),
    "test/neg_elbo": ("test -ELBO (nats)", False),
    "test/rate": ("rate (nats)", False),
    "test/distortion": ("distortion (nats)", False),
    "test/rate_face": ("rate, faces (nats)", False),
    "test/rate_dirichlet": ("rate, within faces (nats)", False),
}
CURVE_METRICS = ("val/nll", "val/rate")
