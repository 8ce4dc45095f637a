"""With validation off, a training step of every estimator whose shapes are fixed in advance
(the dense ones, the relaxations, the mixed latents whose sparse samples have fixed shapes, the
score function on categoricals, bit vectors and k-subsets) forces no host-device
synchronisation. Counted on CPU:
every tensor-to-host conversion (``item``, ``bool``, ...) is patched, and a dispatch mode sees
the operators that read a value on the host or size their output by the data (``nonzero``,
boolean indexing, ``masked_select``, ``unique``, ``equal``, ``repeat_interleave`` without an
output size). (Sparse estimators sync where their support size is data-dependent, IGR-SB to
size its truncation, and relaxed trees where rows fail the dense matrix-tree trust test.)
"""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import latentgrad as lg
from latentgrad.distributions import MaxEntropyFaces, MixedDirichlet
from latentgrad.estimators import (
    NVIL,
    BinaryMixedEstimator,
    ExponentialDecay,
    GaussianSparsemaxEstimator,
    GumbelSoftmax,
    IGREstimator,
    MixedDirichletEstimator,
    PerturbationScoreFunction,
    ScoreFunction,
    SoftmaxMarginalization,
    SSTEstimator,
    SumAndSample,
)
from latentgrad.estimators.score_function import BASELINES
from latentgrad.estimators.subsets import (
    CorrelatedSSTEstimator,
    L2XEstimator,
    SoftSubEstimator,
)
from latentgrad.structures import BitVector, KSubset

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
    "gaussian_sparsemax_prior": lambda: GaussianSparsemaxEstimator(prior=_mixed_prior()),
    "gumbel_bits": lambda: GumbelSoftmax(0.5, structure=BitVector(5), entropy_coeff=0.1),
    "kd_hard_concrete": lambda: GumbelSoftmax(0.5, stretch=1.1),
    "igr_i": lambda: IGREstimator("I", 0.5, prior="uniform"),
    "igr_planar": lambda: IGREstimator("planar", 0.5, num_categories=5, prior="uniform",
                                       kl="sampled"),
    "sst_categorical": lambda: SSTEstimator(None, 0.5, entropy_coeff=0.1),
    "sst_ksubset": lambda: SSTEstimator(KSubset(5, 2), 0.5, straight_through=True),
    "sst_bits": lambda: SSTEstimator(BitVector(5), 0.5, noise="gaussian"),
    "l2x": lambda: L2XEstimator(2, 0.5),
    "softsub": lambda: SoftSubEstimator(2, 0.5, straight_through=True),
    "correlated_sst": lambda: CorrelatedSSTEstimator(2, 0.5),
    "perturbation_sfe": lambda: PerturbationScoreFunction(None, baseline="batch_loo"),
    "mixed_dirichlet": lambda: MixedDirichletEstimator(prior=_mixed_prior()),
    "sfe_bits": lambda: ScoreFunction(structure=BitVector(5), baseline="batch_loo",
                                      entropy_coeff=0.1),
    "sfe_ksubset": lambda: ScoreFunction(structure=KSubset(5, 2), n_samples=2,
                                         baseline="leave_one_out"),
    "sfe_budget": lambda: ScoreFunction(structure=BitVector(5, 2)),
    "gaussian_sparsemax_bits": lambda: BinaryMixedEstimator("gaussian_sparsemax"),
}
#: score shapes other than the latent's (4, 5): location and log-scale (IGR, K - 1 of each),
#: face scores and concentrations (Mixed Dirichlet), mean, log-scale and a rank-1 factor
SCORE_SHAPES = {"igr_i": (4, 2, 4), "igr_planar": (4, 2, 4), "mixed_dirichlet": (4, 2, 5),
                "correlated_sst": (4, 5, 3), "softmax_several": (4, 3, 5)}


def _mixed_prior():
    return MixedDirichlet(MaxEntropyFaces(5), torch.ones(5))


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
    shape = SCORE_SHAPES.get(name, (4, 5))
    scores = torch.randn(shape, requires_grad=True)
    target = torch.randn(4, 15 if name.endswith("several") else 5)
    train_step(est, scores, target)  # first call: lazy modules materialise
    with lg.validate_args(False), count_syncs() as calls:
        train_step(est, scores, target)
    assert calls == []
    with count_syncs() as calls:  # with validation on the checks do sync, which the spy sees
        train_step(est, scores, target)
    assert calls
