"""Stochastic argmax / softmax tricks: brute force in float64."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize, stats

from latentgrad.distributions.sst import (
    StochasticArgmax,
    StochasticSoftmax,
    draw_noise,
    utility_kl,
)
from latentgrad.structures.arborescence import Arborescence
from latentgrad.structures.bitvector import BitVector
from latentgrad.structures.categorical import Categorical
from latentgrad.structures.ksubset import KSubset
from latentgrad.structures.spanning_tree import SpanningTree

F64 = torch.float64
STRUCTURES = [Categorical(5), KSubset(5, 2), BitVector(5), BitVector(5, 2)]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def gibbs_marginals(structure, scores):
    """Brute-force Gibbs marginals by enumeration."""
    z = structure.enumerate().to(scores.dtype)
    return torch.softmax(scores @ z.T, -1) @ z


def sparsemax_by_sorting(x):
    """Reference sparsemax (Martins & Astudillo 2016) by sorting, one row at a time."""
    z, _ = torch.sort(x, descending=True)
    k = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype)
    cums = z.cumsum(-1)
    support = 1 + k * z > cums
    k_star = support.sum(-1, keepdim=True)
    tau = (cums.gather(-1, k_star - 1) - 1) / k_star
    return (x - tau).clamp_min(0)


# --- the relaxation at given utilities -------------------------------------------------------


def test_categorical_entropy_sst_is_gumbel_softmax():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, generator=gen(0), dtype=F64)
    g = draw_noise(logits.shape, logits, "gumbel")
    for t in (0.1, 0.5, 2.0):
        dist = StochasticSoftmax(Categorical(6), logits, t)
        torch.testing.assert_close(dist.relax(logits + g), torch.softmax((logits + g) / t, -1))


def test_categorical_euclidean_sst_is_gumbel_sparsemax():
    logits = torch.randn(4, 6, generator=gen(1), dtype=F64)
    u = logits + draw_noise(logits.shape, logits, "gumbel")
    dist = StochasticSoftmax(Categorical(6), logits, 0.3, regularizer="euclidean")
    torch.testing.assert_close(dist.relax(u), sparsemax_by_sorting(u / 0.3))


def test_unbudgeted_bitvector_euclidean_sst_is_clip():
    """argmax_{x in [0,1]^d} <u, x> - t/2 ||x||^2 = clip(u / t, 0, 1), checked by a fine grid."""
    u = torch.randn(3, 4, generator=gen(2), dtype=F64)
    dist = StochasticSoftmax(BitVector(4), u, 0.7, regularizer="euclidean")
    x = dist.relax(u)
    grid = torch.linspace(0, 1, 10001, dtype=F64)
    objective = u.unsqueeze(-1) * grid - 0.35 * grid**2
    torch.testing.assert_close(x, grid[objective.argmax(-1)], atol=1e-4, rtol=0)


def test_ksubset_euclidean_sst_is_the_capped_simplex_projection():
    """SparseMAP on k-subsets = projection onto {0 <= x <= 1, sum x = k}: clip(u/t - tau, 0, 1)
    with tau found by bisection."""
    u = 2 * torch.randn(3, 6, generator=gen(20), dtype=F64)
    x = StochasticSoftmax(KSubset(6, 2), u, 0.5, regularizer="euclidean").relax(u)
    lo, hi = (u / 0.5).min(-1, keepdim=True).values - 1, (u / 0.5).max(-1, keepdim=True).values
    for _ in range(200):
        mid = (lo + hi) / 2
        over = ((u / 0.5 - mid).clamp(0, 1).sum(-1, keepdim=True) > 2).to(F64)
        lo, hi = over * mid + (1 - over) * lo, over * hi + (1 - over) * mid
    torch.testing.assert_close(x, (u / 0.5 - lo).clamp(0, 1), atol=1e-7, rtol=0)


def euclidean_projection_by_qp(structure, y):
    """Reference: argmin_{x in conv Z} ||x - y||^2 over the enumerated vertices Z, by SLSQP."""
    z = structure.enumerate().to(F64).reshape(-1, y.numel()).numpy()
    target = y.reshape(-1).numpy()
    n = len(z)
    result = optimize.minimize(
        lambda p: 0.5 * ((p @ z - target) ** 2).sum(),
        torch.full((n,), 1.0 / n, dtype=F64).numpy(),
        jac=lambda p: z @ (p @ z - target),
        bounds=[(0, 1)] * n,
        constraints=[{"type": "eq", "fun": lambda p: p.sum() - 1}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    return torch.tensor(result.x @ z, dtype=F64).reshape(y.shape)


@pytest.mark.parametrize("structure", [BitVector(5, 2), Arborescence(4, root=0)], ids=repr)
def test_euclidean_sst_is_the_projection_of_scaled_utilities(structure):
    shape = structure.score_shape
    u = 2 * torch.randn(2, *shape, generator=gen(21), dtype=F64)
    x = StochasticSoftmax(structure, u, 0.5, regularizer="euclidean").relax(u)
    for b in range(2):
        torch.testing.assert_close(x[b], euclidean_projection_by_qp(structure, u[b] / 0.5),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("structure", [KSubset(5, 2), BitVector(5), BitVector(5, 2)])
def test_entropy_sst_is_gibbs_marginals_of_scaled_utilities(structure):
    u = 2 * torch.randn(3, 5, generator=gen(3), dtype=F64)
    dist = StochasticSoftmax(structure, u, 0.4)
    torch.testing.assert_close(dist.relax(u), gibbs_marginals(structure, u / 0.4))


# --- samples: shapes, polytope membership, zero-temperature limit ----------------------------


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_relaxed_samples_lie_in_the_marginal_polytope(structure):
    logits = torch.randn(2, 3, 5, generator=gen(4), dtype=F64)
    for noise in ("gumbel", "gaussian"):
        dist = StochasticSoftmax(structure, logits, 0.5, noise=noise)
        x = dist.rsample((7,))
        assert x.shape == (7, 2, 3, 5)
        assert dist.batch_shape == (2, 3) and dist.event_shape == (5,)
        assert ((x >= 0) & (x <= 1)).all()
        total = x.sum(-1)
        if isinstance(structure, Categorical):
            torch.testing.assert_close(total, torch.ones_like(total))
        elif isinstance(structure, KSubset):
            torch.testing.assert_close(total, torch.full_like(total, 2.0))
        elif structure.budget is not None:
            assert (total <= structure.budget + 1e-9).all()


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_relaxation_approaches_the_hard_sample_as_temperature_goes_to_zero(structure):
    torch.manual_seed(5)
    logits = torch.randn(20, 5, dtype=F64)
    u = logits + draw_noise(logits.shape, logits, "gumbel")
    hard = structure.argmax(u)
    errors = [
        (StochasticSoftmax(structure, logits, t).relax(u) - hard).abs().max().item()
        for t in (1.0, 0.1, 1e-2, 1e-4)
    ]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-6


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_stochastic_argmax_samples_are_valid_structures(structure):
    logits = torch.randn(4, 5, generator=gen(6), dtype=F64)
    x = StochasticArgmax(structure, logits).sample((3,))
    assert x.shape == (3, 4, 5) and x.dtype == F64
    allowed = {tuple(r.tolist()) for r in structure.enumerate()}
    assert {tuple(r.tolist()) for r in x.reshape(-1, 5)} <= allowed


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_straight_through_forward_is_the_hard_sample_with_the_relaxed_gradient(structure):
    logits = torch.randn(6, 5, generator=gen(7), dtype=F64, requires_grad=True)
    v = torch.randn(6, 5, generator=gen(8), dtype=F64)
    torch.manual_seed(0)
    soft = StochasticSoftmax(structure, logits, 0.5).rsample()
    (g_soft,) = torch.autograd.grad((soft * v).sum(), logits)
    torch.manual_seed(0)
    st_dist = StochasticSoftmax(structure, logits, 0.5, straight_through=True)
    hard = st_dist.rsample()
    (g_st,) = torch.autograd.grad((hard * v).sum(), logits)
    torch.manual_seed(0)
    u = st_dist.perturb()
    torch.testing.assert_close(hard.detach(), structure.argmax(u.detach()), rtol=0, atol=0)
    torch.testing.assert_close(g_st, g_soft)
    assert torch.isfinite(g_st).all() and g_st.abs().sum() > 0


# --- gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("structure", "regularizer"),
    [
        (Categorical(4), "entropy"),
        (Categorical(4), "euclidean"),
        (KSubset(4, 2), "entropy"),
        (BitVector(4), "entropy"),
        (BitVector(4, 2), "entropy"),
        (BitVector(4), "euclidean"),
    ],
    ids=str,
)
def test_relaxation_passes_gradcheck_in_logits_and_temperature(structure, regularizer):
    logits = torch.randn(2, 4, generator=gen(9), dtype=F64, requires_grad=True)
    temperature = torch.tensor([0.7, 1.3], dtype=F64, requires_grad=True)
    noise = draw_noise(logits.shape, logits, "gumbel")

    def relaxed(theta, t):
        dist = StochasticSoftmax(structure, theta, t, regularizer=regularizer)
        return dist.relax(theta + noise)

    assert torch.autograd.gradcheck(relaxed, (logits, temperature))


def test_ksubset_relaxation_backward_is_the_scaled_covariance():
    """d X_t / d θ = Cov_{p(U/t)}(z) / t, against enumeration."""
    ks = KSubset(5, 2)
    u = torch.randn(5, generator=gen(10), dtype=F64)
    t = 0.6
    z = ks.enumerate().to(F64)
    p = torch.softmax(z @ u / t, -1)
    mu = p @ z
    cov = (z * p.unsqueeze(-1)).T @ z - torch.outer(mu, mu)
    jac = torch.autograd.functional.jacobian(
        lambda theta: StochasticSoftmax(ks, theta, t).relax(theta), u
    )
    torch.testing.assert_close(jac, cov / t)


# --- distributions of the hard samples -------------------------------------------------------


def test_categorical_stochastic_argmax_is_the_softmax_distribution():
    torch.manual_seed(12)
    logits = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=F64)
    dist = StochasticArgmax(Categorical(4), logits)
    freq = dist.sample((40000,)).mean(0)
    p = torch.softmax(logits, -1)
    assert (freq - p).abs().max() < 4 * math.sqrt(0.25 / 40000)
    torch.testing.assert_close(dist.log_prob(torch.eye(4, dtype=F64)), p.log())


@pytest.mark.parametrize("noise", ["gumbel", "gaussian"])
def test_bitvector_stochastic_argmax_log_prob_matches_noise_cdf(noise):
    logits = torch.tensor([[-120.0, -6.0, -0.3, 0.0, 1.5, 4.0]], dtype=F64)
    torch.manual_seed(15)
    dist = StochasticArgmax(BitVector(6), logits, noise=noise)
    law = stats.gumbel_r if noise == "gumbel" else stats.norm
    log_on = torch.tensor(law.logsf(-logits.numpy()), dtype=F64)  # P(N > -θ)
    log_off = torch.tensor(law.logcdf(-logits.numpy()), dtype=F64)
    p_on = log_on.exp()
    off = torch.zeros_like(logits)
    torch.testing.assert_close(dist.log_prob(off), log_off.sum(-1), rtol=1e-9, atol=0)
    one_on = torch.eye(6, dtype=F64).unsqueeze(1)  # (6, 1, 6): bit i alone
    log_ratio = dist.log_prob(one_on).squeeze(-1) - dist.log_prob(off)
    torch.testing.assert_close(log_ratio, (log_on - log_off)[0], rtol=1e-9, atol=1e-9)
    z = BitVector(6).enumerate().to(F64)
    total = torch.logsumexp(dist.log_prob(z), 0)
    torch.testing.assert_close(total, torch.zeros_like(total))
    freq = dist.sample((20000,)).mean(0)
    assert (freq - p_on).abs().max() < 4 * math.sqrt(0.25 / 20000)



@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gaussian_bitvector_log_prob_in_half_precision_is_the_float32_one(dtype):
    """log Φ has no half-precision torch kernel; the log-probability and its gradient come back
    in the logits' dtype, from the float32 computation."""
    logits = torch.tensor([[-3.0, -0.5, 0.0, 1.0, 2.5]], dtype=dtype, requires_grad=True)
    z = torch.tensor([[0.0, 1.0, 0.0, 1.0, 1.0]], dtype=dtype)
    value = StochasticArgmax(BitVector(5), logits, noise="gaussian").log_prob(z)
    (grad,) = torch.autograd.grad(value.sum(), logits)
    assert value.dtype == grad.dtype == dtype
    want = StochasticArgmax(BitVector(5), logits.detach().float(), noise="gaussian").log_prob(
        z.float())
    torch.testing.assert_close(value.float(), want, rtol=4 * torch.finfo(dtype).eps, atol=0)

def test_categorical_log_prob_scores_a_value_broadcast_against_the_batch():
    """``log_prob(value)`` has shape ``(*sample, *batch)`` however much of the batch ``value``
    spells out: one one-hot ``(K,)`` or ``(1, 1, K)`` is scored under every batch element, as
    its expansion to the batch is. The gather took its shape from ``value`` (every row scored
    under the first batch element) or failed inside torch."""
    logits = torch.tensor([[[2.0, 0.0, -1.0]], [[-3.0, 5.0, 0.0]]], dtype=F64)  # batch (2, 1)
    dist = StochasticArgmax(Categorical(3), logits)
    value = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    want = logits.log_softmax(-1)[..., 1]  # log softmax(θ)_1 per batch element, (2, 1)
    for spelled in (value, value.view(1, 1, 3), value.expand(2, 1, 3)):
        torch.testing.assert_close(dist.log_prob(spelled), want)
    samples = value.expand(4, 1, 1, 3)  # a sample dimension in front of a broadcast batch
    torch.testing.assert_close(dist.log_prob(samples), want.expand(4, 2, 1))


def test_gumbel_bitvector_log_prob_gradient_is_finite_where_exp_logits_overflows():
    """From θ ≈ 88.7, e^θ overflows float32; log P(bit on) = log(1 - exp(-e^θ)) is then 0 with
    gradient e^θ exp(-e^θ) / (1 - exp(-e^θ)) = 0, but the backward through the branches not
    taken gave NaN. Value and gradient equal the float64 closed form (e^θ finite there), bits
    on at θ = 100, 300, -1, -7 and off at 0."""
    theta = torch.tensor([100.0, 300.0, 0.0, -1.0, -7.0], requires_grad=True)
    on = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    got = StochasticArgmax(BitVector(5), theta).log_prob(on)
    (grad,) = torch.autograd.grad(got, theta)
    theta64 = theta.detach().double().requires_grad_()
    x = theta64.exp()
    want = torch.where(on.bool(), torch.log(-torch.expm1(-x)), -x).sum()
    (want_grad,) = torch.autograd.grad(want, theta64)
    assert torch.isfinite(want_grad).all()
    eps = torch.finfo(torch.float32).eps  # a few roundings per term, 5 terms
    torch.testing.assert_close(got.double(), want, rtol=16 * eps, atol=0)
    torch.testing.assert_close(grad.double(), want_grad, rtol=16 * eps, atol=0)


@pytest.mark.parametrize("draw", [
    lambda: StochasticArgmax(Categorical(3), torch.zeros(2, 3)).sample,
    lambda: StochasticSoftmax(Categorical(3), torch.zeros(2, 3), 0.5).sample,
    lambda: StochasticSoftmax(BitVector(3), torch.zeros(2, 3), 0.5).rsample,
], ids=["argmax.sample", "softmax.sample", "softmax.rsample"])
def test_sampling_names_a_sample_shape_that_is_not_a_sequence_of_sizes(draw):
    """``sample(5)`` failed with "'int' object is not iterable" and ``sample((-1,))`` inside
    torch; like every latentgrad distribution, the error now names ``sample_shape``."""
    for bad, error in ((5, TypeError), ((2.0,), TypeError), ((-1,), ValueError)):
        with pytest.raises(error, match="sample_shape"):
            draw()(bad)
    assert draw()([4]).shape == (4, 2, 3)


def test_ksubset_gumbel_argmax_is_sampling_without_replacement_not_gibbs():
    """SMT on k-subsets with Gumbel noise = Gumbel-top-k, by enumeration of
    the draw orders."""
    torch.manual_seed(13)
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5], dtype=F64)
    p = torch.softmax(logits, -1)
    exact = {}
    for i, j in itertools.permutations(range(4), 2):
        exact[frozenset((i, j))] = exact.get(frozenset((i, j)), 0.0) + float(
            p[i] * p[j] / (1 - p[i])
        )
    x = StochasticArgmax(KSubset(4, 2), logits).sample((40000,))
    for subset, prob in exact.items():
        idx = sorted(subset)
        freq = (x[:, idx].sum(-1) == 2).to(F64).mean().item()
        assert abs(freq - prob) < 4 * math.sqrt(0.25 / 40000)
    gibbs = torch.softmax(torch.tensor([float(logits[sorted(s)].sum()) for s in exact]), 0)
    assert max(abs(g - e) for g, e in zip(gibbs.tolist(), exact.values())) > 0.02


def _without_replacement_by_orders(logits, subset):
    """P(the top-k set is ``subset``): the sum over its draw orders of the sequential softmax
    probabilities, float64 (brute force)."""
    w = logits.exp()
    total = 0.0
    for order in itertools.permutations(subset):
        left, prob = w.sum(), 1.0
        for i in order:
            prob *= float(w[i] / left)
            left = left - w[i]
        total += prob
    return total


@pytest.mark.parametrize("n,k", [(4, 2), (6, 3), (5, 5), (5, 0), (6, 1)])
def test_ksubset_gumbel_log_prob_is_sampling_without_replacement(n, k):
    """Every k-subset's probability equals the sum over its draw orders; they sum to 1."""
    logits = 1.5 * torch.randn(2, n, generator=gen(n * 10 + k), dtype=F64)
    dist = StochasticArgmax(KSubset(n, k), logits)
    z = KSubset(n, k).enumerate().to(F64).unsqueeze(1)  # (N, 1, n)
    got = dist.log_prob(z)  # (N, 2)
    for b in range(2):
        want = [_without_replacement_by_orders(logits[b], row.nonzero().flatten().tolist())
                for row in z[:, 0]]
        torch.testing.assert_close(got[:, b].exp(), torch.tensor(want, dtype=F64),
                                   rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.logsumexp(got, 0), torch.zeros(2, dtype=F64))


def test_ksubset_gumbel_log_prob_is_stable_and_has_finite_gradients_at_extremes():
    """Scores far apart (a probability of about e^-800) and excluded (-inf) items: the log
    domain keeps the value exact and every gradient finite; the gradient matches gradcheck."""
    logits = torch.tensor([400.0, 0.0, -3.0, float("-inf"), 1.0], dtype=F64)
    dist = StochasticArgmax(KSubset(5, 2), logits)
    rare = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0], dtype=F64)
    # both draw orders pass item 0 twice: e^0 e^-3 / (e^400)^2 each, to 1e-170 relative
    want = math.log(2.0) - 3.0 - 800.0
    torch.testing.assert_close(dist.log_prob(rare), torch.tensor(want, dtype=F64),
                               rtol=1e-9, atol=0)
    everything = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0], dtype=F64)  # all the drawable items
    x = logits.clone().requires_grad_(True)
    value = StochasticArgmax(KSubset(5, 4), x).log_prob(everything)
    assert abs(value.item()) < 1e-15  # certain: log 1
    (g,) = torch.autograd.grad(value, x)
    assert torch.isfinite(g).all()
    finite = torch.randn(3, 5, generator=gen(9), dtype=F64, requires_grad=True)
    three = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=F64)
    torch.autograd.gradcheck(
        lambda t: StochasticArgmax(KSubset(5, 3), t).log_prob(three), finite)


def test_log_prob_raises_where_there_is_no_closed_form():
    logits = torch.zeros(3, 4)
    with pytest.raises(NotImplementedError, match="no closed form"):
        StochasticArgmax(KSubset(4, 2), logits, noise="gaussian").log_prob(
            torch.tensor([1.0, 1.0, 0.0, 0.0]))
    with pytest.raises(NotImplementedError, match="no closed form"):
        StochasticArgmax(SpanningTree(3), torch.zeros(3, 3)).log_prob(
            SpanningTree(3).enumerate()[0])
    with pytest.raises(NotImplementedError, match="Concrete"):
        StochasticSoftmax(KSubset(4, 2), logits, 1.0).log_prob(torch.full((4,), 0.5))


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_categorical_sst_log_prob_equals_torchs_relaxed_one_hot(k, temperature):
    """Against torch.distributions.RelaxedOneHotCategorical at its own draws (a wrong
    temperature would still give a normalised density)."""
    gen = torch.Generator().manual_seed(k)
    logits = torch.randn(4, k, generator=gen, dtype=F64)
    reference = torch.distributions.RelaxedOneHotCategorical(
        torch.tensor(temperature, dtype=F64), logits=logits)
    y = reference.sample((6,))
    dist = StochasticSoftmax(Categorical(k), logits, temperature)
    torch.testing.assert_close(dist.log_prob(y), reference.log_prob(y), rtol=1e-10, atol=1e-10)


def test_categorical_sst_log_prob_is_the_concrete_density():
    """Normalised on the 2-simplex: integrate exp(log_prob) over y_1 in (0, 1)."""
    logits = torch.tensor([0.3, -0.4], dtype=F64)
    dist = StochasticSoftmax(Categorical(2), logits, 0.6)

    def density(y1):
        y = torch.tensor([y1, 1 - y1], dtype=F64)
        return dist.log_prob(y).exp().item()

    total, _ = integrate.quad(density, 0, 1, limit=200)
    assert abs(total - 1) < 1e-6


@pytest.mark.parametrize(
    ("dtype", "tau"),
    [(torch.float16, 0.5), (torch.bfloat16, 0.01), (torch.float32, 0.1), (F64, 0.01), (F64, 1e-4)],
)
def test_concrete_sst_draws_stay_in_the_open_simplex_where_log_prob_scores_them(dtype, tau):
    """softmax(U / t) underflowed to exact zeros at low temperature (float32 t = 0.1: 1 draw in
    1e4, float64 t = 0.01: 35, half precision at t = 0.5): log_prob refused the SST's own draws
    (NaN without validation). Draws are raised to the dtype's tiny, in the open simplex."""
    torch.manual_seed(0)
    logits = torch.tensor([0.3, -0.2, 0.1, 2.0, -3.0], dtype=dtype, requires_grad=True)
    dist = StochasticSoftmax(Categorical(5), logits, tau, validate_args=True)
    y = dist.rsample((10_000,))
    assert y.dtype == dtype
    assert bool((y > 0).all())
    assert bool(((y.double().sum(-1) - 1).abs() <= 5 * torch.finfo(dtype).eps).all())
    log_p = dist.log_prob(y)
    assert bool(torch.isfinite(log_p).all())
    (y[..., 0].float().sum() + log_p.float().sum()).backward()
    assert bool(torch.isfinite(logits.grad).all())


# --- utility KL and noise -------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(theta=st.floats(-3, 3), prior=st.floats(-2, 2))
def test_gumbel_utility_kl_matches_quadrature(theta, prior):
    q, p = stats.gumbel_r(loc=theta), stats.gumbel_r(loc=prior)
    ref, _ = integrate.quad(lambda u: q.pdf(u) * (q.logpdf(u) - p.logpdf(u)), -30, 40, limit=200)
    kl = utility_kl(Categorical(1), torch.tensor([theta], dtype=F64), prior, "gumbel")
    assert abs(kl.item() - ref) < 1e-7


def test_utility_kl_counts_each_drawn_utility_once():
    logits = torch.tensor([[0.5, float("-inf"), -1.0]], dtype=F64)
    dist = StochasticArgmax(KSubset(3, 1), logits)
    expected = (0.5 + math.exp(-0.5) - 1) + (-1.0 + math.exp(1.0) - 1)
    torch.testing.assert_close(dist.utility_kl(), torch.tensor([expected], dtype=F64))
    gauss = StochasticSoftmax(KSubset(3, 1), logits, 1.0, noise="gaussian")
    torch.testing.assert_close(gauss.utility_kl(0.5), torch.tensor([0.0 + 1.5**2 / 2], dtype=F64))


def test_gumbel_noise_is_finite_with_the_right_mean_in_float32():
    torch.manual_seed(14)
    g = draw_noise(torch.Size([200000]), torch.zeros(1), "gumbel")
    assert g.dtype == torch.float32 and torch.isfinite(g).all()
    se = math.pi / math.sqrt(6) / math.sqrt(g.numel())  # the Gumbel's standard deviation is π/√6
    assert abs(g.mean().item() - 0.5772156649) <= 5 * se


# --- distribution API -----------------------------------------------------------------------


def test_expand_and_temperature_broadcasting():
    logits = torch.randn(3, 4, generator=gen(11))
    dist = StochasticSoftmax(KSubset(4, 2), logits, torch.tensor([0.5, 1.0, 2.0]))
    big = dist.expand((2, 3))
    assert big.batch_shape == (2, 3) and big.event_shape == (4,)
    assert big.temperature.shape == (2, 3) and big.rsample((5,)).shape == (5, 2, 3, 4)
    smt = StochasticArgmax(KSubset(4, 2), logits).expand((2, 3))
    assert smt.sample().shape == (2, 3, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"logits": torch.tensor([[0.0, float("nan"), 1.0, 0.0]])}, ValueError, "NaN"),
        ({"logits": torch.zeros(2, 5)}, ValueError, "trailing shape"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"temperature": torch.ones(3)}, ValueError, "broadcast"),
        ({"temperature": "hot"}, TypeError, "temperature"),
        ({"noise": "uniform"}, ValueError, "noise"),
        ({"regularizer": "l1"}, ValueError, "regularizer"),
        ({"structure": "ksubset"}, TypeError, "structure"),
        ({"straight_through": 1}, TypeError, "straight_through"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    args = {"structure": KSubset(4, 2), "logits": torch.zeros(2, 4), "temperature": 1.0}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        StochasticSoftmax(**args)


# --- trees ---------------------------------------------------------

TREES = [SpanningTree(4), Arborescence(4, root=0), Arborescence(4)]


def tree_logits(structure, *batch, seed=16):
    theta = torch.randn(*batch, 4, 4, generator=gen(seed), dtype=F64)
    return (theta + theta.mT) / 2 if isinstance(structure, SpanningTree) else theta


def tree_size(structure, x):
    """Number of edges of a (relaxed) tree: n - 1 (single-root: n - 1 arcs + the root's child)."""
    if isinstance(structure, SpanningTree):
        return x.triu(1).sum((-2, -1))
    return x.sum((-2, -1))


@pytest.mark.parametrize("structure", TREES, ids=repr)
def test_tree_relaxation_is_batched_gibbs_marginals_in_the_polytope(structure):
    torch.manual_seed(17)
    logits = tree_logits(structure, 2, 3)
    dist = StochasticSoftmax(structure, logits, 0.5)
    u = dist.perturb((5,))
    x = dist.relax(u)
    assert x.shape == (5, 2, 3, 4, 4) and ((x >= -1e-12) & (x <= 1 + 1e-12)).all()
    expected = 3.0 if structure.__class__ is SpanningTree or structure.root is not None else 4.0
    torch.testing.assert_close(tree_size(structure, x), torch.full((5, 2, 3), expected, dtype=F64))
    z = structure.enumerate().to(F64)
    flat_u = u.reshape(-1, 4, 4) / 0.5
    brute = torch.softmax(structure.score(flat_u.unsqueeze(1), z), -1) @ z.reshape(len(z), 16)
    torch.testing.assert_close(x.reshape(-1, 16), brute)


@pytest.mark.parametrize("structure", TREES, ids=repr)
def test_tree_relaxation_approaches_the_smt_sample_and_st_is_hard(structure):
    torch.manual_seed(18)
    logits = tree_logits(structure, 6)
    dist = StochasticSoftmax(structure, logits, 1e-4)
    u = dist.perturb()
    torch.testing.assert_close(dist.relax(u), structure.argmax(u), atol=1e-6, rtol=0)
    hard = StochasticSoftmax(structure, logits.requires_grad_(True), 0.5, straight_through=True)
    x = hard.rsample()
    allowed = {tuple(r.tolist()) for r in structure.enumerate().reshape(-1, 16)}
    assert {tuple(r.tolist()) for r in x.detach().reshape(-1, 16)} <= allowed
    (grad,) = torch.autograd.grad((x * torch.randn_like(x)).sum(), logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_spanning_tree_noise_is_one_draw_per_undirected_edge():
    tree = SpanningTree(5)
    logits = torch.zeros(3, 5, 5, dtype=F64)
    dist = StochasticArgmax(tree, logits)
    u = dist.perturb((4,))
    torch.testing.assert_close(u, u.mT)
    assert (u.diagonal(dim1=-2, dim2=-1) == 0).all()
    assert len(u.triu(1).flatten().unique()) == 4 * 3 * 10 + 1  # 10 edges each, plus zeros
    logits = torch.full((5, 5), 0.7, dtype=F64)
    expected = torch.tensor(10 * (0.7 + math.exp(-0.7) - 1), dtype=F64)
    torch.testing.assert_close(StochasticArgmax(tree, logits).utility_kl(), expected)


def test_rooted_arborescence_draws_no_utility_for_ignored_arcs():
    arb = Arborescence(4, root=1)
    logits = torch.full((4, 4), 0.3, dtype=F64)
    u = StochasticArgmax(arb, logits).perturb()
    assert (u.diagonal() == 0.3).all() and (u[:, 1] == 0.3).all()
    expected = torch.tensor(9 * (0.3 + math.exp(-0.3) - 1), dtype=F64)  # 12 arcs, 3 into the root
    torch.testing.assert_close(StochasticArgmax(arb, logits).utility_kl(), expected)


def test_spanning_tree_relaxation_passes_gradcheck():
    tree = SpanningTree(4)
    torch.manual_seed(19)
    theta = tree_logits(tree, 2).requires_grad_(True)
    noise = StochasticArgmax(tree, theta.detach()).perturb() - theta.detach()

    def relaxed(t):
        sym = (t + t.mT) / 2
        return StochasticSoftmax(tree, sym, 0.8).relax(sym + noise)

    assert torch.autograd.gradcheck(relaxed, (theta,))


def test_stochastic_argmax_log_prob_takes_structures_only():
    """A non-one-hot value got the log-probability of its argmax index (summing to 1.6 over all
    0/1 vectors); now it is refused, as is a value whose batch shape does not broadcast."""
    d = StochasticArgmax(Categorical(3), torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(d.log_prob(torch.tensor([0.0, 0.0, 1.0])), torch.tensor(2.0) -
                               torch.tensor([0.0, 1.0, 2.0]).logsumexp(-1))  # fmt: skip
    for value in ([1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]):
        with pytest.raises(ValueError, match=r"value must hold structures of Categorical\(k=3\)"):
            d.log_prob(torch.tensor(value))
    assert not d.support.check(torch.tensor([1.0, 1.0, 0.0]))
    batched = StochasticArgmax(Categorical(3), torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"value of shape \(3, 3\) does not broadcast"):
        batched.log_prob(torch.eye(3))


def test_the_instances_validate_args_decides_over_the_global_switch():
    from latentgrad import validate_args

    nan_logits = torch.tensor([float("nan"), 0.0, 1.0])
    off_simplex = torch.tensor([0.5, 0.5, 0.5])
    with validate_args(False):
        with pytest.raises(ValueError, match="NaN"):
            StochasticArgmax(Categorical(3), nan_logits, validate_args=True)
        with pytest.raises(ValueError, match="NaN"):
            StochasticSoftmax(Categorical(3), nan_logits, 0.5, validate_args=True)
        checked = StochasticSoftmax(Categorical(3), torch.zeros(3), 0.5, validate_args=True)
        with pytest.raises(ValueError, match="simplex"):
            checked.log_prob(off_simplex)
    unchecked = StochasticSoftmax(Categorical(3), torch.zeros(3), 0.5, validate_args=False)
    assert unchecked.log_prob(off_simplex).shape == ()


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((KSubset(4, 2), torch.zeros(2, 4), 0.0, "gaussain"), ValueError, "noise"),  # was Gumbel
        ((KSubset(4, 2), torch.tensor([[float("nan"), 0.0, 0.0, 0.0]]), 0.0, "gumbel"),
         ValueError, "logits"),  # was 0
        ((KSubset(4, 2), torch.zeros(2, 5), 0.0, "gumbel"), ValueError, "logits"),  # torch's
        ((None, torch.zeros(2, 4), 0.0, "gumbel"), TypeError, "structure"),  # AttributeError
        ((KSubset(4, 2), torch.zeros(2, 4), torch.zeros(3), "gumbel"), ValueError,
         "prior_logits of shape"),  # torch's size mismatch
        ((KSubset(4, 2), torch.zeros(2, 4), float("nan"), "gumbel"), ValueError,
         "prior_logits"),  # a NaN KL
        ((KSubset(4, 2), torch.zeros(2, 4), torch.tensor([0.0, float("nan"), 0.0, 0.0]),
          "gumbel"), ValueError, "prior_logits"),  # a NaN KL
        ((KSubset(4, 2), torch.zeros(2, 4), "0", "gumbel"), TypeError, "prior_logits"),
    ],
)
def test_utility_kl_refuses_bad_arguments_naming_them(args, error, match):
    """``utility_kl`` validates its arguments: an unknown noise, NaN or mis-shaped logits and a
    missing structure raise an error naming the argument (before: a silent Gumbel formula, a KL
    of 0, torch's size mismatch, an AttributeError)."""
    with pytest.raises(error, match=match):
        utility_kl(*args)


def test_missing_closed_forms_say_so_and_name_the_alternative():
    """torch's base class raised a bare NotImplementedError for mean, variance and entropy."""
    from latentgrad.distributions import IGR

    igr = IGR(torch.zeros(2, 3), torch.ones(2, 3), 0.5)
    smt = StochasticArgmax(BitVector(3), torch.zeros(3))
    with pytest.raises(NotImplementedError, match="IGR has no closed-form entropy; use entropy_mc"):
        igr.entropy()
    for dist in (igr, smt):
        name = type(dist).__name__
        with pytest.raises(NotImplementedError, match=f"{name} has no closed-form mean"):
            dist.mean  # noqa: B018
        with pytest.raises(NotImplementedError, match=f"{name} has no closed-form variance"):
            dist.stddev  # noqa: B018
    with pytest.raises(NotImplementedError, match="StochasticArgmax has no closed-form entropy"):
        smt.entropy()
