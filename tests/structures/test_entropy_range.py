"""Gibbs entropies stay right at any score scale: huge scores, huge common offsets and the
largest finite float32 scores give the brute-force entropy, never NaN; float64 scores beyond the
range that the sums need give a clear error."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch

from latentgrad.structures import Arborescence, BitVector, Categorical, KSubset, SpanningTree

STRUCTURES = [
    BitVector(5),
    BitVector(5, budget=2),
    KSubset(5, 2),
    Categorical(5),
    SpanningTree(4),
    Arborescence(4),
    Arborescence(4, root=0),
]
FIXED_SIZE = [s for s in STRUCTURES if not isinstance(s, (BitVector, Categorical))]
F64_EPS = torch.finfo(torch.float64).eps


def _scores(structure, scale, generator, batch=16):
    x = torch.randn(batch, *structure.score_shape, generator=generator, dtype=torch.float64)
    if isinstance(structure, SpanningTree):
        x = (x + x.mT) / 2
    return x * scale


def _brute_entropy(structure, scores):
    """Entropy by enumeration, float64: ``scores`` (B, *shape) -> (B,)."""
    z = structure.enumerate().to(torch.float64)
    shape = structure.score_shape
    values = structure.score(scores.reshape(-1, 1, *shape), z)  # (B, N)
    logp = values.log_softmax(-1)
    return -(logp.exp() * torch.where(logp > float("-inf"), logp, 0.0)).sum(-1)


def _tolerance(structure, scores):
    """float64 rounding of the two terms log Z and <θ, μ> (each about |θ| × the ones used),
    with a factor 1,000 of room."""
    ones = math.prod(structure.score_shape)
    return 1e3 * F64_EPS * ones * (1.0 + scores.abs().amax().item())


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
@pytest.mark.parametrize("scale", [1e2, 1e4, 1e8])
def test_float32_entropy_matches_enumeration_at_large_scales(structure, scale):
    """The old float32 difference log Z - <θ, μ> was off by 0.3-2 nats at scale 1e4."""
    gen = torch.Generator().manual_seed(int(math.log10(scale)))
    scores = _scores(structure, scale, gen).float()
    want = _brute_entropy(structure, scores.double())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no near ties: no rounding warning
        got = structure.entropy(scores)
    assert got.dtype == torch.float32
    f32_rounding = 4 * torch.finfo(torch.float32).eps * (1.0 + want.abs())
    torch.testing.assert_close(
        got.double(), want, rtol=0, atol=_tolerance(structure, scores) + f32_rounding.max().item()
    )


TREES = (SpanningTree, Arborescence)


def _without_common_shift(structure):
    """Trees (marginals from a matrix inverse) and budgeted bit vectors (a count DP over
    structures of different sizes): marginals accurate to about eps × |θ| only."""
    return isinstance(structure, TREES) or (
        isinstance(structure, BitVector) and structure.budget is not None)


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
@pytest.mark.parametrize("scale", [1e2, 1e4, 1e8])
def test_entropy_over_near_ties_at_large_scales_matches_enumeration(structure, scale):
    """Scores ±scale plus N(0, 1): the structures of one sign pattern differ by O(1) (exact ties
    once float32 rounds the noise away), so the entropy is far from 0 and the large terms of
    log Z - <θ, μ> cancel. Subset and unbudgeted bit-vector oracles: within float64 rounding of
    those terms. Tree and budgeted bit-vector oracles: their marginals carry an absolute error of
    about eps × |θ|, so the entropy may err by about eps × |θ|² (trees: 0.4-3.7 nats at 1e8):
    there a RuntimeWarning states a bound on the error, which the error respects."""
    gen = torch.Generator().manual_seed(int(math.log10(scale)))
    scores = (_scores(structure, scale, gen).sign() * scale + _scores(structure, 1.0, gen)).float()
    want = _brute_entropy(structure, scores.double())
    if not isinstance(structure, BitVector) or structure.budget is not None:
        assert want.mean() > 0.3  # ties within a sign pattern: not a degenerate reference
    if _without_common_shift(structure) and scale > 1e4:
        with pytest.warns(RuntimeWarning, match="float64 rounding may leave an error") as rec:
            got = structure.entropy(scores).double()
        bound = float(re.search(r"up to ([0-9.e+-]+) nats", str(rec[0].message)).group(1))
        assert bound <= 1.01 * math.log(structure.num_structures)  # clamped to the range [0, log N]
        assert (got - want).abs().max() <= 1.01 * bound  # 1% for the 3 printed digits
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = structure.entropy(scores).double()
    size = math.prod(structure.score_shape)
    atol = _tolerance(structure, scores) + 4 * torch.finfo(torch.float32).eps * 4.0
    if isinstance(structure, TREES):
        atol += 64 * size * F64_EPS * scale**2
    torch.testing.assert_close(got, want, rtol=0, atol=atol)


def test_budgeted_bit_vectors_warn_where_near_ties_at_a_large_scale_lose_the_entropy():
    """Two tied bits at 1e16 and a third at 0, at most one on: the entropy is log 2, the count
    DP returns 0 (its sums round at 1e16); the warning's bound covers the error. Scores in
    {-s, 0, s} plus N(0, 1) at s = 1e9: errors of whole nats, each within the stated bound."""
    structure = BitVector(3, budget=1)
    with pytest.warns(RuntimeWarning, match="float64 rounding may leave an error") as rec:
        got = structure.entropy(torch.tensor([1e16, 1e16, 0.0], dtype=torch.float64))
    bound = float(re.search(r"up to ([0-9.e+-]+) nats", str(rec[0].message)).group(1))
    assert abs(got.item() - math.log(2)) <= 1.01 * bound
    gen = torch.Generator().manual_seed(4)
    structure = BitVector(6, budget=3)
    levels = torch.randint(-1, 2, (64, 6), generator=gen, dtype=torch.float64)
    scores = levels * 1e9 + torch.randn(64, 6, generator=gen, dtype=torch.float64)
    want = _brute_entropy(structure, scores)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = structure.entropy(scores)
    rounding = structure._entropy_rounding(scores, structure.marginals(scores))
    rounding = rounding.clamp(max=math.log(structure.num_structures))
    assert (got - want).abs().max() > 1e-3  # the case the warning exists for
    assert ((got - want).abs() <= rounding).all()


@pytest.mark.parametrize("structure", [SpanningTree(4), Arborescence(4, root=0)], ids=repr)
def test_the_rounding_warning_names_the_scale_of_the_entries_in_use(structure):
    """A spanning tree or rooted arborescence ignores its diagonal: a huge diagonal changes
    neither the entropy nor the scale that the warning names (the near-tied scores' ±1e8, not
    the diagonal's 1e15)."""
    gen = torch.Generator().manual_seed(8)
    scores = _scores(structure, 1e8, gen).sign() * 1e8 + _scores(structure, 1.0, gen)
    scores.diagonal(dim1=-2, dim2=-1).fill_(1e15)
    with pytest.warns(RuntimeWarning, match="float64 rounding") as rec:
        structure.entropy(scores)
    named = float(re.search(r"\|scores\| up to ([0-9.e+-]+)", str(rec[0].message)).group(1))
    assert 1e8 <= named <= 3e8  # after the shift by the largest counted score: at most 2e8 + noise


@pytest.mark.parametrize("structure", FIXED_SIZE, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_huge_common_offset_leaves_the_entropy_unchanged(structure, dtype):
    """Every structure uses as many entries: adding a common offset to all of them changes no
    probability. Offsets as large as the noise survives in the dtype (beyond, the scores
    themselves are ties: 1e30 rounds N(0, 1) noise away in both dtypes)."""
    gen = torch.Generator().manual_seed(1)
    noise = _scores(structure, 1.0, gen).to(dtype)
    offset = torch.tensor(1e4 if dtype == torch.float32 else 1e10, dtype=dtype)
    got = structure.entropy(noise + offset)
    # the offset rounds the noise to the offset's float32/float64 grid: compare with the brute
    # force on the rounded scores
    want = _brute_entropy(structure, (noise + offset).double() - offset.double())
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5 if dtype == torch.float32
                               else 1e-9)


def _extreme_scores(structure):
    """Scores of ±finfo(float32).max, the first row all ties."""
    gen = torch.Generator().manual_seed(2)
    signs = _scores(structure, 1.0, gen).sign()
    signs[0] = 1.0
    return (signs * torch.finfo(torch.float32).max).float().requires_grad_()


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_the_largest_finite_float32_scores_give_a_finite_entropy_in_its_range(structure):
    """Beyond a common offset, float64 resolves the entropy of scores ~1e38 only to ~1e23 nats,
    so at this scale the promise is the range [0, log N] and finite gradients, not the value."""
    scores = _extreme_scores(structure)
    count = getattr(structure, "num_structures", None) or structure.score_shape[-1]
    if _without_common_shift(structure):  # whose tied first row the rounding warning names
        with pytest.warns(RuntimeWarning, match=f"error of up to {math.log(count):.3g} nats"):
            got = structure.entropy(scores)
    else:
        got = structure.entropy(scores)
    assert torch.isfinite(got).all()
    assert (got >= 0).all() and (got.double() <= math.log(count) + 1e-6).all()
    got.sum().backward()
    assert torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("structure", [Categorical(5), BitVector(5)], ids=repr)
def test_closed_form_entropies_are_exact_at_the_largest_float32_scores(structure):
    scores = _extreme_scores(structure)
    want = _brute_entropy(structure, scores.detach().double())
    torch.testing.assert_close(structure.entropy(scores).double(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("structure", [s for s in STRUCTURES if s.summed_scores is not None],
                         ids=repr)
def test_float64_scores_beyond_the_summable_range_are_refused_by_name(structure):
    scores = torch.full((2, *structure.score_shape), torch.finfo(torch.float64).max / 2,
                        dtype=torch.float64)
    for method in ("log_partition", "marginals", "entropy"):
        with pytest.raises(ValueError, match=r"scores of .* must have magnitude below"):
            getattr(structure, method)(scores)


def test_categorical_entropy_of_extreme_logits_has_no_nan_in_value_or_gradient():
    big = torch.finfo(torch.float32).max
    logits = torch.tensor([[big, -big, 0.0], [big, big, -big]], requires_grad=True)
    h = Categorical(3).entropy(logits)
    torch.testing.assert_close(h, torch.tensor([0.0, math.log(2)]))
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_entropy_gradient_matches_finite_differences(structure):
    """The shifted float64 entropy and the bits' closed form keep autograd's gradient exact."""
    gen = torch.Generator().manual_seed(3)
    scores = (_scores(structure, 2.0, gen, batch=2) + 50.0).requires_grad_()
    if isinstance(structure, SpanningTree):  # perturb edges: one entry alone breaks symmetry
        i, j = structure.edges.T
        edges = scores.detach()[:, i, j].requires_grad_()
        assert torch.autograd.gradcheck(lambda e: structure.entropy(structure.from_edges(e)),
                                        (edges,))
        return
    assert torch.autograd.gradcheck(structure.entropy, (scores,))


@pytest.mark.parametrize("structure", [SpanningTree(4), Arborescence(4, root=0)], ids=repr)
def test_sparsemap_refuses_float64_tree_scores_beyond_the_summable_range(structure):
    """The active set sums <θ, z> in float64; it used to fail with a misleading message."""
    from latentgrad import sparsemap

    scores = torch.full((1, *structure.score_shape), torch.finfo(torch.float64).max / 2,
                        dtype=torch.float64)
    with pytest.raises(ValueError, match=r"scores of .* must have magnitude below"):
        sparsemap(scores, structure)


@pytest.mark.parametrize("structure", [SpanningTree(4), Arborescence(4), Arborescence(4, 0)],
                         ids=repr)
def test_tree_log_prob_of_the_largest_float32_scores_is_finite_with_finite_gradient(structure):
    """log p(z) = <θ, z> - log Z runs in float64 like the matrix-tree log Z: the float32 score
    sums used to overflow (inf - inf) and the score-function estimators got NaN."""
    scores = _extreme_scores(structure)
    z = structure.argmax(scores.detach())
    log_p = structure.log_prob(scores, z)
    assert log_p.dtype == torch.float32
    assert torch.isfinite(log_p).all() and (log_p <= 0).all()
    log_p.sum().backward()
    assert torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("structure", [SpanningTree(3), Arborescence(3)], ids=repr)
def test_tree_entropy_names_an_infinite_score_as_log_partition_does(structure):
    """Trees need finite scores; the entropy's common shift turned -inf into NaN before the check
    and the error said "contains NaN"."""
    scores = torch.zeros(3, 3)
    scores[0, 1] = scores[1, 0] = float("-inf")
    for method in (structure.log_partition, structure.entropy):
        with pytest.raises(ValueError, match="scores contains an infinite value"):
            method(scores)
