"""What an estimator only reports (the exact entropy without an entropy bonus, logs, support
sizes, weights) is computed when first read, with the values of the call; a step that reads only
``loss`` never computes it."""

from __future__ import annotations

import pytest
import torch

import latentgrad as lg
from latentgrad.estimators import (
    NVIL,
    Constant,
    GumbelSoftmax,
    ScoreFunction,
    SumAndSample,
    _families,
)
from latentgrad.estimators.base import Deferred, EstimatorOutput
from latentgrad.structures.categorical import categorical_entropy

pytestmark = pytest.mark.usefixtures("one_thread")

B, K = 5, 4
ESTIMATORS = {
    "sfe_ema": lambda: ScoreFunction(baseline="ema"),
    "sfe_self_critic": lambda: ScoreFunction(baseline="self_critic", n_samples=2),
    "nvil": lambda: NVIL(centering="ema"),
    "sum_and_sample": lambda: SumAndSample(k=2),
    "st_gumbel": lambda: GumbelSoftmax(0.5, straight_through=True),
}


def _loss(z, rows):
    return (z * torch.arange(1.0, K + 1, dtype=z.dtype)).sum(-1) + rows.to(z.dtype)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_reported_fields_read_later_hold_the_values_of_the_call(name):
    torch.manual_seed(0)
    scores = torch.randn(B, K, dtype=torch.float64, requires_grad=True)
    out = ESTIMATORS[name]()(scores, _loss)
    exact = categorical_entropy(scores.detach())
    torch.testing.assert_close(out.entropy, exact)
    n = out.rows.shape[0]
    assert out.weights.shape == (n,) and out.support_size.shape == (B,)
    assert int(out.support_size.sum()) == n
    # expected_loss[b] = sum over the example's evaluations of weight * loss
    per_pair = out.weights * _loss(out.latents, out.rows)
    expected = torch.zeros(B, dtype=torch.float64).index_add(0, out.rows, per_pair)
    torch.testing.assert_close(expected, out.expected_loss)
    assert out.logs["entropy"] == pytest.approx(float(exact.mean()))
    assert out.logs["support_size"] == pytest.approx(n / B)
    assert out.entropy is out.entropy  # computed once


def test_a_step_that_reads_only_the_loss_never_computes_the_reported_entropy(monkeypatch):
    calls = []

    def counting(scores):
        calls.append(1)
        return categorical_entropy(scores)

    monkeypatch.setattr(_families, "categorical_entropy", counting)
    scores = torch.randn(B, K, requires_grad=True)
    est = ScoreFunction(baseline="ema")
    out = est(scores, _loss)
    out.loss.backward()
    assert calls == []
    logs = out.logs  # the logged mean entropy reads it
    assert calls == [1]
    torch.testing.assert_close(logs["entropy"], out.entropy.mean())
    assert calls == [1]
    bonus = ScoreFunction(baseline="ema", entropy_coeff=0.1)(scores, _loss)
    assert calls == [1, 1]  # an entropy bonus is part of the loss: computed in the call
    assert bonus.entropy.shape == (B,)


def test_reading_after_the_scores_were_modified_in_place_is_refused():
    scores = torch.nn.Parameter(torch.randn(B, K))
    out = ScoreFunction()(scores, _loss)
    opt = torch.optim.SGD([scores], lr=0.1)
    out.loss.backward()
    opt.step()
    with pytest.raises(RuntimeError, match="modified in place"):
        _ = out.entropy
    read_first = ScoreFunction()(scores, _loss)
    entropy = read_first.entropy
    opt.step()
    assert read_first.entropy is entropy


def test_deferred_fields_are_dataclass_fields_and_plain_values_stay_plain():
    x = torch.arange(3.0)
    out = EstimatorOutput(x.sum(), x, Deferred(torch.ones, 3), x + 1)
    assert torch.equal(out.support_size, torch.ones(3))
    assert out.weights is None and out.logs == {}
    assert "support_size" in repr(out)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = out.nothing


def test_a_constant_temperature_is_built_once_per_dtype_and_device_with_the_same_value():
    tau = Constant(0.3)
    x32, x64 = torch.zeros(2), torch.zeros(2, dtype=torch.float64)
    assert tau.like(x32) is tau.like(x32)
    assert tau.like(x64).dtype == torch.float64
    assert torch.equal(tau.like(x32), tau().to(torch.float32))
    assert torch.equal(tau.like(x64), tau())


def test_a_temperature_first_built_in_inference_mode_still_trains():
    est = GumbelSoftmax(0.5)
    scores = torch.randn(B, K, requires_grad=True)
    with torch.inference_mode():
        est.eval()(scores.detach(), _loss)
    est.train()
    out = est(scores, _loss)
    (grad,) = torch.autograd.grad(out.loss, scores)
    assert grad.shape == scores.shape


def test_a_compiled_step_returns_an_output_whose_reported_fields_match_eager():
    torch.manual_seed(0)
    scores = torch.randn(B, K, requires_grad=True)
    est = ScoreFunction(baseline="ema")
    est(scores, _loss)
    torch._dynamo.reset()
    with lg.validate_args(False):
        compiled = torch.compile(lambda s: est(s, _loss), fullgraph=True, backend="aot_eager")
        out = compiled(scores)
    torch.testing.assert_close(out.entropy, categorical_entropy(scores.detach()))
    assert out.logs["entropy"] == pytest.approx(float(out.entropy.mean()))
    assert out.support_size.tolist() == [1] * B


def test_a_structured_sst_step_computes_the_reported_entropy_only_when_read(monkeypatch):
    """Without an entropy bonus the SST estimator's structure entropy (a log-partition and its
    gradient: most of an L2X step) is only reported; with one it is in the loss."""
    from latentgrad.estimators import SSTEstimator
    from latentgrad.structures import KSubset

    calls = []
    exact = KSubset.entropy

    def counting(self, scores):
        calls.append(1)
        return exact(self, scores)

    monkeypatch.setattr(KSubset, "entropy", counting)
    structure = KSubset(6, 2)
    scores = torch.randn(B, 6, dtype=torch.float64, requires_grad=True)

    def loss(z, rows):
        return (z * torch.arange(1.0, 7.0, dtype=z.dtype)).sum(-1)

    out = SSTEstimator(structure, 0.5)(scores, loss)
    out.loss.backward()
    assert calls == []
    torch.testing.assert_close(out.entropy, exact(structure, scores.detach()))
    assert calls == [1]
    bonus = SSTEstimator(structure, 0.5, entropy_coeff=0.1)(scores, loss)
    assert calls == [1, 1]  # in the call: it is part of the loss
    torch.testing.assert_close(bonus.entropy, out.entropy)
