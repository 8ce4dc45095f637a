"""Estimators over mixed discrete/continuous latents (Farinhas et al. 2022).

Each estimator draws S samples per example, evaluates them with ONE ``loss_fn`` call and returns
a surrogate whose gradient is the estimator; regularisers are direct-sum entropies/KLs.

- ``GaussianSparsemaxEstimator``: y = sparsemax(μ + σε), pathwise for the loss; entropy is the
  Monte Carlo −log p(y) at the drawn samples with the exact log-density, its gradient by the
  score function (log p jumps between faces: a pathwise derivative of it is biased).
- ``BinaryMixedEstimator``: independent bits on [0, 1] (Hard Concrete or binary
  Gaussian-sparsemax), pathwise; exact H⊕ and exact KL to the uniform mixed prior,
  KL = D log 3 − H⊕.
- ``MixedDirichletEstimator``: face by score function (self-critic or leave-one-out baseline),
  Dirichlet on the face by implicit reparameterisation, exact face entropy/KL terms.

Surrogate per example (all three): mean_s ℓ(y_s) + kl_coeff·KL − entropy_coeff·H, summed over
the latent variables of the example.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, kl_divergence

from .._dtypes import moderate_limit, working_dtype
from .._validation import (
    check_choice,
    check_finite,
    check_positive,
    check_positive_int,
    violated,
)
from ..distributions._device import on_device
from ..distributions._expectation import score_function_mean
from ..distributions.faces import NonEmptyFaces
from ..distributions.gaussian_sparsemax import GaussianSparsemax
from ..distributions.mixed_binary import BinaryGaussianSparsemax, HardConcrete
from ..distributions.mixed_dirichlet import MixedDirichlet
from ..mappings import sparsemax
from ._checks import check_leave_one_out, check_min_batched
from ._one_sample import one_sample_output
from .base import (
    Estimator,
    EstimatorOutput,
    LossFn,
    add_term,
    batch_mean,
    call_loss_fn,
    check_latent_shape,
    fixed_support_output,
    no_enumeration_target,
    sum_latent,
)
from .schedules import TemperatureSchedule, as_schedule

__all__ = ["BinaryMixedEstimator", "GaussianSparsemaxEstimator", "MixedDirichletEstimator"]


def _check_input(x: object, name: str, min_dim: int) -> Tensor:
    x = check_min_batched(x, name, min_dim)
    check_finite(x, name)
    return x


def _check_loc(x: object, name: str) -> Tensor:
    """Gaussian-sparsemax locations: batched, finite and within the distribution's range
    (``moderate_limit``: ``finfo.max / 8`` of the dtype they are computed in; beyond it the
    entropy's gradients were NaN). One sync, with validation on (as ``check_finite`` alone)."""
    x = check_min_batched(x, name, 2)
    limit = moderate_limit(x.dtype)
    if violated(x, lambda x: x.abs() <= limit):
        check_finite(x, name)
        raise ValueError(f"{name} must have magnitude at most finfo.max / 8 = {limit:.3g} of "
                         f"the dtype it is computed in ({working_dtype(x.dtype)}), got "
                         f"{x.detach().abs().max().item():.3g}; rescale it")
    return x


def _evaluate(z: Tensor, loss_fn: LossFn, name: str) -> tuple[Tensor, Tensor, Tensor]:
    """z (S, B, *event) -> losses (B, S) from one ``loss_fn`` call of the pathwise estimator
    ``name``, with the latents (S·B, *event) and rows (S·B,) it was called on."""
    s, b = z.shape[:2]
    rows = torch.arange(b, device=z.device).repeat(s)
    z = z.flatten(0, 1)
    return call_loss_fn(loss_fn, z, rows, name).view(s, b).T, z, rows


def mc_weights(rows: Tensor, s: int, total: int, like: Tensor) -> Tensor:
    """Weights (total·B,) of the sample-major evaluations: 1/s for the first s samples of each
    example, 0 for a baseline's extra ones."""
    sample = torch.arange(total, device=rows.device).repeat_interleave(rows.shape[0] // total)
    return torch.where(sample < s, 1.0 / s, 0.0).to(like.dtype)


class _WithPrior(Estimator):
    """An estimator with an optional ``prior`` (a distribution), read where the scores are."""

    prior: Distribution | None
    _placed_prior: tuple[tuple, Distribution, Distribution] | None = None

    def prior_like(self, like: Tensor) -> Distribution | None:
        """``prior`` on ``like``'s device in its (floating) dtype, None without one: moved once
        per device and dtype (and per prior assigned), not copied from the host at every step.
        The prior is fixed: assign a new one rather than changing its tensors in place."""
        if self.prior is None:
            return None
        where = (like.device, like.dtype)
        placed = self._placed_prior
        if placed is None or placed[0] != where or placed[1] is not self.prior:
            placed = (where, self.prior, on_device(self.prior, *where))
            self._placed_prior = placed
        return placed[2]


class GaussianSparsemaxEstimator(_WithPrior):
    """Pathwise estimator for y = sparsemax(μ + σε) (Gaussian-sparsemax, Farinhas et al. 2022).

    Args:
        scale: σ > 0 used when ``scores`` is a tensor (the signalling-game setting is σ = 1).
        n_samples: S samples per example.
        entropy_coeff: c in ``loss = mean(ℓ) + kl_coeff·KL − c·H``.
        prior: a distribution on the simplex with a direct-sum ``log_prob`` (e.g. a
            ``MixedDirichlet``), event shape (K,): adds ``kl_coeff·KL(q ‖ prior)``, the Monte
            Carlo ``mean_s log q(y_s) − log prior(y_s)``, its gradient by the score function like
            the entropy's (a prior's log-density jumps between faces too). Moved to the scores'
            device once.
        kl_coeff: the KL's weight (with a prior).
        eval_mode: the reading in ``eval()`` (``Estimator``): ``"mode"`` (the noise-free point
            ``sparsemax(μ)``) or ``"sample"``.

    ``scores``: loc μ (B, *latent, K), or a tuple (loc, scale) with scale broadcastable to loc;
    ``|μ| <= finfo.max / 8`` (the distribution's range; ``ValueError`` otherwise, with
    validation on). ``z``: (B·S, *latent, K) points of the simplex with exact zeros. ``entropy``
    (B,): the Monte Carlo direct-sum entropy −mean_s log p(y_s) at the drawn samples (exact
    log-density), summed over latent variables; its gradient is the score function's with a
    leave-one-out baseline over the S samples (for S = 1 over the batch's other examples, whose
    draws are independent): log p jumps between faces, so the pathwise derivative through y,
    which the loss's term uses, is biased for it (at K = 10, S = 1: -0.21 for an exact -0.66).
    """

    enumeration_probs = no_enumeration_target  # no brute-force target (diagnostics)

    def __init__(self, scale: float = 1.0, n_samples: int = 1, entropy_coeff: float = 0.0,
                 prior: Distribution | None = None, kl_coeff: float = 1.0,
                 eval_mode: str = "mode") -> None:
        super().__init__(entropy_coeff)
        self._set_eval_mode(eval_mode, ("mode", "sample"))
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        if prior is not None and (not isinstance(prior, Distribution)
                                  or len(prior.event_shape) != 1):
            raise TypeError("prior must be a distribution on the simplex with event shape (K,), "
                            f"got {type(prior).__name__}")
        if not (isinstance(kl_coeff, (int, float)) and math.isfinite(kl_coeff)):
            raise ValueError(f"kl_coeff must be a finite number, got {kl_coeff!r}")
        self.scale = float(scale)
        self.n_samples = check_positive_int(n_samples, "n_samples")
        self.prior = prior
        self.kl_coeff = float(kl_coeff) if prior is not None else 0.0

    def forward(self, scores: Tensor | tuple[Tensor, Tensor], loss_fn: LossFn) -> EstimatorOutput:
        if isinstance(scores, tuple):
            if len(scores) != 2:
                raise ValueError("scores must be a tensor loc (B, *latent, K) or a pair "
                                 f"(loc, scale), got a tuple of {len(scores)}")
            loc, scale = scores
            loc = _check_loc(loc, "scores[0] (loc)")
            scale = _check_input(scale, "scores[1] (scale)", 0)
            check_positive(scale, "scores[1] (scale)")
        else:
            loc, scale = _check_loc(scores, "scores"), self.scale
        if self.prior is not None and self.prior.event_shape[0] != loc.shape[-1]:
            raise ValueError(f"prior has K = {self.prior.event_shape[0]}, scores have K = "
                             f"{loc.shape[-1]}")
        dist = GaussianSparsemax(loc, scale, validate_args=False)
        y = dist.rsample((self.n_samples,))
        fixed = y.detach()
        regularised = self.entropy_coeff != 0 or self.kl_coeff != 0
        with torch.set_grad_enabled(torch.is_grad_enabled() and regularised):
            log_q = dist.log_prob(fixed)  # gradients by the score function (module docstring)
            # baseline: the other samples of the example, or with one, the other examples'
            along = int(self.n_samples == 1)
            entropy = sum_latent(score_function_mean(-log_q, log_q, along), 1)
            kl = None
            if self.prior is not None:
                log_prior = self.prior_like(fixed).log_prob(fixed)
                kl = sum_latent(score_function_mean(log_q - log_prior, log_q, along), 1)
        if self.reading() == "mode":  # the noise-free point sparsemax(μ)
            return one_sample_output(self, loss_fn, sparsemax(loc.detach(), dim=-1), None, entropy,
                                     kl, self.kl_coeff)
        losses, z, rows = _evaluate(y, loss_fn, type(self).__name__)
        loss = add_term(add_term(losses.mean(1), self.kl_coeff, kl), -self.entropy_coeff, entropy)
        logs = {} if kl is None else {"kl": batch_mean(kl.detach())}
        out = fixed_support_output(batch_mean(loss), losses.mean(1), entropy, self.n_samples, logs)
        return out.evaluated(z, rows, mc_weights(rows, self.n_samples, self.n_samples, losses))


FAMILIES = ("hard_concrete", "gaussian_sparsemax")


class BinaryMixedEstimator(Estimator):
    """Pathwise estimator for bit vectors of mixed [0, 1] variables (exact direct-sum entropy).

    Args:
        family: ``"hard_concrete"`` (scores are log α; Louizos et al. 2018) or
            ``"gaussian_sparsemax"`` (scores are locations μ; y = clip(μ + σε, 0, 1)).
        temperature: Hard Concrete β, a float or a ``TemperatureSchedule`` (e.g.
            ``ExponentialDecay``: annealed as the relaxations are).
        stretch: Hard Concrete (l, r).
        scale: binary Gaussian-sparsemax σ.
        n_samples: S samples per example.
        entropy_coeff, kl_coeff: ``loss = mean(ℓ) + kl_coeff·KL − entropy_coeff·H``, with H the
            exact H⊕ summed over bits and KL = D log 3 − H⊕ the KL to the uniform mixed prior
            ⅓δ_0 + ⅓δ_1 + ⅓U(0, 1) per bit (the bit-vector VAE prior).
        eval_mode: the reading in ``eval()`` (``Estimator``): ``"mode"`` (each bit's noise-free
            point, its median: Hard Concrete ``clip(σ(log α / β)(r − l) + l, 0, 1)``, Gaussian
            ``clip(μ, 0, 1)``) or ``"sample"``.

    ``scores``: (B, *bits); ``z``: (B·S, *bits) in [0, 1] with exact 0s and 1s.
    """

    enumeration_probs = no_enumeration_target  # no brute-force target (diagnostics)

    def __init__(self, family: str = "hard_concrete",
                 temperature: float | TemperatureSchedule = 2 / 3,
                 stretch: tuple[float, float] = (-0.1, 1.1), scale: float = 1.0,
                 n_samples: int = 1, entropy_coeff: float = 0.0, kl_coeff: float = 0.0,
                 eval_mode: str = "mode") -> None:
        super().__init__(entropy_coeff)
        self._set_eval_mode(eval_mode, ("mode", "sample"))
        check_choice(family, "family", FAMILIES)
        fixed = {"scale": scale}
        if not isinstance(temperature, TemperatureSchedule):
            fixed["temperature"] = temperature
        for name, value in fixed.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.family, self.scale = family, float(scale)
        self.temperature = as_schedule(temperature)
        self.stretch = tuple(float(v) for v in stretch)
        self.n_samples = check_positive_int(n_samples, "n_samples")
        self.kl_coeff = float(kl_coeff)

    def distribution(self, scores: Tensor) -> HardConcrete | BinaryGaussianSparsemax:
        """The per-bit distribution of ``scores`` (B, *bits)."""
        if self.family == "hard_concrete":
            return HardConcrete(scores, self.temperature.like(scores), self.stretch,
                                validate_args=False)
        return BinaryGaussianSparsemax(scores, self.scale, validate_args=False)

    def _median(self, scores: Tensor) -> Tensor:
        """Each bit's noise-free point (its median), (B, *bits)."""
        if self.family == "hard_concrete":
            low, high = self.stretch
            scores = torch.sigmoid(scores / self.temperature.like(scores)) * (high - low) + low
        return scores.clamp(0.0, 1.0)

    def forward(self, scores: Tensor, loss_fn: LossFn) -> EstimatorOutput:
        scores = _check_input(scores, "scores", 1)
        dist = self.distribution(scores)
        entropy = sum_latent(dist.entropy(), 1)
        bits = math.prod(scores.shape[1:])
        kl = bits * math.log(3) - entropy
        if self.reading() == "mode":
            return one_sample_output(self, loss_fn, self._median(scores.detach()), None, entropy,
                                     kl, self.kl_coeff)
        y = dist.rsample((self.n_samples,))
        losses, z, rows = _evaluate(y, loss_fn, type(self).__name__)
        loss = add_term(add_term(losses.mean(1), self.kl_coeff, kl), -self.entropy_coeff, entropy)
        loss = batch_mean(loss)
        logs: dict[str, float | Tensor] = {
            **({"temperature": self.temperature.like(scores).detach()}
               if self.family == "hard_concrete" else {}),
            "kl_uniform": batch_mean(kl.detach()),
            "prob_zero": batch_mean(dist.prob_zero().detach()),
            "prob_one": batch_mean(dist.prob_one().detach()),
        }
        out = fixed_support_output(loss, losses.mean(1), entropy, self.n_samples, logs)
        return out.evaluated(z, rows, mc_weights(rows, self.n_samples, self.n_samples, losses))


BASELINES = (None, "self_critic", "leave_one_out")


class MixedDirichletEstimator(_WithPrior):
    r"""Mixed Dirichlet VAE estimator (Farinhas et al. 2022).

    Per example and sample s: f_s ~ q_F (no pathwise gradient), y_s ~ Dir(α_{f_s}) (implicit
    reparameterisation). With the f-dependent cost c_s = ℓ(y_s) + d(f_s),
    d(f) = kl_coeff·KL(Dir(α_f) ‖ p(·|f)) − entropy_coeff·H(Dir(α_f)), and the exact face term
    T = kl_coeff·KL(q_F ‖ p_F) − entropy_coeff·H(q_F):

        loss_b = mean_s [c_s + sg(c_s − β_s)·(log q_F(f_s) − sg(log q_F(f_s)))] + T,

    whose value is the unbiased estimate of E[ℓ] + kl_coeff·KL⊕ − entropy_coeff·H⊕ and whose
    gradient is pathwise in α and score-function in the face scores. β (always detached):
    ``"self_critic"`` — c at one extra independent (f', y') (+1 evaluation per example);
    ``"leave_one_out"`` — mean c of the other S − 1 samples (S >= 2); ``None`` — 0.

    Args:
        n_samples: S.
        baseline: ``"self_critic"``, ``"leave_one_out"`` or None.
        prior: a ``MixedDirichlet`` prior, e.g.
            ``MixedDirichlet(MaxEntropyFaces(K, form="maxent-reference"), torch.ones(K))``;
            None drops the KL term.
        kl_coeff, entropy_coeff: weights of KL⊕(q ‖ prior) and H⊕(q).
        exact_regularizer: compute the whole Dirichlet part of KL⊕/H⊕ exactly by face
            enumeration (K <= 16; then d(f) = 0 and only ℓ goes through the score function)
            instead of at the sampled faces.
        standardize: divide c − β by max(1, std of the batch means of c over the last
            ``history`` training steps) (the paper's optional standardisation; running state in
            buffers, updated in training mode only).
        eval_mode: the reading in ``eval()`` (``Estimator``): ``"mode"`` (the Dirichlet mean on
            the most probable face) or ``"sample"``.

    ``scores``: one tensor (B, *latent, 2, K) (``score_shape((*latent, K))``): face scores
    ``[..., 0, :]`` and concentration pre-activations ``[..., 1, :]``, α = softplus(·); or a tuple
    (face_scores, concentration), both (B, *latent, K), α given directly. ``z``:
    (B·S', *latent, K) points of the simplex with exact zeros off the sampled faces.
    ``entropy`` (B,): H(q_F) (exact) + H(Dir(α_f)) averaged over the S sampled faces (or exact
    with ``exact_regularizer``), summed over latent variables.
    """

    enumeration_probs = no_enumeration_target  # no brute-force target (diagnostics)

    def __init__(self, n_samples: int = 1, baseline: str | None = "self_critic",
                 prior: MixedDirichlet | None = None, kl_coeff: float = 1.0,
                 entropy_coeff: float = 0.0, exact_regularizer: bool = False,
                 standardize: bool = False, history: int = 100,
                 eval_mode: str = "mode") -> None:
        super().__init__(entropy_coeff)
        self._set_eval_mode(eval_mode, ("mode", "sample"))
        self.n_samples = check_positive_int(n_samples, "n_samples")
        check_choice(baseline, "baseline", BASELINES)
        check_leave_one_out(baseline, n_samples)
        if prior is not None and not isinstance(prior, MixedDirichlet):
            raise TypeError(f"prior must be a MixedDirichlet or None, got {type(prior).__name__}")
        self.baseline, self.prior = baseline, prior
        self.kl_coeff = float(kl_coeff) if prior is not None else 0.0
        self.exact_regularizer = bool(exact_regularizer)
        self.standardize = bool(standardize)
        if isinstance(history, bool) or not isinstance(history, int) or history < 2:
            raise ValueError(f"history must be an int >= 2, got {history!r}")
        self.register_buffer("_cost_means", torch.zeros(history))
        self.register_buffer("_steps", torch.zeros((), dtype=torch.long))

    def _scale(self, costs: Tensor) -> Tensor:
        """max(1, std of the stored batch means) after folding in the mean of this step's
        ``costs`` (training only; an empty batch adds nothing)."""
        history = self._cost_means
        if self.training and costs.numel():
            with torch.no_grad():
                history[self._steps % history.numel()] = costs.mean().to(history.dtype)
                self._steps += 1
        filled = torch.arange(history.numel(), device=history.device) < self._steps
        n = filled.sum().clamp(min=1)
        mean = (history * filled).sum() / n
        var = (((history - mean) * filled) ** 2).sum() / (n - 1).clamp(min=1)
        return var.sqrt().clamp(min=1.0).to(costs.dtype)

    def score_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(*latent, K)`` -> ``(*latent, 2, K)``: face scores and concentrations per variable."""
        *latent, k = check_latent_shape(latent_shape)
        return (*latent, 2, k)

    def _check(self, scores: object) -> tuple[Tensor, Tensor]:
        if isinstance(scores, Tensor):
            x = _check_input(scores, "scores", 3)
            if x.shape[-2] != 2:
                raise ValueError("scores must have shape (B, *latent, 2, K): [..., 0, :] face "
                                 "scores, [..., 1, :] concentrations before softplus; got shape "
                                 f"{tuple(x.shape)}")
            face_scores, raw = x.unbind(-2)
            # softplus(·) >= the dtype's tiny: a very negative pre-activation stays a valid α
            scores = (face_scores, F.softplus(raw).clamp_min(torch.finfo(raw.dtype).tiny))
        if not (isinstance(scores, tuple) and len(scores) == 2):
            got = (f"a tuple of {len(scores)}" if isinstance(scores, tuple)
                   else type(scores).__name__)
            raise TypeError("scores must be a tensor (B, *latent, 2, K) or a tuple (face_scores, "
                            f"concentration), got {got}")
        face_scores = _check_input(scores[0], "scores[0] (face_scores)", 2)
        concentration = _check_input(scores[1], "scores[1] (concentration)", 2)
        check_positive(concentration, "scores[1] (concentration)")
        if face_scores.shape != concentration.shape:
            raise ValueError("face_scores and concentration must have the same shape (B, *latent, "
                             f"K), got {tuple(face_scores.shape)} and {tuple(concentration.shape)}")
        if self.prior is not None and self.prior.num_categories != face_scores.shape[-1]:
            raise ValueError(f"prior has K = {self.prior.num_categories}, scores have K = "
                             f"{face_scores.shape[-1]}")
        return face_scores, concentration

    def _regularizers(self, q: MixedDirichlet, faces: Tensor) -> tuple[Tensor, ...]:
        """H⊕ and KL⊕ split into the exact part (B, *latent) and the part at the sampled faces
        (S', B, *latent); with ``exact_regularizer`` everything is in the exact part."""
        zero = torch.zeros_like(faces[..., 0])
        if self.exact_regularizer:
            kl = None if self.prior is None else kl_divergence(q, self.prior_like(q.concentration))
            return q.entropy(), zero, kl, zero
        kl, kl_at_faces = None, zero
        if self.prior is not None:
            prior = self.prior_like(q.concentration)
            kl = kl_divergence(q.faces, prior.faces)
            kl_at_faces = q.dirichlet_kl(prior, faces)
        return q.faces.entropy(), q.dirichlet_entropy(faces), kl, kl_at_faces

    def _mode_output(self, q: MixedDirichlet, loss_fn: LossFn, *regularizers: Tensor | None,
                     ) -> EstimatorOutput:
        """One evaluation at the Dirichlet mean on the most probable face, with the training
        estimates of H⊕ and KL⊕ ((B, *latent) exact parts, (S', B, *latent) sampled parts)."""
        entropy, entropy_at_faces, kl, kl_at_faces = regularizers
        alpha = q.concentration.detach() * q.faces.mode
        y = alpha / alpha.sum(-1, keepdim=True)
        s = self.n_samples
        total_entropy = sum_latent(entropy + entropy_at_faces[:s].mean(0), 1)
        total_kl = None if kl is None else sum_latent(kl + kl_at_faces[:s].mean(0), 1)
        return one_sample_output(self, loss_fn, y, None, total_entropy, total_kl, self.kl_coeff)

    def forward(self, scores: Tensor | tuple[Tensor, Tensor], loss_fn: LossFn) -> EstimatorOutput:
        face_scores, concentration = self._check(scores)
        q = MixedDirichlet(NonEmptyFaces(face_scores, validate_args=False), concentration,
                           validate_args=False)
        s = self.n_samples
        total = s + (1 if self.baseline == "self_critic" else 0)
        faces = q.faces.sample((total,))  # (S', B, *latent, K)
        entropy, entropy_at_faces, kl, kl_at_faces = self._regularizers(q, faces)
        if self.reading() == "mode":
            return self._mode_output(q, loss_fn, entropy, entropy_at_faces, kl, kl_at_faces)
        losses, z, rows = _evaluate(q.rsample_on_faces(faces), loss_fn, type(self).__name__)
        exact = add_term(torch.zeros_like(losses[:, 0]), -self.entropy_coeff,
                         sum_latent(entropy, 1))
        at_faces = add_term(torch.zeros_like(entropy_at_faces), -self.entropy_coeff,
                            entropy_at_faces)
        if kl is not None:
            exact = add_term(exact, self.kl_coeff, sum_latent(kl, 1))
            at_faces = add_term(at_faces, self.kl_coeff, kl_at_faces)
        cost = losses + sum_latent(at_faces.movedim(0, 1), 2)  # c_s, (B, S')
        log_q = sum_latent(q.faces.log_prob(faces).movedim(0, 1), 2)[:, :s]
        detached = cost.detach()
        if self.baseline == "self_critic":
            beta = detached[:, s:]
        elif self.baseline == "leave_one_out":
            beta = (detached.sum(1, keepdim=True) - detached) / (s - 1)
        else:
            beta = torch.zeros_like(detached[:, :s])
        advantage = detached[:, :s] - beta
        if self.standardize:
            advantage = advantage / self._scale(detached[:, :s])
        score = advantage * (log_q - log_q.detach())
        loss = batch_mean((cost[:, :s] + score).mean(1) + exact)

        def report(exact_part: Tensor, sampled_part: Tensor) -> Tensor:
            return sum_latent(exact_part + sampled_part[:s].mean(0), 1).detach()

        logs: dict[str, float | Tensor] = {"baseline": batch_mean(beta)}
        if kl is not None:
            logs["kl"] = batch_mean(report(kl, kl_at_faces))
        entropy = report(entropy, entropy_at_faces)
        out = fixed_support_output(loss, losses[:, :s].mean(1), entropy, total, logs)
        return out.evaluated(z, rows, mc_weights(rows, s, total, losses))
