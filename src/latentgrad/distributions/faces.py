"""Distributions over the non-empty faces of the simplex (Farinhas et al. 2022, §6.5).

A face of the K-simplex is a non-empty subset of {1..K}, written as a 0/1 vector f of shape (K,)
(all-zero excluded). Two families:

- ``NonEmptyFaces(scores)``: Gibbs distribution P(f) ∝ exp(Σ_k (2 f_k − 1) s_k), i.e. independent
  bits with π_k = σ(2 s_k) conditioned on f ≠ 0. Every quantity is a closed form in O(K) (the
  face-size pmf is an O(K²) Poisson-binomial DP) — no enumeration of the 2^K − 1 faces.
- ``MaxEntropyFaces(k, bits, form)``: the face prior that maximises the direct-sum entropy of a
  mixed variable with uniform densities on the faces: size pmf Q(n), uniform among the C(K, n)
  faces of size n.

KL divergences between and across the two families are registered with
``torch.distributions.kl_divergence`` and are closed forms.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints, register_kl
from torch.nn.functional import logsigmoid

from .._noise import gumbel
from .._validation import check_min_dim, check_tensor

__all__ = ["MaxEntropyFaces", "NonEmptyFaces", "log1mexp", "nonempty_face"]


class _NonEmptyFace(constraints.Constraint):
    """0/1 vectors (last dim) with at least one 1."""

    is_discrete = True
    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        binary = ((value == 0) | (value == 1)).all(-1)
        return binary & (value == 1).any(-1)

    def __repr__(self) -> str:
        return "NonEmptyFace()"


nonempty_face = _NonEmptyFace()


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x ≤ 0, accurate on the whole range (Mächler 2012)."""
    return torch.where(
        x > -math.log(2.0),
        torch.log(-torch.expm1(x.clamp(max=0.0))),
        torch.log1p(-torch.exp(x.clamp(max=-math.log(2.0)))),
    )


def _log_binomial(k: int, n: Tensor) -> Tensor:
    """log C(k, n), elementwise in ``n``."""
    return math.lgamma(k + 1) - torch.lgamma(n + 1) - torch.lgamma(k - n + 1)


def _size_of(value: Tensor) -> Tensor:
    return value.sum(-1)


class NonEmptyFaces(Distribution):
    r"""Gibbs distribution over the non-empty faces of the K-simplex.

    P(f) = exp(Σ_k (2 f_k − 1) s_k) / Z for f ∈ {0,1}^K \ {0}: independent bits with
    π_k = σ(2 s_k) conditioned on f ≠ 0. With P_∅ = Π_k (1 − π_k),
    log Z = Σ_k log(2 cosh s_k) + log(1 − P_∅), marginals m_k = π_k / (1 − P_∅) and
    H = log Z − Σ_k (2 m_k − 1) s_k (Farinhas et al. 2022, App. on the Mixed Dirichlet).

    Args:
        scores: (*batch, K) real face scores ``s``.

    Event shape (K,); values are float 0/1 vectors. Sampling has no pathwise gradient.
    """

    arg_constraints: ClassVar[dict] = {"scores": constraints.real_vector}
    support = nonempty_face
    has_rsample = False
    has_enumerate_support = False

    def __init__(self, scores: Tensor, validate_args: bool | None = None) -> None:
        check_tensor(scores, "scores")
        check_min_dim(scores, "scores", 1)
        self.scores = scores
        super().__init__(scores.shape[:-1], scores.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(NonEmptyFaces, _instance)
        batch_shape = torch.Size(batch_shape)
        new.scores = self.scores.expand(batch_shape + self.event_shape)
        super(NonEmptyFaces, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def num_categories(self) -> int:
        return self.scores.shape[-1]

    def _log_pi(self) -> tuple[Tensor, Tensor]:
        """log π_k and log(1 − π_k), each (*batch, K)."""
        return logsigmoid(2 * self.scores), logsigmoid(-2 * self.scores)

    def log_prob_empty(self) -> Tensor:
        """log P_∅ (*batch,): probability that the unconditioned independent bits are all off."""
        return logsigmoid(-2 * self.scores).sum(-1)

    def log_partition(self) -> Tensor:
        """log Z (*batch,) = Σ_k log(2 cosh s_k) + log(1 − P_∅)."""
        s = self.scores
        return torch.logaddexp(s, -s).sum(-1) + log1mexp(self.log_prob_empty())

    def log_marginals(self) -> Tensor:
        """log P(f_k = 1) (*batch, K) = log π_k − log(1 − P_∅)."""
        log_pi, _ = self._log_pi()
        return log_pi - log1mexp(self.log_prob_empty()).unsqueeze(-1)

    def marginals(self) -> Tensor:
        """P(f_k = 1) (*batch, K)."""
        return self.log_marginals().exp()

    @property
    def mean(self) -> Tensor:
        return self.marginals()

    @property
    def mode(self) -> Tensor:
        """The bitwise mode 1[s > 0], or the single best bit when that is empty (*batch, K)."""
        s = self.scores
        bits = (s > 0).to(s.dtype)
        best = torch.nn.functional.one_hot(s.argmax(-1), s.shape[-1]).to(s.dtype)
        empty = bits.sum(-1, keepdim=True) == 0
        return torch.where(empty, best, bits)

    def log_prob(self, value: Tensor) -> Tensor:
        """log P(f) (*sample, *batch) for faces ``value`` (*sample, *batch, K)."""
        if self._validate_args:
            self._validate_sample(value)
        value = value.to(self.scores.dtype)
        return ((2 * value - 1) * self.scores).sum(-1) - self.log_partition()

    def entropy(self) -> Tensor:
        """H(P_F) (*batch,) = log Z − Σ_k (2 m_k − 1) s_k, exact in O(K); ≥ 0 (rounding clamped),
        exactly 0 at K = 1 (one face)."""
        h = self.log_partition() - ((2 * self.marginals() - 1) * self.scores).sum(-1)
        return _nonnegative(h, one_point=self.num_categories == 1)

    def cross_entropy(self, other_scores: Tensor) -> Tensor:
        """−E_P[log Q(f)] for the Gibbs Q with scores t: log Z_t − Σ_k (2 m_k − 1) t_k."""
        q = NonEmptyFaces(other_scores, validate_args=False)
        return q.log_partition() - ((2 * self.marginals() - 1) * other_scores).sum(-1)

    def size_log_pmf(self) -> Tensor:
        """log P(|f| = n) for n = 1..K, shape (*batch, K) (entry n − 1 is size n).

        Poisson-binomial DP over the independent bits in log space, O(K²), then conditioned on
        f ≠ 0 (divided by 1 − P_∅).
        """
        log_on, log_off = self._log_pi()
        dp = torch.cat([log_off[..., :1], log_on[..., :1]], -1)
        for k in range(1, self.num_categories):
            on, off = log_on[..., k : k + 1], log_off[..., k : k + 1]
            middle = torch.logaddexp(dp[..., 1:] + off, dp[..., :-1] + on)
            dp = torch.cat([dp[..., :1] + off, middle, dp[..., -1:] + on], -1)
        return dp[..., 1:] - log1mexp(dp[..., 0]).unsqueeze(-1)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        """Exact samples (*sample_shape, *batch, K), vectorised, no gradient.

        The first active index k* has P(k* = k) ∝ Π_{j<k} (1 − π_j) π_k; bits before k* are off,
        bits after k* are independent Bernoulli(π_j).
        """
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            log_on, log_off = self._log_pi()
            log_first = log_on + torch.cumsum(log_off, -1) - log_off
            first = (log_first.expand(shape) + gumbel(shape, log_on)).argmax(-1, keepdim=True)
            idx = torch.arange(shape[-1], device=log_on.device)
            later = torch.rand(shape, dtype=log_on.dtype, device=log_on.device) < log_on.exp()
            bits = (idx == first) | ((idx > first) & later)
            return bits.to(log_on.dtype)


class MaxEntropyFaces(Distribution):
    r"""Max-entropy face prior: size pmf Q(n), uniform among the C(K, n) faces of size n.

    ``form="maxent"``: Q(n) ∝ C(K, n) 2^{N(n−1)} / (n − 1)!, which maximises
    H(F) + Σ_f P(f)[h(Y|f) + N(|f| − 1) log 2] over mixed variables with uniform face densities
    (with N = 0 the induced mixed prior has a constant direct-sum density).
    ``form="maxent-reference"``: Q(n) ∝ 2^{N(n−1)} / (n − 1)!, the size pmf used by the
    reference code of Farinhas et al. (2022), which omits the C(K, n) factor; it is what the MNIST
    VAE reproductions use but it is *not* the maximum-entropy prior (see methods §6.5, §7 #21).

    Args:
        k: number of simplex vertices K.
        bits: bit precision N ≥ 0 (the runs use 0).
        form: ``"maxent"`` or ``"maxent-reference"``.
        dtype, device: of the internal size pmf (default dtype / CPU); KLs and log_prob cast it
            to the other operand.

    Event shape (K,), batch shape () (use ``expand``).
    """

    arg_constraints: ClassVar[dict] = {}
    support = nonempty_face
    has_rsample = False

    def __init__(
        self,
        k: int,
        bits: float = 0.0,
        form: str = "maxent",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int (number of simplex vertices), got {k!r}")
        if not (isinstance(bits, (int, float)) and math.isfinite(bits) and bits >= 0):
            raise ValueError(f"bits must be a finite number >= 0, got {bits!r}")
        if form not in ("maxent", "maxent-reference"):
            raise ValueError(f"form must be 'maxent' or 'maxent-reference', got {form!r}")
        self.k, self.bits, self.form = k, float(bits), form
        dtype = dtype or torch.get_default_dtype()
        n = torch.arange(1, k + 1, dtype=dtype, device=device)
        logits = self.bits * (n - 1) * math.log(2.0) - torch.lgamma(n)
        if form == "maxent":
            logits = logits + _log_binomial(k, n)
        self._size_log_pmf = torch.log_softmax(logits, -1)
        super().__init__(torch.Size(), torch.Size([k]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(MaxEntropyFaces, _instance)
        batch_shape = torch.Size(batch_shape)
        new.k, new.bits, new.form = self.k, self.bits, self.form
        new._size_log_pmf = self._size_log_pmf.expand((*batch_shape, self.k))
        super(MaxEntropyFaces, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def size_log_pmf(self, like: Tensor | None = None) -> Tensor:
        """log Q(n) for n = 1..K, shape (*batch, K), cast to ``like``'s dtype/device if given."""
        out = self._size_log_pmf.expand((*self.batch_shape, self.k))
        return out if like is None else out.to(like)

    def _log_face_given_size(self, like: Tensor) -> Tensor:
        """log Q(n) − log C(K, n), (*batch, K): log-probability of one face of size n."""
        n = torch.arange(1, self.k + 1, dtype=like.dtype, device=like.device)
        return self.size_log_pmf(like) - _log_binomial(self.k, n)

    @property
    def mean(self) -> Tensor:
        """E[f_k] = E[|f|] / K for every k, (*batch, K)."""
        p = self.size_log_pmf().exp()
        n = torch.arange(1, self.k + 1, dtype=p.dtype, device=p.device)
        return ((p * n).sum(-1, keepdim=True) / self.k).expand((*self.batch_shape, self.k))

    def log_prob(self, value: Tensor) -> Tensor:
        """log Q(|f|) − log C(K, |f|), shape (*sample, *batch)."""
        if self._validate_args:
            self._validate_sample(value)
        value = value.to(self._size_log_pmf.dtype)
        table = self._log_face_given_size(value)
        idx = (_size_of(value).long() - 1).unsqueeze(-1)
        table = table.expand((*idx.shape[:-1], self.k))
        return table.gather(-1, idx).squeeze(-1)

    def entropy(self) -> Tensor:
        """H(Q) = −Σ_n Q(n)[log Q(n) − log C(K, n)], shape (*batch,); ≥ 0, 0 at K = 1."""
        log_q = self.size_log_pmf()
        h = -(log_q.exp() * self._log_face_given_size(log_q)).sum(-1)
        return _nonnegative(h, one_point=self.k == 1)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        """Draw n ~ Q, then a uniformly random face of size n, shape (*sample, *batch, K)."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            log_q = self.size_log_pmf()
            size = (log_q.expand(shape) + gumbel(shape, log_q)).argmax(-1, keepdim=True) + 1
            ranks = torch.rand(shape, device=log_q.device).argsort(-1).argsort(-1)
            return (ranks < size).to(log_q.dtype)


@register_kl(NonEmptyFaces, NonEmptyFaces)
def _kl_gibbs_gibbs(p: NonEmptyFaces, q: NonEmptyFaces) -> Tensor:
    """KL = Σ_k (2 m_k − 1)(s_k − t_k) − log Z_s + log Z_t (m: marginals of p), in the form that
    is exactly 0 where the scores coincide."""
    _check_same_k(p.num_categories, q.num_categories)
    t = q.scores.to(p.scores)
    kl = (((2 * p.marginals() - 1) * (p.scores - t)).sum(-1) - p.log_partition()
          + q.log_partition().to(p.scores))
    return _nonnegative(kl, one_point=p.num_categories == 1)


@register_kl(NonEmptyFaces, MaxEntropyFaces)
def _kl_gibbs_maxent(p: NonEmptyFaces, q: MaxEntropyFaces) -> Tensor:
    """KL = −H(P) − Σ_n P(n)[log Q(n) − log C(K, n)] (size pmf of P by the DP)."""
    _check_same_k(p.num_categories, q.k)
    p_size = p.size_log_pmf().exp()
    kl = -p.entropy() - (p_size * q._log_face_given_size(p.scores)).sum(-1)
    return _nonnegative(kl, one_point=p.num_categories == 1)


@register_kl(MaxEntropyFaces, NonEmptyFaces)
def _kl_maxent_gibbs(p: MaxEntropyFaces, q: NonEmptyFaces) -> Tensor:
    """KL = −H(Q) − Σ_k (2 E_Q[f_k] − 1) s_k + log Z_s."""
    _check_same_k(p.k, q.num_categories)
    mean = p.mean.to(q.scores)
    entropy = p.entropy().to(q.scores)
    kl = -entropy - ((2 * mean - 1) * q.scores).sum(-1) + q.log_partition()
    return _nonnegative(kl, one_point=p.k == 1)


@register_kl(MaxEntropyFaces, MaxEntropyFaces)
def _kl_maxent_maxent(p: MaxEntropyFaces, q: MaxEntropyFaces) -> Tensor:
    """Both uniform within a size: KL of the size pmfs."""
    _check_same_k(p.k, q.k)
    log_p = p.size_log_pmf()
    log_q = q.size_log_pmf(log_p)
    return _nonnegative((log_p.exp() * (log_p - log_q)).sum(-1), one_point=p.k == 1)


def _nonnegative(value: Tensor, one_point: bool) -> Tensor:
    """A KL or discrete entropy, ≥ 0 by the math: rounding below 0 is clamped to 0, and the value
    is exactly 0 on a one-point space (K = 1: the single face {1})."""
    return value.clamp(0, 0) if one_point else value.clamp_min(0)


def _check_same_k(k_p: int, k_q: int) -> None:
    if k_p != k_q:
        raise ValueError(f"KL between face distributions needs the same K, got {k_p} and {k_q}")
