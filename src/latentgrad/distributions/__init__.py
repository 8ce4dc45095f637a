"""``torch.distributions`` subclasses for relaxed, structured and mixed latent variables.

Importing this package registers their ``kl_divergence`` pairs with torch.
"""

from .concrete import (
    binary_concrete_log_prob,
    binary_concrete_logit_log_prob,
    concrete_log_prob,
    exp_concrete_log_prob,
    relaxed_entropy,
    relaxed_kl,
)
from .continuous_categorical import ContinuousCategorical
from .faces import MaxEntropyFaces, NonEmptyFaces
from .gaussian_sparsemax import GaussianSparsemax
from .igr import IGR, IGRPlanar, IGRStickBreaking, PlanarFlow, uniform_prior_loc
from .mixed_binary import BinaryGaussianSparsemax, HardConcrete, MixedUniform
from .mixed_dirichlet import MixedDirichlet
from .sst import StochasticArgmax, StochasticSoftmax, utility_kl

__all__ = [
    "IGR",
    "BinaryGaussianSparsemax",
    "ContinuousCategorical",
    "GaussianSparsemax",
    "HardConcrete",
    "IGRPlanar",
    "IGRStickBreaking",
    "MaxEntropyFaces",
    "MixedDirichlet",
    "MixedUniform",
    "NonEmptyFaces",
    "PlanarFlow",
    "StochasticArgmax",
    "StochasticSoftmax",
    "binary_concrete_log_prob",
    "binary_concrete_logit_log_prob",
    "concrete_log_prob",
    "exp_concrete_log_prob",
    "relaxed_entropy",
    "relaxed_kl",
    "uniform_prior_loc",
    "utility_kl",
]
