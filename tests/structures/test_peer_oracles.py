"""The tree oracles agree with two established implementations in float64: pyro's spanning-tree
distribution (Kirchhoff's theorem, one unbatched distribution per instance) and torch-struct's
non-projective dependency CRF (Koo et al.'s single-root and the multi-root matrix-tree
theorems). torch-struct adds ``eps = 1e-5`` to every exponentiated score by default; the
comparison calls its functions with ``eps = 0``, the exact quantities. Skipped where a peer is
not installed (both are in the ``test`` extra)."""

from __future__ import annotations

import warnings

import pytest
import torch

from latentgrad.structures import Arborescence, SpanningTree

F64 = torch.float64
SIZES = (2, 3, 5, 8)
SCALES = (0.1, 1.0, 5.0)


def _symmetric(n: int, scale: float, gen: torch.Generator, batch: int = 3) -> torch.Tensor:
    theta = scale * torch.randn(batch, n, n, generator=gen, dtype=F64)
    return (theta + theta.mT) / 2


@pytest.fixture
def pyro_tree():
    """``scores (n, n) -> pyro's SpanningTree of the edge scores``."""
    dist = pytest.importorskip("pyro.distributions")
    graph = pytest.importorskip("pyro.distributions.spanning_tree")

    def peer(scores: torch.Tensor):
        u, v = graph.make_complete_graph(scores.shape[-1])
        return dist.SpanningTree(scores[u, v])

    return peer


@pytest.fixture
def deptree():
    """``(scores, multi_root) -> (log Z, marginals)`` of torch-struct with ``eps = 0``."""
    module = pytest.importorskip("torch_struct.deptree")

    def peer(scores: torch.Tensor, multi_root: bool):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return (module.deptree_part(scores, multi_root, None, eps=0.0),
                    module.deptree_nonproj(scores, multi_root, None, eps=0.0))

    return peer


class TestSpanningTreeAgainstPyro:

    @pytest.mark.parametrize("n", SIZES)
    @pytest.mark.parametrize("scale", SCALES)
    def test_log_partition_and_edge_marginals(self, pyro_tree, n, scale):
        gen = torch.Generator().manual_seed(n * 100 + int(10 * scale))
        theta = _symmetric(n, scale, gen)
        tree = SpanningTree(n)
        log_z, marginals = tree.log_partition(theta), tree.marginals(theta)
        for b, scores in enumerate(theta):
            peer = pyro_tree(scores)
            torch.testing.assert_close(log_z[b], peer.log_partition_function, rtol=1e-12,
                                       atol=1e-12)
            edge_mean = peer.edge_mean  # (n, n), symmetric
            torch.testing.assert_close(marginals[b], edge_mean, rtol=1e-10, atol=1e-12)

    @pytest.mark.parametrize("n", (3, 5, 8))
    def test_map_tree_and_its_log_prob(self, pyro_tree, n):
        gen = torch.Generator().manual_seed(n)
        theta = _symmetric(n, 1.0, gen)
        tree = SpanningTree(n)
        best = tree.argmax(theta)
        log_p = tree.log_prob(theta, best)
        for b, scores in enumerate(theta):
            peer = pyro_tree(scores)
            edges = peer.mode  # (n - 1, 2), smaller vertex first
            ours = torch.zeros(n, n, dtype=F64)
            ours[edges[:, 0], edges[:, 1]] = ours[edges[:, 1], edges[:, 0]] = 1.0
            assert torch.equal(best[b], ours)
            torch.testing.assert_close(log_p[b], peer.log_prob(edges), rtol=1e-12, atol=1e-12)


class TestArborescenceAgainstTorchStruct:
    @pytest.mark.parametrize("n", SIZES)
    @pytest.mark.parametrize("scale", SCALES)
    def test_single_root_trees(self, deptree, n, scale):
        """Same convention: ``scores[i, j]`` scores the arc i -> j, the diagonal the root's arc."""
        gen = torch.Generator().manual_seed(n * 100 + int(10 * scale))
        theta = scale * torch.randn(3, n, n, generator=gen, dtype=F64)
        log_z, marginals = deptree(theta, multi_root=False)
        trees = Arborescence(n)
        torch.testing.assert_close(trees.log_partition(theta), log_z, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(trees.marginals(theta), marginals, rtol=1e-10, atol=1e-12)

    @pytest.mark.parametrize("n", SIZES)
    def test_multi_root_trees_are_arborescences_from_an_extra_root(self, deptree, n):
        """torch-struct's multi-root trees over n words are ``Arborescence(n + 1, root=0)`` with
        the word scores in rows and columns 1.. and the root's arcs (the peer's diagonal) in
        row 0."""
        gen = torch.Generator().manual_seed(n)
        theta = torch.randn(3, n, n, generator=gen, dtype=F64)
        log_z, marginals = deptree(theta, multi_root=True)
        rooted = torch.zeros(3, n + 1, n + 1, dtype=F64)
        rooted[:, 1:, 1:] = theta
        rooted[:, 0, 1:] = theta.diagonal(dim1=-2, dim2=-1)
        trees = Arborescence(n + 1, root=0)
        ours = trees.marginals(rooted)
        words = ours[:, 1:, 1:].clone()
        words.diagonal(dim1=-2, dim2=-1).copy_(ours[:, 0, 1:])
        torch.testing.assert_close(trees.log_partition(rooted), log_z, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(words, marginals, rtol=1e-10, atol=1e-12)
