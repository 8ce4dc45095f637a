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


RUNNING_STATE = ("sfe_moving_average", "sfe_ema", "nvil")  # buffers updated in place in the step
INDUCTOR_CASES = [
    pytest.param(
        name,
        marks=pytest.mark.xfail(
            strict=True,
            reason="known: under inductor the in-place running-baseline update changes the "
            "gradient (aot_eager matches eager); to be fixed",
        ),
    )
    if name in RUNNING_STATE
    else name
    for name in CASES
]


@pytest.mark.slow
@pytest.mark.parametrize("name", INDUCTOR_CASES)
def test_inductor_compiles_every_dense_estimator_step_and_matches_eager(name):
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):
        _check(name, "inductor")
