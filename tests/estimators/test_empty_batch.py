"""An empty batch (B = 0) is a valid input to every estimator: ``loss_fn`` is called once with no
pairs, the per-example outputs are empty, the loss is 0 (the mean over no examples, defined as
0 rather than NaN) with a graph whose gradient is the empty zero tensor, no log is NaN, and the
running statistics (baselines, variance scales) are left as they were."""

from __future__ import annotations

import math

import pytest
import torch

from latentgrad import distributions as dist
from latentgrad import estimators as est
from latentgrad import structures as sts
from latentgrad.estimators import subsets

pytestmark = pytest.mark.usefixtures("one_thread")
K = 4
TREE = sts.SpanningTree(K)


def _prior():
    return dist.MixedDirichlet(dist.MaxEntropyFaces(K, dtype=torch.float64),
                               torch.ones(K, dtype=torch.float64))


# name -> (factory, structure whose score shape the scores take, or None: est.score_shape)
ESTIMATORS = {
    "softmax": (lambda: est.SoftmaxMarginalization(0.1), None),
    "sparsemax": (lambda: est.SparsemaxMarginalization(entropy_coeff=0.1), None),
    "entmax15": (lambda: est.SparsemaxMarginalization("entmax15", one_hot=False), None),
    "topk_sparsemax": (lambda: est.TopKSparsemaxMarginalization(sts.KSubset(K, 2), 3),
                       sts.KSubset(K, 2)),
    "sparsemap_tree": (lambda: est.SparseMAPMarginalization(TREE), TREE),
    "sfe_ema": (lambda: est.ScoreFunction(baseline="ema"), None),
    "sfe_moving_average": (lambda: est.ScoreFunction(baseline="moving_average"), None),
    "sfe_batch_loo": (lambda: est.ScoreFunction(baseline="batch_loo", n_samples=2), None),
    "sfe_self_critic": (lambda: est.ScoreFunction(baseline="self_critic", entropy_coeff=0.1),
                        None),
    "sfe_leave_one_out": (lambda: est.ScoreFunction(baseline="leave_one_out", n_samples=3), None),
    "sfe_tree": (lambda: est.ScoreFunction(structure=TREE, entropy_coeff=0.1), TREE),
    "nvil": (lambda: est.NVIL(centering="ema", normalize=True, n_samples=2), None),
    "sum_and_sample": (lambda: est.SumAndSample(k=2, baseline="batch_loo"), None),
    "sum_and_sample_bits": (lambda: est.SumAndSample(k=2, structure=sts.BitVector(K)),
                            sts.BitVector(K)),
    "perturbation_tree": (lambda: est.PerturbationScoreFunction(TREE, baseline="self_critic"),
                          TREE),
    "gumbel_st": (lambda: est.GumbelSoftmax(0.5, True, prior="uniform", kl="relaxed"), None),
    "binary_concrete": (lambda: est.GumbelSoftmax(0.5, structure=sts.BitVector(K),
                                                  prior="uniform"), None),
    "igr_i": (lambda: est.IGREstimator("I", 0.5, prior="uniform"), None),
    "igr_sb": (lambda: est.IGREstimator("SB", 0.5, prior=(0.0, 1.0), kl="sampled"), None),
    "igr_planar": (lambda: est.IGREstimator("planar", 0.5, num_categories=K, prior="uniform",
                                            kl="sampled").double(), None),
    "sst_tree": (lambda: est.SSTEstimator(TREE, 0.5, entropy_coeff=0.1), TREE),
    "sst_ksubset_sparsemap": (lambda: est.SSTEstimator(sts.KSubset(K, 2), 0.5,
                                                       regularizer="euclidean"),
                              sts.KSubset(K, 2)),
    "gaussian_sparsemax": (lambda: est.GaussianSparsemaxEstimator(n_samples=2,
                                                                   entropy_coeff=0.1), None),
    "hard_concrete": (lambda: est.BinaryMixedEstimator(kl_coeff=1.0), None),
    "binary_gaussian_sparsemax": (lambda: est.BinaryMixedEstimator("gaussian_sparsemax"), None),
    "mixed_dirichlet": (lambda: est.MixedDirichletEstimator(
        n_samples=2, baseline="leave_one_out", standardize=True, prior=_prior()), None),
    "mixed_dirichlet_exact": (lambda: est.MixedDirichletEstimator(
        prior=_prior(), exact_regularizer=True), None),
    "l2x": (lambda: subsets.L2XEstimator(2, 0.5), None),
    "softsub_st": (lambda: subsets.SoftSubEstimator(2, 0.5, straight_through=True), None),
    "correlated_sst": (lambda: subsets.CorrelatedSSTEstimator(2, 0.5, rank=2), None),
}
# structures and relaxed subsets take one latent per example: no (B, L, ...) scores
ONE_LATENT = {name for name, (_, s) in ESTIMATORS.items() if s is not None} | {
    "l2x", "softsub_st", "correlated_sst"}


class RecordingLoss:
    """A squared distance to 0.3; records the number of pairs of each call."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, z, rows):
        self.calls.append(rows.shape[0])
        if not z.is_floating_point():  # category indices
            return torch.zeros(rows.shape[0], dtype=torch.float64)
        return (z - 0.3).square().flatten(1).sum(-1)


def _scores(name, batch, latent=()):
    factory, structure = ESTIMATORS[name]
    shape = structure.score_shape if structure is not None else factory().score_shape((K,))
    x = torch.randn(batch, *latent, *shape, dtype=torch.float64)
    if structure is TREE:
        x = (x + x.mT) / 2
    return x.requires_grad_(True)


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


CASES = [(name, latent) for name in ESTIMATORS for latent in ((), (3,))
         if not (latent and name in ONE_LATENT)]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name,latent", CASES, ids=[f"{n}-L{len(lat)}" for n, lat in CASES])
def test_an_empty_batch_gives_empty_outputs_and_a_zero_loss(name, latent, training):
    estimator = ESTIMATORS[name][0]()
    torch.manual_seed(0)
    estimator(_scores(name, 2, latent), RecordingLoss())  # running statistics now hold a value
    estimator.train(training)
    before = _state(estimator)
    scores = _scores(name, 0, latent)
    loss_fn = RecordingLoss()
    out = estimator(scores, loss_fn)
    assert loss_fn.calls == [0]
    assert out.loss.shape == () and out.loss.dtype == scores.dtype
    assert out.loss.item() == 0.0  # a sum over no examples
    for field in (out.expected_loss, out.support_size, out.entropy):
        assert field.shape == (0,)
    assert out.rows is not None and out.rows.shape == (0,)
    assert out.weights is not None and out.weights.shape == (0,)
    for key, value in out.logs.items():
        assert not math.isnan(float(value)), f"log {key} is NaN"
    if training:  # the surrogate keeps its graph: backward() runs as for any batch
        (grad,) = torch.autograd.grad(out.loss, scores)
        assert grad.shape == scores.shape
    after = _state(estimator)
    for key, value in before.items():  # nothing learned from no examples
        assert torch.equal(after[key], value), f"{key} changed on an empty batch"

