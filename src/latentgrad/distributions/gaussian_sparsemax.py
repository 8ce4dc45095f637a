"""Gaussian-sparsemax on the K-simplex (Farinhas et al. 2022): y = sparsemax(μ + σ ⊙ ε).

A mixed random variable: y lands on a face f = {i : y_i > 0} of the simplex with positive
probability and has a density on that face (direct-sum base measure).

Exact log-density by a 1-D reduction. With support S (s = |S|), the rest N, threshold τ:
z_S = y_S + τ1 and z_N ≤ τ; the map (y_{1:s−1}, τ) ↦ z_S has Jacobian s, so

    log p(y) = log s + log C + log E_{τ~N(m, v)}[Π_{j∈N} Φ((τ − μ_j)/σ_j)],

a_i = μ_i − y_i, v = (Σ_S σ_i^{−2})^{−1}, m = v Σ_S a_i/σ_i²,
log C = −((s − 1)/2) log 2π − Σ_S log σ_i + ½ log v − ½ Σ_S (a_i − m)²/σ_i².

The expectation is 1 for N = ∅, Φ((m − μ_j)/√(v + σ_j²)) for N = {j}, and otherwise a 1-D
integral of exp g, g(τ) = −(τ − m)²/(2v) + Σ_N log Φ((τ − μ_j)/σ_j), which is concave. Newton
finds the mode τ̂ and the two points where g is 40 nats below it; Gauss–Legendre rules on the two
sides of τ̂ (``n_nodes`` each) integrate exp g in log space. The nodes only choose where to
evaluate an integral whose value does not depend on them, so they are detached: held fixed in
t = (τ − m)/√v, where E = ∫ φ(t) Π_N Φ(c_j + b_j t) dt has no factor of v outside the integrand
for them to cancel, and placed relative to the mode (τ̂ − m as a leading part and a remainder),
so that they stay distinct when σ is far below the rounding of μ (σ = 1e-18 at μ ~ 1 in float32;
tests against multi-precision quadrature from σ = 1e-20 to 1e2). log Φ comes
from ``_log_ndtr.log_ndtr`` (a compiled kernel for large CPU float32 calls, torch's
``log_ndtr`` otherwise; the same values up to rounding; both with an exact gradient φ/Φ in
the lower tail, where torch's own loses it). Cost O(K·nodes) per point at any K (no
K² or K·S tensors, unlike the reference's 1000-point trapezoid).

Why not Gauss–Hermite (e.g. with ≥ 64 nodes, the obvious choice for a Gaussian weight): plain or
Laplace-centred Gauss–Hermite is wrong by more than a nat when the scales σ differ by two orders
of magnitude (the integrand is then a Gaussian cut by a near-step); the bracketed two-sided rule
stays within 1e-6 of adaptive scipy quadrature there (tests).

Face probabilities P(support(y) = f) (``face_log_prob``) integrate this exact density over the
face's |f| − 1 free coordinates: a point for |f| = 1 (the vertex formula), composite
Gauss–Legendre on the edge for |f| = 2, a Duffy-transformed tensor-product Gauss–Legendre rule on
the triangle for |f| = 3 (both deterministic, ~1e-8 in float64 for moderate σ; tests), and
importance sampling from the uniform density (|f| − 1)! on the face for |f| ≥ 4 (Monte Carlo,
relative standard error O(n_samples^{-1/2}); tests).

Entropy and KL have no closed form: they are Monte Carlo estimates with this exact log-density
(pathwise-differentiable through ``rsample``).

Sampling and the density keep fixed shapes, so a training step needs no host-device
synchronisation (validation off): ``rsample`` finds the sparsemax threshold by sorting whole rows,
the quadrature runs on every row (rows it does not need take the closed forms by ``where``), and
the Newton loops stop at convergence only on the CPU, where reading a tensor costs no
synchronisation (converged: every row within tolerance or with an iterate that no longer moves,
which in float32 saves a quarter of the MNIST VAE's steps from running to the cap); on
accelerators and under ``torch.compile`` they run their fixed number of steps.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import register_kl

from latentgrad.mappings._sparsemax import sparsemax_by_sorting

from .._dtypes import working_dtype
from .._host import host_reads_free
from .._validation import (
    broadcast_shapes,
    check_min_dim,
    check_positive_int,
    check_tensor,
    violated,
)
from ._expectation import score_function_mean
from ._gauss_quadrature import gauss_legendre
from ._log_ndtr import inverse_mills, log_ndtr
from ._params import (
    CheckedDistribution,
    broadcast_params,
    check_kl_shapes,
    checked_value,
    moderate_scale_vector,
    moderate_vector,
    on_common_batch,
    simplex,
)

__all__ = ["GaussianSparsemax"]

_LOG_2PI = math.log(2 * math.pi)
_NEWTON_STEPS = 30
_TOL = 1e-6  # Newton stops when steps are below this fraction of the Laplace width
_DROP = 40.0  # nats below the mode at which the integration bracket ends
_FACE_PIECES = 4  # sub-intervals of (0, 1) per free coordinate in the face rules
_FACE_NODES = 16  # Gauss–Legendre nodes per sub-interval
_MIN_NODES = 16  # fewer n_nodes miss the density by 1e-3 (12 nodes) to 5 nats (1 node)


def _log_integrand_terms(delta: Tensor, x0: Tensor, v: Tensor, base: Tensor, inv: Tensor,
                         outside: Tensor, value: bool = True, curvature: bool = True,
                         ) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """g(x) + x0²/(2v) at x = x0 + δ, and the derivatives g1, g2 of g there, where x = τ − m and
    g(x) = −x²/(2v) + Σ_N log Φ((m + x − μ_j)/σ_j).

    delta: (*, p); x0, v: (*, 1); base = (m + x0 − μ)/σ, inv = 1/σ, outside: (*, 1, K). Returns
    three (*, p) tensors; the first is None unless ``value``, g2 None unless ``curvature`` (the
    Newton loops need only two of the three, and each costs a pass of special functions over
    (*, p, K)). The arguments u = base + δ/σ are resolved however far x0 is from 0 (the caller
    passes base finer than x0's rounding); x0 itself only scales the Gaussian's linear term.
    """
    u = base + delta.unsqueeze(-1) * inv
    g = g2 = None
    if value:
        g = -(2 * x0 + delta) * delta / (2 * v) + torch.where(outside, log_ndtr(u), 0.0).sum(-1)
    # λ = φ/Φ = √(2/π) / erfcx(−u/√2), with no exp(−u²/2) / Φ(u) of two underflowing terms
    ratio = torch.where(outside, inverse_mills(u), 0.0)
    g1 = -(x0 + delta) / v + (ratio * inv).sum(-1)
    if curvature:
        loss = torch.where(outside, _truncation_variance_loss(u, ratio), 0.0)
        g2 = -1 / v - (loss * inv**2).sum(-1)
    return g, g1, g2


def _truncation_variance_loss(u: Tensor, ratio: Tensor) -> Tensor:
    """λ(u + λ) ∈ (0, 1), λ = φ(u)/Φ(u): the variance a unit normal loses when cut above u.

    Far in the lower tail λ ≈ −u and u + λ ≈ −1/u cancels, so below the dtype's threshold
    ``(50/eps)^{1/6}`` (~31 in float32, ~880 in float64) the asymptotic series
    ``1 − 1/u² + 6/u⁴`` (next term 50/u⁶ < eps) is used; the result is clamped to (0, 1), which
    keeps the Newton curvature g2 < 0.
    """
    cut = (50 / torch.finfo(u.dtype).eps) ** (1 / 6)
    inv2 = 1 / u.square().clamp_min(cut * cut)
    series = 1 - inv2 + 6 * inv2 * inv2
    return torch.where(u < -cut, series, ratio * (u + ratio)).clamp(0, 1)


def _log_expected_normal_cdf_product(m: Tensor, root: Tensor, loc: Tensor, scale: Tensor,
                                     outside: Tensor, n_nodes: int) -> Tensor:
    """log E_{τ~N(m, v)}[Π_{j: outside_j} Φ((τ − μ_j)/σ_j)].

    m, root = √v: (*R,); loc, scale, outside: (*R, K). Returns (*R,).

    In the offset x = τ − m (resolved below ulp(m)): the log-integrand g is concave; Newton finds
    its mode x̂, held as anchor + offset (the anchor takes each iterate's leading part), so that
    u_j = (m + x̂ − μ_j)/σ_j is resolved however far x̂ is from 0; Newton from x̂ ± (Laplace std)
    finds the points where g has dropped by ``_DROP`` nats (for a concave function the iterates
    overshoot once, then converge from outside, so they bracket the mass); then ``n_nodes``
    Gauss–Legendre nodes on each side of x̂, in log space. The nodes are fixed in t = x/√v, in
    which E = (2π)^{-1/2} ∫ exp(−t²/2) Π Φ(c_j + b_j t) dt (c_j = (m − μ_j)/σ_j, b_j = √v/σ_j)
    has no factor of v outside the integrand for the nodes to cancel (in τ, −½ log v has a
    gradient that only the nodes' spread cancels, and not once they round together).
    """
    m, root = m.unsqueeze(-1), root.unsqueeze(-1)
    loc, scale, outside = loc.unsqueeze(-2), scale.unsqueeze(-2), outside.unsqueeze(-2)
    early = host_reads_free(m)  # else the Newton loops run all their steps
    with torch.no_grad():
        m_loc, var, inv = m.unsqueeze(-1) - loc, root.detach() ** 2, 1 / scale.detach()
        anchor = offset = torch.zeros_like(var)
        for _ in range(_NEWTON_STEPS):
            base = (m_loc + anchor.unsqueeze(-1)) * inv
            _, g1, g2 = _log_integrand_terms(offset, anchor, var, base, inv, outside, value=False)
            step = g1 / g2
            moved = torch.where(torch.isfinite(step), offset - step, offset)
            previous = anchor, offset
            anchor = anchor + moved
            offset = moved - (anchor - previous[0])
            # a row above the tolerance whose step no longer moves the iterate stays where it is
            # and would repeat that step to the cap: only rows that move count
            if early and not bool(((step.abs() > _TOL * torch.sqrt(-1 / g2))
                                   & ((anchor != previous[0]) | (offset != previous[1]))).any()):
                break
        # from here on offsets from x̂: u there (finer than x̂'s rounding), and x̂ rounded, which
        # only scales the Gaussian's linear term (≲ 10 eps|x̂|/√v nats over the bracket, next to
        # |g| ≥ x̂²/(2v))
        base = (m_loc + anchor.unsqueeze(-1)) * inv + offset.unsqueeze(-1) * inv
        mode = anchor + offset
        terms = (mode, var, base, inv, outside)
        top, _, g2 = _log_integrand_terms(torch.zeros_like(var), *terms)
        sign = torch.arange(2, dtype=m.dtype, device=m.device) * 2 - 1  # (-1, 1)
        # g ≤ top − (x − x̂)²/(2v) (the Gaussian factor makes g 1/v-strongly concave), so the drop
        # points lie within `reach` of the mode: the iterates are kept there, which also holds
        # when g is too large for its rounding to resolve a 40-nat drop (|g| ≳ 1e8 in float32)
        reach = torch.sqrt(2 * _DROP * var)
        ends = torch.minimum(torch.sqrt(-1 / g2), reach) * sign  # offsets from x̂
        for _ in range(_NEWTON_STEPS):
            g, g1, _ = _log_integrand_terms(ends, *terms, curvature=False)
            gap = g - top + _DROP
            span = (ends - gap / g1) * sign  # > 0 on the correct side of the mode
            span = torch.where(torch.isfinite(span) & (span > 0), span, reach)
            ends, previous = span.clamp(max=reach) * sign, ends
            # within a nat, or (as above) an iterate that no longer moves
            if early and not bool(((gap.abs() > 1) & (ends != previous)).any()):
                break
    x, w = gauss_legendre(n_nodes, m)
    half_left, half_right = -ends[..., :1] / 2, ends[..., 1:] / 2
    nodes = torch.cat([-half_left * (1 - x), half_right * (1 + x)], -1)  # offsets from x̂
    # weights in t = x/√v: dt = dx/√v
    log_w = torch.cat([w.log() + (half_left / root.detach()).log(),
                       w.log() + (half_right / root.detach()).log()], -1)
    # t held fixed: x = √v t through `unit`, whose value is exactly 1, so that u is the Newton
    # loops' u to the last bit
    unit = (root / root.detach()).unsqueeze(-1)
    inv = 1 / scale  # times 1/σ, not over σ: no 0·∞ in the backward where u/σ overflows
    u = ((m.unsqueeze(-1) - loc + anchor.unsqueeze(-1) * unit) * inv
         + offset.unsqueeze(-1) * unit * inv + nodes.unsqueeze(-1) * unit * inv)
    h = -(2 * mode + nodes) * nodes / (2 * var) + torch.where(outside, log_ndtr(u), 0.0).sum(-1)
    # h is taken relative to its largest value (detached) in the logsumexp, whose backward
    # weights exp(log_w + h − result) sum to 1 only within the rounding of the result (±0.5 nats
    # at |h| ~ 1e7 in float32: 2x wrong gradients); a row whose log Φ are all −inf (u ≲ −1e19
    # in float32, where log p is below −finfo.max) keeps its −inf out (a NaN backward)
    some = torch.isfinite(h).any(-1, keepdim=True)
    peak = torch.where(some, h.detach().amax(-1, keepdim=True), 0.0)
    log_integral = torch.logsumexp(torch.where(some, log_w + h - peak, 0.0), -1, keepdim=True)
    log_integral = torch.where(some, log_integral + peak, -math.inf) - mode**2 / (2 * var)
    return (log_integral - 0.5 * _LOG_2PI).squeeze(-1)


def _unit_interval_rule(like: Tensor) -> tuple[Tensor, Tensor]:
    """Composite Gauss–Legendre rule on (0, 1): nodes t (P,), weights (P,) summing to 1."""
    x, w = gauss_legendre(_FACE_NODES, like)
    start = torch.arange(_FACE_PIECES, dtype=like.dtype, device=like.device) / _FACE_PIECES
    t = (start.unsqueeze(-1) + (x + 1) / (2 * _FACE_PIECES)).reshape(-1)
    return t, (w / (2 * _FACE_PIECES)).repeat(_FACE_PIECES)


def _face_rank(face: Tensor) -> Tensor:
    """1, 2, ... at the members of each face (R, K) in index order, 0 elsewhere."""
    return torch.where(face, face.long().cumsum(-1), 0)


def _vertex_face_log_prob(dist: GaussianSparsemax, face: Tensor) -> Tensor:
    """|f| = 1: the density (a point mass) at the vertex. face (R, K) -> (R,)."""
    return dist.log_prob(face.to(dist.loc.dtype))


def _edge_face_log_prob(dist: GaussianSparsemax, face: Tensor) -> Tensor:
    """|f| = 2 = {a < b}: ∫_0^1 p(t e_a + (1 − t) e_b) dt, composite Gauss–Legendre. (R,)."""
    t, w = _unit_interval_rule(dist.loc)
    rank = _face_rank(face)
    t = t.reshape(-1, 1, 1)
    y = torch.where(rank == 1, t, 0.0) + torch.where(rank == 2, 1 - t, 0.0)  # (P, R, K)
    return torch.logsumexp(dist.log_prob(y) + w.log().unsqueeze(-1), 0)


def _triangle_face_log_prob(dist: GaussianSparsemax, face: Tensor) -> Tensor:
    """|f| = 3 = {a < b < c}: Duffy map (u, v) ↦ (u, (1 − u)v, (1 − u)(1 − v)) of the square onto
    the triangle (Jacobian 1 − u), tensor-product composite Gauss–Legendre. (R,)."""
    t, w = _unit_interval_rule(dist.loc)
    u, v = t.reshape(-1, 1, 1, 1), t.reshape(1, -1, 1, 1)
    rank = _face_rank(face)
    y = (torch.where(rank == 1, u, 0.0) + torch.where(rank == 2, (1 - u) * v, 0.0)
         + torch.where(rank == 3, (1 - u) * (1 - v), 0.0))  # (P, P, R, K)
    log_w = w.log().unsqueeze(-1) + w.log() + (1 - t).log().unsqueeze(-1)  # (P, P)
    lp = dist.log_prob(y.flatten(0, 1)) + log_w.reshape(-1, 1)
    return torch.logsumexp(lp, 0)


def _sampled_face_log_prob(dist: GaussianSparsemax, face: Tensor, n_samples: int) -> Tensor:
    """|f| ≥ 4: P(f) = E_{u ~ Unif(f)}[p(u)] / (|f| − 1)!, u = E/ΣE with E_i ~ Exp(1) on f.

    Unbiased for P(f) (not for its log); relative standard error O(n_samples^{-1/2}). (R,).
    """
    shape = (n_samples, *face.shape)
    e = torch.empty(shape, dtype=dist.loc.dtype, device=dist.loc.device).exponential_()
    e = torch.where(face, e.clamp_min(torch.finfo(e.dtype).tiny), 0.0)
    lp = dist.log_prob(e / e.sum(-1, keepdim=True))
    size = face.sum(-1).to(dist.loc.dtype)
    return torch.logsumexp(lp, 0) - math.log(n_samples) - torch.lgamma(size)


class GaussianSparsemax(CheckedDistribution):
    r"""y = sparsemax(μ + σ ⊙ ε), ε ~ N(0, I): a mixed distribution on the K-simplex.

    Args:
        loc: μ, (*batch, K).
        scale: σ > 0, broadcastable to ``loc`` (a float, (K,), or (*batch, K)).
            With ``validate_args``, the magnitude of μ must be at most ``finfo.max / 8`` and σ
            between ``16 / sqrt(finfo.max)`` and ``sqrt(finfo.max) / 16`` of the dtype
            (float32: about 8.7e-19 to 1.2e18), where its variances and precisions stay finite.
        n_nodes: Gauss–Legendre nodes on each side of the mode in the 1-D reduction (default 48,
            at least 16: each side spans a 40-nat drop of the integrand, which 16 nodes resolve
            to ~1e-8 relative for a Gaussian and 2e-4 where scales differ by 1e3; 48: 1e-7).
        mc_samples: default number of samples of the Monte Carlo ``entropy`` and KL (default 64).

    Event shape (K,). ``rsample`` has exact zeros; ``log_prob`` is the exact direct-sum
    log-density (module docstring); ``vertex_log_prob`` gives the probability of each vertex,
    ``face_log_prob`` that of any face.
    K = 2 reduces to ``BinaryGaussianSparsemax`` on y_1 with location (μ_1 − μ_2 + 1)/2 and
    scale √(σ_1² + σ_2²)/2.
    """

    arg_constraints: ClassVar[dict] = {
        "loc": moderate_vector,  # |μ| <= finfo.max / 8: shifted locations stay finite
        "scale": moderate_scale_vector,  # σ², σ⁻² and their sums stay finite
    }
    support = simplex
    has_rsample = True

    def __init__(self, loc: Tensor, scale: Tensor | float = 1.0, n_nodes: int = 48,
                 mc_samples: int = 64, validate_args: bool | None = None) -> None:
        check_tensor(loc, "loc")
        check_min_dim(loc, "loc", 1)
        if loc.shape[-1] == 0:
            raise ValueError("loc must have at least one coordinate (K >= 1) in its last "
                             "dimension: the simplex of K = 0 is empty; got shape "
                             f"{tuple(loc.shape)}")
        if not isinstance(scale, Tensor):
            scale = torch.full((), float(scale), dtype=loc.dtype, device=loc.device)
        check_tensor(scale, "scale")
        if isinstance(n_nodes, bool) or not isinstance(n_nodes, int) or n_nodes < _MIN_NODES:
            raise ValueError(f"n_nodes must be an int >= {_MIN_NODES} (Gauss–Legendre nodes on "
                             f"each side of the mode), got {n_nodes!r}")
        check_positive_int(mc_samples, "mc_samples")
        self.loc, self.scale = broadcast_params(loc=loc, scale=scale)
        if self.loc.shape != loc.shape:
            raise ValueError(f"scale of shape {tuple(scale.shape)} must broadcast to loc's shape "
                             f"{tuple(loc.shape)}")
        self.n_nodes, self.mc_samples = n_nodes, mc_samples
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(GaussianSparsemax, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape + self.event_shape)
        new.scale = self.scale.expand(batch_shape + self.event_shape)
        new.n_nodes, new.mc_samples = self.n_nodes, self.mc_samples
        super(GaussianSparsemax, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        """sparsemax(μ + σ ε), shape (*sample_shape, *batch, K), pathwise through sparsemax
        (its threshold by sorting whole rows: no data-dependent shape)."""
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return sparsemax_by_sorting(self.loc + self.scale * eps, dim=-1)

    def log_prob(self, value: Tensor) -> Tensor:
        """Exact direct-sum log-density at ``value`` (*sample, *batch, K) -> (*sample, *batch).

        sparsemax is shift-invariant, so μ is first shifted by its largest entry on the support of
        ``value`` (detached; the density does not change): the support's μ_i are then small and
        τ − m, u_j are not rounded at the scale of |μ| (float32 at |μ| ~ 1e3).
        """
        value = checked_value(self, value)
        dtype = self.loc.dtype
        work = working_dtype(dtype)  # half precision: computed in float32, returned as given
        value = value.to(work)
        shape = value.shape
        inside = value > 0
        outside = ~inside
        loc, scale = self.loc.expand(shape).to(work), self.scale.expand(shape).to(work)
        shift = loc.detach().masked_fill(outside, float("-inf")).amax(-1, keepdim=True)
        loc = loc - torch.where(torch.isfinite(shift), shift, 0.0)
        size = inside.sum(-1).to(loc.dtype)
        # precisions σ_i⁻² relative to the support's largest, r_i = (σ_min/σ_i)² ∈ (0, 1]: then
        # √v = σ_min/√Σ r_i has no gradient −v² (σ near sqrt(finfo.max)) or 1/√v (σ near its
        # inverse) to overflow
        ref = torch.where(inside, scale, float("inf")).amin(-1, keepdim=True).detach()
        rel = torch.where(inside, (ref / scale) ** 2, 0.0)
        total = rel.sum(-1)
        ref = ref.squeeze(-1)
        root = ref / total.sqrt()  # √v
        a = loc - value
        # m = Σ r_i a_i / Σ r_i, written about a detached centre (the same function: the weights
        # sum to 1): the backward through Σ r_i then carries r_i (a_i − m) ~ σ, not a_i ~ 1, which
        # would swamp √v's terms there when σ is tiny (1e-5 relative error at σ = 1e-10)
        centre = ((rel * a).sum(-1) / total).detach()
        m = centre + (rel * (a - centre.unsqueeze(-1))).sum(-1) / total
        spread = torch.where(inside, rel * (a - m.unsqueeze(-1)) ** 2, 0.0).sum(-1) / ref**2
        log_c = (-(size - 1) / 2 * _LOG_2PI - torch.where(inside, scale.log(), 0.0).sum(-1)
                 + ref.log() - 0.5 * total.log() - 0.5 * spread)
        n_out = outside.sum(-1)
        # (m − μ_j)/√(v + σ_j²) = (m − μ_j) · (1/σ_j)/√(1 + b_j²), b_j = √v/σ_j: no factor
        # overflows, so the backward has no 0·∞ where the quotient does (|μ|/σ > finfo.max)
        inv = 1 / scale
        factor = inv / torch.hypot(root.unsqueeze(-1) * inv, torch.ones_like(inv))
        single = log_ndtr((m.unsqueeze(-1) - loc) * factor)
        single = torch.where(outside, single, 0.0).sum(-1)
        # the quadrature runs on every row (fixed shapes); it is used where the support leaves
        # two or more out, and is finite on the others (no NaN enters the backward)
        many = _log_expected_normal_cdf_product(m, root, loc, scale, outside, self.n_nodes)
        log_e = torch.where(n_out >= 2, many, torch.where(n_out == 0, 0.0, single))
        return (size.log() + log_c + log_e).to(dtype)

    def vertex_log_prob(self) -> Tensor:
        """log P(y = e_i) for every vertex i, shape (*batch, K).

        P(y = e_i) = E_{z_i}[Π_{j≠i} Φ((z_i − 1 − μ_j)/σ_j)]: the 1-D reduction at a vertex.
        Larger faces: ``face_log_prob``.
        """
        k = self.event_shape[0]
        eye = torch.eye(k, dtype=self.loc.dtype, device=self.loc.device)
        eye = eye.reshape((k,) + (1,) * len(self.batch_shape) + (k,))
        return self.log_prob(eye).movedim(0, -1)

    def face_log_prob(self, face: Tensor, n_samples: int = 4096) -> Tensor:
        """log P(support(y) = f) for a face f given as a 0/1 or bool mask (..., K).

        ``face`` broadcasts against the batch; returns shape broadcast(face[..., :-1], batch).
        P(f) = ∫_f p(y) dy over the |f| − 1 free coordinates of the face (direct-sum measure),
        with the exact ``log_prob`` as integrand:

        - |f| = 1: the vertex formula (as ``vertex_log_prob``), exact;
        - |f| = 2: composite Gauss–Legendre on (0, 1) (4 pieces × 16 nodes), deterministic;
        - |f| = 3: the same rule in both coordinates of the Duffy-transformed triangle
          (64² points), deterministic;
        - |f| ≥ 4: Monte Carlo, ``n_samples`` points uniform on the face: P̂ = mean p(u)/(|f| − 1)!
          is unbiased with relative standard error O(n_samples^{-1/2}) (larger where the density
          is peaked, i.e. small σ). Differentiable (pathwise in μ, σ), uses the global RNG.

        The quadrature rules are accurate to ~1e-8 (float64) for densities that vary on scales
        ≳ 0.1 of the face, i.e. σ ≳ 0.05; for much smaller σ use ``sample`` frequencies.
        Cost per row: |f| = 2: 64 and |f| = 3: 4096 ``log_prob`` points; |f| ≥ 4: n_samples.
        """
        k = self.event_shape[0]
        if not isinstance(face, Tensor):
            raise TypeError(f"face must be a torch.Tensor, got {type(face).__name__}")
        if face.dim() < 1 or face.shape[-1] != k:
            raise ValueError(f"face must have last dimension K = {k} (..., {k}), "
                             f"got shape {tuple(face.shape)}")
        check_positive_int(n_samples, "n_samples")
        if face.dtype != torch.bool:
            if face.is_complex() or violated(face, lambda f: (f == 0) | (f == 1)):
                raise ValueError("face must be a bool tensor or contain only 0 and 1")
            face = face == 1
        if violated(face, lambda f: f.any(-1)):
            raise ValueError("face must be non-empty: every face needs at least one 1")
        shape = broadcast_shapes(face.shape, self.loc.shape, error=lambda: (
            f"face of shape {tuple(face.shape)} does not broadcast to the batch "
            f"shape {tuple(self.batch_shape)} (event ({k},))"
        ))
        face = face.to(self.loc.device).expand(shape).reshape(-1, k)
        loc, scale = self.loc.expand(shape).reshape(-1, k), self.scale.expand(shape).reshape(-1, k)
        size = face.sum(-1)
        out = loc.new_zeros(size.shape)
        rules = ((size == 1, _vertex_face_log_prob), (size == 2, _edge_face_log_prob),
                 (size == 3, _triangle_face_log_prob),
                 (size >= 4, lambda d, f: _sampled_face_log_prob(d, f, n_samples)))
        for rows, rule in rules:  # one batched call per rule (not per example)
            if bool(rows.any()):
                dist = GaussianSparsemax(loc[rows], scale[rows], self.n_nodes, validate_args=False)
                out = out.masked_scatter(rows, rule(dist, face[rows]))
        return out.reshape(shape[:-1])

    def entropy(self, n_samples: int | None = None) -> Tensor:
        """Monte Carlo direct-sum entropy −mean log p(y) over ``n_samples`` draws (default
        ``mc_samples``), shape batch_shape. Value and gradient are unbiased: the gradient is the
        score function's with a leave-one-out baseline (``_expectation``), since log p jumps
        between faces and the pathwise derivative through the draws misses those jumps."""
        if n_samples is not None:
            check_positive_int(n_samples, "n_samples")
        y = self.sample((self.mc_samples if n_samples is None else n_samples,))
        log_p = self.log_prob(y)
        return score_function_mean(-log_p, log_p)


@register_kl(GaussianSparsemax, GaussianSparsemax)
def _kl_gaussian_sparsemax(p: GaussianSparsemax, q: GaussianSparsemax) -> Tensor:
    """Monte Carlo KL⊕ = mean(log p(y) − log q(y)) over p.mc_samples draws y ~ p, with an
    unbiased gradient in both distributions' parameters (score function for p's, as in
    ``entropy``), shape broadcast(p.batch_shape, q.batch_shape): p is drawn on that batch shape
    (its own draws did not broadcast against a q of a larger batch)."""
    check_kl_shapes(p, q)
    p, q = on_common_batch(p, q)
    y = p.sample((p.mc_samples,))
    log_p = p.log_prob(y)
    return score_function_mean(log_p - q.log_prob(y), log_p)
