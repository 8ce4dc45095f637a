"""SpanningTree: every oracle against brute force over Prüfer-decoded trees (float64)."""

from __future__ import annotations

import networkx as nx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import latentgrad as lg
from _references import pruefer_trees
from latentgrad.structures._matrix_tree import log_count_rooted_at_zero
from latentgrad.structures.spanning_tree import SpanningTree

F64 = torch.float64
# Two log-partition computations of a 4-node graph (an elimination and a brute-force sum, or a
# batch and a single row) agree to O(n^3) roundings of the log-scale values: n^3 * eps, times 8.
ELIMINATION_RTOL = 8 * 4**3 * torch.finfo(F64).eps


def tree_scores(scores: torch.Tensor, trees: torch.Tensor) -> torch.Tensor:
    """Score of every tree, each undirected edge once: ``(*batch, N)``."""
    upper = torch.triu(torch.ones_like(trees[0]), diagonal=1)
    return torch.einsum("...ij,tij->...t", scores, trees * upper)


def brute_force(scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log Z, marginals E[z] and the best tree score by enumeration."""
    trees = pruefer_trees(n)
    s = tree_scores(scores, trees)
    p = torch.softmax(s, dim=-1)
    return torch.logsumexp(s, -1), torch.einsum("...t,tij->...ij", p, trees), s.max(-1).values


def random_symmetric(*shape: int, scale: float = 1.0, dtype=F64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*shape, generator=g, dtype=F64) * scale
    return ((a + a.mT) / 2).to(dtype)


def symmetric_from_edges(edge_scores: torch.Tensor, n: int) -> torch.Tensor:
    """Edge scores ``(*batch, n(n-1)/2)`` (i < j, row-major) -> symmetric ``(*batch, n, n)``."""
    i, j = torch.triu_indices(n, n, offset=1)
    flat = edge_scores.new_zeros(*edge_scores.shape[:-1], n * n)
    upper = flat.index_add(-1, i * n + j, edge_scores).reshape(*edge_scores.shape[:-1], n, n)
    return upper + upper.mT


def as_set(trees: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(t.flatten().long().tolist()) for t in trees}


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_enumerate_lists_every_pruefer_tree_once(n):
    trees = SpanningTree(n).enumerate()
    assert trees.shape == (n ** (n - 2), n, n)
    assert as_set(trees) == as_set(pruefer_trees(n))
    assert len(as_set(trees)) == trees.shape[0]


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_log_partition_and_marginals_match_enumeration(n):
    tree = SpanningTree(n)
    scores = random_symmetric(2, 3, n, n, scale=2.0, seed=n)
    log_z, mu, _ = brute_force(scores, n)
    torch.testing.assert_close(tree.log_partition(scores), log_z, rtol=1e-12, atol=1e-12)
    marginals = tree.marginals(scores)
    torch.testing.assert_close(marginals, mu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(marginals, marginals.mT)
    assert torch.all(marginals.diagonal(dim1=-2, dim2=-1) == 0)
    torch.testing.assert_close(marginals.sum((-2, -1)) / 2, torch.full((2, 3), n - 1.0, dtype=F64))


@pytest.mark.parametrize("n", [3, 4, 5])
@pytest.mark.parametrize("integer", [False, True])
def test_argmax_is_a_tree_attaining_the_enumerated_maximum(n, integer):
    tree = SpanningTree(n)
    if integer:  # many ties
        a = torch.randint(-2, 3, (16, n, n), generator=torch.Generator().manual_seed(n))
        scores = (a + a.mT).to(F64)
    else:
        scores = random_symmetric(16, n, n, seed=n)
    z = tree.argmax(scores)
    assert z.dtype == scores.dtype and z.shape == scores.shape
    assert as_set(z) <= as_set(pruefer_trees(n))
    torch.testing.assert_close(tree.score(scores, z), brute_force(scores, n)[2])


def test_score_counts_each_undirected_edge_once():
    tree = SpanningTree(4)
    scores = random_symmetric(4, 4, seed=1)
    path = torch.zeros(4, 4, dtype=F64)
    for i, j in [(0, 1), (1, 2), (2, 3)]:
        path[i, j] = path[j, i] = 1
    expected = scores[0, 1] + scores[1, 2] + scores[2, 3]
    torch.testing.assert_close(tree.score(scores, path), expected)
    assert tree.edges.tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]


def test_edge_layout_round_trips_between_edge_vectors_and_symmetric_matrices():
    tree = SpanningTree(5)
    values = torch.randn(2, 3, 10, dtype=F64)
    matrix = tree.from_edges(values)
    torch.testing.assert_close(matrix, symmetric_from_edges(values, 5))
    torch.testing.assert_close(tree.to_edges(matrix), values)
    assert tree.to_edges(matrix).shape == (2, 3, 10)
    with pytest.raises(ValueError, match="n\\(n-1\\)/2 = 10"):
        tree.from_edges(torch.zeros(2, 9))


@pytest.mark.parametrize("n", [10, 15, 20])
def test_argmax_matches_networkx_maximum_spanning_tree(n):
    tree = SpanningTree(n)
    scores = random_symmetric(4, n, n, seed=n)
    z = tree.argmax(scores)
    for b in range(scores.shape[0]):
        graph = nx.Graph()
        graph.add_weighted_edges_from(
            (i, j, float(scores[b, i, j])) for i in range(n) for j in range(i + 1, n)
        )
        reference = nx.maximum_spanning_tree(graph)
        expected = torch.zeros(n, n, dtype=F64)
        for i, j in reference.edges():
            expected[i, j] = expected[j, i] = 1
        torch.testing.assert_close(z[b], expected)  # continuous scores: the optimum is unique


def test_log_partition_matches_kirchhoff_determinant_for_moderate_scores():
    n = 12
    scores = random_symmetric(3, n, n, seed=3)
    weights = scores.exp() * (1 - torch.eye(n, dtype=F64))
    laplacian = torch.diag_embed(weights.sum(-1)) - weights
    expected = torch.logdet(laplacian[:, 1:, 1:])
    torch.testing.assert_close(SpanningTree(n).log_partition(scores), expected)


def test_log_partition_gradient_wrt_edge_scores_equals_marginals():
    n = 5
    tree = SpanningTree(n)
    i, j = tree.edges.T
    edge_scores = torch.randn(2, i.numel(), dtype=F64).requires_grad_(True)
    scores = symmetric_from_edges(edge_scores, n)
    (grad,) = torch.autograd.grad(tree.log_partition(scores).sum(), edge_scores)
    torch.testing.assert_close(grad, tree.marginals(scores.detach())[:, i, j])


def test_marginal_jacobian_is_the_covariance_of_edges_under_enumeration():
    n = 4
    tree = SpanningTree(n)
    i, j = tree.edges.T
    edge_scores = torch.randn(i.numel(), dtype=F64)

    def edge_marginals(e: torch.Tensor) -> torch.Tensor:
        return tree.marginals(symmetric_from_edges(e, n))[i, j]

    jacobian = torch.autograd.functional.jacobian(edge_marginals, edge_scores)
    trees = pruefer_trees(n)[:, i, j]
    p = torch.softmax(trees @ edge_scores, dim=0)
    mean = p @ trees
    covariance = (trees * p[:, None]).T @ trees - mean[:, None] * mean[None, :]
    torch.testing.assert_close(jacobian, covariance)


def test_marginals_pass_gradcheck_and_gradgradcheck():
    # Perturb edge scores (each entry alone would make the matrix asymmetric).
    n = 4
    tree = SpanningTree(n)
    edge_scores = torch.randn(2, 6, dtype=F64).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda e: tree.marginals(symmetric_from_edges(e, n)), (edge_scores,)
    )
    assert torch.autograd.gradgradcheck(
        lambda e: tree.log_partition(symmetric_from_edges(e, n)), (edge_scores,)
    )


def test_with_checks_off_asymmetric_scores_act_as_their_symmetric_part():
    """Unvalidated scores are read as ``(θ + θᵀ)/2`` on both paths (the dense factorisation and
    the exact elimination of the rows it rejects), and differentiated as such entry by entry."""
    n = 4
    tree = SpanningTree(n)
    g = torch.Generator().manual_seed(11)
    bridge = torch.full((n, n), -100.0, dtype=F64)  # rejected by the dense path (test below)
    for (a, b), value in {(0, 1): 100.0, (2, 3): 100.0, (1, 2): 0.0}.items():
        bridge[a, b] = bridge[b, a] = value
    symmetric = torch.stack([random_symmetric(n, n, scale=3.0, seed=12), bridge])
    skew = torch.randn(2, n, n, generator=g, dtype=F64)
    scores = symmetric + (skew - skew.mT)
    expected = brute_force(symmetric, n)[1]
    with lg.validate_args(False):
        torch.testing.assert_close(tree.marginals(scores), expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(tree.marginals(scores.float()), expected.float())
        leaf = scores.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(tree.marginals, (leaf,))
        assert torch.autograd.gradgradcheck(tree.marginals, (leaf,))
    with pytest.raises(ValueError, match="symmetric"):
        tree.marginals(scores)


def test_weak_bridge_between_strong_pairs_is_exact():
    # Edges {0,1} and {2,3} at +100, the bridge {1,2} at 0, all others at -100: a Cholesky of
    # the degree-normalised Laplacian minor fails here in float64 for every choice of the
    # removed row (its pivots cancel to exp(-100) relative); the log-domain elimination is exact.
    scores = torch.full((4, 4), -100.0, dtype=F64)
    for (a, b), value in {(0, 1): 100.0, (2, 3): 100.0, (1, 2): 0.0}.items():
        scores[a, b] = scores[b, a] = value
    log_z, mu, _ = brute_force(scores, 4)
    tree = SpanningTree(4)
    torch.testing.assert_close(tree.log_partition(scores), log_z, rtol=ELIMINATION_RTOL, atol=0)
    torch.testing.assert_close(tree.marginals(scores), mu, rtol=1e-12, atol=1e-30)
    torch.testing.assert_close(tree.log_partition(scores.float()), log_z.float())
    torch.testing.assert_close(tree.marginals(scores.float()), mu.float())


def test_scores_up_to_100_are_stable_in_float32():
    n = 10
    uniform = torch.rand(4, n, n, generator=torch.Generator().manual_seed(7), dtype=F64)
    scores = ((uniform + uniform.mT) * 100 - 100).float()  # symmetric, in [-100, 100]
    tree = SpanningTree(n)
    log_z32, mu32 = tree.log_partition(scores), tree.marginals(scores)
    assert log_z32.dtype == torch.float32 and torch.isfinite(mu32).all()
    # Reference: the same (float32-rounded) scores in float64.
    log_z64 = tree.log_partition(scores.double())
    torch.testing.assert_close(log_z32.double(), log_z64, rtol=2e-7, atol=0)
    torch.testing.assert_close(mu32.double(), tree.marginals(scores.double()), rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_finite_results_in_their_dtype(dtype):
    tree = SpanningTree(5)
    scores = random_symmetric(3, 5, 5, scale=20.0, seed=2).to(dtype)
    log_z, mu = tree.log_partition(scores), tree.marginals(scores)
    assert log_z.dtype == dtype and mu.dtype == dtype
    assert torch.isfinite(log_z).all() and torch.isfinite(mu).all()
    torch.testing.assert_close(mu.double(), tree.marginals(scores.double()), rtol=0, atol=1e-2)
    assert tree.argmax(scores).dtype == dtype


def test_batch_shapes_are_preserved():
    tree = SpanningTree(3)
    unbatched = random_symmetric(3, 3, seed=4)
    assert tree.log_partition(unbatched).shape == ()
    assert tree.marginals(unbatched).shape == (3, 3)
    assert tree.argmax(unbatched).shape == (3, 3)
    batched = random_symmetric(2, 5, 3, 3, seed=4)
    assert tree.log_partition(batched).shape == (2, 5)
    torch.testing.assert_close(tree.marginals(batched)[1, 2], tree.marginals(batched[1, 2]))


def test_marginals_stay_in_the_graph_only_when_scores_require_grad():
    tree = SpanningTree(4)
    scores = random_symmetric(4, 4, seed=6)
    assert not tree.marginals(scores).requires_grad
    assert tree.marginals(scores.requires_grad_(True)).requires_grad


def test_diagonal_is_ignored():
    tree = SpanningTree(4)
    scores = random_symmetric(4, 4, seed=8)
    shifted = scores + torch.diag(torch.tensor([50.0, -3.0, 0.5, 7.0], dtype=F64))
    torch.testing.assert_close(tree.log_partition(shifted), tree.log_partition(scores))
    torch.testing.assert_close(tree.argmax(shifted), tree.argmax(scores))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 5),
    values=st.lists(st.floats(-5, 5, allow_nan=False), min_size=25, max_size=25),
)
def test_argmax_and_log_partition_bound_every_tree(n, values):
    a = torch.tensor(values, dtype=F64)[: n * n].reshape(n, n)
    scores = a + a.mT
    tree = SpanningTree(n)
    all_scores = tree.score(scores, tree.enumerate().to(F64))
    best = tree.score(scores, tree.argmax(scores))
    torch.testing.assert_close(best, all_scores.max())
    assert tree.log_partition(scores) >= best - 1e-12


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(-100, 100, allow_nan=False), min_size=6, max_size=6))
def test_log_partition_and_marginals_match_enumeration_for_scores_up_to_100(values):
    tree = SpanningTree(4)
    scores = symmetric_from_edges(torch.tensor(values, dtype=F64), 4)
    log_z, mu, _ = brute_force(scores, 4)
    torch.testing.assert_close(tree.log_partition(scores), log_z, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(tree.marginals(scores), mu, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize(
    ("scores", "error", "match"),
    [
        (torch.zeros(3, 4), ValueError, "trailing shape"),
        (torch.zeros(2, 4, 4), ValueError, "trailing shape"),
        (torch.tensor([[0.0, 1, 2], [0, 0, 3], [2, 3, 0]]), ValueError, "symmetric"),
        (torch.full((3, 3), float("nan")), ValueError, "NaN"),
        (torch.full((3, 3), float("inf")), ValueError, "infinite"),
        (torch.zeros(3, 3, dtype=torch.long), TypeError, "floating-point"),
    ],
)
def test_bad_scores_raise_clear_errors(scores, error, match):
    tree = SpanningTree(3)
    for method in (tree.argmax, tree.log_partition, tree.marginals):
        with pytest.raises(error, match=match):
            method(scores)


def test_bad_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match="n must be"):
        SpanningTree(1)
    with pytest.raises(TypeError, match="n must be an int"):
        SpanningTree(3.0)
    with pytest.raises(ValueError, match="small sizes"):
        SpanningTree(8).enumerate()


def test_thirty_nodes_at_score_scale_100_in_float32_match_the_float64_elimination():
    """The benchmark's size: float32 marginals within 1e-3 of the subtraction-free float64
    elimination (no cancellation) at scores in [-100, 100]."""
    n = 30
    uniform = torch.rand(3, n, n, generator=torch.Generator().manual_seed(8), dtype=F64)
    scores = ((uniform + uniform.mT) * 100 - 100).float()
    mu = SpanningTree(n).marginals(scores)
    assert mu.dtype == torch.float32 and torch.isfinite(mu).all()
    leaf = scores.double().requires_grad_(True)
    sym = ((leaf + leaf.mT) / 2).masked_fill(torch.eye(n, dtype=torch.bool), 0)
    (grad,) = torch.autograd.grad(log_count_rooted_at_zero(sym).sum(), leaf)
    torch.testing.assert_close(mu.double(), grad + grad.mT, rtol=0, atol=1e-3)


def test_argmax_of_the_largest_float32_scores_is_a_maximum_tree():
    """(θ + θᵀ)/2 overflowed to ±inf near finfo.max and Prim's steps tied everywhere (a star of
    score -3 max was returned where a path of score +max exists); it is now θ/2 + θᵀ/2."""
    big = torch.finfo(torch.float32).max
    signs = torch.tensor([[1.0, -1, -1, -1], [-1, -1, 1, -1], [-1, 1, 1, 1], [-1, -1, 1, 1]])
    tree = SpanningTree(4)
    scores = (signs * big).unsqueeze(0)
    z = tree.argmax(scores)
    every = tree.enumerate()
    best = tree.score(scores.double(), every.double()).max()
    assert tree.score(scores.double(), z.double()).item() == best.item() == big
