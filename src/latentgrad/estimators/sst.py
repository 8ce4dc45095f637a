"""``SSTEstimator``: stochastic softmax tricks (Paulus et al. 2020).

One perturbed relaxation ``X_t = argmax_{x in conv X} <θ + N, x> - t Ω(x)`` per example; the loss
is evaluated at ``X_t`` (or, straight-through, at the hard ``X = argmax_x <θ + N, x>`` with the
gradient of ``X_t``) and differentiated by reparameterisation through the utilities.
"""

from __future__ import annotations

from torch import Tensor

from .._validation import check_choice, validation_enabled
from ..distributions.sst import (
    NOISES,
    REGULARIZERS,
    StochasticArgmax,
    StochasticSoftmax,
    hard_sample_distribution,
)
from ..structures.base import Structure
from ..structures.categorical import Categorical
from ._checks import check_batched, check_last_dim, check_structure
from ._families import check_latent_scores
from ._one_sample import one_sample_output
from .base import Deferred, Estimator, EstimatorOutput, LossFn, exact_entropy
from .schedules import TemperatureSchedule, as_schedule


class SSTEstimator(Estimator):
    """Stochastic softmax trick estimator; implements ``est(scores, loss_fn) -> EstimatorOutput``.

    Args:
        structure: the latent ``Structure`` (``None``: a categorical over the last dim of scores).
        temperature: ``t > 0``, a float or a ``TemperatureSchedule`` (a ``Learnable`` schedule
            makes ``t`` a trained parameter of this module; a decaying one advances once per
            optimizer step that used it).
        regularizer: ``"entropy"`` (Gibbs marginals at ``U / t``; Categorical: Gumbel-Softmax) or
            ``"euclidean"`` (sparsemax / SparseMAP at ``U / t``).
        noise: ``"gumbel"`` or ``"gaussian"`` utilities ``U = θ + N``.
        straight_through: forward the hard SMT sample, backward the relaxed gradient.
        entropy_coeff: weight ``c`` of an entropy bonus, ``loss = mean_b(ℓ_b - c H_b)``.
        eval_mode: the reading in ``eval()`` (``Estimator``): ``"mode"`` (the MAP structure
            ``argmax <θ, x>``) or ``"sample"``.

    ``scores`` ``(B, *score_shape)``. ``loss_fn`` is called once with ``z`` ``(B, *score_shape)``
    (relaxed points in the marginal polytope, or hard 0/1 structures when straight-through) and
    ``rows = arange(B)``. ``expected_loss`` is the one-sample estimate ``ℓ_b(z_b)``;
    ``support_size`` is 1. ``entropy`` is the Gibbs entropy ``H(p_θ)`` of the structure at the
    scores: exact for the SMT distribution of a Categorical with Gumbel noise (Gumbel-max),
    otherwise the entropy of the exponential-family distribution with the same scores, a
    surrogate regulariser (the SMT entropy has no closed form). Structures without a tractable
    ``log_partition`` report 0 and accept no entropy bonus.
    """

    def __init__(
        self,
        structure: Structure | None,
        temperature: float | TemperatureSchedule,
        regularizer: str = "entropy",
        noise: str = "gumbel",
        straight_through: bool = False,
        entropy_coeff: float = 0.0,
        eval_mode: str = "mode",
    ) -> None:
        super().__init__(entropy_coeff)
        self._set_eval_mode(eval_mode, ("mode", "sample"))
        check_structure(structure)
        check_choice(regularizer, "regularizer", REGULARIZERS)
        check_choice(noise, "noise", NOISES)
        if not isinstance(straight_through, bool):
            got = type(straight_through).__name__
            raise TypeError(f"straight_through must be a bool, got {got}")
        self.structure = structure
        self.temperature = as_schedule(temperature, "temperature")
        self.regularizer = regularizer
        self.noise = noise
        self.straight_through = straight_through

    def extra_repr(self) -> str:
        return (
            f"structure={self.structure!r}, regularizer={self.regularizer!r}, "
            f"noise={self.noise!r}, straight_through={self.straight_through}, "
            f"entropy_coeff={self.entropy_coeff}"
        )

    def perturbation_target(self, scores: Tensor) -> StochasticArgmax:
        """The distribution of the hard structures this estimator relaxes, ``argmax <θ + N, x>``
        at ``scores`` (B, *score_shape) (``latentgrad.diagnostics`` measures the bias against
        it)."""
        return hard_sample_distribution(self.structure, scores, self.noise)

    def _structure_for(self, scores: object) -> tuple[Structure, Tensor]:
        """The structure and the checked scores: ``(B, *score_shape)``, or ``(B, *latent, K)``
        for a categorical (``structure`` None or ``Categorical(K)``)."""
        if self.structure is not None and not isinstance(self.structure, Categorical):
            return self.structure, check_batched(scores, "scores", self.structure)
        scores = check_latent_scores(scores, "scores", 1)
        if self.structure is None:
            return Categorical(scores.shape[-1]), scores
        check_last_dim(scores, self.structure)
        return self.structure, scores

    def _entropy(self, structure: Structure, scores: Tensor) -> Tensor | Deferred:
        """The exact entropy ``(B, *latent)`` when it enters the loss; else only reported:
        ``Deferred`` (computed if read), zeros for a structure without a tractable one."""
        if not self.entropy_coeff:
            return exact_entropy(structure.entropy, scores, in_loss=False)
        try:
            return structure.entropy(scores)
        except NotImplementedError:
            raise ValueError(
                f"entropy_coeff={self.entropy_coeff} needs a tractable entropy, but "
                f"{structure!r} has no log_partition"
            ) from None

    def forward(self, scores: Tensor, loss_fn: LossFn) -> EstimatorOutput:
        structure, scores = self._structure_for(scores)
        if validation_enabled():
            structure.check_scores(scores, "scores")  # errors name the caller's argument
        tau = self.temperature.like(scores)
        dist = StochasticSoftmax(
            structure, scores, tau, self.noise, self.regularizer, self.straight_through,
            validate_args=False,
        )
        z = structure.argmax(scores.detach()) if self.reading() == "mode" else dist.rsample()
        return one_sample_output(self, loss_fn, z, tau, self._entropy(structure, scores))
