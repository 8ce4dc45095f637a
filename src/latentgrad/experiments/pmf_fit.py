"""Fitting a relaxed distribution to a discrete target pmf (Potapczynski et al. 2020, §5.1).

A ``RelaxedPmf`` holds the free parameters of one relaxed distribution on the K-simplex (not
amortised): Gumbel-Softmax logits θ, or the Gaussian ``loc`` μ and log-scale ξ (σ = exp ξ) of
IGR-I, IGR-Planar (plus its planar flows) or IGR-SB. Its samples ψ approach one-hot vectors as
τ → 0, so the Monte-Carlo mean ψ̄ = (1/S) Σ_s ψ_s is a relaxed estimate of the pmf of the
discrete variable ``argmax ψ``. ``fit_pmf`` minimises ``KL(ψ̄ ‖ p)`` (or ``Σ_k (ψ̄_k − p_k)²``)
with Adam, drawing fresh samples every step, and stops early once the loss is below ``tol``.

IGR-SB's ψ has ``K_max`` entries of which the first ``n* + 1`` are positive (adaptive
truncation, ``IGRStickBreaking``): fitted to a target with countably infinite support (Poisson,
negative binomial), ``K_max`` only caps the truncation, which the fit chooses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import RelaxedOneHotCategorical

from latentgrad.distributions import IGR, IGRPlanar, IGRStickBreaking, PlanarFlow

VARIANTS = ("gumbel", "igr_i", "igr_planar", "igr_sb")
DIVERGENCES = ("kl", "squared")


class RelaxedPmf(nn.Module):
    """Free parameters of a relaxed distribution over ``num_categories`` (IGR-SB: ``K_max``).

    Initialisation (the reference's): Gumbel θ = 0; IGR-I and IGR-Planar μ = ξ = 0; IGR-SB
    μ = logit(1/(K − 1)) on every stick and σ = exp(softplus⁻¹(1)) (ξ = softplus⁻¹(1)).
    ``eps``/``quantile``: IGR-SB truncation (mass threshold ``1 − eps``, quantile of the
    per-draw stick counts); ``num_flows``: planar flows of IGR-Planar.
    """

    def __init__(
        self,
        variant: str,
        num_categories: int,
        temperature: float,
        eps: float = 0.1,
        quantile: float = 0.5,
        num_flows: int = 2,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if isinstance(num_categories, bool) or not isinstance(num_categories, int):
            raise TypeError(f"num_categories must be an int, got {type(num_categories).__name__}")
        if num_categories < 2 or (variant == "igr_sb" and num_categories < 3):
            raise ValueError(f"num_categories must be >= 2 (IGR-SB: >= 3), got {num_categories}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.variant = variant
        self.temperature = float(temperature)
        self.eps, self.quantile = eps, quantile
        k = num_categories
        if variant == "gumbel":
            self.logits = nn.Parameter(torch.zeros(k))
            return
        loc = math.log(1 / (k - 1)) - math.log1p(-1 / (k - 1)) if variant == "igr_sb" else 0.0
        log_scale = math.log(math.expm1(1.0)) if variant == "igr_sb" else 0.0
        self.loc = nn.Parameter(torch.full((k - 1,), loc))
        self.log_scale = nn.Parameter(torch.full((k - 1,), log_scale))
        self.flows = nn.ModuleList(
            PlanarFlow(k - 1) for _ in range(num_flows if variant == "igr_planar" else 0)
        )

    def distribution(self) -> torch.distributions.Distribution:
        """The relaxed distribution (batch shape ()), event (K,)."""
        tau = self.temperature
        if self.variant == "gumbel":
            return RelaxedOneHotCategorical(torch.tensor(tau), logits=self.logits)
        scale = self.log_scale.exp()
        if self.variant == "igr_i":
            return IGR(self.loc, scale, tau)
        if self.variant == "igr_planar":
            return IGRPlanar(self.loc, scale, tau, list(self.flows))
        return IGRStickBreaking(self.loc, scale, tau, self.eps, quantile=self.quantile)

    def rsample(self, n: int) -> Tensor:
        """``n`` reparameterised draws ψ, ``(n, K)``."""
        return self.distribution().rsample((n,))

    @torch.no_grad()
    def estimate(self, n: int, chunk: int = 10_000) -> tuple[Tensor, Tensor, int]:
        """Over ``n`` fresh draws (in chunks): the relaxed mean ψ̄ ``(K,)``, the frequencies of
        ``argmax ψ`` ``(K,)`` (the discrete pmf) and the largest number of positive entries
        of a draw minus one (IGR-SB: sticks kept; the others: K − 1)."""
        total, hard, kept = None, None, 0
        done = 0
        while done < n:
            m = min(chunk, n - done)
            psi = self.rsample(m).double()
            onehot = F.one_hot(psi.argmax(-1), psi.shape[-1]).double()
            total = psi.sum(0) if total is None else total + psi.sum(0)
            hard = onehot.sum(0) if hard is None else hard + onehot.sum(0)
            kept = max(kept, int((psi > 0).sum(-1).max()) - 1)
            done += m
        return total / n, hard / n, kept


def pmf_divergence(mean: Tensor, log_target: Tensor, kind: str = "kl") -> Tensor:
    """``KL(ψ̄ ‖ p) = Σ_k ψ̄_k (log ψ̄_k − log p_k)`` (0 log 0 = 0) or ``Σ_k (ψ̄_k − p_k)²``;
    ``mean`` and ``log_target`` ``(K,)`` over the same K categories."""
    if kind == "kl":
        return (torch.xlogy(mean, mean) - mean * log_target).sum()
    if kind == "squared":
        return (mean - log_target.exp()).pow(2).sum()
    raise ValueError(f"kind must be one of {DIVERGENCES}, got {kind!r}")


def total_variation(pmf: Tensor, target: Tensor) -> Tensor:
    """``½ Σ_k |pmf_k − p_k|`` over all k, where ``pmf`` (K,) is zero beyond K and ``target``
    (K,) holds the first K target probabilities: the target's tail ``1 − Σ_k p_k`` counts in."""
    tail = (1 - target.sum()).clamp(min=0)
    return 0.5 * ((pmf - target).abs().sum() + tail)


def fit_pmf(
    model: RelaxedPmf,
    log_target: Tensor,
    steps: int,
    samples: int,
    lr: float,
    kind: str = "kl",
    tol: float = 1e-5,
) -> list[float]:
    """Adam on ``pmf_divergence(ψ̄, log p)`` with ``samples`` draws per step, at most ``steps``
    steps, stopping once ``|loss| < tol``; returns the losses. ``log_target`` ``(K,)`` in the
    model's categories (the float dtype of the model)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    for _ in range(steps):
        loss = pmf_divergence(model.rsample(samples).mean(0), log_target, kind)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if abs(losses[-1]) < tol:
            break
    return losses
