"""Mixed Dirichlet: direct-sum log_prob, entropy and KL vs face enumeration with scipy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import special, stats
from torch.distributions import kl_divergence

from latentgrad.distributions.faces import MaxEntropyFaces, NonEmptyFaces
from latentgrad.distributions.mixed_dirichlet import MixedDirichlet, _least_entry

D = torch.float64


def all_faces(k):
    return [np.array(f, dtype=bool) for f in itertools.product([0, 1], repeat=k) if any(f)]


def gibbs_probs(scores):
    scores = np.asarray(scores)
    logits = np.array([((2 * f - 1) * scores).sum() for f in all_faces(len(scores))])
    return np.exp(logits - special.logsumexp(logits))


def dirichlet_entropy(alpha):
    return 0.0 if len(alpha) == 1 else float(stats.dirichlet(alpha).entropy())


def dirichlet_kl(a, b):
    if len(a) == 1:
        return 0.0
    a0, b0 = a.sum(), b.sum()
    return float(special.gammaln(a0) - special.gammaln(a).sum() - special.gammaln(b0)
                 + special.gammaln(b).sum()
                 + ((a - b) * (special.digamma(a) - special.digamma(a0))).sum())


def make(k, seed, batch=()):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(*batch, k, generator=gen, dtype=D)
    alpha = 0.3 + 2 * torch.rand(*batch, k, generator=gen, dtype=D)
    return MixedDirichlet(scores, alpha)


def test_k3_masses_and_densities_integrate_to_one():
    # Integer α makes every face density a polynomial, so tensor-product Gauss–Legendre (Duffy
    # map for the triangle) is exact; non-integer α is covered by the scipy log-density test.
    dist = MixedDirichlet(torch.tensor([0.3, -0.5, 0.8], dtype=D),
                          torch.tensor([1.0, 2.0, 3.0], dtype=D))
    x, w = np.polynomial.legendre.leggauss(12)
    t, w = (x + 1) / 2, w / 2

    def integral(points, weights):
        y = torch.tensor(points, dtype=D)
        return float((torch.tensor(weights, dtype=D) * dist.log_prob(y).exp()).sum())

    total = integral(np.eye(3), np.ones(3))
    for i, j in itertools.combinations(range(3), 2):
        y = np.zeros((len(t), 3))
        y[:, i], y[:, j] = t, 1 - t
        total += integral(y, w)
    s_, u_ = np.meshgrid(t, t, indexing="ij")
    ws = np.outer(w, w) * (1 - s_)
    y = np.stack([s_, (1 - s_) * u_, (1 - s_) * (1 - u_)], -1).reshape(-1, 3)
    total += integral(y, ws.reshape(-1))
    assert abs(total - 1) < 1e-12


def test_log_prob_is_face_log_prob_plus_scipy_dirichlet_log_density():
    torch.manual_seed(0)
    dist = make(5, 1)
    y = dist.sample((50,))
    ours = dist.log_prob(y)
    scores, alpha = dist.faces.scores.numpy(), dist.concentration.numpy()
    probs = dict(zip(map(tuple, all_faces(5)), gibbs_probs(scores)))
    for row, value in zip(y.numpy(), ours):
        face = row > 0
        expected = math.log(probs[tuple(face)])
        if face.sum() > 1:
            expected += stats.dirichlet(alpha[face]).logpdf(row[face])
        assert abs(value.item() - expected) < 1e-9


@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_entropy_and_kl_match_face_enumeration(k):
    p, q = make(k, 2 * k), make(k, 2 * k + 1)
    sp, ap = p.faces.scores.numpy(), p.concentration.numpy()
    sq, aq = q.faces.scores.numpy(), q.concentration.numpy()
    pp, pq = gibbs_probs(sp), gibbs_probs(sq)
    faces = all_faces(k)
    entropy = -(pp * np.log(pp)).sum() + sum(
        w * dirichlet_entropy(ap[f]) for w, f in zip(pp, faces))
    kl = (pp * np.log(pp / pq)).sum() + sum(
        w * dirichlet_kl(ap[f], aq[f]) for w, f in zip(pp, faces))
    assert abs(p.entropy().item() - entropy) < 1e-10
    mean = sum(w * np.where(f, ap, 0) / ap[f].sum() for w, f in zip(pp, faces))
    np.testing.assert_allclose(p.mean.numpy(), mean, rtol=1e-10)
    assert abs(kl_divergence(p, q).item() - kl) < 1e-10
    assert kl_divergence(p, q) >= 0
    assert abs(kl_divergence(p, p).item()) < 1e-12


def test_entropy_and_kl_match_monte_carlo_with_log_prob():
    torch.manual_seed(3)
    p, q = make(4, 5, batch=(2,)), make(4, 6, batch=(2,))
    y = p.sample((20000,))
    neg = -p.log_prob(y)
    ratio = p.log_prob(y) - q.log_prob(y)
    n = y.shape[0]
    assert ((neg.mean(0) - p.entropy()).abs() < 4 * neg.std(0) / math.sqrt(n)).all()
    assert ((y.mean(0) - p.mean).abs() < 4 * y.std(0) / math.sqrt(n)).all()
    assert ((ratio.mean(0) - kl_divergence(p, q)).abs() < 4 * ratio.std(0) / math.sqrt(n)).all()


def test_sample_faces_follow_the_face_distribution_chi_square():
    torch.manual_seed(4)
    dist = make(3, 7)
    n = 20000
    y = dist.sample((n,))
    assert torch.allclose(y.sum(-1), torch.ones(n, dtype=D))
    faces = all_faces(3)
    support = (y > 0).numpy()
    counts = np.array([(support == f).all(-1).sum() for f in faces])
    expected = gibbs_probs(dist.faces.scores.numpy()) * n
    assert stats.chisquare(counts, expected).pvalue > 1e-3
    vertices = support.sum(-1) == 1
    assert (y.numpy()[vertices].max(-1) == 1.0).all()  # vertices are exact


@pytest.mark.parametrize("form", ["maxent", "maxent-reference"])
def test_kl_to_maxent_prior_matches_enumeration_and_maxent_density_is_constant(form):
    k = 5
    prior = MixedDirichlet(MaxEntropyFaces(k, form=form, dtype=D), torch.ones(k, dtype=D))
    p = make(k, 9, batch=(3,))
    faces = all_faces(k)
    sizes = np.array([f.sum() for f in faces])
    q_size = 1 / special.gamma(sizes)
    if form == "maxent":
        q_size = q_size * special.comb(k, sizes)
    q_face = q_size / np.array([special.comb(k, n) for n in sizes])
    q_face = q_face / q_face.sum()
    for b in range(3):
        pp = gibbs_probs(p.faces.scores[b].numpy())
        ap = p.concentration[b].numpy()
        expected = (pp * np.log(pp / q_face)).sum() + sum(
            w * dirichlet_kl(ap[f], np.ones(f.sum())) for w, f in zip(pp, faces))
        assert abs(kl_divergence(p, prior)[b].item() - expected) < 1e-10
    y = prior.sample((200,))
    log_density = prior.log_prob(y)
    if form == "maxent":  # uniform on every face with the max-entropy face pmf: constant density
        torch.testing.assert_close(log_density, log_density[:1].expand(200))
    else:
        assert log_density.std() > 0.1


def test_sampled_estimators_are_unbiased_and_run_at_k64():
    torch.manual_seed(5)
    p, q = make(6, 11, batch=(2,)), make(6, 12, batch=(2,))
    faces = p.faces.sample((20000,))
    h = p.entropy_sampled(faces)
    kl = p.kl_sampled(q, faces)
    n = faces.shape[0]  # standard errors of the face averages
    se_h = p.dirichlet_entropy(faces).std(0) / math.sqrt(n)
    se_kl = p.dirichlet_kl(q, faces).std(0) / math.sqrt(n)
    assert ((h - p.entropy()).abs() <= 5 * se_h).all()
    assert ((kl - kl_divergence(p, q)).abs() <= 5 * se_kl).all()

    big = make(64, 13, batch=(8,))
    prior = MixedDirichlet(MaxEntropyFaces(64, form="maxent-reference", dtype=D),
                           torch.ones(64, dtype=D))
    y = big.rsample((4,))
    assert y.shape == (4, 8, 64) and torch.isfinite(big.log_prob(y)).all()
    face_kl = kl_divergence(big.faces, prior.faces)
    assert face_kl.shape == (8,) and (face_kl >= 0).all()
    for value in (big.entropy_sampled(n_samples=3), big.kl_sampled(prior, n_samples=3)):
        assert value.shape == (8,) and torch.isfinite(value).all()
    with pytest.raises(ValueError, match="entropy_sampled"):
        big.entropy()
    with pytest.raises(ValueError, match="kl_sampled"):
        kl_divergence(big, prior)


def test_sampled_estimators_broadcast_batches_like_kl_divergence():
    """kl_divergence(p, q) broadcasts p's batch () with q's larger one; kl_sampled raised
    torch's "size of tensor a (4) must match ... b (2)" (faces of p's batch against q's). Drawn
    faces now come from P_F expanded to the common batch, given faces (S, *b, K) have b aligned
    to it from the right: the values with p expanded and the faces spelled out (the same
    float64 terms, up to the order of a few O(1) additions)."""
    torch.manual_seed(9)
    p, q = make(4, 14), make(4, 15, batch=(3,))
    faces = p.faces.sample((5000,))  # (S, K)
    wide = faces[:, None].expand(-1, 3, -1)
    tol = {"rtol": 64 * torch.finfo(D).eps, "atol": 64 * torch.finfo(D).eps}
    kl = p.kl_sampled(q, faces)
    assert kl.shape == kl_divergence(p, q).shape == (3,)
    torch.testing.assert_close(kl, p.expand((3,)).kl_sampled(q, wide), **tol)
    torch.testing.assert_close(q.kl_sampled(p, faces[:, None]), q.kl_sampled(p, wide), **tol)
    torch.testing.assert_close(q.entropy_sampled(faces[:, None]), q.entropy_sampled(wide), **tol)
    n = 20000
    drawn = p.kl_sampled(q, n_samples=n)
    se = p.dirichlet_kl(q, p.faces.expand((3,)).sample((n,))).std(0) / math.sqrt(n)
    assert drawn.shape == (3,) and ((drawn - kl_divergence(p, q)).abs() <= 5 * se).all()


def test_sampled_estimators_reject_bad_faces_and_sample_counts():
    """Faces with another K, a batch that does not broadcast to the distribution's, or no
    sample dim got torch-internal size errors; n_samples = 0 gave the NaN mean of no draws."""
    p, q = make(3, 16), make(3, 17, batch=(4,))
    for faces in (torch.ones(2, 4), torch.ones(2, 2, 3), torch.ones(3)):
        with pytest.raises(ValueError, match=r"faces must be \(S, \*batch, K\) with K = 3"):
            p.kl_sampled(q, faces)
        with pytest.raises(ValueError, match=r"faces must be \(S, \*batch, K\) with K = 3"):
            q.entropy_sampled(faces)
    with pytest.raises(ValueError, match="faces must have trailing shape"):
        p.dirichlet_entropy(torch.ones(2, 4))
    with pytest.raises(ValueError, match="faces of shape"):
        q.dirichlet_kl(q, torch.ones(2, 3))
    with pytest.raises(TypeError, match="faces must be a torch"):
        p.entropy_sampled([[1.0, 1.0, 1.0]])
    for n in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_samples must be a positive int"):
            p.entropy_sampled(n_samples=n)
        with pytest.raises(ValueError, match="n_samples must be a positive int"):
            p.kl_sampled(q, n_samples=n)


def test_rsample_is_pathwise_in_the_concentration():
    torch.manual_seed(6)
    alpha = torch.tensor([[0.5, 1.5, 2.0, 1.0]], dtype=D, requires_grad=True)
    dist = MixedDirichlet(torch.tensor([[2.0, 2.0, 2.0, -3.0]], dtype=D), alpha)
    y = dist.rsample((64,))
    (y[..., 0] ** 2).mean().backward()
    assert torch.isfinite(alpha.grad).all() and alpha.grad.abs().sum() > 0
    scores = torch.zeros(2, 3, dtype=D, requires_grad=True)
    h = MixedDirichlet(scores, torch.ones(2, 3, dtype=D)).entropy()
    h.sum().backward()
    assert torch.isfinite(scores.grad).all()



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rsample_at_concentrations_near_the_largest_float_is_their_proportions(dtype):
    """α up to finfo.max / 4: Gamma(α)/α = 1 within 1/√α, so the draw on a face is α_f/Σ_f α,
    with the pathwise gradient of that ratio (torch's Gamma gradient is NaN from α ≈ 3.5e75 in
    float64, and the sum of K such draws overflowed)."""
    big = torch.finfo(dtype).max / 4
    alpha = torch.tensor([[big, big / 2, big, 1e40 if dtype == D else 1e34]], dtype=dtype)
    alpha = alpha.requires_grad_()
    faces = torch.ones(1, 4, dtype=dtype)
    y = MixedDirichlet(torch.zeros(1, 4, dtype=dtype), alpha).rsample_on_faces(faces)
    want = (alpha.double() / alpha.double().sum()).to(dtype)
    torch.testing.assert_close(y.detach(), want.expand_as(y))
    (grad,) = torch.autograd.grad(y[..., 1].sum(), alpha)
    assert torch.isfinite(grad).all() and grad[0, 1] > 0 > grad[0, 0]



def test_log_density_at_large_concentrations_matches_50_digit_arithmetic():
    """α = (1, 1, 2)·1e10 on the full face at y = (¼, ¼, ½): log Dir against mpmath. The log Γ
    terms are ~2e11 and cancel to ~33; the split of _log_beta_ratio keeps the error at the
    rounding of the α_k(ψ(α_0) − ψ(α_k)) ~ 1e10 terms."""
    import mpmath

    alpha = torch.tensor([1e10, 1e10, 2e10], dtype=D)
    y = torch.tensor([0.25, 0.25, 0.5], dtype=D)
    dist = MixedDirichlet(torch.tensor([-30.0, -30.0, -30.0], dtype=D), alpha)
    got = dist.log_prob(y) - dist.faces.log_prob(torch.ones(3, dtype=D))
    with mpmath.workdps(50):
        a = [mpmath.mpf(float(x)) for x in alpha]
        want = (mpmath.loggamma(sum(a)) - sum(mpmath.loggamma(x) for x in a)
                + sum((x - 1) * mpmath.log(mpmath.mpf(float(v))) for x, v in zip(a, y.tolist())))
    assert abs(got.item() - float(want)) <= 64 * torch.finfo(D).eps * 4e10


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_near_the_largest_concentration_has_no_nan(dtype):
    """α up to finfo.max / 8: log Γ(α_0) overflowed and the log-density was inf − inf = NaN.
    At such α float rounding of y dominates the value, so only finiteness is asserted."""
    big = torch.finfo(dtype).max / 8
    alpha = torch.tensor([big / 4, big / 4, big / 2, 0.5], dtype=dtype, requires_grad=True)
    dist = MixedDirichlet(torch.zeros(4, dtype=dtype), alpha)
    y = torch.tensor([0.25, 0.25, 0.5, 0.0], dtype=dtype)
    value = dist.log_prob(y)
    (grad,) = torch.autograd.grad(value, alpha)
    assert not value.isnan() and not grad.isnan().any()


def mean_gradient(scores, alpha, weights):
    """∂(Σ_k c_k E[y_k])/∂α_j = Σ_{f∋j, |f|>1} P(f) Σ_{k∈f, k≠j} α_k (c_j − c_k)/α_0(f)²
    (E[y_k] gets P({k}) from the vertex {k} whatever α is), summed face by face in float64;
    and its scale max|c| Σ_{f∋j, |f|>1} P(f)/α_0(f) (1 + |log P(f)| + |log α_0(f)|), the size
    of what the library sums, P(f)/α_0(f) as exp(log P(f) − log α_0(f))."""
    faces, probs = all_faces(len(alpha)), gibbs_probs(scores)
    grad, scale = np.zeros(len(alpha)), np.zeros(len(alpha))
    for f, w in zip(faces, probs):
        if f.sum() == 1:
            continue
        a0 = alpha[f].sum()
        for j in np.flatnonzero(f):
            grad[j] += w / a0 * (alpha[f] * (weights[j] - weights[f])).sum() / a0
            scale[j] += w / a0 * np.abs(weights).max() * (1 + abs(np.log(w)) + abs(np.log(a0)))
    return grad, scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [(1e-8, 1.0, 0.5), (1e-20, 1.0, 0.5), (1e-20, 3e-20, 1.0),
                                   (1.0, 1e-4, 1e-4), (1e-200, 3e-200, 1.0)])
def test_mean_gradient_at_tiny_concentrations_matches_the_face_by_face_sum(dtype, alpha):
    """E[y_k] = α_k Σ_{f∋k} P(f)/α_0(f) differentiated as a product has the terms ±P({k})/α_k
    of the vertex {k}: at α_0 = 1e-8 float32 gave ∂/∂α_0 = 0 (exact −0.8413), at 1e-20 −inf and
    NaN; and 1/α_0(f)² overflows float64 at α_0(f) = 4e-200. Now within a few roundings of the
    sum over faces with |f| > 1 (c_j Σ P/α_0 − Σ P c̄_f/α_0, with α_0-weighted means c̄_f; a
    float32 concentration computes in float64, its faces' probabilities are float32-accurate)."""
    if dtype == torch.float32 and min(alpha) < 1e-40:
        pytest.skip("concentration not representable in float32")
    scores = torch.tensor([0.3, -0.2, 0.5], dtype=dtype)
    a = torch.tensor(alpha, dtype=dtype, requires_grad=True)
    weights = torch.tensor([1.0, 2.0, 3.0], dtype=dtype)
    (got,) = torch.autograd.grad((MixedDirichlet(scores, a).mean * weights).sum(), a)
    want, scale = mean_gradient(scores.double().numpy(), np.array(alpha), weights.numpy())
    assert np.isfinite(got.numpy()).all()
    assert (np.abs(got.double().numpy() - want) <= 16 * torch.finfo(dtype).eps * scale).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mean_gradient_at_a_tiny_concentration_matches_finite_differences(dtype):
    """The audit's case, α = (1e-8, 1, 0.5), against float64 central differences with steps
    h_j = min(1e-6, α_j / 2) (α stays positive), which err by ≤ 2 eps / h_j (rounding of
    E[y] ~ 1) + h_j² (the third derivative is O(1/α_0(f)³) with α_0(f) ≥ 0.5 on the faces
    with a gradient): ≤ 5e-8; plus the autograd's own rounding bound (face-by-face test)."""
    alpha = (1e-8, 1.0, 0.5)
    scores, weights = [0.3, -0.2, 0.5], [1.0, 2.0, 3.0]

    def f(a):
        return (MixedDirichlet(torch.tensor(scores, dtype=a.dtype), a).mean
                * torch.tensor(weights, dtype=a.dtype)).sum()

    a = torch.tensor(alpha, dtype=dtype, requires_grad=True)
    (grad,) = torch.autograd.grad(f(a), a)
    _, scale = mean_gradient(np.array(scores), np.array(alpha), np.array(weights))
    for j in range(3):
        h = min(1e-6, alpha[j] / 2)
        step = torch.zeros(3, dtype=D)
        step[j] = h
        fd = (f(torch.tensor(alpha, dtype=D) + step) - f(torch.tensor(alpha, dtype=D) - step))
        tol = 5e-8 + 16 * torch.finfo(dtype).eps * scale[j]
        assert abs(grad[j].item() - fd.item() / (2 * h)) <= tol


def test_entropy_gradient_matches_finite_differences():
    def f(scores, alpha):
        p = MixedDirichlet(scores, alpha)
        q = MixedDirichlet(scores.flip(-1), alpha.flip(-1))
        return p.entropy() + kl_divergence(p, q)

    args = (torch.randn(2, 3, dtype=D, requires_grad=True),
            (0.5 + torch.rand(2, 3, dtype=D)).requires_grad_(True))
    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtypes_and_expand(dtype):
    dist = MixedDirichlet(torch.zeros(4, 5, dtype=dtype), torch.ones(5, dtype=dtype))
    assert dist.batch_shape == (4,) and dist.event_shape == (5,)
    y = dist.sample((3,))
    assert y.shape == (3, 4, 5) and y.dtype == dtype
    assert dist.log_prob(y).shape == (3, 4) and dist.log_prob(y).dtype == dtype
    big = dist.expand((2, 4))
    assert big.batch_shape == (2, 4) and big.entropy().shape == (2, 4)
    assert kl_divergence(big, dist).shape == (2, 4)
    prior = MixedDirichlet(MaxEntropyFaces(5, dtype=dtype), torch.ones(5, dtype=dtype))
    assert kl_divergence(dist, prior).dtype == dtype
    faces = NonEmptyFaces(torch.zeros(5, dtype=dtype))
    assert MixedDirichlet(faces, torch.ones(3, 5, dtype=dtype)).batch_shape == (3,)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="concentration"):
        MixedDirichlet(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="trailing size K = 3"):
        MixedDirichlet(torch.zeros(3), torch.ones(4))
    with pytest.raises(TypeError, match="concentration"):
        MixedDirichlet(torch.zeros(3), [1.0, 1.0, 1.0])
    with pytest.raises(TypeError, match="faces"):
        MixedDirichlet("faces", torch.ones(3))
    with pytest.raises(ValueError, match="broadcast"):
        MixedDirichlet(torch.zeros(2, 3), torch.ones(4, 3))
    with pytest.raises(ValueError, match="faces contains NaN"):  # the caller's argument name
        MixedDirichlet(torch.tensor([0.0, float("nan"), 1.0]), torch.ones(3))
    with pytest.raises(ValueError, match="same K"):
        kl_divergence(MixedDirichlet(torch.zeros(3), torch.ones(3)),
                      MixedDirichlet(torch.zeros(4), torch.ones(4)))
    dist = MixedDirichlet(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="support"):
        dist.log_prob(torch.tensor([0.5, 0.6, 0.0]))


@pytest.mark.parametrize("scale", [1e30, 1e4, -1e4])
def test_entropy_and_kl_are_float32_accurate_at_extreme_face_scores(scale):
    """Face probabilities come from log π_k / log(1 − π_k) sums, not from 2 s·f − Σ s − log Z:
    float32 matches float64 on the same inputs within float32 rounding of the result."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(2, 4, generator=gen)
    scores = (base * scale if abs(scale) > 1e10 else base + scale).float()
    alpha = (0.5 + torch.rand(2, 4, generator=gen)).float()
    p32, q32 = MixedDirichlet(scores, alpha), MixedDirichlet(scores.flip(-1), alpha.flip(-1))
    p64, q64 = (MixedDirichlet(d.faces.scores.double(), d.concentration.double())
                for d in (p32, q32))
    eps = torch.finfo(torch.float32).eps
    for got, want in ((p32.entropy(), p64.entropy()), (kl_divergence(p32, q32),
                                                       kl_divergence(p64, q64))):
        assert torch.isfinite(got).all()
        assert ((got.double() - want).abs() <= 200 * eps * (1 + want.abs())).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_draws_and_densities_run_in_float32_and_return_the_input_dtype(dtype):
    dist = make(4, 0, batch=(3,))
    half = MixedDirichlet(dist.faces.scores.to(dtype), dist.concentration.to(dtype))
    y = half.rsample((5,))
    assert y.dtype == dtype and torch.isfinite(y).all()
    tol = math.sqrt(torch.finfo(dtype).eps)
    assert ((y.double().sum(-1) - 1).abs() <= tol).all()
    lp = half.log_prob(y)
    assert lp.dtype == dtype and torch.isfinite(lp).all()


@pytest.mark.parametrize(("dtype", "alpha"), [
    (torch.float16, (0.01, 5.0, 5.0)),
    (torch.bfloat16, (1e-3, 1e8, 1.0)),
    (torch.float32, (1e-3, 1e8, 1.0)),
    (torch.float64, (1e-3, 1e17, 1.0)),
])
def test_rsample_keeps_every_entry_of_the_drawn_face_positive(dtype, alpha):
    """A small α's Gamma draw, normalised (and next to a large α), is often below the dtype's
    least positive value: cast to float16 (audit: y_0 > 0 in 16% of the draws with the α of the
    first case, 6e-8 least) or divided by α_1 = 1e8 in float32, it became 0, and the face read
    back (y > 0, what log_prob and the score-function term use) was not the drawn one."""
    torch.manual_seed(8)
    dist = MixedDirichlet(torch.full((3,), 5.0, dtype=dtype), torch.tensor(alpha, dtype=dtype))
    faces = torch.tensor(np.array(all_faces(3)), dtype=dtype).repeat(100, 1)
    y = dist.rsample_on_faces(faces)
    assert torch.equal(y > 0, faces > 0)
    assert ((y.double().sum(-1) - 1).abs() <= 4 * torch.finfo(dtype).eps).all()
    # P_F(0 ∉ f) = σ(−10) = 4.5e-5 at scores 5: about 0.05 of 1000 draws (> 5: p < 1e-10)
    assert (dist.rsample((1000,))[:, 0] == 0).sum() <= 5
    if dtype != torch.float16:  # (at α = 1e8 the log density is rounding noise of y)
        return
    # log_prob = log P_F(drawn face) + log Dir(y_f; α_f), here in float64 from y's values
    probs = dict(zip(map(tuple, all_faces(3)), gibbs_probs(np.full(3, 5.0))))
    a, got = np.array(alpha), dist.log_prob(y).double()
    for row, face, value in zip(y.double().numpy(), faces.numpy() > 0, got):
        terms = [math.log(probs[tuple(face)])]
        if face.sum() > 1:
            terms += [special.gammaln(a[face].sum()), *-special.gammaln(a[face]),
                      *((a[face] - 1) * np.log(row[face]))]
        want = sum(terms)
        assert abs(value.item() - want) <= 4 * torch.finfo(dtype).eps * sum(map(abs, terms))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [1e-20, 1e-3, 1e-2, 0.5])
def test_log_prob_at_its_own_draw_has_finite_gradients_at_small_concentrations(dtype, alpha):
    """log p(y) at a draw y = rsample(), differentiated through both (a Monte-Carlo entropy or
    KL): every entry of the drawn face is at least the dtype's smallest normal number (in
    float64 1/eps above it), so the cotangents (α − 1)/y of log y stay finite through the draw's
    backward. Entries rounded up only to the least subnormal made them overflow, and the gradient
    was NaN in 23 of 150 float32 batches at α = 1e-3 to 0.5 (7 of 150 in float64 at 1e-3)."""
    torch.manual_seed(21)
    scores = torch.randn(64, 5, dtype=dtype, requires_grad=True)
    concentration = torch.full((64, 5), alpha, dtype=dtype, requires_grad=True)
    dist = MixedDirichlet(NonEmptyFaces(scores), concentration)
    y = dist.rsample((8,))
    assert (y[y > 0] >= torch.finfo(dtype).tiny).all()
    log_p = dist.log_prob(y)
    assert torch.isfinite(log_p).all()
    grads = torch.autograd.grad(log_p.sum(), (scores, concentration))
    assert all(not torch.isnan(g).any() for g in grads)
    if alpha >= 1e-3:  # the true gradient ~ log(y)/α is within range
        assert all(torch.isfinite(g).all() for g in grads)


def _full_face_draws(alpha, n, dtype, requires_grad=False):
    """n draws of Dir(α) on the full face (α a tuple), and the concentration tensor."""
    a = torch.tensor(alpha, dtype=dtype, requires_grad=requires_grad)
    dist = MixedDirichlet(torch.zeros(len(alpha), dtype=dtype), a)
    return dist.rsample_on_faces(torch.ones(n, len(alpha), dtype=dtype)), a


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-3, 1e-2, 0.1])
def test_rsample_at_small_concentrations_follows_the_dirichlet(dtype, scale):
    """Dir(α), α = scale·(1, 2, 3): P(y_k ≤ t) against the Beta(α_k, α_0 − α_k) marginal's CDF
    (scipy), and P(max_k y_k > t) for t ≥ ½ (at most one y_k exceeds ½: the sum of the marginal
    tails), within 5 binomial standard errors. Gamma(α) draws underflowed and were clamped to
    tiny, so that all of a face was equal, the barycentre: at scale 1e-3 P(max > ½) was 0.40 in
    float32 and 0.986 in float64 instead of 1 − 5e-6, at 1e-2 0.994 in float32."""
    torch.manual_seed(11)
    n = 100_000
    alpha = scale * np.array([1.0, 2.0, 3.0])
    y, _ = _full_face_draws(tuple(alpha), n, dtype)
    y = y.double().numpy()
    marginals = [stats.beta(a, alpha.sum() - a) for a in alpha]
    checks = [((y[:, k] <= t).mean(), marginal.cdf(t))
              for k, marginal in enumerate(marginals) for t in (1e-30, 1e-10, 1e-3, 0.5, 0.999)]
    checks += [((y.max(-1) > t).mean(), sum(marginal.sf(t) for marginal in marginals))
               for t in (0.5, 0.999)]
    for got, want in checks:
        assert abs(got - want) <= 5 * math.sqrt(want * (1 - want) / n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [(1e-3, 2e-3, 3e-3), (1e-2, 2e-2, 3e-2), (0.1, 0.2, 0.3),
                                   (1e-2, 0.5, 2.0)])
def test_rsample_pathwise_gradient_is_unbiased_at_small_concentrations(dtype, alpha):
    """The mean over draws of ∇_α f(y), f(y) = w·y + y_0², against ∇_α E[f] in closed form:
    E[y_k] = α_k/A, E[y_0²] = α_0(α_0 + 1)/(A(A + 1)), A = Σ α. Within 5 standard errors of
    the mean over 40 batches of 10⁴ draws (the per-draw gradient is heavy-tailed at small α:
    ~1/α² with probability ~α)."""
    torch.manual_seed(12)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
    grads = []
    for _ in range(40):
        y, a = _full_face_draws(alpha, 10_000, dtype, requires_grad=True)
        grads.append(torch.autograd.grad(((y * w).sum(-1) + y[:, 0] ** 2).mean(), a)[0])
    grads = torch.stack(grads).double()
    a = torch.tensor(alpha, dtype=dtype).double().requires_grad_()
    total = a.sum()
    mean = (w.double() * a).sum() / total + a[0] * (a[0] + 1) / (total * (total + 1))
    (want,) = torch.autograd.grad(mean, a)
    assert ((grads.mean(0) - want).abs() <= 5 * grads.std(0) / math.sqrt(len(grads))).all()


@pytest.mark.parametrize(("dtype", "tiny"), [(torch.float32, 1e-30), (torch.float64, 1e-200),
                                             (torch.float64, 1e-310)])
def test_rsample_at_tiny_concentrations_draws_vertex_k_with_probability_alpha_k_over_alpha_0(
    dtype, tiny,
):
    """At α = tiny·(1, 2, 5), Dir(α_f) is within e^{−1/α} of the vertex e_k of the face with
    probability α_k/α_0(f) (the race of log G_k ≈ log U_k / α_k), 1 − O(α) in all: the drawn
    face's other entries are the least value an entry takes (``_least_entry``). Each vertex's
    frequency, on the full face and on the edge {0, 1}, within 5 binomial standard errors; the
    vertex {2} is exactly e_2; gradients are finite. Draws were the barycentre of the face
    (underflowed Gamma draws), and log U / α overflows float64 at α = 1e-310 without the face's
    scale."""
    torch.manual_seed(13)
    n = 20_000
    a = torch.tensor([1.0, 2.0, 5.0], dtype=dtype).mul(tiny).requires_grad_()
    faces = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)
    y = MixedDirichlet(torch.zeros(3, dtype=dtype), a).rsample_on_faces(faces.expand(n, 3, 3))
    (grad,) = torch.autograd.grad((y * torch.arange(3, dtype=dtype)).sum(), a)
    assert torch.isfinite(grad).all()
    least = _least_entry(dtype, torch.float64)
    assert torch.equal(y > 0, (faces > 0).expand(n, 3, 3))
    assert ((y == 1) | (y == least) | (y == 0)).all() and (y.max(-1).values == 1).all()
    assert torch.equal(y[:, 2], faces[2].expand(n, 3))
    for row in range(2):
        on = a.detach().double() * faces[row].double()
        for k in range(3):
            got, want = (y[:, row, k] == 1).double().mean().item(), (on[k] / on.sum()).item()
            assert abs(got - want) <= 5 * math.sqrt(want * (1 - want) / n)


def _mp_dirichlet_entropy_and_kl_to_uniform(alpha):
    """H(Dir(α)) and KL(Dir(α) ‖ Dir(1)) = −H − log Γ(n), in 60-digit arithmetic."""
    import mpmath

    with mpmath.workdps(60):
        a = [mpmath.mpf(float(x)) for x in alpha]
        a0, n = sum(a), len(a)
        h = (sum(mpmath.loggamma(x) for x in a) - mpmath.loggamma(a0)
             + (a0 - n) * mpmath.digamma(a0) - sum((x - 1) * mpmath.digamma(x) for x in a))
        return float(h), float(-h - mpmath.loggamma(n))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("magnitude", [1e-6, 1e-2, 1.0, 30.0, 1e3, 1e6, 1e12, 1e30])
def test_dirichlet_entropy_and_kl_are_accurate_at_any_concentration(dtype, magnitude):
    """The log Γ terms are grouped so nothing of size α log α or 1/α cancels (asymptotic series
    for large α): entropy and KL to the uniform Dirichlet agree with 60-digit arithmetic within
    a few roundings of their own terms (log α and the result), in float32 even at α = 1e30
    (where log Γ(α) overflows and the direct form gave NaN or inf) and at α = 1e-6."""
    alpha = (magnitude * torch.tensor([1.0, 2.0, 3.5], dtype=torch.float64)).to(dtype)
    if not torch.isfinite(alpha).all() or (alpha == 0).any():
        pytest.skip("concentration not representable in this dtype")
    q = MixedDirichlet(torch.zeros(3, dtype=dtype), alpha)
    uniform = MixedDirichlet(torch.zeros(3, dtype=dtype), torch.ones(3, dtype=dtype))
    face = torch.ones(1, 3, dtype=dtype)
    h, kl = q.dirichlet_entropy(face)[0], q.dirichlet_kl(uniform, face)[0]
    want_h, want_kl = _mp_dirichlet_entropy_and_kl_to_uniform(alpha.double())
    eps = torch.finfo(dtype).eps
    terms = float(alpha.double().log().abs().sum()) + 4  # |h(α_k)| ≤ |log α_k| + 1, n = 3
    a0 = min(float(alpha.double().sum()), eps**-0.2)  # below eps^(-1/5): direct log Γ - αψ + α
    terms += a0 * (1 + abs(math.log(a0)))  # whose terms are of size α log α
    for got, want in ((h, want_h), (kl, want_kl)):
        assert got.dtype == dtype
        assert abs(float(got) - want) <= 16 * eps * (abs(want) + terms), (float(got), want)


@pytest.mark.parametrize("tiny", [1e-20, 1e-30])
def test_float32_entropy_and_kl_gradients_at_tiny_concentrations_are_float64_rounded(tiny):
    """Below α ≈ 1e-19 the gradients hold ψ'(α) ≈ 1/α², beyond float32: a coordinate's own term
    and its face's α_0 term met as inf − inf, and a vertex's masked entropy passed 0 · inf back
    through the face sums, so every coordinate of the row was NaN (even α = 2's, whose gradient
    is -0.8). float32 now gives the float64 gradients rounded to float32: the same values where
    they fit, ±inf where they do not; enumerated (entropy, KL) and sampled-face forms alike."""
    scores = torch.tensor([[0.1, -0.3, 0.2], [0.5, 0.0, -1.0]], dtype=D)
    alpha = torch.tensor([[tiny, 1.0, 2.0], [tiny, tiny, 0.5]], dtype=D)
    beta = torch.tensor([[0.3, 1.0, 2.0], [1.0, 0.2, 0.5]], dtype=D)
    faces = torch.tensor(all_faces(3), dtype=D)[:, None, :].expand(-1, 2, -1)

    def gradients(dtype):
        a = alpha.to(dtype).requires_grad_()
        p = MixedDirichlet(scores.to(dtype), a)
        q = MixedDirichlet(scores.to(dtype), beta.to(dtype))
        f = faces.to(dtype)
        values = (p.entropy(), kl_divergence(p, q), p.dirichlet_entropy(f), p.dirichlet_kl(q, f))
        return [torch.autograd.grad(v.sum(), a)[0] for v in values]

    big = torch.finfo(torch.float32).max
    for got, want in zip(gradients(torch.float32), gradients(D)):
        assert not got.isnan().any()
        fits, beyond = want.abs() < big, want.abs() > 1.01 * big  # (none in between here)
        assert (fits | beyond).all() and beyond.any()
        torch.testing.assert_close(got.double()[fits], want[fits], rtol=1e-5, atol=1e-6)
        assert torch.equal(got[beyond], want[beyond].sign().float() * float("inf"))


@pytest.mark.parametrize("divergence", ["entropy", "kl"])
def test_float64_concentrations_below_1e_150_give_finite_gradients_and_the_terms_at_1e_150(
    divergence,
):
    """float64 concentrations reach its tiny (1e-308), but ψ'(α) ≈ 1/α² overflows below ~1e-154
    and the exact entropy and KL had NaN gradients (even through vertices, whose term is 0).
    A concentration below 1e-150 now counts as 1e-150: same value as there, finite gradients."""
    faces = NonEmptyFaces(torch.tensor([[0.0, 0.3, -0.2]], dtype=torch.float64))

    def term(first):
        alpha = torch.tensor([[first, 0.5, 1.0]], dtype=torch.float64, requires_grad=True)
        q = MixedDirichlet(faces, alpha)
        if divergence == "entropy":
            value = q.entropy()
        else:
            value = kl_divergence(q, MixedDirichlet(faces, torch.ones_like(alpha)))
        value.sum().backward()
        return value.detach(), alpha.grad

    value, grad = term(1e-300)
    value_at_bound, _ = term(1e-150)
    assert torch.isfinite(grad).all()
    assert torch.equal(value, value_at_bound)
