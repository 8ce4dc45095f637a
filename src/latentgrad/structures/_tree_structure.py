"""``TreeStructure``: what ``SpanningTree`` and ``Arborescence`` share.

Scores ``(*batch, n, n)``, finite; ``log Z`` and the marginals by a matrix-tree theorem on the
flattened, validated scores (``_log_partition`` and ``_marginals``, supplied by the subclass;
``_tree_counts``); ``enumerate`` limited to ``n <= MAX_ENUMERATE_NODES``.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from .._validation import check_finite, check_tensor, check_trailing_shape
from ._enumeration import flatten_batch
from .base import Structure

#: ``enumerate()`` refuses larger graphs (n^(n-2) spanning trees, 16807 at n = 7; at most
#: n^(n-1) = 117649 single-root dependency trees).
MAX_ENUMERATE_NODES = 7


def symmetrized(scores: Tensor) -> Tensor:
    """``(θ + θᵀ)/2`` computed as ``θ/2 + θᵀ/2``: the same value (halving is exact), without
    overflow for scores near finfo.max."""
    return scores / 2 + scores.mT / 2


class TreeStructure(Structure):
    """Base of the spanning-tree structures over n nodes; subclasses set ``n`` and implement
    ``_log_partition``, ``_marginals``, ``argmax``, ``sample`` and ``enumerate``."""

    n: int

    def check_scores(self, scores: Tensor, name: str = "scores") -> Tensor:
        """Float ``(*batch, n, n)``, finite (one pass: ``check_finite`` also names NaN)."""
        check_tensor(scores, name)
        check_trailing_shape(scores, name, self.score_shape)
        check_finite(scores, name)
        return scores

    @abc.abstractmethod
    def _counted(self, device: torch.device) -> Tensor:
        """``(n, n)`` bool on ``device``: the score entries a structure can use (the others are
        ignored); built there, not copied (a copy from the host waits for the device)."""

    def _common_shift(self, scores: Tensor) -> Tensor | None:
        """Every structure uses the same number of counted entries: their maximum per row
        (detached), ``(*batch, 1, 1)``."""
        if not scores.numel():
            return None
        ignored = ~self._counted(scores.device)
        return scores.detach().masked_fill(ignored, float("-inf")).amax((-2, -1), keepdim=True)

    def _entropy_rounding(self, scores: Tensor, marginals: Tensor) -> Tensor:
        """``eps · max|θ|² · Σ μ(1 − μ)`` (float64 eps, counted entries): the matrix-tree
        marginals carry absolute errors of about eps · |θ|, and ``<θ, μ>`` multiplies them by
        |θ| wherever μ is fractional (near-tied trees). An upper bound on the measured errors
        (n = 4-5, scores ±s plus N(0, 1), s = 1e3-1e8, against enumeration), often by far."""
        counted = self._counted(scores.device)
        scale = scores.masked_fill(~counted, 0.0).abs().amax((-2, -1))
        spread = (marginals * (1.0 - marginals)).sum((-2, -1))
        return torch.finfo(torch.float64).eps * scale.square() * spread

    @abc.abstractmethod
    def _log_partition(self, flat: Tensor) -> Tensor:
        """``log Z`` of validated ``(B, n, n)`` scores: ``(B,)`` in the input dtype."""

    @abc.abstractmethod
    def _marginals(self, flat: Tensor) -> Tensor:
        """Marginals of validated ``(B, n, n)`` scores: ``(B, n, n)`` in the input dtype,
        differentiable (a graph is built when ``flat`` requires grad)."""

    def log_partition(self, scores: Tensor) -> Tensor:
        """``log sum_z exp(score(θ, z))``, ``(*batch,)``; differentiable twice. In the scores'
        dtype: a ValueError where it exceeds that dtype's range."""
        self.check_scores(scores)
        flat, batch = flatten_batch(scores, 2)
        self._check_float64_range(flat)
        return self._log_z_in_dtype_of(self._log_partition(flat), scores).reshape(batch)

    def marginals(self, scores: Tensor) -> Tensor:
        """Gibbs marginals ``(*batch, n, n)`` (see the subclass); differentiable when ``scores``
        requires grad (SST backpropagates through them)."""
        self.check_scores(scores)
        flat, _ = flatten_batch(scores, 2)
        self._check_float64_range(flat)
        return self._marginals(flat).reshape(scores.shape)

    def log_prob_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """float64, the dtype of the matrix-tree log Z: the score sums of float32 scores near
        finfo.max do not overflow there."""
        return torch.float64

    def _check_float64_range(self, flat: Tensor) -> None:
        """The matrix-tree computations run in float64, far beyond any float32 score: only
        float64 scores can leave ``check_range``'s range."""
        if flat.dtype == torch.float64:
            self.check_range(flat)

    def _check_enumerable(self) -> None:
        if self.n > MAX_ENUMERATE_NODES:
            raise ValueError(
                f"{self!r}.enumerate() is for small sizes (n <= {MAX_ENUMERATE_NODES}); "
                f"it would list {self.num_structures} structures"
            )
