"""Invertible Gaussian reparameterisation (IGR; Potapczynski et al. 2020).

A Gaussian ``κ = loc + scale · ε`` (ε ~ N(0, I) in R^{K−1}) is pushed into the open K-simplex by
an invertible map, then softmax++: ``ψ = softmax_pp(λ; τ, δ)`` with

- ``IGR`` (IGR-I): ``λ = κ``;
- ``IGRStickBreaking`` (IGR-SB): ``λ = stick_breaking(σ(κ))``, adaptively truncated, so a finite
  ``loc`` of length ``K_max − 1`` approximates a countably infinite support;
- ``IGRPlanar``: ``λ = f_L ∘ … ∘ f_1(κ)`` with invertible planar flows (``PlanarFlow``).

Log-densities are by change of variables (density of the first K−1 coordinates of ψ):
``log q(ψ) = log N(κ; loc, scale²) − log|det ∂λ/∂κ| − Σ_{k=1}^{K} log ψ_k + (K−1) log τ``.
``rsample_with_log_prob`` evaluates it at the sample's own noise (no inversion, exact at any τ);
``log_prob`` inverts the map. With ``stl=True`` (sticking the landing, Roeder et al. 2017) the
densities returned with a draw keep their value but are differentiated along the draw's path only,
as ``log q_φ̄(ψ(φ))`` with the density's own parameters φ̄ (loc, scale, the flows) held fixed: the
score term ``∇_φ log q_φ(ψ)``, whose expectation is zero, is dropped. The temperature is a float
or a tensor broadcastable to the batch shape (it may require grad); ``delta`` is a positive float
(δ = 1 in the paper).

At low temperature the smallest entries of ψ underflow (``log ψ_k ≈ −Δλ/τ``): draws raise every
entry to the dtype's smallest normal number (``open_simplex_point``), so they stay in the open
simplex and ``log_prob`` is finite on them at any τ > 0; the densities returned with a draw are
those of the unclamped point (they differ only in entries below ~1e-38 in float32).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, constraints, register_kl

from .._dtypes import working_dtype
from .._one_hot import one_hot
from .._validation import (
    broadcast_shapes,
    check_finite,
    check_positive,
    check_positive_int,
    check_tensor,
    violated,
)
from ..mappings import (
    log_softmax_pp,
    softmax_pp_inverse,
    softmax_pp_log_abs_det_jacobian,
    stick_breaking_logits,
    stick_breaking_logits_inverse,
    stick_breaking_logits_log_abs_det_jacobian,
)
from ._gauss_quadrature import gauss_legendre
from ._log_ndtr import log_ndtr
from ._params import (
    CheckedDistribution,
    broadcast_params,
    check_kl_shapes,
    checked_value,
    finite_positive,
    finite_positive_vector,
    finite_vector,
    on_common_batch,
    validating,
)

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class _OpenSimplex(constraints.Constraint):
    """Points with every entry > 0 summing to 1 along the last dim (dtype-aware tolerance)."""

    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        tol = math.sqrt(torch.finfo(value.dtype).eps)
        return (value > 0).all(dim=-1) & ((value.sum(dim=-1) - 1).abs() <= tol)


class _TruncatedSimplex(constraints.Constraint):
    """Simplex points whose positive entries form a prefix of length >= 2 (zero padding after)."""

    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        tol = math.sqrt(torch.finfo(value.dtype).eps)
        pos = value > 0
        prefix = (pos[..., 1:] <= pos[..., :-1]).all(dim=-1)
        return (
            (value >= 0).all(dim=-1)
            & prefix
            & (pos.sum(dim=-1) >= 2)
            & ((value.sum(dim=-1) - 1).abs() <= tol)
        )


open_simplex = _OpenSimplex()
truncated_simplex = _TruncatedSimplex()


def one_hot_argmax(x: Tensor) -> Tensor:
    """One-hot of ``argmax`` over the last dim, in ``x``'s dtype: ``(..., K) -> (..., K)``."""
    return one_hot(x.argmax(dim=-1), x.shape[-1], x.dtype)


def uniform_prior_loc(num_categories: int, scale: float | Tensor = 1.0) -> Tensor:
    """Location ``μ₀ = −σ₀ Φ⁻¹(K^{−1/(K−1)})`` of the isotropic IGR-I prior whose zero-temperature
    pmf is exactly uniform: then ``P(K) = Φ(−μ₀/σ₀)^{K−1} = 1/K`` and the other
    categories share the rest by symmetry. Returns a tensor shaped like ``scale`` (0-dim for a
    float; float64 unless ``scale`` is a tensor); broadcast it to ``(..., K−1)``."""
    k = num_categories
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"num_categories must be an int >= 2, got {k!r}")
    dtype = scale.dtype if isinstance(scale, Tensor) else torch.float64
    scale_t = torch.as_tensor(scale, dtype=dtype)
    check_positive(scale_t, "scale")
    quantile = torch.special.ndtri(torch.tensor(k ** (-1.0 / (k - 1)), dtype=torch.float64))
    return -scale_t * quantile.to(scale_t)


def check_truncation(eps: object, quantile: object) -> tuple[float, float]:
    """Validate the IGR-SB truncation arguments: ``eps`` in [0, 1), ``quantile`` in (0, 1]."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
        raise ValueError(f"eps must be a float in [0, 1), got {eps!r}")
    q = quantile
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
        raise ValueError(f"quantile must be a float in (0, 1], got {quantile!r}")
    return float(eps), float(q)


def _gaussian_kl(mu_p: Tensor, log_sig_p: Tensor, mu_q: Tensor, log_sig_q: Tensor) -> Tensor:
    """``KL(N(μ_p, σ_p²) ‖ N(μ_q, σ_q²))`` of diagonal Gaussians from their log-scales, summed
    over the last dim; each coordinate's term ≥ 0 (rounding clamped), exactly 0 where the
    parameters coincide. ``(μ_p − μ_q)/σ_q`` is formed without overflow: ``1/σ_q`` as two finite
    factors (σ_q below the smallest normal number) and ``μ_p − μ_q`` halved where it overflows.
    Half precision is computed in float32."""
    dtype, work = mu_p.dtype, working_dtype(mu_p.dtype)
    mu_p, log_sig_p, mu_q, log_sig_q = (t.to(work) for t in (mu_p, log_sig_p, mu_q, log_sig_q))
    log_ratio = 2 * (log_sig_p - log_sig_q)  # not the log of an overflowed (σ_p/σ_q)²
    info = torch.finfo(work)
    inv = (-log_sig_q).clamp(max=-math.log(info.tiny))  # exp(−log σ_q) = exp(inv)·exp(rest)
    rest = (-log_sig_q - inv).clamp(max=math.log(info.max) - 1)  # clamped: z² overflows anyway
    diff = mu_p - mu_q
    halved = ~torch.isfinite(diff)
    diff = torch.where(halved, mu_p / 2 - mu_q / 2, diff)
    z = diff * inv.exp() * rest.exp() * (1 + halved.to(work))
    per_coord = log_ratio.exp() + z.pow(2) - 1 - log_ratio
    return (0.5 * per_coord.clamp_min(0).sum(dim=-1)).to(dtype)


def _noise_log_prob(eps: Tensor, log_scale: Tensor) -> Tensor:
    """``log N(loc + scale·ε; loc, diag scale²) = Σ −ε²/2 − log σ − ½ log 2π`` over the last dim."""
    return (-0.5 * eps.pow(2) - log_scale - _HALF_LOG_2PI).sum(dim=-1)


def _gauss_log_prob(kappa: Tensor, loc: Tensor, scale: Tensor, log_scale: Tensor) -> Tensor:
    """``log N(κ; loc, diag scale²)`` summed over the last dim."""
    return _noise_log_prob((kappa - loc) / scale, log_scale)


def _apply_flows(
    flows: Sequence[PlanarFlow], kappa: Tensor
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """``λ = f_L ∘ … ∘ f_1(κ)``, ``Σ_l log|det_l|`` and the input of each flow (no flows: ``κ``,
    0 and ``[]``)."""
    log_det = torch.zeros_like(kappa[..., 0])
    inputs = []
    for flow in flows:
        inputs.append(kappa)
        kappa, ld = flow(kappa)
        log_det = log_det + ld
    return kappa, log_det, inputs


def _path_gauss_log_prob(eps: Tensor, log_scale: Tensor, kappa: Tensor) -> Tensor:
    """``log N(κ; loc, scale²)`` at ``κ = loc + scale·ε`` summed over the last dim, with the
    gradient of sticking the landing: the value from the noise, differentiated only through ``κ``
    (``∂/∂κ = −ε/σ``, the parameters held fixed). The coefficient ``−ε·exp(−log σ)`` is kept
    below ``finfo.max / (1 + |ε|)`` in magnitude, so that it and its product with ``∂κ/∂σ = ε``
    stay finite where σ is near the dtype's smallest normal number (a large finite gradient,
    not inf, nor NaN where a clamped σ passes zero gradient on)."""
    limit = torch.finfo(kappa.dtype).max / (1 + eps.detach().abs())
    coeff = torch.minimum(torch.maximum(-eps * (-log_scale).exp(), -limit), limit).detach()
    value = _noise_log_prob(eps, log_scale).detach()
    return value + (coeff * (kappa - kappa.detach())).sum(dim=-1)


def open_simplex_point(log_psi: Tensor, dtype: torch.dtype) -> Tensor:
    """``exp(log ψ)`` in ``dtype`` with every entry raised to at least that dtype's smallest normal
    number, so a point whose smallest probabilities underflow (low temperature:
    ``log ψ_k ≈ −Δλ/τ``) stays in the open simplex (its sum moves by at most ``K · tiny``)."""
    return log_psi.clamp_min(math.log(torch.finfo(dtype).tiny)).exp().to(dtype)


class _IGRBase(CheckedDistribution):
    """Shared parameters and sampling of the IGR family (not public: each variant has its own
    KL registrations, which a common public base would blur)."""

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "loc": finite_vector,
        "scale": finite_positive_vector,
        "temperature": finite_positive,
    }
    support = open_simplex
    has_rsample = True

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor | float,
        temperature: Tensor | float,
        delta: float = 1.0,
        validate_args: bool | None = None,
        *,
        log_scale: Tensor | None = None,
    ) -> None:
        check_tensor(loc, "loc")
        if loc.dim() < 1 or loc.shape[-1] < 1:
            raise ValueError(
                f"loc must have shape (*batch, K-1) with K-1 >= 1, got {tuple(loc.shape)}"
            )
        if isinstance(scale, Tensor):
            check_tensor(scale, "scale")
        self.loc, self.scale = broadcast_params(loc=loc, scale=scale)
        if isinstance(temperature, Tensor):
            check_tensor(temperature, "temperature")
            tau = temperature.to(device=loc.device, dtype=self.loc.dtype)
        elif isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
            tau = torch.tensor(float(temperature), device=loc.device, dtype=self.loc.dtype)
        else:
            raise TypeError(
                f"temperature must be a float or a tensor, got {type(temperature).__name__}"
            )
        if isinstance(delta, bool) or not isinstance(delta, (int, float)):
            raise TypeError(f"delta must be a positive float, got {type(delta).__name__}")
        if not (0 < delta < math.inf):
            raise ValueError(f"delta must be a finite positive float, got {delta}")
        self.delta = float(delta)
        batch_shape = broadcast_shapes(self.loc.shape[:-1], tau.shape, error=lambda: (
            f"temperature of shape {tuple(tau.shape)} does not broadcast with the batch shape "
            f"{tuple(self.loc.shape[:-1])} of loc/scale"
        ))
        k1 = self.loc.shape[-1]
        self.loc = self.loc.expand((*batch_shape, k1))
        self.scale = self.scale.expand((*batch_shape, k1))
        self.temperature = tau.expand(batch_shape)
        self._log_scale = None
        if log_scale is not None:
            check_tensor(log_scale, "log_scale")
            if validating(validate_args):
                check_finite(log_scale, "log_scale")
            try:
                fits = torch.broadcast_shapes(log_scale.shape, self.scale.shape) == self.scale.shape
            except RuntimeError:
                fits = False
            if not fits or log_scale.dtype != self.scale.dtype:
                raise ValueError(
                    f"log_scale must broadcast to the scale's shape {tuple(self.scale.shape)} and "
                    f"have its dtype {self.scale.dtype}, got {tuple(log_scale.shape)} "
                    f"{log_scale.dtype}"
                )
            self._log_scale = log_scale.expand(self.scale.shape)
        super().__init__(batch_shape, torch.Size((k1 + 1,)), validate_args=validate_args)

    @property
    def log_scale(self) -> Tensor:
        """``log σ`` ``(*batch, K−1)``: the ``log_scale`` given to the constructor, else
        ``scale.log()``."""
        return self.scale.log() if self._log_scale is None else self._log_scale

    def _expand_params(self, new: _IGRBase, batch_shape: torch.Size) -> None:
        k1 = self.loc.shape[-1]
        new.loc = self.loc.expand((*batch_shape, k1))
        new.scale = self.scale.expand((*batch_shape, k1))
        new._log_scale = None if self._log_scale is None else self._log_scale.expand(
            (*batch_shape, k1))
        new.temperature = self.temperature.expand(batch_shape)
        new.delta = self.delta
        Distribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args

    @property
    def num_categories(self) -> int:
        return self.event_shape[0]

    def _noise(self, sample_shape: Sequence[int]) -> Tensor:
        shape = self._extended_shape(sample_shape)[:-1] + self.loc.shape[-1:]
        return torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)

    def _draw(
        self, sample_shape: Sequence[int], densities: bool = True, stl: bool = False
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:  # pragma: no cover - abstract
        """One reparameterised draw: ``ψ``, ``log q(ψ)``, the point ``u`` where this variant's
        prior is Gaussian (IGR-I: κ; SB: the kept κ; planar: λ, since its prior is an IGR-I) and
        ``log q(u)``; both densities ``None`` unless ``densities``, and differentiated along the
        draw's path only where ``stl`` (``rsample_with_log_prob``). The maps from ``u`` to ψ are
        shared with the prior, so their Jacobians cancel in
        ``log q(ψ) − log p(ψ) = log q(u) − log N(u; μ₀, σ₀²)``."""
        raise NotImplementedError

    @classmethod
    def _prior_class(cls) -> type[_IGRBase]:
        """The family of priors with the same map (its own, except for IGR-Planar)."""
        return cls

    def _softmax_pp_draw(
        self, sample_shape: Sequence[int], flows: Sequence[PlanarFlow], densities: bool,
        stl: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """``_draw`` of ``ψ = softmax_pp(λ)``, ``λ = flows(κ)``, ``κ = loc + scale·ε``:
        ``log q(λ) = log N(κ; loc, scale²) − Σ log|det flows|`` is returned with λ."""
        eps = self._noise(sample_shape)
        info = torch.finfo(self.loc.dtype)
        # loc + scale·ε overflowing: the vertex it points at (before the flows too: an infinite
        # entry gave them inf - inf = NaN)
        kappa = (self.loc + self.scale * eps).clamp(-info.max, info.max)
        lam, flow_log_det, inputs = _apply_flows(flows, kappa)
        lam = lam.clamp(-info.max, info.max)
        dtype = lam.dtype  # half precision: softmax++ and its Jacobian in float32
        work, tau = working_dtype(dtype), self.temperature
        log_psi = log_softmax_pp(lam.to(work), tau.to(work), self.delta)
        log_psi = log_psi.clamp_min(torch.finfo(work).min)  # an underflowed ψ_k: log ψ_k finite
        if not densities:
            return open_simplex_point(log_psi, dtype), None, lam, None
        if stl:
            # log q_φ̄(λ) at the fixed parameters: λ pulled back through the frozen flows (values
            # unchanged, Jacobians inverted), then the Gaussian differentiated through κ only
            point, flow_log_det = lam, torch.zeros_like(flow_log_det)
            for flow, flow_input in zip(reversed(flows), reversed(inputs)):
                point = flow.pulled_back(point, flow_input)
                flow_log_det = flow_log_det + flow(point, frozen=True)[1]
            log_lam = _path_gauss_log_prob(eps, self.log_scale, point) - flow_log_det
        else:
            log_lam = _noise_log_prob(eps, self.log_scale) - flow_log_det
        log_det = softmax_pp_log_abs_det_jacobian(log_psi, tau.to(work), log_input=True)
        log_q = (log_lam.to(work) - log_det).to(dtype)
        return open_simplex_point(log_psi, dtype), log_q, lam, log_lam

    def _softmax_pp_log_prob(self, value: Tensor, flows: Sequence[PlanarFlow]) -> Tensor:
        """``log q(ψ)`` of ``ψ = softmax_pp(flows(κ))`` by inverting softmax++ and then each
        flow (numerically): ``(*sample, *batch, K) -> (*sample, *batch)``."""
        log_psi = checked_value(self, value).log()
        z = softmax_pp_inverse(log_psi, self.temperature, self.delta, log_input=True)
        for flow in reversed(flows):
            z = flow.inverse(z)
        _, flow_log_det, _ = _apply_flows(flows, z)
        log_det = softmax_pp_log_abs_det_jacobian(log_psi, self.temperature, log_input=True)
        return _gauss_log_prob(z, self.loc, self.scale, self.log_scale) - flow_log_det - log_det

    def rsample_with_log_prob(
        self, sample_shape: Sequence[int] = (), *, stl: bool = False
    ) -> tuple[Tensor, Tensor]:
        """A reparameterised sample ``(*sample_shape, *batch, K)`` and its log-density
        ``(*sample_shape, *batch)``, computed from the sample's own noise (no inversion).

        ``stl``: sticking the landing (Roeder et al. 2017): the same value, differentiated as
        ``log q_φ̄(ψ(φ))`` with the parameters φ̄ (loc, scale and, for IGR-Planar, the flows)
        held fixed, so only the path through the sample carries gradient."""
        psi, log_q, _, _ = self._draw(sample_shape, stl=stl)
        return psi, log_q

    def rsample_with_kl(
        self, prior: _IGRBase, sample_shape: Sequence[int] = (), *, stl: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(ψ, log q(ψ), log q(ψ) − log p(ψ))`` at one reparameterised draw: the one-sample KL
        estimate to ``prior`` (same map, temperature and delta: an ``IGR`` prior for IGR-I and
        IGR-Planar, an ``IGRStickBreaking`` prior for IGR-SB), computed where both densities are
        Gaussian-based so the shared Jacobians cancel exactly. Batch shapes broadcast (the
        result has the common one). ``stl``: ``log q`` differentiated along the sample's path
        only (``rsample_with_log_prob``); where q equals the prior, the KL's gradient is then
        exactly 0 at every draw."""
        if not isinstance(prior, self._prior_class()):
            raise TypeError(
                f"prior of {type(self).__name__} must be a {self._prior_class().__name__}, "
                f"got {type(prior).__name__}"
            )
        if prior.event_shape != self.event_shape:
            raise ValueError(
                f"prior has event_shape {prior.event_shape}, expected {self.event_shape}"
            )
        broadcast_shapes(self.batch_shape, prior.batch_shape, error=lambda: (
            f"prior's batch shape {tuple(prior.batch_shape)} does not broadcast with "
            f"{tuple(self.batch_shape)}"))
        _check_same_map(self, prior)
        # draws carry this distribution's batch shape: on the common one first (a prior of a
        # larger batch, which kl_divergence also broadcasts)
        q, prior = on_common_batch(self, prior)
        psi, log_q, point, log_q_point = q._draw(sample_shape, stl=stl)
        n = point.shape[-1]
        log_p_point = _gauss_log_prob(
            point, prior.loc[..., :n], prior.scale[..., :n], prior.log_scale[..., :n]
        )
        return psi, log_q, log_q_point - log_p_point

    def kl_mc(self, prior: _IGRBase, n_samples: int = 1) -> Tensor:
        """Monte Carlo ``KL(self ‖ prior)`` over ``n_samples`` draws, ``(*batch,)``; see
        ``rsample_with_kl``. Differentiable. (IGR-SB: the KL of the truncated variables.)"""
        check_positive_int(n_samples, "n_samples")
        return self.rsample_with_kl(prior, (n_samples,))[2].mean(dim=0)

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        return self._draw(sample_shape, densities=False)[0]

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def sample_hard(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """One-hot ``argmax ψ`` of a sample (no grad): ``(*sample_shape, *batch, K)``."""
        return one_hot_argmax(self.sample(sample_shape))

    def entropy_mc(self, n_samples: int) -> Tensor:
        """Monte Carlo entropy ``−mean_s log q(ψ_s)`` over ``n_samples`` reparameterised draws
        (no closed form exists); ``(*batch,)``, differentiable in the parameters."""
        check_positive_int(n_samples, "n_samples")
        return -self.rsample_with_log_prob((n_samples,))[1].mean(dim=0)


def _check_same_map(p: _IGRBase, q: _IGRBase) -> None:
    differ = p.temperature is not q.temperature and violated(  # a value check: one sync
        p.temperature, lambda tau: tau == q.temperature)
    if p.delta != q.delta or differ:
        tau_p = p.temperature.detach().unique().tolist()
        tau_q = q.temperature.detach().unique().tolist()
        raise ValueError(
            f"kl_divergence({type(p).__name__}, {type(q).__name__}) equals the Gaussian KL of the "
            f"noise only when both use the same temperature and delta; got temperatures {tau_p} / "
            f"{tau_q}, delta {p.delta} / {q.delta}"
        )


class IGR(_IGRBase):
    """IGR-I: ``ψ = softmax_pp(loc + scale · ε; τ, δ)`` on the open K-simplex.

    Args:
        loc: ``(*batch, K−1)`` Gaussian location μ.
        scale: ``(*batch, K−1)`` (or broadcastable, or a float) Gaussian scale σ > 0.
        temperature: τ > 0, float or tensor broadcastable to the batch shape.
        delta: δ > 0, mass parameter of category K (softmax++).
        log_scale: optionally ``log σ``, shaped and typed like the broadcast ``scale``; the
            log-densities and KLs then use it instead of ``scale.log()``, exact where
            ``σ = exp(log_scale)`` under- or overflows the dtype and was clamped (all variants);
            checked finite when the distribution validates its arguments.

    ``event_shape = (K,)``. ``kl_divergence(IGR, IGR)`` is the exact Gaussian KL (same τ and δ
    required). ``zero_temperature_pmf`` gives the categorical distribution that samples approach
    as τ → 0. Binary IGR is K = 2.
    """

    def expand(self, batch_shape: Sequence[int], _instance: IGR | None = None) -> IGR:
        new = self._get_checked_instance(IGR, _instance)
        self._expand_params(new, torch.Size(batch_shape))
        return new

    def _draw(self, sample_shape: Sequence[int], densities: bool = True,
              stl: bool = False) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        return self._softmax_pp_draw(sample_shape, (), densities, stl)

    def log_prob(self, value: Tensor) -> Tensor:
        """``log q(ψ)`` by inverting softmax++: ``(*sample, *batch, K) -> (*sample, *batch)``.

        A draw whose smallest probabilities underflowed was raised to the smallest normal
        number there (``open_simplex_point``), which the inversion cannot undo: at such a point
        the value is not the draw's density (−9e5 against 326 nats, float32, |loc| ~ 30,
        σ = 0.01, τ = 0.5), and its gradient through the draw can overflow to inf or NaN. For
        draws, ``rsample_with_log_prob`` computes the density from the draw's own noise.
        """
        return self._softmax_pp_log_prob(value, ())

    def zero_temperature_pmf(self, n_nodes: int = 32) -> Tensor:
        """``lim_{τ→0}`` of the category probabilities, ``(*batch, K)``, by Gauss–Legendre.

        As τ → 0, ψ becomes one-hot at ``argmax_k κ_k`` if ``max κ > 0``, else at K (δ fixed), so
        ``P(k) = ∫_0^∞ N(t; μ_k, σ_k²) Π_{j≠k} Φ((t − μ_j)/σ_j) dt`` for k < K and
        ``P(K) = Π_j Φ(−μ_j/σ_j)``. Each integral runs over ``[max(0, μ_k − 10σ_k), μ_k + 10σ_k]``,
        cut into panels at ``μ_j ± 6σ_j`` (where each factor varies fastest, so narrow factors are
        resolved whatever the scale ratios), with ``n_nodes`` (>= 16) nodes per panel, i.e.
        ``(2K − 1) · n_nodes`` >= 96 nodes per integral (32 per panel: ~1e-12 against adaptive
        quadrature even for scale ratios of 1e-3). The integrand is summed in log space with
        ``log_ndtr``. Cost O(K³ · n_nodes) per batch element: an evaluation tool, not a
        training-path op. Differentiable in loc and scale.
        """
        if isinstance(n_nodes, bool) or not isinstance(n_nodes, int) or n_nodes < 16:
            raise ValueError(f"n_nodes must be an int >= 16 (nodes per panel), got {n_nodes!r}")
        mu, sig = self.loc, self.scale
        k1 = mu.shape[-1]
        tiny = torch.finfo(mu.dtype).tiny
        lo = (mu - 10 * sig).clamp(min=0).unsqueeze(-1)  # (*b, K-1, 1)
        hi = torch.maximum((mu + 10 * sig).clamp(min=0).unsqueeze(-1), lo)
        cuts = torch.cat([mu - 6 * sig, mu + 6 * sig], dim=-1).unsqueeze(-2)  # (*b, 1, 2(K-1))
        edges = torch.cat([lo, torch.minimum(torch.maximum(cuts, lo), hi), hi], dim=-1)
        edges = edges.sort(dim=-1).values  # (*b, K-1, P + 1) panel edges per category
        left, width = edges[..., :-1], (edges[..., 1:] - edges[..., :-1]).clamp(min=tiny)
        nodes, weights = gauss_legendre(n_nodes, like=mu)
        t = (left.unsqueeze(-1) + width.unsqueeze(-1) * (nodes + 1) / 2).flatten(-2)
        log_w = (weights.log() + (width / 2).log().unsqueeze(-1)).flatten(-2)  # (*b, K-1, P·n)
        std = (t.unsqueeze(-1) - mu[..., None, None, :]) / sig[..., None, None, :]  # (*b,k,n,j)
        log_cdf = log_ndtr(std)
        eye = torch.eye(k1, dtype=torch.bool, device=mu.device).unsqueeze(-2)  # (k, 1, j)
        others = log_cdf.masked_fill(eye, 0.0).sum(dim=-1)  # (*b, K-1, P·n)
        own = (t - mu.unsqueeze(-1)) / sig.unsqueeze(-1)
        log_pdf = -0.5 * own.pow(2) - sig.log().unsqueeze(-1) - _HALF_LOG_2PI
        log_p = torch.logsumexp(log_w + log_pdf + others, dim=-1)
        log_last = log_ndtr(-mu / sig).sum(dim=-1, keepdim=True)
        return torch.cat([log_p, log_last], dim=-1).exp()

    @classmethod
    def uniform_prior(
        cls,
        num_categories: int,
        temperature: Tensor | float,
        scale: float = 1.0,
        delta: float = 1.0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> IGR:
        """The isotropic IGR-I prior whose zero-temperature pmf is exactly uniform (batch ())."""
        dtype = dtype or torch.get_default_dtype()
        loc = uniform_prior_loc(num_categories, float(scale)).to(dtype=dtype, device=device)
        loc = loc.expand(num_categories - 1)
        scale_t = torch.full_like(loc, float(scale))
        return cls(loc, scale_t, temperature, delta)


@register_kl(IGR, IGR)
def _kl_igr_igr(p: IGR, q: IGR) -> Tensor:
    check_kl_shapes(p, q)
    _check_same_map(p, q)
    return _gaussian_kl(p.loc, p.log_scale, q.loc, q.log_scale)


class IGRStickBreaking(_IGRBase):
    """IGR-SB: ``ψ = softmax_pp(π; τ, δ)``, ``π = stick_breaking(σ(κ))_{1:n*}``, κ ~ N(loc, scale²).

    ``loc``/``scale`` are ``(*batch, K_max − 1)``: one stick per possible category. Each draw keeps
    only the first ``n*`` sticks (adaptive truncation): per (sample, batch
    element) ``n = 1 + #{k : Σ_{j≤k} π_j ≤ 1 − eps}`` is the number of sticks whose cumulative mass
    first exceeds ``1 − eps``, and ``n* = quantile_q(n)`` over the whole draw (one host sync),
    clipped to ``[1, K_max − 1]``. ``ψ`` then has ``n* + 1`` positive entries (category ``n* + 1``
    holds the δ remainder) and is zero-padded to ``K_max``: ``event_shape = (K_max,)``. With
    ``quantile = 1`` every draw keeps mass ``> 1 − eps`` in its sticks (if ``K_max − 1`` sticks
    suffice); the reference used ``quantile = 0.5`` in its VAE. ``eps = 0`` disables truncation.
    Since π > 0, category ``n* + 1`` is never chosen as τ → 0.

    ``log_prob`` is the density of the truncated variable: it reads the truncation level from the
    number of positive entries, which must be the same for every value passed in one call (true of
    one ``rsample`` call). ``kl_divergence(IGRStickBreaking, IGRStickBreaking)`` is the exact
    Gaussian KL over all ``K_max − 1`` sticks (the untruncated variables; an upper bound of the KL
    of any truncation). Same τ and δ required.
    """

    support = truncated_simplex

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor | float,
        temperature: Tensor | float,
        eps: float,
        delta: float = 1.0,
        quantile: float = 1.0,
        validate_args: bool | None = None,
        *,
        log_scale: Tensor | None = None,
    ) -> None:
        self.eps, self.quantile = check_truncation(eps, quantile)
        super().__init__(loc, scale, temperature, delta, validate_args, log_scale=log_scale)

    def expand(
        self, batch_shape: Sequence[int], _instance: IGRStickBreaking | None = None
    ) -> IGRStickBreaking:
        new = self._get_checked_instance(IGRStickBreaking, _instance)
        new.eps, new.quantile = self.eps, self.quantile
        self._expand_params(new, torch.Size(batch_shape))
        return new

    def truncation_level(self, sticks: Tensor) -> int:
        """``n*`` for sticks ``π`` of shape ``(..., K_max − 1)`` (one host sync)."""
        k1 = self.loc.shape[-1]
        if not sticks.numel():
            return k1  # an empty draw: keep every stick
        needed = 1 + (sticks.detach().cumsum(dim=-1) <= 1 - self.eps).sum(dim=-1)
        level = torch.quantile(needed.flatten().float(), self.quantile, interpolation="higher")
        return int(min(max(int(level.item()), 1), k1))

    def _draw(self, sample_shape: Sequence[int], densities: bool = True,
              stl: bool = False) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        eps = self._noise(sample_shape)
        info = torch.finfo(self.loc.dtype)  # loc + scale·ε overflowing: the stick it points at
        kappa = (self.loc + self.scale * eps).clamp(-info.max, info.max)
        with torch.no_grad():
            n = self.truncation_level(stick_breaking_logits(kappa)[..., :-1])
        kappa_n, eps_n, log_scale_n = kappa[..., :n], eps[..., :n], self.log_scale[..., :n]
        sticks = stick_breaking_logits(kappa_n)[..., :-1]
        log_psi = log_softmax_pp(sticks, self.temperature, self.delta)
        psi = F.pad(open_simplex_point(log_psi, log_psi.dtype), (0, self.num_categories - n - 1))
        if not densities:
            return psi, None, kappa_n, None
        if stl:
            gauss = _path_gauss_log_prob(eps_n, log_scale_n, kappa_n)
        else:
            gauss = _noise_log_prob(eps_n, log_scale_n)
        log_q = (
            gauss
            - stick_breaking_logits_log_abs_det_jacobian(kappa_n)
            - softmax_pp_log_abs_det_jacobian(log_psi, self.temperature, log_input=True)
        )
        return psi, log_q, kappa_n, gauss

    def log_prob(self, value: Tensor) -> Tensor:
        """Density of the truncated variable at ``value`` ``(*sample, *batch, K_max)``."""
        value = checked_value(self, value)
        counts = (value > 0).sum(dim=-1)
        m = int(counts.max().item()) if counts.numel() else 2
        if violated(counts, lambda c: c == m):
            raise ValueError(
                "value mixes truncation levels (different numbers of positive entries); "
                "evaluate values from different rsample calls separately"
            )
        log_psi = value[..., :m].log()
        sticks = softmax_pp_inverse(log_psi, self.temperature, self.delta, log_input=True)
        remainder = 1 - sticks.sum(dim=-1, keepdim=True)
        # ψ in its dtype pins each stick τ(log ψ_k − log ψ_last + log δ) down only to about
        # 2τ·eps (plus the sum's rounding): a draw whose last stick or remainder is that close
        # to 0 reads as slightly outside the image. Within that resolution the value is taken as
        # the image point at distance tol from the boundary; beyond it, refused.
        eps = torch.finfo(value.dtype).eps
        tol = (4 * m * eps * (1 + self.temperature.abs())).unsqueeze(-1)
        if violated(sticks, lambda s: (s > -tol).all() & (remainder > -tol).all()):
            raise ValueError(
                "value is outside the image of the IGR-SB map: its sticks "
                "tau (log psi_k - log psi_last + log delta) must be positive and sum to < 1"
            )
        sticks, remainder = torch.maximum(sticks, tol), torch.maximum(remainder, tol)
        total = sticks.sum(dim=-1, keepdim=True) + remainder  # 1 up to that resolution
        sticks, remainder = sticks / total, remainder / total
        kappa = stick_breaking_logits_inverse(torch.cat([sticks, remainder], dim=-1))
        return (
            _gauss_log_prob(kappa, self.loc[..., : m - 1], self.scale[..., : m - 1],
                            self.log_scale[..., : m - 1])
            - stick_breaking_logits_log_abs_det_jacobian(kappa)
            - softmax_pp_log_abs_det_jacobian(log_psi, self.temperature, log_input=True)
        )


@register_kl(IGRStickBreaking, IGRStickBreaking)
def _kl_igr_sb(p: IGRStickBreaking, q: IGRStickBreaking) -> Tensor:
    check_kl_shapes(p, q, (p.loc.shape[-1:], q.loc.shape[-1:]))  # the noise's K - 1
    _check_same_map(p, q)
    return _gaussian_kl(p.loc, p.log_scale, q.loc, q.log_scale)


class PlanarFlow(nn.Module):
    """One invertible planar flow ``f(z) = z + û tanh(wᵀz + b)`` (Rezende & Mohamed 2015).

    ``û = u + (m(wᵀu) − wᵀu) w/‖w‖²`` with ``m(a) = softplus(a) − 1``, so ``wᵀû = m(wᵀu) > −1``
    and f is invertible; ``log|det ∂f/∂z| = log|1 + (1 − tanh²(wᵀz + b)) wᵀû|``.
    Parameters ``u, w`` have shape ``(*param_shape, dim)`` and ``b`` ``(*param_shape,)``: one flow
    per latent variable, shared across examples (not amortised), broadcast against ``z``.
    ``reference_form=True`` divides by ‖w‖ instead of ‖w‖², as the IGR code did;
    that f is invertible only when ‖w‖ = 1. Kept only to reproduce old runs.
    """

    def __init__(
        self, dim: int, param_shape: Sequence[int] = (), reference_form: bool = False
    ) -> None:
        super().__init__()
        check_positive_int(dim, "dim")
        shape = (*tuple(param_shape), dim)
        self.dim = dim
        self.reference_form = bool(reference_form)
        self.u = nn.Parameter(torch.randn(shape) / math.sqrt(dim))
        self.w = nn.Parameter(torch.randn(shape) / math.sqrt(dim))
        self.b = nn.Parameter(torch.zeros(shape[:-1]))

    def _params(self, frozen: bool) -> tuple[Tensor, Tensor, Tensor]:
        """``(û, w, b)``, detached where ``frozen``."""
        u, w, b = (p.detach() for p in (self.u, self.w, self.b)) if frozen else (
            self.u, self.w, self.b)
        wu = (w * u).sum(dim=-1, keepdim=True)
        sq_norm = w.pow(2).sum(dim=-1, keepdim=True)
        norm = sq_norm.sqrt() if self.reference_form else sq_norm
        return u + (F.softplus(wu) - 1 - wu) * w / norm, w, b

    def u_hat(self) -> Tensor:
        """The constrained direction ``û`` (``wᵀû = softplus(wᵀu) − 1`` unless reference_form)."""
        return self._params(frozen=False)[0]

    @staticmethod
    def _activation(z: Tensor, w: Tensor, b: Tensor) -> Tensor:
        """``tanh(wᵀz + b)`` ``(...)``; ``wᵀz`` beyond the dtype (z near finfo.max; inf − inf gave
        NaN) from z scaled by its largest entry, which keeps the sign that tanh saturates to."""
        a = (z * w).sum(dim=-1)
        m = z.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1)
        a = torch.where(torch.isfinite(a), a, ((z / m) * w).sum(dim=-1) * m.squeeze(-1))
        return torch.tanh(a + b)

    def forward(self, z: Tensor, frozen: bool = False) -> tuple[Tensor, Tensor]:
        """``(f(z), log|det ∂f/∂z|)``: ``(..., dim) -> (..., dim), (...)``; ``frozen``: no
        gradient reaches the flow's parameters (gradients still flow through ``z``)."""
        u_hat, w, b = self._params(frozen)
        h = self._activation(z, w, b)
        wu = (w * u_hat).sum(dim=-1)
        log_det = torch.log(torch.abs(1 + (1 - h.pow(2)) * wu))
        return z + u_hat * h.unsqueeze(-1), log_det

    def pulled_back(self, y: Tensor, z: Tensor) -> Tensor:
        """``f⁻¹(y)`` to first order at ``y = f(z)``, the parameters held fixed: the value of
        ``z``, with the Jacobian ``(∂f/∂z)⁻¹ = I − û h′ wᵀ / (1 + h′ wᵀû)`` (Sherman–Morrison,
        ``h′ = 1 − tanh²(wᵀz + b)``) with respect to ``y``. ``(..., dim) -> (..., dim)``."""
        u_hat, w, b = self._params(frozen=True)
        z = z.detach()
        slope = 1 - self._activation(z, w, b).pow(2)
        dy = y - y.detach()
        step = slope * (dy * w).sum(dim=-1) / (1 + slope * (w * u_hat).sum(dim=-1))
        return z + dy - u_hat * step.unsqueeze(-1)

    def inverse(self, y: Tensor) -> Tensor:
        """``f⁻¹(y)``: solve the scalar equation ``a + c tanh(a + b) = wᵀy`` for ``a = wᵀz``
        (``c = wᵀû > −1`` makes it strictly increasing) by bisection on ``[wᵀy − |c|, wᵀy + |c|]``,
        then one Newton step with grad enabled, which gives the implicit-function gradient.
        ``(..., dim) -> (..., dim)``."""
        u_hat = self.u_hat()
        c = (self.w * u_hat).sum(dim=-1)
        if bool((c <= -1).any()):
            raise ValueError("planar flow is not invertible: w^T u_hat <= -1 (reference_form?)")
        s = (y * self.w).sum(dim=-1)
        with torch.no_grad():
            lo, hi = s - c.abs(), s + c.abs()
            for _ in range(80):
                mid = (lo + hi) / 2
                above = mid + c * torch.tanh(mid + self.b) > s
                lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
            a = (lo + hi) / 2
        h = torch.tanh(a + self.b)
        a = a - (a + c * h - s) / (1 + c * (1 - h.pow(2)))
        return y - u_hat * torch.tanh(a + self.b).unsqueeze(-1)


class IGRPlanar(_IGRBase):
    """IGR-Planar: ``ψ = softmax_pp(f_L ∘ … ∘ f_1(κ); τ, δ)``, ``κ ~ N(loc, scale²)``.

    Args:
        loc, scale, temperature, delta: as in ``IGR``; ``loc`` is ``(*batch, K−1)``.
        flows: a sequence of ``PlanarFlow(K−1, param_shape)`` (the paper uses L = 2), whose
            ``param_shape`` broadcasts with the batch shape.

    ``rsample_with_log_prob`` returns the exact log-density from the sample's pre-image (the
    log-dets of the flows at the points they were applied to). ``log_prob`` of an arbitrary value
    inverts the flows numerically (``PlanarFlow.inverse``: bisection, exact to working precision).
    ``kl_mc(prior)``/``rsample_with_kl(prior)`` give the Monte Carlo KL to an ``IGR`` prior
    (Gaussian in λ space): ``log N(κ; μ, σ²) − Σ_l log|det_l| − log N(λ; μ₀, σ₀²)``.
    """

    @classmethod
    def _prior_class(cls) -> type[_IGRBase]:
        return IGR

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor | float,
        temperature: Tensor | float,
        flows: Sequence[PlanarFlow],
        delta: float = 1.0,
        validate_args: bool | None = None,
        *,
        log_scale: Tensor | None = None,
    ) -> None:
        super().__init__(loc, scale, temperature, delta, validate_args, log_scale=log_scale)
        flows = list(flows)
        for i, flow in enumerate(flows):
            if not isinstance(flow, PlanarFlow):
                raise TypeError(f"flows[{i}] must be a PlanarFlow, got {type(flow).__name__}")
            if flow.dim != self.loc.shape[-1]:
                raise ValueError(
                    f"flows[{i}] has dim {flow.dim}, expected K-1 = {self.loc.shape[-1]}"
                )
            try:
                fits = torch.broadcast_shapes(flow.b.shape, self.batch_shape) == self.batch_shape
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(
                    f"flows[{i}] has param_shape {tuple(flow.b.shape)}, which does not broadcast "
                    f"to the batch shape {tuple(self.batch_shape)}"
                )
        self.flows = flows

    def expand(
        self, batch_shape: Sequence[int], _instance: IGRPlanar | None = None
    ) -> IGRPlanar:
        new = self._get_checked_instance(IGRPlanar, _instance)
        new.flows = self.flows
        self._expand_params(new, torch.Size(batch_shape))
        return new

    def _draw(self, sample_shape: Sequence[int], densities: bool = True,
              stl: bool = False) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        return self._softmax_pp_draw(sample_shape, self.flows, densities, stl)

    def log_prob(self, value: Tensor) -> Tensor:
        """``log q(ψ)`` by inverting softmax++ and then each flow numerically."""
        return self._softmax_pp_log_prob(value, self.flows)
