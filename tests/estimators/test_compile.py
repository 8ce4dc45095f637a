"""``torch.compile(fullgraph=True)`` traces a whole training step of the dense estimators with
validation off (no graph break, no data-dependent guard) and gives the eager gradients.

The default suite captures the graphs with the ``aot_eager`` backend (dynamo + AOT autograd, the
part that breaks on data-dependent Python; seconds each); the inductor builds of every case are
``slow`` (tens of seconds each on two cores), with ``fallback_random`` so both draw the same noise.
"""

from __future__ import annotations

import copy

import pytest
import torch

import latentgrad as lg
from latentgrad.estimators import NVIL, GumbelSoftmax, ScoreFunction, SoftmaxMarginalization
from latentgrad.estimators._baselines import RunningBaseline
from latentgrad.estimators.score_function import BASELINES

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {
    "gumbel": lambda: GumbelSoftmax(0.5),
    "st_gumbel": lambda: GumbelSoftmax(0.5, straight_through=True),
    **{f"sfe_{b}": (lambda b=b: ScoreFunction(baseline=b, n_samples=2)) for b in BASELINES},
    "nvil": lambda: NVIL(centering="ema", normalize=True),
    "softmax": lambda: SoftmaxMarginalization(),
}
DEFAULT = ("st_gumbel", "sfe_ema", "nvil", "softmax")


def _gradients(est, step_fn, decoder, scores):
    torch.manual_seed(0)
    loss = step_fn(est, decoder, scores)
    return torch.autograd.grad(loss, [scores, *decoder.parameters()])


def _check(name, backend):
    torch.manual_seed(1)
    est, decoder = CASES[name](), torch.nn.Linear(5, 3)
    target = torch.randn(4, 3)

    def step(est, decoder, scores):
        return est(scores, lambda z, rows: ((decoder(z) - target[rows]) ** 2).sum(-1)).loss

    scores = torch.randn(4, 5, requires_grad=True)
    step(est, decoder, scores)  # lazy modules materialise in eager mode
    twin = copy.deepcopy(est)  # the same running state for both runs
    torch._dynamo.reset()
    with lg.validate_args(False):
        compiled = torch.compile(step, fullgraph=True, backend=backend)
        got = _gradients(est, compiled, decoder, scores)
        expected = _gradients(twin, step, decoder, scores)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("name", DEFAULT)
def test_a_training_step_compiles_as_one_graph_and_matches_eager(name):
    _check(name, "aot_eager")


def test_a_running_baseline_read_in_a_compiled_step_keeps_its_value_after_the_update():
    """The baseline a step read is the one its backward uses, although the step then updates the
    statistic (AOT autograd may recompute the read in the backward: an in-place update would
    be seen there)."""
    running = RunningBaseline("ema", decay=0.5)
    running.update(torch.tensor(3.0))

    def step(x):
        beta = running.get(x)
        loss = ((x.detach() - beta) * x.log()).sum()  # d/dx = (x - beta) / x
        running.update(x.detach().mean() + 100.0)
        return loss

    x = torch.rand(5, dtype=torch.float64) + 0.5
    x.requires_grad_(True)
    torch._dynamo.reset()
    with lg.validate_args(False):  # (torch.compile turns torch.distributions' checks off)
        compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
        (grad,) = torch.autograd.grad(compiled(x), x)
    torch.testing.assert_close(grad, (x.detach() - 3.0) / x.detach())
    assert float(running.value) > 50.0 and int(running.count) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_inductor_compiles_every_dense_estimator_step_and_matches_eager(name):
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):
        _check(name, "inductor")
