"""Config sections shared by every task: the Lightning trainer and the estimator settings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from latentgrad.experiments.config import require


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` settings. ``max_steps = -1`` means no step limit (epochs decide).

    ``check_val_every_n_epoch``: validate after every n-th epoch only; in a task that selects
    nothing by validation (no best-validation checkpoint) this changes only the logged curves,
    never the trained weights or the test metrics.
    ``num_threads``: CPU threads of torch in this process (null: torch's default). Small models
    on a shared CPU run several times faster with 1 thread than with contended threads.
    ``huge_pages``: the ``latentgrad`` command backs tensors of 2 MiB or more with transparent
    huge pages (``experiments.allocator``); pays where a step allocates tens of MB afresh.
    ``flush_denormal``: CPU arithmetic treats subnormal floats (below 1.2e-38 in float32) as 0
    (``torch.set_flush_denormal``; x86 with SSE3, the main thread and threads it starts later).
    Long runs need it: Adam's second moments of parameters whose gradients stay 0 (decoder
    weights of always-white pixels) decay into the subnormal range, where every operation on
    them is ~20x slower (mixed_vae at epoch 400: Adam's step 18-20 ms instead of 0.95).
    ``loss_chunk``: evaluate the estimator's loss on at most this many (example, latent) pairs
    per call, each chunk checkpointed in training (``estimators.chunked``): peak memory follows
    the chunk instead of the whole support, for one more forward of the loss (null: one call).
    """

    max_epochs: int = 1
    max_steps: int = -1
    limit_train_batches: int | None = None
    limit_eval_batches: int | None = None
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    deterministic: bool = False
    checkpoint_every_n_steps: int = 0
    log_every_n_steps: int = 50
    check_val_every_n_epoch: int = 1
    num_sanity_val_steps: int = 0
    progress_bar: bool = True
    num_threads: int | None = None
    huge_pages: bool = False
    flush_denormal: bool = True
    loss_chunk: int | None = None

    def validate(self) -> None:
        require(self.max_epochs >= 1, "max_epochs", f"must be >= 1, got {self.max_epochs}")
        require(
            self.max_steps == -1 or self.max_steps >= 1,
            "max_steps",
            f"must be -1 or >= 1, got {self.max_steps}",
        )
        for key in ("limit_train_batches", "limit_eval_batches"):
            value = getattr(self, key)
            require(value is None or value >= 1, key, f"must be null or >= 1, got {value}")
        require(self.devices >= 1, "devices", f"must be >= 1, got {self.devices}")
        require(self.num_nodes >= 1, "num_nodes", f"must be >= 1, got {self.num_nodes}")
        require(
            self.checkpoint_every_n_steps >= 0,
            "checkpoint_every_n_steps",
            "must be >= 0 (0: every epoch)",
        )
        require(
            self.log_every_n_steps >= 1,
            "log_every_n_steps",
            f"must be >= 1, got {self.log_every_n_steps}",
        )
        require(
            self.check_val_every_n_epoch >= 1,
            "check_val_every_n_epoch",
            f"must be >= 1, got {self.check_val_every_n_epoch}",
        )
        require(self.num_sanity_val_steps >= 0, "num_sanity_val_steps", "must be >= 0")
        threads_ok = self.num_threads is None or self.num_threads >= 1
        require(threads_ok, "num_threads", "must be null or >= 1")
        chunk_ok = self.loss_chunk is None or self.loss_chunk >= 1
        require(chunk_ok, "loss_chunk", f"must be null or >= 1, got {self.loss_chunk}")


@dataclass
class EstimatorConfig:
    """Settings read by the factories of ``experiments.estimators`` (each uses its own).

    ``prior_temperature``: τ₀ of the uniform Concrete prior of ``gumbel_concrete``. IGR
    estimators (fixed ``temperature``): ``igr_kl`` (``closed_form`` Gaussian KL or the one-sample
    ``sampled`` log-ratio; IGR-Planar is always sampled), ``igr_stl`` (sticking the landing: the
    one-sample ``log q`` differentiated along the draw's path only), ``igr_threshold`` (IGR-SB
    keeps sticks until their mass exceeds it, at the ``igr_quantile`` of the draws) and
    ``num_flows`` (IGR-Planar).
    ``simplex_stretch``: λ of K-D Hard Concrete, ``sparsemax(λ · Concrete draw)``;
    ``temperature``: the Gumbel/Concrete schedule's start, and Hard Concrete's β (its start,
    annealed like the relaxations', ``max(temperature_min, temperature · e^{-anneal_rate · t})``
    updated every ``anneal_every`` steps; fixed where ``anneal_rate`` is 0);
    ``topk``: k of top-k sparsemax; ``budget``: the bit budget of ``sparsemap_budget`` (null:
    half the bits); ``scale``: σ of Gaussian-sparsemax; ``stretch``: Hard Concrete's (l, r);
    ``face_prior``: the max-entropy face prior's form of the Mixed Dirichlet VAE (``maxent`` or
    the reference code's ``maxent-reference``).
    """

    entropy_coeff: float = 1.0
    baseline: str = "moving_average"
    k_ss: int = 1
    temperature: float = 1.0
    temperature_min: float = 0.5
    anneal_rate: float = 1e-4
    anneal_every: int = 1000
    nvil_hidden: list[int] = field(default_factory=lambda: [512, 512, 512])
    prior_temperature: float = 0.5
    igr_kl: str = "closed_form"
    igr_stl: bool = False
    igr_threshold: float = 0.9
    igr_quantile: float = 0.5
    num_flows: int = 2
    n_samples: int = 4
    decay: float = 0.99
    topk: int = 10
    budget: int | None = None
    scale: float = 1.0
    stretch: list[float] = field(default_factory=lambda: [-0.1, 1.1])
    simplex_stretch: float = 1.1
    face_prior: str = "maxent-reference"
    rank: int = 1

    def validate(self) -> None:
        require(self.entropy_coeff >= 0, "entropy_coeff", f"must be >= 0, got {self.entropy_coeff}")
        require(self.k_ss >= 1, "k_ss", f"must be >= 1, got {self.k_ss}")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        require(
            self.temperature_min > 0, "temperature_min", f"must be > 0, got {self.temperature_min}"
        )
        require(self.anneal_rate >= 0, "anneal_rate", f"must be >= 0, got {self.anneal_rate}")
        require(self.anneal_every >= 1, "anneal_every", f"must be >= 1, got {self.anneal_every}")
        require(all(h >= 1 for h in self.nvil_hidden), "nvil_hidden", "layer widths must be >= 1")
        require(self.prior_temperature > 0, "prior_temperature", "must be > 0")
        require(1 < self.simplex_stretch < math.inf, "simplex_stretch",
                f"must be a finite number > 1, got {self.simplex_stretch}")
        require(
            self.igr_kl in ("closed_form", "sampled"),
            "igr_kl",
            f"must be 'closed_form' or 'sampled', got {self.igr_kl!r}",
        )
        require(0 < self.igr_threshold <= 1, "igr_threshold", "must be in (0, 1]")
        require(0 < self.igr_quantile <= 1, "igr_quantile", "must be in (0, 1]")
        require(self.num_flows >= 1, "num_flows", f"must be >= 1, got {self.num_flows}")
        require(self.n_samples >= 2, "n_samples", f"must be >= 2, got {self.n_samples}")
        require(0 <= self.decay < 1, "decay", f"must be in [0, 1), got {self.decay}")
        require(self.topk >= 1, "topk", f"must be >= 1, got {self.topk}")
        require(self.budget is None or self.budget >= 1, "budget", "must be null or >= 1")
        require(self.scale > 0, "scale", f"must be > 0, got {self.scale}")
        forms = ("maxent", "maxent-reference")
        require(self.face_prior in forms, "face_prior", f"must be one of {forms}, got "
                f"{self.face_prior!r}")
        require(
            len(self.stretch) == 2 and self.stretch[0] < 0 and self.stretch[1] > 1,
            "stretch",
            f"must be [l, r] with l < 0 and r > 1, got {self.stretch}",
        )
        require(self.rank >= 1, "rank", f"must be >= 1, got {self.rank}")
