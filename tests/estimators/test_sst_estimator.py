"""SSTEstimator: the Estimator contract on top of StochasticSoftmax."""

import itertools

import pytest
import torch

from _references import pruefer_trees
from latentgrad.distributions.sst import StochasticSoftmax
from latentgrad.estimators.schedules import ExponentialDecay, Learnable
from latentgrad.estimators.sst import SSTEstimator
from latentgrad.structures.base import Structure
from latentgrad.structures.bitvector import BitVector
from latentgrad.structures.categorical import Categorical
from latentgrad.structures.ksubset import KSubset
from latentgrad.structures.spanning_tree import SpanningTree

F64 = torch.float64


class RecordingLoss:
    """A linear downstream loss ``<c_row, z>`` that records every call."""

    def __init__(self, weights):
        self.weights = weights
        self.calls = []

    def __call__(self, z, rows):
        self.calls.append((z, rows))
        dims = tuple(range(1, z.dim()))
        return (z * self.weights[rows]).sum(dims)


@pytest.mark.parametrize(
    ("structure", "shape"),
    [(None, (5,)), (KSubset(5, 2), (5,)), (BitVector(5, 2), (5,)), (SpanningTree(4), (4, 4))],
    ids=str,
)
@pytest.mark.parametrize("straight_through", [False, True])
def test_calls_loss_fn_once_with_one_sample_per_example(structure, shape, straight_through):
    scores = torch.randn(6, *shape, dtype=F64)
    if isinstance(structure, SpanningTree):
        scores = (scores + scores.mT) / 2
    scores.requires_grad_(True)
    loss_fn = RecordingLoss(torch.randn(6, *shape, dtype=F64))
    est = SSTEstimator(structure, 0.5, straight_through=straight_through)
    out = est(scores, loss_fn)
    assert len(loss_fn.calls) == 1
    z, rows = loss_fn.calls[0]
    assert z.shape == (6, *shape) and z.dtype == F64
    assert torch.equal(rows, torch.arange(6))
    losses = loss_fn(z, rows)
    torch.testing.assert_close(out.loss, losses.mean())
    torch.testing.assert_close(out.expected_loss, losses.detach())
    assert torch.equal(out.support_size, torch.ones(6, dtype=torch.long))
    assert out.entropy.shape == (6,) and float(out.logs["temperature"]) == 0.5
    if straight_through:
        assert set(z.detach().unique().tolist()) <= {0.0, 1.0}
    out.loss.backward()
    assert torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0


def test_gradient_is_the_reparameterised_gradient_of_the_relaxed_sample():
    scores = torch.randn(4, 5, dtype=F64, requires_grad=True)
    weights = torch.randn(4, 5, dtype=F64)
    torch.manual_seed(3)
    out = SSTEstimator(KSubset(5, 2), 0.7)(scores, RecordingLoss(weights))
    (grad_est,) = torch.autograd.grad(out.loss, scores)
    torch.manual_seed(3)
    x = StochasticSoftmax(KSubset(5, 2), scores, 0.7).rsample()
    (grad_ref,) = torch.autograd.grad((x * weights).sum(-1).mean(), scores)
    torch.testing.assert_close(grad_est, grad_ref)


def _subsets(n, k):
    """Every k-subset of n items as 0/1 rows ``(C(n, k), n)``."""
    rows = [[float(i in c) for i in range(n)] for c in itertools.combinations(range(n), k)]
    return torch.tensor(rows, dtype=F64)


@pytest.mark.parametrize("noise", ["gumbel", "gaussian"])
@pytest.mark.parametrize("straight_through", [False, True])
@pytest.mark.parametrize("kind", ["subset", "tree"])
def test_sample_and_gradient_are_the_stochastic_softmax_trick_written_from_its_definition(
    kind, straight_through, noise
):
    """Paulus et al.'s SST, by enumeration: utilities ``U = θ + N`` (N iid per score entry; one
    draw per undirected edge for trees, Gumbel as ``-log E`` with E ~ Exp(1)), relaxed sample
    ``Σ_x x softmax_x(<x, U> / t)`` (the Gibbs marginals at ``U / t``, the entropy regulariser),
    hard sample ``argmax_x <x, U>``; straight-through forwards the hard one with the relaxed one's
    Jacobian. A tree's score counts each edge once."""
    t = 0.6
    gen = torch.Generator().manual_seed(11)
    if kind == "subset":
        structure, space, shape = KSubset(5, 2), _subsets(5, 2), (5,)
    else:
        structure, space, shape = SpanningTree(4), pruefer_trees(4), (4, 4)
    assert space.shape[0] == structure.num_structures
    scores = torch.randn(3, *shape, generator=gen, dtype=F64)
    if kind == "tree":
        scores = (scores + scores.mT) / 2
    scores.requires_grad_(True)
    weights = torch.randn(3, *shape, generator=gen, dtype=F64)
    est = SSTEstimator(structure, t, noise=noise, straight_through=straight_through)
    torch.manual_seed(4)
    out = est(scores, RecordingLoss(weights))
    (got,) = torch.autograd.grad(out.loss, scores)

    torch.manual_seed(4)
    if noise == "gumbel":
        n = -torch.empty(3, *shape, dtype=F64).exponential_().log()
    else:
        n = torch.randn(3, *shape, dtype=F64)
    if kind == "tree":
        n = n.triu(1) + n.triu(1).mT
    utilities = scores + n
    flat = space.flatten(1)  # (|X|, d)
    per_structure = utilities.flatten(1) @ flat.T / (2.0 if kind == "tree" else 1.0)  # (3, |X|)
    relaxed = (per_structure / t).softmax(-1) @ flat
    hard = flat[per_structure.argmax(-1)]
    z = (hard + relaxed - relaxed.detach() if straight_through else relaxed).view(3, *shape)
    torch.testing.assert_close(out.latents.detach(), z.detach())
    (want,) = torch.autograd.grad((z * weights).flatten(1).sum(-1).mean(), scores)
    torch.testing.assert_close(got, want)


def test_categorical_entropy_bonus_uses_the_exact_softmax_entropy():
    scores = torch.randn(3, 4, dtype=F64, requires_grad=True)
    out = SSTEstimator(None, 1.0, entropy_coeff=0.5)(scores, RecordingLoss(torch.zeros(3, 4)))
    p = scores.softmax(-1)
    entropy = -(p * p.log()).sum(-1)
    torch.testing.assert_close(out.entropy, entropy.detach())
    torch.testing.assert_close(out.loss, -0.5 * entropy.mean())
    (grad,) = torch.autograd.grad(out.loss, scores)
    (ref,) = torch.autograd.grad(-0.5 * entropy.mean(), scores)
    torch.testing.assert_close(grad, ref)


@pytest.mark.parametrize("structure", [KSubset(5, 2), BitVector(5), BitVector(5, 3)], ids=repr)
def test_reported_entropy_is_the_gibbs_entropy_by_enumeration(structure):
    scores = torch.randn(3, 5, dtype=F64)
    scores[0, 1] = float("-inf")
    z = structure.enumerate().to(F64)
    values = torch.where(z.bool(), scores.unsqueeze(-2), torch.zeros_like(z)).sum(-1)
    logp = values.log_softmax(-1)
    ref = -torch.where(logp > float("-inf"), logp.exp() * logp, torch.zeros_like(logp)).sum(-1)
    out = SSTEstimator(structure, 1.0)(scores, RecordingLoss(torch.zeros(3, 5, dtype=F64)))
    torch.testing.assert_close(out.entropy, ref)


def test_temperature_schedules_are_followed_and_learnable_temperature_gets_a_gradient():
    scores = torch.randn(3, 4, dtype=F64)
    loss_fn = RecordingLoss(torch.randn(3, 4, dtype=F64))
    est = SSTEstimator(None, ExponentialDecay(2.0, rate=0.1, every=1, floor=0.5))
    assert float(est(scores, loss_fn).logs["temperature"]) == pytest.approx(2.0)
    est.temperature.step()
    assert float(est(scores, loss_fn).logs["temperature"]) == pytest.approx(2.0 * 0.9048374180)
    learn = SSTEstimator(KSubset(4, 2), Learnable(0.8))
    assert any(p is learn.temperature.free for p in learn.parameters())
    learn(scores, loss_fn).loss.backward()
    assert learn.temperature.free.grad is not None and torch.isfinite(learn.temperature.free.grad)


def test_structure_without_log_partition_reports_zero_entropy_and_refuses_a_bonus():
    class NoPartition(Categorical):
        entropy = Structure.entropy  # through log_partition, as for a structure without one

        def log_partition(self, scores):
            raise NotImplementedError("no log Z")

        def marginals(self, scores):
            return torch.softmax(scores, -1)

    scores = torch.randn(2, 3)
    out = SSTEstimator(NoPartition(3), 1.0)(scores, RecordingLoss(torch.ones(2, 3)))
    assert torch.equal(out.entropy, torch.zeros(2))
    bonus = SSTEstimator(NoPartition(3), 1.0, entropy_coeff=0.1)
    with pytest.raises(ValueError, match="tractable entropy"):
        bonus(scores, RecordingLoss(torch.ones(2, 3)))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"structure": "tree"}, TypeError, "structure"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": "cold"}, TypeError, "temperature"),
        ({"regularizer": "l2"}, ValueError, "regularizer"),
        ({"noise": "laplace"}, ValueError, "noise"),
        ({"straight_through": "yes"}, TypeError, "straight_through"),
    ],
)
def test_bad_configuration_raises(kwargs, error, match):
    args = {"structure": None, "temperature": 1.0}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        SSTEstimator(**args)


@pytest.mark.parametrize(
    ("scores", "match"),
    [
        (torch.zeros(2, 3, 4), "shape"),
        (torch.tensor([[0.0, float("nan"), 1.0, 2.0]]), "NaN"),
    ],
)
def test_bad_scores_raise(scores, match):
    with pytest.raises(ValueError, match=match):
        SSTEstimator(KSubset(4, 2), 1.0)(scores, RecordingLoss(torch.zeros(1, 4)))


def test_loss_fn_with_wrong_output_shape_raises():
    with pytest.raises(ValueError, match="loss_fn must return"):
        SSTEstimator(None, 1.0)(torch.zeros(2, 3), lambda z, rows: z.sum())
