"""Gumbel-Softmax / Concrete extras (Maddison et al. 2017; Jang et al. 2017).

torch already ships the distributions (``RelaxedOneHotCategorical`` = Concrete on the simplex,
``ExpRelaxedCategorical`` = its log-space ExpConcrete, ``RelaxedBernoulli`` = Binary Concrete).
This module adds what they lack:

- the log-densities as plain functions of (value, logits, temperature), for relaxed KLs whose two
  sides use different temperatures (the Gumbel-Softmax baseline of Potapczynski et al. 2020);
- the Binary Concrete density in logit form, stable where ``y`` rounds to 0 or 1;
- Monte Carlo ``relaxed_entropy`` and ``relaxed_kl``, which torch leaves NotImplemented. They are
  estimates: the sample count is an argument, and samples are drawn with ``rsample`` so the
  estimates are differentiable in the parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, TransformedDistribution
from torch.distributions.utils import _sum_rightmost

from .._dtypes import working_dtype
from .._validation import (
    broadcast_shapes,
    check_no_nan,
    check_no_pos_inf,
    check_positive_int,
    check_rows_valid,
    check_tensor,
    violated,
)


def _temperature(temperature: float | Tensor, like: Tensor, batch: torch.Size) -> Tensor:
    """The temperature as a tensor in ``like``'s dtype: finite, > 0, broadcastable to ``batch``."""
    if isinstance(temperature, Tensor):
        check_tensor(temperature, "temperature")
        broadcast_shapes(temperature.shape, batch, error=lambda: (
            f"temperature of shape {tuple(temperature.shape)} does not broadcast with the "
            f"batch shape {tuple(batch)}"
        ))
    elif isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        got = type(temperature).__name__
        raise TypeError(f"temperature must be a float or a tensor, got {got}")
    tau = torch.as_tensor(temperature, dtype=like.dtype, device=like.device)
    if violated(tau, lambda t: (t > 0) & torch.isfinite(t)):
        raise ValueError("temperature must be finite and strictly positive")
    return tau


def _check_pair(value: Tensor, logits: Tensor, value_name: str) -> None:
    check_tensor(value, value_name)
    check_tensor(logits, "logits")
    check_no_nan(value, value_name)
    check_no_pos_inf(logits, "logits")
    check_no_nan(logits, "logits")
    broadcast_shapes(value.shape, logits.shape, error=lambda: (
        f"{value_name} of shape {tuple(value.shape)} does not broadcast with logits of shape "
        f"{tuple(logits.shape)}"
    ))


def _support_tol(x: Tensor) -> float:
    return math.sqrt(torch.finfo(x.dtype).eps)


def exp_concrete_log_prob(x: Tensor, logits: Tensor, temperature: float | Tensor) -> Tensor:
    """Log-density of ExpConcrete ``x = log_softmax((logits + g) / tau)``, g iid Gumbel.

    ``log p(x) = log Γ(K) + (K−1) log τ + Σ_k (θ_k − τ x_k) − K · logsumexp_k(θ_k − τ x_k)``
    (Maddison et al. 2017, App. C): the density of the log-ratios ``x_k − x_K`` (k < K), so that
    the Concrete density of ``y = exp(x)`` is ``p(x) / Π_k y_k``. ``logits`` need not be
    normalised. Shapes: ``x`` and ``logits`` broadcast to ``(*batch, K)``; ``temperature`` a float
    or a tensor broadcastable to ``(*batch,)``. Returns ``(*batch,)``. ``x`` must satisfy
    ``logsumexp(x) = 0``. Invariant to a common shift of the logits, so they are shifted by their
    row maximum first (no overflow of the sums, no ``τ x`` absorbed by logits near finfo.max).
    A ``-inf`` logit excludes its category: the draws have ``x_k = -inf`` there, and the density
    is that of the other categories (K counts those); ``-inf`` where ``x`` is finite at an excluded
    category or ``-inf`` at an included one.
    """
    _check_pair(x, logits, "x")
    check_rows_valid(logits, "logits")
    dtype = torch.promote_types(x.dtype, logits.dtype)
    tau = _temperature(temperature, x, torch.broadcast_shapes(x.shape, logits.shape)[:-1])
    work = working_dtype(dtype)  # half precision: computed in float32, returned as given
    tol = _support_tol(x)
    x, logits, tau = x.to(work), logits.to(work), tau.to(work)
    lse = torch.logsumexp(x, dim=-1)
    if violated(x, lambda x: (lse.abs() <= tol).all() & (x <= 0).all()):
        raise ValueError(
            "x must be log-probabilities: x <= 0 with logsumexp(x) = 0 along the last dim"
        )
    x, logits = torch.broadcast_tensors(x, logits)
    included = logits > float("-inf")
    outside = (included & (x == float("-inf"))) | (~included & (x > float("-inf")))
    k = included.sum(dim=-1).to(work)
    tau_e = tau.unsqueeze(-1) if tau.dim() else tau
    # excluded (or outside) entries enter as 0 - τ·0: no -inf + inf, no NaN gradient
    shifted = torch.where(included, logits - logits.detach().amax(dim=-1, keepdim=True), 0.0)
    t = shifted - tau_e * torch.where(included & ~outside, x, 0.0)
    log_p = (
        torch.lgamma(k)
        + (k - 1) * torch.log(tau)
        + torch.where(included, t, 0.0).sum(dim=-1)
        - k * torch.logsumexp(torch.where(included, t, float("-inf")), dim=-1)
    )
    return log_p.masked_fill(outside.any(dim=-1), float("-inf")).to(dtype)


def concrete_log_prob(y: Tensor, logits: Tensor, temperature: float | Tensor) -> Tensor:
    """Log-density of Concrete ``y = softmax((logits + g) / tau)`` on the simplex:
    ``exp_concrete_log_prob(log y) − Σ_k log y_k`` (over the categories that ``-inf`` logits do
    not exclude; ``y`` is 0 at those). Shapes as in ``exp_concrete_log_prob``."""
    _check_pair(y, logits, "y")
    if violated(y, lambda y: (y >= 0).all() & ((y.sum(-1) - 1).abs() <= _support_tol(y)).all()):
        raise ValueError("y must lie on the simplex: y >= 0 summing to 1 along the last dim")
    included = logits > float("-inf")
    if violated(y, lambda y: ((y > 0) | ~included).all()):
        raise ValueError("y must be > 0 at every category that logits do not exclude (-inf)")
    log_y = torch.log(y.to(working_dtype(y.dtype)))
    log_y = log_y - torch.logsumexp(log_y, dim=-1, keepdim=True)  # exact renormalisation
    log_y_in = torch.where(included, log_y, 0.0).sum(dim=-1)
    log_p = exp_concrete_log_prob(log_y, logits, temperature) - log_y_in
    return log_p.to(torch.promote_types(y.dtype, logits.dtype))


def binary_concrete_logit_log_prob(
    v: Tensor, logits: Tensor, temperature: float | Tensor
) -> Tensor:
    """Log-density of the Binary Concrete logit ``v = (logits + L) / tau``, L ~ Logistic(0, 1).

    ``log p(v) = log τ + t − 2 softplus(t) = log τ + log σ(t) + log σ(−t)``, ``t = θ − τ v``,
    in the second form (the first overflows at |t| near finfo.max). Elementwise; all
    arguments broadcast. Equals ``torch.distributions.LogitRelaxedBernoulli.log_prob``.
    """
    _check_pair(v, logits, "v")
    tau = _temperature(temperature, v, torch.broadcast_shapes(v.shape, logits.shape))
    t = logits - tau * v
    return torch.log(tau) + F.logsigmoid(t) + F.logsigmoid(-t)


def binary_concrete_log_prob(y: Tensor, logits: Tensor, temperature: float | Tensor) -> Tensor:
    """Log-density of Binary Concrete ``y = sigmoid(v)`` on (0, 1), elementwise:
    ``log p(v) − log y − log(1 − y)`` at ``v = logit(y)``. Prefer the logit form when ``v`` is at
    hand: ``y`` rounds to 0 or 1 long before ``v`` overflows."""
    _check_pair(y, logits, "y")
    if violated(y, lambda y: (y > 0) & (y < 1)):
        raise ValueError("y must lie in the open interval (0, 1)")
    v = torch.logit(y)
    return binary_concrete_logit_log_prob(v, logits, temperature) - torch.log(y) - torch.log1p(-y)


def _rsample_with_log_prob(dist: Distribution, n_samples: int) -> tuple[Tensor, Tensor]:
    """``n_samples`` draws and their log-density, without inverting transforms.

    Distributions with an ``rsample_with_log_prob`` method use it; a ``TransformedDistribution`` is
    sampled in its base space and the forward log-det subtracted (no ``log`` of an underflowed
    probability); anything else falls back to ``rsample`` + ``log_prob``.
    """
    shape = torch.Size((n_samples,))
    if hasattr(dist, "rsample_with_log_prob"):
        return dist.rsample_with_log_prob(shape)
    if isinstance(dist, TransformedDistribution):
        # event dims to sum each Jacobian over, as TransformedDistribution.log_prob counts them
        event_dim, jac_dims = len(dist.event_shape), []
        for transform in reversed(dist.transforms):
            event_dim += transform.domain.event_dim - transform.codomain.event_dim
            jac_dims.append(event_dim - transform.domain.event_dim)
        base = dist.base_dist
        x = base.rsample(shape) if base.has_rsample else base.sample(shape)
        log_prob = _sum_rightmost(base.log_prob(x), event_dim - len(base.event_shape))
        for transform, n in zip(dist.transforms, reversed(jac_dims)):
            y = transform(x)
            log_prob = log_prob - _sum_rightmost(transform.log_abs_det_jacobian(x, y), n)
            x = y
        return x, log_prob
    value = dist.rsample(shape) if dist.has_rsample else dist.sample(shape)
    return value, dist.log_prob(value)


def relaxed_entropy(dist: Distribution, n_samples: int) -> Tensor:
    """Monte Carlo entropy ``−(1/S) Σ_s log p(x_s)``, ``x_s ~ p`` (S = ``n_samples``).

    Works for any distribution with ``log_prob`` (torch's relaxed families, IGR). Differentiable in
    the parameters when ``dist`` has ``rsample``. Returns ``dist.batch_shape``.
    """
    _, log_prob = _rsample_with_log_prob(dist, check_positive_int(n_samples, "n_samples"))
    return -log_prob.mean(dim=0)


def relaxed_kl(p: Distribution, q: Distribution, n_samples: int) -> Tensor:
    """Monte Carlo ``KL(p ‖ q) ≈ (1/S) Σ_s [log p(x_s) − log q(x_s)]``, ``x_s ~ p``.

    When both are ``TransformedDistribution`` with equal transforms (e.g. two
    ``RelaxedOneHotCategorical``), the estimate is taken between the base distributions, which
    is the same KL without the round trip through the transform. Returns the broadcast batch shape.
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    if (
        isinstance(p, TransformedDistribution)
        and isinstance(q, TransformedDistribution)
        and p.transforms == q.transforms
    ):
        return relaxed_kl(p.base_dist, q.base_dist, n_samples)
    if p.event_shape != q.event_shape:
        raise ValueError(f"p and q must share event_shape, got {p.event_shape} and {q.event_shape}")
    value, log_p = _rsample_with_log_prob(p, n_samples)
    return (log_p - q.log_prob(value)).mean(dim=0)
