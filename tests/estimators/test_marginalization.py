"""Exact marginalization estimators against brute-force enumeration (float64)."""

from __future__ import annotations

import pytest
import torch
from _estimator_toys import QuadraticLoss, exact_objective, loss_table
from hypothesis import given, settings
from hypothesis import strategies as st

from latentgrad.estimators.marginalization import (
    SoftmaxMarginalization,
    SparseMAPMarginalization,
    SparsemaxMarginalization,
    TopKSparsemaxMarginalization,
)
from latentgrad.polytope.sparsemap import sparsemap
from latentgrad.structures.bitvector import BitVector
from latentgrad.structures.ksubset import KSubset

B, K = 6, 5


def _scores(seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(B, K, generator=g, dtype=torch.float64)).requires_grad_(True)


def _compare_with_enumeration(
    est, probs_fn, scores, entropy_coeff, space=None, seed=1, support_is_nonzero=True
):
    """Value, expected loss and gradients (scores and decoder) equal the objective enumerated over
    the structures ``space`` (rows; default the K one-hots), with a QuadraticLoss of ``seed``."""
    space = torch.eye(K, dtype=torch.float64) if space is None else space
    event_shape = tuple(space.shape[1:])
    loss_fn = QuadraticLoss(B, event_shape, seed=seed)
    out = est(scores, loss_fn)
    g_scores, g_w = torch.autograd.grad(out.loss, (scores, loss_fn.w))

    ref_fn = QuadraticLoss(B, event_shape, seed=seed)
    probs = probs_fn(scores)
    table = loss_table(ref_fn, space, B)
    ref = exact_objective(probs, table, entropy_coeff)
    r_scores, r_w = torch.autograd.grad(ref, (scores, ref_fn.w))

    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(out.expected_loss, (probs * table).sum(-1).detach())
    torch.testing.assert_close(g_scores, r_scores)
    torch.testing.assert_close(g_w, r_w)
    if support_is_nonzero:
        torch.testing.assert_close(out.support_size, (probs > 0).sum(-1))
    return out


@pytest.mark.parametrize("entropy_coeff", [0.0, 0.3])
def test_softmax_marginalization_matches_enumeration(entropy_coeff):
    est = SoftmaxMarginalization(entropy_coeff=entropy_coeff)
    out = _compare_with_enumeration(est, lambda s: s.softmax(-1), _scores(), entropy_coeff)
    assert (out.support_size == K).all()
    p = _scores().detach().softmax(-1)
    torch.testing.assert_close(out.entropy, -(p * p.log()).sum(-1))


def test_softmax_marginalization_gives_minus_inf_categories_weight_zero():
    scores = _scores().detach()
    scores[:, 0] = float("-inf")
    scores.requires_grad_(True)
    est = SoftmaxMarginalization(0.5)
    out = _compare_with_enumeration(est, lambda s: s.softmax(-1), scores, 0.5, None, 1, False)
    assert (out.support_size == K).all()  # fixed shapes: every category is evaluated
    assert (out.weights[out.latents.argmax(-1) == 0] == 0).all()
    assert torch.isfinite(out.entropy).all()


def _sparsemax_by_bisection(scores: torch.Tensor) -> torch.Tensor:
    """Reference sparsemax: bisection on tau in sum_i [x_i - tau]_+ = 1, then p = [x - tau]_+."""
    lo = scores.amax(-1, keepdim=True) - 1.0
    hi = scores.amax(-1, keepdim=True)
    for _ in range(200):
        mid = (lo + hi) / 2
        over = (scores - mid).clamp_min(0).sum(-1, keepdim=True) > 1
        lo, hi = torch.where(over, mid, lo), torch.where(over, hi, mid)
    return (scores - (lo + hi) / 2).clamp_min(0)


def _entmax15_by_bisection(scores: torch.Tensor) -> torch.Tensor:
    """Reference entmax-1.5: p = [x/2 - tau]_+^2 with tau found by bisection on sum p = 1."""
    z = scores / 2
    lo = z.amax(-1, keepdim=True) - 1.0
    hi = z.amax(-1, keepdim=True)
    for _ in range(200):
        mid = (lo + hi) / 2
        over = ((z - mid).clamp_min(0) ** 2).sum(-1, keepdim=True) > 1
        lo, hi = torch.where(over, mid, lo), torch.where(over, hi, mid)
    return (z - (lo + hi) / 2).clamp_min(0) ** 2


@pytest.mark.parametrize("entropy_coeff", [0.0, 0.4])
def test_sparsemax_marginalization_matches_enumeration(entropy_coeff):
    scores = _scores(seed=2)
    ref = _sparsemax_by_bisection(scores.detach())
    assert ((ref > 0).sum(-1) < K).any(), "toy scores must give sparse supports"

    def probs(s):
        support = ref > 0
        n = support.sum(-1, keepdim=True)
        mean = torch.where(support, s, 0).sum(-1, keepdim=True) / n
        return torch.where(support, s - mean + 1 / n, 0)

    torch.testing.assert_close(probs(scores.detach()), ref)
    est = SparsemaxMarginalization("sparsemax", entropy_coeff)
    out = _compare_with_enumeration(est, probs, scores, entropy_coeff)
    loss_fn = QuadraticLoss(B, (K,), seed=1)
    est(scores, loss_fn)
    assert loss_fn.calls == [int((ref > 0).sum())]
    assert torch.isfinite(out.entropy).all()


@pytest.mark.parametrize("entropy_coeff", [0.0, 0.4])
def test_entmax15_marginalization_matches_enumeration(entropy_coeff):
    scores = _scores(seed=4, scale=1.5)
    ref = _entmax15_by_bisection(scores.detach())

    def probs(s):
        """entmax-1.5 on the fixed support: sqrt(p) = s/2 - tau(s), sum p = 1 (autograd of the
        closed form tau for the fixed support, the smaller root of the quadratic)."""
        support = ref > 0
        n = support.sum(-1, keepdim=True)
        z = torch.where(support, s / 2, 0)
        mean = z.sum(-1, keepdim=True) / n
        sq = (z**2).sum(-1, keepdim=True) / n
        tau = mean - torch.sqrt((1 - n * (sq - mean**2)) / n)
        return torch.where(support, (s / 2 - tau).clamp_min(0) ** 2, 0)

    torch.testing.assert_close(probs(scores.detach()), ref)
    est = SparsemaxMarginalization("entmax15", entropy_coeff)
    _compare_with_enumeration(est, probs, scores, entropy_coeff)


@pytest.mark.parametrize("normalizer", ["sparsemax", "entmax15"])
@pytest.mark.parametrize(("value", "match"), [
    (float("nan"), "scores contains NaN"), (float("inf"), "scores contains \\+inf"),
    (float("-inf"), "scores has a row that is entirely -inf along dim=-1")])
def test_sparse_marginalization_errors_name_the_scores(normalizer, value, match):
    """The mapping's own check named its argument "x" and the flattened "dim=1"."""
    scores = torch.randn(2, 3)
    scores[1] = value
    with pytest.raises(ValueError, match=match):
        SparsemaxMarginalization(normalizer=normalizer)(scores, lambda z, rows: z.sum(-1))


def test_sparsemax_marginalization_rejects_unknown_normalizer():
    with pytest.raises(ValueError, match="normalizer"):
        SparsemaxMarginalization("softmax")


def _structure_scores(space: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``s_b(z) = <theta_b, z>`` for every enumerated z: (B, N)."""
    return scores @ space.T


def _sparsemax_over_space(space, scores):
    """Differentiable reference: sparsemax of all structure scores on its (fixed) support."""
    s = _structure_scores(space, scores)
    ref = _sparsemax_by_bisection(s.detach())
    support = ref > 0
    n = support.sum(-1, keepdim=True)
    mean = torch.where(support, s, 0).sum(-1, keepdim=True) / n
    return torch.where(support, s - mean + 1 / n, 0)


@pytest.mark.parametrize(
    ("structure", "k"), [(KSubset(5, 2), 4), (BitVector(4), 5), (BitVector(4, budget=2), 3)]
)
def test_topk_sparsemax_with_small_support_equals_sparsemax_over_all_structures(structure, k):
    """Top-k sparsemax certificate (Correia et al. 2020): |supp p| < k => exact sparsemax over
    every structure."""
    space = structure.enumerate().to(torch.float64)
    g = torch.Generator().manual_seed(7)
    scores = (3 * torch.randn(B, structure.score_shape[0], generator=g, dtype=torch.float64))
    scores.requires_grad_(True)
    est = TopKSparsemaxMarginalization(structure, k, entropy_coeff=0.2)
    out = _compare_with_enumeration(
        est, lambda s: _sparsemax_over_space(space, s), scores, 0.2, space=space, seed=8
    )
    assert (out.support_size < k).all(), "toy must stay in the certified regime"
    assert out.logs["full_support_fraction"] == 0.0


def _sparsemax_over_best(space, scores, k):
    """Differentiable reference of a full top-k support: sparsemax of the k best structures'
    scores (every other structure gets 0), on its (fixed) support."""
    s = _structure_scores(space, scores)
    best = s.detach().topk(k, dim=-1).indices
    kept = torch.full_like(s, float("-inf")).scatter(-1, best, s.gather(-1, best))
    ref = _sparsemax_by_bisection(kept.detach())
    support = ref > 0
    n = support.sum(-1, keepdim=True)
    mean = torch.where(support, s, 0).sum(-1, keepdim=True) / n
    return torch.where(support, s - mean + 1 / n, 0)


@pytest.mark.parametrize(("structure", "k"), [(KSubset(5, 2), 3), (BitVector(4), 4)])
def test_topk_sparsemax_with_a_full_support_is_sparsemax_over_the_k_best(structure, k):
    """Near-tied scores fill all k slots: top-k sparsemax is then (by definition, flagged as an
    approximation) sparsemax over the k best structures only."""
    space = structure.enumerate().to(torch.float64)
    g = torch.Generator().manual_seed(9)
    scores = 0.05 * torch.randn(B, structure.score_shape[0], generator=g, dtype=torch.float64)
    scores.requires_grad_(True)
    est = TopKSparsemaxMarginalization(structure, k, entropy_coeff=0.2)
    out = _compare_with_enumeration(
        est, lambda s: _sparsemax_over_best(space, s, k), scores, 0.2, space=space, seed=10
    )
    assert (out.support_size == k).all(), "toy must fill the support"
    assert out.logs["full_support_fraction"] == 1.0


def test_topk_sparsemax_logs_full_supports():
    """k = 1 always fills the support: p = (1) on the MAP, flagged as an approximation."""
    structure = KSubset(5, 2)
    scores = torch.randn(B, 5, dtype=torch.float64)
    out = TopKSparsemaxMarginalization(structure, 1)(scores, QuadraticLoss(B, (5,)))
    assert out.logs["full_support_fraction"] == 1.0
    assert (out.support_size == 1).all()


def test_sparsemap_bitvector_linear_loss_has_the_clipped_projection_gradient():
    """For l(z) = <c, z>, E_p[l] = <c, mu*> with mu* = clip(t, 0, 1) for unbudgeted bits,
    so the value and gradient are unique even though p is not."""
    d = 5
    g = torch.Generator().manual_seed(9)
    scores = (1.5 * torch.randn(B, d, generator=g, dtype=torch.float64)).requires_grad_(True)
    c = torch.randn(B, d, generator=g, dtype=torch.float64)

    def loss_fn(z, rows):
        return (z * c[rows]).sum(-1)

    out = SparseMAPMarginalization(BitVector(d))(scores, loss_fn)
    mu = scores.detach().clamp(0, 1)
    torch.testing.assert_close(out.expected_loss, (c * mu).sum(-1))
    (grad,) = torch.autograd.grad(out.loss, scores)
    inside = (scores.detach() > 0) & (scores.detach() < 1)
    torch.testing.assert_close(grad, torch.where(inside, c, 0.0) / B)


@pytest.mark.parametrize("structure", [KSubset(5, 2), BitVector(4, budget=2)])
def test_sparsemap_linear_loss_gradient_matches_finite_differences(structure):
    """mu* is unique, so E_p[<c, z>] = <c, mu*(theta)> is a function of theta: central
    differences of the estimator's own expected loss check the active-set backward."""
    n = structure.score_shape[0]
    g = torch.Generator().manual_seed(10)
    scores = torch.randn(B, n, generator=g, dtype=torch.float64)
    c = torch.randn(B, n, generator=g, dtype=torch.float64)

    def loss_fn(z, rows):
        return (z * c[rows]).sum(-1)

    est = SparseMAPMarginalization(structure)
    x = scores.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(est(x, loss_fn).loss, x)
    eps = 1e-6
    fd = torch.zeros_like(scores)
    for i in range(n):
        e = torch.zeros(n, dtype=torch.float64)
        e[i] = eps
        up = est(scores + e, loss_fn).expected_loss
        down = est(scores - e, loss_fn).expected_loss
        fd[:, i] = (up - down) / (2 * eps) / B
    torch.testing.assert_close(grad, fd, atol=1e-6, rtol=1e-5)


def test_sparsemap_marginalization_sums_the_loss_over_the_active_set():
    structure = KSubset(5, 2)
    g = torch.Generator().manual_seed(11)
    scores = (2 * torch.randn(B, 5, generator=g, dtype=torch.float64)).requires_grad_(True)
    loss_fn = QuadraticLoss(B, (5,), seed=12)
    out = SparseMAPMarginalization(structure, entropy_coeff=0.1)(scores, loss_fn)
    res = sparsemap(scores, structure)
    assert loss_fn.calls == [int(res.support_size.sum())]
    torch.testing.assert_close(out.support_size, res.support_size)
    ref_fn = QuadraticLoss(B, (5,), seed=12)
    width = res.weights.shape[1]
    table = torch.stack([ref_fn(res.support[:, j], torch.arange(B)) for j in range(width)], 1)
    ref = exact_objective(res.weights, table, 0.1)
    torch.testing.assert_close(out.loss, ref)
    ga = torch.autograd.grad(out.loss, (scores, loss_fn.w))
    gb = torch.autograd.grad(ref, (scores, ref_fn.w))
    torch.testing.assert_close(ga, gb)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 4),
    k=st.integers(1, 7),
    scale=st.floats(0.1, 20.0),
    n_masked=st.integers(0, 6),
    normalizer=st.sampled_from(["sparsemax", "entmax15"]),
    seed=st.integers(0, 2**16),
)
def test_sparse_marginalization_evaluates_exactly_the_support(
    batch, k, scale, n_masked, normalizer, seed
):
    """Property: the single loss call holds exactly the pairs with p > 0, -inf scores included;
    expected loss = dense sum_z p(z) l(z); entropy finite and in [0, log |supp|]."""
    g = torch.Generator().manual_seed(seed)
    scores = scale * torch.randn(batch, k, generator=g, dtype=torch.float64)
    scores[:, : min(n_masked, k - 1)] = float("-inf")
    est = SparsemaxMarginalization(normalizer, entropy_coeff=0.1)
    loss_fn = QuadraticLoss(batch, (k,), seed=seed)
    out = est(scores, loss_fn)
    p = est.normalize(scores)
    z, rows = loss_fn.last
    assert loss_fn.calls == [int((p > 0).sum())]
    torch.testing.assert_close(p[rows, z.argmax(-1)] > 0, torch.ones_like(rows, dtype=torch.bool))
    space = torch.eye(k, dtype=torch.float64)
    table = loss_table(QuadraticLoss(batch, (k,), seed=seed), space, batch)
    torch.testing.assert_close(out.expected_loss, (p * table).sum(-1).detach())
    assert torch.isfinite(out.entropy).all()
    assert (out.entropy >= -1e-12).all()
    assert (out.entropy <= out.support_size.double().log() + 1e-9).all()


@pytest.mark.parametrize("make", [lambda: SparsemaxMarginalization("sparsemax"),
                                  lambda: SparsemaxMarginalization("entmax15"),
                                  lambda: TopKSparsemaxMarginalization(BitVector(K), 4)],
                         ids=["sparsemax", "entmax15", "topk"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_huge_scores_keep_one_structure_per_example(make, dtype):
    # scores x 1e10 once gave an empty support: loss_fn called with no pairs, loss 0 (or NaN).
    scores = (_scores(seed=4).detach() * 1e10).to(dtype).requires_grad_(True)
    loss_fn = QuadraticLoss(B, (K,), seed=2)
    out = make()(scores, loss_fn)
    assert (out.support_size >= 1).all() and loss_fn.calls[0] >= B
    (grad,) = torch.autograd.grad(out.loss, scores)
    assert torch.isfinite(out.loss) and torch.isfinite(grad).all()


def test_exact_fraction_logs_the_rows_whose_solve_is_certified_optimal():
    """``logs["exact_fraction"]``: the share of examples whose solve passed the optimality test,
    0 < share < 1 when the iteration cap stops some rows (the bit-vector polytope is the box,
    so a row is optimal exactly when its marginals are clip(θ, 0, 1)), and 1 uncapped."""
    structure = BitVector(8)
    g = torch.Generator().manual_seed(0)
    theta = 0.5 + 0.6 * torch.randn(6, 8, generator=g, dtype=torch.float64)

    def loss_fn(z, rows):
        return z.sum(-1)

    out = SparseMAPMarginalization(structure, max_iter=3, solver="active_set")(theta, loss_fn)
    mu = torch.zeros_like(theta).index_add_(0, out.rows, out.weights[:, None] * out.latents)
    optimal = (mu - theta.clamp(0, 1)).abs().amax(-1) < 1e-9
    assert 0 < int(optimal.sum()) < 6
    assert float(out.logs["exact_fraction"]) == pytest.approx(float(optimal.double().mean()))
    full = SparseMAPMarginalization(structure)(theta, loss_fn)
    assert float(full.logs["exact_fraction"]) == 1.0


def test_sparsemap_marginalization_checks_its_solver_options_when_built():
    """A misspelt option or a bad value fails at construction, naming it (it failed at the
    first call, naming ``sparsemap()``); the valid ones reach the solver."""
    from latentgrad.estimators.marginalization import SparseMAPMarginalization
    from latentgrad.structures.bitvector import BitVector
    from latentgrad.structures.spanning_tree import SpanningTree

    with pytest.raises(TypeError, match=r"unexpected solver option\(s\) \['tolerance'\]"):
        SparseMAPMarginalization(BitVector(3), tolerance=1e-3)
    with pytest.raises(ValueError, match="max_iter must be an int >= 1"):
        SparseMAPMarginalization(BitVector(3), max_iter=0)
    with pytest.raises(ValueError, match="solver='threshold' needs"):
        SparseMAPMarginalization(SpanningTree(3), solver="threshold")
    est = SparseMAPMarginalization(SpanningTree(3), max_iter=1, tol=1e-6)
    out = est(torch.zeros(2, 3, 3), lambda z, rows: z.flatten(1).sum(-1))
    assert out.logs["exact_fraction"] < 1  # one iteration cannot certify a tie of 3 trees
