"""One interface over every gradient estimator: ``est(scores, loss_fn) -> EstimatorOutput``."""

from .base import Estimator, EstimatorOutput, LossFn
from .chunking import chunked
from .marginalization import (
    SoftmaxMarginalization,
    SparseMAPMarginalization,
    SparsemaxMarginalization,
    TopKSparsemaxMarginalization,
)
from .mixed import BinaryMixedEstimator, GaussianSparsemaxEstimator, MixedDirichletEstimator
from .perturbation import PerturbationScoreFunction
from .relaxed import GumbelSoftmax, IGREstimator
from .schedules import Constant, ExponentialDecay, Learnable, TemperatureSchedule
from .score_function import NVIL, ScoreBaselineNet, ScoreFunction, SumAndSample
from .sst import SSTEstimator

__all__ = [
    "NVIL",
    "BinaryMixedEstimator",
    "Constant",
    "Estimator",
    "EstimatorOutput",
    "ExponentialDecay",
    "GaussianSparsemaxEstimator",
    "GumbelSoftmax",
    "IGREstimator",
    "Learnable",
    "LossFn",
    "MixedDirichletEstimator",
    "PerturbationScoreFunction",
    "SSTEstimator",
    "ScoreBaselineNet",
    "ScoreFunction",
    "SoftmaxMarginalization",
    "SparseMAPMarginalization",
    "SparsemaxMarginalization",
    "SumAndSample",
    "TemperatureSchedule",
    "TopKSparsemaxMarginalization",
    "chunked",
]
