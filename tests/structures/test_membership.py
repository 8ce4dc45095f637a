"""``Structure.contains``: exactly the enumerated structures among all 0/1 tensors; log_prob
refuses anything else while validation is on."""

from __future__ import annotations

import itertools
import re

import pytest
import torch
from _enumeration import EVERY_KIND

from latentgrad import validate_args
from latentgrad.structures import SpanningTree


def _all_binary(structure):
    shape = structure.score_shape
    cells = torch.Size(shape).numel()
    grid = torch.tensor(list(itertools.product([0.0, 1.0], repeat=cells)), dtype=torch.float64)
    return grid.view(-1, *shape)


@pytest.mark.parametrize("structure", EVERY_KIND, ids=repr)
def test_contains_is_membership_in_the_enumeration(structure):
    candidates = _all_binary(structure)
    members = structure.enumerate().to(torch.float64)
    expected = (candidates.unsqueeze(1) == members.unsqueeze(0)).flatten(2).all(-1).any(-1)
    assert expected.sum() == members.shape[0]
    assert torch.equal(structure.contains(candidates), expected)
    assert torch.equal(structure.contains(candidates.bool()), expected)


@pytest.mark.parametrize("structure", EVERY_KIND, ids=repr)
def test_values_other_than_0_and_1_are_not_structures(structure):
    z = structure.enumerate()[:1].to(torch.float64)
    for bad in (0.5, 2.0, -1.0, float("nan")):
        off = z.clone()
        off.view(-1)[0] = bad
        assert not structure.contains(off).any()


@pytest.mark.parametrize("structure", EVERY_KIND, ids=repr)
def test_log_prob_refuses_a_value_that_is_no_structure(structure):
    scores = torch.randn(2, *structure.score_shape, dtype=torch.float64)
    if isinstance(structure, SpanningTree):
        scores = (scores + scores.mT) / 2
    candidates = _all_binary(structure)
    outsider = candidates[~structure.contains(candidates)][:1]
    if not len(outsider):  # every 0/1 tensor is a structure (unbudgeted bit vectors)
        outsider = torch.full((1, *structure.score_shape), 0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match=re.escape(f"z must hold structures of {structure!r}")):
        structure.log_prob(scores, outsider)
    with validate_args(False):  # a value check: off with validation
        assert structure.log_prob(scores, outsider).shape == (2,)
    member = structure.enumerate()[:1].to(torch.float64)
    assert torch.isfinite(structure.log_prob(scores, member)).all()
    with pytest.raises(ValueError, match="do not broadcast"):
        structure.log_prob(scores, member.expand(3, *structure.score_shape))
