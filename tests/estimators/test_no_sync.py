"""With validation off, a training step of the dense estimators forces no host-device
synchronisation: counted on CPU by patching every tensor-to-host conversion and the
data-dependent ``nonzero``. (Sparse estimators sync where their support size is data-dependent.)
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

import latentgrad as lg
from latentgrad.estimators import (
    NVIL,
    BinaryMixedEstimator,
    ExponentialDecay,
    GumbelSoftmax,
    ScoreFunction,
    SoftmaxMarginalization,
    SumAndSample,
)
from latentgrad.estimators.score_function import BASELINES

pytestmark = pytest.mark.usefixtures("one_thread")
SYNCING = ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "cpu", "numpy")

DENSE = {
    "gumbel": lambda: GumbelSoftmax(ExponentialDecay(1.0, 0.1, every=1)),
    "st_gumbel": lambda: GumbelSoftmax(0.5, straight_through=True),
    **{f"sfe_{b}": (lambda b=b: ScoreFunction(baseline=b, n_samples=2)) for b in BASELINES},
    "nvil": lambda: NVIL(centering="ema", normalize=True),
    "softmax": lambda: SoftmaxMarginalization(),
    "softmax_several": lambda: SoftmaxMarginalization(),
    "sum_and_sample": lambda: SumAndSample(k=2, baseline="self_critic"),
    "binary_mixed": lambda: BinaryMixedEstimator(),
}


@contextlib.contextmanager
def count_syncs():
    calls = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def spy(name):
        def wrapper(self, *args, **kwargs):
            calls.append(name)
            return originals[name](self, *args, **kwargs)

        return wrapper

    try:
        for name in SYNCING:
            setattr(torch.Tensor, name, spy(name))
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def train_step(est, scores, target):
    out = est(scores, lambda z, rows: ((z.flatten(1) - target[rows]) ** 2).sum(-1))
    out.loss.backward()


@pytest.mark.parametrize("name", DENSE)
def test_a_training_step_without_validation_never_syncs(name):
    torch.manual_seed(0)
    est = DENSE[name]()
    shape = (4, 3, 5) if name.endswith("several") else (4, 5)
    scores = torch.randn(shape, requires_grad=True)
    target = torch.randn(4, math.prod(shape[1:]))
    train_step(est, scores, target)  # first call: lazy modules materialise
    with lg.validate_args(False), count_syncs() as calls:
        train_step(est, scores, target)
    assert calls == []
    with count_syncs() as calls:  # with validation on the checks do sync, which the spy sees
        train_step(est, scores, target)
    assert calls
