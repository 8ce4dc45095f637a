"""Mixed random variables on [0, 1]: point masses at 0 and 1 plus a density on (0, 1).

Farinhas et al. (2022) §"binary" mixed variables, with the direct-sum base measure: the faces of
[0, 1] are {0}, {1} (counting measure) and (0, 1) (Lebesgue). ``log_prob`` is log P0 at 0, log P1
at 1 and the log-density inside; ``entropy`` and KL are direct-sum quantities:
H⊕ = −P0 log P0 − P1 log P1 − ∫_0^1 p log p,  KL⊕ = Σ_{0,1} P log(P/Q) + ∫_0^1 p log(p/q).

- ``BinaryGaussianSparsemax(loc, scale)``: y = clip(μ + σε, 0, 1) (one noise draw per bit, one σ
  for sampler, density and entropy); entropy and KL in closed form.
- ``HardConcrete(log_alpha, temperature, stretch)`` (Louizos et al. 2018): y = clip(l + (r − l)s),
  s ~ BinaryConcrete(log α, β); entropy and KL by Gauss–Legendre quadrature in the logistic
  noise variable (deterministic, differentiable).
- ``MixedUniform()``: the prior ⅓ δ_0 + ⅓ δ_1 + ⅓ U(0, 1) used in the bit-vector VAE; its
  direct-sum log-density is −log 3 everywhere, so KL(p ‖ MixedUniform) = log 3 − H⊕(p).

All three have event shape () (one distribution per bit).
"""

from __future__ import annotations

import math
from numbers import Number
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import constraints, register_kl
from torch.nn.functional import logsigmoid

from .._dtypes import working_dtype
from .._noise import logistic
from .._validation import check_tensor
from ._gauss_quadrature import gauss_legendre
from ._log_ndtr import log_ndtr
from ._params import (
    CheckedDistribution,
    broadcast_params,
    check_kl_shapes,
    checked_value,
    finite,
    finite_positive,
    on_common_batch,
)

__all__ = ["BinaryGaussianSparsemax", "HardConcrete", "MixedUniform"]

_LOG_2PI = math.log(2 * math.pi)
_INNER_NODES = 16  # Gauss–Legendre nodes of the truncated moments on intervals inside (−1, 1)


def _as_tensor(x: Tensor | float, name: str) -> Tensor | float:
    if isinstance(x, Number) and not isinstance(x, bool):
        return float(x)
    return check_tensor(x, name)


def _xlogx_from_log(log_p: Tensor) -> Tensor:
    """p log p from log p (0 at p = 0, with a zero gradient there: the branch not taken sees a
    finite input, so its backward cannot be 0 · NaN)."""
    positive = log_p > -math.inf
    safe = torch.where(positive, log_p, 0.0)
    return torch.where(positive, safe.exp() * safe, 0.0)


def _times(x: Tensor, moment: Tensor) -> Tensor:
    """``x · moment``, 0 where the moment is 0 (``inf · 0`` would be NaN), also in the backward
    (the product sees x = 0 there, so its gradient to the moment is not inf · 0)."""
    zero = moment == 0
    return torch.where(zero, 0.0, torch.where(zero, 0.0, x) * moment)


def _ndtr(x: Tensor) -> Tensor:
    """Φ(x), evaluated in at least float32 (torch has no half-precision kernel)."""
    return torch.special.ndtr(x.to(working_dtype(x.dtype))).to(x.dtype)


def _ndtr_diff(a: Tensor, b: Tensor) -> Tensor:
    """Φ(b) − Φ(a) for a ≤ b without cancellation in the upper tail."""
    upper = a > 0
    return torch.where(
        upper,
        _ndtr(-a) - _ndtr(-b),
        _ndtr(b) - _ndtr(a),
    )


class _MixedUnitInterval(CheckedDistribution):
    """Shared logic of the mixed variables on [0, 1]; subclasses give the three faces' masses."""

    support = constraints.unit_interval
    has_rsample = True

    def log_prob_zero(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_prob_one(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def interior_log_prob(self, value: Tensor) -> Tensor:  # pragma: no cover - abstract
        """log-density of the continuous part at ``value`` ∈ (0, 1) (not normalised to 1)."""
        raise NotImplementedError

    def _interior_cdf(self, value: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def prob_zero(self) -> Tensor:
        """P(y = 0), shape batch_shape."""
        return self.log_prob_zero().exp()

    def prob_one(self) -> Tensor:
        """P(y = 1), shape batch_shape."""
        return self.log_prob_one().exp()

    def log_prob(self, value: Tensor) -> Tensor:
        """Direct-sum log-density: log P0 at 0, log P1 at 1, log p(y) inside (sample..., batch)."""
        value = checked_value(self, value)
        zero, one = value == 0, value == 1
        inner = torch.where(zero | one, torch.full_like(value, 0.5), value)
        return torch.where(
            zero,
            self.log_prob_zero(),
            torch.where(one, self.log_prob_one(), self.interior_log_prob(inner)),
        )

    def cdf(self, value: Tensor) -> Tensor:
        """P(y ≤ value) for value ∈ [0, 1] (P0 at 0, 1 at 1)."""
        value = checked_value(self, value)
        one = value == 1
        inner = torch.where(one, torch.zeros_like(value), value)
        inside = self._interior_cdf(inner)
        return torch.where(one, torch.ones_like(inside), inside)

    def _mass_entropy(self) -> Tensor:
        return -_xlogx_from_log(self.log_prob_zero()) - _xlogx_from_log(self.log_prob_one())


class BinaryGaussianSparsemax(_MixedUnitInterval):
    r"""Binary Gaussian-sparsemax: y = clip(μ + σε, 0, 1), ε ~ N(0, 1) (Farinhas et al. 2022).

    P0 = Φ(−μ/σ), P1 = Φ((μ − 1)/σ), density N(y; μ, σ²) on (0, 1). It is the K = 2
    Gaussian-sparsemax seen through its first coordinate. With a = −μ/σ, b = (1 − μ)/σ:
    H⊕ = −P0 log P0 − P1 log P1 + (Φ(b) − Φ(a))·½(1 + log 2πσ²) − ½(b φ(b) − a φ(a)).

    Args:
        loc: μ, any shape (batch).
        scale: σ > 0, broadcastable with ``loc``.
    """

    arg_constraints: ClassVar[dict] = {"loc": finite, "scale": finite_positive}

    def __init__(self, loc: Tensor | float, scale: Tensor | float,
                 validate_args: bool | None = None) -> None:
        self.loc, self.scale = broadcast_params(
            loc=_as_tensor(loc, "loc"), scale=_as_tensor(scale, "scale"))
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(BinaryGaussianSparsemax, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc, new.scale = self.loc.expand(batch_shape), self.scale.expand(batch_shape)
        super(BinaryGaussianSparsemax, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _standardized(self, value: Tensor | float) -> Tensor:
        """``(value − μ)/σ``, as ``(value − μ) · exp(−log σ)``: its gradient to σ goes through
        ``−u · (1/σ)`` instead of ``(value − μ)/σ²``, which overflows at tiny σ (1e-30 in float32)
        and made a zero upstream gradient NaN. Clamped at ±2 sqrt(finfo.max), beyond which every
        quantity has saturated (u²/2 overflows: Φ is 0 or 1, log Φ and log φ are −inf)."""
        u = (value - self.loc) * torch.exp(-self.scale.log())
        limit = 2 * math.sqrt(torch.finfo(u.dtype).max)
        return u.clamp(-limit, limit)

    def _bounds(self) -> tuple[Tensor, Tensor]:
        return self._standardized(0.0), self._standardized(1.0)

    def log_prob_zero(self) -> Tensor:
        return log_ndtr(self._standardized(0.0))

    def log_prob_one(self) -> Tensor:
        return log_ndtr(-self._standardized(1.0))

    def interior_log_prob(self, value: Tensor) -> Tensor:
        u = self._standardized(value)
        return -0.5 * u * u - self.scale.log() - 0.5 * _LOG_2PI

    def _interior_cdf(self, value: Tensor) -> Tensor:
        return _ndtr(self._standardized(value))

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        """clip(μ + σε, 0, 1): exact 0/1 on the masses, pathwise gradient inside."""
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return (self.loc + self.scale * eps).clamp(0, 1)

    def _truncated_moments(self) -> tuple[Tensor, Tensor, Tensor]:
        """∫_a^b u^m φ(u) du for m = 0, 1, 2: in closed form, ``Φ(b) − Φ(a)``, ``φ(a) − φ(b)``
        and ``z0 − (b φ(b) − a φ(a))``, or by Gauss–Legendre where [a, b] lies inside (−1, 1).
        There the closed forms cancel (a wide σ: width 1/σ): z2 ≈ z0 · u² came out negative
        at σ = 1e10 (−4e-11 for a true 1e-31), which a KL multiplies by (σ_p/σ_q)²; the
        integrands are smooth on (−1, 1) and the rule is exact to its weights' 1e-14."""
        a, b = self._bounds()
        # φ(t) underflows to 0 beyond |t| = 40 in every dtype: clamped there, an infinite bound
        # (μ/σ overflowing) gives φ = 0 with a zero gradient instead of a NaN one
        pa, pb = (torch.exp(-0.5 * t.clamp(-40, 40) ** 2) / math.sqrt(2 * math.pi) for t in (a, b))
        z0 = _ndtr_diff(a, b)
        closed = (z0, pa - pb, z0 - (_times(b, pb) - _times(a, pa)))
        inner = (a.abs() < 1) & (b.abs() < 1)  # both forms always (no host sync to choose)
        # the rule on [a, b] where inner, on a dummy [0, 0] elsewhere (no inf in either branch)
        a_in, b_in = torch.where(inner, a, 0.0), torch.where(inner, b, 0.0)
        nodes, weights = gauss_legendre(_INNER_NODES, a)
        half = (0.5 * (b_in - a_in)).unsqueeze(-1)
        u = (0.5 * (a_in + b_in)).unsqueeze(-1) + half * nodes
        w = half * weights * torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
        rule = (w.sum(-1), (w * u).sum(-1), (w * u * u).sum(-1))
        return tuple(torch.where(inner, r, c) for r, c in zip(rule, closed, strict=True))

    @property
    def mean(self) -> Tensor:
        """E[y] = P1 + ∫_0^1 y N(y; μ, σ²) dy."""
        z0, z1, _ = self._truncated_moments()
        return self.prob_one() + self.loc * z0 + self.scale * z1

    def entropy(self) -> Tensor:
        """Closed-form direct-sum entropy (nats), shape batch_shape (in at least float32)."""
        w = self._working()
        z0, _, z2 = w._truncated_moments()
        h = w._mass_entropy() + _times(w.scale.log() + 0.5 * _LOG_2PI, z0) + 0.5 * z2
        return h.to(self.loc.dtype)

    def _working(self, work: torch.dtype | None = None) -> BinaryGaussianSparsemax:
        """This distribution with parameters in ``work`` (default: at least float32, half
        precision overflows)."""
        work = work or working_dtype(self.loc.dtype)
        if work == self.loc.dtype:
            return self
        return BinaryGaussianSparsemax(self.loc.to(work), self.scale.to(work), validate_args=False)


def _checked_stretch(stretch: object) -> tuple[float, float]:
    """``stretch`` as the pair of floats (l, r) with −1e3 ≤ l < 0 < 1 < r ≤ 1e3: the interior
    y ∈ (0, 1) is the fraction 1/(r − l) of the stretched interval, and y − l must resolve it
    (float32 steps of 6e-5 at |l| = 1e3; at 1e300, r − l overflowed and draws were NaN)."""
    try:
        lo, hi = (float(v) for v in stretch)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(f"stretch must be a pair of numbers (l, r), got {stretch!r}") from None
    if not (-_STRETCH_LIMIT <= lo < 0 and 1 < hi <= _STRETCH_LIMIT):
        raise ValueError(
            f"stretch must be (l, r) with -{_STRETCH_LIMIT:g} <= l < 0 < 1 < r <= "
            f"{_STRETCH_LIMIT:g}, got {stretch!r}")
    return lo, hi


_STRETCH_LIMIT = 1e3


_WIDE_NOISE_INTERVAL = 36.0  # logistic units: Gauss–Legendre in L up to this, in σ(L) beyond


class HardConcrete(_MixedUnitInterval):
    r"""Hard Concrete (Louizos et al. 2018): a stretched, clipped Binary Concrete.

    s = σ((log α + L)/β), L logistic; s̄ = l + (r − l)s; y = min(1, max(0, s̄)).
    P0 = σ(β log(−l/r) − log α), P1 = σ(log α − β log((1 − l)/(r − 1))), and the interior density
    is the Binary Concrete density of (y − l)/(r − l), divided by r − l. The entropy and KLs
    integrate over the logistic variable L on the interval mapped to (0, 1) with an n-point
    Gauss–Legendre rule (deterministic, differentiable).

    Args:
        log_alpha: log α, any shape (batch).
        temperature: β > 0, broadcastable with ``log_alpha``.
        stretch: (l, r) with -1e3 <= l < 0 and 1 < r <= 1e3.
        quadrature_nodes: Gauss–Legendre nodes for entropy, KL and mean (default 32: machine
            precision for β <= 2, about 1e-5 at β = 5, 1e-4 at β = 6 to 10 (use 64 there),
            then better again as 1/β²). The integration interval is 4.8β logistic units long
            for the default stretch; beyond 36 units the nodes are placed in σ(L).
    """

    arg_constraints: ClassVar[dict] = {
        "log_alpha": finite, "temperature": finite_positive,
    }

    def __init__(self, log_alpha: Tensor | float, temperature: Tensor | float,
                 stretch: tuple[float, float] = (-0.1, 1.1), quadrature_nodes: int = 32,
                 validate_args: bool | None = None) -> None:
        lo, hi = _checked_stretch(stretch)
        if isinstance(quadrature_nodes, bool) or not isinstance(quadrature_nodes, int) or (
                quadrature_nodes < 2):
            raise ValueError(f"quadrature_nodes must be an int >= 2, got {quadrature_nodes!r}")
        self.log_alpha, self.temperature = broadcast_params(
            log_alpha=_as_tensor(log_alpha, "log_alpha"),
            temperature=_as_tensor(temperature, "temperature"))
        self.stretch, self.quadrature_nodes = (lo, hi), quadrature_nodes
        super().__init__(self.log_alpha.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(HardConcrete, _instance)
        batch_shape = torch.Size(batch_shape)
        new.log_alpha = self.log_alpha.expand(batch_shape)
        new.temperature = self.temperature.expand(batch_shape)
        new.stretch, new.quadrature_nodes = self.stretch, self.quadrature_nodes
        super(HardConcrete, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _noise_bounds(self) -> tuple[Tensor, Tensor]:
        """Logistic-noise values L0 < L1 at which s̄ = 0 and s̄ = 1."""
        lo, hi = self.stretch
        beta = self.temperature
        return (beta * math.log(-lo / hi) - self.log_alpha,
                beta * math.log((1 - lo) / (hi - 1)) - self.log_alpha)

    def log_prob_zero(self) -> Tensor:
        return logsigmoid(self._noise_bounds()[0])

    def log_prob_one(self) -> Tensor:
        return logsigmoid(-self._noise_bounds()[1])

    def _logit_of(self, value: Tensor) -> Tensor:
        lo, hi = self.stretch
        s = (value - lo) / (hi - lo)
        return torch.log(s) - torch.log1p(-s)

    def interior_log_prob(self, value: Tensor) -> Tensor:
        """log p_s(s)/(r − l) with s = (y − l)/(r − l) and x = logit(s):
        log p_s = log β + logσ(βx − log α) + logσ(log α − βx) − logσ(x) − logσ(−x)."""
        return self._interior_log_prob_at_logit(self._logit_of(value))

    def _interior_log_prob_at_logit(self, x: Tensor) -> Tensor:
        """``interior_log_prob`` at the point with ``logit(s) = x`` (no round trip through y,
        which loses the digits of s near 0 and 1)."""
        lo, hi = self.stretch
        noise = self.temperature * x - self.log_alpha
        return (self.temperature.log() + logsigmoid(noise) + logsigmoid(-noise)
                - logsigmoid(x) - logsigmoid(-x) - math.log(hi - lo))

    def _interior_cdf(self, value: Tensor) -> Tensor:
        return torch.sigmoid(self.temperature * self._logit_of(value) - self.log_alpha)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        """clip(l + (r − l)σ((log α + L)/β), 0, 1) with L = log u − log(1 − u), u clamped.

        A sample clipped to 0 or 1 does not depend on β: its gradient there is exactly 0, not the
        0 · inf = NaN of (log α + L)/β² once that overflows (β below ~1e-19 in float32)."""
        shape = self._extended_shape(sample_shape)
        noise = logistic(shape, self.log_alpha)
        lo, hi = self.stretch
        z = self.log_alpha + noise
        beta = self.temperature
        with torch.no_grad():
            stretched = lo + (hi - lo) * torch.sigmoid(z / beta)
            clipped = (stretched < 0) | (stretched > 1)
        # the same β (same values); where the sample is clipped, a β with no gradient path
        s = torch.sigmoid(z / torch.where(clipped, beta.detach(), beta))
        return (lo + (hi - lo) * s).clamp(0, 1)

    def _interior_nodes(self) -> tuple[Tensor, Tensor]:
        """Gauss–Legendre nodes L (n, *batch) over (L0, L1) and weights × p_L(L) (n, *batch).

        An interval up to ``_WIDE_NOISE_INTERVAL`` logistic units long (β <= 7.5 for the default
        stretch) takes the nodes in L; a longer one, where a few nodes would straddle the
        logistic peak (at β ~ 1e3 the rule once gave ∫ p_L = 30), takes them in the logistic
        CDF u = σ(L) over (σ(L0), σ(L1)), whose weights sum to the interior mass exactly; log u
        and log(1 − u) are interpolated separately so L = log u − log(1 − u) keeps its digits
        (and stays finite where σ(L0) and σ(L1) underflow)."""
        l0, l1 = self._noise_bounds()
        x, w = gauss_legendre(self.quadrature_nodes, self.log_alpha)
        shape = (-1,) + (1,) * len(self.batch_shape)
        x, w = x.reshape(shape), w.reshape(shape)
        half = (l1 - l0) / 2
        noise = l0 + half * (1 + x)  # not (l0 + l1)/2 + ...: l0 + l1 overflows at |log α| ~ max
        weights = w * half * torch.sigmoid(noise) * torch.sigmoid(-noise)
        wide = half > _WIDE_NOISE_INTERVAL / 2
        left, right = ((1 - x) / 2).log(), ((1 + x) / 2).log()  # interpolation in log space
        log_u = torch.logaddexp(logsigmoid(l0) + left, logsigmoid(l1) + right)
        log_v = torch.logaddexp(logsigmoid(-l0) + left, logsigmoid(-l1) + right)  # log(1 − u)
        noise_u = log_u - log_v
        weights_u = w * self._interior_mass() / 2
        return torch.where(wide, noise_u, noise), torch.where(wide, weights_u, weights)

    def _y_of_noise(self, noise: Tensor) -> Tensor:
        lo, hi = self.stretch
        return lo + (hi - lo) * torch.sigmoid((self.log_alpha + noise) / self.temperature)

    def _interior_mass(self) -> Tensor:
        """P(0 < y < 1) = σ(L1) − σ(L0), without cancellation in either tail."""
        l0, l1 = self._noise_bounds()
        return torch.where(l0 > 0, torch.sigmoid(-l0) - torch.sigmoid(-l1),
                           torch.sigmoid(l1) - torch.sigmoid(l0))

    def _interior_entropy(self) -> Tensor:
        """−∫_0^1 p log p = −∫ p_L log p_L dL + ∫ p_L log(dy/dL) dL over (L0, L1).

        The first integral is closed form, F(L1) − F(L0) with
        F(L) = σ(L) logσ(L) − σ(−L) logσ(−L) − 2σ(L) (F' = p_L log p_L); the second, with
        log dy/dL = log((r − l)/β) + logσ(x) + logσ(−x), x = (log α + L)/β, by Gauss–Legendre.
        """
        l0, l1 = self._noise_bounds()

        def antiderivative(t: Tensor) -> Tensor:
            return (torch.sigmoid(t) * logsigmoid(t) - torch.sigmoid(-t) * logsigmoid(-t)
                    - 2 * torch.sigmoid(t))

        lo, hi = self.stretch
        noise, weights = self._interior_nodes()
        x = (self.log_alpha + noise) / self.temperature
        log_sech = -x.abs() - 2 * torch.log1p(torch.exp(-x.abs()))  # logσ(x) + logσ(−x)
        # finite where x overflowed (|log α| near finfo.max): its node weight is 0 there
        log_sech = log_sech.clamp_min(torch.finfo(log_sech.dtype).min)
        return (antiderivative(l0) - antiderivative(l1)
                + (math.log(hi - lo) - self.temperature.log()) * self._interior_mass()
                + (weights * log_sech).sum(0))

    @property
    def mean(self) -> Tensor:
        """E[y] = P1 + ∫_0^1 y p(y) dy (Gauss–Legendre in L)."""
        noise, weights = self._interior_nodes()
        return self.prob_one() + (weights * self._y_of_noise(noise)).sum(0)

    def entropy(self) -> Tensor:
        """Direct-sum entropy −P0 log P0 − P1 log P1 − ∫_0^1 p log p (closed form + quadrature)."""
        return self._mass_entropy() + self._interior_entropy()


class MixedUniform(CheckedDistribution):
    """The uniform mixed prior on [0, 1]: ⅓ δ_0 + ⅓ δ_1 + ⅓ U(0, 1); log-density −log 3 everywhere.

    Args:
        dtype, device: of samples and of the (constant) entropy; batch shape () (use ``expand``).
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 validate_args: bool | None = None) -> None:
        self._like = torch.zeros((), dtype=dtype or torch.get_default_dtype(), device=device)
        super().__init__(torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(MixedUniform, _instance)
        new._like = self._like
        super(MixedUniform, new).__init__(torch.Size(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def prob_zero(self) -> Tensor:
        return torch.full(self.batch_shape, 1 / 3, dtype=self._like.dtype, device=self._like.device)

    prob_one = prob_zero

    def log_prob(self, value: Tensor) -> Tensor:
        shape = checked_value(self, value).shape
        return torch.full(shape, -math.log(3), dtype=value.dtype, device=value.device)

    def entropy(self) -> Tensor:
        return torch.full(self.batch_shape, math.log(3), dtype=self._like.dtype,
                          device=self._like.device)

    @property
    def mean(self) -> Tensor:
        return torch.full(self.batch_shape, 0.5, dtype=self._like.dtype, device=self._like.device)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        like = self._like
        face = torch.randint(3, shape, device=like.device)
        u = torch.rand(shape, dtype=like.dtype, device=like.device)
        return torch.where(face == 2, u, face.to(like.dtype))


@register_kl(BinaryGaussianSparsemax, BinaryGaussianSparsemax)
def _kl_bgs_bgs(p: BinaryGaussianSparsemax, q: BinaryGaussianSparsemax) -> Tensor:
    """Masses Σ P log(P/Q) plus ∫_0^1 N_p log(N_p/N_q) in closed form (truncated moments of p),
    written so that each term is exactly 0 where the parameters coincide; ≥ 0 (rounding clamped).
    Computed in float64: the interior terms scale like (σ_p/σ_q)² and ((μ_p − μ_q)/σ_q)², which
    overflowed float32 with opposite signs (NaN) where the KL is merely huge."""
    check_kl_shapes(p, q)
    dtype = p.loc.dtype
    p, q = p._working(torch.float64), q._working(torch.float64)
    masses = _mass_kl(p, q)
    z0, z1, z2 = p._truncated_moments()
    ratio, shift = p.scale / q.scale, (p.loc - q.loc) / q.scale  # not / σ_q², which underflows
    # a moment that is 0 (no interior mass) zeroes its term even where its factor overflows
    interior = (_times(q.scale.log() - p.scale.log(), z0)
                + 0.5 * _times(ratio**2 - 1, z2)
                + _times(ratio * shift, z1) + 0.5 * _times(shift * shift, z0))
    return (masses + interior).clamp_min(0).to(dtype)


@register_kl(HardConcrete, HardConcrete)
def _kl_hc_hc(p: HardConcrete, q: HardConcrete) -> Tensor:
    """Masses Σ P log(P/Q) plus ∫_0^1 p log p − ∫_0^1 p log q, the latter by Gauss–Legendre in
    p's logistic variable; ≥ 0 (rounding clamped), exactly 0 where the parameters coincide."""
    check_kl_shapes(p, q)
    # p's nodes carry a leading node dim: both sides on the common batch shape first (a q of a
    # larger batch than p's did not broadcast against them)
    p, q = on_common_batch(p, q)
    noise, weights = p._interior_nodes()
    if p.stretch == q.stretch:  # q's density at p's logit x = (log α + L)/β itself
        at = q._interior_log_prob_at_logit((p.log_alpha + noise) / p.temperature)
    else:
        at = q.interior_log_prob(p._y_of_noise(noise))
    cross = (weights * at).sum(0)
    kl = (_mass_kl(p, q) - p._interior_entropy() - cross).clamp_min(0)
    same = (p.log_alpha == q.log_alpha) & (p.temperature == q.temperature) & (
        p.stretch == q.stretch)
    return torch.where(same, torch.zeros_like(kl), kl)


@register_kl(_MixedUnitInterval, MixedUniform)
def _kl_mixed_uniform(p: _MixedUnitInterval, q: MixedUniform) -> Tensor:
    """KL(p ‖ ⅓δ_0 + ⅓δ_1 + ⅓U) = log 3 − H⊕(p)."""
    check_kl_shapes(p, q)
    shape = torch.broadcast_shapes(p.batch_shape, q.batch_shape)
    return (math.log(3) - p.entropy()).clamp_min(0).expand(shape).contiguous()


def _mass_kl(p: _MixedUnitInterval, q: _MixedUnitInterval) -> Tensor:
    """``P0 log(P0/Q0) + P1 log(P1/Q1)``: a mass that underflows to 0 (log P = -inf)
    contributes 0, with a zero gradient (the product sees a log-ratio of 0 there, not
    -inf - log Q, whose gradient times the mass's 0 was NaN)."""
    out = 0
    for log_p, log_q in ((p.log_prob_zero(), q.log_prob_zero()), (p.log_prob_one(),
                                                                  q.log_prob_one())):
        mass = log_p.exp()
        positive = mass > 0
        ratio = torch.where(positive, log_p - log_q, 0.0)
        out = out + torch.where(positive, mass * ratio, 0.0)
    return out
