"""KSubset(n, k): brute force over all k-subsets in float64."""

import math

import pytest
import torch
from _enumeration import (
    assert_log_partition_gradient_is_marginals,
    assert_marginal_jacobian_is_enumeration_covariance,
    brute,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from latentgrad.structures.ksubset import KSubset


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 10), data=st.data(), seed=st.integers(0, 2**16))
def test_log_partition_and_marginals_match_enumeration(n, data, seed):
    k = data.draw(st.integers(0, n))
    ks = KSubset(n, k)
    g = torch.Generator().manual_seed(seed)
    scores = 3 * torch.randn(3, n, generator=g, dtype=torch.float64)
    z, values = brute(ks, scores)
    torch.testing.assert_close(ks.log_partition(scores), torch.logsumexp(values, -1))
    mu = ks.marginals(scores)
    torch.testing.assert_close(mu, torch.softmax(values, -1) @ z)
    torch.testing.assert_close(mu.sum(-1), torch.full((3,), float(k), dtype=torch.float64))


def sequential_log_esp(scores, k):
    """Reference: the n-step recursion a_{i,j} = logaddexp(a_{i-1,j}, a_{i-1,j-1} + θ_i)."""
    a = torch.full((*scores.shape[:-1], k + 1), float("-inf"), dtype=scores.dtype)
    a[..., 0] = 0.0
    for i in range(scores.shape[-1]):
        shifted = torch.cat([a[..., :1].clone().fill_(float("-inf")), a[..., :-1]], -1)
        a = torch.logaddexp(a, shifted + scores[..., i : i + 1])
    return a[..., k]


@pytest.mark.parametrize(("n", "k"), [(37, 5), (64, 61), (100, 30), (129, 1)])
def test_log_partition_matches_the_sequential_recursion_beyond_enumeration(n, k):
    scores = 4 * torch.randn(3, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    scores[0, :3] = float("-inf")
    torch.testing.assert_close(KSubset(n, k).log_partition(scores), sequential_log_esp(scores, k))


def test_argmax_is_top_k_and_matches_enumeration():
    ks = KSubset(7, 3)
    scores = torch.randn(2, 4, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z, values = brute(ks, scores)
    torch.testing.assert_close(ks.argmax(scores), z[values.argmax(-1)])
    assert (ks.argmax(scores).sum(-1) == 3).all()


@pytest.mark.parametrize(("n", "k", "m"), [(6, 3, 1), (6, 3, 20), (7, 2, 9), (8, 5, 30), (5, 0, 1)])
def test_topk_matches_enumeration(n, k, m):
    ks = KSubset(n, k)
    scores = torch.randn(2, 3, n, generator=torch.Generator().manual_seed(m), dtype=torch.float64)
    _, values = brute(ks, scores)
    top, top_values = ks.topk(scores, m)
    assert top.shape == (2, 3, m, n) and top_values.shape == (2, 3, m)
    torch.testing.assert_close(top_values, values.sort(-1, descending=True).values[..., :m])
    assert (top.sum(-1) == k).all()
    torch.testing.assert_close(ks.score(scores.unsqueeze(-2), top), top_values)
    for row in top.reshape(-1, m, n):  # test-only loop: the m subsets are distinct
        assert len({tuple(r.tolist()) for r in row}) == m
    torch.testing.assert_close(top[..., 0, :], ks.argmax(scores))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 7),
    data=st.data(),
    ints=st.lists(st.integers(-2, 2), min_size=14, max_size=14),
)
def test_topk_with_ties_and_minus_inf_matches_enumeration(n, data, ints):
    scores = torch.tensor(ints[: 2 * n], dtype=torch.float64).view(2, n)
    scores = torch.where(scores == -2, torch.full_like(scores, float("-inf")), scores)
    k = data.draw(st.integers(0, int((scores > float("-inf")).sum(-1).min())))
    ks = KSubset(n, k)
    m = data.draw(st.integers(1, math.comb(n, k)))
    _, values = brute(ks, scores)
    top, top_values = ks.topk(scores, m)
    torch.testing.assert_close(top_values, values.sort(-1, descending=True).values[..., :m])
    assert (top.sum(-1) == k).all()
    for row in top:
        assert len({tuple(r.tolist()) for r in row}) == m


def test_log_partition_gradient_is_marginals_and_twice_differentiable():
    scores = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    assert_log_partition_gradient_is_marginals(KSubset(6, 3), scores, gradgrad_marginals=True)


def test_marginal_jacobian_is_covariance_of_enumeration():
    """SST backward: d mu / d theta = Cov_p(z), exactly."""
    scores = torch.randn(6, dtype=torch.float64)
    assert_marginal_jacobian_is_enumeration_covariance(KSubset(6, 2), scores)


def test_minus_inf_items_get_zero_mass_and_finite_gradients():
    ks = KSubset(5, 2)
    mask = torch.tensor([False, True, False, False, True])

    def with_masked(free):
        return torch.where(mask, torch.full_like(free, float("-inf")), free)

    free = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    scores = with_masked(free)
    z, values = brute(ks, scores.detach())
    torch.testing.assert_close(ks.log_partition(scores), torch.logsumexp(values, -1))
    mu = ks.marginals(scores)
    torch.testing.assert_close(mu, torch.softmax(values, -1) @ z)
    assert (mu[:, mask] == 0).all()
    assert torch.autograd.gradcheck(lambda f: ks.marginals(with_masked(f)), (free,))
    assert torch.autograd.gradgradcheck(lambda f: ks.log_partition(with_masked(f)), (free,))


def test_large_scores_are_stable_in_float32():
    ks = KSubset(10, 4)
    scores = (100 * torch.randn(4, 10, generator=torch.Generator().manual_seed(5))).clamp(-100, 100)
    s64 = scores.double()
    lz32, mu32 = ks.log_partition(scores), ks.marginals(scores)
    assert torch.isfinite(lz32).all() and torch.isfinite(mu32).all()
    torch.testing.assert_close(lz32.double(), ks.log_partition(s64), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(mu32.double(), ks.marginals(s64), rtol=1e-4, atol=1e-4)
    s32 = scores.clone().requires_grad_(True)
    (ks.marginals(s32) * torch.randn(4, 10)).sum().backward()
    assert torch.isfinite(s32.grad).all()


def test_enumerate_counts_and_limit():
    assert KSubset(6, 2).enumerate().shape == (15, 6)
    assert KSubset(4, 0).enumerate().tolist() == [[0.0] * 4]
    with pytest.raises(ValueError, match="small sizes"):
        KSubset(40, 20).enumerate()


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [((0, 0), ValueError, "n must be"), ((3, 4), ValueError, "k must be"),
     ((3, -1), ValueError, "k must be"), ((3, 1.0), TypeError, "k must be an int")],
)
def test_bad_sizes_raise(args, error, match):
    with pytest.raises(error, match=match):
        KSubset(*args)


@pytest.mark.parametrize(
    ("scores", "error", "match"),
    [
        (torch.zeros(2, 4), ValueError, "trailing shape"),
        (torch.tensor([[0.0, float("nan"), 1.0]]), ValueError, "NaN"),
        (torch.tensor([[0.0, float("inf"), 1.0]]), ValueError, r"\+inf"),
        (torch.tensor([[0.0, float("-inf"), float("-inf")]]), ValueError, "fewer than k=2"),
        (torch.zeros(2, 3, dtype=torch.long), TypeError, "floating-point"),
    ],
)
def test_bad_scores_raise(scores, error, match):
    ks = KSubset(3, 2)
    for method in (ks.argmax, ks.log_partition, ks.marginals, lambda s: ks.topk(s, 2)):
        with pytest.raises(error, match=match):
            method(scores)


def test_topk_m_out_of_range_raises():
    with pytest.raises(ValueError, match="k must be"):
        KSubset(4, 2).topk(torch.zeros(4), 7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_at_large_mixed_sign_scores_matches_the_float64_brute_force(dtype):
    """Scores ±1e4 with near-ties (the row-max shift does not help mixed signs): the k best set
    is the float64 brute force's and each score its float64 score rounded once."""
    structure, k = KSubset(8, 3), 5
    space = structure.enumerate().double()
    g = torch.Generator().manual_seed(1)
    sign = torch.randn(64, 8, generator=g, dtype=torch.float64).sign()
    scores = ((1e4 + 3e-3 * torch.randn(64, 8, generator=g, dtype=torch.float64)) * sign).to(dtype)
    z, values = structure.topk(scores, k)
    exact = scores.double() @ space.T
    kth = exact.sort(dim=-1, descending=True).values[:, k - 1 : k]
    got = (scores.double().unsqueeze(1) * z.double()).sum(-1)
    assert (got >= kth).all()
    eps = torch.finfo(dtype).eps
    assert ((values.double() - got).abs() <= eps / 2 * got.abs()).all()


def test_topk_is_best_first_when_the_scores_span_many_orders_of_magnitude():
    """The DP's shift by the row maximum (1e6) rounds the sums of the subsets without it, which
    put 0.9999999999 ({-1e-10, 1}) before 1.0 ({0, 1}); the k best come in float64 order."""
    x = torch.tensor([1e6, 1.0, -1e-10, 0.0, 3.0], dtype=torch.float64)
    z, values = KSubset(5, 2).topk(x, 10)
    assert (values[:-1] >= values[1:]).all()
    torch.testing.assert_close(values, (z * x).sum(-1), rtol=0, atol=0)
    want = sorted(((x[i] + x[j]).item() for i in range(5) for j in range(i + 1, 5)),
                  reverse=True)
    assert values.tolist() == want
