"""``KSubset(n, k)``: 0/1 vectors of length n with exactly k ones.

``log Z = log e_k(θ)``, the k-th elementary symmetric polynomial, by an O(nk) log-space DP that is
differentiable twice (marginals ``grad log Z``, their backward the covariance of z).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from .._dtypes import working_dtype
from .._validation import check_no_pos_inf, violated
from ._enumeration import check_enumerable, check_int, flatten_batch
from ._esp import log_elementary_symmetric
from ._kbest import kbest_subsets
from ._sampling import count_prefix_table, row_max_shift, sample_with_counts
from .base import Structure


class KSubset(Structure):
    """Subsets of size exactly k of n items, as k-hot vectors.

    Scores ``(*batch, n)``: finite or ``-inf`` (item excluded); each row needs at least k items
    above ``-inf``; never NaN or ``+inf``.
    """

    def __init__(self, n: int, k: int) -> None:
        self.n = check_int(n, "n", 1)
        self.k = check_int(k, "k", 0, self.n)
        self.score_shape = (self.n,)
        self.summed_scores = self.k

    def __repr__(self) -> str:
        return f"KSubset(n={self.n}, k={self.k})"

    @property
    def num_structures(self) -> int:
        return math.comb(self.n, self.k)

    def check_scores(self, scores: Tensor, name: str = "scores") -> Tensor:
        super().check_scores(scores, name)
        check_no_pos_inf(scores, name)
        if violated(scores, lambda s: (s > float("-inf")).sum(-1) >= self.k):
            raise ValueError(f"{name} has a row with fewer than k={self.k} entries above -inf")
        return scores

    def argmax(self, scores: Tensor) -> Tensor:
        """Indicator of the k largest scores (first index on ties): ``(*batch, n)``."""
        self.check_scores(scores)
        idx = torch.argsort(scores, dim=-1, descending=True, stable=True)[..., : self.k]
        z = torch.zeros_like(scores).scatter_(-1, idx, 1.0)
        return z

    def topk(self, scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` best k-subsets (exact k-best count DP), ``(*batch, k, n)`` and ``(*batch, k)``.

        Requires ``k <= C(n, self.k)``. The DP ranks sums of scores shifted by their row maximum
        (the same shift for every k-subset), so large common offsets do not round the ranking,
        in float64 (float32 sums of scores ~1e4 round by ~2e-3); the k subsets are then ordered
        by their unshifted float64 scores (stable), since the shift rounds the sums of subsets
        without the maximum (scores from 1e6 down to 1e-10 swapped 1.0 and 0.9999999999); the
        scores are returned correctly rounded to the input dtype.
        """
        self.check_scores(scores)
        check_int(k, "k", 1, self.num_structures)
        flat, batch = flatten_batch(scores, 1)
        flat = flat.to(torch.float64)
        shifted = flat.detach() - self._common_shift(flat)
        z = kbest_subsets(shifted, self.k, k, exact=True).to(flat.dtype)
        values = self.score(flat.unsqueeze(1), z)
        order = values.detach().argsort(dim=-1, descending=True, stable=True)
        z = z.gather(1, order.unsqueeze(-1).expand_as(z)).to(scores.dtype)
        values = values.gather(1, order).to(scores.dtype)
        return z.reshape(*batch, k, self.n), values.reshape(*batch, k)

    def _common_shift(self, scores: Tensor) -> Tensor:
        """Every k-subset has k ones: the row maximum (``row_max_shift``)."""
        return row_max_shift(scores)

    def log_partition(self, scores: Tensor) -> Tensor:
        """``log e_k(θ) = log sum_{|S|=k} exp(sum_{i in S} θ_i)``: ``(*batch,)``, computed in at
        least float32 and returned in the scores' dtype (a ValueError where it exceeds that dtype's
        range)."""
        self.check_scores(scores)
        work = scores.to(working_dtype(scores.dtype))
        self.check_range(work)
        # log e_k(θ) = log e_k(θ − c) + k c: the DP sums shifted scores (no rounding at the scale
        # of a large common offset); c is the row maximum, detached (the gradient is unchanged)
        top = self._common_shift(work)
        log_z = log_elementary_symmetric(work - top, self.k)[..., -1] + self.k * top.squeeze(-1)
        return self._log_z_in_dtype_of(log_z, scores)

    def marginals(self, scores: Tensor) -> Tensor:
        """``P(z_i = 1) = grad log Z``, ``(*batch, n)``, sums to k; differentiable (its backward is
        the covariance of z, by double backward through the DP)."""
        self.check_scores(scores)
        return super().marginals(scores.to(working_dtype(scores.dtype))).to(scores.dtype)

    def _sample(
        self, scores: Tensor, sample_shape: tuple[int, ...], generator: torch.Generator | None
    ) -> Tensor:
        """Exact draws from ``p(z) ∝ exp(<θ, z>)`` over k-subsets: ``(*sample_shape, *batch, n)``.

        Backward sampling through the elementary-symmetric DP (sequential over items,
        vectorised over samples and batch): item i is taken with probability
        ``e^{θ_i} e_{c-1}(θ_1..θ_{i-1}) / e_c(θ_1..θ_i)``, c the ones still to place; on the
        scores shifted by their row maximum (``_common_shift``).
        """
        # every k-subset has k ones: shifting by the row maximum leaves p(z) unchanged and keeps
        # the DP's sums (and the differences log_on takes of them) at the scale of the score
        # differences, not of a large common offset
        scores = scores - self._common_shift(scores)
        table = count_prefix_table(scores, self.k)
        count = torch.full((*sample_shape, *scores.shape[:-1]), self.k, dtype=torch.long,
                           device=scores.device)
        return sample_with_counts(table, scores, count, generator)

    def enumerate(self) -> Tensor:
        """Every k-subset ``(C(n, k), n)``, in lexicographic order of the chosen indices."""
        check_enumerable(self.num_structures, repr(self))
        rows = list(itertools.combinations(range(self.n), self.k))
        z = torch.zeros((len(rows), self.n))
        if self.k:
            z[torch.arange(len(rows)).unsqueeze(-1), torch.tensor(rows)] = 1.0
        return z
