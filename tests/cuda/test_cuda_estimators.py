"""Every estimator on CUDA, through the same user code as on the CPU: the CPU's losses,
expectations, supports and gradients in float64. The marginalization estimators are
deterministic; the sampling ones are compared at peaked scores (margin 40), where every draw is
the mode whatever the noise stream, and elsewhere only run on the device."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from _same import DEVICE, assert_same

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
    SparseMAPMarginalization,
    SparsemaxMarginalization,
    SSTEstimator,
    SumAndSample,
    TopKSparsemaxMarginalization,
)
from latentgrad.structures import BitVector, Categorical, KSubset

F64 = torch.float64
B, K, D = 6, 5, 7

DETERMINISTIC = {
    "softmax": lambda: SoftmaxMarginalization(),
    "sparsemax": lambda: SparsemaxMarginalization(),
    "entmax15": lambda: SparsemaxMarginalization("entmax15"),
    "topk_sparsemax": lambda: TopKSparsemaxMarginalization(Categorical(K), k=3),
    "sparsemap": lambda: SparseMAPMarginalization(Categorical(K)),
    "sparsemap_bits": lambda: SparseMAPMarginalization(BitVector(K, budget=2)),
    "sparsemap_ksubset": lambda: SparseMAPMarginalization(KSubset(K, 2)),
}
#: sampling estimators whose scores are the latent's logits (peaked scores make them exact)
CATEGORICAL_SAMPLING = {
    **{
        f"sfe_{b}": (lambda b=b: ScoreFunction(baseline=b, n_samples=2))
        for b in (None, "moving_average", "ema", "batch_loo", "self_critic", "leave_one_out")
    },
    "nvil": lambda: NVIL(),
    "sum_and_sample": lambda: SumAndSample(k=2),
    "perturbation_sfe": lambda: PerturbationScoreFunction(None),
    "gumbel": lambda: GumbelSoftmax(1.0),
    "st_gumbel": lambda: GumbelSoftmax(1.0, True),
    "sst": lambda: SSTEstimator(None, 1.0),
}
OTHER_SAMPLING = {
    "igr_i": lambda: IGREstimator("I", 0.5),
    "igr_sb": lambda: IGREstimator("SB", 0.5),
    "igr_planar": lambda: IGREstimator("planar", 0.5, num_categories=K),
    "gaussian_sparsemax": lambda: GaussianSparsemaxEstimator(),
    "binary_mixed": lambda: BinaryMixedEstimator(),
    "hard_concrete_annealed": lambda: BinaryMixedEstimator(
        temperature=ExponentialDecay(1.0, rate=1e-3, every=1)),
    "kd_hard_concrete": lambda: GumbelSoftmax(1.0, stretch=1.1, eval_mode="sample"),
    "mixed_dirichlet": lambda: MixedDirichletEstimator(),
}


def _problem(est, scores_fn):
    """Scores ``(B, *score_shape)`` and a decoder, built on the CPU (then copied per device);
    one warm-up call on the CPU materialises lazy modules (NVIL's baseline), so that both
    devices start from the same parameters and baseline state."""
    shape = est.score_shape((K,))
    torch.manual_seed(0)
    decoder = torch.nn.Linear(K, D).to(F64)
    x = torch.randn(B, D, dtype=F64)
    scores = scores_fn(shape)
    _run(est, scores, decoder, x, torch.device("cpu"), copy_estimator=False)
    return scores, decoder, x


def _run(est, scores, decoder, x, device, copy_estimator=True):
    est = copy.deepcopy(est).to(device) if copy_estimator else est
    decoder = copy.deepcopy(decoder).to(device)
    scores = scores.to(device).requires_grad_(True)
    x = x.to(device)

    def loss_fn(z, rows):
        return ((decoder(z.flatten(1).to(x.dtype)) - x[rows]) ** 2).sum(-1)

    torch.manual_seed(0)
    out = est(scores, loss_fn)
    out.loss.backward()
    grads = [scores.grad, *(p.grad for p in decoder.parameters())]
    return out.loss.detach(), out.expected_loss.detach(), out.support_size, grads


def _random(shape):
    return torch.randn(B, *shape, generator=torch.Generator().manual_seed(1), dtype=F64)


def _peaked(shape):
    """Margin 40 on a random category of every row: the Gibbs distribution is a point mass."""
    winner = torch.randint(K, (B,), generator=torch.Generator().manual_seed(2))
    return 40 * torch.nn.functional.one_hot(winner, K).to(F64) + 0.1 * _random(shape)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_marginalization_estimator_matches_cpu(name):
    est = DETERMINISTIC[name]()
    problem = _problem(est, _random)
    assert_same(_run(est, *problem, torch.device("cpu")), _run(est, *problem, DEVICE))


@pytest.mark.parametrize("name", CATEGORICAL_SAMPLING)
def test_sampling_estimator_at_peaked_scores_matches_cpu(name):
    est = CATEGORICAL_SAMPLING[name]()
    problem = _problem(est, _peaked)
    assert _problem(est, _peaked)[0].shape == (B, K)
    assert_same(
        _run(est, *problem, torch.device("cpu")), _run(est, *problem, DEVICE), atol=1e-6
    )


@pytest.mark.parametrize("name", {**CATEGORICAL_SAMPLING, **OTHER_SAMPLING})
def test_sampling_estimator_runs_on_the_device(name):
    est = {**CATEGORICAL_SAMPLING, **OTHER_SAMPLING}[name]()
    loss, expected, support, grads = _run(est, *_problem(est, _random), DEVICE)
    for tensor in (loss, expected, *grads):
        assert tensor.device.type == DEVICE.type and torch.isfinite(tensor).all()
    assert expected.shape == (B,) and support.shape == (B,)
    assert math.isfinite(float(loss))
