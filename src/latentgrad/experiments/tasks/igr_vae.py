"""Task ``igr_vae``: discrete VAE with V categorical latents of K categories (Potapczynski et al.
2020, §5.2), trained with IGR-I, IGR-SB, IGR-Planar or Gumbel-Softmax relaxations.

Data: MNIST statically binarised (pixel/255 > 0.5, Bernoulli likelihood); Fashion-MNIST (user
files, pixels/255, Gaussian likelihood with mean σ(a) and std softplus(b) + 1e−6 per pixel);
Omniglot (user files, the reference split, rounded then resized bilinearly, so the Bernoulli
cross-entropy targets are not strictly binary, as in the reference). Without the user's files
those runs use MNIST with the same preprocessing and likelihood (``mnist-substitute``, stored as
the run's ``source``).

Model: encoder x → scores (Gumbel: V × K logits; IGR: V × (μ, ξ) of K − 1 coordinates, IGR-SB
K_max − 1 sticks); decoder of the V relaxed one-hots (V · K inputs) → pixels. ``linear``: one
dense layer each way; ``nonlinear``: 784→512→256→scores and V·K→256→512→pixels, ReLU.
Loss: the estimator's one-sample −ELBO ``ℓ(ψ) + KL``: IGR-I/IGR-SB with the one-sample Gaussian
log-ratio at the drawn sample (``estimator_args.igr_kl: sampled``, the reference's runs; or
``closed_form``, the exact Gaussian KL), IGR-Planar with the sampled log-ratio including the
flows' log-determinant, Gumbel-Softmax with the ExpConcrete log-ratio to a uniform Concrete prior
at τ₀. Priors: IGR-I and IGR-Planar the
isotropic IGR-I prior whose zero-temperature pmf is exactly uniform; IGR-SB a shared N(μ₀, σ₀²)
on the sticks, fitted (``model.sb_prior=fitted``, the reference's approach) so that the mean of
its relaxed samples is close (squared distance) to uniform over the first K categories, or
N(0, 1) (``standard``).

Test metrics (nats per image; hard samples are the one-hot ``argmax ψ`` of S =
``model.eval_samples`` fresh posterior draws, fed to the decoder):

- ``neg_elbo``: the training objective at one fresh relaxed draw;
- ``neg_elbo_closed_kl`` (IGR-I, IGR-SB): the same draw's NLL plus the exact Gaussian KL (the
  protocol's second test ELBO, beside the sampled KL the reference trains with);
- ``nll_paper``: the paper's estimator, ``−[logsumexp_s log p(x | h_s) − log S − KL_disc]`` with
  ``KL_disc`` the KL of the discrete posterior to the discrete prior (both uniform priors are
  exactly uniform): exact for Gumbel (softmax(θ)) and IGR-I (its zero-temperature pmf by
  quadrature); for IGR-Planar and IGR-SB the plug-in KL of the S samples' argmax frequencies (SB's
  discrete prior: argmax frequencies of ``model.sb_prior_samples`` prior draws, add-one
  smoothed). Not an importance-sampling bound.
- ``nll_is`` (Gumbel, IGR-I, whose discrete posterior pmf q(h|x) is known): the importance-sampled
  estimate of the discrete model ``p(x) = Σ_h p(h) p(x | h)`` (uniform p(h), decoder at one-hot
  h), ``−[logsumexp_s (log p(x | h_s) + log p(h_s) − log q(h_s | x)) − log S]``, h_s ~ q(h|x)
  exactly (argmax ψ is distributed as q: IGR-I's argmax does not depend on τ when δ = 1);
  an upper bound on −log p(x) in expectation, tight as S → ∞.
- ``mode_nll``: ``−log p(x | h)`` at the ``mode`` reading, the one-hot a draw takes at zero
  noise (``mode_latent``);
- ``vertex_distance``: mean Euclidean distance of a relaxed posterior draw to its nearest vertex;
  ``categories`` (IGR-SB): categories kept by the truncation.

Cost (one CPU thread, CPU time through the runner): 16–18 ms per training step of batch 100
(IGR-I 16, Gumbel 17, IGR-Planar 18; IGR-SB 30 ms, its K_max = 50 makes the encoder's head and
the decoder's input 5x wider), so a 300-epoch run of 180,000 steps takes 0.85–0.95 CPU-hours
(IGR-SB 1.55), testing on 10,000 images with 100 samples each 1–3.5 minutes more.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from latentgrad import validate_args
from latentgrad.distributions import IGR
from latentgrad.experiments.config import build, require
from latentgrad.experiments.data.batched import batched_loader
from latentgrad.experiments.data.idx import load_idx_dataset
from latentgrad.experiments.data.subsets import SubsetConfig
from latentgrad.experiments.estimators import mlp
from latentgrad.experiments.pmf_fit import RelaxedPmf, fit_pmf
from latentgrad.experiments.tasks.base import LatentTask, TaskConfig
from latentgrad.experiments.tasks.likelihood import importance_log_likelihood, log_mean_exp
from latentgrad.mappings import stick_breaking_logits

DATASETS = ("mnist", "fashion_mnist", "omniglot")
ARCHITECTURES = ("linear", "nonlinear")
SB_PRIORS = ("fitted", "standard")
IGR_VARIANTS = {"igr_i": "I", "igr_sb": "SB", "igr_planar": "planar"}
PMF_NODES = 16  # Gauss-Legendre nodes per panel of IGR-I's zero-temperature pmf
# examples per zero-temperature pmf evaluation: its (rows, K−1, nodes, K−1) float64 tensors stay
# a few MB (4 examples of V = 20, K = 10: 13 MB), ~2x faster than one call per test batch
PMF_CHUNK = 4
IS_CHUNK = 10_000  # (sample, example) pairs decoded at once by the importance sampler


@dataclass
class DataConfig(SubsetConfig):
    """``dataset`` and the rows used (``SubsetConfig``). ``substitute``: run on MNIST (labelled
    ``mnist-substitute``) when the files of ``dataset`` are absent."""

    dataset: str = "mnist"
    substitute: bool = True

    def validate(self) -> None:
        super().validate()
        require(self.dataset in DATASETS, "dataset", f"must be one of {DATASETS}")


@dataclass
class ModelConfig:
    """V = ``num_vars`` latents of K = ``num_categories`` (IGR-SB: up to ``sb_max_categories``).
    ``sb_prior_*``: the SB prior's fit (Adam steps, draws per step, learning rate) and the prior
    draws behind its discrete pmf at test."""

    num_vars: int = 20
    num_categories: int = 10
    sb_max_categories: int = 50
    architecture: str = "nonlinear"
    sb_prior: str = "fitted"
    sb_prior_fit_steps: int = 200
    sb_prior_fit_samples: int = 10_000
    sb_prior_fit_lr: float = 1e-2
    sb_prior_samples: int = 100_000
    eval_samples: int = 100

    def validate(self) -> None:
        for key in ("num_vars", "sb_prior_fit_steps", "sb_prior_fit_samples"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("sb_prior_samples", "eval_samples"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.num_categories >= 2, "num_categories", "must be >= 2")
        require(
            self.sb_max_categories >= max(3, self.num_categories),
            "sb_max_categories",
            "must be >= max(3, num_categories)",
        )
        require(self.architecture in ARCHITECTURES, "architecture", f"one of {ARCHITECTURES}")
        require(self.sb_prior in SB_PRIORS, "sb_prior", f"must be one of {SB_PRIORS}")
        require(self.sb_prior_fit_lr > 0, "sb_prior_fit_lr", "must be > 0")


@dataclass
class IGRVAEConfig(TaskConfig):
    task: str = "igr_vae"
    estimator: str = "igr_i"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    def validate(self) -> None:
        super().validate()
        choices = (*IGR_VARIANTS, "gumbel_concrete")
        require(self.estimator in choices, "estimator", f"must be one of {choices}")


Config = IGRVAEConfig


# ----------------------------------------------------------------------------------------- data


def load_images(cfg: DataConfig) -> tuple[Tensor, Tensor, str]:
    """-> train, test images ``(N, 784)`` float32 (binary for MNIST, in [0, 1] otherwise) and
    the data set used: when Fashion-MNIST or Omniglot files are absent and ``data.substitute``
    is on, MNIST with that data set's preprocessing (``mnist-substitute``)."""
    name = cfg.dataset
    try:
        if name == "omniglot":
            from latentgrad.experiments.data.omniglot import load_omniglot

            train, test = load_omniglot(cfg.path)
        else:
            train, test = (
                load_idx_dataset(name, split, cfg.path)[0].float() / 255.0
                for split in ("train", "test")
            )
    except FileNotFoundError:
        if name == "mnist" or not cfg.substitute:
            raise
        warnings.warn(f"{name} files not found: running on MNIST (mnist-substitute)", stacklevel=2)
        train, test = (
            load_idx_dataset("mnist", split)[0].float() / 255.0 for split in ("train", "test")
        )
        name = "mnist-substitute"
    if name == "mnist" or (name == "mnist-substitute" and cfg.dataset == "omniglot"):
        train, test = (train > 0.5).float(), (test > 0.5).float()  # static binarisation
    return train[: cfg.n_train].flatten(1), test[: cfg.n_test].flatten(1), name


class ImageData(L.LightningDataModule):
    def __init__(self, cfg: DataConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def setup(self, stage: str | None = None) -> None:
        if not hasattr(self, "train"):
            train, test, self.source = load_images(self.cfg)
            self.train, self.test = TensorDataset(train), TensorDataset(test)

    def _loader(self, ds: TensorDataset, shuffle: bool, batch_size: int) -> DataLoader:
        return batched_loader(ds, batch_size, shuffle, self.cfg.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, True, self.cfg.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test, False, self.cfg.eval_batch_size)


# ---------------------------------------------------------------------------------------- model


def fit_sb_prior(model_cfg: ModelConfig, temperature: float, threshold: float,
                 quantile: float) -> tuple[Tensor, Tensor]:
    """The shared IGR-SB prior ``(μ₀, σ₀)`` ``(K_max − 1,)``: fitted so that the mean of its
    relaxed draws is uniform over the first K categories (squared distance), or N(0, 1)."""
    k_max, k = model_cfg.sb_max_categories, model_cfg.num_categories
    if model_cfg.sb_prior == "standard":
        return torch.zeros(k_max - 1), torch.ones(k_max - 1)
    pmf = RelaxedPmf("igr_sb", k_max, temperature, 1 - threshold, quantile)
    target = torch.full((k_max,), -math.inf)
    target[:k] = -math.log(k)
    fit_pmf(pmf, target, model_cfg.sb_prior_fit_steps, model_cfg.sb_prior_fit_samples,
            model_cfg.sb_prior_fit_lr, kind="squared", tol=0.0)
    return pmf.loc.detach().clone(), pmf.log_scale.detach().exp()


class IGRVAE(LatentTask):
    """Encoder, decoder and estimator (module docstring)."""

    config_class = IGRVAEConfig

    def __init__(
        self,
        config: dict,
        pixels: int,
        likelihood: str,
        run_dir: str | None = None,
        source: str = "mnist",
    ) -> None:
        super().__init__(config, run_dir, pixels=pixels, likelihood=likelihood, source=source)
        cfg = self.cfg
        m, est = cfg.model, cfg.estimator_args
        self.likelihood = likelihood
        self.variant = IGR_VARIANTS.get(cfg.estimator)
        v = m.num_vars
        self.k = m.sb_max_categories if self.variant == "SB" else m.num_categories
        if self.variant is None:
            self.estimator = self.make_estimator(self.k, pixels)
        else:
            prior: object = "uniform"
            if self.variant == "SB":
                loc0, scale0 = fit_sb_prior(m, est.temperature, est.igr_threshold,
                                            est.igr_quantile)
                self.register_buffer("sb_prior_loc", loc0)
                self.register_buffer("sb_prior_scale", scale0)
                prior = (loc0, scale0)
            self.estimator = self.make_estimator(self.k, pixels, prior=prior, latent_shape=(v,))
        self.score_shape = self.estimator.score_shape((v, self.k))
        n_scores = math.prod(self.score_shape)
        n_out = pixels * (2 if likelihood == "gaussian" else 1)
        if m.architecture == "linear":
            self.encoder, self.decoder = nn.Linear(pixels, n_scores), nn.Linear(v * self.k, n_out)
        else:
            self.encoder = mlp([pixels, 512, 256, n_scores])
            self.decoder = mlp([v * self.k, 256, 512, n_out])

    # ---- the model's math (no estimator math here)

    def scores(self, x: Tensor) -> Tensor:
        return self.encoder(x).view(x.shape[0], *self.score_shape)

    def neg_log_lik(self, x: Tensor, z: Tensor) -> Tensor:
        """``−log p(x | z)``: x ``(N, D)``, z ``(N, V, K)`` -> ``(N,)``."""
        out = self.decoder(z.flatten(1))
        if self.likelihood == "bernoulli":
            return F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
        a, b = out.chunk(2, dim=-1)
        std = F.softplus(b) + 1e-6
        return -torch.distributions.Normal(torch.sigmoid(a), std).log_prob(x).sum(-1)

    def loss_fn(self, x: Tensor):
        def loss(z: Tensor, rows: Tensor) -> Tensor:
            return self.neg_log_lik(x[rows], z)

        return loss

    # ---- Lightning hooks

    def training_step(self, batch: tuple[Tensor], batch_idx: int) -> Tensor:
        (x,) = batch
        out = self.estimate(self.scores(x), self.loss_fn(x))
        self.record_step(out)

        def logs() -> dict[str, Tensor]:
            logs = {"train/loss": out.loss.detach(), **self.step_logs(out)}
            if "truncation" in out.logs:
                logs["train/categories"] = out.logs["truncation"].float() + 1
            if "kl" in out.logs:
                logs["train/kl"] = out.logs["kl"]
            return logs

        self.log_train(logs)
        return out.loss

    def posterior_draws(self, scores: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """``n`` fresh relaxed posterior draws per example through the estimator (eval mode):
        ψ ``(n, B, V, K)`` and their hard one-hots ``argmax ψ`` ``(n, B, V, K)``. The ``n`` copies
        of ``scores`` are not validated again (``evaluate`` checked them in its first estimator
        call; the checks were ~20 % of IGR-SB's test batch)."""
        drawn: list[Tensor] = []

        def capture(z: Tensor, rows: Tensor) -> Tensor:
            drawn.append(z)
            return torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)

        with validate_args(False):
            self.estimate(scores.expand(n, *scores.shape).flatten(0, 1), capture)
        psi = drawn[0].view(n, *scores.shape[:2], drawn[0].shape[-1])
        return psi, F.one_hot(psi.argmax(-1), psi.shape[-1]).to(psi.dtype)

    def mode_latent(self, scores: Tensor) -> Tensor:
        """One-hot ``(B, V, K)`` of the category a draw takes at zero noise: ``argmax θ``
        (Gumbel); ``argmax [λ(μ), 0]`` for IGR with λ the variant's map (identity, the planar
        flows, or the stick-breaking of σ(μ)) and 0 standing for the last category (δ = 1)."""
        if self.variant is None:
            return F.one_hot(scores.argmax(-1), self.k).to(scores.dtype)
        lam = scores[..., 0, :]
        if self.variant == "SB":
            lam = stick_breaking_logits(lam)[..., :-1]
        for flow in getattr(self.estimator, "flows", ()):
            lam, _ = flow(lam)
        lam = torch.cat([lam, torch.zeros_like(lam[..., :1])], -1)
        return F.one_hot(lam.argmax(-1), self.k).to(scores.dtype)

    def hard_nll(self, x: Tensor, hard: Tensor) -> Tensor:
        """``−log p(x | h)`` ``(n, B)`` of one-hots ``h`` ``(n, B, V, K)``."""
        n = hard.shape[0]
        return self.neg_log_lik(x.expand(n, *x.shape).flatten(0, 1), hard.flatten(0, 1)).view(
            n, x.shape[0]
        )

    def discrete_posterior(self, scores: Tensor) -> Tensor | None:
        """q(h|x) ``(B, V, K)`` where known exactly (Gumbel: softmax θ; IGR-I: its
        zero-temperature pmf, in chunks of rows), else None."""
        if self.variant is None:
            return scores.softmax(-1)
        if self.variant != "I":
            return None
        tau = float(self.estimator.temperature())
        chunks = [
            IGR(s[..., 0, :].double(), s[..., 1, :].double().exp(), tau).zero_temperature_pmf(
                PMF_NODES
            )
            for s in scores.split(PMF_CHUNK)
        ]
        return torch.cat(chunks).to(scores.dtype)

    def discrete_prior(self, like: Tensor) -> Tensor:
        """The prior pmf of one latent ``(K,)``: uniform, or IGR-SB's estimated one."""
        if self.variant != "SB":
            return torch.full((self.k,), 1.0 / self.k, dtype=like.dtype, device=like.device)
        if not hasattr(self, "_sb_prior_pmf"):
            from latentgrad.distributions import IGRStickBreaking

            est = self.cfg.estimator_args
            prior = IGRStickBreaking(self.sb_prior_loc, self.sb_prior_scale,
                                     float(self.estimator.temperature()),
                                     1 - est.igr_threshold, quantile=est.igr_quantile)
            draws = prior.sample((self.cfg.model.sb_prior_samples,)).argmax(-1)
            counts = torch.bincount(draws, minlength=self.k).to(like.dtype)
            self._sb_prior_pmf = (counts + 1) / (counts.sum() + self.k)
        return self._sb_prior_pmf.to(like)

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> dict[str, Tensor]:
        """Per-example ``(B,)`` test metrics (module docstring)."""
        scores = self.scores(x)
        out = self.estimate(scores, self.loss_fn(x))
        s = self.cfg.model.eval_samples
        psi, hard = self.posterior_draws(scores, s)
        q = self.discrete_posterior(scores)
        log_prior = self.discrete_prior(scores).log()
        q_kl = hard.mean(0) if q is None else q  # plug-in frequencies where q is not known
        kl_disc = (torch.xlogy(q_kl, q_kl) - q_kl * log_prior).sum((-2, -1))
        stats = {
            "neg_elbo": out.loss.expand(x.shape[0]),
            "mode_nll": self.neg_log_lik(x, self.mode_latent(scores)),
            "nll_paper": -(log_mean_exp(-self.hard_nll(x, hard)) - kl_disc),
            "vertex_distance": (psi - hard).norm(dim=-1).mean((0, 2)),
        }
        if q is not None:
            log_q = q.clamp_min(torch.finfo(q.dtype).tiny).log()
            stats["nll_is"] = -importance_log_likelihood(
                lambda h: (h * log_prior).sum((-2, -1)) - self.hard_nll(x, h),
                lambda n: self.posterior_draws(scores, n)[1],
                lambda h: (h * log_q).sum((-2, -1)),
                s,
                chunk=max(1, min(s, IS_CHUNK // x.shape[0])),
            )
        if self.variant in ("I", "SB"):
            stats["neg_elbo_closed_kl"] = out.expected_loss + self.estimator.closed_form_kl(scores)
        if self.variant == "SB":
            stats["categories"] = (psi > 0).sum(-1).max().to(x.dtype).expand(x.shape[0])
        return stats

    def test_step(self, batch: tuple[Tensor], batch_idx: int) -> None:
        (x,) = batch
        for key, value in self.evaluate(x).items():
            self.log(f"test/{key}", value.mean())


def build_run(config: dict, run_dir: str | None) -> tuple[IGRVAE, ImageData]:
    """The task entry point used by the runner: (LightningModule, LightningDataModule)."""
    cfg = build(IGRVAEConfig, config)
    data = ImageData(cfg.data)
    data.setup()
    likelihood = "gaussian" if cfg.data.dataset == "fashion_mnist" else "bernoulli"
    pixels = data.train.tensors[0].shape[1]
    return IGRVAE(config, pixels, likelihood, run_dir, data.source), data


# metric name -> (label, higher is better); the report shows these, in this order
REPORT_METRICS = {
    "test/nll_paper": ("test NLL, paper's estimator (nats)", False),
    "test/nll_is": ("test NLL, importance sampled (nats)", False),
    "test/neg_elbo": ("test -ELBO (nats)", False),
    "test/mode_nll": ("test -log p(x|mode) (nats)", False),
    "test/vertex_distance": ("distance to nearest vertex", False),
    "test/categories": ("categories used (SB)", False),
}
CURVE_METRICS = ("train/loss",)
