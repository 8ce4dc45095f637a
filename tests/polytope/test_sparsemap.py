"""SparseMAP against brute-force projections onto enumerated marginal polytopes (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from _polytope_bruteforce import VertexSet, kkt_violation, project_bruteforce
from hypothesis import example, given, settings
from hypothesis import strategies as st

from latentgrad.polytope.sparsemap import sparsemap
from latentgrad.structures.arborescence import Arborescence
from latentgrad.structures.bitvector import BitVector
from latentgrad.structures.categorical import Categorical
from latentgrad.structures.ksubset import KSubset
from latentgrad.structures.spanning_tree import SpanningTree

F64 = torch.float64


def _vertex_set() -> VertexSet:
    """7 vertices of the 3-cube plus a repeated-direction vertex set in 4-D (affinely dependent)."""
    g = torch.Generator().manual_seed(3)
    v = (torch.rand(9, 4, generator=g) > 0.5).to(F64)
    return VertexSet(torch.unique(v, dim=0))


STRUCTURES = {
    "bitvector": BitVector(5),
    "bitvector_budget": BitVector(6, budget=3),
    "ksubset": KSubset(6, 3),
    "categorical": Categorical(5),
    "vertex_set": _vertex_set(),
    "spanning_tree": SpanningTree(4),
    "arborescence": Arborescence(4, root=0),
    "dependency_tree": Arborescence(4),
    "arborescence_root2": Arborescence(4, root=2),
}


CARDINALITY = ["bitvector", "bitvector_budget", "ksubset", "categorical"]
#: every structure through the active set, and the cardinality polytopes through the threshold
#: solver too (``"auto"`` picks it for them)
CASES = [(name, "active_set") for name in sorted(STRUCTURES)] + [
    (name, "threshold") for name in CARDINALITY
]


def _scores(structure, batch=(4,), seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    theta = scale * torch.randn(*batch, *structure.score_shape, generator=g, dtype=F64)
    return (theta + theta.mT) / 2 if isinstance(structure, SpanningTree) else theta


@pytest.mark.parametrize("name, solver", CASES)
def test_sparsemap_matches_bruteforce_projection(name, solver):
    structure = STRUCTURES[name]
    theta = _scores(structure, batch=(6,), seed=1)
    res = sparsemap(theta, structure, solver=solver)
    expected = torch.stack([project_bruteforce(t, structure) for t in theta])
    torch.testing.assert_close(res.marginals, expected, atol=1e-6, rtol=0)
    assert res.exact.all()


@pytest.mark.parametrize("name, solver", CASES)
def test_sparsemap_satisfies_kkt_conditions(name, solver):
    """Every structure scores <θ − μ, z> ≤ <θ − μ, μ>, with equality on the support."""
    structure = STRUCTURES[name]
    theta = _scores(structure, batch=(8,), seed=2, scale=3.0)
    res = sparsemap(theta, structure, solver=solver)
    primal, slack = kkt_violation(theta, structure, res)
    assert primal <= 1e-9 and slack <= 1e-9
    torch.testing.assert_close(res.weights.sum(-1), torch.ones(8, dtype=F64))
    assert (res.weights >= 0).all()
    recon = torch.einsum("bs,bs...->b...", res.weights, res.support)
    torch.testing.assert_close(recon, res.marginals)


@pytest.mark.parametrize("solver", ["active_set", "threshold"])
def test_support_is_compact_distinct_and_heaviest_first(solver):
    structure = BitVector(6)
    res = sparsemap(_scores(structure, batch=(10,), seed=4, scale=1.0), structure, solver=solver)
    width = res.weights.shape[-1]
    assert width == int(res.support_size.max())
    positions = torch.arange(width)
    active = positions < res.support_size.unsqueeze(-1)
    assert torch.equal(res.weights > 0, active)
    assert (res.support[~active] == 0).all()
    assert (res.weights[:, :-1] >= res.weights[:, 1:]).all()
    for b in range(10):
        k = int(res.support_size[b])
        assert torch.unique(res.support[b, :k], dim=0).shape[0] == k


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(1, 12),
    scale=st.floats(0.1, 4.0),
    seed=st.integers(0, 2**16),
)
def test_unbudgeted_bitvector_marginals_are_clipped_scores(d, scale, seed):
    g = torch.Generator().manual_seed(seed)
    t = 0.5 + scale * torch.randn(3, d, generator=g, dtype=F64)
    res = sparsemap(t, BitVector(d))
    torch.testing.assert_close(res.marginals, t.clamp(0, 1), atol=1e-9, rtol=0)
    assert res.exact.all()


def test_categorical_sparsemap_equals_sparsemax_by_sorting():
    theta = _scores(Categorical(7), batch=(5,), seed=5)
    res = sparsemap(theta, Categorical(7))
    srt, _ = theta.sort(-1, descending=True)
    cums = srt.cumsum(-1) - 1
    ks = torch.arange(1, 8, dtype=F64)
    k = ((srt * ks) > cums).sum(-1, keepdim=True)
    tau = cums.gather(-1, k - 1) / k
    torch.testing.assert_close(res.marginals, (theta - tau).clamp_min(0))


def test_budget_marginals_respect_the_budget():
    structure = BitVector(10, budget=4)
    theta = 1.0 + _scores(structure, batch=(16,), seed=6)
    res = sparsemap(theta, structure)
    assert (res.marginals.sum(-1) <= 4 + 1e-9).all()
    assert ((res.marginals >= -1e-12) & (res.marginals <= 1 + 1e-12)).all()
    assert (res.support.sum(-1) <= 4).all()
    primal, slack = kkt_violation(theta, structure, res)
    assert primal <= 1e-9 and slack <= 1e-9


def test_capacity_growth_and_inverse_refresh_on_large_supports():
    """Scores inside (0, 1) on 40 bits need dozens of structures (the capacity grows in steps of
    4 up to 41, with its storage reallocated several times) and more than 32 iterations (the
    bordered inverse is refactorised every 32)."""
    g = torch.Generator().manual_seed(7)
    t = 0.05 + 0.9 * torch.rand(3, 40, generator=g, dtype=F64)
    res = sparsemap(t, BitVector(40), solver="active_set")
    assert (res.support_size > 16).all() and (res.n_iter > 32).all()
    torch.testing.assert_close(res.marginals, t, atol=1e-9, rtol=0)
    torch.testing.assert_close(res.weights.sum(-1), torch.ones(3, dtype=F64))


def test_tolerance_below_rounding_noise_degrades_gracefully():
    """tol = 1e-14 makes the solver chase rounding noise into ill-conditioned active sets: the
    drift check keeps the bordered inverse accurate, so the answer stays close and the
    certificate stays honest (flagged rows are the ones whose gap fails the test)."""
    g = torch.Generator().manual_seed(21)
    t = torch.randn(48, 64, generator=g, dtype=F64)
    res = sparsemap(t, BitVector(64), tol=1e-14, solver="active_set")
    torch.testing.assert_close(res.weights.sum(-1), torch.ones(48, dtype=F64))
    torch.testing.assert_close(res.marginals, t.clamp(0, 1), atol=1e-5, rtol=0)
    resid = t - res.marginals
    gap = (resid * BitVector(64).argmax(resid)).sum(-1) - (resid * res.marginals).sum(-1)
    assert (gap[res.exact] <= 1e-12).all()


def test_rows_finishing_at_different_times_are_compacted_correctly():
    """Rows with 1 to 25 iterations in one batch (finished rows leave the working set)."""
    g = torch.Generator().manual_seed(17)
    t = 0.5 + torch.randn(24, 24, generator=g, dtype=F64) * torch.linspace(0.2, 20, 24)[:, None]
    res = sparsemap(t, BitVector(24), solver="active_set")
    assert res.n_iter.min() <= 2 and res.n_iter.max() >= 15
    torch.testing.assert_close(res.marginals, t.clamp(0, 1), atol=1e-9, rtol=0)
    singles = [sparsemap(row, BitVector(24), solver="active_set") for row in t[[0, 11, 23]]]
    for i, single in zip([0, 11, 23], singles):
        k = int(single.support_size)
        torch.testing.assert_close(res.weights[i, :k], single.weights[:k])
        torch.testing.assert_close(res.support[i, :k], single.support[:k])


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_batch_shapes_and_rows_are_independent(batch):
    structure = KSubset(7, 3)
    theta = _scores(structure, batch=batch, seed=8)
    res = sparsemap(theta, structure)
    assert res.marginals.shape == (*batch, 7)
    assert res.weights.shape[:-1] == batch and res.support.shape[:-2] == batch
    assert res.support_size.shape == batch and res.n_iter.shape == batch
    flat = theta.reshape(-1, 7)
    singles = torch.stack([sparsemap(row, structure).marginals for row in flat])
    torch.testing.assert_close(res.marginals.reshape(-1, 7), singles)


def test_inference_mode_gives_the_same_solution_as_grad_mode():
    """Evaluation loops (Lightning's) run under torch.inference_mode: the solver still works."""
    theta = torch.randn(3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    theta = (theta + theta.mT) / 2
    want = sparsemap(theta, SpanningTree(5))
    with torch.inference_mode():
        got = sparsemap(theta, SpanningTree(5))
    torch.testing.assert_close(got.marginals, want.marginals)
    torch.testing.assert_close(got.weights, want.weights)


@pytest.mark.parametrize("solver", ["active_set", "threshold"])
def test_empty_batch(solver):
    res = sparsemap(torch.zeros(0, 4, dtype=F64), BitVector(4), solver=solver)
    assert res.marginals.shape == (0, 4) and res.support_size.shape == (0,)


@pytest.mark.parametrize(
    "structure, theta",
    [
        (KSubset(6, 2), torch.zeros(6, dtype=F64)),  # all 15 subsets tie
        (BitVector(6), torch.full((6,), 0.5, dtype=F64)),  # interior point, many decompositions
        (BitVector(5, budget=2), torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0], dtype=F64)),
        (Categorical(5), torch.tensor([2.0, 2.0, 2.0, 0.0, 0.0], dtype=F64)),
        (BitVector(4), torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=F64)),  # on vertices/edges
        (_vertex_set(), torch.ones(4, dtype=F64)),
    ],
)
@pytest.mark.parametrize("solver", ["auto", "active_set"])
def test_degenerate_ties_give_finite_optimal_results_and_gradients(structure, theta, solver):
    theta = theta.clone().requires_grad_(True)
    res = sparsemap(theta.unsqueeze(0), structure, solver=solver)
    primal, slack = kkt_violation(theta.detach().unsqueeze(0), structure, res)
    assert primal <= 1e-9 and slack <= 1e-9
    torch.testing.assert_close(
        res.marginals[0].detach(), project_bruteforce(theta.detach(), structure)
    )
    loss = (
        res.marginals * torch.arange(1.0, theta.numel() + 1, dtype=F64)
    ).sum() + res.weights.square().sum()
    (grad,) = torch.autograd.grad(loss, theta)
    assert torch.isfinite(grad).all()


TIE_STRUCTURES = ["bitvector", "bitvector_budget", "ksubset", "spanning_tree", "dependency_tree"]


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(TIE_STRUCTURES),
    values=st.lists(st.integers(-4, 4), min_size=16, max_size=16),
    denominator=st.sampled_from([1, 2, 4]),
)
@example(name="bitvector_budget", values=[2, 2, 3, 1, 0, -1] + [0] * 10, denominator=4)
@pytest.mark.parametrize("solver", ["auto", "active_set"])
def test_scores_on_a_coarse_grid_with_many_ties_are_solved_exactly(
    name, values, denominator, solver
):
    """Integer-ish scores make many structures tie and many active sets degenerate."""
    structure = STRUCTURES[name]
    size = math.prod(structure.score_shape)
    theta = torch.tensor(values[:size], dtype=F64).view(structure.score_shape) / denominator
    if isinstance(structure, SpanningTree):
        theta = (theta + theta.mT) / 2
    x = theta.clone().requires_grad_(True)
    res = sparsemap(x.unsqueeze(0), structure, solver=solver)
    primal, slack = kkt_violation(theta.unsqueeze(0), structure, res)
    assert primal <= 1e-9 and slack <= 1e-9 and res.exact.all()
    expected = project_bruteforce(theta, structure)
    torch.testing.assert_close(res.marginals[0].detach(), expected, atol=1e-7, rtol=0)
    (grad,) = torch.autograd.grad(res.marginals.sum() + res.weights.square().sum(), x)
    assert torch.isfinite(grad).all()


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(["ksubset", "spanning_tree", "dependency_tree"]),
    values=st.lists(st.integers(-4, 4), min_size=16, max_size=16),
    offset=st.sampled_from([1e4, 1e8, 1e10]),
)
def test_tied_scores_far_from_zero_are_solved_to_the_resolution_of_the_offset(
    name, values, offset
):
    """Every structure of these has the same size, so θ + c has the projection of θ; ties on a
    grid of halves (exact in float64 at |θ| ≤ 1e10) must be split as brute force splits them,
    to some ulps of c, on every row the solver certifies."""
    structure = STRUCTURES[name]
    size = math.prod(structure.score_shape)
    theta = torch.tensor(values[:size], dtype=F64).view(structure.score_shape) / 2
    if isinstance(structure, SpanningTree):
        theta = (theta + theta.mT) / 2
    res = sparsemap((theta + offset).unsqueeze(0), structure, solver="active_set")
    expected = project_bruteforce(theta, structure)
    assert res.exact.all()
    atol = 64 * torch.finfo(F64).eps * offset
    torch.testing.assert_close(res.marginals[0], expected, atol=atol, rtol=0)


@pytest.mark.parametrize(
    "name, solver",
    [
        (name, solver)
        for name in [*CARDINALITY[:3], "vertex_set", "spanning_tree", "arborescence",
                     "dependency_tree", "arborescence_root2"]
        for solver in ("auto", "active_set")
        if solver == "auto" or name in CARDINALITY
    ],
)
def test_vjp_matches_finite_differences_of_bruteforce_projection(name, solver):
    """μ is piecewise linear in θ: central differences of the brute-force QP give the Jacobian."""
    structure = STRUCTURES[name]
    theta = _scores(structure, batch=(), seed=9)
    cot = torch.randn(structure.score_shape, generator=torch.Generator().manual_seed(10), dtype=F64)
    x = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((sparsemap(x, structure, solver=solver).marginals * cot).sum(), x)
    eps = 1e-6
    fd = torch.zeros_like(theta)
    for i in range(theta.numel()):
        h = torch.zeros_like(theta).view(-1)
        h[i] = eps
        h = h.view_as(theta)
        up = project_bruteforce(theta + h, structure)
        down = project_bruteforce(theta - h, structure)
        fd.view(-1)[i] = ((up - down) * cot).sum() / (2 * eps)
    torch.testing.assert_close(grad, fd, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "name, solver",
    [(name, "active_set")
     for name in [*CARDINALITY, "spanning_tree", "dependency_tree", "arborescence_root2"]]
    + [(name, "threshold") for name in CARDINALITY],
)
def test_gradcheck_weights_and_marginals(name, solver):
    """Gradcheck through a symmetric parametrisation (SpanningTree requires symmetric scores)."""
    structure = STRUCTURES[name]
    theta = _scores(structure, batch=(3,), seed=11).requires_grad_(True)
    sym = isinstance(structure, SpanningTree)

    def fn(x):
        res = sparsemap((x + x.mT) / 2 if sym else x, structure, solver=solver)
        return res.weights, res.marginals

    assert torch.autograd.gradcheck(fn, (theta,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "name, solver",
    [(name, "active_set") for name in [*CARDINALITY, "spanning_tree", "dependency_tree"]]
    + [(name, "threshold") for name in CARDINALITY],
)
def test_double_backward_through_the_marginals(name, solver):
    """A gradient penalty through μ: with g = ∇_θ ½‖μ‖² = Jᵀμ, ∇_θ <g, r> = JᵀJr (μ is piecewise
    linear in θ, so J itself has no derivative). The active set's backward was
    ``once_differentiable``: ``torch.autograd.grad`` never reached its error node and silently
    returned 0 (or "unused") for that path instead of JᵀJr."""
    structure = STRUCTURES[name]
    sym = isinstance(structure, SpanningTree)
    theta = _scores(structure, batch=(2,), seed=11).requires_grad_(True)

    def marginals(x):
        return sparsemap((x + x.mT) / 2 if sym else x, structure, solver=solver).marginals

    mu = marginals(theta)
    (g,) = torch.autograd.grad(0.5 * mu.square().sum(), theta, create_graph=True)
    r = torch.randn(theta.shape, generator=torch.Generator().manual_seed(12), dtype=F64)
    (gg,) = torch.autograd.grad((g * r).sum(), theta, allow_unused=True, materialize_grads=True)
    jac = torch.autograd.functional.jacobian(marginals, theta.detach()).reshape(mu.numel(), -1)
    expected = (jac.T @ (jac @ r.flatten())).view_as(theta)
    assert expected.abs().max() > 0.1  # the path that was cut carries a real signal
    torch.testing.assert_close(gg, expected)


def test_warm_start_gives_the_same_answer_in_fewer_iterations():
    structure = BitVector(10, budget=5)
    theta = 0.5 + _scores(structure, batch=(8,), seed=12, scale=0.8)
    first = sparsemap(theta, structure, solver="active_set")
    moved = theta + 0.01 * _scores(structure, batch=(8,), seed=13)
    cold = sparsemap(moved, structure, solver="active_set")
    warm = sparsemap(moved, structure, init=first, solver="active_set")
    torch.testing.assert_close(warm.marginals, cold.marginals, atol=1e-9, rtol=0)
    assert warm.exact.all()
    assert warm.n_iter.sum() < cold.n_iter.sum()
    again = sparsemap(theta, structure, init=(first.support, first.weights), solver="active_set")
    assert (again.n_iter == 1).all()
    torch.testing.assert_close(again.marginals, first.marginals)


def test_warm_start_from_affinely_dependent_set_falls_back_to_map():
    """{00, 11, 10, 01} is affinely dependent: that row restarts from MAP and still converges."""
    structure = BitVector(2)
    support = torch.tensor(
        [[[0, 0], [1, 1], [1, 0], [0, 1]], [[1, 0], [0, 0], [0, 0], [0, 0]]], dtype=F64
    )
    weights = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]], dtype=F64)
    theta = torch.tensor([[0.3, 0.6], [0.2, 1.7]], dtype=F64)
    res = sparsemap(theta, structure, init=(support, weights), solver="active_set")
    torch.testing.assert_close(res.marginals, theta.clamp(0, 1))
    assert torch.isfinite(res.weights).all() and res.exact.all()


def test_iteration_cap_returns_a_distribution_whose_certificate_is_honest():
    structure = BitVector(8)
    theta = 0.5 + 0.2 * _scores(structure, batch=(6,), seed=14)
    res = sparsemap(theta, structure, max_iter=3, solver="active_set")
    assert (res.n_iter <= 3).all() and not res.exact.all()
    torch.testing.assert_close(res.weights.sum(-1), torch.ones(6, dtype=F64))
    optimal = (res.marginals - theta.clamp(0, 1)).abs().amax(-1) < 1e-9
    assert torch.equal(res.exact, optimal)


@pytest.mark.parametrize("solver", ["active_set", "threshold"])
def test_float32_matches_float64_and_half_is_cast_back(solver):
    structure = BitVector(12, budget=6)
    theta = _scores(structure, batch=(32,), seed=15)
    ref = sparsemap(theta, structure, solver=solver).marginals
    res32 = sparsemap(theta.float(), structure, solver=solver)
    assert res32.marginals.dtype == torch.float32 and res32.exact.all()
    assert res32.support.dtype == torch.float32
    torch.testing.assert_close(res32.marginals.double(), ref, atol=1e-4, rtol=0)
    res16 = sparsemap(theta.to(torch.bfloat16), structure, solver=solver)
    assert res16.weights.dtype == torch.bfloat16 and res16.marginals.dtype == torch.bfloat16


@pytest.mark.parametrize("solver", ["active_set", "threshold"])
def test_large_scores_do_not_overflow(solver):
    structure = KSubset(8, 3)
    theta = 1e4 * _scores(structure, batch=(5,), seed=16)
    res = sparsemap(theta, structure, solver=solver)
    assert torch.isfinite(res.marginals).all()
    torch.testing.assert_close(res.marginals, structure.argmax(theta))


@pytest.mark.parametrize("structure", [BitVector(16, budget=8), KSubset(16, 5)], ids=repr)
@pytest.mark.parametrize("scale", [1.0, 1e4, 1e8, 1e12])
def test_active_set_resolves_tied_huge_scores_like_the_threshold_search(structure, scale):
    """Tied scores ±scale·{0, 1, 2} (exact in float64): the projection splits each tie evenly,
    whatever the scale. The active set must find it and certify it; a stopping test relative to
    |<θ, z>| would accept a single vertex (gaps of order 1 < 1e-9·|<θ, z>|) and call it exact."""
    g = torch.Generator().manual_seed(23)
    theta = scale * torch.randint(-2, 3, (64, 16), generator=g).to(F64)
    ref = sparsemap(theta, structure, solver="threshold").marginals
    res = sparsemap(theta, structure, solver="active_set")
    assert res.exact.all()
    torch.testing.assert_close(res.marginals, ref, atol=64 * torch.finfo(F64).eps, rtol=0)


@pytest.mark.parametrize("offset", [1e4, 1e8, 1e10])
def test_tree_marginals_are_shift_invariant_to_the_resolution_of_the_scores(offset):
    """Every spanning tree has n − 1 edges, so θ + c has the projection of θ. With
    θ = (θ₀ + c) − c formed exactly, the solver working at |θ| ≈ c must agree with the one at
    |θ₀| ≈ 1 to some ulps of c on every row it certifies (and certify nearly all of them)."""
    g = torch.Generator().manual_seed(24)
    theta = torch.randn(32, 8, 8, generator=g, dtype=F64)
    big = (theta + theta.mT) / 2 + offset
    ref = sparsemap(big - offset, SpanningTree(8))
    res = sparsemap(big, SpanningTree(8))
    assert ref.exact.all() and res.exact.double().mean() > 0.9
    err = (res.marginals - ref.marginals).abs().flatten(1).amax(1)
    assert (err[res.exact] <= 64 * torch.finfo(F64).eps * offset).all()


def test_scores_beyond_the_resolution_of_float64_are_never_certified():
    """At |θ| = 2⁴⁴ an ulp is 2⁻⁸: θ − μ no longer resolves the marginals, so no row is exact
    (the solver still returns a distribution over structures)."""
    g = torch.Generator().manual_seed(25)
    theta = 2.0**44 * torch.randint(-2, 3, (16, 16), generator=g).to(F64)
    res = sparsemap(theta, BitVector(16, budget=8), solver="active_set")
    assert not res.exact.any()
    torch.testing.assert_close(res.weights.sum(-1), torch.ones(16, dtype=F64))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"scores": torch.zeros(3, 4, dtype=F64)}, ValueError, "trailing shape"),
        ({"scores": torch.tensor([[0.0, float("nan"), 0.0, 0.0, 0.0]])}, ValueError, "NaN"),
        ({"scores": torch.tensor([[0.0, float("-inf"), 0.0, 0.0, 0.0]])}, ValueError, "infinite"),
        ({"scores": torch.zeros(3, 5, dtype=torch.long)}, TypeError, "floating-point"),
        ({"structure": "bits"}, TypeError, "Structure"),
        ({"max_iter": 0}, ValueError, "max_iter"),
        ({"tol": -1.0}, ValueError, "tol"),
        ({"tol": float("inf")}, ValueError, "tol must be a positive finite"),  # certified the MAP
        (  # a 0/1 vector that is not a structure: the answer left the polytope, marked exact
            {"structure": BitVector(5, budget=2), "solver": "active_set",
             "init": (torch.ones(3, 1, 5), torch.ones(3, 1))},
            ValueError,
            r"init support must hold structures of BitVector\(d=5, budget=2\)",
        ),
        ({"init": torch.zeros(3, 1, 5)}, TypeError, "init"),
        ({"init": (torch.zeros(3, 1, 4), torch.ones(3, 1))}, ValueError, "init"),
        ({"init": (torch.zeros(3, 1, 5), -torch.ones(3, 1))}, ValueError, "nonnegative"),
        ({"init": (torch.full((3, 1, 5), 0.5), torch.ones(3, 1))}, ValueError, "0/1"),
        ({"solver": "exact"}, ValueError, "solver must be one of"),
        (
            {"scores": torch.zeros(3, 4, 4), "structure": SpanningTree(4), "solver": "threshold"},
            ValueError,
            "solver='threshold' needs",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(kwargs, exc, match):
    args = {"scores": torch.zeros(3, 5), "structure": BitVector(5)} | kwargs
    with pytest.raises(exc, match=match):
        sparsemap(**args)


class _SquaredScore(SpanningTree):
    """A structure whose score is not a weighted sum of the products θ_i z_i."""

    def score(self, scores, z):
        return super().score(scores, z) ** 2


def test_a_score_that_is_not_a_weighted_sum_is_refused():
    """A value check (with validation on, the default), so it is off the hot path when off."""
    theta = torch.randn(2, 4, 4, dtype=F64)
    with pytest.raises(ValueError, match="weighted sum of products"):
        sparsemap(theta + theta.mT, _SquaredScore(4))
