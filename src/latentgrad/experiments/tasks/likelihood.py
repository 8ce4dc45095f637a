"""Importance-sampled log-likelihoods ``log p(x)`` of latent-variable models, for test NLLs.

Dense proposals (Burda et al. 2016): with ``z_s ~ q(.|x)``, ``s = 1..S``,

    log p(x) ≈ logsumexp_s [log p(x, z_s) - log q(z_s|x)] - log S,

with ``log p(x, z)`` and ``log q(z|x)`` in the same base measure (counting measure for discrete
``z``, Lebesgue for continuous, the direct sum of both for mixed ``z``). Its exponential is
unbiased; it is exact for any S when q is the posterior.

Sparse posteriors (top-k sparsemax, SparseMAP; Correia et al. 2020): ``p(x) = Σ_{z ∈ supp q}
p(x, z) + Σ_{z ∉ supp q} p(x, z)``; the first sum is exact, the second is estimated with S prior
samples ``z_s ~ p(z)`` as ``(1/S) Σ_s 1[z_s ∉ supp q] p(x|z_s)`` (unbiased).

Callables work on sample-major batches: ``z`` is ``(S, B, *event)`` and every log-density returns
``(S, B)``. Samples are drawn and scored ``chunk`` at a time so memory stays ``O(chunk · B)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from latentgrad.experiments.config import require

LogDensity = Callable[[Tensor], Tensor]
Sampler = Callable[[int], Tensor]


@dataclass
class ImportanceConfig:
    """Config section of a task's importance-sampled NLL: S on validation and on test, and the
    most decoder evaluations held in memory at once (``max_decodes``; sets the chunk). Every
    ``wide_val_every``-th epoch's validation uses ``wide_val_samples`` instead, where set (> 0;
    Correia et al.'s bit-vector VAE: 64 every 20th epoch)."""

    val_samples: int = 16
    test_samples: int = 1024
    max_decodes: int = 512
    wide_val_samples: int = 0
    wide_val_every: int = 20

    def validate(self) -> None:
        for key in ("val_samples", "test_samples", "max_decodes", "wide_val_every"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.wide_val_samples >= 0, "wide_val_samples",
                f"must be >= 0 (0: never), got {self.wide_val_samples}")

    def val_samples_at(self, epoch: int) -> int:
        """S of the validation after epoch ``epoch`` (0-based)."""
        wide = self.wide_val_samples > 0 and (epoch + 1) % self.wide_val_every == 0
        return self.wide_val_samples if wide else self.val_samples

    def chunk(self, batch_size: int) -> int:
        """Samples per chunk for a batch of ``batch_size`` examples."""
        return max(1, self.max_decodes // batch_size)


def _check_counts(n_samples: int, chunk: int) -> None:
    for name, value in (("n_samples", n_samples), ("chunk", chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _chunks(n_samples: int, chunk: int) -> list[int]:
    return [min(chunk, n_samples - start) for start in range(0, n_samples, chunk)]


def log_mean_exp(x: Tensor, dim: int = 0) -> Tensor:
    """``log mean exp(x)`` along ``dim``, stable (``-inf`` entries contribute 0)."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


@torch.no_grad()
def importance_log_likelihood(
    log_joint: LogDensity,
    sample: Sampler,
    log_proposal: LogDensity,
    n_samples: int,
    chunk: int = 64,
) -> Tensor:
    """``log p(x)`` ``(B,)`` by importance sampling with S = ``n_samples`` draws of ``q``.

    ``sample(n)`` draws ``z`` ``(n, B, *event)`` from q; ``log_joint(z)`` is ``log p(x, z)`` and
    ``log_proposal(z)`` is ``log q(z|x)``, both ``(n, B)`` in the same base measure.
    """
    _check_counts(n_samples, chunk)
    weights = []
    for n in _chunks(n_samples, chunk):
        z = sample(n)
        weights.append(log_joint(z) - log_proposal(z))
    return log_mean_exp(torch.cat(weights, 0), 0)


def _in_support(z: Tensor, support: Tensor, mask: Tensor) -> Tensor:
    """``z`` ``(n, B, *event)`` against ``support`` ``(B, M, *event)`` (valid where ``mask``
    ``(B, M)``) -> ``(n, B)``: whether each draw equals one of its example's support points."""
    equal = z.unsqueeze(2) == support.unsqueeze(0)  # (n, B, M, *event)
    equal = equal.flatten(3).all(-1) if equal.dim() > 3 else equal
    return (equal & mask.unsqueeze(0)).any(-1)


@torch.no_grad()
def support_log_likelihood(
    log_joint: LogDensity,
    support: Tensor,
    mask: Tensor,
    sample_prior: Sampler,
    log_prior: LogDensity,
    n_samples: int,
    chunk: int = 64,
) -> Tensor:
    """``log p(x)`` ``(B,)`` for a sparse posterior: the exact sum of ``p(x, z)`` over the support
    plus the prior-sampled remainder outside it (module docstring).

    ``support`` ``(B, M, *event)``: each example's support points, padded; ``mask`` ``(B, M)``
    marks the real ones. ``sample_prior(n)`` draws ``(n, B, *event)`` from ``p(z)``;
    ``log_prior(z)`` is ``log p(z)`` ``(n, B)``. The support is scored ``chunk`` points at a time.
    """
    _check_counts(n_samples, chunk)
    if support.shape[:2] != mask.shape:
        raise ValueError(
            f"mask must have shape (B, M) = {tuple(support.shape[:2])}, got {tuple(mask.shape)}"
        )
    points = support.movedim(1, 0)  # (M, B, *event)
    parts = [log_joint(points[i : i + chunk]) for i in range(0, points.shape[0], chunk)]
    on_support = torch.cat(parts).T  # (B, M)
    exact = torch.logsumexp(on_support.masked_fill(~mask, -math.inf), -1)
    terms = []
    for n in _chunks(n_samples, chunk):
        z = sample_prior(n)
        log_lik = log_joint(z) - log_prior(z)
        terms.append(log_lik.masked_fill(_in_support(z, support, mask), -math.inf))
    remainder = log_mean_exp(torch.cat(terms, 0), 0)
    return torch.logaddexp(exact, remainder)
