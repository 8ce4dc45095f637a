"""Categorical(k): one-hot structures; brute force over the k one-hots in float64."""

import pytest
import torch
from _enumeration import assert_log_partition_gradient_is_marginals, brute
from hypothesis import given, settings
from hypothesis import strategies as st

import latentgrad
from latentgrad.structures.categorical import Categorical


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_log_partition_and_marginals_match_enumeration(k, seed):
    g = torch.Generator().manual_seed(seed)
    scores = 3 * torch.randn(4, k, generator=g, dtype=torch.float64)
    cat = Categorical(k)
    z, values = brute(cat, scores)
    torch.testing.assert_close(cat.log_partition(scores), torch.logsumexp(values, -1))
    torch.testing.assert_close(cat.marginals(scores), torch.softmax(values, -1) @ z)


def test_argmax_and_topk_match_enumeration_with_batch_dims():
    scores = torch.randn(2, 3, 6, dtype=torch.float64)
    cat = Categorical(6)
    z, values = brute(cat, scores)
    best = values.argmax(-1)
    torch.testing.assert_close(cat.argmax(scores), z[best])
    top, top_values = cat.topk(scores, 4)
    assert top.shape == (2, 3, 4, 6) and top_values.shape == (2, 3, 4)
    torch.testing.assert_close(top_values, values.sort(-1, descending=True).values[..., :4])
    torch.testing.assert_close(cat.score(scores.unsqueeze(-2), top), top_values)


def test_topk_breaks_ties_by_index():
    scores = torch.tensor([[1.0, 2.0, 2.0, 0.0]])
    top, _ = Categorical(4).topk(scores, 3)
    assert top[0].argmax(-1).tolist() == [1, 2, 0]


def test_minus_inf_categories_get_zero_mass():
    scores = torch.tensor([[0.5, float("-inf"), -1.0]], dtype=torch.float64, requires_grad=True)
    cat = Categorical(3)
    mu = cat.marginals(scores)
    assert mu[0, 1] == 0 and torch.isclose(mu.sum(), torch.tensor(1.0, dtype=torch.float64))
    cat.log_partition(scores).sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_log_partition_gradient_is_marginals_and_twice_differentiable():
    scores = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert_log_partition_gradient_is_marginals(Categorical(5), scores)


def test_large_scores_are_stable_in_float32():
    scores = 100 * torch.randn(4, 7, generator=torch.Generator().manual_seed(0)).double()
    scores = scores.clamp(-100, 100)
    cat = Categorical(7)
    lz32, mu32 = cat.log_partition(scores.float()), cat.marginals(scores.float())
    assert torch.isfinite(lz32).all() and torch.isfinite(mu32).all()
    torch.testing.assert_close(lz32.double(), cat.log_partition(scores), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(mu32.double(), cat.marginals(scores), rtol=1e-4, atol=1e-5)


def test_enumerate_is_the_identity():
    torch.testing.assert_close(Categorical(4).enumerate(), torch.eye(4))


@pytest.mark.parametrize(
    ("scores", "error", "match"),
    [
        (torch.zeros(2, 4), ValueError, "trailing shape"),
        (torch.tensor([[0.0, float("nan"), 1.0]]), ValueError, "NaN"),
        (torch.full((1, 3), float("-inf")), ValueError, "entirely -inf"),
        (torch.tensor([[0.0, float("inf"), 1.0]]), ValueError, r"\+inf"),
        (torch.zeros(2, 3, dtype=torch.long), TypeError, "floating-point"),
    ],
)
def test_bad_scores_raise(scores, error, match):
    cat = Categorical(3)
    for method in (cat.argmax, cat.log_partition, cat.marginals):
        with pytest.raises(error, match=match):
            method(scores)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="k must be"):
        Categorical(0)
    with pytest.raises(TypeError, match="k must be an int"):
        Categorical(2.0)
    with pytest.raises(ValueError, match="k must be"):
        Categorical(3).topk(torch.zeros(3), 4)


def test_log_prob_indices_names_bad_scores_and_bad_indices():
    """``log_prob_indices`` checks its scores as every method does (NaN scores silently gave
    NaN, integer ones failed inside log_softmax) and requires ``idx`` to be an integer tensor
    (TypeError) of categories in ``[0, k)`` broadcasting with the batch (ValueError); these
    failed inside torch.gather. The value checks follow the validation switch."""
    cat = Categorical(3)
    idx = torch.tensor([0, 1])
    for scores, error, match in [
        (torch.tensor([[0.0, float("nan"), 1.0]]), ValueError, "scores contains NaN"),
        (torch.zeros(2, 3, dtype=torch.long), TypeError, "scores must be a floating-point"),
        (torch.zeros(2, 4), ValueError, "scores must have trailing shape"),
    ]:
        with pytest.raises(error, match=match):
            cat.log_prob_indices(scores, idx)
    scores = torch.zeros(2, 3)
    for bad, error, match in [
        (torch.tensor([0.0, 1.0]), TypeError, "idx must be an integer tensor"),
        ([0, 1], TypeError, "idx must be an integer tensor"),
        (torch.tensor([0, 3]), ValueError, r"idx must hold category indices in \[0, 3\)"),
        (torch.tensor([-1, 0]), ValueError, r"idx must hold category indices in \[0, 3\)"),
        (torch.tensor([0, 1, 2]), ValueError, r"idx of shape \(3,\) does not broadcast"),
    ]:
        with pytest.raises(error, match=match):
            cat.log_prob_indices(scores, bad)
    with latentgrad.validate_args(False):
        nan_scores = torch.full((2, 3), float("nan"))
        assert cat.log_prob_indices(nan_scores, idx).isnan().all()


def test_index_sampler_log_prob_and_entropy_agree_with_the_one_hot_forms():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 2, 5, generator=g, dtype=torch.float64)
    scores[0, 0, 1] = float("-inf")
    cat = Categorical(5)
    idx = cat.sample_indices(scores, (4000,), torch.Generator().manual_seed(1))
    assert idx.shape == (4000, 3, 2) and idx.dtype == torch.long
    assert not (idx[:, 0, 0] == 1).any()  # a -inf category is never drawn
    freq = torch.nn.functional.one_hot(idx, 5).double().mean(0)
    torch.testing.assert_close(freq, scores.softmax(-1), atol=0.03, rtol=0)
    onehot = torch.nn.functional.one_hot(idx[:7], 5).double()
    torch.testing.assert_close(cat.log_prob_indices(scores, idx[:7]), cat.log_prob(scores, onehot))
    torch.testing.assert_close(
        cat.log_prob_indices(scores.unsqueeze(0), idx[:7]), cat.log_prob(scores, onehot)
    )
    p = scores.softmax(-1)
    expected = -(p * torch.where(p > 0, p.log(), 0.0)).sum(-1)
    torch.testing.assert_close(cat.entropy(scores), expected)


def test_log_prob_indices_of_empty_batches_are_empty():
    """A size-1 dim meeting a size-0 one broadcasts to 0 (a hand-written max(m, n) gave 1 and
    torch raised inside expand)."""
    c, long = Categorical(3), torch.long
    assert c.log_prob_indices(torch.randn(2, 3), torch.zeros(0, 2, dtype=long)).shape == (0, 2)
    assert c.log_prob_indices(torch.randn(0, 3), torch.tensor(1)).shape == (0,)
    assert c.log_prob_indices(torch.randn(0, 3), torch.zeros(5, 1, dtype=long)).shape == (5, 0)
