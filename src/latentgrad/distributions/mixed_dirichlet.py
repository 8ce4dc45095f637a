"""Mixed Dirichlet (Farinhas et al. 2022): a face of the simplex, then a Dirichlet on that face.

y is drawn in two steps: a face f ~ P_F (``NonEmptyFaces`` Gibbs posterior, or any face
distribution such as the ``MaxEntropyFaces`` prior), then y_f ~ Dir(α_f) with zeros off the face
(a size-1 face is a vertex). Direct-sum base measure:

    log p(y) = log P_F(f(y)) + log Dir(y_f; α_f)
    H⊕ = H(P_F) + Σ_f P_F(f) H(Dir(α_f))
    KL⊕(p ‖ q) = KL(P_F ‖ Q_F) + Σ_f P_F(f) KL(Dir(α_f) ‖ Dir(β_f)).

The face terms are exact closed forms at any K (``faces.py``). The face-averaged Dirichlet terms
depend on α_0(f) = Σ_{k∈f} α_k and do not factorise, so ``entropy()`` and ``kl_divergence``
enumerate the 2^K − 1 faces (batched matrix products, no (faces × batch × K) tensor) up to
``MAX_ENUMERATION_K`` = 16 and raise beyond it; ``entropy_sampled`` / ``kl_sampled`` are the
unbiased estimators for any K (exact face term + Dirichlet term averaged over sampled faces),
which is what the VAE uses at K = 64.

The prior of the VAE is ``MixedDirichlet(MaxEntropyFaces(K, form=...), torch.ones(K))``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import Distribution, Gamma, kl_divergence, register_kl

from .._dtypes import working_dtype
from .._validation import (
    broadcast_shapes,
    check_finite,
    check_min_dim,
    check_positive_int,
    check_tensor,
    check_trailing_shape,
)
from ._params import (
    CheckedDistribution,
    check_kl_shapes,
    checked_value,
    finite_positive_vector,
    simplex,
    validating,
)
from .faces import MaxEntropyFaces, NonEmptyFaces

__all__ = ["MAX_ENUMERATION_K", "MixedDirichlet"]

MAX_ENUMERATION_K = 16
_CERTAIN_GAMMA = 1e33  # α from which a Gamma(α) draw equals α within float64 rounding
_HALF_LOG_2PI_PLUS_HALF = 0.5 * math.log(2 * math.pi) + 0.5


def _face_table(k: int, like: Tensor) -> Tensor:
    """All 2^k − 1 non-empty faces as 0/1 rows, shape (2^k − 1, k)."""
    codes = torch.arange(1, 2**k, device=like.device)
    bits = (codes.unsqueeze(-1) >> torch.arange(k, device=like.device)) & 1
    return bits.to(like.dtype)


def _over_faces(x: Tensor, faces: Tensor, enumerated: bool) -> Tensor:
    """Σ_{k∈f} x_k: (*batch, F) by a matrix product if ``faces`` is the (F, K) table, else
    the broadcast sum over the last dim of ``faces`` (*, K)."""
    return x @ faces.T if enumerated else (x * faces).sum(-1)


def _log_gamma_part(alpha: Tensor) -> Tensor:
    """``h(α) = log Γ(α) − αψ(α) + α``, the part of Dirichlet entropies and KLs with a log Γ.

    Its terms grow like ``α log α`` and cancel to ``−½ log α + ½ log 2π + ½ + O(1/α)``; from
    ``α ≥ eps^(−1/5)`` of the dtype ``h = g − ψ(α)`` with the asymptotic series
    ``g(α) = ½ log α + ½ log 2π + ½ − 1/(3α) − 1/(12α²) − 1/(90α³) + O(α⁻⁴)`` replaces the direct
    form, which would lose ``α log α · eps`` and overflow (``log Γ(1e37)`` in float32). Near 0,
    ``h ≈ −log α + 1``: no ``1/α`` term to cancel.
    """
    big = torch.finfo(alpha.dtype).eps ** -0.2
    small = alpha.clamp(max=big)  # the direct branch never sees a huge α (no inf, no NaN grad)
    direct = torch.lgamma(small) - small * torch.digamma(small) + small
    large = alpha.clamp(min=big)
    inv = large.reciprocal()
    g = 0.5 * large.log() + _HALF_LOG_2PI_PLUS_HALF - inv * (1 / 3 + inv * (1 / 12 + inv / 90))
    return torch.where(alpha < big, direct, g - torch.digamma(large))


def _log_beta_ratio(alpha: Tensor, face: Tensor) -> Tensor:
    """log Γ(α_0) − Σ_{k∈f} log Γ(α_k), α_0 = Σ_{k∈f} α_k; alpha, face (*, K) -> (*).

    Directly where α_0 < 1. Elsewhere log Γ(α) = h(α) + αψ(α) − α (``_log_gamma_part``) for the
    coordinates with α_k ≥ 1 and for α_0, so that their α log α terms, which overflow near
    finfo.max / (K log α) and gave inf − inf, appear only as α_k (ψ(α_0) − ψ(α_k)) ≥ 0; the
    α_k < 1 keep log Γ (h's gradient 1 − αψ'(α) overflows at tiny α in float32). Each branch
    sees only inputs clamped to its own range, so the one not taken has a finite gradient.
    """
    a0 = (alpha * face).sum(-1)
    member = face > 0
    large, small = member & (alpha >= 1), member & (alpha < 1)
    alpha_large, alpha_small = alpha.clamp(min=1), alpha.clamp(max=1)
    a0_large = a0.clamp(min=1)
    psi0 = torch.digamma(a0_large).unsqueeze(-1)
    split = (_log_gamma_part(a0_large)
             - torch.where(large, _log_gamma_part(alpha_large), 0.0).sum(-1)
             - torch.where(small, torch.lgamma(alpha_small), 0.0).sum(-1)
             + torch.where(large, alpha_large * (psi0 - torch.digamma(alpha_large)), 0.0).sum(-1)
             + torch.where(small, alpha_small * (psi0 - 1), 0.0).sum(-1))
    direct = (torch.lgamma(a0.clamp(max=1))
              - torch.where(member, torch.lgamma(alpha_small), 0.0).sum(-1))
    return torch.where(a0 < 1, direct, split)


def _widened(*tensors: Tensor) -> tuple[Tensor, ...]:
    """float32 tensors in float64, others as they are.

    The Dirichlet terms' gradients at α below ~1e-19 are differences of terms like
    ψ'(α) ≈ 1/α² (a coordinate's own term and its face's α_0 term) that overflow float32 and
    would meet as inf − inf; in float64 they do not (down to α ~ 1e-154, far below float32's
    range), and the gradient cast back is its float32 rounding (±inf only beyond the range).
    """
    return tuple(t.double() if t.dtype == torch.float32 else t for t in tensors)


_ALPHA_MIN = 1e-150
"""The least concentration the Dirichlet terms see: they and their gradients hold in float64
down to α ~ 1e-154 (``_widened``), and float64 concentrations go down to its tiny, 1e-308."""


def _held(alpha: Tensor) -> Tensor:
    """``alpha`` clamped to ``_ALPHA_MIN`` (a no-op for widened float32, which stops at 1e-45):
    below it ψ'(α) ≈ 1/α² overflows float64 and the gradients were inf or NaN (inf − inf, also on
    vertices, whose term is 0); a smaller α has the terms of α = 1e-150 and no gradient."""
    return alpha.clamp_min(_ALPHA_MIN)


def _least_entry(dtype: torch.dtype, wide: torch.dtype) -> float:
    """The least value of an entry of a drawn face in ``dtype``, whose draws are computed in
    ``wide``: the larger of ``dtype``'s smallest normal number and ``wide``'s divided by its eps.

    Rounded up to it, an entry stays positive, so ``y > 0`` is the drawn face (as ``log_prob``
    and a score-function term ``faces.log_prob(y > 0)`` read it), also where subnormals are
    flushed to 0; and the cotangent of ``log y`` (``log_prob`` at its own draw), about ``1/y``,
    stays finite with room for the factors up to ``1/eps`` that the draw's backward multiplies it
    by in ``wide``. Rounded up only to the least subnormal, ``log_prob(rsample())`` had NaN
    gradients in 23 of 150 float32 batches at α = 1e-3 to 0.5 (7 of 150 in float64 at 1e-3), and
    at ``dtype``'s smallest normal number still inf in 3 of 20 float64 batches at α = 1e-3, where
    the gradient is about 1e6.
    """
    return max(torch.finfo(dtype).tiny, torch.finfo(wide).tiny / torch.finfo(wide).eps)


def _dirichlet_entropy(alpha: Tensor, faces: Tensor, enumerated: bool = False) -> Tensor:
    """H(Dir(α_f)) = log B(α_f) + (α_0 − n)ψ(α_0) − Σ_{k∈f} (α_k − 1)ψ(α_k)
    = Σ_{k∈f} [h(α_k) + ψ(α_k)] − h(α_0) − nψ(α_0) with ``h`` of ``_log_gamma_part`` (its ``α``
    terms cancel: Σ α_k = α_0), stable at any α; 0 on vertices. float32 computes in float64
    (``_widened``), α below 1e-150 counts as 1e-150 (``_held``)."""
    dtype = alpha.dtype
    alpha, faces = _widened(alpha, faces)
    alpha = _held(alpha)
    a0 = _over_faces(alpha, faces, enumerated)
    n = faces.sum(-1)
    h = (_over_faces(_log_gamma_part(alpha) + torch.digamma(alpha), faces, enumerated)
         - _log_gamma_part(a0) - n * torch.digamma(a0))
    return torch.where(n > 1, h, torch.zeros_like(h)).to(dtype)  # a vertex: exactly 0


def _dirichlet_kl(alpha: Tensor, beta: Tensor, faces: Tensor, enumerated: bool = False) -> Tensor:
    """KL(Dir(α_f) ‖ Dir(β_f)) = log Γ(α_0) − log Γ(β_0) + Σ_f [log Γ(β_k) − log Γ(α_k)
    + (α_k − β_k)ψ(α_k)] − ψ(α_0) Σ_f (α_k − β_k)
    = Σ_f [log Γ(β_k) − h(α_k) − β_k ψ(α_k)] + h(α_0) − log Γ(β_0) + β_0 ψ(α_0) with ``h`` of
    ``_log_gamma_part`` (stable at any α); ≥ 0 (rounding clamped), exactly 0 on vertices and
    where α_f = β_f. float32 computes in float64 (``_widened``), α and β below 1e-150 count as
    1e-150 (``_held``)."""
    dtype = alpha.dtype
    alpha, beta, faces = _widened(alpha, beta, faces)
    differ = _over_faces((alpha != beta).to(alpha.dtype), faces, enumerated) > 0
    alpha, beta = _held(alpha), _held(beta)
    a0, b0 = _over_faces(alpha, faces, enumerated), _over_faces(beta, faces, enumerated)
    per_coord = torch.lgamma(beta) - _log_gamma_part(alpha) - beta * torch.digamma(alpha)
    kl = (_over_faces(per_coord, faces, enumerated) + _log_gamma_part(a0) - torch.lgamma(b0)
          + b0 * torch.digamma(a0))
    kl = torch.where((faces.sum(-1) > 1) & differ, kl.clamp_min(0), torch.zeros_like(kl))
    return kl.to(dtype)


def _expect(probs: Tensor, values: Tensor) -> Tensor:
    """Σ_f P(f) v_f over the last dim, a face of probability 0 contributing 0 whatever its value
    (an overflowed ±inf entropy of a face the distribution never picks is not a NaN)."""
    return torch.where(probs > 0, probs * values, torch.zeros_like(values)).sum(-1)


def _enumerated_face_log_probs(faces_dist: Distribution, table: Tensor) -> Tensor:
    """log P_F(f) for every row of ``table`` (F, K), shape (*batch, F)."""
    if isinstance(faces_dist, NonEmptyFaces):  # Σ_k log P(bit k = f_k) − log(1 − P_∅)
        log_on, log_off = faces_dist._log_pi
        table = table.to(log_on)
        return (log_on @ table.T + log_off @ (1 - table).T
                - faces_dist.log_prob_nonempty().unsqueeze(-1))
    if isinstance(faces_dist, MaxEntropyFaces):
        per_size = faces_dist._log_face_given_size(table)  # (*batch, K) by size
        idx = (table.sum(-1).long() - 1).expand((*per_size.shape[:-1], table.shape[0]))
        return per_size.gather(-1, idx)
    shape = (table.shape[0],) + (1,) * len(faces_dist.batch_shape) + (table.shape[1],)
    return faces_dist.log_prob(table.reshape(shape)).movedim(0, -1)


class MixedDirichlet(CheckedDistribution):
    r"""Mixed Dirichlet on the K-simplex: f ~ P_F, then y_f ~ Dir(α_f), zeros off the face.

    Args:
        faces: the face distribution: a ``NonEmptyFaces`` or ``MaxEntropyFaces`` instance (or
            any distribution over non-empty 0/1 vectors with ``log_prob``, ``sample``, ``entropy``
            and registered KLs), or a tensor of face scores (*batch, K), shorthand for
            ``NonEmptyFaces(scores)``.
        concentration: α > 0, (*batch, K) (broadcast with the face distribution's batch).

    Event shape (K,). ``rsample`` is pathwise in α (implicit Gamma reparameterisation, times
    U^{1/α} below α = 1: ``rsample_on_faces``) but the face is sampled without gradient: train
    face scores with a score-function term (``faces.log_prob(f)``, ``f = (y > 0)``), as in the
    paper's VAE estimator.
    """

    arg_constraints: ClassVar[dict] = {
        "concentration": finite_positive_vector,
    }
    support = simplex
    has_rsample = True

    def __init__(self, faces: Distribution | Tensor, concentration: Tensor,
                 validate_args: bool | None = None) -> None:
        if isinstance(faces, Tensor):
            check_tensor(faces, "faces")
            check_min_dim(faces, "faces", 1)
            if validating(validate_args):
                check_finite(faces, "faces")
            faces = NonEmptyFaces(faces, validate_args=validate_args)
        if not isinstance(faces, Distribution) or len(faces.event_shape) != 1:
            raise TypeError("faces must be a face-score tensor or a distribution over faces "
                            f"with event shape (K,), got {type(faces).__name__}")
        check_tensor(concentration, "concentration")
        check_min_dim(concentration, "concentration", 1)
        k = faces.event_shape[0]
        if concentration.shape[-1] != k:
            raise ValueError(f"concentration must have trailing size K = {k} (the faces' event "
                             f"size), got shape {tuple(concentration.shape)}")
        batch_shape = broadcast_shapes(faces.batch_shape, concentration.shape[:-1], error=lambda: (
            f"faces batch shape {tuple(faces.batch_shape)} and concentration "
            f"shape {tuple(concentration.shape)} do not broadcast"
        ))
        self.faces = faces if faces.batch_shape == batch_shape else faces.expand(batch_shape)
        self.concentration = concentration.expand((*batch_shape, k))
        super().__init__(batch_shape, torch.Size([k]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(MixedDirichlet, _instance)
        batch_shape = torch.Size(batch_shape)
        new.faces = self.faces.expand(batch_shape)
        new.concentration = self.concentration.expand(batch_shape + self.event_shape)
        super(MixedDirichlet, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def num_categories(self) -> int:
        return self.event_shape[0]

    def rsample_on_faces(self, faces: Tensor) -> Tensor:
        """y ~ Dir(α_f) on given faces (*sample, *batch, K): Gamma draws normalised on the face.

        Pathwise in α; exact zeros off the face and exactly e_k on a vertex {k}. Half-precision
        α is drawn in float32 (no half-precision Gamma sampler) and the draw cast back. For
        α_k < 1, G_k ~ Gamma(α_k) is G'_k U_k^{1/α_k} with G'_k ~ Gamma(α_k + 1), U_k ~ U(0, 1]
        (exact in distribution), its factor U^{1/α} kept as log U / α less its largest on the
        face: U^{1/α} itself underflows (e^{-1000} at α = 1e-3), and the underflowed draws, all
        equal, gave the face's barycentre (79% of the draws at α = 1e-3). log U / α is computed
        in float64 for float32 (1/α² overflows float32 below 1e-19), scaled by the face's
        largest α (at most 1) so that it stays finite where every α of the face is below
        ~1e-307, and has no gradient below 1e-150 (``_ALPHA_MIN``: its 1/α² overflows float64;
        the draw's gradient there is 0 but with probability ~α). From α = 1e33 on,
        Gamma(α)/α = 1 within 1/√α, below float64's rounding: the draw is α itself (torch's
        Gamma gradient is NaN above α ≈ 3.5e75 in float64). An entry of the face below
        ``_least_entry`` (the dtype's smallest normal number, 1.2e-38 in float32; 1e-292 in
        float64) is rounded up to it, not to 0, with no gradient (module helper).
        """
        dtype = self.concentration.dtype
        alpha = self.concentration.to(working_dtype(dtype))
        on = faces.to(alpha) > 0
        shape = torch.broadcast_shapes(faces.shape, alpha.shape)
        certain, small = alpha >= _CERTAIN_GAMMA, alpha < 1
        gamma = Gamma(torch.where(certain, 1.0, torch.where(small, alpha + 1, alpha)).expand(shape),
                      torch.ones((), dtype=alpha.dtype, device=alpha.device))
        g = torch.where(certain, alpha, gamma.rsample())
        (wide,) = _widened(alpha)
        log_u = torch.rand(shape, dtype=wide.dtype, device=wide.device).neg().log1p()
        scale = torch.where(on, wide, 0.0).amax(-1, keepdim=True).clamp(max=1).detach()
        held = torch.where(wide < _ALPHA_MIN, wide.detach(), wide)
        ratio = (scale / held).clamp(max=torch.finfo(wide.dtype).max)  # inf · (log U = 0): NaN
        scaled = torch.where(on, torch.where(small, log_u * ratio, 0.0), -math.inf)
        g = g.to(wide) * ((scaled - scaled.detach().amax(-1, keepdim=True)) / scale).exp()
        # divided by the largest draw first: a sum of K draws near finfo.max would overflow
        g = g / g.detach().amax(-1, keepdim=True)
        y = g / g.sum(-1, keepdim=True)
        least = _least_entry(dtype, wide.dtype)
        return torch.where(on & (y < least), least, y).to(dtype)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        """f ~ P_F (no gradient), then y_f ~ Dir(α_f) (pathwise), shape (*sample, *batch, K)."""
        return self.rsample_on_faces(self.faces.sample(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        """log P_F(f(y)) + log Dir(y_f; α_f), shape (*sample, *batch), computed in at least
        float32 (half-precision lgamma overflows) and returned in the concentration's dtype."""
        value = checked_value(self, value)
        dtype = self.concentration.dtype
        work = working_dtype(dtype)
        face = (value > 0).to(work)
        alpha = self.concentration.to(work)
        log_y = torch.where(value > 0, value, torch.ones_like(value)).to(work).log()
        log_dir = (_log_beta_ratio(alpha, face)
                   + ((alpha - 1) * log_y * face).sum(-1))
        log_face = self.faces.log_prob(face.to(value.dtype))
        return (log_face.to(work) + log_dir).to(dtype)

    def _checked_faces(self, faces: object, batch_shape: torch.Size,
                       sampled: bool = False) -> Tensor:
        """``faces`` (*sample, *b, K) with b broadcasting to ``batch_shape``, or with ``sampled``
        (the sampled estimators' draws) exactly one sample dim: (S, *b, K), b right-aligned after
        S and returned padded to (S, *batch-like, K); a TypeError or ValueError naming ``faces``
        otherwise (torch's were about "tensor a" and "tensor b")."""
        if not isinstance(faces, Tensor):
            raise TypeError(f"faces must be a torch.Tensor, got {type(faces).__name__}")
        if not sampled:
            check_trailing_shape(faces, "faces", self.event_shape)
            broadcast_shapes(faces.shape[:-1], batch_shape, error=lambda: (
                f"faces of shape {tuple(faces.shape)} does not broadcast with the batch shape "
                f"{tuple(batch_shape)}"
            ))
            return faces
        batch = faces.shape[1:-1]
        pad = len(batch_shape) - len(batch)
        if (faces.dim() < 2 or faces.shape[-1] != self.num_categories or pad < 0
                or any(b not in (1, n) for b, n in zip(batch, batch_shape[pad:]))):
            raise ValueError(
                f"faces must be (S, *batch, K) with K = {self.num_categories} and *batch "
                f"broadcasting to the batch shape {tuple(batch_shape)}, got shape "
                f"{tuple(faces.shape)}"
            )
        return faces[(slice(None),) + (None,) * pad]

    def _face_draws(self, faces: object, n_samples: object, batch_shape: torch.Size) -> Tensor:
        """The faces (S, *batch_shape, K) that the sampled estimators average over: ``faces``
        checked (``_checked_faces`` with ``sampled``), or, if None, ``n_samples`` draws of P_F
        expanded to ``batch_shape`` (independent per batch entry)."""
        check_positive_int(n_samples, "n_samples")
        if faces is not None:
            return self._checked_faces(faces, batch_shape, sampled=True)
        dist = (self.faces if self.faces.batch_shape == batch_shape
                else self.faces.expand(batch_shape))
        return dist.sample((n_samples,))

    def dirichlet_entropy(self, faces: Tensor) -> Tensor:
        """H(Dir(α_f)) at faces (*sample, *batch, K) -> (*sample, *batch) (0 on vertices),
        computed in at least float32."""
        faces = self._checked_faces(faces, self.batch_shape)
        dtype = self.concentration.dtype
        alpha = self.concentration.to(working_dtype(dtype))
        return _dirichlet_entropy(alpha, faces.to(alpha)).to(dtype)

    def dirichlet_kl(self, other: MixedDirichlet, faces: Tensor) -> Tensor:
        """KL(Dir(α_f) ‖ Dir(β_f)) at faces (*sample, *batch, K) -> (*sample, *batch),
        computed in at least float32."""
        check_kl_shapes(self, other)
        faces = self._checked_faces(
            faces, torch.broadcast_shapes(self.batch_shape, other.batch_shape))
        dtype = self.concentration.dtype
        alpha = self.concentration.to(working_dtype(dtype))
        kl = _dirichlet_kl(alpha, other.concentration.to(alpha), faces.to(alpha))
        return kl.to(dtype)

    def _check_enumerable(self, what: str, alternative: str) -> None:
        if self.num_categories > MAX_ENUMERATION_K:
            raise ValueError(
                f"exact {what} enumerates the 2^K - 1 faces and is limited to K <= "
                f"{MAX_ENUMERATION_K}, got K = {self.num_categories}; use {alternative} (exact "
                "face term plus the Dirichlet term averaged over sampled faces, unbiased)"
            )

    def _enumerated(self) -> tuple[Tensor, Tensor]:
        """The (F, K) face table and (*batch, F) face probabilities, in at least float32 (the
        enumerated entropy and KL are computed there: half-precision lgamma overflows)."""
        work = working_dtype(self.concentration.dtype)
        table = _face_table(self.num_categories, self.concentration.to(work))
        return table, _enumerated_face_log_probs(self.faces, table).exp().to(work)

    @property
    def mean(self) -> Tensor:
        """E[y_k] = P_F({k}) + α_k Σ_{f∋k, |f|>1} P_F(f)/α_0(f) by face enumeration (K <= 16),
        (*batch, K).

        The vertex {k} is apart: its α_k · P_F({k})/α_k is constant, but as a product its
        gradient is P_F({k})/α_k − P_F({k})/α_k, which lost everything at α_k = 1e-8 in float32
        and was inf − inf at 1e-20. P_F(f)/α_0(f) is exp(log P_F(f) − log α_0(f)), whose
        backward never forms 1/α_0(f)² (it overflows below α_0 ≈ 1e-154 in float64); float32
        computes in float64 (``_widened``: the gradient is a difference of sums over faces).
        """
        self._check_enumerable("mean", "the mean of rsample draws")
        dtype = self.concentration.dtype
        table = _face_table(self.num_categories, self.concentration.to(working_dtype(dtype)))
        log_probs = _enumerated_face_log_probs(self.faces, table)
        (alpha,) = _widened(self.concentration.to(table))
        log_probs = log_probs.to(alpha)
        multi = table.sum(-1) > 1  # the other rows are the vertices {k}, in the order of k
        faces = table[multi].to(alpha)
        ratio = (log_probs[..., multi] - (alpha @ faces.T).log()).exp()
        return (log_probs[..., ~multi].exp() + alpha * (ratio @ faces)).to(dtype)

    def entropy(self) -> Tensor:
        """Exact H⊕ = H(P_F) + Σ_f P_F(f) H(Dir(α_f)) by face enumeration (K <= 16)."""
        self._check_enumerable("entropy", "entropy_sampled(faces)")
        table, probs = self._enumerated()
        alpha = self.concentration
        h_dir = _dirichlet_entropy(alpha.to(table), table, enumerated=True)
        return (self.faces.entropy().to(h_dir) + _expect(probs, h_dir)).to(alpha.dtype)

    def entropy_sampled(self, faces: Tensor | None = None, n_samples: int = 1) -> Tensor:
        """Unbiased H⊕ at any K: H(P_F) (exact) + mean over sampled faces of H(Dir(α_f)),
        shape (*batch).

        faces: (S, *batch, K) draws from ``self.faces`` (S ≥ 1; *batch may be any shape that
        broadcasts to the batch shape), or None: ``n_samples`` (a positive int) drawn here. The
        face average carries no gradient w.r.t. the face scores (needs a score-function term);
        H(P_F) is exact and differentiable.
        """
        faces = self._face_draws(faces, n_samples, self.batch_shape)
        return self.faces.entropy() + self.dirichlet_entropy(faces).mean(0)

    def kl_sampled(self, other: MixedDirichlet, faces: Tensor | None = None,
                   n_samples: int = 1) -> Tensor:
        """Unbiased KL⊕ at any K: KL(P_F ‖ Q_F) (exact) + mean over f ~ P_F of
        KL(Dir(α_f) ‖ Dir(β_f)), shape: the broadcast batch shape of p and q (as
        ``kl_divergence``); ``faces`` (S, *batch, K) and ``n_samples`` as in ``entropy_sampled``,
        *batch broadcasting to that shape."""
        check_kl_shapes(self, other)
        batch_shape = torch.broadcast_shapes(self.batch_shape, other.batch_shape)
        faces = self._face_draws(faces, n_samples, batch_shape)
        face_kl = kl_divergence(self.faces, other.faces).clamp_min(0)
        return face_kl + self.dirichlet_kl(other, faces).mean(0)




@register_kl(MixedDirichlet, MixedDirichlet)
def _kl_mixed_dirichlet(p: MixedDirichlet, q: MixedDirichlet) -> Tensor:
    """Exact KL⊕ = KL(P_F ‖ Q_F) + Σ_f P_F(f) KL(Dir(α_f) ‖ Dir(β_f)), enumerated (K <= 16)."""
    check_kl_shapes(p, q)
    p._check_enumerable("KL", "p.kl_sampled(q, faces)")
    table, probs = p._enumerated()
    kl_dir = _dirichlet_kl(p.concentration.to(table), q.concentration.to(table), table,
                           enumerated=True)
    kl = kl_divergence(p.faces, q.faces).to(kl_dir).clamp_min(0) + _expect(probs, kl_dir)
    return kl.to(p.concentration.dtype)
