"""Arborescence: every oracle against brute force over oriented Prüfer trees (float64)."""

from __future__ import annotations

import itertools

import networkx as nx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latentgrad.structures.arborescence import Arborescence

F64 = torch.float64
# Two log-partition computations of a 4-node graph (an elimination and a brute-force sum, or a
# batch and a single row) agree to O(n^3) roundings of the log-scale values: n^3 * eps, times 8.
ELIMINATION_RTOL = 8 * 4**3 * torch.finfo(F64).eps


def pruefer_edge_lists(n: int) -> list[list[tuple[int, int]]]:
    """Edge lists of all n^(n-2) labelled trees, decoded from Prüfer sequences."""
    trees = []
    for seq in itertools.product(range(n), repeat=n - 2):
        degree = [1] * n
        for x in seq:
            degree[x] += 1
        edges = []
        for x in seq:
            leaf = min(i for i in range(n) if degree[i] == 1)
            edges.append((leaf, x))
            degree[leaf] -= 1
            degree[x] -= 1
        edges.append(tuple(i for i in range(n) if degree[i] == 1))
        trees.append(edges)
    return trees


def oriented_trees(n: int, root: int | None) -> torch.Tensor:
    """Each tree oriented away from the root (z[head, dependent] = 1). Single-root: every word
    as the root's child, marked on the diagonal."""
    structures = []
    for root_child in range(n) if root is None else [root]:
        for edges in pruefer_edge_lists(n):
            graph = nx.Graph(edges)
            graph.add_nodes_from(range(n))
            z = torch.zeros(n, n, dtype=F64)
            for head, dep in nx.bfs_edges(graph, root_child):
                z[head, dep] = 1
            if root is None:
                z[root_child, root_child] = 1
            structures.append(z)
    return torch.stack(structures)


def brute_force(scores: torch.Tensor, n: int, root: int | None):
    """log Z, marginals and the best score by enumeration."""
    trees = oriented_trees(n, root)
    s = torch.einsum("...ij,tij->...t", scores, trees)
    p = torch.softmax(s, dim=-1)
    return torch.logsumexp(s, -1), torch.einsum("...t,tij->...ij", p, trees), s.max(-1).values


def random_scores(*shape: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale


def as_set(trees: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(t.flatten().long().tolist()) for t in trees}


def assert_valid(z: torch.Tensor, root: int | None) -> None:
    """One head per non-root node (single-root: one root child), and no cycle."""
    n = z.shape[-1]
    is_root = torch.zeros(n, dtype=torch.bool) if root is None else torch.arange(n) == root
    assert torch.all(z.sum(-2) == (~is_root).to(z.dtype))
    if root is None:
        roots = z.diagonal(dim1=-2, dim2=-1).argmax(-1)
    else:
        roots = torch.full(z.shape[:-2], root)
        assert torch.all(z.diagonal(dim1=-2, dim2=-1) == 0)
    heads = torch.where(torch.arange(n) == roots[..., None], roots[..., None], z.argmax(-2))
    reach = heads
    for _ in range(n):
        reach = heads.gather(-1, reach)
    assert torch.all(reach == roots[..., None])


ROOTS = [None, 0, 2]


@pytest.mark.parametrize("n", [2, 3, 4, 5])
@pytest.mark.parametrize("root", [None, 0, -1])
def test_enumerate_lists_every_oriented_tree_once(n, root):
    root = None if root is None else root % n
    structures = Arborescence(n, root).enumerate()
    expected = oriented_trees(n, root)
    assert structures.shape == expected.shape
    assert as_set(structures) == as_set(expected)
    assert len(as_set(structures)) == structures.shape[0]


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("root", [None, 0, -1])
def test_log_partition_and_marginals_match_enumeration(n, root):
    root = None if root is None else root % n
    arb = Arborescence(n, root)
    scores = random_scores(2, 3, n, n, scale=2.0, seed=n)
    log_z, mu, _ = brute_force(scores, n, root)
    torch.testing.assert_close(arb.log_partition(scores), log_z, rtol=1e-12, atol=1e-12)
    marginals = arb.marginals(scores)
    torch.testing.assert_close(marginals, mu, rtol=1e-10, atol=1e-12)
    heads_per_node = marginals.sum(-2)
    if root is None:
        torch.testing.assert_close(heads_per_node, torch.ones_like(heads_per_node))
    else:
        assert torch.all(heads_per_node[..., root] == 0)
        torch.testing.assert_close(heads_per_node.sum(-1), torch.full((2, 3), n - 1.0, dtype=F64))


@pytest.mark.parametrize("n", [3, 4, 5])
@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("integer", [False, True])
def test_argmax_is_an_arborescence_attaining_the_enumerated_maximum(n, root, integer):
    arb = Arborescence(n, root)
    gen = torch.Generator().manual_seed(n)
    if integer:  # many ties, many cycles among the best incoming arcs
        scores = torch.randint(-2, 3, (32, n, n), generator=gen).to(F64)
    else:
        scores = torch.randn(32, n, n, generator=gen, dtype=F64)
    z = arb.argmax(scores)
    assert z.dtype == scores.dtype and z.shape == scores.shape
    assert as_set(z) <= as_set(oriented_trees(n, root))
    torch.testing.assert_close(arb.score(scores, z), brute_force(scores, n, root)[2])


@pytest.mark.parametrize("n", [2, 3, 5, 12])
@pytest.mark.parametrize("root", ROOTS)
def test_argmax_without_host_reads_runs_every_contraction_to_the_same_tree(n, root, monkeypatch):
    """On an accelerator Chu-Liu/Edmonds does not read "any cycle left?" on the host: it runs
    all n - 2 possible contractions, the ones without a cycle changing nothing."""
    from latentgrad.structures import _chu_liu_edmonds

    if root is not None and root >= n:
        pytest.skip("the root must be a node")
    arb = Arborescence(n, root)
    gen = torch.Generator().manual_seed(n)
    scores = torch.cat([torch.randn(16, n, n, generator=gen, dtype=F64),
                        torch.randint(-2, 3, (16, n, n), generator=gen).to(F64)])  # ties, cycles
    expected = arb.argmax(scores)
    monkeypatch.setattr(_chu_liu_edmonds, "host_reads_free", lambda x: False)
    assert torch.equal(arb.argmax(scores), expected)


def networkx_best_rooted(scores: torch.Tensor, root: int) -> float:
    """Weight of networkx's maximum arborescence with no arc into ``root`` (so rooted there)."""
    n = scores.shape[-1]
    graph = nx.DiGraph()
    graph.add_weighted_edges_from(
        (i, j, float(scores[i, j])) for i in range(n) for j in range(n) if i != j and j != root
    )
    best = nx.maximum_spanning_arborescence(graph)
    return sum(w for _, _, w in best.edges(data="weight"))


@pytest.mark.parametrize("n", [10, 15, 20])
@pytest.mark.parametrize("integer", [False, True])
def test_argmax_matches_networkx_maximum_spanning_arborescence(n, integer):
    gen = torch.Generator().manual_seed(n)
    if integer:
        scores = torch.randint(-3, 4, (4, n, n), generator=gen).to(F64)
    else:
        scores = torch.randn(4, n, n, generator=gen, dtype=F64)
    for root in (0, n // 2):
        z = Arborescence(n, root).argmax(scores)
        assert_valid(z, root)
        expected = [networkx_best_rooted(s, root) for s in scores]
        expected = torch.tensor(expected, dtype=F64)
        torch.testing.assert_close(Arborescence(n, root).score(scores, z), expected)


@pytest.mark.parametrize("n", [8, 12])
def test_single_root_argmax_matches_networkx_over_root_children(n):
    gen = torch.Generator().manual_seed(n)
    scores = torch.randn(4, n, n, generator=gen, dtype=F64)
    scores[1].diagonal().add_(4.0)  # several words want the root: the constrained search is needed
    arb = Arborescence(n)
    z = arb.argmax(scores)
    assert_valid(z, None)
    expected = [max(float(s[j, j]) + networkx_best_rooted(s, j) for j in range(n)) for s in scores]
    torch.testing.assert_close(arb.score(scores, z), torch.tensor(expected, dtype=F64))


def tutte_minor(scores: torch.Tensor) -> torch.Tensor:
    """The column Laplacian ``L[j, j] = sum_i w_ij``, ``L[i, j] = -w_ij`` of exp(scores)."""
    n = scores.shape[-1]
    weights = scores.exp() * (1 - torch.eye(n, dtype=scores.dtype))
    return torch.diag_embed(weights.sum(-2)) - weights


def test_log_partition_matches_tutte_and_koo_determinants_for_moderate_scores():
    n = 9
    scores = random_scores(3, n, n, seed=9)
    laplacian = tutte_minor(scores)
    rooted = torch.logdet(laplacian[:, 1:, 1:])
    torch.testing.assert_close(Arborescence(n, 0).log_partition(scores), rooted)
    koo = laplacian.clone()  # Koo et al. 2007: first row replaced by the root scores
    koo[:, 0, :] = scores.diagonal(dim1=-2, dim2=-1).exp()
    torch.testing.assert_close(Arborescence(n).log_partition(scores), torch.logdet(koo))


@pytest.mark.parametrize("root", ROOTS)
def test_marginal_jacobian_is_the_covariance_of_arcs_under_enumeration(root):
    n = 3
    arb = Arborescence(n, root)
    scores = random_scores(n, n, seed=11)
    jacobian = torch.autograd.functional.jacobian(arb.marginals, scores).reshape(n * n, n * n)
    trees = oriented_trees(n, root).reshape(-1, n * n)
    p = torch.softmax(trees @ scores.flatten(), dim=0)
    mean = p @ trees
    covariance = (trees * p[:, None]).T @ trees - mean[:, None] * mean[None, :]
    torch.testing.assert_close(jacobian, covariance)


@pytest.mark.parametrize("root", ROOTS)
def test_marginals_pass_gradcheck_and_gradgradcheck(root):
    arb = Arborescence(4, root)
    scores = random_scores(2, 4, 4, seed=12).requires_grad_(True)
    assert torch.autograd.gradcheck(arb.marginals, (scores,))
    assert torch.autograd.gradgradcheck(arb.log_partition, (scores,))


@pytest.mark.parametrize("root", [None, 0])
def test_scores_up_to_100_are_stable_in_float32(root):
    n = 10
    uniform = torch.rand(4, n, n, generator=torch.Generator().manual_seed(13), dtype=F64)
    scores = (uniform * 200 - 100).float()
    arb = Arborescence(n, root)
    log_z32, mu32 = arb.log_partition(scores), arb.marginals(scores)
    assert log_z32.dtype == torch.float32 and torch.isfinite(mu32).all()
    # Reference: the same (float32-rounded) scores in float64.
    log_z64 = arb.log_partition(scores.double())
    torch.testing.assert_close(log_z32.double(), log_z64, rtol=2e-7, atol=0)
    torch.testing.assert_close(mu32.double(), arb.marginals(scores.double()), rtol=0, atol=1e-7)


def test_weak_arc_into_a_strong_two_cycle_is_exact():
    # 0 -> 1 and the 2-cycle 2 <-> 3 at +100, the weak arc 1 -> 2 at 0, all others at -100: the
    # minor of the Laplacian of exp(scores - max) is singular in float64 (slogdet gives -inf; the
    # pivot cancels to exp(-100) relative); the log-domain elimination is exact.
    n = 4
    scores = torch.full((n, n), -100.0, dtype=F64)
    scores[0, 1] = scores[2, 3] = scores[3, 2] = 100.0
    scores[1, 2] = 0.0
    log_z, mu, _ = brute_force(scores, n, 0)
    arb = Arborescence(n, 0)
    torch.testing.assert_close(arb.log_partition(scores), log_z, rtol=ELIMINATION_RTOL, atol=0)
    torch.testing.assert_close(arb.marginals(scores), mu, rtol=1e-12, atol=1e-30)
    torch.testing.assert_close(arb.log_partition(scores.float()), log_z.float())
    torch.testing.assert_close(arb.marginals(scores.float()), mu.float())


def test_ignored_entries_do_not_matter():
    scores = random_scores(4, 4, seed=14)
    changed = scores.clone()
    changed[:, 1] = 30.0  # the column of root 1 (arcs into the root)
    changed.diagonal().copy_(torch.tensor([-5.0, 9.0, 2.0, 0.0]))
    arb = Arborescence(4, root=1)
    torch.testing.assert_close(arb.log_partition(changed), arb.log_partition(scores))
    torch.testing.assert_close(arb.argmax(changed), arb.argmax(scores))
    assert torch.all(arb.marginals(scores)[:, 1] == 0)


def test_batch_shapes_are_preserved():
    arb = Arborescence(3)
    unbatched = random_scores(3, 3, seed=15)
    assert arb.log_partition(unbatched).shape == ()
    assert arb.marginals(unbatched).shape == (3, 3)
    assert arb.argmax(unbatched).shape == (3, 3)
    batched = random_scores(2, 5, 3, 3, seed=15)
    assert arb.argmax(batched).shape == (2, 5, 3, 3)
    torch.testing.assert_close(arb.marginals(batched)[1, 2], arb.marginals(batched[1, 2]))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 4),
    root=st.sampled_from([None, 0, 1]),
    values=st.lists(st.floats(-5, 5, allow_nan=False), min_size=16, max_size=16),
)
def test_argmax_and_log_partition_bound_every_arborescence(n, root, values):
    scores = torch.tensor(values, dtype=F64)[: n * n].reshape(n, n)
    arb = Arborescence(n, root)
    all_scores = arb.score(scores, arb.enumerate().to(F64))
    best = arb.score(scores, arb.argmax(scores))
    torch.testing.assert_close(best, all_scores.max())
    assert arb.log_partition(scores) >= best - 1e-12


@settings(max_examples=30, deadline=None)
@given(
    root=st.sampled_from([None, 0, 2]),
    values=st.lists(st.floats(-100, 100, allow_nan=False), min_size=16, max_size=16),
)
def test_log_partition_and_marginals_match_enumeration_for_scores_up_to_100(root, values):
    arb = Arborescence(4, root)
    scores = torch.tensor(values, dtype=F64).reshape(4, 4)
    log_z, mu, _ = brute_force(scores, 4, root)
    torch.testing.assert_close(arb.log_partition(scores), log_z, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(arb.marginals(scores), mu, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize(
    ("scores", "error", "match"),
    [
        (torch.zeros(3, 4), ValueError, "trailing shape"),
        (torch.zeros(2, 4, 4), ValueError, "trailing shape"),
        (torch.full((3, 3), float("nan")), ValueError, "NaN"),
        (torch.full((3, 3), float("-inf")), ValueError, "infinite"),
        (torch.zeros(3, 3, dtype=torch.int32), TypeError, "floating-point"),
    ],
)
@pytest.mark.parametrize("root", [None, 0])
def test_bad_scores_raise_clear_errors(scores, error, match, root):
    arb = Arborescence(3, root)
    for method in (arb.argmax, arb.log_partition, arb.marginals):
        with pytest.raises(error, match=match):
            method(scores)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="root must be in"):
        Arborescence(3, root=3)
    with pytest.raises(ValueError, match="root must be in"):
        Arborescence(3, root=-1)
    with pytest.raises(TypeError, match="root must be an int"):
        Arborescence(3, root=True)
    with pytest.raises(ValueError, match="n must be"):
        Arborescence(1)
    with pytest.raises(ValueError, match="small sizes"):
        Arborescence(8, root=0).enumerate()


@pytest.mark.parametrize("root", [None, 0])
def test_argmax_at_the_edge_of_the_dtype_range_is_optimal_or_refused(root):
    """Chu-Liu/Edmonds adds and subtracts scores: float32 scores up to finfo.max run in float64
    and give the best tree (brute force); float64 scores near finfo.max are refused (before,
    the differences overflowed and a wrong tree came back in 2 of 300 rows at 1.7e308)."""
    s = Arborescence(4, root)
    g = torch.Generator().manual_seed(3)
    unit = torch.randn(64, 4, 4, generator=g, dtype=torch.float64).clamp(-1, 1)
    scores = (unit * torch.finfo(torch.float32).max).float()
    z = s.argmax(scores)
    trees = s.enumerate().double()
    best = s.score(scores.double().unsqueeze(1), trees).amax(-1)
    torch.testing.assert_close(s.score(scores.double(), z.double()), best, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="must have magnitude below"):
        s.argmax(unit * 1e308)
