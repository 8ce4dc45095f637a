"""Structures under ``torch.inference_mode`` (Lightning's validation and test loops): the same
marginals and entropies as under no_grad, also for scores that are inference tensors used outside
the block, and at peaked scores, where the tree oracles recompute rows by autograd through the
log-domain elimination (that path raised under inference mode)."""

from __future__ import annotations

import pytest
import torch
from _enumeration import EVERY_KIND

from latentgrad.structures import Arborescence, BitVector, Categorical, KSubset, SpanningTree

#: trees of six nodes: at scale 10 their dense matrix-tree rows are already recomputed
LARGER_TREES = [SpanningTree(6), Arborescence(6), Arborescence(6, root=0)]


def _scores(structure, scale):
    x = torch.randn(3, *structure.score_shape, generator=torch.Generator().manual_seed(0))
    return scale * ((x + x.mT) / 2 if isinstance(structure, SpanningTree) else x)


@pytest.mark.parametrize("structure", EVERY_KIND + LARGER_TREES, ids=repr)
@pytest.mark.parametrize("method", ["marginals", "entropy"])
@pytest.mark.parametrize("scale", [1.0, 10.0, 1e4])
def test_inference_mode_gives_the_no_grad_result(structure, method, scale):
    scores = _scores(structure, scale)
    with torch.no_grad():
        expected = getattr(structure, method)(scores)
    with torch.inference_mode():
        inside = getattr(structure, method)(scores)
        inference_scores = scores.clone()
    outside = getattr(structure, method)(inference_scores)
    torch.testing.assert_close(inside, expected)
    torch.testing.assert_close(outside, expected)


@pytest.mark.parametrize("structure", [KSubset(4, 2), BitVector(4, budget=2), SpanningTree(4),
                                       Arborescence(4), Categorical(4)], ids=repr)
def test_marginals_under_no_grad_carry_no_graph(structure):
    """Scores that require grad, read under torch.no_grad: no graph is built or kept (the
    autograd-derived marginals of k-subsets and budgeted bit vectors kept a double-backward
    graph)."""
    x = torch.randn(2, *structure.score_shape, dtype=torch.float64)
    if isinstance(structure, SpanningTree):
        x = (x + x.mT) / 2
    x.requires_grad_(True)
    with torch.no_grad():
        m = structure.marginals(x)
    assert not m.requires_grad and m.grad_fn is None
    assert structure.marginals(x).requires_grad
