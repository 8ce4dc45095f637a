"""Top-k sparsemax against sparsemax over all enumerated structures (float64)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latentgrad.polytope.topk_sparsemax import topk_sparsemax
from latentgrad.structures.bitvector import BitVector
from latentgrad.structures.categorical import Categorical
from latentgrad.structures.ksubset import KSubset

F64 = torch.float64

STRUCTURES = {
    "bitvector": BitVector(5),
    "bitvector_budget": BitVector(6, budget=2),
    "ksubset": KSubset(6, 3),
    "categorical": Categorical(6),
}


def _sparsemax_by_sorting(s: torch.Tensor) -> torch.Tensor:
    """Reference sparsemax of a 1-D tensor (Martins & Astudillo, 2016, Alg. 1)."""
    srt, _ = s.sort(descending=True)
    cums = srt.cumsum(0) - 1
    k = int(((srt * torch.arange(1, s.numel() + 1, dtype=s.dtype)) > cums).sum())
    return (s - cums[k - 1] / k).clamp_min(0)


def _bruteforce(theta: torch.Tensor, structure) -> tuple[torch.Tensor, int]:
    """Marginals of sparsemax over ALL structure scores, and its support size."""
    v = structure.enumerate().to(F64)
    p = _sparsemax_by_sorting(structure.score(theta, v))
    return torch.einsum("n,n...->...", p, v), int((p > 0).sum())


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_topk_sparsemax_equals_full_sparsemax_when_support_is_smaller_than_k(name):
    structure = STRUCTURES[name]
    g = torch.Generator().manual_seed(0)
    theta = 0.5 * torch.randn(12, *structure.score_shape, generator=g, dtype=F64)
    k = 4
    res = topk_sparsemax(theta, structure, k)
    for b in range(12):
        mu, size = _bruteforce(theta[b], structure)
        assert bool(res.exact[b]) == (size < k)
        assert int(res.support_size[b]) == min(size, k)
        if size < k:
            torch.testing.assert_close(res.marginals[b], mu)
    assert res.exact.any() and not res.exact.all()  # both regimes are exercised


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(STRUCTURES)), k=st.integers(1, 8),
       scale=st.sampled_from([0.05, 0.5, 3.0, 50.0]), seed=st.integers(0, 2**31 - 1))
def test_property_certified_rows_are_exact_and_full_rows_flagged(name, k, scale, seed):
    """Any scores: a row with fewer than k structures in its support is the exact sparsemax over
    every structure (Correia et al.'s certificate); a full row says so (``exact`` false)."""
    structure = STRUCTURES[name]
    k = min(k, structure.num_structures)  # more is refused (tested below)
    g = torch.Generator().manual_seed(seed)
    theta = scale * torch.randn(3, *structure.score_shape, generator=g, dtype=F64)
    res = topk_sparsemax(theta, structure, k)
    for b in range(3):
        mu, size = _bruteforce(theta[b], structure)
        assert int(res.support_size[b]) == min(size, k)
        assert bool(res.exact[b]) == (size < k)
        if size < k:
            torch.testing.assert_close(res.marginals[b], mu, rtol=1e-9, atol=1e-9)


def test_topk_sparsemax_weights_are_sparsemax_of_the_k_best_scores():
    structure = BitVector(6)
    theta = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    res = topk_sparsemax(theta, structure, 4)
    z, s = structure.topk(theta, 4)
    for b in range(5):
        p = _sparsemax_by_sorting(s[b])
        n = int(res.support_size[b])
        torch.testing.assert_close(res.weights[b, :n], p[:n])
        torch.testing.assert_close(res.support[b, :n], z[b, :n])
        assert (p[n:] == 0).all() and (res.weights[b, n:] == 0).all()
        assert (res.support[b, n:] == 0).all()
    torch.testing.assert_close(res.weights.sum(-1), torch.ones(5, dtype=F64))


def test_topk_sparsemax_gradcheck():
    structure = KSubset(5, 2)
    theta = torch.randn(3, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    theta = (0.4 * theta).requires_grad_(True)

    def fn(x):
        res = topk_sparsemax(x, structure, 4)
        return res.weights, res.marginals

    assert torch.autograd.gradcheck(fn, (theta,))


def test_topk_sparsemax_batch_shapes_and_masked_items():
    structure = Categorical(5)
    theta = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(3), dtype=F64)
    theta[..., 0] = float("-inf")
    res = topk_sparsemax(theta, structure, 5)
    assert res.weights.shape[:2] == (2, 3) and res.marginals.shape == (2, 3, 5)
    assert (res.marginals[..., 0] == 0).all()
    assert res.n_iter.shape == (2, 3) and torch.isfinite(res.marginals).all()


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"k": 0}, ValueError, "k must be >= 1"),
        ({"k": 2.0}, TypeError, "k must be an int"),
        ({"scores": torch.zeros(2, 3)}, ValueError, "trailing shape"),
        ({"scores": torch.tensor([[0.0, float("nan"), 0.0, 0.0]])}, ValueError, "NaN"),
        ({"structure": None}, TypeError, "Structure"),
    ],
)
def test_topk_sparsemax_bad_input(kwargs, exc, match):
    args = {"scores": torch.zeros(2, 4), "structure": BitVector(4), "k": 3} | kwargs
    with pytest.raises(exc, match=match):
        topk_sparsemax(**args)


@pytest.mark.parametrize("name", ["ksubset", "categorical"])
def test_weights_are_float32_accurate_at_large_offsets(name):
    """Sparsemax receives s_j − s_1 summed over the entries where z_j and z_1 differ, so scores
    near 1e4 (whose full structure scores round at ~1e-3 in float32) give the float64 weights."""
    structure = STRUCTURES[name]
    gen = torch.Generator().manual_seed(0)
    scores = (0.3 * torch.randn(8, *structure.score_shape, generator=gen) + 1e4).float()
    got = topk_sparsemax(scores, structure, 5).weights
    want = topk_sparsemax(scores.double(), structure, 5).weights
    width = min(got.shape[-1], want.shape[-1])
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(got[..., :width].double(), want[..., :width], atol=20 * eps, rtol=0)
