"""SparseMAP (both solvers) and top-k sparsemax on CUDA: the CPU's supports, weights, marginals
and gradients in float64."""

from __future__ import annotations

import pytest
import torch
from _same import same_on_gpu

from latentgrad.polytope import sparsemap, topk_sparsemax
from latentgrad.structures import Arborescence, BitVector, Categorical, KSubset, SpanningTree

F64 = torch.float64

STRUCTURES = {
    "categorical": Categorical(7),
    "bitvector": BitVector(40),
    "bitvector_budget": BitVector(40, budget=12),
    "ksubset": KSubset(12, 4),
    "spanning_tree": SpanningTree(6),
    "arborescence": Arborescence(6, root=0),
    "dependency_tree": Arborescence(6),
}
CARDINALITY = ("categorical", "bitvector", "bitvector_budget", "ksubset")


def _scores(structure, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = 0.3 + torch.randn(batch, *structure.score_shape, generator=g, dtype=F64)
    return (theta + theta.mT) / 2 if isinstance(structure, SpanningTree) else theta


def _fields(res):
    return res.support, res.weights, res.marginals, res.support_size, res.exact


@pytest.mark.parametrize(
    "name, solver",
    [(n, "active_set") for n in STRUCTURES] + [(n, "threshold") for n in CARDINALITY],
)
def test_sparsemap_matches_cpu(name, solver):
    structure = STRUCTURES[name]
    same_on_gpu(lambda s: _fields(sparsemap(s, structure, solver=solver)), _scores(structure))


@pytest.mark.parametrize("name", CARDINALITY)  # the structures with a k-best oracle
def test_topk_sparsemax_matches_cpu(name):
    structure = STRUCTURES[name]
    same_on_gpu(lambda s: _fields(topk_sparsemax(s, structure, 4)), _scores(structure))
