"""latentgrad: gradient estimators for discrete, structured and mixed latent variables.

Layers: mappings -> structures -> polytope (SparseMAP) -> distributions ->
estimators -> experiments. The public names of the lower layers are re-exported here.
"""

from . import distributions, estimators, mappings, structures
from ._validation import set_default_validate_args, validate_args, validation_enabled
from .diagnostics import GradientStats, gradient_stats
from .estimators import Estimator, EstimatorOutput
from .mappings import entmax15, entmax_bisect, softmax_pp, sparsemax, stick_breaking
from .polytope import SparseMAPResult, sparsemap, topk_sparsemax

__version__ = "0.1.0"

__all__ = [
    "Estimator",
    "EstimatorOutput",
    "GradientStats",
    "SparseMAPResult",
    "distributions",
    "entmax15",
    "entmax_bisect",
    "estimators",
    "gradient_stats",
    "mappings",
    "set_default_validate_args",
    "softmax_pp",
    "sparsemap",
    "sparsemax",
    "stick_breaking",
    "structures",
    "topk_sparsemax",
    "validate_args",
    "validation_enabled",
]
