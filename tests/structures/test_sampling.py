"""Exact Gibbs sampling ``Structure.sample`` and the generic ``log_prob`` / ``entropy``: chi-square
goodness of fit of sample frequencies against enumerated Gibbs probabilities (float64)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from latentgrad.structures.arborescence import Arborescence
from latentgrad.structures.base import Structure
from latentgrad.structures.bitvector import BitVector
from latentgrad.structures.categorical import Categorical
from latentgrad.structures.ksubset import KSubset
from latentgrad.structures.spanning_tree import SpanningTree

STRUCTURES = [
    Categorical(5),
    BitVector(4),
    BitVector(5, budget=2),
    BitVector(3, budget=0),
    KSubset(5, 2),
    KSubset(4, 4),
    SpanningTree(4),
    Arborescence(4, root=0),
    Arborescence(4, root=2),
    Arborescence(4),
]
TREES = (SpanningTree, Arborescence)


def _scores(structure: Structure, batch: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    theta = scale * torch.randn(batch, *structure.score_shape, generator=g, dtype=torch.float64)
    return (theta + theta.mT) / 2 if isinstance(structure, SpanningTree) else theta


def _gibbs_probs(structure: Structure, theta: torch.Tensor, space: torch.Tensor) -> torch.Tensor:
    """Brute force: ``softmax_z <θ, z>`` over the enumerated space, ``(B, N)``."""
    return torch.softmax(structure.score(theta.unsqueeze(-structure.event_dim - 1), space), -1)


def _index_in(space: torch.Tensor, z: torch.Tensor, event_dim: int) -> torch.Tensor:
    """Position of each structure of ``z`` ``(..., *event)`` in ``space`` ``(N, *event)``; asserts
    every draw is an admissible structure (exactly one match)."""
    eq = (z.unsqueeze(-event_dim - 1) == space).flatten(-event_dim).all(-1)
    assert (eq.sum(-1) == 1).all(), "a draw is not an admissible structure"
    return eq.long().argmax(-1)


def _assert_fits(counts: torch.Tensor, probs: torch.Tensor, alpha: float = 1e-3) -> None:
    """Pearson chi-square test per row; bins with expected count < 5 are pooled."""
    for obs, p in zip(counts.tolist(), probs.tolist(), strict=True):
        total = sum(obs)
        big = [i for i, q in enumerate(p) if q * total >= 5]
        small = [i for i, q in enumerate(p) if q * total < 5]
        if small and sum(p[i] for i in small) == 0:  # impossible structures: never drawn
            assert sum(obs[i] for i in small) == 0, "a draw has probability 0"
            small = []
        f_obs = [obs[i] for i in big] + ([sum(obs[i] for i in small)] if small else [])
        f_exp = [p[i] * total for i in big] + ([sum(p[i] for i in small) * total] if small else [])
        if len(f_obs) < 2:
            assert f_obs[0] == total
            continue
        f_exp = [e * total / sum(f_exp) for e in f_exp]
        assert stats.chisquare(f_obs, f_exp).pvalue > alpha, (f_obs, f_exp)


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_sample_frequencies_match_enumerated_gibbs_probabilities(structure):
    theta = _scores(structure, 2, seed=1, scale=1.5)
    n_draws = 6000 if isinstance(structure, TREES) else 20000
    z = structure.sample(theta, (n_draws,), generator=torch.Generator().manual_seed(2))
    assert z.shape == (n_draws, 2, *structure.score_shape) and z.dtype == theta.dtype
    space = structure.enumerate().to(theta.dtype)
    idx = _index_in(space, z, structure.event_dim)
    counts = torch.nn.functional.one_hot(idx, space.shape[0]).sum(0)
    _assert_fits(counts, _gibbs_probs(structure, theta, space))


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_log_prob_is_normalised_over_enumerate_and_matches_brute_force(structure):
    theta = _scores(structure, 3, seed=3, scale=2.0)
    space = structure.enumerate().to(theta.dtype)
    logp = structure.log_prob(theta.unsqueeze(-structure.event_dim - 1), space)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(logp.exp(), _gibbs_probs(structure, theta, space))


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_entropy_matches_enumeration_and_its_gradient(structure):
    theta = _scores(structure, 2, seed=4).requires_grad_(True)
    space = structure.enumerate().to(theta.dtype)
    probs = _gibbs_probs(structure, theta, space)
    brute = -(probs * probs.clamp_min(1e-300).log()).sum(-1)
    entropy = structure.entropy(theta)
    torch.testing.assert_close(entropy, brute)
    g_ent, g_brute = (torch.autograd.grad(h.sum(), theta)[0] for h in (entropy, brute))
    torch.testing.assert_close(g_ent, g_brute)


@pytest.mark.parametrize(
    "structure", [Categorical(4), BitVector(5, budget=3), KSubset(6, 2)], ids=repr
)
def test_excluded_items_are_never_sampled_and_entropy_stays_finite(structure):
    theta = _scores(structure, 3, seed=5).requires_grad_(False)
    theta[:, 1] = float("-inf")
    theta[0, 3] = float("-inf")
    z = structure.sample(theta, (500,), generator=torch.Generator().manual_seed(6))
    assert (z[..., 1] == 0).all() and (z[:, 0, 3] == 0).all()
    leaf = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(structure.entropy(leaf).sum(), leaf)
    assert torch.isfinite(g).all() and (g[:, 1] == 0).all()
    space = structure.enumerate().to(theta.dtype)
    probs = _gibbs_probs(structure, theta, space)
    brute = -torch.where(probs > 0, probs * probs.log(), 0).sum(-1)
    torch.testing.assert_close(structure.entropy(theta), brute)


def test_ksubset_sample_has_exactly_k_ones_for_large_and_extreme_scores():
    ks = KSubset(40, 7)
    g = torch.Generator().manual_seed(7)
    theta = 300.0 * torch.stack([torch.randperm(40, generator=g) for _ in range(5)]).float()
    z = ks.sample(theta, (64,), generator=g)
    assert z.dtype == torch.float32 and (z.sum(-1) == 7).all()
    # scores so far apart that the draw is the MAP structure with probability 1 - 1e-100
    torch.testing.assert_close(z, ks.argmax(theta).expand_as(z))


def test_budgeted_bitvector_respects_the_budget_and_samples_the_count_exactly():
    bv = BitVector(12, budget=4)
    theta = torch.full((1, 12), 1.0, dtype=torch.float64)
    z = bv.sample(theta, (20000,), generator=torch.Generator().manual_seed(8))
    counts = z.sum(-1).long().flatten()
    assert counts.max() <= 4
    log_w = torch.tensor([torch.lgamma(torch.tensor(13.0)) - torch.lgamma(torch.tensor(13.0 - c))
                          - torch.lgamma(torch.tensor(c + 1.0)) + c for c in range(5)])
    probs = torch.softmax(log_w, 0).double()
    _assert_fits(torch.bincount(counts, minlength=5).unsqueeze(0), probs.unsqueeze(0))


@pytest.mark.parametrize("structure", [SpanningTree(7), Arborescence(7, root=3), Arborescence(7)],
                         ids=repr)
def test_tree_samples_are_valid_trees_for_extreme_score_ranges(structure):
    """Two tightly bound clusters joined by arcs exp(-400) times weaker still give valid trees
    (the elimination is subtraction-free); at that range the MAP tree has probability ~1."""
    theta = _scores(structure, 2, seed=9, scale=400.0)
    z = structure.sample(theta, (32,), generator=torch.Generator().manual_seed(10))
    n = structure.n
    if isinstance(structure, SpanningTree):
        assert (z == z.mT).all() and (z.sum((-2, -1)) == 2 * (n - 1)).all()
    else:
        assert (z.sum(-2) == 1).sum(-1).eq(n if structure.root is None else n - 1).all()
    torch.testing.assert_close(z, structure.argmax(theta).expand_as(z))


@pytest.mark.parametrize(
    "structure",
    [SpanningTree(8), Arborescence(7, root=3), Arborescence(7), KSubset(12, 5), BitVector(12, 5)],
    ids=repr,
)
def test_sample_frequencies_match_the_marginals_beyond_enumeration(structure):
    theta = _scores(structure, 1, seed=11, scale=1.5)
    z = structure.sample(theta, (3000,), generator=torch.Generator().manual_seed(12))
    mu = structure.marginals(theta)[0]
    freq = z.mean(0)[0]
    stderr = (mu * (1 - mu) / 3000).sqrt()
    assert ((freq - mu).abs() <= 5 * stderr + 1e-12).all()


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 9), scale=st.sampled_from([0.1, 3.0, 50.0]), seed=st.integers(0, 999))
def test_every_draw_is_an_admissible_structure(n, scale, seed):
    k = seed % n + 1
    for structure in (KSubset(n, k), BitVector(n, budget=k - 1), SpanningTree(n),
                      Arborescence(n, root=seed % n), Arborescence(n)):
        theta = _scores(structure, 3, seed=seed, scale=scale)
        z = structure.sample(theta, (5,), generator=torch.Generator().manual_seed(seed))
        assert set(z.unique().tolist()) <= {0.0, 1.0}
        if isinstance(structure, KSubset):
            assert (z.sum(-1) == k).all()
        elif isinstance(structure, BitVector):
            assert (z.sum(-1) <= k - 1).all()
        elif isinstance(structure, SpanningTree):
            assert (z == z.mT).all() and (z.sum((-2, -1)) == 2 * (n - 1)).all()
            # connected: (I + A)^(n-1) has no zero entry
            reach = torch.linalg.matrix_power(torch.eye(n, dtype=z.dtype) + z, n - 1)
            assert (reach > 0).all()
        else:
            root = structure.root
            heads_per_node = z.sum(-2)
            if root is not None:
                assert (heads_per_node[..., root] == 0).all()
                heads_per_node = heads_per_node[..., torch.arange(n) != root]
            else:
                assert (z.diagonal(dim1=-2, dim2=-1).sum(-1) == 1).all()
            assert (heads_per_node == 1).all()
            # acyclic: reachability from the root covers every node
            adj = z.clone()
            start = adj.diagonal(dim1=-2, dim2=-1).argmax(-1) if root is None else None
            adj.diagonal(dim1=-2, dim2=-1).zero_()
            reach = torch.linalg.matrix_power(torch.eye(n, dtype=z.dtype) + adj, n - 1)
            src = torch.full(z.shape[:-2], root, dtype=torch.long) if root is not None else start
            from_root = reach.gather(-2, src[..., None, None].expand(*src.shape, 1, n))
            assert (from_root > 0).all()


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_generator_makes_draws_reproducible_and_batch_shapes_are_kept(structure):
    theta = _scores(structure, 6, seed=13).reshape(2, 3, *structure.score_shape).float()
    a = structure.sample(theta, (4,), generator=torch.Generator().manual_seed(14))
    b = structure.sample(theta, (4,), generator=torch.Generator().manual_seed(14))
    assert a.shape == (4, 2, 3, *structure.score_shape) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert structure.sample(theta[0, 0]).shape == structure.score_shape


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_sample_rejects_bad_scores(structure):
    bad_shape = torch.zeros(2, *[s + 1 for s in structure.score_shape])
    with pytest.raises(ValueError, match="scores"):
        structure.sample(bad_shape)
    nan = _scores(structure, 2, seed=15)
    nan[(0,) * nan.dim()] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        structure.sample(nan)
    with pytest.raises(TypeError, match="floating-point"):
        structure.sample(torch.zeros(2, *structure.score_shape, dtype=torch.long))
    scores = _scores(structure, 2, seed=15)
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator or None, got int"):
        structure.sample(scores, generator=5)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="generator is on cpu, the scores on cuda"):
            structure.sample(scores.cuda(), generator=torch.Generator())


def test_spanning_tree_sample_rejects_asymmetric_scores():
    theta = torch.randn(2, 4, 4)
    with pytest.raises(ValueError, match="symmetric"):
        SpanningTree(4).sample(theta)


def test_structure_without_a_sampler_says_so():
    class Bare(Structure):
        score_shape = (2,)

        def argmax(self, scores):
            return scores

        def enumerate(self):
            return torch.eye(2)

    with pytest.raises(NotImplementedError, match="Bare has no exact Gibbs sampler"):
        Bare().sample(torch.zeros(2))


@pytest.mark.parametrize(
    "structure", [Categorical(5), KSubset(5, 2), BitVector(5, budget=2)], ids=repr
)
@pytest.mark.parametrize("offset", [1e7, -1e7])
def test_float32_draws_are_exact_under_a_large_common_offset(structure, offset):
    """float32 scores of magnitude 1e7 are spaced by 1: noise added, or DP sums differenced, at
    that magnitude are rounded to integers (the old samplers: chi-square p-values of 0 at 20000
    draws). The reference is the Gibbs distribution of the float32 values themselves."""
    g = torch.Generator().manual_seed(21)
    base = torch.randn(2, *structure.score_shape, generator=g, dtype=torch.float64)
    theta = (base + offset).float()
    if isinstance(structure, BitVector) and offset < 0:
        theta[:, :3] = base[:, :3].float()  # else the draw is the empty vector w.p. 1 - 1e-4e6
    n_draws = 20000
    z = structure.sample(theta, (n_draws,), generator=torch.Generator().manual_seed(22))
    space = structure.enumerate().to(torch.float32)
    counts = torch.nn.functional.one_hot(_index_in(space, z, 1), space.shape[0]).sum(0)
    _assert_fits(counts, _gibbs_probs(structure, theta.double(), space.double()))
