"""Eval-mode readings (``eval_mode="mode"|"sample"|"expected"``) and what ``EstimatorOutput``
says was evaluated (latents, rows, combination weights)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_swap import ESTIMATORS, K

from latentgrad.estimators import (
    GaussianSparsemaxEstimator,
    GumbelSoftmax,
    ScoreFunction,
    SoftmaxMarginalization,
    SumAndSample,
)

pytestmark = pytest.mark.usefixtures("one_thread")
EXACT = ("softmax", "sparsemax", "entmax15", "topk_sparsemax", "sparsemap")
SAMPLING = [name for name in ESTIMATORS if name not in EXACT]
B = 4


def _loss(z, rows):
    """A deterministic loss of one-hot, relaxed or mixed latents (N, K)."""
    weights = torch.linspace(-1.0, 1.0, K, dtype=z.dtype)
    return (z * weights).sum(-1) ** 2 + rows.to(z.dtype)


def _scores(est, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, *est.score_shape((K,)), generator=g)


@pytest.mark.parametrize("name", SAMPLING)
def test_eval_reads_a_deterministic_value_once_per_example(name):
    est = ESTIMATORS[name]().eval()
    scores = _scores(est)
    first, second = est(scores, _loss), est(scores, _loss)
    assert first.latents.shape[0] == B and torch.equal(first.rows, torch.arange(B))
    assert torch.equal(first.latents, second.latents)
    assert first.support_size.tolist() == [1] * B
    torch.testing.assert_close(first.expected_loss, _loss(first.latents, first.rows))


@pytest.mark.parametrize(
    "name", ["sfe_None", "nvil", "sum_and_sample", "perturbation_sfe", "gumbel", "sst"]
)
def test_the_mode_of_a_categorical_latent_is_its_argmax_one_hot(name):
    est = ESTIMATORS[name]().eval()
    scores = _scores(est)
    out = est(scores, _loss)
    assert torch.equal(out.latents, F.one_hot(scores.argmax(-1), K).float())


def test_eval_mode_sample_draws_as_in_training():
    """The same draw as in training (same seed, same latents), a fresh one per call, whose
    argmax follows softmax(θ) (each frequency within 5 standard errors)."""
    est = GumbelSoftmax(0.5, eval_mode="sample")
    scores = _scores(est)
    torch.manual_seed(3)
    trained = est.train()(scores, _loss)
    torch.manual_seed(3)
    read = est.eval()(scores, _loss)
    torch.testing.assert_close(read.latents, trained.latents, rtol=0, atol=0)
    assert not torch.equal(est(scores, _loss).latents, read.latents)
    n = 20000
    many = est(scores[:1].expand(n, K), _loss).latents
    freq = F.one_hot(many.argmax(-1), K).double().mean(0)
    p = scores[0].double().softmax(-1)
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt()).all(), (freq, p)


@pytest.mark.parametrize(
    "est",
    [
        ScoreFunction(eval_mode="expected"),
        ScoreFunction(eval_mode="expected", one_hot=False),
        GumbelSoftmax(0.5, eval_mode="expected"),
        SumAndSample(k=2, eval_mode="expected"),
    ],
)
def test_eval_mode_expected_is_exact_softmax_marginalization(est):
    scores = torch.randn(B, 3, K, dtype=torch.float64)

    def loss_fn(z, rows):
        z = F.one_hot(z, K).double() if z.dtype == torch.long else z  # (N, 3, K)
        weights = torch.linspace(-1.0, 1.0, K, dtype=z.dtype)
        return ((z * weights).sum(-1) ** 2).sum(-1) + rows.to(z.dtype)

    got = est.eval()(scores, loss_fn)
    exact = SoftmaxMarginalization()(scores, loss_fn)
    torch.testing.assert_close(got.loss, exact.loss)
    torch.testing.assert_close(got.expected_loss, exact.expected_loss)


def test_bad_eval_modes_are_refused():
    with pytest.raises(ValueError, match="eval_mode"):
        ScoreFunction(eval_mode="argmax")
    with pytest.raises(ValueError, match="eval_mode"):
        GaussianSparsemaxEstimator(eval_mode="expected")


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_outputs_say_what_was_evaluated_and_how_it_was_combined(name):
    torch.manual_seed(0)
    est = ESTIMATORS[name]()
    out = est(_scores(est), _loss)
    losses = _loss(out.latents, out.rows)
    combined = torch.zeros(B).index_add(0, out.rows, out.weights * losses)
    torch.testing.assert_close(combined, out.expected_loss)
    assert torch.equal(torch.bincount(out.rows, minlength=B), out.support_size)
