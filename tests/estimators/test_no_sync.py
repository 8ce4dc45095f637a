"""With validation off, a training step of the dense estimators (and of Gaussian-sparsemax,
whose sparse samples have fixed shapes) forces no host-device synchronisation. Counted on CPU:
every tensor-to-host conversion (``item``, ``bool``, ...) is patched, and a dispatch mode sees
the operators that read a value on the host or size their output by the data (``nonzero``,
boolean indexing, ``masked_select``, ``unique``, ``equal``, ``repeat_interleave`` without an
output size). (Sparse estimators sync where their support size is data-dependent.)
"""

from __future__ import annotations

import contextlib
import math
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import latentgrad as lg
from latentgrad.estimators import (
    NVIL,
    BinaryMixedEstimator,
    ExponentialDecay,
    GaussianSparsemaxEstimator,
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
    "gaussian_sparsemax": lambda: GaussianSparsemaxEstimator(n_samples=2, entropy_coeff=0.1),
}
aten = torch.ops.aten
#: operators that read a tensor on the host or whose output size depends on the data
DATA_DEPENDENT = {
    aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
    aten.equal.default, aten._unique2.default, aten.unique_dim.default,
    aten.unique_consecutive.default,
}


class DataDependentOps(TorchDispatchMode):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in DATA_DEPENDENT:
            self.calls.append(str(func))
        elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self.calls.append(str(func))
        elif func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
            masks = [i for i in args[1] if i is not None and i.dtype in (torch.bool, torch.uint8)]
            if masks:
                self.calls.append(f"{func} with a boolean mask")
        return func(*args, **kwargs)


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
        with DataDependentOps(calls):
            yield calls
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def train_step(est, scores, target):
    out = est(scores, lambda z, rows: ((z.flatten(1) - target[rows]) ** 2).sum(-1))
    out.loss.backward()


@pytest.mark.parametrize("name", DENSE)
def test_a_training_step_without_validation_never_syncs(name, monkeypatch):
    # solvers skip work by reading on the host only where that is free (the CPU); take the path
    # that accelerators take everywhere (e.g. Gaussian-sparsemax's Newton loops run all steps)
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("latentgrad.") and hasattr(
                module, "host_reads_free"):
            monkeypatch.setattr(module, "host_reads_free", lambda x: False)
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
