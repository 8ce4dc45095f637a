"""Relaxed k-subsets for learning to explain (Chen et al. 2018; Paulus et al. 2020, §5.2).

Scores ``θ`` ``(B, n)``; each estimator draws one relaxed k-hot vector ``z`` ``(B, n)`` per
example, evaluates ``loss_fn`` once and differentiates through ``z`` (pathwise). With
``straight_through=True`` the forward value is the hard top-k indicator of the relaxed vector
(the k largest entries) and the backward pass is the relaxation's.

- ``L2XEstimator`` (Chen et al. 2018): k independent Concrete draws
  ``c_j = softmax((θ + g_j) / τ)``, ``z = max_j c_j`` (elementwise); ``g_j`` iid Gumbel.
- ``SoftSubEstimator`` (Xie & Ermon 2019): ``w = θ + g`` (one Gumbel vector), ``a_0 = 0``;
  for ``j = 1..k``: ``w ← w + log max(1 − a_{j−1}, ε)``, ``a_j = softmax(w / τ)``;
  ``z = Σ_j a_j``. As ``τ → 0`` it is the top-k of ``θ + g`` (Gumbel-top-k sampling without
  replacement).
- ``CorrelatedSSTEstimator`` (Paulus et al. 2020, "Corr." top-k): the k-subset SST with the
  exponential-family entropy at correlated Gaussian utilities ``U = μ + σ ⊙ ε + F η``
  (``ε ~ N(0, I_n)``, ``η ~ N(0, I_r)``, i.e. covariance ``diag(σ²) + F Fᵀ``), all amortised:
  scores ``(B, n, 2 + r)`` hold ``μ``, ``log σ`` and the r columns of ``F``;
  ``z = μ_KSubset(U / τ)``, the marginals of ``p(x) ∝ exp <x, U / τ>`` over k-subsets.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._dtypes import working_dtype
from .._validation import check_finite, check_positive_int
from ..distributions.sst import draw_noise
from ..structures.ksubset import KSubset
from ._one_sample import one_sample_output
from .base import Estimator, EstimatorOutput, LossFn, no_enumeration_target
from .schedules import TemperatureSchedule, as_schedule


def topk_mask(z: Tensor, k: int) -> Tensor:
    """The k-hot indicator of the k largest entries of each row of ``z`` ``(B, n)``."""
    return torch.zeros_like(z).scatter_(-1, z.topk(k, dim=-1).indices, 1.0)


def l2x_relax(scores: Tensor, gumbels: Tensor, tau: Tensor) -> Tensor:
    """``max_j softmax((θ + g_j) / τ)``: scores ``(B, n)``, gumbels ``(k, B, n)`` -> ``(B, n)``."""
    return ((scores + gumbels) / tau).softmax(-1).amax(0)


def softsub_relax(scores: Tensor, gumbel: Tensor, k: int, tau: Tensor, eps: float) -> Tensor:
    """Xie & Ermon's relaxed top-k (module docstring): ``(B, n)`` -> ``(B, n)``."""
    w = scores + gumbel
    a = torch.zeros_like(w)
    total = torch.zeros_like(w)
    for _ in range(k):
        w = w + torch.log(torch.clamp(1.0 - a, min=eps))
        a = (w / tau).softmax(-1)
        total = total + a
    return total


class _RelaxedSubset(Estimator):
    """Shared parts: k, temperature, straight-through and the one-sample surrogate."""

    enumeration_probs = no_enumeration_target  # no brute-force target (diagnostics)

    def __init__(
        self,
        k: int,
        temperature: float | TemperatureSchedule,
        straight_through: bool = False,
        entropy_coeff: float = 0.0,
    ) -> None:
        super().__init__(entropy_coeff)
        if entropy_coeff:
            raise ValueError(f"{type(self).__name__} has no entropy; entropy_coeff must be 0")
        self.k = check_positive_int(k, "k")
        self.temperature = as_schedule(temperature, "temperature")
        if not isinstance(straight_through, bool):
            got = type(straight_through).__name__
            raise TypeError(f"straight_through must be a bool, got {got}")
        self.straight_through = straight_through

    def extra_repr(self) -> str:
        return f"k={self.k}, straight_through={self.straight_through}"

    def _check(self, scores: object, trailing: int = 0) -> Tensor:
        if not isinstance(scores, Tensor) or not scores.is_floating_point():
            raise TypeError("scores must be a floating-point tensor")
        if scores.dim() != 2 + trailing:
            raise ValueError(
                f"scores must have {2 + trailing} dims (B, n{', 2 + r' if trailing else ''}), "
                f"got shape {tuple(scores.shape)}"
            )
        if scores.shape[1] < self.k:
            raise ValueError(f"scores have n = {scores.shape[1]} items, fewer than k = {self.k}")
        check_finite(scores, "scores")  # follows the validation switch (a sync on a GPU)
        return scores

    def _output(self, relaxed: Tensor, loss_fn: LossFn, tau: Tensor) -> EstimatorOutput:
        z = relaxed
        if self.straight_through:
            z = topk_mask(relaxed.detach(), self.k) + (relaxed - relaxed.detach())
        return one_sample_output(self, loss_fn, z, tau, None)


class L2XEstimator(_RelaxedSubset):
    """L2X's relaxed k-hot (module docstring); ``scores`` ``(B, n)``."""

    def forward(self, scores: Tensor, loss_fn: LossFn) -> EstimatorOutput:
        scores = self._check(scores)
        tau = self.temperature.like(scores)
        gumbels = draw_noise(torch.Size((self.k, *scores.shape)), scores, "gumbel")
        return self._output(l2x_relax(scores, gumbels, tau), loss_fn, tau)


class SoftSubEstimator(_RelaxedSubset):
    """Xie & Ermon's relaxed top-k (module docstring); ``scores`` ``(B, n)``; ``eps`` the floor
    inside the log."""

    def __init__(
        self,
        k: int,
        temperature: float | TemperatureSchedule,
        straight_through: bool = False,
        entropy_coeff: float = 0.0,
        eps: float = 1e-20,
    ) -> None:
        super().__init__(k, temperature, straight_through, entropy_coeff)
        if not 0 < eps < 1:
            raise ValueError(f"eps must lie in (0, 1), got {eps}")
        self.eps = float(eps)

    def forward(self, scores: Tensor, loss_fn: LossFn) -> EstimatorOutput:
        scores = self._check(scores)
        tau = self.temperature.like(scores)
        gumbel = draw_noise(scores.shape, scores, "gumbel")
        return self._output(softsub_relax(scores, gumbel, self.k, tau, self.eps), loss_fn, tau)


class CorrelatedSSTEstimator(_RelaxedSubset):
    """k-subset SST at correlated Gaussian utilities (module docstring); ``scores``
    ``(B, n, 2 + rank)``."""

    def __init__(
        self,
        k: int,
        temperature: float | TemperatureSchedule,
        rank: int = 1,
        straight_through: bool = False,
        entropy_coeff: float = 0.0,
    ) -> None:
        super().__init__(k, temperature, straight_through, entropy_coeff)
        self.rank = check_positive_int(rank, "rank")

    def score_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*latent_shape, 2 + self.rank)

    def utilities(self, scores: Tensor) -> Tensor:
        """One draw of ``U = μ + σ ⊙ ε + F η`` ``(B, n)``, differentiable in the scores."""
        mu, log_sigma, factors = scores[..., 0], scores[..., 1], scores[..., 2:]
        eps = draw_noise(mu.shape, mu, "gaussian")
        eta = draw_noise(torch.Size((scores.shape[0], self.rank)), mu, "gaussian")
        return mu + log_sigma.exp() * eps + (factors @ eta.unsqueeze(-1)).squeeze(-1)

    def tempered_utilities(self, scores: Tensor, tau: Tensor) -> Tensor:
        """One draw of ``U / τ`` ``(B, n)``, finite at any finite scores and temperature, in at
        least float32 (half-precision scores: float32 utilities).

        Computed as ``Û e^m / τ``: ``m >= 0`` each row's largest
        log-magnitude of the terms of U (``log|μ_i|``, ``log σ_i + log|ε_i|``,
        ``log|F_ij η_j|``) plus ``log(2 + rank)`` and a rounding margin of a few ulps, so
        ``|Û| <= 1`` (``Û = U`` exactly when no term exceeds 1/(2 + rank)). Where
        ``e^m / τ`` would overflow, ``m`` is lowered to fit: the row is scaled down as a whole,
        at magnitudes where its relaxed top-k is already the hard one (its gaps exceed ~1/eps
        of the dtype).
        """
        x = scores.to(working_dtype(scores.dtype))
        info = torch.finfo(x.dtype)
        mu, log_sigma, factors = x[..., 0], x[..., 1], x[..., 2:]
        eps = draw_noise(mu.shape, mu, "gaussian")
        eta = draw_noise(torch.Size((x.shape[0], self.rank)), mu, "gaussian")
        tau = tau.to(x)
        log_terms = math.log(2 + self.rank)

        def log_abs(t: Tensor) -> Tensor:
            return t.abs().clamp_min(info.tiny).log()

        with torch.no_grad():  # the row scale m is a constant of the draw
            largest = torch.stack([
                log_abs(mu), log_sigma + log_abs(eps),
                (log_abs(factors) + log_abs(eta).unsqueeze(-2)).amax(-1)], -1).amax(-1)
            top = largest.amax(-1, keepdim=True)
            # plus a few ulps of ``top``: at log-magnitudes like 1e8 (float32) the sums and
            # differences of logs round by units, which would let |Û| exceed 1
            m = (top + log_terms + 8 * info.eps * top.abs()).clamp_min(0)
            fit = (math.log(info.max) - 1 - log_terms + tau.log()).clamp_max(math.log(info.max))
            m_out = torch.minimum(m, fit)
        scale = (-m).exp()
        u_hat = (mu * scale + eps * (log_sigma - m).exp()
                 + ((factors * scale.unsqueeze(-1)) @ eta.unsqueeze(-1)).squeeze(-1))
        return u_hat * (m_out.exp() / tau)

    def forward(self, scores: Tensor, loss_fn: LossFn) -> EstimatorOutput:
        scores = self._check(scores, trailing=1)
        if scores.shape[-1] != 2 + self.rank:
            raise ValueError(
                f"scores must have last dimension 2 + rank = {2 + self.rank}, got "
                f"{scores.shape[-1]}"
            )
        tau = self.temperature.like(scores)
        utilities = self.tempered_utilities(scores, tau)
        relaxed = KSubset(scores.shape[1], self.k).marginals(utilities).to(scores.dtype)
        return self._output(relaxed, loss_fn, tau)
