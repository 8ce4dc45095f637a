"""``BitVector(d, budget=None)``: 0/1 vectors of length d, optionally with at most ``budget`` ones.

A bit scores ``t_i`` when on and 0 when off. Unbudgeted, the bits are
independent: MAP ``1[t > 0]``, ``log Z = sum softplus(t)``, marginals ``sigmoid(t)``. With a budget
B the count DP over elementary symmetric polynomials gives ``log Z = logsumexp_{c <= B} log e_c(t)``
in O(dB).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from .._dtypes import working_dtype
from .._noise import uniform
from .._validation import check_no_pos_inf
from ._enumeration import check_enumerable, check_int, flatten_batch
from ._esp import log_elementary_symmetric
from ._kbest import kbest_bitvector_flips, kbest_budgeted_bitvectors
from ._sampling import categorical, count_prefix_table, row_max_shift, sample_with_counts
from .base import Structure


class BitVector(Structure):
    """Bit vectors ``z in {0,1}^d`` (``sum z <= budget`` when a budget is given).

    Scores ``(*batch, d)``: finite or ``-inf`` (bit forced off); never NaN or ``+inf``.
    """

    def __init__(self, d: int, budget: int | None = None) -> None:
        self.d = check_int(d, "d", 1)
        self.budget = None if budget is None else check_int(budget, "budget", 0, self.d)
        self.score_shape = (self.d,)
        self.summed_scores = self.budget if self._budgeted else None  # the count DP's sums

    def __repr__(self) -> str:
        return f"BitVector(d={self.d}, budget={self.budget})"

    @property
    def num_structures(self) -> int:
        if self.budget is None:
            return 2**self.d
        return sum(math.comb(self.d, c) for c in range(self.budget + 1))

    def check_scores(self, scores: Tensor, name: str = "scores") -> Tensor:
        super().check_scores(scores, name)
        check_no_pos_inf(scores, name)
        return scores

    @property
    def _budgeted(self) -> bool:
        return self.budget is not None and self.budget < self.d

    def entropy(self, scores: Tensor) -> Tensor:
        """Unbudgeted: the sum of the independent bits' entropies, each
        ``h(t) = softplus(-|t|) + |t| sigmoid(-|t|)`` (no large terms cancel; 0 at ``t = -inf``,
        with a zero gradient there), in float64 (as every entropy); budgeted:
        ``Structure.entropy``. ``(*batch,)``."""
        if self._budgeted:
            return super().entropy(scores)
        self.check_scores(scores)
        t = scores.to(torch.float64)
        # |t| as a branch, not abs(): h is even, so h'(0) = 0 either way, but abs's zero
        # derivative at 0 would zero autograd's second derivative there (h''(0) = -1/4)
        size = torch.where(t >= 0, t, -t)
        # the product sees 0 at a forced-off bit (|t| = inf): its gradient there is 0, not
        # the inf · 0 = NaN of the branch that torch.where does not take
        forced = torch.isinf(size)
        safe = torch.where(forced, 0.0, size)
        tail = torch.where(forced, 0.0, safe * torch.sigmoid(-safe))
        return (torch.nn.functional.softplus(-size) + tail).sum(-1).to(scores.dtype)

    def _entropy_rounding(self, scores: Tensor, marginals: Tensor) -> Tensor | None:
        """Budgeted: ``4 d eps s (1 + 2 s Σ_i min(1/4, μ_i(1 − μ_i) + eps s))``, s = max|t| over
        the finite entries (float64 eps). No common shift serves every count, so the count DP
        sums scores of size s: ``log Z`` and ``<t, μ>`` round by about eps · s · d, and the
        marginals carry absolute errors of about eps · s · d, which ``<t, μ>`` multiplies by s
        wherever μ is fractional, or may be within that error (near-tied vectors). An upper
        bound, by a factor of 2 at the closest, on the errors measured against enumeration with
        exact score differences (d ≤ 6, s = 1-1e16, ties, -inf entries)."""
        if not self._budgeted:
            return None
        eps = torch.finfo(torch.float64).eps
        scale = scores.masked_fill(torch.isinf(scores), 0.0).abs().amax(-1)
        mu = marginals.clamp(0.0, 1.0)
        spread = (mu * (1.0 - mu) + eps * scale.unsqueeze(-1)).clamp(max=0.25).sum(-1)
        return 4 * self.d * eps * scale * (1.0 + 2.0 * scale * spread)

    def argmax(self, scores: Tensor) -> Tensor:
        """``1[t_i > 0]``; with a budget, only the ``budget`` largest positive bits (first index on
        ties). ``(*batch, d)`` in the scores' dtype.

        With a budget B: the B-th largest score ``v`` (``torch.topk``, no full sort), then every
        bit above ``v`` and the first ``B - #{t > v}`` bits equal to ``v``."""
        self.check_scores(scores)
        z = scores > 0
        if self._budgeted:
            if self.budget == 0:
                return torch.zeros_like(scores)
            kth = torch.topk(scores, self.budget, dim=-1, sorted=False).values.amin(-1, True)
            above = scores > kth
            tied = scores == kth
            room = self.budget - above.sum(-1, keepdim=True)
            z = z & (above | (tied & (tied.cumsum(-1) <= room)))
        return z.to(scores.dtype)

    def topk(self, scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The k best bit vectors (exact), ``(*batch, k, d)`` and their scores ``(*batch, k)``.

        Unbudgeted: the flip-cost merge (loop over d with early stop); budgeted: the k-best count
        DP over counts ``0..budget`` on a window of ``2k - 2`` items around the MAP's decision
        boundary (O(k^3) per row, independent of d). Requires ``k <= num_structures``.
        Ranked and scored in float64: sums of float32 scores of ~1e4 round by ~2e-3, enough to
        swap near-tied structures; the scores are returned correctly rounded to the input dtype.
        """
        self.check_scores(scores)
        check_int(k, "k", 1, self.num_structures)
        flat, batch = flatten_batch(scores, 1)
        flat = flat.to(torch.float64)
        if not self._budgeted:
            z = kbest_bitvector_flips(flat, k)
        else:
            z = kbest_budgeted_bitvectors(flat, self.budget, k)
        z = z.to(scores.dtype)
        values = self.score(flat.unsqueeze(1), z.to(flat.dtype)).to(scores.dtype)
        return z.reshape(*batch, k, self.d), values.reshape(*batch, k)

    def log_partition(self, scores: Tensor) -> Tensor:
        """``log sum_z exp(<t, z>)`` over the (budgeted) bit vectors: ``(*batch,)``, computed in
        at least float32 and returned in the scores' dtype (a ValueError where it exceeds that
        dtype's range)."""
        self.check_scores(scores)
        work = scores.to(working_dtype(scores.dtype))
        if not self._budgeted:
            return self._log_z_in_dtype_of(torch.nn.functional.softplus(work).sum(-1), scores)
        self.check_range(work)
        # log e_c(t) = log e_c(t − m) + c m with m the row maximum (detached): the DP sums shifted
        # scores, so a large common offset does not round the count weights
        top = work.detach().amax(-1, keepdim=True) if work.numel() else work.new_zeros(())
        top = torch.where(torch.isfinite(top), top, 0.0)
        counts = torch.arange(self.budget + 1, dtype=work.dtype, device=work.device)
        log_e = log_elementary_symmetric(work - top, self.budget) + counts * top
        return self._log_z_in_dtype_of(torch.logsumexp(log_e, dim=-1), scores)

    def marginals(self, scores: Tensor) -> Tensor:
        """``P(z_i = 1)``, ``(*batch, d)``: ``sigmoid(t)``, or ``grad log Z`` with a budget."""
        self.check_scores(scores)
        if not self._budgeted:
            return torch.sigmoid(scores)
        return super().marginals(scores.to(working_dtype(scores.dtype))).to(scores.dtype)

    def _sample(
        self, scores: Tensor, sample_shape: tuple[int, ...], generator: torch.Generator | None
    ) -> Tensor:
        """Exact Gibbs draws ``(*sample_shape, *batch, d)``.

        Unbudgeted: independent bits ``1[t_i + L_i > 0]`` with logistic noise ``L_i`` (i.e.
        ``P(z_i = 1) = sigmoid(t_i)``). With a budget: the count ``c ~ e_c(t) / Z`` over
        ``c = 0..budget``, then backward sampling through the prefix count DP given ``c``.
        """
        if not self._budgeted:
            shape = (*sample_shape, *scores.shape)
            u = uniform(shape, scores, generator)
            return (scores.expand(shape) + u.log() - torch.log1p(-u) > 0).to(scores.dtype)
        # the DP runs on the scores shifted by their row maximum m (given the count c, p(z | c)
        # does not depend on a common shift), log e_c(t) = log e_c(t - m) + c m: a large common
        # offset does not round the DP's sums and differences
        top = row_max_shift(scores)
        shifted = scores - top
        table = count_prefix_table(shifted, self.budget)
        counts = torch.arange(self.budget + 1, dtype=scores.dtype, device=scores.device)
        log_counts = table[..., -1, :] + counts * top  # log e_c(t), c = 0..budget
        count = categorical(log_counts.expand(*sample_shape, *log_counts.shape), generator)
        return sample_with_counts(table, shifted, count, generator)

    def enumerate(self) -> Tensor:
        """Every admissible bit vector ``(N, d)``: unbudgeted in binary counting order (bit 0 most
        significant), budgeted by increasing count, then lexicographically."""
        check_enumerable(self.num_structures, repr(self))
        if self.budget is None:
            codes = torch.arange(2**self.d)
            bits = (codes.unsqueeze(-1) >> torch.arange(self.d - 1, -1, -1)) & 1
            return bits.to(torch.get_default_dtype())
        rows = [
            [int(i in chosen) for i in range(self.d)]
            for c in range(self.budget + 1)
            for chosen in itertools.combinations(range(self.d), c)
        ]
        return torch.tensor(rows, dtype=torch.get_default_dtype())
