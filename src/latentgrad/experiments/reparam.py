"""Reparameterised continuous latents for the experiments' reference models (Kingma & Welling
2014; implicit reparameterisation for the Dirichlet, Figurnov et al. 2018).

``Reparameterized(family)`` is an ``Estimator`` over a torch distribution with ``rsample`` and a
closed-form KL to a fixed prior:

- ``"gaussian"``: scores ``(loc, scale)``, each ``(B, K)``; q = N(loc, diag scale²) on R^K, prior
  N(0, I);
- ``"dirichlet"``: scores = concentrations ``(B, K)`` > 0; q = Dir(α) on the simplex, prior
  Dir(1) (uniform).

Surrogate per example: ``mean_s ℓ(z_s) + kl_coeff · KL(q ‖ prior) − entropy_coeff · H(q)``
with ``z_s = rsample`` (pathwise); ``entropy`` is the exact differential entropy.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Dirichlet, Distribution, Independent, Normal, kl_divergence

from latentgrad.estimators.base import (
    Estimator,
    EstimatorOutput,
    LossFn,
    batch_mean,
    call_loss_fn,
    fixed_support_output,
)

FAMILIES = ("gaussian", "dirichlet")


class Reparameterized(Estimator):
    """Pathwise estimator with a closed-form KL to the family's prior (module docstring)."""

    def __init__(self, family: str, n_samples: int = 1, kl_coeff: float = 1.0,
                 entropy_coeff: float = 0.0) -> None:
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
        super().__init__(entropy_coeff)
        self.family, self.n_samples, self.kl_coeff = family, n_samples, float(kl_coeff)

    def distribution(self, scores: Tensor | tuple[Tensor, Tensor]) -> Distribution:
        """q of the scores, batch shape (B,), event shape (K,). An empty batch skips
        torch.distributions' argument checks, which cannot reshape zero elements."""
        if self.family == "gaussian":
            if not (isinstance(scores, tuple) and len(scores) == 2):
                raise TypeError("gaussian scores must be a tuple (loc, scale)")
            check = None if scores[0].numel() else False
            return Independent(Normal(*scores, validate_args=check), 1, validate_args=check)
        if not isinstance(scores, Tensor):
            raise TypeError(f"dirichlet scores must be a tensor, got {type(scores).__name__}")
        return Dirichlet(scores, validate_args=None if scores.numel() else False)

    def prior_like(self, like: Tensor) -> Distribution:
        """The fixed prior, event shape (K,) like the last dim of ``like``, on its device in its
        dtype."""
        ones = torch.ones(like.shape[-1], dtype=like.dtype, device=like.device)
        if self.family == "gaussian":
            return Independent(Normal(torch.zeros_like(ones), ones), 1)
        return Dirichlet(ones)

    def forward(self, scores: Tensor | tuple[Tensor, Tensor], loss_fn: LossFn) -> EstimatorOutput:
        q = self.distribution(scores)
        z = q.rsample((self.n_samples,))  # (S, B, K)
        s, b = z.shape[:2]
        rows = torch.arange(b, device=z.device).repeat(s)
        losses = call_loss_fn(loss_fn, z.flatten(0, 1), rows).view(s, b).T  # (B, S)
        prior = self.prior_like(z)
        if isinstance(q, Independent):  # sum the coordinates here: Independent cannot reshape B = 0
            kl = kl_divergence(q.base_dist, prior.base_dist).sum(-1)
            entropy = q.base_dist.entropy().sum(-1)
        else:
            kl, entropy = kl_divergence(q, prior), q.entropy()
        expected = losses.mean(1)
        loss = batch_mean(expected + self.kl_coeff * kl - self.entropy_coeff * entropy)
        return fixed_support_output(loss, expected, entropy, s, means={"kl": kl})
