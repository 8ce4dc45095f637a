"""``structure=Categorical(K)`` means what ``structure=None`` means, with K fixed: every
estimator that takes it checks the scores' last dimension against K and accepts several
categorical latents ``(B, L, K)`` as it does without a structure."""

import pytest
import torch

from latentgrad.estimators import (
    NVIL,
    GumbelSoftmax,
    PerturbationScoreFunction,
    ScoreFunction,
    SSTEstimator,
    SumAndSample,
)
from latentgrad.structures import Categorical

BUILDERS = {
    "ScoreFunction": lambda s: ScoreFunction(structure=s),
    "SumAndSample": lambda s: SumAndSample(k=2, structure=s),
    "NVIL": lambda s: NVIL(structure=s),
    "GumbelSoftmax": lambda s: GumbelSoftmax(0.5, structure=s),
    "SSTEstimator": lambda s: SSTEstimator(s, 0.5),
    "PerturbationScoreFunction": lambda s: PerturbationScoreFunction(s),
}


def loss_fn(z, rows):
    return z.flatten(1).sum(-1) ** 2


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_scores_of_another_k_are_refused_naming_the_structure(name):
    with pytest.raises(ValueError, match=r"5\)?,? .*Categorical\(k=5\)"):
        BUILDERS[name](Categorical(5))(torch.randn(2, 4), loss_fn)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_several_categorical_latents_are_drawn_as_without_a_structure(name):
    scores = torch.randn(2, 3, 4)
    torch.manual_seed(0)
    with_structure = BUILDERS[name](Categorical(4))(scores, loss_fn)
    torch.manual_seed(0)
    without = BUILDERS[name](None)(scores, loss_fn)
    torch.testing.assert_close(with_structure.loss, without.loss)
    assert with_structure.latents.shape[1:] == (3, 4)


def test_one_structure_per_example_estimators_name_the_structure_and_the_way_out():
    from latentgrad.estimators import SparseMAPMarginalization, TopKSparsemaxMarginalization
    from latentgrad.structures import BitVector

    bits = BitVector(3)
    for est in (SSTEstimator(bits, 0.5), SparseMAPMarginalization(bits),
                TopKSparsemaxMarginalization(bits, k=2)):
        with pytest.raises(ValueError, match=r"\(B, 3\), one BitVector\(d=3.* flatten them"):
            est(torch.randn(2, 4, 3), loss_fn)
