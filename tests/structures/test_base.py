"""The generic ``Structure`` methods, on a structure that overrides none of them."""

import math

import pytest
import torch
from _enumeration import EVERY_KIND

import latentgrad
from latentgrad.structures import Arborescence, BitVector, Categorical, KSubset, SpanningTree
from latentgrad.structures.base import Structure, autograd_gradient


class _Pairs(Structure):
    """Test-only: the 0/1 vectors of length 2 (no oracle needed beyond enumeration)."""

    score_shape = (2,)

    def argmax(self, scores):
        return (scores > 0).to(scores.dtype)

    def enumerate(self):
        return torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])


def test_score_counts_an_excluded_item_that_is_off_as_zero():
    scores = torch.tensor([[float("-inf"), 1.5], [0.5, -2.0]], dtype=torch.float64)
    z = _Pairs().enumerate().to(torch.float64).unsqueeze(1)  # (4, 1, 2) against (2, 2)
    got = _Pairs().score(scores, z)
    want = torch.tensor(
        [[0.0, 0.0], [1.5, -2.0], [float("-inf"), 0.5], [float("-inf"), -1.5]], dtype=torch.float64
    )
    torch.testing.assert_close(got, want)


def test_score_gradient_is_z_and_finite_at_excluded_items():
    scores = torch.tensor([float("-inf"), 0.3], dtype=torch.float64, requires_grad=True)
    z = torch.tensor([0.0, 1.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad(_Pairs().score(scores, z), scores)
    torch.testing.assert_close(grad, z)


def test_autograd_gradient_is_differentiable_only_when_scores_require_grad():
    def log_z(x):
        return torch.logsumexp(x, dim=-1)

    x = torch.randn(3, 4, dtype=torch.float64)
    mu = autograd_gradient(log_z, x)
    torch.testing.assert_close(mu, x.softmax(-1))
    assert not mu.requires_grad
    x.requires_grad_(True)
    mu = autograd_gradient(log_z, x)
    (hvp,) = torch.autograd.grad(mu[:, 0].sum(), x)
    p = x.detach().softmax(-1)
    want = p[:, :1] * (torch.eye(4, dtype=torch.float64)[0] - p)  # d p_0 / d x = p_0 (e_0 - p)
    torch.testing.assert_close(hvp, want)


def test_half_precision_log_partition_marginals_entropy_are_computed_in_float32():
    """The budgeted bit vector of the issue: bfloat16 marginals used to reach 2.0 and log Z to
    drift by 4 at |score| 100; now each equals the float32 result rounded to the input dtype."""
    from latentgrad.structures import BitVector, KSubset

    row = torch.tensor([[-44.75, -89, -9.1875, 55.75, -0.945, -122, -126.5, -112, 116.5, 92.5]])
    gen = torch.Generator().manual_seed(0)
    rows = torch.cat([row, 100 * torch.randn(3, 10, generator=gen)])
    for structure in (BitVector(10, 4), KSubset(10, 3)):
        for dtype in (torch.float16, torch.bfloat16):
            half = rows.to(dtype)
            for method in ("log_partition", "marginals", "entropy"):
                got = getattr(structure, method)(half)
                want = getattr(structure, method)(half.float())
                assert got.dtype == dtype
                torch.testing.assert_close(got, want.to(dtype), atol=0, rtol=0)
            assert (structure.marginals(half) <= 1).all()


@pytest.mark.parametrize("structure", [BitVector(4), BitVector(4, 2), KSubset(4, 2),
                                       SpanningTree(3), Arborescence(3)], ids=repr)
def test_a_log_partition_beyond_the_scores_dtype_is_refused_by_name(structure):
    """log Z is computed in float32 (float64 for trees) and returned in the scores' dtype; past
    that dtype's finfo.max it became a silent inf (float16 scores of 5e4: log Z >= 1e5 > 65504).
    No valid score is +inf, so an infinite log Z is an overflow: a ValueError naming the scores
    (a value check: off with validation, then inf). A log Z that fits is the float64 brute
    force rounded to float16."""
    big = torch.full(structure.score_shape, 5e4, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"^scores: the log-partition of .* exceeds "
                                         r"torch\.float16's range"):
        structure.log_partition(big)
    with latentgrad.validate_args(False):
        assert structure.log_partition(big).item() == math.inf
    fits = torch.full(structure.score_shape, 1e4, dtype=torch.float16)
    every = structure.enumerate().double()
    want = torch.logsumexp(structure.score(fits.double(), every), -1)
    torch.testing.assert_close(structure.log_partition(fits).double(), want,
                               rtol=torch.finfo(torch.float16).eps, atol=0)


def test_score_names_mismatched_shapes():
    """z of another structure size, or batch shapes that do not broadcast: a ValueError naming
    them (was torch's size-mismatch RuntimeError)."""
    with pytest.raises(ValueError, match=r"z must have trailing shape \(4,\)"):
        KSubset(4, 2).score(torch.zeros(4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"z of shape \(2, 4\) does not broadcast"):
        KSubset(4, 2).score(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"scores must have trailing shape \(3, 3\)"):
        SpanningTree(3).score(torch.zeros(4, 4), torch.zeros(3, 3))


@pytest.mark.parametrize("structure", [*EVERY_KIND, Categorical(1), BitVector(4, budget=0)],
                         ids=repr)
def test_every_structure_counts_its_structures(structure):
    """``num_structures`` is the number that ``enumerate`` lists (it bounds the entropy)."""
    assert structure.num_structures == structure.enumerate().shape[0]
