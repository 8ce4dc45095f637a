"""Score-function estimators over structured latents: unbiasedness
against the exact gradient by enumeration (float64), the one-call contract, bad input.

Unbiasedness tests run one estimator call on a big batch of identical rows (every row is the same
example of the seed-3 quadratic toy) and compare the mean per-row gradient with the exact one
within 5 standard errors.
"""

from __future__ import annotations

import pytest
import torch
from _estimator_toys import QuadraticLoss, loss_table

from latentgrad.estimators.perturbation import PerturbationScoreFunction
from latentgrad.estimators.score_function import NVIL, ScoreFunction, SumAndSample
from latentgrad.structures.arborescence import Arborescence
from latentgrad.structures.base import Structure
from latentgrad.structures.bitvector import BitVector
from latentgrad.structures.categorical import Categorical
from latentgrad.structures.ksubset import KSubset
from latentgrad.structures.spanning_tree import SpanningTree

N_DRAWS = 4000


def _theta(structure: Structure, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    theta = scale * torch.randn(structure.score_shape, generator=g, dtype=torch.float64)
    return (theta + theta.mT) / 2 if isinstance(structure, SpanningTree) else theta


def _toy_loss(n: int, event_shape: tuple[int, ...], offset: float) -> QuadraticLoss:
    single = QuadraticLoss(1, event_shape, offset=offset, seed=3)
    single.y = single.y.expand(n)
    single.c = single.c.expand(n, *event_shape)
    return single


def _per_draw_grads(est, theta, loss_fn, n_draws=N_DRAWS):
    scores = theta.expand(n_draws, *theta.shape).clone().requires_grad_(True)
    out = est(scores, loss_fn)
    (g,) = torch.autograd.grad(out.loss, scores)
    return g * n_draws, out


def _gibbs_probs(structure, theta, space):
    return torch.softmax(structure.score(theta, space), -1)


def _exact(structure, theta, probs_fn, entropy_coeff=0.0, offset=0.0):
    """Exact objective ``E_p[l] - c H(p)`` at ``theta``, its gradient, and the entropy."""
    space = structure.enumerate().to(torch.float64)
    th = theta.clone().requires_grad_(True)
    probs = probs_fn(structure, th, space)
    table = loss_table(QuadraticLoss(1, structure.score_shape, offset=offset, seed=3), space, 1)
    entropy = -(probs * probs.clamp_min(1e-300).log()).sum()
    objective = (probs * table[0].detach()).sum() - entropy_coeff * entropy
    (g,) = torch.autograd.grad(objective, th)
    return objective.detach(), g, entropy.detach()


def _assert_unbiased(grads, exact, z=5.0):
    mean = grads.mean(0)
    stderr = grads.std(0) / grads.shape[0] ** 0.5
    assert ((mean - exact).abs() <= z * stderr + 1e-9).all(), (mean, exact, stderr)


GIBBS = [KSubset(5, 2), BitVector(4, budget=2), SpanningTree(4), Arborescence(3),
         Arborescence(3, root=1)]


@pytest.mark.parametrize("structure", GIBBS, ids=repr)
@pytest.mark.parametrize(("baseline", "n_samples"), [(None, 1), ("leave_one_out", 2)])
def test_score_function_over_a_structure_is_unbiased(structure, baseline, n_samples):
    torch.manual_seed(0)
    theta = _theta(structure, seed=1)
    est = ScoreFunction(baseline, n_samples, entropy_coeff=0.3, structure=structure)
    grads, out = _per_draw_grads(est, theta, _toy_loss(N_DRAWS, structure.score_shape, 2.0))
    _, exact, entropy = _exact(structure, theta, _gibbs_probs, 0.3, offset=2.0)
    _assert_unbiased(grads, exact)
    torch.testing.assert_close(out.entropy, entropy.expand(N_DRAWS))


@pytest.mark.parametrize("structure", [*GIBBS, Arborescence(4, root=1), Arborescence(4)], ids=repr)
def test_score_function_over_a_structure_makes_one_call_on_admissible_structures(structure):
    torch.manual_seed(1)
    scores = torch.stack([_theta(structure, seed=s) for s in range(6)])
    loss_fn = QuadraticLoss(6, structure.score_shape, seed=2)
    est = ScoreFunction("self_critic", n_samples=3, entropy_coeff=0.2, structure=structure)
    out = est(scores, loss_fn)
    z, rows = loss_fn.last
    assert loss_fn.calls == [6 * 4]
    torch.testing.assert_close(rows, torch.arange(6).repeat_interleave(4))
    space = structure.enumerate().to(torch.float64)
    assert ((z.unsqueeze(1) == space).flatten(2).all(-1).sum(-1) == 1).all()
    assert (out.support_size == 4).all() and out.expected_loss.shape == (6,)
    torch.testing.assert_close(out.loss, (out.expected_loss - 0.2 * out.entropy).mean())


class _ConstantNet(torch.nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor(value, dtype=torch.float64))

    def forward(self, x):
        return self.bias.expand(x.shape[0])


def test_nvil_over_a_spanning_tree_is_unbiased_and_its_baseline_cuts_variance():
    torch.manual_seed(9)
    tree = SpanningTree(4)
    theta = _theta(tree, seed=12)
    loss_fn = _toy_loss(N_DRAWS, (4, 4), 10.0)
    value, exact, _ = _exact(tree, theta, _gibbs_probs, offset=10.0)
    x = torch.zeros(N_DRAWS, 1, dtype=torch.float64)
    variances = []
    for bias in (0.0, float(value)):
        est = NVIL(_ConstantNet(bias), structure=tree)
        scores = theta.expand(N_DRAWS, 4, 4).clone().requires_grad_(True)
        (g,) = torch.autograd.grad(est(scores, loss_fn, baseline_input=x).loss, scores)
        _assert_unbiased(g * N_DRAWS, exact)
        variances.append((g * N_DRAWS).var(0).sum())
    assert variances[1] < 0.2 * variances[0]


def test_score_function_never_samples_excluded_items_of_a_k_subset():
    torch.manual_seed(2)
    ks = KSubset(6, 3)
    scores = torch.randn(40, 6, dtype=torch.float64)
    scores[:, 2] = float("-inf")
    scores.requires_grad_(True)
    loss_fn = QuadraticLoss(40, (6,), seed=4)
    out = ScoreFunction(n_samples=2, entropy_coeff=0.5, structure=ks)(scores, loss_fn)
    z, _ = loss_fn.last
    assert (z[:, 2] == 0).all() and (z.sum(-1) == 3).all()
    (g,) = torch.autograd.grad(out.loss, scores)
    assert torch.isfinite(g).all() and (g[:, 2] == 0).all()


SUMMABLE = [KSubset(5, 2), BitVector(4, budget=2), BitVector(4)]


@pytest.mark.parametrize("structure", SUMMABLE, ids=repr)
@pytest.mark.parametrize(("k", "baseline"), [(1, None), (3, "self_critic"), (2, "batch_loo")])
def test_sum_and_sample_over_a_structure_is_unbiased(structure, k, baseline):
    torch.manual_seed(3)
    theta = _theta(structure, seed=5)
    est = SumAndSample(k=k, baseline=baseline, entropy_coeff=0.2, structure=structure)
    grads, out = _per_draw_grads(est, theta, _toy_loss(N_DRAWS, structure.score_shape, 5.0))
    value, exact, _ = _exact(structure, theta, _gibbs_probs, 0.2, offset=5.0)
    _assert_unbiased(grads, exact)
    _, _, entropy = _exact(structure, theta, _gibbs_probs)
    expected_loss = value + 0.2 * entropy
    stderr = out.expected_loss.std() / N_DRAWS**0.5
    assert (out.expected_loss.mean() - expected_loss).abs() <= 5 * stderr + 1e-9
    assert (out.support_size == k + 1 + (baseline == "self_critic")).all()


def test_sum_and_sample_rejection_weight_keeps_it_unbiased_when_draws_miss():
    """With most mass on the top structures and a single rejection draw, most examples find no
    structure outside C; the (1 - q_C) / (1 - q_C^M) weight keeps the estimate unbiased."""
    torch.manual_seed(4)
    ks = KSubset(4, 2)
    theta = torch.tensor([3.0, 2.5, -1.0, 0.0], dtype=torch.float64)
    est = SumAndSample(k=1, structure=ks, max_draws=1)
    grads, out = _per_draw_grads(est, theta, _toy_loss(N_DRAWS, (4,), 3.0))
    _, exact, _ = _exact(ks, theta, _gibbs_probs, offset=3.0)
    _assert_unbiased(grads, exact)
    assert out.logs["rejection_miss_rate"] > 0.3


def test_sum_and_sample_summing_every_structure_is_exact_marginalization():
    bv = BitVector(3, budget=1)
    scores = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    scores.requires_grad_(True)
    loss_fn = QuadraticLoss(5, (3,), seed=7)
    out = SumAndSample(k=bv.num_structures, entropy_coeff=0.4, structure=bv)(scores, loss_fn)
    assert loss_fn.calls == [5 * 4] and (out.support_size == 4).all()
    space = bv.enumerate().to(torch.float64)
    probs = _gibbs_probs(bv, scores.unsqueeze(1), space)
    table = loss_table(loss_fn, space, 5)
    entropy = -(probs * probs.log()).sum(-1)
    exact = ((probs * table).sum(-1) - 0.4 * entropy).mean()
    torch.testing.assert_close(out.loss, exact)
    torch.testing.assert_close(
        torch.autograd.grad(out.loss, (scores, loss_fn.w)),
        torch.autograd.grad(exact, (scores, loss_fn.w)),
    )


def _smt_categorical(structure, th, space):
    return th.softmax(-1)


def _smt_ksubset(structure, th, space):
    """Gumbel-top-k is sampling without replacement: P({a, b}) = p_a p_b / (1 - p_a) + (a<->b)."""
    p = th.softmax(-1)
    a, b = space.nonzero()[:, 1].view(-1, 2).T
    return p[a] * p[b] / (1 - p[a]) + p[b] * p[a] / (1 - p[b])


def _smt_bits(noise):
    def probs(structure, th, space):
        on = -torch.expm1(-th.exp()) if noise == "gumbel" else torch.special.ndtr(th)
        return torch.where(space.bool(), on, 1 - on).prod(-1)

    return probs


def _smt_triangle(structure, th, space):
    """Max spanning tree of K_3 drops the min-utility edge e: by inclusion-exclusion
    P(U_e min) = 1 - σ(φ_e - φ_f) - σ(φ_e - φ_g) + softmax(φ)_e (Gumbel differences are
    logistic, the max is softmax-distributed)."""
    phi = SpanningTree(3).to_edges((th + th.mT) / 2)
    diff = torch.sigmoid(phi.unsqueeze(1) - phi.unsqueeze(0))
    drop = 1 - (diff.sum(1) - 0.5) + phi.softmax(-1)
    missing = 1 - SpanningTree(3).to_edges(space)  # one-hot of the dropped edge per tree
    return missing @ drop


@pytest.mark.parametrize(
    ("structure", "probs_fn", "noise"),
    [
        (Categorical(5), _smt_categorical, "gumbel"),
        (KSubset(4, 2), _smt_ksubset, "gumbel"),
        (BitVector(3), _smt_bits("gumbel"), "gumbel"),
        (BitVector(3), _smt_bits("gaussian"), "gaussian"),
        (SpanningTree(3), _smt_triangle, "gumbel"),
    ],
    ids=["categorical", "ksubset", "bits-gumbel", "bits-gaussian", "triangle"],
)
@pytest.mark.parametrize(("baseline", "n_samples"), [(None, 1), ("leave_one_out", 2)])
def test_perturbation_score_function_is_unbiased_for_the_smt_distribution(
    structure, probs_fn, noise, baseline, n_samples
):
    torch.manual_seed(5)
    theta = _theta(structure, seed=8)
    est = PerturbationScoreFunction(structure, baseline, n_samples, noise=noise)
    grads, _ = _per_draw_grads(est, theta, _toy_loss(N_DRAWS, structure.score_shape, 2.0))
    space = structure.enumerate().to(torch.float64)
    torch.testing.assert_close(probs_fn(structure, theta, space).sum(), torch.tensor(1.0).double())
    _, exact, _ = _exact(structure, theta, probs_fn, offset=2.0)
    _assert_unbiased(grads, exact)


@pytest.mark.parametrize("structure", [Arborescence(4, root=2), Arborescence(4), SpanningTree(5)],
                         ids=repr)
def test_perturbation_score_function_respects_the_utility_layout(structure):
    """No gradient on entries that carry no utility; the tree gradient is symmetric; with a
    constant loss the score of the utilities averages to zero (E[1 - exp(-G)] = 0)."""
    torch.manual_seed(6)
    theta = _theta(structure, seed=9)
    est = PerturbationScoreFunction(structure, n_samples=2)
    grads, out = _per_draw_grads(est, theta, _toy_loss(2000, structure.score_shape, 0.0), 2000)
    assert (out.support_size == 2).all()
    if isinstance(structure, SpanningTree):
        torch.testing.assert_close(grads, grads.mT)
    elif structure.root is not None:
        assert (grads[:, :, 2] == 0).all() and (grads.diagonal(dim1=-2, dim2=-1) == 0).all()

    def constant(z, rows):
        return torch.full(rows.shape, 7.0, dtype=torch.float64)

    grads, _ = _per_draw_grads(est, theta, constant, 2000)
    _assert_unbiased(grads, torch.zeros_like(theta))


def test_perturbation_score_function_skips_excluded_items():
    torch.manual_seed(7)
    scores = torch.randn(30, 5, dtype=torch.float64)
    scores[:, 0] = float("-inf")
    scores.requires_grad_(True)
    loss_fn = QuadraticLoss(30, (5,), seed=10)
    out = PerturbationScoreFunction(KSubset(5, 2), "batch_loo", entropy_coeff=0.1)(scores, loss_fn)
    z, _ = loss_fn.last
    assert (z[:, 0] == 0).all()
    (g,) = torch.autograd.grad(out.loss, scores)
    assert torch.isfinite(g).all() and (g[:, 0] == 0).all()


class _NoSampler(Structure):
    score_shape = (3,)

    def argmax(self, scores):
        return (scores > 0).to(scores.dtype)

    def enumerate(self):
        return torch.eye(3)


def test_bad_configurations_and_inputs_raise():
    with pytest.raises(TypeError, match="exact Gibbs sampler"):  # a capability: TypeError
        ScoreFunction(structure=_NoSampler())
    with pytest.raises(TypeError, match="structure must be a Structure"):
        ScoreFunction(structure="ksubset")
    with pytest.raises(TypeError, match="k-best oracle"):
        SumAndSample(structure=Arborescence(4))
    with pytest.raises(ValueError, match="exceeds the number of structures"):
        SumAndSample(k=7, structure=KSubset(4, 2))(torch.zeros(2, 4), QuadraticLoss(2, (4,)))
    with pytest.raises(ValueError, match="max_draws"):
        SumAndSample(structure=KSubset(4, 2), max_draws=0)
    with pytest.raises(ValueError, match="noise"):
        PerturbationScoreFunction(KSubset(4, 2), noise="cauchy")
    with pytest.raises(ValueError, match="log_partition"):
        PerturbationScoreFunction(_NoSampler(), entropy_coeff=0.1)
    loss_fn = QuadraticLoss(2, (4,))
    with pytest.raises(ValueError, match="scores"):
        ScoreFunction(structure=KSubset(5, 2))(torch.zeros(2, 4, dtype=torch.float64), loss_fn)
    nan = torch.zeros(2, 4, dtype=torch.float64)
    nan[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        SumAndSample(structure=KSubset(4, 2))(nan, loss_fn)
    with pytest.raises(ValueError, match="symmetric"):
        ScoreFunction(structure=SpanningTree(4))(torch.randn(2, 4, 4, dtype=torch.float64),
                                                 QuadraticLoss(2, (4, 4)))


def test_perturbation_score_function_works_for_a_structure_without_a_sampler():
    torch.manual_seed(8)
    scores = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss_fn = QuadraticLoss(4, (3,), seed=11)
    out = PerturbationScoreFunction(_NoSampler(), n_samples=2)(scores, loss_fn)
    assert loss_fn.calls == [8] and (out.entropy == 0).all()
    (g,) = torch.autograd.grad(out.loss, scores)
    assert torch.isfinite(g).all()


def test_perturbation_score_function_hands_indices_with_one_hot_false():
    """The same draws, loss and gradient as with one-hots, loss_fn reading category indices
    (train and eval mode); structures refuse the option."""
    weights = torch.tensor([0.5, -1.0, 2.0, 0.3], dtype=torch.float64)
    scores = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    outs = []
    for one_hot, loss_fn in [(True, lambda z, rows: (z @ weights).square().sum(-1)),
                             (False, lambda idx, rows: weights[idx].square().sum(-1))]:
        est = PerturbationScoreFunction(None, baseline="ema", one_hot=one_hot)
        torch.manual_seed(4)
        out = est(scores, loss_fn)
        outs.append((out.loss, torch.autograd.grad(out.loss, scores)[0], out.latents))
        assert est.eval()(scores, loss_fn).latents.dtype == (scores.dtype if one_hot
                                                             else torch.int64)
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])
    assert torch.equal(outs[0][2].argmax(-1), outs[1][2])
    with pytest.raises(ValueError, match="one_hot=False applies to categorical"):
        PerturbationScoreFunction(BitVector(3), one_hot=False)
