"""The threshold solver of SparseMAP on cardinality polytopes, against the active set, an
independent bisection, enumeration, and the properties its decomposition promises."""

from __future__ import annotations

import pytest
import torch
from _polytope_bruteforce import project_bruteforce
from hypothesis import given, settings
from hypothesis import strategies as st

from latentgrad.polytope._cardinality import cardinality_bounds
from latentgrad.polytope.sparsemap import sparsemap
from latentgrad.structures.bitvector import BitVector
from latentgrad.structures.categorical import Categorical
from latentgrad.structures.ksubset import KSubset
from latentgrad.structures.spanning_tree import SpanningTree

F64 = torch.float64
EPS = torch.finfo(F64).eps


def _bisection_projection(theta: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Reference: clip(θ − τ, 0, 1) with τ by 200 bisection steps on Σ clip(θ − τ, 0, 1)."""
    total = theta.clamp(0, 1).sum(-1, keepdim=True)
    target = torch.where(total > hi, float(hi), torch.where(total < lo, float(lo), total))
    left = (theta.amin(-1, keepdim=True) - 1).expand_as(target).clone()
    right = theta.amax(-1, keepdim=True).expand_as(target).clone()
    for _ in range(200):
        mid = (left + right) / 2
        above = (theta - mid).clamp(0, 1).sum(-1, keepdim=True) > target
        left, right = torch.where(above, mid, left), torch.where(above, right, mid)
    tau = torch.where((total > hi) | (total < lo), (left + right) / 2, 0.0)
    return (theta - tau).clamp(0, 1)


def _check_decomposition(structure, res, theta: torch.Tensor) -> None:
    """The promises of the threshold solver's output, for one batch of float64 scores."""
    lo, hi = cardinality_bounds(structure)
    n = theta.shape[-1]
    size = res.support_size
    width = res.weights.shape[-1]
    active = torch.arange(width) < size.unsqueeze(-1)
    # 0/1 structures of the right cardinality, zero padding, heaviest first, distinct
    assert ((res.support == 0) | (res.support == 1)).all()
    counts = res.support.sum(-1)
    assert ((counts >= lo) & (counts <= hi))[active].all()
    assert (res.support[~active] == 0).all()
    assert torch.equal(res.weights > 0, active)
    assert (res.weights[..., :-1] >= res.weights[..., 1:]).all()
    # a distribution whose mean is the projection, with affinely independent structures (so no
    # more of them than the dimension of the face of μ plus one: Carathéodory)
    torch.testing.assert_close(res.weights.sum(-1), torch.ones_like(res.weights[..., 0]))
    recon = torch.einsum("bs,bsn->bn", res.weights, res.support)
    torch.testing.assert_close(recon, res.marginals, atol=64 * n * EPS, rtol=0)
    expected = _bisection_projection(theta, lo, hi)
    torch.testing.assert_close(res.marginals, expected, atol=1e-10, rtol=0)
    frac = ((res.marginals > 0) & (res.marginals < 1)).sum(-1)
    assert (size <= frac + 1).all()
    for b in range(theta.shape[0]):
        k = int(size[b])
        lifted = torch.cat([res.support[b, :k], torch.ones(k, 1, dtype=F64)], 1)
        assert int(torch.linalg.matrix_rank(lifted)) == k


STRUCTURES = [
    BitVector(12),
    BitVector(12, budget=4),
    BitVector(12, budget=12),
    KSubset(12, 5),
    KSubset(7, 1),
    Categorical(9),
]


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])
def test_same_marginals_as_the_active_set_with_supports_no_larger(structure, scale):
    g = torch.Generator().manual_seed(0)
    theta = 0.3 + scale * torch.randn(64, structure.score_shape[0], generator=g, dtype=F64)
    fast = sparsemap(theta, structure)
    slow = sparsemap(theta, structure, solver="active_set")
    assert slow.exact.all()
    torch.testing.assert_close(fast.marginals, slow.marginals, atol=1e-9, rtol=0)
    assert (fast.support_size <= slow.support_size).all()
    assert (fast.n_iter == 0).all() and fast.exact.all()
    _check_decomposition(structure, fast, theta)


def test_budget_off_the_constraint_with_more_fractional_bits_than_budget():
    """Σμ < B but more than B fractional bits: the staircase would exceed the budget, so the
    structures come from systematic sampling, of ⌊Σμ⌋ or ⌈Σμ⌉ bits."""
    structure = BitVector(10, budget=4)
    g = torch.Generator().manual_seed(1)
    theta = 0.1 + 0.35 * torch.rand(16, 10, generator=g, dtype=F64)
    res = sparsemap(theta, structure)
    torch.testing.assert_close(res.marginals, theta)
    _check_decomposition(structure, res, theta)
    counts = res.support.sum(-1)[res.weights > 0]
    assert counts.max() <= 4 and counts.min() >= 2


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["bits", "budget", "subset", "categorical"]),
    n=st.integers(1, 40),
    k=st.integers(0, 40),
    scale=st.sampled_from([0.05, 0.5, 1.0, 3.0, 1e3]),
    grid=st.sampled_from([0, 2, 4]),
    seed=st.integers(0, 2**16),
)
def test_decomposition_properties_on_random_and_tied_scores(kind, n, k, scale, grid, seed):
    """Scores rounded to a coarse grid (grid > 0) make many marginals tie or sit on 0 and 1."""
    k = min(k, n)
    structure = {
        "bits": BitVector(n),
        "budget": BitVector(n, budget=k),
        "subset": KSubset(n, k),
        "categorical": Categorical(n),
    }[kind]
    g = torch.Generator().manual_seed(seed)
    theta = 0.5 + scale * torch.randn(8, n, generator=g, dtype=F64)
    if grid:
        theta = (theta * grid).round() / grid
    res = sparsemap(theta, structure)
    _check_decomposition(structure, res, theta)


@pytest.mark.parametrize(
    "structure", [BitVector(5), BitVector(6, budget=2), KSubset(6, 3), Categorical(4)], ids=repr
)
def test_marginals_match_enumeration(structure):
    g = torch.Generator().manual_seed(2)
    theta = 0.4 + 1.2 * torch.randn(6, structure.score_shape[0], generator=g, dtype=F64)
    res = sparsemap(theta, structure)
    expected = torch.stack([project_bruteforce(t, structure) for t in theta])
    torch.testing.assert_close(res.marginals, expected, atol=1e-9, rtol=0)


def test_scores_near_the_breakpoints_give_valid_structures():
    """Marginals within a few ulps of 0 and 1 and of each other: the decomposition's
    cumulative sums are clamped and its breakpoints clustered, so every structure stays valid
    and no sliver structure of weight ~eps appears."""
    structure = KSubset(9, 4)
    base = torch.tensor([1.0, 1.0 + 1e-15, 0.5, 0.5 + 3e-16, 0.25, 0.25, 0.0, -1e-16, 0.75])
    theta = (base + torch.linspace(0, 1, 12).unsqueeze(1) * 1e-14).to(F64)
    res = sparsemap(theta, structure)
    _check_decomposition(structure, res, theta)
    assert (res.weights[res.weights > 0] > 1e-10).all()


def test_long_vectors_use_the_wide_ring():
    """Beyond 253 coordinates the membership ring is int32 with an explicit mod."""
    structure = BitVector(300, budget=100)
    g = torch.Generator().manual_seed(3)
    theta = 0.6 + 0.6 * torch.randn(3, 300, generator=g, dtype=F64)
    res = sparsemap(theta, structure)
    _check_decomposition(structure, res, theta)


@pytest.mark.parametrize(
    "structure, box",
    [
        (BitVector(6), (0.2, 0.6)),
        (BitVector(6, budget=2), (0.1, 1.0)),
        (BitVector(6, budget=4), (0.1, 0.3)),
        (KSubset(6, 2), (-1.0, 2.0)),
        (Categorical(5), (-1.0, 2.0)),
    ],
    ids=["staircase", "on-budget", "off-budget-systematic", "ksubset", "categorical"],
)
def test_gradcheck_weights_and_marginals_in_every_regime(structure, box):
    """Uniform scores in [low, low + spread): each regime of the decomposition."""
    low, spread = box
    g = torch.Generator().manual_seed(4)
    theta = low + spread * torch.rand(4, structure.score_shape[0], generator=g, dtype=F64)
    theta.requires_grad_(True)

    def fn(x):
        res = sparsemap(x, structure, solver="threshold")
        return res.weights, res.marginals

    assert torch.autograd.gradcheck(fn, (theta,), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_marginal_gradients_equal_the_active_sets(structure):
    g = torch.Generator().manual_seed(9)
    theta = 0.3 + torch.randn(16, structure.score_shape[0], generator=g, dtype=F64)
    cot = torch.randn(theta.shape, generator=g, dtype=F64)
    grads = []
    for solver in ("threshold", "active_set"):
        x = theta.clone().requires_grad_(True)
        (sparsemap(x, structure, solver=solver).marginals * cot).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-8, rtol=0)


def test_float32_scores_are_solved_in_float64():
    structure = BitVector(64, budget=20)
    g = torch.Generator().manual_seed(10)
    theta = 0.5 + torch.randn(32, 64, generator=g, dtype=F64)
    res = sparsemap(theta.float(), structure)
    ref = sparsemap(theta, structure)
    assert res.weights.dtype == res.support.dtype == res.marginals.dtype == torch.float32
    torch.testing.assert_close(res.marginals.double(), ref.marginals, atol=1e-6, rtol=0)
    torch.testing.assert_close(res.weights.sum(-1), torch.ones(32))


def test_only_the_exact_classes_take_the_threshold_path():
    class Tweaked(BitVector):  # a subclass may change the oracle
        pass

    assert cardinality_bounds(BitVector(4, budget=2)) == (0, 2)
    assert cardinality_bounds(KSubset(5, 3)) == (3, 3)
    assert cardinality_bounds(Categorical(3)) == (1, 1)
    assert cardinality_bounds(Tweaked(4)) is None
    assert cardinality_bounds(SpanningTree(4)) is None


@pytest.mark.parametrize("structure", [Categorical(5), KSubset(5, 2), BitVector(5, budget=2)],
                         ids=repr)
@pytest.mark.parametrize("exponent", [10, 16, 30, 300])
def test_threshold_path_is_exact_for_tied_scores_at_any_scale(structure, exponent):
    """Scores ±10^e tie in groups; the projection is that of ±10^3 (the same tie pattern, where
    float64 is exact). The search used to run on θ itself: from 1e10 Σμ drifted by 4e-6 and
    from 1e16 (where θ − 1 == θ) the marginals left the polytope (Σμ = 2 for a categorical)."""
    gen = torch.Generator().manual_seed(exponent)
    signs = torch.randn(128, 5, generator=gen, dtype=torch.float64).sign()
    want = sparsemap(signs * 1e3, structure)
    got = sparsemap(signs * 10.0**exponent, structure)
    torch.testing.assert_close(got.marginals, want.marginals, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.weights.sum(-1), torch.ones(128, dtype=torch.float64))
