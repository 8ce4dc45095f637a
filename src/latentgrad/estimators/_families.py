"""Latent families the exact and score-function estimators work with.

A family turns batched scores into a distribution over latent values ``z`` and gives what the
estimators need: input checks, exact entropy, samples (no gradient) and ``log p(z)``.

- ``CategoricalFamily``: scores ``(B, K)`` logits, ``p = softmax(scores)``, ``z`` one-hot ``(K,)``.
- ``BernoulliFamily``: scores ``(B, D)``, independent bits ``p(z_i = 1) = sigmoid(t_i)``
  (the Gibbs distribution of an unbudgeted bit vector), ``z`` in ``{0, 1}^D``;
  ``log p(z) = sum_i z_i log sigmoid(t_i) + (1 - z_i) log sigmoid(-t_i)`` (methods.md §4).
- ``StructureFamily``: the Gibbs distribution ``p(z) ∝ exp <θ, z>`` of any ``Structure`` with an
  exact sampler: scores ``(B, *score_shape)``, ``z`` 0/1 structures, ``log p = <θ, z> - log Z``,
  ``H = log Z - <θ, μ>`` (budgeted bit vectors, k-subsets, spanning trees, arborescences).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._noise import gumbel
from .._validation import check_no_nan, check_no_pos_inf, check_rows_valid
from ..structures.base import Structure
from ._checks import check_batched


def masked_entropy(p: Tensor, dim: int = -1) -> Tensor:
    """``H(p) = -sum_{p_z > 0} p_z log p_z`` along ``dim``; zeros are masked before the log.
    ``H ≥ 0``: a value that rounding puts below 0 (a mass of 1 + ulp) is returned as 0."""
    logp = torch.where(p > 0, p, torch.ones_like(p)).log()
    return (-(p * logp).sum(dim)).clamp_min(0)


def gumbel_argmax(logits: Tensor, n: int) -> Tensor:
    """``n`` independent draws from ``softmax(logits)`` by Gumbel-max: ``(B, K)`` -> ``(B, n)``.

    ``-inf`` logits are never drawn; the uniforms are clamped so the Gumbel noise stays finite.
    """
    shape = (logits.shape[0], n, logits.shape[-1])
    return (logits.unsqueeze(1) + gumbel(shape, logits)).argmax(-1)


class CategoricalFamily:
    """Categorical over the last dim of ``(B, K)`` scores; samples are one-hot float rows."""

    event_dim = 1

    def check(self, scores: object, name: str = "scores") -> Tensor:
        x = check_batched(scores, name, 1)
        check_rows_valid(x, name)
        return x

    def sample(self, scores: Tensor, n: int) -> Tensor:
        """``(B, K)`` -> ``(B, n, K)`` one-hot draws (no gradient)."""
        idx = gumbel_argmax(scores.detach(), n)
        return F.one_hot(idx, scores.shape[-1]).to(scores.dtype)

    def log_prob(self, scores: Tensor, z: Tensor) -> Tensor:
        """``log p(z)`` for one-hot ``z`` ``(B, n, K)`` -> ``(B, n)``, by index (no ``0 * -inf``)"""
        logp = scores.log_softmax(-1)
        return logp.gather(-1, z.argmax(-1))

    def entropy(self, scores: Tensor) -> Tensor:
        return masked_entropy(scores.softmax(-1))


class BernoulliFamily:
    """Independent bits over ``(B, D)`` scores: ``p(z_i = 1) = sigmoid(t_i)``."""

    event_dim = 1

    def check(self, scores: object, name: str = "scores") -> Tensor:
        """Finite or ``-inf`` (bit always off) scores; NaN and ``+inf`` are rejected."""
        x = check_batched(scores, name, 1)
        check_no_nan(x, name)
        check_no_pos_inf(x, name)
        return x

    def sample(self, scores: Tensor, n: int) -> Tensor:
        """``(B, D)`` -> ``(B, n, D)`` 0/1 draws (no gradient)."""
        probs = torch.sigmoid(scores.detach()).unsqueeze(1).expand(-1, n, -1)
        return torch.bernoulli(probs)

    def log_prob(self, scores: Tensor, z: Tensor) -> Tensor:
        """``(B, n, D)`` bits -> ``(B, n)`` log-probabilities."""
        t = scores.unsqueeze(1)
        return torch.where(z > 0, F.logsigmoid(t), F.logsigmoid(-t)).sum(-1)

    def entropy(self, scores: Tensor) -> Tensor:
        """Sum of binary entropies ``softplus(t_i) - t_i sigmoid(t_i)`` (0 for ``t_i = -inf``)."""
        off = scores == float("-inf")
        t = torch.where(off, torch.zeros_like(scores), scores)
        h = (F.softplus(t) - t * torch.sigmoid(t)).clamp_min(0)  # >= 0; rounding clamped
        return torch.where(off, torch.zeros_like(h), h).sum(-1)


class StructureFamily:
    """Gibbs distribution of ``structure`` over ``(B, *score_shape)`` scores (exact sampler)."""

    def __init__(self, structure: Structure) -> None:
        self.structure = structure
        self.event_dim = structure.event_dim

    def check(self, scores: object, name: str = "scores") -> Tensor:
        x = check_batched(scores, name, self.event_dim)
        self.structure.check_scores(x, name)
        return x

    def sample(self, scores: Tensor, n: int) -> Tensor:
        """``(B, *score_shape)`` -> ``(B, n, *score_shape)`` exact draws (no gradient)."""
        return self.structure.sample(scores.detach(), (n,)).movedim(0, 1)

    def log_prob(self, scores: Tensor, z: Tensor) -> Tensor:
        """``(B, n, *score_shape)`` structures -> ``(B, n)`` ``<θ, z> - log Z(θ)``."""
        return self.structure.log_prob(scores.unsqueeze(1), z)

    def entropy(self, scores: Tensor) -> Tensor:
        """Exact ``log Z - <θ, μ>``, differentiable (double backward through ``log Z``)."""
        return self.structure.entropy(scores)
