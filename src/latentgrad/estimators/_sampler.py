"""Shared machinery of the score-function estimators: the sampling family of a structure, the
score term ``sg(advantage) (log q - sg(log q))`` and the ``Sampler`` base class (one batched
``loss_fn`` call, running baselines, the REINFORCE surrogate and its ``EstimatorOutput``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..structures.base import Structure
from ..structures.categorical import Categorical
from ._baselines import RUNNING_KINDS, RunningBaseline
from ._checks import check_structure
from ._families import CategoricalLatent, StructureLatent
from .base import (
    Deferred,
    Estimator,
    EstimatorOutput,
    LossFn,
    add_term,
    batch_mean,
    call_loss_fn,
    detached,
    fixed_support_output,
)
from .marginalization import softmax_expectation

BASELINES = (None, "moving_average", "ema", "batch_loo", "self_critic", "leave_one_out")


Family = CategoricalLatent | StructureLatent


def implements(structure: Structure, method: str) -> bool:
    """Whether ``structure`` overrides the ``Structure`` default of ``method``."""
    return getattr(type(structure), method) is not getattr(Structure, method)


def sampling_family(structure: Structure | None, one_hot: bool = True) -> Family:
    """The sampling family of ``structure`` (None: categorical over the last dim of the scores;
    ``one_hot=False``: ``loss_fn`` gets category indices)."""
    if check_structure(structure) is None or isinstance(structure, Categorical):
        return CategoricalLatent(one_hot, None if structure is None else structure.k)
    if not one_hot:
        raise ValueError("one_hot=False applies to categorical latents (structure None or "
                         f"Categorical), got {structure!r}")
    if not (implements(structure, "_sample") and implements(structure, "log_partition")):
        raise TypeError(
            "structure must have an exact Gibbs sampler (sample) and a log_partition for the "
            f"score-function estimators, {structure!r} has not"
        )
    return StructureLatent(structure)


def leave_one_out_over_batch(values: Tensor) -> Tensor:
    """``(B,)`` -> ``(B,)``: mean of the other examples' values (needs B >= 2; an empty batch
    gives an empty result)."""
    b = values.shape[0]
    if b == 1:
        raise ValueError("baseline='batch_loo' needs a batch of at least 2 examples")
    return (values.sum() - values) / (b - 1)


def first_columns(x: Tensor, s: int) -> Tensor:
    """``x[:, :s]`` (``x`` itself when it has ``s`` columns)."""
    return x if x.shape[1] == s else x[:, :s]


def sample_mean(x: Tensor) -> Tensor:
    """``(B, S)`` -> ``(B,)``: the mean over the S samples of each example (for one sample, the
    column itself: the same value and gradient without a reduction)."""
    return x.squeeze(1) if x.shape[1] == 1 else x.mean(1)


def score_term(advantage: Tensor, logp: Tensor) -> Tensor:
    """``sg(advantage) * (log p - sg(log p))``: value 0, gradient ``advantage * grad log p``."""
    return detached(advantage) * (logp - logp.detach())


class Evaluated(NamedTuple):
    """One ``loss_fn`` call: losses ``(B, n)`` of the latents ``z`` ``(B·n, ...)`` at ``rows``."""

    losses: Tensor
    z: Tensor
    rows: Tensor


class Sampler(Estimator):
    """Shared machinery: draw samples, evaluate them in one ``loss_fn`` call, running baselines."""

    def __init__(
        self,
        baseline: str | None,
        entropy_coeff: float,
        structure: Structure | None,
        decay: float,
        family: Family | None = None,
        one_hot: bool = True,
        eval_mode: str = "mode",
    ) -> None:
        super().__init__(entropy_coeff)
        self.baseline = baseline
        self.structure = structure
        self._family = sampling_family(structure, one_hot) if family is None else family
        self.running = RunningBaseline(baseline, decay) if baseline in RUNNING_KINDS else None
        allowed = ("mode", "sample") if not isinstance(self._family, CategoricalLatent) else None
        self._set_eval_mode(eval_mode, *(() if allowed is None else (allowed,)))

    @property
    def one_hot(self) -> bool:
        """Whether ``loss_fn`` gets one-hot latents, else category indices (categorical latents
        built with ``one_hot=False``; structures always get their 0/1 tensors)."""
        return not isinstance(self._family, CategoricalLatent) or self._family.one_hot

    def extra_repr(self) -> str:
        n = getattr(self, "n_samples", None)
        k = getattr(self, "k", None)
        return ", ".join(
            f"{name}={value!r}"
            for name, value in (
                ("baseline", self.baseline),
                ("n_samples", n),
                ("k", k),
                ("entropy_coeff", self.entropy_coeff),
                ("structure", self.structure),
            )
            if value is not None
        )

    def _check(self, scores: object) -> Tensor:
        return self._family.check(scores)

    def _eval_reading(self, scores: Tensor, loss_fn: LossFn) -> EstimatorOutput | None:
        """The eval-mode reading (``Estimator``): None when sampling as in training; otherwise
        one evaluation at the mode, or the exact expectation (categorical latents)."""
        reading = self.reading()
        if reading == "sample":
            return None
        if reading == "expected":
            if not isinstance(self._family, CategoricalLatent):
                raise ValueError("eval_mode='expected' needs a categorical latent")
            return softmax_expectation(
                scores, loss_fn, self.entropy_coeff, self._family.one_hot
            )
        ev = self._evaluate(self._family.mode(scores), scores, loss_fn)
        entropy = self._entropy(scores)
        losses = ev.losses[:, 0]
        loss = batch_mean(add_term(losses, -self.entropy_coeff, entropy))
        out = fixed_support_output(loss, losses, entropy, 1)
        return out.evaluated(ev.z, ev.rows, sample_weights(ev.losses, 1))

    def _evaluate(self, values: Tensor, scores: Tensor, loss_fn: LossFn) -> Evaluated:
        """Latent values ``(B, n, ...)`` -> losses (B, n) from one ``loss_fn`` call, with the
        latents ``z`` (B·n, ...) and ``rows`` (B·n,) it was called on."""
        b, n = values.shape[:2]
        rows = torch.arange(b, device=values.device)
        if n > 1:
            rows = rows.unsqueeze(1).expand(b, n).flatten()
        z = self._family.latent_values(values.flatten(0, 1), scores)
        return Evaluated(call_loss_fn(loss_fn, z, rows).view(b, n), z, rows)

    def _entropy(self, scores: Tensor) -> Tensor | Deferred:
        """Exact entropy ``(B,)``; without an entropy bonus only reported: ``Deferred``, computed
        without a graph when read (the structured entropy differentiates through the
        marginals, a double backward)."""
        if self.entropy_coeff:
            return self._family.entropy(scores)
        return Deferred(self._family.entropy, scores.detach())

    def _running_value(self, like: Tensor) -> Tensor:
        if self.running is None:
            return torch.zeros((), device=like.device, dtype=like.dtype)
        return self.running.get(like)

    def _sample_beta(self, losses: Tensor, s: int) -> Tensor:
        """Baseline ``(B, S)`` (or broadcastable) from the detached losses ``(B, S [+ 1])``."""
        if self.baseline == "self_critic":
            return losses[:, s:]
        ell = first_columns(losses, s)
        if self.baseline == "leave_one_out":
            return (ell.sum(1, keepdim=True) - ell) / (s - 1)
        if self.baseline == "batch_loo":
            return leave_one_out_over_batch(ell.mean(1)).unsqueeze(1)
        return self._running_value(ell)

    def _update_running(self, expected: Tensor) -> None:
        """Fold the batch mean of ``expected`` ``(B,)`` into the running baseline (training
        only; an empty batch leaves it unchanged)."""
        if self.running is not None and self.training and expected.numel():
            self.running.update(expected.mean())

    def _reinforce(
        self, scores: Tensor, ev: Evaluated, log_q: Tensor, s: int
    ) -> EstimatorOutput:
        """``mean_s [sg(l_s - beta_s) log q_s + l_s] - c H`` per example, averaged over the batch.

        ``ev.losses`` ``(B, S [+ 1])``: the first S columns pair with ``log_q`` ``(B, S)``, an
        extra column is the self-critic's sample; ``beta`` from ``_sample_beta``.
        """
        losses, detached = ev.losses, ev.losses.detach()
        beta = self._sample_beta(detached, s)
        entropy = self._entropy(scores)
        ell, ell_detached = first_columns(losses, s), first_columns(detached, s)
        per_example = sample_mean(score_term(ell_detached - beta, log_q) + ell)
        per_example = add_term(per_example, -self.entropy_coeff, entropy)
        expected = sample_mean(ell_detached)
        weights = sample_weights(losses, s)
        return self._finish(batch_mean(per_example), expected, entropy, beta, ev, weights)

    def _finish(
        self,
        loss: Tensor,
        expected: Tensor,
        entropy: Tensor | Deferred,
        baseline: Tensor,
        ev: Evaluated,
        weights: Tensor | Deferred,
        means: dict[str, Tensor] | None = None,
    ) -> EstimatorOutput:
        """Update the running baseline with the batch-mean ``expected`` loss ``(B,)`` (training
        only) and package the output: ``ev.losses.shape[1]`` evaluations per example, combined
        into ``expected`` with ``weights`` ``(B, n)`` (or ``Deferred`` ones, flat); logs
        ``entropy`` (mean), ``support_size``, ``baseline`` and the extra ``means`` (means,
        computed when read)."""
        self._update_running(expected)
        all_means = {"baseline": baseline, **(means or {})}
        out = fixed_support_output(loss, expected, entropy, ev.losses.shape[1], means=all_means)
        if not isinstance(weights, Deferred):
            weights = weights.flatten()
        return out.evaluated(ev.z, ev.rows, weights)


def sample_weights(losses: Tensor, s: int) -> Deferred:
    """``Deferred`` weights ``(B·n,)`` of a Monte Carlo mean over the first ``s`` of the ``n``
    columns of ``losses`` ``(B, n)``."""
    b, n = losses.shape
    return Deferred(_sample_weights, b, n, s, losses.dtype, losses.device)


def _sample_weights(b: int, n: int, s: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    weights = torch.zeros(b, n, dtype=dtype, device=device)
    weights[:, :s] = 1.0 / s
    return weights.flatten()
