"""gradient_stats: exact gradients by enumeration, bias and variance of known estimators."""

from __future__ import annotations

import doctest
import itertools

import pytest
import torch
from _estimator_toys import QuadraticLoss, exact_objective, loss_table

import latentgrad.diagnostics
from latentgrad.diagnostics import exact_gradient, gradient_stats
from latentgrad.estimators.marginalization import SoftmaxMarginalization, SparsemaxMarginalization
from latentgrad.estimators.score_function import ScoreFunction
from latentgrad.mappings import sparsemax
from latentgrad.structures import Arborescence, SpanningTree
from latentgrad.structures.bitvector import BitVector

B, K = 3, 4
pytestmark = pytest.mark.usefixtures("one_thread")


def _scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    return 1.5 * torch.randn(B, K, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("normalizer", ["softmax", "sparsemax", "entmax15"])
def test_exact_marginalization_has_zero_bias_and_zero_variance(normalizer):
    est = (
        SoftmaxMarginalization(entropy_coeff=0.2)
        if normalizer == "softmax"
        else SparsemaxMarginalization(normalizer, entropy_coeff=0.2)
    )
    stats = gradient_stats(est, _scores(), QuadraticLoss(B, (K,), seed=1), n_draws=3)
    assert stats.total_variance.item() == 0.0
    torch.testing.assert_close(stats.bias, torch.zeros_like(stats.bias))
    assert stats.evaluations_per_example <= K


def test_exact_gradient_of_the_gibbs_target_matches_enumeration():
    """Default target: softmax over the categories, entropy weighted by entropy_coeff."""
    scores = _scores(1)
    loss_fn = QuadraticLoss(B, (K,), seed=2)
    got = exact_gradient(ScoreFunction(entropy_coeff=0.3), scores, loss_fn, None)
    x = scores.clone().requires_grad_(True)
    table = loss_table(loss_fn, torch.eye(K, dtype=torch.float64), B).detach()
    (ref,) = torch.autograd.grad(exact_objective(x.softmax(-1), table, 0.3), x)
    torch.testing.assert_close(got, ref)


def test_bitvector_exact_gradient_enumerates_the_structure():
    d = 3
    scores = torch.tensor([[0.3, -1.0, 2.0], [0.0, 0.5, -0.5]], dtype=torch.float64)
    loss_fn = QuadraticLoss(2, (d,), seed=3)
    got = exact_gradient(ScoreFunction(structure=BitVector(d)), scores, loss_fn, BitVector(d))
    space = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=torch.float64)
    x = scores.clone().requires_grad_(True)
    sig = torch.nn.functional.logsigmoid
    probs = (sig(x).unsqueeze(1) * space + sig(-x).unsqueeze(1) * (1 - space)).sum(-1).exp()
    (ref,) = torch.autograd.grad(exact_objective(probs, loss_table(loss_fn, space, 2).detach()), x)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("structure", [SpanningTree(4), Arborescence(3)], ids=repr)
def test_tree_exact_gradient_is_that_of_the_structures_own_distribution(structure):
    """p(z) = exp(structure.log_prob(theta, z)): a spanning tree's score counts each undirected
    edge once (summing theta over z's nonzero entries would count it twice)."""
    n = structure.n
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(2, n, n, generator=g, dtype=torch.float64)
    if isinstance(structure, SpanningTree):
        scores = (scores + scores.mT) / 2
    loss_fn = QuadraticLoss(2, (n, n), seed=5)
    got = exact_gradient(ScoreFunction(structure=structure), scores, loss_fn, structure)
    space = structure.enumerate().to(torch.float64)
    x = scores.clone().requires_grad_(True)
    probs = structure.log_prob(x.unsqueeze(1), space).exp()  # (2, N)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, dtype=torch.float64))
    (ref,) = torch.autograd.grad(exact_objective(probs, loss_table(loss_fn, space, 2).detach()), x)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("normalizer", ["gibbs", "sparsemax"])
def test_several_categorical_latents_enumerate_their_joint_values(normalizer):
    """Scores (B, L, K): L independent latents, K^L joint values of product probability."""
    b, latents, k = 2, 3, 3
    g = torch.Generator().manual_seed(6)
    scores = 2 * torch.randn(b, latents, k, generator=g, dtype=torch.float64)
    est = ScoreFunction() if normalizer == "gibbs" else SparsemaxMarginalization("sparsemax")
    loss_fn = QuadraticLoss(b, (latents, k), seed=7)
    got = exact_gradient(est, scores, loss_fn, None)
    codes = list(itertools.product(range(k), repeat=latents))
    space = torch.nn.functional.one_hot(torch.tensor(codes), k).to(torch.float64)
    x = scores.clone().requires_grad_(True)
    per_latent = x.softmax(-1) if normalizer == "gibbs" else sparsemax(x, dim=-1)
    probs = torch.stack(
        [torch.stack([per_latent[:, i, c] for i, c in enumerate(code)]).prod(0) for code in codes],
        dim=-1,
    )
    (ref,) = torch.autograd.grad(exact_objective(probs, loss_table(loss_fn, space, b).detach()), x)
    torch.testing.assert_close(got, ref)
    stats = gradient_stats(est, scores, loss_fn, n_draws=2)
    torch.testing.assert_close(stats.exact, ref)


def test_too_many_joint_values_ask_for_exact_false():
    scores = torch.zeros(1, 20, 4)
    loss_fn = lambda z, rows: z.flatten(1).sum(-1)  # noqa: E731
    expected = r"exact: scores of shape \(1, 20, 4\) have 1099511627776 joint values \(4\^20\)"
    with pytest.raises(ValueError, match=expected):
        gradient_stats(ScoreFunction(), scores, loss_fn, n_draws=2)
    assert gradient_stats(ScoreFunction(), scores, loss_fn, n_draws=2, exact=False).exact is None


def test_an_empty_batch_or_an_estimator_in_eval_mode_is_refused_by_name():
    """torch's "cannot reshape tensor of 0 elements" and "element 0 of tensors does not require
    grad" before."""
    loss_fn = QuadraticLoss(2, (4,), seed=0)
    with pytest.raises(ValueError, match=r"at least one example \(B >= 1\)"):
        gradient_stats(ScoreFunction(), torch.zeros(0, 4), loss_fn, 5)
    with pytest.raises(ValueError, match=r"eval mode.*call estimator.train\(\) first"):
        gradient_stats(ScoreFunction().eval(), torch.zeros(2, 4), loss_fn, 5)


def test_score_function_bias_is_within_monte_carlo_error_and_baselines_cut_variance():
    torch.manual_seed(0)
    scores, loss_fn = _scores(2), QuadraticLoss(B, (K,), offset=5.0, seed=4)
    plain = gradient_stats(ScoreFunction(), scores, loss_fn, n_draws=200)
    critic = gradient_stats(ScoreFunction(baseline="self_critic"), scores, loss_fn, n_draws=200)
    for stats in (plain, critic):
        assert (stats.bias.abs() <= 5 * stats.stderr + 1e-12).all()
    assert critic.total_variance < plain.total_variance
    assert plain.evaluations_per_example == 1.0
    assert critic.evaluations_per_example == 2.0


def test_gradient_stats_leaves_the_callers_running_baseline_untouched():
    est = ScoreFunction(baseline="moving_average")
    gradient_stats(est, _scores(), QuadraticLoss(B, (K,)), n_draws=4, exact=False)
    assert est.running.count.item() == 0


def test_gradient_stats_rejects_a_single_draw():
    with pytest.raises(ValueError, match="n_draws"):
        gradient_stats(ScoreFunction(), _scores(), QuadraticLoss(B, (K,)), n_draws=1)


def test_gradient_stats_docstring_example_runs():
    result = doctest.testmod(latentgrad.diagnostics, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0


def test_estimators_whose_latent_is_not_enumerated_have_no_exact_gradient():
    """Mixed, IGR and relaxed-subset latents are not distributions over the enumerated one-hots:
    no brute-force target, so no exact gradient and no bias (before: the bias against a softmax
    of the scores, e.g. 12 standard errors for the unbiased Gaussian-sparsemax estimator)."""
    from latentgrad.estimators import (
        GaussianSparsemaxEstimator,
        IGREstimator,
        MixedDirichletEstimator,
    )
    from latentgrad.estimators.subsets import CorrelatedSSTEstimator, L2XEstimator

    def loss_fn(z, rows):
        return z.flatten(1).square().sum(-1)

    cases = [(GaussianSparsemaxEstimator(), (B, K)), (IGREstimator(), (B, 2, 2, K - 1)),
             (MixedDirichletEstimator(), (B, 2, K)), (L2XEstimator(2, 0.5), (B, K)),
             (CorrelatedSSTEstimator(2, 0.5), (B, K, 3))]  # fmt: skip
    for estimator, shape in cases:
        scores = torch.randn(*shape, dtype=torch.float64)
        stats = gradient_stats(estimator, scores, loss_fn, 3)
        assert stats.exact is None and stats.bias is None, estimator


def test_a_categorical_structure_and_index_latents_enumerate_as_the_plain_categorical():
    """``structure=Categorical(K)`` with several latents ``(B, L, K)`` and ``one_hot=False``
    (``loss_fn`` on indices; marginalization estimators too: they crashed in the loss) give the
    exact gradient of the plain one-hot categorical case."""
    from latentgrad.structures import Categorical

    scores = 1.5 * torch.randn(B, 3, K, dtype=torch.float64)
    weights = torch.arange(1.0, K + 1, dtype=torch.float64)

    def one_hot_loss(z, rows):
        return (z * weights).sum(-1).square().sum(-1)

    def index_loss(idx, rows):
        return weights[idx].square().sum(-1)

    want = exact_gradient(ScoreFunction(), scores, one_hot_loss, None)
    structured = ScoreFunction(structure=Categorical(K))
    torch.testing.assert_close(exact_gradient(structured, scores, one_hot_loss, Categorical(K)),
                               want)
    for kind in (ScoreFunction, SoftmaxMarginalization, SparsemaxMarginalization):
        torch.testing.assert_close(exact_gradient(kind(one_hot=False), scores, index_loss, None),
                                   exact_gradient(kind(), scores, one_hot_loss, None))


def test_several_structured_latents_ask_for_exact_false():
    with pytest.raises(ValueError, match="exact=False"):
        gradient_stats(ScoreFunction(structure=BitVector(3)), torch.randn(2, 2, 3),
                       lambda z, rows: z.flatten(1).sum(-1), 2)


def test_gradient_stats_are_the_moments_of_the_per_draw_gradients():
    """mean, variance (ddof 1), stderr = sqrt(variance / n), total_variance and the mean
    evaluations per example, against the per-draw gradients recomputed here from the same
    draws (a bias bound of 5 stderr cannot catch a wrong stderr on its own)."""
    scores, loss_fn = _scores(2), QuadraticLoss(B, (K,), offset=5.0, seed=4)
    est = ScoreFunction(baseline="self_critic")
    n = 30
    torch.manual_seed(7)
    stats = gradient_stats(est, scores, loss_fn, n_draws=n)
    torch.manual_seed(7)
    grads, evals = [], []
    for _ in range(n):
        x = scores.clone().requires_grad_(True)
        out = est(x, loss_fn)
        grads.append(torch.autograd.grad(out.loss, x)[0])
        evals.append(out.support_size.double().mean().item())
    g = torch.stack(grads)
    mean = g.mean(0)
    var = ((g - mean) ** 2).sum(0) / (n - 1)
    torch.testing.assert_close(stats.mean, mean)
    torch.testing.assert_close(stats.variance, var)
    torch.testing.assert_close(stats.stderr, (var / n).sqrt())
    torch.testing.assert_close(stats.total_variance, var.sum())
    torch.testing.assert_close(stats.bias, mean - stats.exact)
    assert stats.evaluations_per_example == pytest.approx(sum(evals) / n, rel=1e-12)
    assert stats.n_draws == n


def test_evaluations_per_example_average_over_the_examples():
    """Sparsemax marginalization on a peaked row (support 1) and a flat one (support K): 1 + K
    over 2 loss evaluations per example, not the larger nor the sum."""
    scores = torch.tensor([[9.0, 0.0, 0.0, 0.0], [0.0] * K], dtype=torch.float64)
    stats = gradient_stats(SparsemaxMarginalization(), scores,
                           QuadraticLoss(2, (K,), seed=1), n_draws=2)
    assert stats.evaluations_per_example == (1 + K) / 2


def _bit_smt_gradient(scores, loss_fn, noise, coeff=0.0):
    """Brute force: E[l(z)] - coeff * H_Gibbs over the 2^D bit vectors, bits independent with
    P(z_i = 1) = P(θ_i + N_i > 0) (1 - exp(-e^θ) for Gumbel N, Φ(θ) for Gaussian)."""
    d = scores.shape[-1]
    space = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=torch.float64)
    x = scores.clone().requires_grad_(True)
    on = -torch.expm1(-x.exp()) if noise == "gumbel" else torch.special.ndtr(x)
    probs = torch.where(space.bool(), on.unsqueeze(1), 1 - on.unsqueeze(1)).prod(-1)  # (B, 2^D)
    table = loss_table(loss_fn, space, scores.shape[0]).detach()
    objective = (probs * table).sum(-1) - coeff * BitVector(d).entropy(x)
    return torch.autograd.grad(objective.mean(), x)[0]


@pytest.mark.parametrize("noise", ["gumbel", "gaussian"])
def test_perturb_and_map_estimators_are_measured_against_their_own_distribution(noise):
    """The perturbation score function and the SST estimators sample argmax <θ + N, x>, which
    on bit vectors is not the Gibbs (sigmoid) distribution: the exact gradient is that of the
    perturb-and-MAP distribution, with the Gibbs entropy the estimators use as regulariser
    (before: the Gibbs target, a bias of 12 standard errors for the unbiased estimator)."""
    from latentgrad.estimators import PerturbationScoreFunction, SSTEstimator

    bits = BitVector(3)
    scores = _scores(5)[:, :3]
    loss_fn = QuadraticLoss(B, (3,), seed=6)
    for est, coeff in [(PerturbationScoreFunction(bits, noise=noise), 0.0),
                       (PerturbationScoreFunction(bits, noise=noise, entropy_coeff=0.3), 0.3),
                       (SSTEstimator(bits, 0.5, noise=noise), 0.0)]:  # fmt: skip
        want = _bit_smt_gradient(scores, loss_fn, noise, coeff)
        torch.testing.assert_close(exact_gradient(est, scores, loss_fn, bits), want)


def test_the_unbiased_perturbation_score_function_has_no_bias_beyond_noise():
    from latentgrad.estimators import PerturbationScoreFunction

    torch.manual_seed(3)
    stats = gradient_stats(PerturbationScoreFunction(BitVector(3), baseline="ema"),
                           _scores(5)[:, :3], QuadraticLoss(B, (3,), seed=6), n_draws=2000)
    assert (stats.bias.abs() <= 5 * stats.stderr + 1e-12).all()


def test_ksubset_perturb_and_map_target_is_sampling_without_replacement():
    """Gumbel top-k: each subset's probability is the sum over its draw orders of sequential
    softmax draws (brute force, differentiable), not the Gibbs probability."""
    from latentgrad.estimators import PerturbationScoreFunction, SSTEstimator
    from latentgrad.structures import KSubset

    subsets = KSubset(K, 2)
    loss_fn = QuadraticLoss(B, (K,), seed=6)
    scores = _scores()
    x = scores.clone().requires_grad_(True)
    space = subsets.enumerate().to(torch.float64)
    w = x.exp()
    probs = torch.stack([sum(w[:, i] / w.sum(-1) * w[:, j] / (w.sum(-1) - w[:, i])
                             for i, j in itertools.permutations(row.nonzero().flatten().tolist()))
                         for row in space], dim=-1)  # (B, N)
    table = loss_table(loss_fn, space, B).detach()
    (want,) = torch.autograd.grad((probs * table).sum(-1).mean(), x)
    for est in [PerturbationScoreFunction(subsets), SSTEstimator(subsets, 0.5)]:
        torch.testing.assert_close(exact_gradient(est, scores, loss_fn, subsets), want)


def test_perturb_and_map_targets_without_a_closed_form_give_no_exact_gradient():
    """A categorical under Gaussian noise and spanning trees: no closed-form probability, so no
    exact gradient (not the Gibbs one)."""
    from latentgrad.estimators import PerturbationScoreFunction, SSTEstimator

    tree = SpanningTree(3)
    cases = [(PerturbationScoreFunction(None, noise="gaussian"), None, _scores()),
             (SSTEstimator(None, 0.5, noise="gaussian"), None, _scores()),
             (PerturbationScoreFunction(tree), tree, torch.randn(B, 3, 3, dtype=torch.float64)),
             (SSTEstimator(tree, 0.5), tree, torch.randn(B, 3, 3, dtype=torch.float64))]
    for est, structure, scores in cases:
        def loss_fn(z, rows):
            return z.flatten(1).square().sum(-1)
        assert exact_gradient(est, scores, loss_fn, structure) is None, est


def test_a_categorical_with_gumbel_noise_keeps_the_softmax_target():
    from latentgrad.estimators import PerturbationScoreFunction, SSTEstimator

    scores, loss_fn = 1.5 * torch.randn(B, 2, K, dtype=torch.float64), QuadraticLoss(B, (2, K))
    want = exact_gradient(ScoreFunction(entropy_coeff=0.2), scores, loss_fn, None)
    for est in [PerturbationScoreFunction(None, entropy_coeff=0.2),
                SSTEstimator(None, 0.5, entropy_coeff=0.2)]:
        torch.testing.assert_close(exact_gradient(est, scores, loss_fn, None), want)
