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
from torch.distributions import constraints, register_kl
from torch.distributions.utils import lazy_property
from torch.nn import functional as F
from torch.nn.functional import logsigmoid

from .._noise import gumbel
from .._one_hot import one_hot
from .._validation import check_min_dim, check_tensor
from ._params import CheckedDistribution, check_kl_shapes, checked_value, finite_vector

__all__ = ["MaxEntropyFaces", "NonEmptyFaces", "nonempty_face"]


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


def _log_binomial(k: int, n: Tensor) -> Tensor:
    """log C(k, n), elementwise in ``n``."""
    return math.lgamma(k + 1) - torch.lgamma(n + 1) - torch.lgamma(k - n + 1)


def _size_of(value: Tensor) -> Tensor:
    return value.sum(-1)


class NonEmptyFaces(CheckedDistribution):
    r"""Gibbs distribution over the non-empty faces of the K-simplex.

    P(f) = exp(Σ_k (2 f_k − 1) s_k) / Z for f ∈ {0,1}^K \ {0}: independent bits with
    π_k = σ(2 s_k) conditioned on f ≠ 0. With P_∅ = Π_k (1 − π_k),
    log Z = Σ_k log(2 cosh s_k) + log(1 − P_∅) and marginals m_k = π_k / (1 − P_∅)
    (Farinhas et al. 2022, App. on the Mixed Dirichlet).

    Every quantity is assembled from ``log π_k`` and ``log(1 − π_k)`` without cancellation, so it
    is accurate at any finite score: ``1 − P_∅ = Σ_k π_k Π_{j<k} (1 − π_j)`` (the first active
    bit is k), ``log P(f) = Σ_k log P(bit k = f_k) − log(1 − P_∅)``, and the entropy follows the
    same decomposition, ``H = H(k*) + Σ_k P(k* = k) Σ_{j>k} h(π_j)`` (h the binary entropy).
    Scores beyond ±max/4 of their dtype act as ±max/4 (every bit is then certain to working
    precision).

    Args:
        scores: (*batch, K) finite face scores ``s``, K >= 1.

    Event shape (K,); values are 0/1 vectors (float, or bool/int). Sampling has no pathwise
    gradient.

    The parameters of a distribution are fixed, so ``log π``, ``log(1 − π)``, the first-bit terms,
    log(1 − P_∅) and the entropy are computed once per instance, on first use (a training step
    asks for them about ten times: sampling, ``log_prob``, entropy, KL), always with autograd on:
    the cached tensors keep their graph to ``scores``, which is shared by every result that uses
    them, as with torch's lazily computed ``probs``/``logits``. Hence a second ``backward``
    through results of the same instance needs ``retain_graph=True`` on the first (or a new
    instance); ``expand`` returns an instance that computes its own.
    """

    arg_constraints: ClassVar[dict] = {"scores": finite_vector}
    support = nonempty_face
    has_rsample = False
    has_enumerate_support = False

    def __init__(self, scores: Tensor, validate_args: bool | None = None) -> None:
        check_tensor(scores, "scores")
        check_min_dim(scores, "scores", 1)
        if scores.shape[-1] == 0:
            raise ValueError(
                "scores must have at least one coordinate (K >= 1) in the last dimension: with "
                f"K = 0 there is no non-empty face; got shape {tuple(scores.shape)}"
            )
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

    def _logits(self) -> Tensor:
        """The bits' logits ``2 s`` (*batch, K), kept finite (|2 s| <= max/2)."""
        big = torch.finfo(self.scores.dtype).max / 4
        return 2 * self.scores.clamp(-big, big)

    @lazy_property
    def _log_pi(self) -> tuple[Tensor, Tensor]:
        """log π_k and log(1 − π_k), each (*batch, K)."""
        u = self._logits()
        return logsigmoid(u), logsigmoid(-u)

    @lazy_property
    def _log_none_before(self) -> Tensor:
        """``Σ_{j<k} log(1 − π_j)`` (*batch, K): the log-probability that no bit before k is on."""
        _, log_off = self._log_pi
        return torch.cat([torch.zeros_like(log_off[..., :1]), log_off[..., :-1]], -1).cumsum(-1)

    @lazy_property
    def _log_first(self) -> Tensor:
        """log P(first active bit = k) for the unconditioned bits, (*batch, K):
        ``log π_k + Σ_{j<k} log(1 − π_j)``."""
        return self._log_pi[0] + self._log_none_before

    def log_prob_empty(self) -> Tensor:
        """log P_∅ (*batch,): probability that the unconditioned independent bits are all off."""
        return self._log_pi[1].sum(-1)

    def log_prob_nonempty(self) -> Tensor:
        """log(1 − P_∅) (*batch,) = logsumexp_k log P(first active bit = k) (no cancellation)."""
        return torch.logsumexp(self._log_first, -1)

    @lazy_property
    def _log_nonempty_parts(self) -> tuple[Tensor, Tensor]:
        """``(M, rest)`` (*batch,) with ``log(1 − P_∅) = M + rest``: M the largest ``log_first``
        and ``rest = log Σ_k exp(log_first_k − M)`` in [0, log K]. When every score is very
        negative M ≈ 2 max s is large and rest is not: callers subtract M from similar terms."""
        log_first = self._log_first
        top = log_first.amax(-1, keepdim=True)
        return top.squeeze(-1), (log_first - top).exp().sum(-1).log()

    def _minus_log_nonempty(self, x: Tensor) -> Tensor:
        """``x − log(1 − P_∅)`` for log-probabilities ``x`` (*batch, n) of the unconditioned bits,
        as ``(x − M) − rest``: only the gap of the two large terms is rounded."""
        top, rest = self._log_nonempty_parts
        return (x - top.unsqueeze(-1)) - rest.unsqueeze(-1)

    def log_partition(self) -> Tensor:
        """log Z (*batch,) = Σ_k log(2 cosh s_k) + log(1 − P_∅)."""
        s = self.scores
        return torch.logaddexp(s, -s).sum(-1) + self.log_prob_nonempty()

    def log_marginals(self) -> Tensor:
        """log P(f_k = 1) (*batch, K) = log π_k − log(1 − P_∅)."""
        return self._minus_log_nonempty(self._log_pi[0])

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
        best = one_hot(s.argmax(-1), s.shape[-1], s.dtype)
        empty = bits.sum(-1, keepdim=True) == 0
        return torch.where(empty, best, bits)

    def log_prob(self, value: Tensor) -> Tensor:
        """log P(f) = Σ_k log P(bit k = f_k) − log(1 − P_∅): (*sample, *batch, K) -> (*sample,
        *batch)."""
        on = checked_value(self, value) == 1
        log_on, log_off = self._log_pi
        log_bits = torch.where(on, log_on, log_off).sum(-1, keepdim=True)
        return self._minus_log_nonempty(log_bits).squeeze(-1)

    def entropy(self) -> Tensor:
        """H(P_F) (*batch,), exact in O(K): with k* the first active bit,
        H = H(k*) + Σ_k P(k* = k) Σ_{j>k} h(π_j) (bits after k* are independent); ≥ 0 (rounding
        clamped), exactly 0 at K = 1 (one face). Cached (class docstring)."""
        return self._entropy

    @lazy_property
    def _entropy(self) -> Tensor:
        log_q = self._minus_log_nonempty(self._log_first)
        log_q = log_q.clamp_min(torch.finfo(log_q.dtype).min)  # q log q = 0 where q = 0
        q = log_q.exp()
        a = self._logits().abs()
        bit_entropy = F.softplus(-a) + a * torch.sigmoid(-a)  # h(σ(u)) with a = |u|
        after = bit_entropy.flip(-1).cumsum(-1).flip(-1) - bit_entropy  # Σ_{j>k} h_j
        h = (q * (after - log_q)).sum(-1)
        return _nonnegative(h, one_point=self.num_categories == 1)

    def cross_entropy(self, other_scores: Tensor) -> Tensor:
        """−E_P[log Q(f)] (*batch,) for the Gibbs Q with scores t (see ``_gibbs_cross_entropy``)."""
        q = NonEmptyFaces(other_scores, validate_args=False)
        return _gibbs_cross_entropy(self.marginals(), self._extra_size(), q)

    def _extra_size(self) -> Tensor:
        """E|f| − 1 (*batch,) = Σ_k m_k (1 − Π_{j<k} (1 − π_j)): non-negative terms, accurate when
        the faces are almost surely vertices (Σ_k m_k − 1 would round to 0 ± eps)."""
        return (self.marginals() * -torch.expm1(self._log_none_before)).sum(-1)

    def size_log_pmf(self) -> Tensor:
        """log P(|f| = n) for n = 1..K, shape (*batch, K) (entry n − 1 is size n).

        Poisson-binomial DP over the independent bits in log space, O(K²), then conditioned on
        f ≠ 0 (divided by 1 − P_∅).
        """
        log_on, log_off = self._log_pi
        dp = torch.cat([log_off[..., :1], log_on[..., :1]], -1)
        for k in range(1, self.num_categories):
            on, off = log_on[..., k : k + 1], log_off[..., k : k + 1]
            middle = torch.logaddexp(dp[..., 1:] + off, dp[..., :-1] + on)
            dp = torch.cat([dp[..., :1] + off, middle, dp[..., -1:] + on], -1)
        return self._minus_log_nonempty(dp[..., 1:])

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        """Exact samples (*sample_shape, *batch, K), vectorised, no gradient.

        The first active index k* has P(k* = k) ∝ Π_{j<k} (1 − π_j) π_k; bits before k* are off,
        bits after k* are independent Bernoulli(π_j).
        """
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            log_on, _ = self._log_pi
            log_first = self._log_first
            first = (log_first.expand(shape) + gumbel(shape, log_on)).argmax(-1, keepdim=True)
            idx = torch.arange(shape[-1], device=log_on.device)
            later = torch.rand(shape, dtype=log_on.dtype, device=log_on.device) < log_on.exp()
            bits = (idx == first) | ((idx > first) & later)
            return bits.to(log_on.dtype)


def _gibbs_cross_entropy(marginals: Tensor, extra_size: Tensor, q: NonEmptyFaces) -> Tensor:
    """−E_P[log Q(f)] for any P over faces with marginals m (*batch, K) and ``extra_size``
    E_P|f| − 1 (*batch,), and the Gibbs Q (scores t):
    ``log(1 − Q_∅) − Σ_k [m_k log σ(2t_k) + (1 − m_k) log σ(−2t_k)]``. With
    ``log(1 − Q_∅) = M + log Σ_k exp(log_first_k − M)``, M is folded into the ``log σ(2t_k)``
    terms, leaving ``−M (E|f| − 1)``: no two large terms cancel when every t_k is very negative
    (``extra_size`` must then be accurate in absolute terms, not as Σ m_k − 1)."""
    log_on, log_off = q._log_pi
    top, rest = q._log_nonempty_parts
    bits = -(marginals * (log_on - top.unsqueeze(-1)) + (1 - marginals) * log_off).sum(-1)
    return bits - top * extra_size + rest


class MaxEntropyFaces(CheckedDistribution):
    r"""Max-entropy face prior: size pmf Q(n), uniform among the C(K, n) faces of size n.

    ``form="maxent"``: Q(n) ∝ C(K, n) 2^{N(n−1)} / (n − 1)!, which maximises
    H(F) + Σ_f P(f)[h(Y|f) + N(|f| − 1) log 2] over mixed variables with uniform face densities
    (with N = 0 the induced mixed prior has a constant direct-sum density).
    ``form="maxent-reference"``: Q(n) ∝ 2^{N(n−1)} / (n − 1)!, the size pmf used by the
    reference code of Farinhas et al. (2022), which omits the C(K, n) factor; it is what the MNIST
    VAE reproductions use but it is *not* the maximum-entropy prior.

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
        # shifted by the constant N (K - 1) log 2, so a huge N gives -inf, not inf - inf
        logits = self.bits * math.log(2.0) * (n - k) - torch.lgamma(n)
        if form == "maxent":
            logits = logits + _log_binomial(k, n)
        # -inf (a size of probability 0) becomes the dtype's min, so 0 * log 0 terms are 0
        self._size_log_pmf = torch.log_softmax(logits, -1).clamp_min(torch.finfo(dtype).min)
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
        value = checked_value(self, value).to(self._size_log_pmf.dtype)
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
    """KL = E_P[log P(f) − log Q(f)] = Σ_k [m_k (log π_k − log π'_k) + (1 − m_k)(log(1 − π_k)
    − log(1 − π'_k))] − (log(1 − P_∅) − log(1 − Q_∅)) (m: marginals of p), with the last
    difference taken as (M_p − M_q) + (rest_p − rest_q) (``_log_nonempty_parts``): exactly 0
    where the scores coincide and without cancellation of large terms at any finite scores."""
    check_kl_shapes(p, q)
    q = NonEmptyFaces(q.scores.to(p.scores), validate_args=False)
    (on_p, off_p), (on_q, off_q) = p._log_pi, q._log_pi
    m = p.marginals()
    bits = (m * (on_p - on_q) + (1 - m) * (off_p - off_q)).sum(-1)
    (top_p, rest_p), (top_q, rest_q) = p._log_nonempty_parts, q._log_nonempty_parts
    kl = bits - (top_p - top_q) - (rest_p - rest_q)
    return _nonnegative(kl, one_point=p.num_categories == 1)


@register_kl(NonEmptyFaces, MaxEntropyFaces)
def _kl_gibbs_maxent(p: NonEmptyFaces, q: MaxEntropyFaces) -> Tensor:
    """KL = −H(P) − Σ_n P(n)[log Q(n) − log C(K, n)] (size pmf of P by the DP)."""
    check_kl_shapes(p, q)
    p_size = p.size_log_pmf().exp()
    kl = -p.entropy() - (p_size * q._log_face_given_size(p.scores)).sum(-1)
    return _nonnegative(kl, one_point=p.num_categories == 1)


@register_kl(MaxEntropyFaces, NonEmptyFaces)
def _kl_maxent_gibbs(p: MaxEntropyFaces, q: NonEmptyFaces) -> Tensor:
    """KL = −E_P[log Q(f)] − H(P), the cross-entropy from P's marginals E_P[f_k] = E_P|f| / K."""
    check_kl_shapes(p, q)
    size_pmf = p.size_log_pmf(q.scores).exp()
    n = torch.arange(p.k, dtype=size_pmf.dtype, device=size_pmf.device)  # |f| − 1
    extra = (size_pmf * n).sum(-1)
    kl = _gibbs_cross_entropy(p.mean.to(q.scores), extra, q) - p.entropy().to(q.scores)
    return _nonnegative(kl, one_point=p.k == 1)


@register_kl(MaxEntropyFaces, MaxEntropyFaces)
def _kl_maxent_maxent(p: MaxEntropyFaces, q: MaxEntropyFaces) -> Tensor:
    """Both uniform within a size: KL of the size pmfs."""
    check_kl_shapes(p, q)
    log_p = p.size_log_pmf()
    log_q = q.size_log_pmf(log_p)
    return _nonnegative((log_p.exp() * (log_p - log_q)).sum(-1), one_point=p.k == 1)


def _nonnegative(value: Tensor, one_point: bool) -> Tensor:
    """A KL or discrete entropy, ≥ 0 by the math: rounding below 0 is clamped to 0, and the value
    is exactly 0 on a one-point space (K = 1: the single face {1})."""
    return value.clamp(0, 0) if one_point else value.clamp_min(0)


