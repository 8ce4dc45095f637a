"""Task ``bitvector_vae``: a VAE with a D-bit latent vector and a 256-way pixel likelihood
(Correia et al. 2020 §5.3; Farinhas et al. 2022 §5.2 for the mixed binary latents).

Data: Fashion-MNIST when present, otherwise MNIST (reported as ``mnist-substitute``); train =
the first 55,000 training images, validation = the last 5,000, test = 10,000. The encoder sees
pixel / 255; the targets are the raw bytes, no binarisation.

Model: encoder ``784 → 128 → D`` (ReLU) gives the bit scores t; decoder ``D → 128 → 784·5``
(ReLU hidden layer), reshaped to ``784 × 5``, then one ``Linear(5 → 256)`` shared by all pixels
gives each pixel's 256 logits; ``ℓ(z) = −log p(x|z)`` (the distortion), as in the reference
code from its second commit on (its first had a log-softmax inside every MLP, removed the next
day, before any of its run scripts).
Prior and loss ``−ELBO = E_q[ℓ(z)] + KL(q ‖ prior)``, per estimator family:

- discrete (``sfe``, ``sfe_plus``, ``nvil``, ``gumbel``, ``st_gumbel``): q = independent
  Bernoulli(σ(t)), uniform prior on {0,1}^D, ``KL = D log 2 − H(q)``; Gumbel decodes a Binary
  Concrete relaxation in training;
- sparse (``topk_sparsemax`` with k = ``estimator_args.topk``, ``sparsemap``,
  ``sparsemap_budget`` with at most D/2 ones): q is the sparse distribution over bit vectors,
  same prior and KL; SparseMAP's scores are ``(t + 1)/2`` with ``model.sparsemap_shift`` (the
  reference's two-state encoding of a bit, ``[on, off]`` scored ``(t, 0)``, is exactly that shift);
- mixed (``hard_concrete``, ``gaussian_sparsemax``): independent bits on [0, 1] with point
  masses at 0 and 1, prior ``⅓δ_0 + ⅓δ_1 + ⅓U(0, 1)`` per bit, ``KL = D log 3 − H⊕(q)``
  (direct-sum entropy);
- continuous (``binary_concrete``): Binary Concrete bits on (0, 1), prior U(0, 1)^D,
  ``KL = −h(q)`` (one-sample density estimate).

Every estimator runs with ``entropy_coeff = 1``, so its surrogate is the −ELBO up to the
constant. Metrics (validation every epoch, test at the end): ``rate`` = KL, ``distortion`` =
``E_q[ℓ]`` (the estimator's reading: exact over the support for sparse methods, one fresh
sample otherwise, hard for the discrete family: Gumbel-Softmax's relaxed draw y is read as the
hard draw ``1[y > 1/2]`` of the same noise, an exact sample of the Bernoulli q whose KL the rate
is), ``distortion_mode`` (ℓ at the most probable z: ``1[t > 0]``, the budgeted
MAP, or per mixed bit the more probable of 0 and 1), ``neg_elbo`` = rate + distortion, the
importance-sampled ``nll`` (nats) and ``nll_bpd`` = nll / (784 ln 2) with
``importance.val_samples`` / ``importance.test_samples`` draws: discrete methods (Gumbel too)
propose from the Bernoulli q and decode hard z; sparse methods sum exactly over the support plus
the prior-sampled remainder outside it; mixed methods propose from q in the direct-sum measure;
Binary Concrete from q in the Lebesgue measure. ``decoder_calls``: the estimator's
``support_size`` per example, training mean in ``metrics.json``, per-epoch median and quartiles
in the logs (``train/decoder_calls_median``, ``_q25``, ``_q75``); mixed runs also log
``exact_bits``, the fraction of sampled coordinates exactly 0 or 1.

The pixel likelihood (``ℓ`` from the decoder features) runs through ``pixel_likelihood``: with
``model.fused_likelihood`` (on by default, off in the ``tiny`` test profile) through CPU kernels
that ``torch.compile`` generates and that never store the 784 × 256 logits of a decoder call,
otherwise (and on other devices, or where compilation fails) through ``F.cross_entropy`` on the
stored logits; the same values up to rounding, so a run with either differs only in the last bits.

Compute at the protocol's scale (D = 32, SFE; one thread of a 2-vCPU AMD EPYC virtual machine
with the other processes paused; ``latentgrad run bitvector_vae --estimator sfe profile=faithful
trainer.max_steps=300 trainer.limit_eval_batches=1 importance.test_samples=256``): one decoder
call scores 784 × 256 pixel logits, and that is the model's own cost. Training runs at about 18
steps per second (9.3 with the plain likelihood; 3.7 before the shared pixel layer's weight
gradient was computed as ``(hᵀ g)ᵀ`` and before the CLI asked for transparent huge pages), i.e.
48 s per epoch of 860 steps (the sparse methods make up to ~10–30 calls per image early in
training, fewer later); an evaluation decoder call costs 0.19–0.20 ms (0.21 before its
logsumexp took one pass, 0.65 plain, 1.2 before that), so validation with 16 samples on the
5,000 validation images takes about 16 s and the test NLL with 1,024 samples on the 10,000 test
images about 31 minutes (10.3 million decoder calls). A run of the published protocol (100
epochs, validation after each) is about 2.3 CPU-hours with SFE (6 plain, 13 before). Profile
``faithful`` trains 50 of the 100 epochs and validates after every 10th: about 1.2 CPU-hours
with SFE (3.2 plain, 6.6 before), over a third of it the test NLL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentgrad.estimators.base import LossFn
from latentgrad.experiments.config import build, require
from latentgrad.experiments.data.images import ImageDataConfig, ImageSplits
from latentgrad.experiments.estimators import mlp
from latentgrad.experiments.tasks.base import SampledEvaluation, TaskConfig, evaluation
from latentgrad.experiments.tasks.likelihood import (
    ImportanceConfig,
    importance_log_likelihood,
    support_log_likelihood,
)
from latentgrad.experiments.tasks.pixel_likelihood import pixel_nll
from latentgrad.structures.bitvector import BitVector

PIXEL_VALUES = 256
FAMILIES = {
    "sfe": "discrete",
    "sfe_plus": "discrete",
    "nvil": "discrete",
    "gumbel": "discrete",
    "st_gumbel": "discrete",
    "topk_sparsemax": "sparse",
    "sparsemap": "sparse",
    "sparsemap_budget": "sparse",
    "hard_concrete": "mixed",
    "gaussian_sparsemax": "mixed",
    "binary_concrete": "continuous",
}
# log of the prior's normaliser per bit: KL(q || prior) = D * this - H(q)
LOG_PRIOR_SIZE = {"discrete": math.log(2), "sparse": math.log(2), "mixed": math.log(3),
                  "continuous": 0.0}


@dataclass
class ModelConfig:
    latent_bits: int = 32
    hidden: int = 128
    out_rank: int = 5
    sparsemap_shift: bool = True
    fused_likelihood: bool = True  # the pixel likelihood's fused path (module docstring)

    def validate(self) -> None:
        for key in ("latent_bits", "hidden", "out_rank"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")


@dataclass
class BitVectorVAEConfig(TaskConfig):
    task: str = "bitvector_vae"
    estimator: str = "sparsemap"
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)

    def validate(self) -> None:
        super().validate()
        require(
            self.estimator in FAMILIES,
            "estimator",
            f"bitvector_vae supports {', '.join(FAMILIES)}, got {self.estimator!r}",
        )


Config = BitVectorVAEConfig


class BitVectorVAE(SampledEvaluation):
    """Encoder, decoder and estimator of the bit-vector VAE (module docstring)."""

    config_class = BitVectorVAEConfig
    progress_metric = "nll_bpd"

    def __init__(self, config: dict, input_dim: int, run_dir: str | None = None,
                 dataset_label: str = "") -> None:
        super().__init__(config, run_dir, input_dim=input_dim, dataset_label=dataset_label)
        m = self.cfg.model
        self.bits, self.input_dim, self.out_rank = m.latent_bits, input_dim, m.out_rank
        self.dataset_label = dataset_label
        self.family = FAMILIES[self.cfg.estimator]
        self.encoder = mlp([input_dim, m.hidden, m.latent_bits])
        self.decoder = mlp([m.latent_bits, m.hidden, input_dim * m.out_rank])
        self.pixel = nn.Linear(m.out_rank, PIXEL_VALUES)
        self.estimator = self.make_estimator(
            m.latent_bits, input_dim, structure=BitVector(self.bits)
        )
        self.shift = m.sparsemap_shift and self.cfg.estimator.startswith("sparsemap")

    # ---- the model's math (no estimator math here)

    def scores(self, inputs: Tensor) -> Tensor:
        """Pixel / 255 ``(B, 784)`` -> the estimator's bit scores ``(B, D)``."""
        t = self.encoder(inputs)
        return (t + 1) / 2 if self.shift else t

    def distortion(self, x: Tensor, z: Tensor) -> Tensor:
        """``−log p(x|z)``: bytes ``x`` ``(N, 784)`` long, latents ``z`` ``(N, D)`` -> ``(N,)``."""
        features = self.decoder(z).view(z.shape[0], self.input_dim, self.out_rank)
        return pixel_nll(features, x, self.pixel, fused=self.cfg.model.fused_likelihood)

    def loss_fn(self, x: Tensor) -> LossFn:
        """The estimator's ``loss_fn(z, rows)``: the distortion of image ``rows[n]`` at ``z[n]``."""
        return lambda z, rows: self.distortion(x[rows], z)

    def rate(self, entropy: Tensor) -> Tensor:
        """``KL(q ‖ prior) = D log|prior| − H(q)`` from the estimator's entropy ``(B,)``."""
        return self.bits * LOG_PRIOR_SIZE[self.family] - entropy

    def mode_latent(self, scores: Tensor) -> Tensor:
        if self.family == "mixed":
            dist = self.estimator.distribution(scores)
            return (dist.log_prob_one() > dist.log_prob_zero()).to(scores.dtype)
        return self.estimator.structure.argmax(scores).to(scores.dtype)

    def inputs(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 images -> (byte targets (B, 784) long, encoder input pixel / 255)."""
        return images.long(), images.to(self.pixel.weight.dtype) / 255.0

    # ---- importance-sampled log p(x)

    @evaluation()
    def log_likelihood(self, x: Tensor, scores: Tensor, n_samples: int) -> Tensor:
        """``log p(x)`` ``(B,)`` by importance sampling with the family's proposal (module
        docstring)."""
        b, d = scores.shape
        chunk = self.cfg.importance.chunk(b)
        log_prior = -d * LOG_PRIOR_SIZE[self.family]

        def log_lik(z: Tensor) -> Tensor:
            n = z.shape[0]
            return -self.distortion(x.repeat(n, 1), z.flatten(0, 1)).view(n, b)

        def log_joint(z: Tensor) -> Tensor:
            return log_lik(z) + log_prior

        if self.family == "sparse":
            result = self.estimator.solve(scores)
            half = torch.full((b, d), 0.5, dtype=scores.dtype, device=scores.device)
            return support_log_likelihood(
                log_joint, result.support.to(scores.dtype), result.weights > 0,
                lambda n: torch.bernoulli(half.expand(n, b, d)),
                lambda z: z.new_full(z.shape[:2], log_prior), n_samples, chunk,
            )
        if self.family == "discrete":
            probs = torch.sigmoid(scores)

            def log_q(z: Tensor) -> Tensor:
                return torch.where(z > 0, F.logsigmoid(scores), F.logsigmoid(-scores)).sum(-1)

            return importance_log_likelihood(
                log_joint, lambda n: torch.bernoulli(probs.expand(n, b, d)), log_q, n_samples,
                chunk,
            )
        if self.family == "mixed":
            dist = self.estimator.distribution(scores)
            return importance_log_likelihood(
                log_joint, lambda n: dist.sample((n,)), lambda z: dist.log_prob(z).sum(-1),
                n_samples, chunk,
            )
        return self._concrete_log_likelihood(log_lik, scores, n_samples, chunk)

    def _concrete_log_likelihood(self, log_lik, scores: Tensor, n_samples: int,
                                 chunk: int) -> Tensor:
        """Binary Concrete proposal in the logit ``v = (t + L)/τ``, ``y = σ(v)``: the density of
        y is ``p(v) / (σ(v) σ(−v))``; the U(0, 1)^D prior has log-density 0."""
        from latentgrad.distributions.concrete import binary_concrete_logit_log_prob

        tau = self.estimator.temperature().to(scores)
        tiny = torch.finfo(scores.dtype).tiny

        def sample(n: int) -> Tensor:
            u = torch.rand((n, *scores.shape), dtype=scores.dtype, device=scores.device)
            u = u.clamp(tiny, 1 - torch.finfo(scores.dtype).eps)
            return (scores + torch.log(u) - torch.log1p(-u)) / tau

        def log_q(v: Tensor) -> Tensor:
            log_p = binary_concrete_logit_log_prob(v, scores.expand_as(v), tau)
            return (log_p - F.logsigmoid(v) - F.logsigmoid(-v)).sum(-1)

        return importance_log_likelihood(
            lambda v: log_lik(torch.sigmoid(v)), sample, log_q, n_samples, chunk
        )

    # ---- evaluation

    @evaluation()
    def evaluate(self, images: Tensor, n_samples: int) -> dict[str, Tensor]:
        """Per-example ``(B,)`` evaluation metrics (module docstring)."""
        x, inputs = self.inputs(images)
        scores = self.scores(inputs)
        loss_fn = self.loss_fn(x)
        readings, out = self.readings(scores, loss_fn, inputs)
        rate = self.rate(out.entropy)
        distortion = readings[self.estimator_reading]
        if self.family == "discrete" and not bool(((out.latents == 0) | (out.latents == 1)).all()):
            # a relaxed draw y = σ((t + L)/τ), one per example: its hard bits 1[t + L > 0] are
            # a draw of q
            distortion = loss_fn((out.latents > 0.5).to(out.latents.dtype), out.rows)
        nll = -self.log_likelihood(x, scores, n_samples)
        stats = {
            "nll": nll,
            "nll_bpd": nll / (self.input_dim * math.log(2)),
            "neg_elbo": rate + distortion,
            "rate": rate,
            "distortion": distortion,
            "distortion_mode": readings["mode"],
            "decoder_calls": out.support_size.to(rate.dtype),
        }
        if self.family == "mixed":
            y = self.estimator.distribution(scores).sample()
            stats["exact_bits"] = ((y == 0) | (y == 1)).to(rate.dtype).mean(-1)
        return stats

    # ---- Lightning hooks

    def training_step(self, batch: tuple[Tensor], batch_idx: int) -> Tensor:
        x, inputs = self.inputs(batch[0])
        out = self.estimate(self.scores(inputs), self.loss_fn(x), inputs)
        self.record_step(out)

        def logs() -> dict[str, Tensor]:
            rate = self.rate(out.entropy)
            return {
                "train/loss": out.loss.detach(),
                "train/rate": rate.mean(),
                "train/distortion": out.expected_loss.mean(),
                "train/neg_elbo": (rate + out.expected_loss).mean(),
                **self.step_logs(out),
            }

        self.log_train(logs)
        return out.loss


def build_run(config: dict, run_dir: str | None) -> tuple[BitVectorVAE, ImageSplits]:
    """The task entry point used by the runner: (LightningModule, LightningDataModule)."""
    cfg = build(BitVectorVAEConfig, config)
    data = ImageSplits(cfg.data)
    data.setup()
    return BitVectorVAE(config, data.input_dim, run_dir, data.dataset_label), data


# metric name -> (label, higher is better); the report shows these, in this order
REPORT_METRICS = {
    "test/nll_bpd": ("test NLL (bits/dim, IS)", False),
    "test/neg_elbo": ("test -ELBO (nats)", False),
    "test/rate": ("rate (nats)", False),
    "test/distortion": ("distortion (nats)", False),
    "decoder_calls": ("decoder calls / example (training)", False),
    "decoder_calls_final_median": ("decoder calls, last epoch (median)", False),
}
CURVE_METRICS = ("val/nll_bpd", "train/decoder_calls_median")
