"""The estimator contract (estimators/base.py) for every estimator of this module.

One ``loss_fn`` call per estimator call; ``support_size`` counts the evaluated pairs; (B,) outputs;
a batch of 4096 in bounded time; clear errors for bad scores and bad losses.
"""

from __future__ import annotations

import time

import pytest
import torch

from latentgrad.estimators.base import EstimatorOutput
from latentgrad.estimators.marginalization import (
    SoftmaxMarginalization,
    SparseMAPMarginalization,
    SparsemaxMarginalization,
    TopKSparsemaxMarginalization,
)
from latentgrad.estimators.score_function import NVIL, ScoreFunction, SumAndSample
from latentgrad.structures.bitvector import BitVector
from latentgrad.structures.categorical import Categorical
from latentgrad.structures.ksubset import KSubset
from latentgrad.structures.spanning_tree import SpanningTree

pytestmark = pytest.mark.usefixtures("one_thread")
K = 6


class _MeanNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(K, 1, dtype=torch.float64)

    def forward(self, x):
        return self.linear(x)


def _nvil(**kw):
    return NVIL(_MeanNet(), **kw)


# (factory, needs baseline_input)
ESTIMATORS = {
    "softmax": (lambda: SoftmaxMarginalization(0.1), False),
    "sparsemax": (lambda: SparsemaxMarginalization("sparsemax", 0.1), False),
    "entmax15": (lambda: SparsemaxMarginalization("entmax15"), False),
    "topk_ksubset": (lambda: TopKSparsemaxMarginalization(KSubset(K, 2), 4, 0.1), False),
    "topk_bits": (lambda: TopKSparsemaxMarginalization(BitVector(K), 3), False),
    "sparsemap_bits": (lambda: SparseMAPMarginalization(BitVector(K), 0.1), False),
    "sparsemap_budget": (lambda: SparseMAPMarginalization(BitVector(K, budget=2)), False),
    "sparsemap_ksubset": (lambda: SparseMAPMarginalization(KSubset(K, 3), max_iter=50), False),
    "sfe": (lambda: ScoreFunction(), False),
    "sfe_categorical_structure": (lambda: ScoreFunction(structure=Categorical(K)), False),
    "sfe_ema": (lambda: ScoreFunction(baseline="ema"), False),
    "sfe_moving_average": (lambda: ScoreFunction(baseline="moving_average"), False),
    "sfe_batch_loo": (lambda: ScoreFunction(baseline="batch_loo", n_samples=2), False),
    "sfe_self_critic": (lambda: ScoreFunction(baseline="self_critic", entropy_coeff=0.1), False),
    "sfe_loo": (lambda: ScoreFunction(baseline="leave_one_out", n_samples=3), False),
    "sfe_bits": (lambda: ScoreFunction(baseline="self_critic", structure=BitVector(K)), False),
    "nvil": (lambda: _nvil(n_samples=2, centering="ema", normalize=True), True),
    "sum_and_sample": (lambda: SumAndSample(k=2, baseline="self_critic"), False),
    "sum_and_sample_all": (lambda: SumAndSample(k=K, baseline="batch_loo"), False),
}


class CountingLoss:
    def __init__(self, batch: int, bad: str | None = None):
        self.target = torch.linspace(-1, 1, batch * K, dtype=torch.float64).view(batch, K)
        self.calls: list[int] = []
        self.bad = bad

    def __call__(self, z, rows):
        self.calls.append(rows.shape[0])
        out = ((z - self.target[rows]) ** 2).sum(-1)
        if self.bad == "shape":
            return out[:-1]
        if self.bad == "nan":
            return out * float("nan")
        return out


def _call(name, est, scores, loss_fn):
    if ESTIMATORS[name][1]:
        x = torch.ones(len(scores), K, dtype=torch.float64)
        return est(scores, loss_fn, baseline_input=x)
    return est(scores, loss_fn)


def _scores(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(batch, K, generator=g, dtype=torch.float64)).requires_grad_(True)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_one_loss_call_and_support_size_counts_the_evaluated_pairs(name):
    torch.manual_seed(0)
    est = ESTIMATORS[name][0]()
    loss_fn = CountingLoss(5)
    scores = _scores(5)
    out = _call(name, est, scores, loss_fn)
    assert isinstance(out, EstimatorOutput)
    assert len(loss_fn.calls) == 1
    assert int(out.support_size.sum()) == loss_fn.calls[0]
    assert out.support_size.dtype == torch.long
    assert out.loss.shape == ()
    for field in (out.expected_loss, out.support_size, out.entropy):
        assert field.shape == (5,)
    assert torch.isfinite(out.entropy).all() and (out.entropy >= 0).all()
    (g,) = torch.autograd.grad(out.loss, scores)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("name", ESTIMATORS)
def test_batch_of_4096_runs_in_bounded_time(name):
    torch.manual_seed(1)
    est = ESTIMATORS[name][0]()
    scores = _scores(4096, seed=1)
    loss_fn = CountingLoss(4096)
    start = time.perf_counter()
    out = _call(name, est, scores, loss_fn)
    out.loss.backward()
    assert time.perf_counter() - start < 2.0
    assert len(loss_fn.calls) == 1


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize(
    ("scores", "error", "match"),
    [
        (torch.zeros(4, K, dtype=torch.long), TypeError, "floating-point"),
        ([[0.0] * K] * 4, TypeError, "torch.Tensor"),
        (torch.zeros(K, dtype=torch.float64), ValueError, "shape"),
        (torch.full((4, K), float("nan"), dtype=torch.float64), ValueError, "NaN"),
        (torch.full((4, K), float("inf"), dtype=torch.float64), ValueError, r"\+inf"),
    ],
)
def test_bad_scores_raise_clear_errors(name, scores, error, match):
    est = ESTIMATORS[name][0]()
    with pytest.raises(error, match=match):
        _call(name, est, scores, CountingLoss(4))


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize(("bad", "match"), [("shape", r"shape \(\d+,\)"), ("nan", "NaN")])
def test_bad_losses_raise_clear_errors(name, bad, match):
    est = ESTIMATORS[name][0]()
    with pytest.raises(ValueError, match=match):
        _call(name, est, _scores(4), CountingLoss(4, bad=bad))


def test_structure_scores_must_match_the_structure():
    with pytest.raises(ValueError, match=r"shape \(B, \*latent, 4\)"):
        ScoreFunction(structure=BitVector(4))(_scores(3), CountingLoss(3))


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: ScoreFunction(baseline="mean"), "baseline"),
        (lambda: ScoreFunction(n_samples=0), "n_samples"),
        (lambda: ScoreFunction(baseline="leave_one_out"), "n_samples >= 2"),
        (lambda: SumAndSample(k=0), "k must"),
        (lambda: SumAndSample(baseline="leave_one_out"), "baseline"),
        (lambda: NVIL(_MeanNet(), centering="self_critic"), "baseline"),
    ],
)
def test_bad_configuration_raises(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


@pytest.mark.parametrize("build", [lambda s: TopKSparsemaxMarginalization(s, 2),
                                   lambda s: SumAndSample(structure=s, k=2)])
def test_k_best_estimators_need_a_k_best_oracle_when_built(build):
    """Trees have no exact k-best oracle: top-k marginalization and Sum&Sample say so when they
    are built, not at their first call in the middle of a training loop, with the same error."""
    with pytest.raises(TypeError, match=r"SpanningTree\(n=4\) has no exact k-best oracle"):
        build(SpanningTree(4))


def test_sum_and_sample_rejects_k_above_the_number_of_categories():
    with pytest.raises(ValueError, match="exceeds the number of categories"):
        SumAndSample(k=K + 1)(_scores(2), CountingLoss(2))


def test_batch_loo_needs_two_examples():
    with pytest.raises(ValueError, match="at least 2"):
        ScoreFunction(baseline="batch_loo")(_scores(1), CountingLoss(1))


@pytest.mark.parametrize("name", ESTIMATORS)
def test_float32_scores_give_float32_latents_and_loss(name):
    torch.manual_seed(2)
    est = ESTIMATORS[name][0]()
    seen = []

    def loss_fn(z, rows):
        seen.append(z.dtype)
        return (z**2).sum(-1) + rows.to(z.dtype)

    scores = _scores(5).detach().float().requires_grad_(True)
    if ESTIMATORS[name][1]:
        est = est.float()
        out = est(scores, loss_fn, baseline_input=torch.ones(5, K))
    else:
        out = est(scores, loss_fn)
    assert seen == [torch.float32]
    assert out.loss.dtype == torch.float32
    (g,) = torch.autograd.grad(out.loss, scores)
    assert torch.isfinite(g).all()
