"""Structures under ``torch.inference_mode``: the same marginals and entropies as under no_grad,
also for scores that are inference tensors used outside the block."""

from __future__ import annotations

import pytest
import torch
from _enumeration import EVERY_KIND

from latentgrad.structures import SpanningTree


def _scores(structure):
    x = torch.randn(3, *structure.score_shape, generator=torch.Generator().manual_seed(0))
    return (x + x.mT) / 2 if isinstance(structure, SpanningTree) else x


@pytest.mark.parametrize("structure", EVERY_KIND, ids=repr)
@pytest.mark.parametrize("method", ["marginals", "entropy"])
def test_inference_mode_gives_the_no_grad_result(structure, method):
    scores = _scores(structure)
    with torch.no_grad():
        expected = getattr(structure, method)(scores)
    with torch.inference_mode():
        inside = getattr(structure, method)(scores)
        inference_scores = scores.clone()
    outside = getattr(structure, method)(inference_scores)
    torch.testing.assert_close(inside, expected)
    torch.testing.assert_close(outside, expected)
