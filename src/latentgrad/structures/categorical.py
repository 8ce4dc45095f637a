"""``Categorical(k)``: one-hot vectors of length k."""

from __future__ import annotations

import torch
from torch import Tensor

from .._dtypes import working_dtype
from .._one_hot import one_hot
from .._validation import (
    broadcast_shapes,
    check_rows_valid,
    check_tensor,
    check_trailing_shape,
    violated,
)
from ._enumeration import check_enumerable, check_int
from ._sampling import categorical
from .base import Structure

_INDEX_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class Categorical(Structure):
    """The k one-hot vectors ``e_1..e_k``; score of ``e_i`` is ``θ_i``.

    Gibbs distribution = ``softmax(θ)``, ``log Z = logsumexp(θ)``. Scores ``(*batch, k)`` may hold
    ``-inf`` (category excluded) but each row needs one entry above ``-inf``.
    """

    def __init__(self, k: int) -> None:
        self.k = check_int(k, "k", 1)
        self.score_shape = (self.k,)

    def __repr__(self) -> str:
        return f"Categorical(k={self.k})"

    @property
    def num_structures(self) -> int:
        """The K one-hot vectors."""
        return self.k

    def check_scores(self, scores: Tensor, name: str = "scores") -> Tensor:
        check_tensor(scores, name)
        check_trailing_shape(scores, name, self.score_shape)
        check_rows_valid(scores, name)
        return scores

    def argmax(self, scores: Tensor) -> Tensor:
        """One-hot of the best category (first index on ties): ``(*batch, k)``."""
        self.check_scores(scores)
        idx = scores.argmax(dim=-1)
        return one_hot(idx, self.k, scores.dtype)

    def topk(self, scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The k best categories: one-hots ``(*batch, k, K)`` and their scores ``(*batch, k)``."""
        self.check_scores(scores)
        check_int(k, "k", 1, self.k)
        values, idx = torch.sort(scores, dim=-1, descending=True, stable=True)
        onehot = one_hot(idx[..., :k], self.k, scores.dtype)
        return onehot, values[..., :k]

    def log_partition(self, scores: Tensor) -> Tensor:
        """``logsumexp(θ)``: ``(*batch,)``."""
        self.check_scores(scores)
        return torch.logsumexp(scores, dim=-1)

    def marginals(self, scores: Tensor) -> Tensor:
        """``softmax(θ)``: ``(*batch, k)``."""
        self.check_scores(scores)
        return torch.softmax(scores, dim=-1)

    def entropy(self, scores: Tensor) -> Tensor:
        """``H = -sum_i p_i log p_i``, ``p = softmax(θ)``: ``(*batch,)``, differentiable;
        ``-inf`` categories (``p_i = 0``) contribute 0."""
        return categorical_entropy(self.check_scores(scores))

    def sample_indices(
        self,
        scores: Tensor,
        sample_shape: torch.Size | tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Category indices drawn from ``softmax(θ)`` (Gumbel-max, no gradient), without building
        one-hots: ``(*batch, k)`` -> ``(*sample_shape, *batch)`` int64."""
        return draw_indices(self.check_scores(scores), sample_shape, generator)

    def log_prob_indices(self, scores: Tensor, idx: Tensor) -> Tensor:
        """``log p(i) = θ_i - logsumexp(θ)`` of category indices ``idx``; ``scores``
        ``(*batch, k)`` (validated as by ``check_scores``) and ``idx`` ``(*batch')`` broadcast;
        differentiable in the scores. ``idx`` must be an integer tensor (``TypeError``) with
        values in ``[0, k)`` (``ValueError``; a value check, off with validation)."""
        self.check_scores(scores)
        if not isinstance(idx, Tensor) or idx.dtype not in _INDEX_DTYPES:
            got = idx.dtype if isinstance(idx, Tensor) else type(idx).__name__
            raise TypeError(f"idx must be an integer tensor of category indices, got {got}")
        if violated(idx, lambda i: (i >= 0) & (i < self.k)):
            raise ValueError(
                f"idx must hold category indices in [0, {self.k}), got values from "
                f"{int(idx.min())} to {int(idx.max())}"
            )
        logp = torch.log_softmax(scores, dim=-1)
        shape = broadcast_shapes(tuple(scores.shape[:-1]), tuple(idx.shape), error=lambda: (
            f"idx of shape {tuple(idx.shape)} does not broadcast with the batch shape "
            f"{tuple(scores.shape[:-1])} of scores"
        ))
        logp = logp.expand(*shape, self.k)
        index = idx.long().expand(shape).unsqueeze(-1)
        return logp.gather(-1, index).squeeze(-1)

    def _sample(
        self, scores: Tensor, sample_shape: tuple[int, ...], generator: torch.Generator | None
    ) -> Tensor:
        """One-hot draws from ``softmax(θ)`` by Gumbel-max: ``(*sample_shape, *batch, k)``."""
        idx = categorical(scores.expand(*sample_shape, *scores.shape), generator)
        return one_hot(idx, self.k, scores.dtype)

    def enumerate(self) -> Tensor:
        """The identity matrix ``(k, k)``: row i is category i."""
        check_enumerable(self.k, repr(self))
        return torch.eye(self.k)


def categorical_entropy(scores: Tensor) -> Tensor:
    """``Categorical.entropy`` without the check, for callers that validated ``scores``."""
    logp = torch.log_softmax(scores, dim=-1)
    # p log p = 0 where p = 0: excluded categories and those whose log p overflowed to -inf
    return -(logp.exp() * torch.where(logp > float("-inf"), logp, 0.0)).sum(-1)


def draw_indices(
    scores: Tensor,
    sample_shape: torch.Size | tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> Tensor:
    """``Categorical.sample_indices`` without the check, for callers that validated ``scores``."""
    work = scores.detach().to(working_dtype(scores.dtype))  # detached: no graph
    if sample_shape:
        work = work.expand(*sample_shape, *work.shape)
    return categorical(work, generator)
