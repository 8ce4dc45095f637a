"""BitVector(d, budget): brute force over all admissible bit vectors in float64."""

import pytest
import torch
from _enumeration import (
    assert_log_partition_gradient_is_marginals,
    assert_marginal_jacobian_is_enumeration_covariance,
    brute,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from latentgrad.structures._kbest import kbest_subsets
from latentgrad.structures.bitvector import BitVector


def assert_valid_topk(structure, scores, k):
    """topk scores equal the sorted brute-force scores; structures admissible, distinct, scored."""
    _, values = brute(structure, scores)
    top, top_values = structure.topk(scores, k)
    torch.testing.assert_close(top_values, values.sort(-1, descending=True).values[..., :k])
    assert set(top.unique().tolist()) <= {0.0, 1.0}
    if structure.budget is not None:
        assert (top.sum(-1) <= structure.budget).all()
    flat = top.reshape(-1, k, structure.d)
    for row in flat:  # test-only loop: distinctness of the k structures
        assert len({tuple(r.tolist()) for r in row}) == k
    kept = torch.where(top.bool(), scores.unsqueeze(-2), torch.zeros_like(top))
    torch.testing.assert_close(top_values, kept.sum(-1))


BUDGETS = [None, 0, 1, 3, 6]


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 8), budget=st.integers(-1, 8), seed=st.integers(0, 2**16))
def test_log_partition_and_marginals_match_enumeration(d, budget, seed):
    budget = None if budget < 0 else min(budget, d)
    bv = BitVector(d, budget)
    g = torch.Generator().manual_seed(seed)
    scores = 3 * torch.randn(3, d, generator=g, dtype=torch.float64)
    z, values = brute(bv, scores)
    torch.testing.assert_close(bv.log_partition(scores), torch.logsumexp(values, -1))
    torch.testing.assert_close(bv.marginals(scores), torch.softmax(values, -1) @ z)


@pytest.mark.parametrize("budget", BUDGETS)
def test_argmax_matches_enumeration(budget):
    bv = BitVector(6, budget)
    scores = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z, values = brute(bv, scores)
    torch.testing.assert_close(bv.argmax(scores), z[values.argmax(-1)])


def test_budget_argmax_keeps_largest_positives():
    scores = torch.tensor([[0.5, 3.0, -1.0, 2.0, 1.0]])
    assert BitVector(5, 2).argmax(scores).tolist() == [[0.0, 1.0, 0.0, 1.0, 0.0]]
    assert BitVector(5).argmax(scores).tolist() == [[1.0, 1.0, 0.0, 1.0, 1.0]]


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("k", [1, 5, 17])
def test_topk_matches_enumeration(budget, k):
    bv = BitVector(6, budget)
    k = min(k, bv.num_structures)
    scores = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
    assert_valid_topk(bv, scores, k)


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(1, 7),
    budget=st.integers(-1, 7),
    k=st.integers(1, 130),
    ints=st.lists(st.integers(-3, 3), min_size=14, max_size=14),
)
def test_topk_with_ties_zeros_and_minus_inf_matches_enumeration(d, budget, k, ints):
    budget = None if budget < 0 else min(budget, d)
    bv = BitVector(d, budget)
    k = min(k, bv.num_structures)
    scores = torch.tensor(ints[: 2 * d], dtype=torch.float64).view(2, d)
    scores = torch.where(scores == -3, torch.full_like(scores, float("-inf")), scores)
    assert_valid_topk(bv, scores, k)


def test_topk_first_entry_is_argmax():
    scores = torch.randn(8, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for budget in (None, 4):
        bv = BitVector(9, budget)
        torch.testing.assert_close(bv.topk(scores, 3)[0][:, 0], bv.argmax(scores))


def test_unbudgeted_topk_has_no_cap_on_d():
    """d = 40 cannot be enumerated: compare the flip merge with the exact count DP (budget = d
    takes the flip merge, so the DP is reached through budget d - 1, which only drops all-ones)."""
    d, k = 40, 12
    scores = torch.randn(3, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    scores[:, 0] = -50.0  # so all-ones (the one vector budget d - 1 drops) is not among the 12 best
    _, flip_values = BitVector(d).topk(scores, k)
    _, dp_values = BitVector(d, d - 1).topk(scores, k)
    torch.testing.assert_close(flip_values, dp_values)


def test_unbudgeted_topk_stops_early_on_large_d():
    scores = torch.randn(4, 5000, generator=torch.Generator().manual_seed(4))
    top, values = BitVector(5000).topk(scores, 4)
    assert top.shape == (4, 4, 5000)
    assert (values[:, :-1] >= values[:, 1:]).all()
    torch.testing.assert_close(top[:, 0], BitVector(5000).argmax(scores))


def test_unbudgeted_topk_without_host_reads_runs_every_item_to_the_same_result(monkeypatch):
    """On an accelerator the early stop is not read on the host: all d items are merged."""
    from latentgrad.structures import _kbest

    scores = torch.randn(6, 40, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    early = BitVector(40).topk(scores, 5)
    monkeypatch.setattr(_kbest, "host_reads_free", lambda x: False)
    full = BitVector(40).topk(scores, 5)
    assert torch.equal(early[0], full[0])
    torch.testing.assert_close(early[1], full[1], rtol=0, atol=0)


@pytest.mark.parametrize("budget", [None, 0, 2, 5])
def test_log_partition_gradient_is_marginals_and_twice_differentiable(budget):
    scores = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert_log_partition_gradient_is_marginals(BitVector(5, budget), scores)


def test_budget_marginal_jacobian_is_covariance_of_enumeration():
    scores = torch.randn(5, dtype=torch.float64)
    assert_marginal_jacobian_is_enumeration_covariance(BitVector(5, 2), scores)


def test_minus_inf_bits_are_never_on():
    scores = torch.tensor([[1.0, float("-inf"), 0.3, -0.2]], dtype=torch.float64)
    scores.requires_grad_(True)
    for budget in (None, 2):
        bv = BitVector(4, budget)
        mu = bv.marginals(scores)
        assert mu[0, 1] == 0 and torch.isfinite(mu).all()
        (grad,) = torch.autograd.grad(bv.log_partition(scores).sum(), scores)
        assert torch.isfinite(grad).all()
        _, values = brute(bv, scores.detach())
        torch.testing.assert_close(bv.log_partition(scores.detach()), torch.logsumexp(values, -1))


@pytest.mark.parametrize("budget", [None, 4])
def test_entropy_has_zero_gradient_at_forced_off_bits(budget):
    """A ``-inf`` score (bit forced off, as ``net(x) + mask.log()`` gives) adds 0 to the
    unbudgeted entropy and gets gradient 0; the branch not taken, ``inf · sigmoid(-inf)``, had a
    NaN backward that reached every upstream parameter. Value and gradient equal the float64
    brute force over the bit vectors of the free bits alone (budget 4 = d: no constraint)."""
    raw = torch.randn(2, 4, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    entropy = BitVector(4, budget).entropy(raw + mask.log())
    entropy.sum().backward()
    free = raw.detach()[:, [0, 1, 3]].requires_grad_()
    _, values = brute(BitVector(3), free)
    log_p = values.log_softmax(-1)
    want = -(log_p.exp() * log_p).sum(-1)
    want.sum().backward()
    torch.testing.assert_close(entropy, want)
    assert torch.equal(raw.grad[:, 2], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(raw.grad[:, [0, 1, 3]], free.grad)


@pytest.mark.parametrize("budget", [None, 3])
def test_large_scores_are_stable_in_float32(budget):
    bv = BitVector(8, budget)
    scores = (100 * torch.randn(4, 8, generator=torch.Generator().manual_seed(5))).clamp(-100, 100)
    s64 = scores.double()
    lz32, mu32 = bv.log_partition(scores), bv.marginals(scores)
    assert torch.isfinite(lz32).all() and torch.isfinite(mu32).all()
    torch.testing.assert_close(lz32.double(), bv.log_partition(s64), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(mu32.double(), bv.marginals(s64), rtol=1e-4, atol=1e-5)


def test_score_treats_excluded_off_bits_as_zero():
    scores = torch.tensor([1.0, float("-inf"), -2.0])
    bv = BitVector(3)
    assert bv.score(scores, torch.tensor([1.0, 0.0, 1.0])).item() == -1.0
    assert bv.score(scores, torch.tensor([1.0, 1.0, 0.0])).item() == float("-inf")


def test_enumerate_counts_and_limit():
    assert BitVector(4).enumerate().shape == (16, 4)
    assert BitVector(5, 2).enumerate().shape == (1 + 5 + 10, 5)
    assert BitVector(40, 1).enumerate().shape == (41, 40)
    with pytest.raises(ValueError, match="small sizes"):
        BitVector(30).enumerate()


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((0,), ValueError, "d must be"),
        ((3, -1), ValueError, "budget must be"),
        ((3, 4), ValueError, "budget must be"),
        ((3.0,), TypeError, "d must be an int"),
        ((3, 1.5), TypeError, "budget must be an int"),
    ],
)
def test_bad_sizes_raise(args, error, match):
    with pytest.raises(error, match=match):
        BitVector(*args)


@pytest.mark.parametrize(
    ("scores", "error", "match"),
    [
        (torch.zeros(2, 4), ValueError, "trailing shape"),
        (torch.tensor([[0.0, float("nan"), 1.0]]), ValueError, "NaN"),
        (torch.tensor([[0.0, float("inf"), 1.0]]), ValueError, r"\+inf"),
        (torch.zeros(2, 3, dtype=torch.long), TypeError, "floating-point"),
    ],
)
@pytest.mark.parametrize("budget", [None, 2])
def test_bad_scores_raise(scores, error, match, budget):
    bv = BitVector(3, budget)
    for method in (bv.argmax, bv.log_partition, bv.marginals, lambda s: bv.topk(s, 2)):
        with pytest.raises(error, match=match):
            method(scores)


def test_topk_k_out_of_range_raises():
    with pytest.raises(ValueError, match="k must be"):
        BitVector(3).topk(torch.zeros(3), 9)
    with pytest.raises(ValueError, match="k must be"):
        BitVector(3, 1).topk(torch.zeros(3), 5)


@settings(max_examples=40, deadline=None)
@given(
    d=st.integers(6, 11),
    budget=st.integers(0, 11),
    k=st.integers(1, 6),
    ints=st.lists(st.integers(-3, 3), min_size=22, max_size=22),
)
def test_budgeted_topk_window_with_ties_and_minus_inf_matches_enumeration(d, budget, k, ints):
    """2k - 2 < d here, so the count DP runs on a window of ranks only (items above it forced on,
    below it forced off): ties at the boundary, zeros and -inf must not lose any of the k best."""
    bv = BitVector(d, min(budget, d - 1))
    scores = torch.tensor(ints[: 2 * d], dtype=torch.float64).view(2, d)
    scores = torch.where(scores == -3, torch.full_like(scores, float("-inf")), scores)
    assert_valid_topk(bv, scores, min(k, bv.num_structures))


@pytest.mark.parametrize("shift", [-2.0, 0.0, 2.0, 5.0])
@pytest.mark.parametrize(("budget", "k"), [(1, 3), (4, 5), (9, 2), (10, 4), (11, 6)])
def test_budgeted_topk_window_matches_enumeration_for_few_or_many_positives(shift, budget, k):
    """Few positives (MAP below the budget) to all positive (MAP at the budget, window pushed to
    the last ranks when the budget is near d)."""
    bv = BitVector(12, budget)
    g = torch.Generator().manual_seed(budget + k)
    scores = torch.randn(4, 12, generator=g, dtype=torch.float64) + shift
    assert_valid_topk(bv, scores, k)


@pytest.mark.parametrize("budget", [3, 17, 30])
def test_budgeted_topk_window_matches_full_count_dp_on_d40(budget):
    """d = 40 cannot be enumerated: the windowed k best (window of 2k - 2 = 22 ranks) equal the
    full O(d * budget * k) count DP over all 40 items, including on integer scores with ties."""
    d, k = 40, 12
    g = torch.Generator().manual_seed(budget)
    smooth = torch.randn(3, d, generator=g, dtype=torch.float64) + 0.5
    ties = torch.randint(-2, 3, (3, d), generator=g).to(torch.float64)
    scores = torch.cat([smooth, ties])
    bv = BitVector(d, budget)
    top, values = bv.topk(scores, k)
    full = kbest_subsets(scores, budget, k, exact=False).to(scores.dtype)
    torch.testing.assert_close(values, bv.score(scores.unsqueeze(1), full))
    assert (top.sum(-1) <= budget).all()
    for row in top:  # test-only loop: distinctness
        assert len({tuple(r.tolist()) for r in row}) == k


def _stable_argsort_argmax(scores, budget):
    """The budget largest positive scores, first index on ties, by a full stable sort."""
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)[..., :budget]
    z = torch.zeros_like(scores).scatter_(-1, order, 1.0)
    return z * (scores > 0)


@settings(max_examples=30, deadline=None)
@given(
    budget=st.integers(0, 9),
    ints=st.lists(st.integers(-3, 3), min_size=30, max_size=30),
)
def test_budget_argmax_breaks_ties_by_first_index(budget, ints):
    scores = torch.tensor(ints, dtype=torch.float64).view(3, 10)
    scores = torch.where(scores == -3, torch.full_like(scores, float("-inf")), scores)
    expected = _stable_argsort_argmax(scores, budget)
    assert torch.equal(BitVector(10, budget).argmax(scores), expected)


def test_budget_argmax_ties_at_the_budget_take_the_first_indices():
    scores = torch.tensor([[1.0, 2.0, 1.0, 1.0, -1.0, 1.0]])
    assert BitVector(6, 3).argmax(scores).tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]]
    assert BitVector(6, 0).argmax(scores).tolist() == [[0.0] * 6]


@pytest.mark.parametrize("budget", [None, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_at_large_scores_matches_the_float64_brute_force(budget, dtype):
    """Scores of magnitude 1e4 with near-ties: the k best set is the float64 brute force's over
    the same (rounded) scores and each returned score is its float64 score rounded to the dtype
    (float32 sums once swapped near-tied vectors: 2.9e-3 off the k-th best)."""
    d, k = 8, 5
    structure = BitVector(d, budget=budget)
    space = structure.enumerate().double()
    g = torch.Generator().manual_seed(0)
    sign = torch.randn(64, d, generator=g, dtype=torch.float64).sign()
    scores = ((1e4 + 3e-3 * torch.randn(64, d, generator=g, dtype=torch.float64)) * sign).to(dtype)
    z, values = structure.topk(scores, k)
    exact = scores.double() @ space.T
    kth = exact.sort(dim=-1, descending=True).values[:, k - 1 : k]
    got = (scores.double().unsqueeze(1) * z.double()).sum(-1)
    assert (got >= kth).all()  # every returned vector is among the k best
    eps = torch.finfo(dtype).eps  # its exact score, rounded once (half an ulp)
    assert ((values.double() - got).abs() <= eps / 2 * got.abs()).all()


def test_unbudgeted_entropy_is_twice_differentiable_at_ties():
    """h(t) is even and smooth: h''(0) = -σ(0)(1 - σ(0)) = -1/4. Written through abs(), autograd
    gave 0 there (abs's derivative at 0), so gradgradcheck failed at all-zero scores."""
    t = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradgradcheck(BitVector(3).entropy, (t,))
    (g,) = torch.autograd.grad(BitVector(3).entropy(t).sum(), t, create_graph=True)
    (h,) = torch.autograd.grad(g[0, 0], t)
    assert h[0, 0].item() == pytest.approx(-0.25, abs=1e-12)
