"""Swapping estimators is a one-line change: one training step of EVERY estimator through the
identical user code (encoder head sized by ``est.score_shape``, no per-estimator branch, no
extra call arguments, temperature schedules advanced by the optimizer step)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

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
from latentgrad.structures import Categorical

pytestmark = pytest.mark.usefixtures("one_thread")
K, D = 5, 7

ESTIMATORS = {
    "softmax": lambda: SoftmaxMarginalization(),
    "sparsemax": lambda: SparsemaxMarginalization(),
    "entmax15": lambda: SparsemaxMarginalization("entmax15"),
    "topk_sparsemax": lambda: TopKSparsemaxMarginalization(Categorical(K), k=3),
    "sparsemap": lambda: SparseMAPMarginalization(Categorical(K)),
    **{
        f"sfe_{b}": (lambda b=b: ScoreFunction(baseline=b, n_samples=2))
        for b in (None, "moving_average", "ema", "batch_loo", "self_critic", "leave_one_out")
    },
    "nvil": lambda: NVIL(),
    "sum_and_sample": lambda: SumAndSample(k=2),
    "perturbation_sfe": lambda: PerturbationScoreFunction(None),
    "gumbel": lambda: GumbelSoftmax(ExponentialDecay(1.0, 0.1, every=1)),
    "st_gumbel": lambda: GumbelSoftmax(ExponentialDecay(1.0, 0.1, every=1), True),
    "igr_i": lambda: IGREstimator("I", ExponentialDecay(1.0, 0.1, every=1)),
    "igr_sb": lambda: IGREstimator("SB", 0.5),
    "igr_planar": lambda: IGREstimator("planar", 0.5, num_categories=K),
    "sst": lambda: SSTEstimator(None, ExponentialDecay(1.0, 0.1, every=1)),
    "gaussian_sparsemax": lambda: GaussianSparsemaxEstimator(),
    "binary_mixed": lambda: BinaryMixedEstimator(),
    "mixed_dirichlet": lambda: MixedDirichletEstimator(),
}


def train_step(est: nn.Module, x: torch.Tensor, latent_shape: tuple[int, ...]):
    """The user's code, identical for every estimator."""
    shape = est.score_shape(latent_shape)
    encoder = nn.Linear(x.shape[-1], math.prod(shape))
    decoder = nn.Linear(math.prod(latent_shape), x.shape[-1])
    params = [*encoder.parameters(), *decoder.parameters(), *est.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-2)

    def loss_fn(z, rows):
        return ((decoder(z.flatten(1)) - x[rows]) ** 2).sum(-1)

    before = [p.detach().clone() for p in encoder.parameters()]
    out = est(encoder(x).view(-1, *shape), loss_fn)
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    moved = any(not torch.equal(a, p) for a, p in zip(before, encoder.parameters(), strict=True))
    return out, moved


STRUCTURED = ("topk_sparsemax", "sparsemap")  # one structure per example


@pytest.mark.parametrize("latent_shape", [(K,), (3, K)], ids=["one", "three_variables"])
@pytest.mark.parametrize("name", ESTIMATORS)
def test_one_training_step_of_every_estimator_through_identical_code(name, latent_shape):
    if name in STRUCTURED and len(latent_shape) > 1:
        pytest.skip("a product of structures is its own structure")
    torch.manual_seed(0)
    est = ESTIMATORS[name]()
    x = torch.randn(6, D)
    out, moved = train_step(est, x, latent_shape)
    assert torch.isfinite(out.loss) and out.expected_loss.shape == (6,)
    assert moved, "the encoder got no gradient"
    schedule = getattr(est, "temperature", None)
    if isinstance(schedule, ExponentialDecay):
        assert int(schedule.num_steps) == 1  # advanced by the optimizer step, not by hand


def test_score_shape_sizes_the_head_of_estimators_with_extra_score_units():
    assert SoftmaxMarginalization().score_shape((3, K)) == (3, K)
    assert IGREstimator().score_shape((3, K)) == (3, 2, K - 1)
    assert MixedDirichletEstimator().score_shape((K,)) == (2, K)
    with pytest.raises(ValueError, match="latent_shape"):
        ScoreFunction().score_shape((0, K))
    with pytest.raises(ValueError, match="latent_shape"):
        ScoreFunction().score_shape(K)


def test_the_readme_swap_loop_runs_and_covers_every_estimator(capsys):
    import pathlib
    import re

    import latentgrad.estimators as estimators

    readme = pathlib.Path(__file__).parents[2] / "README.md"
    block = re.search(r"## One interface.*?```python\n(.*?)```", readme.read_text(), re.S)
    torch.manual_seed(0)
    exec(compile(block.group(1), "README.md", "exec"), {})
    printed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line}
    public = {
        name
        for name in estimators.__all__
        if isinstance(getattr(estimators, name), type)
        and issubclass(getattr(estimators, name), estimators.Estimator)
        and name != "Estimator"
    }
    assert public <= printed


@pytest.mark.parametrize("name", ESTIMATORS)
def test_integer_losses_are_refused_with_a_type_error(name):
    est = ESTIMATORS[name]()
    scores = torch.randn(3, *est.score_shape((K,)))
    with pytest.raises(TypeError, match="floating-point losses"):
        est(scores, lambda z, rows: torch.zeros(len(rows), dtype=torch.long))


PATHWISE = ("gumbel", "st_gumbel", "igr_i", "igr_sb", "igr_planar", "sst",
            "gaussian_sparsemax", "binary_mixed", "mixed_dirichlet")


@pytest.mark.parametrize("name", PATHWISE)
def test_losses_without_a_graph_are_refused_by_pathwise_estimators_at_the_call(name):
    est = ESTIMATORS[name]()
    scores = torch.randn(3, *est.score_shape((K,)), requires_grad=True)
    with pytest.raises(ValueError, match=f"{type(est).__name__}.*pathwise.*without a graph"):
        est(scores, lambda z, rows: z.detach().sum(-1))
    with torch.no_grad():  # nothing to differentiate: accepted
        est(scores, lambda z, rows: z.sum(-1))
