"""Reparameterised relaxations: Gumbel-Softmax / Binary Concrete and IGR.

Each estimator draws ONE relaxed sample per example, evaluates it with one ``loss_fn`` call and
returns the pathwise surrogate ``mean_b [ℓ_b(z_b) + kl_coeff·KL_b − entropy_coeff·H_b]``. The
gradient is biased (the loss is evaluated at relaxed points) but of low variance. With
``straight_through=True`` the forward value is the hard sample ``h`` drawn with the SAME noise and
the backward pass is that of the relaxation: ``z = h + (y − sg(y))``, which is exactly ``h``.

Several latent variables per example are supported: scores ``(B, *latent, ...)`` give
``z`` of shape ``(B, *latent, K)``; entropies and KLs are summed over the latent variables.

Temperatures are floats or ``TemperatureSchedule`` objects (``schedules.py``); a schedule
advances by itself once per optimizer step that followed a training-mode call.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import kl_divergence

from .._noise import logistic
from .._validation import (
    check_choice,
    check_finite,
    check_no_nan,
    check_no_pos_inf,
    check_positive_int,
    check_rows_valid,
    violated,
)
from ..distributions.igr import (
    IGR,
    IGRPlanar,
    IGRStickBreaking,
    PlanarFlow,
    check_truncation,
    one_hot_argmax,
    uniform_prior_loc,
)
from ..distributions.sst import draw_noise
from ..mappings import sparsemax
from ..structures.base import Structure
from ..structures.bitvector import BitVector
from ..structures.categorical import Categorical, categorical_entropy
from ._checks import check_last_dim, check_min_batched
from ._one_sample import one_sample_output
from .base import (
    EVAL_MODES,
    Estimator,
    EstimatorOutput,
    LossFn,
    check_latent_shape,
    exact_entropy,
    no_enumeration_target,
    sum_latent,
)
from .marginalization import softmax_expectation
from .schedules import TemperatureSchedule, as_schedule


def _concrete_terms(
    scores: Tensor, noise: Tensor, tau: Tensor, prior: str | None, prior_tau: float
) -> tuple[Tensor, Tensor | None]:
    """One-sample entropy ``-log p(x) + Σ_k x_k`` of the Concrete draw ``y = exp(x)``,
    ``x = log_softmax((θ + g)/τ)``, and its KL estimate ``log p(x) - log prior(x)`` against the
    Concrete prior of uniform logits at ``prior_tau`` (None without a prior): ``(*batch,)``.

    Closed forms in the noise and ``u = θ + g - max`` instead of ``exp_concrete_log_prob(x, θ)``:
    there ``θ_k - τ x_k = -g_k + c`` with ``c`` common to the row, so ``log p(x) = log Γ(K) +
    (K-1) log τ - Σ g - K lse(-g)`` (a function of the noise alone: its total derivative in θ is
    0, as through x), and for the prior ``-τ₀ x = -(τ₀/τ) u + c'``. From x itself, an entry that
    rounds to -inf (huge score gaps, tiny τ) gives inf - inf. Computed and returned in float64
    (float32 scores up to finfo.max and τ down to its smallest normal: their sum over a batch
    may exceed float32 in a loss within it, ``one_sample_output``); ``_check_terms`` refuses
    terms beyond the scores' dtype.
    """
    k = scores.shape[-1]
    work = torch.promote_types(scores.dtype, torch.float64)
    g, tau64 = noise.to(work), tau.to(work)
    tau_e = tau64.unsqueeze(-1) if tau64.dim() else tau64
    u = scores.to(work) + g
    u = u - u.detach().amax(dim=-1, keepdim=True)
    x = torch.log_softmax(u / tau_e, dim=-1)
    log_p = math.lgamma(k) + (k - 1) * tau64.log() - g.sum(-1) - k * torch.logsumexp(-g, dim=-1)
    entropy = x.sum(dim=-1) - log_p
    if prior is None:
        return entropy, None
    v = -(prior_tau / tau_e) * u  # -τ₀ x up to a constant per row
    log_prior = (
        math.lgamma(k) + (k - 1) * math.log(prior_tau) + v.sum(-1) - k * torch.logsumexp(v, -1)
    )
    return entropy, log_p - log_prior


def _check_terms(scores: Tensor, tau: Tensor, entropy: Tensor, kl: Tensor | None) -> None:
    """ValueError (with validation on; one sync) where the relaxed entropy or KL ``(B, *latent)``
    of ``_concrete_terms``/``_binary_concrete_terms`` (float64), summed over the latent
    variables, lies beyond the scores' dtype, in which the entropy is reported: about
    ``Σ_k (max θ − θ_k)/τ`` (bits ``Σ |θ|/τ``) per row, times ``τ₀`` in the KL (NaN where
    float64 scores over τ overflow float64)."""
    if _beyond_dtype(scores.dtype, entropy, kl):
        raise ValueError(
            "scores: kl='relaxed' needs the one-sample entropy and KL, about the score gaps of "
            f"a row summed and divided by the temperature, within {scores.dtype}'s range; got "
            f"scores up to {scores.detach().abs().amax().item():.3g} at temperature "
            f"{tau.detach().min().item():.3g}; rescale the scores or raise the temperature"
        )


def _beyond_dtype(dtype: torch.dtype, *terms: Tensor | None, at_max: bool = False) -> bool:
    """Whether (validation on; one sync) a term ``(B, *latent)`` in ``terms`` (None: absent),
    summed over the latent variables, lies beyond ``dtype``'s range (NaN included); with
    ``at_max``, ``±finfo.max`` itself counts as beyond."""
    big = torch.finfo(dtype).max
    stacked = torch.stack([sum_latent(t) for t in terms if t is not None])
    return violated(stacked, lambda t: t.abs() < big if at_max else t.abs() <= big)


def _binary_concrete_terms(
    scores: Tensor, noise: Tensor, tau: Tensor, prior: str | None, prior_tau: float
) -> tuple[Tensor, Tensor | None]:
    """One-sample entropy ``-Σ log p(y)`` of the Binary Concrete bits ``y = σ(v)``,
    ``v = (θ + L)/τ``, and the KL estimate ``Σ log p(v) - log prior(v)`` against Binary Concrete
    bits of logit 0 at ``prior_tau`` (None without a prior): ``(*batch,)``.

    With ``t = θ - τ v``, ``log p(v) = log τ + t - 2 softplus(t) = log τ + log σ(t) + log σ(-t)``
    and ``log p(y) = log p(v) - log σ(v) - log σ(-v)``; ``t = -L`` exactly (a function of the
    noise alone, total derivative 0 in θ, as through the sample). From ``v`` itself, a ``v``
    beyond the dtype's range (scores near finfo.max, tiny τ) gave inf - inf. Computed and
    returned in float64, as ``_concrete_terms`` (``_check_terms`` refuses terms beyond the
    scores' dtype).
    """
    work = torch.promote_types(scores.dtype, torch.float64)
    tau64 = tau.to(work)  # 0-dim
    v = (scores.to(work) + noise.to(work)) / tau64
    t = -noise.to(work)
    log_p = tau64.log() + F.logsigmoid(t) + F.logsigmoid(-t)
    entropy = -(log_p - F.logsigmoid(v) - F.logsigmoid(-v)).sum(dim=-1)
    if prior is None:
        return entropy, None
    t0 = -prior_tau * v  # the prior's θ - τ₀ v, θ = 0
    log_prior = math.log(prior_tau) + F.logsigmoid(t0) + F.logsigmoid(-t0)
    return entropy, (log_p - log_prior).sum(dim=-1)


class GumbelSoftmax(Estimator):
    """Gumbel-Softmax / Concrete (Jang et al. 2017; Maddison et al. 2017) and straight-through.

    Categorical (``structure`` None or ``Categorical(K)``): scores ``(B, *latent, K)`` logits θ;
    ``y = softmax((θ + g)/τ)``, g iid Gumbel; ST hard sample ``onehot(argmax(θ + g))``.
    Bits (``structure=BitVector(D)``, no budget): scores ``(B, *latent, D)``; Binary Concrete
    ``y = σ((θ + L)/τ)``, L iid Logistic; ST hard sample ``1[θ + L > 0]`` (a sample, never the
    mode ``1[θ > 0]``). ``-inf`` scores (category/bit excluded) are allowed
    with ``kl="categorical"``.

    Args:
        temperature: τ, a float or a ``TemperatureSchedule``.
        straight_through: forward the hard sample, backward through the relaxation.
        entropy_coeff: c in ``loss = mean(ℓ − c·H)``.
        kl: which distribution the entropy ``H`` and the KL describe (ELBOs
            built from different choices are not comparable): ``"categorical"`` — the discrete
            distribution ``softmax(θ)`` (bits: independent ``σ(θ)``), exact, the usual
            surrogate; ``"relaxed"`` — the relaxed variable, one-sample Monte Carlo at the drawn
            sample with the Concrete / Binary Concrete density; finite scores whose entropy and
            KL, about ``Σ_k (max θ − θ_k)/τ`` per row (bits ``Σ |θ|/τ``; times τ₀ in the KL),
            lie within their dtype (``ValueError`` naming ``scores`` otherwise, with
            validation on).
        structure: None, ``Categorical(K)`` or an unbudgeted ``BitVector(D)``.
        prior: ``None`` or ``"uniform"``: adds ``kl_coeff · KL`` to the loss, with KL to the
            uniform categorical (``log K − H``; bits ``D log 2 − H``) for ``kl="categorical"``,
            or the one-sample relaxed log-ratio ``log p_τ(y; θ) − log p_τ₀(y; 0)`` to a uniform
            Concrete prior at ``prior_temperature`` τ₀ for ``kl="relaxed"`` (IGR's Gumbel
            baseline used τ₀ = 0.5 whatever τ is).
        prior_temperature, kl_coeff: τ₀ and the KL weight.
        eval_mode: the reading in ``eval()`` (``Estimator``): ``"mode"`` (``onehot(argmax θ)``,
            bits ``1[θ > 0]``), ``"sample"`` or ``"expected"`` (categorical: exact expectation of
            the loss under ``softmax(θ)``, plus the same entropy/KL terms).
        stretch: λ > 1 makes the categorical relaxation K-D Hard Concrete (Farinhas et al.
            2022): ``z = sparsemax(λ y)``, the Concrete draw stretched about the barycentre and
            projected back, with exact zeros. Its face probabilities have no closed form, so it
            has no entropy or KL: ``entropy_coeff`` must be 0, ``prior`` None, and the output's
            ``entropy`` is 0 (not computed).

    Output: ``expected_loss = ℓ(z)`` per example (one sample), ``support_size`` ones,
    ``entropy`` the chosen ``H`` (summed over latent variables), logs ``temperature`` and,
    with a prior, ``kl``.
    """

    def __init__(
        self,
        temperature: float | TemperatureSchedule = 1.0,
        straight_through: bool = False,
        entropy_coeff: float = 0.0,
        kl: str = "categorical",
        structure: Structure | None = None,
        prior: str | None = None,
        prior_temperature: float = 0.5,
        kl_coeff: float = 1.0,
        eval_mode: str = "mode",
        stretch: float | None = None,
    ) -> None:
        super().__init__(entropy_coeff)
        if kl not in ("categorical", "relaxed"):
            raise ValueError(f"kl must be 'categorical' or 'relaxed', got {kl!r}")
        if prior not in (None, "uniform"):
            raise ValueError(f"prior must be None or 'uniform', got {prior!r}")
        self.prior = prior
        tau0 = prior_temperature
        if isinstance(tau0, bool) or not isinstance(tau0, (int, float)) or not 0 < tau0 < math.inf:
            raise ValueError(f"prior_temperature must be a positive float, got {tau0!r}")
        self.prior_temperature = float(tau0)
        self.kl_coeff = float(kl_coeff)
        if structure is None or isinstance(structure, Categorical):
            self.bits = False
        elif isinstance(structure, BitVector) and structure.budget in (None, structure.d):
            self.bits = True
        else:
            raise ValueError(
                "structure must be None, a Categorical or an unbudgeted BitVector; for other "
                f"structures use SSTEstimator, got {structure!r}"
            )
        self.temperature = as_schedule(temperature)
        self.straight_through = bool(straight_through)
        self.kl = kl
        self.structure = structure
        self._set_eval_mode(eval_mode, ("mode", "sample") if self.bits else EVAL_MODES)
        self.stretch = None if stretch is None else _checked_stretch(
            stretch, self.bits or self.straight_through or eval_mode == "expected",
            self.entropy_coeff, prior)

    def _check(self, scores: object) -> Tensor:
        x = check_min_batched(scores, "scores", 2)
        if self.structure is not None:
            check_last_dim(x, self.structure)
        if self.kl == "relaxed":
            check_finite(x, "scores")
        elif self.bits:
            check_no_nan(x, "scores")
            check_no_pos_inf(x, "scores")
        else:
            check_rows_valid(x, "scores")
        return x

    @property
    def needs_entropy_grad(self) -> bool:
        """Whether the exact entropy enters the loss (an entropy bonus or a KL to the prior)."""
        return bool(self.entropy_coeff) or (self.prior is not None and bool(self.kl_coeff))

    def _bits(self, scores: Tensor, tau: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Binary Concrete draw: ``(y, hard, H, KL)``, H and KL ``(B, *latent)``."""
        noise = logistic(scores.shape, scores)
        perturbed = scores + noise
        y = torch.sigmoid(perturbed / tau)
        hard = (perturbed > 0).to(scores.dtype)
        kl = None
        if self.kl == "relaxed":
            entropy, kl = _binary_concrete_terms(
                scores, noise, tau, self.prior, self.prior_temperature
            )
        else:
            entropy = exact_entropy(
                BitVector(scores.shape[-1]).entropy, scores, self.needs_entropy_grad
            )
            if self.prior is not None:
                kl = scores.shape[-1] * math.log(2) - entropy
        return y, hard, entropy, kl

    def _categorical(
        self, scores: Tensor, tau: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Concrete draw: ``(y, hard, H, KL)``, H and KL ``(B, *latent)`` (None for K-D Hard
        Concrete)."""
        noise = draw_noise(scores.shape, scores, "gumbel")
        perturbed = scores + noise
        hard = one_hot_argmax(perturbed)
        # softmax((θ + g)/τ) of the row shifted by its (detached) maximum: the same values and
        # gradient, and no overflow of (θ + g)/τ for τ < 1 at scores near finfo.max
        shifted = perturbed - perturbed.detach().amax(dim=-1, keepdim=True)
        y = torch.softmax(shifted / tau, dim=-1)
        if self.stretch is not None:  # K-D Hard Concrete: no entropy, prior or KL (refused)
            return y, hard, None, None
        kl = None
        if self.kl == "relaxed":
            entropy, kl = _concrete_terms(scores, noise, tau, self.prior, self.prior_temperature)
        else:
            entropy = exact_entropy(categorical_entropy, scores, self.needs_entropy_grad)
            if self.prior is not None:
                kl = math.log(scores.shape[-1]) - entropy
        return y, hard, entropy, kl

    def forward(self, scores: Tensor, loss_fn: LossFn) -> EstimatorOutput:
        """``scores`` (B, *latent, K) -> surrogate from one relaxed sample per example."""
        scores = self._check(scores)
        tau = self.temperature.like(scores)
        sample = self._bits if self.bits else self._categorical
        y, hard, entropy, kl = sample(scores, tau)
        if self.kl == "relaxed" and entropy is not None:  # None: K-D Hard Concrete
            _check_terms(scores, tau, entropy, kl)
        reading = self.reading()
        if reading == "expected":
            extra = None if kl is None else self.kl_coeff * sum_latent(kl)
            return softmax_expectation(scores, loss_fn, self.entropy_coeff, extra=extra)
        if reading == "mode":
            z = (scores > 0).to(scores.dtype) if self.bits else one_hot_argmax(scores.detach())
        elif self.stretch is not None:
            z = sparsemax(self.stretch * y)
        else:
            z = hard + (y - y.detach()) if self.straight_through else y
        return one_sample_output(self, loss_fn, z, tau, entropy, kl, self.kl_coeff)


def _checked_stretch(stretch: object, unsupported: bool, entropy_coeff: float,
                     prior: str | None) -> float:
    """K-D Hard Concrete's stretch λ > 1 (``GumbelSoftmax``), for categorical relaxed draws
    without an entropy or KL term."""
    if isinstance(stretch, bool) or not isinstance(stretch, (int, float)) or not (
            1 < stretch < math.inf):
        raise ValueError(f"stretch must be a finite number > 1, got {stretch!r}")
    if unsupported:
        raise ValueError("stretch (K-D Hard Concrete) applies to categorical relaxed draws, not "
                         "to bits, straight-through or the 'expected' reading")
    if entropy_coeff or prior is not None:
        raise ValueError("stretch (K-D Hard Concrete): its entropy has no closed form, so "
                         "entropy_coeff must be 0 and prior None")
    return float(stretch)


VARIANTS = ("I", "SB", "planar")


@functools.cache
def _uniform_prior_loc(num_categories: int) -> float:
    """``uniform_prior_loc(num_categories)`` at σ₀ = 1 as a number, read once per K."""
    return float(uniform_prior_loc(num_categories, 1.0))


class IGREstimator(Estimator):
    """Invertible Gaussian reparameterisation (Potapczynski et al. 2020), one sample per example.

    ``scores`` is ONE tensor ``(B, *latent, 2, K − 1)``: ``scores[..., 0, :]`` the Gaussian
    location μ and ``scores[..., 1, :]`` the log-scale ξ, ``σ = exp(ξ)`` (initialise σ through ξ
    directly). ``z`` is ψ ``(B, *latent, K)`` on the simplex (IGR-SB:
    zero-padded after the adaptive truncation), or its one-hot argmax with ``straight_through``.

    Accepted range (``ValueError`` naming ``scores`` otherwise, with validation on): finite,
    ``ξ <= log(finfo.max) − 1`` of the scores' dtype (σ within it: 87.7 in float32), and scores
    whose one-sample entropy and KL lie within the dtype: ``−log q(ψ) ≈ Σ ξ − Σ_k |log ψ_k|``
    with ``|log ψ_k| ≈ (max_j λ_j − λ_k)/τ`` (λ the draw pushed to R^{K−1}, 0 for category K),
    and the closed-form KL ``½ Σ (e^{2(ξ−ξ₀)} + ((μ−μ₀)/σ₀)²)`` (``ξ − ξ₀`` up to about 44 in
    float32).

    Args:
        variant: ``"I"`` (IGR-I), ``"SB"`` (stick-breaking, K = K_max) or ``"planar"``.
        temperature: τ, a float or a ``TemperatureSchedule``.
        straight_through: forward ``onehot(argmax ψ)``, backward through ψ.
        delta: δ of softmax++.
        prior: ``None`` (no KL term), ``"uniform"`` (variants I and planar: the isotropic prior
            with σ₀ = 1 and an exactly uniform zero-temperature pmf), or a pair
            ``(prior_loc, prior_scale)`` broadcastable to ``(*latent, K − 1)``; same map and
            temperature as the posterior (IGR-Planar: an IGR-I prior).
        kl: ``"closed_form"`` — the exact Gaussian KL (I; SB over all K_max − 1 sticks);
            ``"sampled"`` — the one-sample log-ratio ``log q(ψ) − log p(ψ)`` at the drawn sample
            (the IGR reference's training objective; the only choice for planar).
        kl_coeff: weight of the KL in the loss.
        entropy_coeff: weight of the one-sample entropy estimate ``−log q(ψ)``.
        eps, quantile: IGR-SB truncation (``IGRStickBreaking``).
        num_categories, latent_shape, num_flows: planar only; the estimator owns
            ``num_flows`` ``PlanarFlow(K − 1, latent_shape)`` modules (global per latent
            variable, trained with the model).
        eval_mode: the reading in ``eval()`` (``Estimator``): ``"mode"`` (the one-hot argmax of
            ψ at the location, no noise) or ``"sample"``.
        stl: sticking the landing (Roeder et al. 2017): the one-sample ``log q(ψ)`` in the
            sampled KL and the entropy term is differentiated along the draw's path only, the
            posterior's own parameters (μ, ξ, the flows) held fixed. The same value and an
            unbiased gradient without the score term, whose expectation is zero; where the
            posterior equals the prior, the KL's gradient is exactly zero at every draw. It needs
            a one-sample density in the loss (``kl="sampled"`` with a prior, or
            ``entropy_coeff != 0``); otherwise ``ValueError``.

    Output: ``expected_loss = ℓ(z)``, ``entropy = −log q(ψ)`` at the sample (summed over latent
    variables), logs ``temperature``, ``kl`` (mean) and, for SB, ``truncation`` (sticks kept).
    """

    enumeration_probs = no_enumeration_target  # no brute-force target (diagnostics)

    def __init__(
        self,
        variant: str = "I",
        temperature: float | TemperatureSchedule = 1.0,
        straight_through: bool = False,
        delta: float = 1.0,
        prior: str | tuple[Tensor | float, Tensor | float] | None = None,
        kl: str = "closed_form",
        kl_coeff: float = 1.0,
        entropy_coeff: float = 0.0,
        eps: float = 0.01,
        quantile: float = 1.0,
        num_categories: int | None = None,
        latent_shape: tuple[int, ...] = (),
        num_flows: int = 2,
        eval_mode: str = "mode",
        stl: bool = False,
    ) -> None:
        super().__init__(entropy_coeff)
        self._set_eval_mode(eval_mode, ("mode", "sample"))
        check_choice(variant, "variant", VARIANTS)
        if kl not in ("closed_form", "sampled"):
            raise ValueError(f"kl must be 'closed_form' or 'sampled', got {kl!r}")
        if variant == "planar" and kl == "closed_form" and prior is not None:
            raise ValueError("IGR-Planar has no closed-form KL: pass kl='sampled'")
        if not isinstance(stl, bool):
            raise TypeError(f"stl must be a bool, got {type(stl).__name__}")
        if stl and not entropy_coeff and (prior is None or kl != "sampled"):
            raise ValueError(
                "stl=True changes the gradient of a one-sample log-density, but this loss has "
                "none: pass kl='sampled' with a prior, or a non-zero entropy_coeff"
            )
        self.stl = stl
        self.variant = variant
        self.kl = kl
        self.temperature = as_schedule(temperature)
        self.straight_through = bool(straight_through)
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not delta > 0:
            raise ValueError(f"delta must be a positive float, got {delta!r}")
        self.delta = float(delta)
        self.kl_coeff = float(kl_coeff)
        self.eps, self.quantile = check_truncation(eps, quantile)
        self.prior_kind = self._register_prior(prior)
        self.flows = nn.ModuleList()
        if variant == "planar":
            if isinstance(num_categories, bool) or not isinstance(num_categories, int):
                raise ValueError("variant='planar' needs num_categories (an int >= 2)")
            if num_categories < 2:
                raise ValueError(f"num_categories must be >= 2, got {num_categories}")
            check_positive_int(num_flows, "num_flows")
            self.flows.extend(
                PlanarFlow(num_categories - 1, tuple(latent_shape)) for _ in range(num_flows)
            )

    def score_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(*latent, K)`` -> ``(*latent, 2, K − 1)``: location and log-scale per variable."""
        *latent, k = check_latent_shape(latent_shape)
        if k < 2:
            raise ValueError(f"IGR needs K >= 2 categories, got latent_shape {latent_shape!r}")
        return (*latent, 2, k - 1)

    def _register_prior(self, prior: object) -> str | None:
        if prior is None:
            return None
        if isinstance(prior, str) and prior == "uniform":
            if self.variant == "SB":
                raise ValueError("prior='uniform' is defined for variants 'I' and 'planar' only")
            return "uniform"
        if isinstance(prior, tuple) and len(prior) == 2:
            loc, scale = (torch.as_tensor(p, dtype=torch.float64) for p in prior)
            if not bool((scale > 0).all()) or not bool(torch.isfinite(loc).all()):
                raise ValueError("prior scale must be positive and prior loc finite")
            self.register_buffer("prior_loc", loc)
            self.register_buffer("prior_scale", scale)
            return "given"
        raise ValueError(f"prior must be None, 'uniform' or a (loc, scale) pair, got {prior!r}")

    def _check(self, scores: object) -> Tensor:
        x = check_min_batched(scores, "scores", 3)
        if x.shape[-2] != 2:
            raise ValueError(
                "scores must have shape (B, *latent, 2, K-1): [..., 0, :] loc and [..., 1, :] "
                f"log-scale; got shape {tuple(x.shape)}"
            )
        if self.variant == "planar" and x.shape[-1] != self.flows[0].dim:
            raise ValueError(
                f"scores must have last dimension K-1 = {self.flows[0].dim}, got {x.shape[-1]}"
            )
        limit = math.log(torch.finfo(x.dtype).max) - 1
        if violated(x, lambda x: torch.isfinite(x) & (x[..., 1:, :] <= limit)):
            check_finite(x, "scores")
            raise ValueError(
                f"scores: the log-scales scores[..., 1, :] must be at most log(finfo.max) - 1 = "
                f"{limit:.4g} of {x.dtype} (sigma = exp(log-scale) within it), got "
                f"{x[..., 1, :].detach().max().item():.3g}; rescale them"
            )
        return x

    def _check_terms(self, scores: Tensor, tau: Tensor, *terms: Tensor | None) -> None:
        """ValueError (with validation on; one sync) where a one-sample log-density or KL
        ``(B, *latent)`` in ``terms`` (None: absent), summed over the latent variables, lies
        beyond the scores' dtype. ``±finfo.max`` itself counts as beyond: the draws keep an
        underflowed ``log ψ_k`` at ``finfo.min``, so an entropy that overflows through one such
        entry rounds to ``-finfo.max`` rather than to ``-inf``."""
        if _beyond_dtype(scores.dtype, *terms, at_max=True):
            loc, log_scale = scores.detach().unbind(dim=-2)
            raise ValueError(
                f"scores: IGR needs the one-sample entropy -log q(psi) and the KL within "
                f"{scores.dtype}'s range (about the sum of the log-scales plus K times the "
                f"spread of the draws over the temperature; the closed-form KL about "
                f"exp(2 log-scale) + loc^2); got |loc| up to {loc.abs().max().item():.3g}, "
                f"log-scales in [{log_scale.min().item():.3g}, {log_scale.max().item():.3g}] at "
                f"temperature {tau.detach().min().item():.3g}; rescale the scores or raise the "
                f"temperature"
            )

    def _distribution(self, loc: Tensor, log_scale: Tensor, tau: Tensor):
        """The variant's distribution at ``σ = exp(ξ)``, kept in [tiny, max / e] for the draws (no
        0 or inf; ``_check`` refuses ξ above, unchecked with validation off), with ``log σ = ξ``
        exactly in its log-densities and KLs. Built without argument validation: ``_check`` has
        checked the scores (μ, ξ finite), σ is finite and positive by the clamp, and τ comes from
        a schedule (the checks cost ~10 % of an IGR-SB step)."""
        info = torch.finfo(log_scale.dtype)
        # clamped before exp, so that a saturated σ has gradient 0, not 0 · exp(ξ) = 0 · inf
        scale = log_scale.clamp(math.log(info.tiny), math.log(info.max) - 1.0).exp()
        kw = {"log_scale": log_scale, "validate_args": False}
        if self.variant == "I":
            return IGR(loc, scale, tau, self.delta, **kw)
        if self.variant == "SB":
            return IGRStickBreaking(loc, scale, tau, self.eps, self.delta, self.quantile, **kw)
        return IGRPlanar(loc, scale, tau, self.flows, self.delta, **kw)

    def _prior(self, like: Tensor, tau: Tensor) -> IGR | IGRStickBreaking:
        """The prior distribution, batch-shaped like ``like`` ``(B, *latent, K − 1)``; its
        parameters were checked when registered, so it is built without argument validation."""
        if self.prior_kind == "uniform":
            # filled on the device (a host tensor copied there would wait for it)
            loc0 = like.new_full(like.shape, _uniform_prior_loc(like.shape[-1] + 1))
            scale0 = torch.ones_like(like)
        else:
            loc0 = self.prior_loc.to(like).expand(like.shape)
            scale0 = self.prior_scale.to(like).expand(like.shape)
        if self.variant == "SB":
            return IGRStickBreaking(loc0, scale0, tau, self.eps, self.delta, self.quantile,
                                    validate_args=False)
        return IGR(loc0, scale0, tau, self.delta, validate_args=False)

    def closed_form_kl(self, scores: Tensor) -> Tensor:
        """The exact Gaussian KL of the posterior to the prior ``(B,)``, summed over the latent
        variables (IGR-I, IGR-SB; the KL of the Gaussians, which the maps to the simplex carry
        over): what ``kl="closed_form"`` trains with, for reporting beside a sampled KL."""
        if self.variant == "planar" or self.prior_kind is None:
            raise ValueError("closed_form_kl needs variant 'I' or 'SB' and a prior")
        scores = self._check(scores)
        tau = self.temperature.like(scores)
        loc, log_scale = scores.unbind(dim=-2)
        kl = kl_divergence(self._distribution(loc, log_scale, tau), self._prior(loc, tau))
        self._check_terms(scores, tau, kl)
        return sum_latent(kl)

    def forward(self, scores: Tensor, loss_fn: LossFn) -> EstimatorOutput:
        """``scores`` (B, *latent, 2, K−1) -> surrogate from one ψ sample per example."""
        scores = self._check(scores)
        tau = self.temperature.like(scores)
        loc, log_scale = scores.unbind(dim=-2)
        dist = self._distribution(loc, log_scale, tau)
        kl = None
        if self.prior_kind is None:
            psi, log_q = dist.rsample_with_log_prob(stl=self.stl)
        elif self.kl == "sampled":
            psi, log_q, kl = dist.rsample_with_kl(self._prior(loc, tau), stl=self.stl)
        else:
            psi, log_q = dist.rsample_with_log_prob(stl=self.stl)
            kl = kl_divergence(dist, self._prior(loc, tau))
        self._check_terms(scores, tau, log_q, kl)
        if self.reading() == "mode":
            tiny = torch.full_like(loc, math.log(torch.finfo(loc.dtype).tiny))
            z = one_hot_argmax(self._distribution(loc, tiny, tau).rsample().detach())
        elif self.straight_through:
            z = one_hot_argmax(psi) + (psi - psi.detach())
        else:
            z = psi
        z = z.to(scores.dtype)  # the planar flows' float32 parameters promote half precision
        logs: dict[str, float | Tensor] = {}
        if self.variant == "SB":
            kept = (psi > 0).sum(dim=-1).detach()  # sticks kept + 1 (no sticks in an empty batch)
            logs["truncation"] = kept.max() - 1 if kept.numel() else kept.new_zeros(())
        return one_sample_output(self, loss_fn, z, tau, -log_q, kl, self.kl_coeff, logs)
