"""Latent families of the sampling and exact estimators, built on the structures' own samplers,
log-probabilities and entropies (one sampler per latent type).

Scores are ``(B, *latent, *event)``: each example has ``L = prod(latent)`` independent latent
variables (none when ``latent`` is empty), so samples are joint, log-probabilities and entropies
sums over the variables.

- ``CategoricalLatent``: event ``(K,)``, ``p = softmax(scores)`` (``structures.Categorical``).
  Values are int64 category indices ``(B, n, *latent)``; ``loss_fn`` receives them one-hot
  ``(N, *latent, K)`` in the scores' dtype, or as indices ``(N, *latent)`` with
  ``one_hot=False`` (nothing of size N x K is built).
- ``StructureLatent``: the Gibbs distribution ``p(z) ∝ exp <θ, z>`` of a ``Structure`` with an
  exact sampler (bit vectors with or without budget, k-subsets, trees): event ``score_shape``,
  values 0/1 structures ``(B, n, *latent, *score_shape)``, ``log p = <θ, z> - log Z``,
  ``H = log Z - <θ, μ>``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._one_hot import one_hot
from .._validation import check_rows_valid, check_tensor
from ..structures.base import Structure
from ..structures.categorical import Categorical, categorical_entropy, draw_indices
from ._checks import check_last_dim


def masked_entropy(p: Tensor, dim: int = -1) -> Tensor:
    """``H(p) = -sum_{p_z > 0} p_z log p_z`` along ``dim`` for any probabilities (e.g. sparse
    ones); zeros are masked before the log."""
    logp = torch.where(p > 0, p, torch.ones_like(p)).log()
    return -(p * logp).sum(dim)


def check_latent_scores(scores: object, name: str, event_dim: int) -> Tensor:
    """A float tensor ``(B, *latent, *event)``, ``B = 0`` allowed (metadata only, no sync)."""
    x = check_tensor(scores, name)
    if x.dim() < 1 + event_dim:
        want = "(B, *latent, K)" if event_dim == 1 else f"(B, *latent, *score_shape[{event_dim}])"
        raise ValueError(f"{name} must have shape {want}, got shape {tuple(x.shape)}")
    return x


def sum_over(x: Tensor, keep: int) -> Tensor:
    """Sum every dim after the first ``keep``: ``(*keep, *latent)`` -> ``(*keep,)``."""
    return x.flatten(keep).sum(-1) if x.dim() > keep else x


class CategoricalLatent:
    """Independent categoricals over the last dim of ``(B, *latent, K)`` scores."""

    event_dim = 1

    def __init__(self, one_hot: bool = True, k: int | None = None) -> None:
        if not isinstance(one_hot, bool):
            raise TypeError(f"one_hot must be a bool, got {type(one_hot).__name__}")
        self.one_hot = one_hot
        self.k = k  # the K of a ``Categorical(K)`` structure, checked against the scores

    @staticmethod
    def structure(scores: Tensor) -> Categorical:
        return Categorical(scores.shape[-1])

    def check(self, scores: object, name: str = "scores") -> Tensor:
        """Shape ``(B, *latent, K)``, and (with validation on) rows with a finite maximum."""
        x = check_latent_scores(scores, name, 1)
        if self.k is not None:
            check_last_dim(x, Categorical(self.k), name)
        check_rows_valid(x, name)  # (``Categorical(K).check_scores`` without rebuilding it)
        return x

    def sample(self, scores: Tensor, n: int) -> Tensor:
        """``n`` joint draws per example (no gradient): ``(B, n, *latent)`` int64."""
        if n == 1:  # the same draws as below, without the sample dim's reshuffle
            return draw_indices(scores).unsqueeze(1)  # scores checked by ``check``
        return draw_indices(scores, (n,)).movedim(0, 1)

    def mode(self, scores: Tensor) -> Tensor:
        """The most probable value of each example: ``(B, 1, *latent)`` int64."""
        return scores.detach().argmax(-1).unsqueeze(1)

    def log_prob(self, scores: Tensor, values: Tensor) -> Tensor:
        """``log p`` of ``(B, n, *latent)`` indices, summed over the variables: ``(B, n)``."""
        logp = torch.log_softmax(scores, dim=-1)  # (B, *latent, K); gathered at (B, *latent, n)
        if values.dim() == 2:
            return logp.gather(-1, values)
        return sum_over(logp.gather(-1, values.movedim(1, -1)).movedim(-1, 1), 2)

    def entropy(self, scores: Tensor) -> Tensor:
        """Exact entropy of each example, summed over its variables: ``(B,)``."""
        return sum_over(categorical_entropy(scores), 1)  # scores checked by ``check``

    def latent_values(self, values: Tensor, scores: Tensor) -> Tensor:
        """What ``loss_fn`` receives for indices ``(N, *latent)``: one-hot ``(N, *latent, K)`` in
        the scores' dtype, or the indices themselves with ``one_hot=False``."""
        if not self.one_hot:
            return values
        return one_hot(values, scores.shape[-1], scores.dtype)


class StructureLatent:
    """Gibbs distribution of ``structure`` over ``(B, *latent, *score_shape)`` scores."""

    def __init__(self, structure: Structure) -> None:
        self.structure = structure
        self.event_dim = structure.event_dim

    def check(self, scores: object, name: str = "scores") -> Tensor:
        x = check_latent_scores(scores, name, self.event_dim)
        want = tuple(self.structure.score_shape)
        if tuple(x.shape[x.dim() - self.event_dim :]) != want:
            raise ValueError(
                f"{name} must have shape (B, *latent, {', '.join(map(str, want))}) for "
                f"{self.structure!r}, got shape {tuple(x.shape)}"
            )
        return self.structure.check_scores(x, name)

    def sample(self, scores: Tensor, n: int) -> Tensor:
        """``(B, *latent, *score_shape)`` -> ``(B, n, *latent, *score_shape)`` exact draws."""
        return self.structure.sample(scores.detach(), (n,)).movedim(0, 1)

    def mode(self, scores: Tensor) -> Tensor:
        """The MAP structure of each variable: ``(B, 1, *latent, *score_shape)``."""
        return self.structure.argmax(scores.detach()).unsqueeze(1)

    def log_prob(self, scores: Tensor, values: Tensor) -> Tensor:
        """``(B, n, *latent, *score_shape)`` structures -> ``(B, n)`` ``<θ, z> - log Z(θ)``."""
        return sum_over(self.structure.log_prob_of_structures(scores.unsqueeze(1), values), 2)

    def entropy(self, scores: Tensor) -> Tensor:
        """Exact ``log Z - <θ, μ>`` summed over the variables, differentiable: ``(B,)``."""
        return sum_over(self.structure.entropy(scores), 1)

    def latent_values(self, values: Tensor, scores: Tensor) -> Tensor:
        return values
