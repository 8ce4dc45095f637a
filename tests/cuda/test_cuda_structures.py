"""Every structure oracle on CUDA: the CPU's results in float64 (exact draws: shapes, device,
validity, and the CPU's values where the Gibbs distribution is a point mass)."""

from __future__ import annotations

import pytest
import torch
from _same import DEVICE, assert_same, same_on_gpu

from latentgrad.structures import Arborescence, BitVector, Categorical, KSubset, SpanningTree

F64 = torch.float64

STRUCTURES = {
    "categorical": Categorical(7),
    "bitvector": BitVector(9),
    "bitvector_budget": BitVector(9, budget=4),
    "ksubset": KSubset(9, 3),
    "spanning_tree": SpanningTree(6),
    "arborescence": Arborescence(6, root=0),
    "dependency_tree": Arborescence(6),
}


def _scores(structure, batch=16, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    theta = scale * torch.randn(batch, *structure.score_shape, generator=g, dtype=F64)
    return (theta + theta.mT) / 2 if isinstance(structure, SpanningTree) else theta


@pytest.mark.parametrize("name", STRUCTURES)
@pytest.mark.parametrize("oracle", ["argmax", "log_partition", "marginals", "entropy"])
def test_oracle_matches_cpu(name, oracle):
    structure = STRUCTURES[name]
    fn = getattr(structure, oracle)
    same_on_gpu(fn, _scores(structure), grad=oracle != "argmax")


@pytest.mark.parametrize("name", STRUCTURES)
def test_topk_matches_cpu(name):
    structure = STRUCTURES[name]
    try:
        structure.topk(_scores(structure)[:1], 2)
    except NotImplementedError:
        pytest.skip(f"{structure!r} has no k-best oracle")
    same_on_gpu(lambda s: structure.topk(s, 5), _scores(structure), grad=False)


@pytest.mark.parametrize("name", STRUCTURES)
def test_score_and_log_prob_match_cpu(name):
    structure = STRUCTURES[name]
    theta = _scores(structure)
    z = structure.argmax(theta)
    same_on_gpu(structure.score, theta, z)
    same_on_gpu(structure.log_prob, theta, z)


@pytest.mark.parametrize("name", STRUCTURES)
def test_samples_are_valid_and_a_point_mass_gives_the_cpu_draw(name):
    structure = STRUCTURES[name]
    theta = _scores(structure)
    gpu = structure.sample(theta.to(DEVICE), (3,))
    assert gpu.device.type == DEVICE.type and gpu.shape == (3, *theta.shape)
    assert ((gpu == 0) | (gpu == 1)).all()
    # ±50 on the MAP's indicators: the MAP has all the mass, whatever the noise stream
    peaked = 50 * (2 * structure.argmax(theta) - 1)
    expected = structure.argmax(peaked).expand(2, *theta.shape)
    assert_same(expected, structure.sample(peaked.to(DEVICE), (2,)))
