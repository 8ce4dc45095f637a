"""``PerturbationScoreFunction``: the score function on perturbation utilities .

The SST paper's REINFORCE: differentiate ``E[l(argmax <θ + N, x>)]`` through the density of the
utilities ``U = θ + N``; needs only the structure's MAP oracle.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._one_hot import one_hot
from .._validation import check_choice, check_positive_int
from ..distributions.sst import (
    NOISES,
    StochasticArgmax,
    hard_sample_distribution,
    structured_noise,
    utility_mask,
)
from ..structures.base import Structure
from ..structures.categorical import Categorical
from ..structures.spanning_tree import SpanningTree, symmetrized
from ._checks import check_leave_one_out, check_structure
from ._families import CategoricalLatent, StructureLatent
from ._sampler import BASELINES, Sampler, implements
from .base import EstimatorOutput, LossFn


class PerturbationScoreFunction(Sampler):
    """Score function on perturbation utilities (the SST paper's REINFORCE).

    ``X = argmax_x <U, x>`` with utilities ``U = θ + N``, N iid Gumbel(0, 1) (or standard
    Gaussian) in the layout of ``latentgrad.distributions.sst`` (one utility per free score
    entry, one per undirected edge of a ``SpanningTree``, none on the entries a rooted
    ``Arborescence`` ignores, none on ``-inf`` items). X is a function of U, so
    ``grad E[l(X)] = E[l(X) grad log q(U)]``, with
    ``log q(U) = sum_e [-(U_e - θ_e) - exp(-(U_e - θ_e))]`` (Gumbel) or ``-(U_e - θ_e)^2 / 2``
    (Gaussian) over the drawn utilities. Per example

        L_b = (1/S) sum_s [ sg(l_b(X_s) - beta_{b,s}) log q(U_s) + l_b(X_s) ] - c H_b.

    Valid for any structure with a MAP oracle (``argmax``), also where the SMT distribution of X
    has no tractable probability (trees); noisier than the score of X itself. For a
    ``SpanningTree`` the utilities perturb ``(θ + θᵀ)/2``, so the gradient splits half/half
    between the triangles like ``log_partition``.

    Args:
        structure: a ``Structure`` (``None``: a categorical over the last dim of the scores).
        baseline: as ``ScoreFunction`` (``None``, ``"moving_average"``, ``"ema"``,
            ``"batch_loo"``, ``"self_critic"`` (an extra independent perturbation),
            ``"leave_one_out"``).
        n_samples: S perturbations per example.
        entropy_coeff: c. ``H`` is the Gibbs entropy ``log Z - <θ, μ>`` of the structure at θ
            (exact for a Categorical with Gumbel noise, where the SMT is ``softmax(θ)``; a
            surrogate regulariser otherwise, as in ``SSTEstimator``); structures without a
            ``log_partition`` report 0 and accept no bonus.
        noise: ``"gumbel"`` or ``"gaussian"``.
        decay: EMA decay.
        eval_mode: the reading in ``eval()``: ``"mode"`` (the MAP) or ``"sample"``.
        one_hot: categorical only (``structure`` None); ``False`` hands ``loss_fn`` int64
            category indices ``(N, *latent)`` instead of one-hots.

    ``scores`` ``(B, *score_shape)``; one ``loss_fn`` call on the ``B * S`` hard structures (+B for
    the self-critic); ``support_size`` is the number of evaluations per example.
    """

    def __init__(
        self,
        structure: Structure | None,
        baseline: str | None = None,
        n_samples: int = 1,
        entropy_coeff: float = 0.0,
        noise: str = "gumbel",
        decay: float = 0.99,
        eval_mode: str = "mode",
        one_hot: bool = True,
    ) -> None:
        check_choice(baseline, "baseline", BASELINES)
        check_positive_int(n_samples, "n_samples")
        check_leave_one_out(baseline, n_samples)
        check_choice(noise, "noise", NOISES)
        check_structure(structure)
        has_entropy = structure is None or implements(structure, "log_partition")
        if entropy_coeff and not has_entropy:
            raise ValueError(
                f"entropy_coeff={entropy_coeff} needs a tractable entropy, but {structure!r} has "
                "no log_partition"
            )
        if structure is not None and one_hot is not True:
            raise ValueError("one_hot=False applies to categorical latents (structure None), got "
                             f"{structure!r}")
        family = _PerturbedCategorical(one_hot) if structure is None else _PerturbedFamily(
            structure, has_entropy
        )
        super().__init__(baseline, entropy_coeff, structure, decay, family)
        self._set_eval_mode(eval_mode, ("mode", "sample"))
        self.n_samples = n_samples
        self.noise = noise

    def forward(self, scores: Tensor, loss_fn: LossFn) -> EstimatorOutput:
        """``scores`` (B, *score_shape) -> surrogate from S perturbations per example."""
        scores = self._check(scores)
        if (reading := self._eval_reading(scores, loss_fn)) is not None:
            return reading
        structure = self.structure or Categorical(scores.shape[-1])
        s = self.n_samples
        extra = 1 if self.baseline == "self_critic" else 0
        theta = scores
        if isinstance(structure, SpanningTree):
            theta = symmetrized(scores)
        drawn = utility_mask(structure, theta) & (theta > float("-inf"))
        shape = (theta.shape[0], s + extra, *theta.shape[1:])
        noise = structured_noise(structure, torch.Size(shape), theta, self.noise)
        utilities = theta.detach().unsqueeze(1) + noise
        z = structure.argmax(utilities)
        ev = self._evaluate(z, scores, loss_fn)
        finite = torch.where(drawn, theta, 0.0)
        delta = torch.where(drawn.unsqueeze(1), noise[:, :s], 0.0)
        delta = delta + (finite.detach() - finite).unsqueeze(1)  # U - θ, differentiable in θ
        log_q = -delta.square() / 2 if self.noise == "gaussian" else -delta - torch.exp(-delta)
        log_q = torch.where(drawn.unsqueeze(1), log_q, 0.0).flatten(2).sum(-1)
        return self._reinforce(scores, ev, log_q, s)

    def perturbation_target(self, scores: Tensor) -> StochasticArgmax:
        """The distribution of the sampled structures, ``argmax <θ + N, x>`` at ``scores``
        (B, *score_shape) (``latentgrad.diagnostics`` measures the bias against it)."""
        return hard_sample_distribution(self.structure, scores, self.noise)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, noise={self.noise!r}"


class _PerturbedCategorical(CategoricalLatent):
    """``CategoricalLatent``'s checks and entropy; the latents are the argmax one-hots (their
    indices with ``one_hot=False``)."""

    def latent_values(self, values: Tensor, scores: Tensor) -> Tensor:
        return values if self.one_hot else values.argmax(-1)

    def mode(self, scores: Tensor) -> Tensor:
        """The argmax one-hot ``(B, 1, *latent, K)``."""
        return one_hot(super().mode(scores), scores.shape[-1], scores.dtype)


class _PerturbedFamily(StructureLatent):
    """``StructureLatent``'s checks for ``PerturbationScoreFunction``, which never samples from
    the Gibbs distribution (it perturbs and calls ``argmax``); entropy 0 without a
    ``log_partition``."""

    def __init__(self, structure: Structure, has_entropy: bool) -> None:
        super().__init__(structure)
        self.has_entropy = has_entropy

    def entropy(self, scores: Tensor) -> Tensor:
        if not self.has_entropy:
            return scores.new_zeros(scores.shape[0])
        return super().entropy(scores)
