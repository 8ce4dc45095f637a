"""NonEmptyFaces and MaxEntropyFaces against brute-force enumeration of the 2^K − 1 faces."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import Tensor
from torch.distributions import kl_divergence

from latentgrad.distributions.faces import MaxEntropyFaces, NonEmptyFaces

D = torch.float64


def all_faces(k: int) -> torch.Tensor:
    rows = [f for f in itertools.product([0.0, 1.0], repeat=k) if any(f)]
    return torch.tensor(rows, dtype=D)


def brute_gibbs(scores: torch.Tensor) -> torch.Tensor:
    """(…, F) probabilities of all_faces(K) by explicit normalisation."""
    faces = all_faces(scores.shape[-1])
    logits = ((2 * faces - 1) * scores.unsqueeze(-2)).sum(-1)
    return torch.softmax(logits, -1)


def brute_maxent(k: int, bits: float, form: str) -> torch.Tensor:
    faces = all_faces(k)
    n = faces.sum(-1)
    w = 2.0 ** (bits * (n - 1)) / torch.exp(torch.lgamma(n))
    if form == "maxent-reference":
        w = w / torch.tensor([math.comb(k, int(m)) for m in n], dtype=D)
    return w / w.sum()


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_gibbs_closed_forms_match_enumeration(k):
    torch.manual_seed(k)
    scores = 1.5 * torch.randn(4, k, dtype=D)
    dist = NonEmptyFaces(scores)
    faces = all_faces(k)
    probs = brute_gibbs(scores)
    torch.testing.assert_close(dist.log_prob(faces.unsqueeze(1)).T.exp(), probs)
    logits = ((2 * faces - 1) * scores.unsqueeze(-2)).sum(-1)
    torch.testing.assert_close(dist.log_partition(), torch.logsumexp(logits, -1))
    torch.testing.assert_close(dist.marginals(), probs @ faces)
    torch.testing.assert_close(dist.entropy(), -(probs * probs.log()).sum(-1))
    size_pmf = torch.stack([probs[:, faces.sum(-1) == n].sum(-1) for n in range(1, k + 1)], -1)
    torch.testing.assert_close(dist.size_log_pmf().exp(), size_pmf)
    torch.testing.assert_close(dist.mode, faces[probs.argmax(-1)])


def test_gibbs_mode_when_all_scores_negative_is_best_single_vertex():
    scores = torch.tensor([[-1.0, -0.2, -3.0]], dtype=D)
    torch.testing.assert_close(NonEmptyFaces(scores).mode, torch.tensor([[0.0, 1.0, 0.0]], dtype=D))


def test_gibbs_extreme_scores_are_finite():
    scores = torch.tensor([[-40.0] * 6, [40.0] * 6, [-40.0, 40.0, 0.0, 0.0, -40.0, 3.0]], dtype=D)
    dist = NonEmptyFaces(scores)
    for value in (dist.log_partition(), dist.entropy(), dist.marginals(), dist.size_log_pmf()):
        assert torch.isfinite(value).all()
    torch.testing.assert_close(dist.entropy(), -(lambda p: (p * p.log()).nansum(-1))(
        brute_gibbs(scores)), atol=1e-10, rtol=0)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(-4, 4), min_size=1, max_size=6), st.lists(st.floats(-4, 4), min_size=6,
                                                                      max_size=6))
def test_gibbs_kl_matches_enumeration_and_is_nonnegative(s, t):
    k = len(s)
    p, q = torch.tensor(s, dtype=D), torch.tensor(t[:k], dtype=D)
    bp, bq = brute_gibbs(p), brute_gibbs(q)
    expected = (bp * (bp.log() - bq.log())).sum()
    kl = kl_divergence(NonEmptyFaces(p), NonEmptyFaces(q))
    torch.testing.assert_close(kl, expected, atol=1e-9, rtol=1e-7)
    assert kl >= -1e-12
    assert kl_divergence(NonEmptyFaces(p), NonEmptyFaces(p)).abs() < 1e-12


@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_gibbs_cross_entropy_matches_enumeration(k):
    """``cross_entropy(t) = -Σ_f P(f) log Q(f)`` over the 2^K - 1 faces, batched, at scores of
    several scales (Q from scores ``t``)."""
    gen = torch.Generator().manual_seed(k)
    s = torch.randn(3, k, generator=gen, dtype=D) * torch.tensor([[0.5], [2.0], [6.0]], dtype=D)
    t = torch.randn(3, k, generator=gen, dtype=D) * 2.0
    expected = -(brute_gibbs(s) * brute_gibbs(t).log()).sum(-1)
    torch.testing.assert_close(NonEmptyFaces(s).cross_entropy(t), expected, atol=1e-10, rtol=1e-9)


def test_gibbs_sample_frequencies_match_probabilities_chi_square():
    torch.manual_seed(0)
    scores = torch.tensor([0.3, -1.0, -0.4, 0.8], dtype=D)
    faces = all_faces(4)
    n = 40000
    samples = NonEmptyFaces(scores).sample((n,))
    assert samples.shape == (n, 4) and (samples.sum(-1) > 0).all()
    codes = (samples * 2 ** torch.arange(4, dtype=D)).sum(-1).long()
    face_codes = (faces * 2 ** torch.arange(4, dtype=D)).sum(-1).long()
    counts = torch.stack([(codes == c).sum() for c in face_codes]).double()
    expected = brute_gibbs(scores) * n
    assert stats.chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3


def test_gibbs_sampling_is_batched_and_shaped():
    scores = torch.randn(3, 2, 5)
    dist = NonEmptyFaces(scores)
    assert dist.sample().shape == (3, 2, 5)
    assert dist.sample((7,)).shape == (7, 3, 2, 5)
    big = NonEmptyFaces(torch.randn(2, 64)).sample((10,))
    assert big.shape == (10, 2, 64) and (big.sum(-1) > 0).all()
    assert dist.log_prob(dist.sample((4,))).shape == (4, 3, 2)


def test_gibbs_gradients_of_closed_forms_match_enumeration():
    torch.manual_seed(1)
    s1 = torch.randn(5, dtype=D, requires_grad=True)
    s2 = s1.detach().clone().requires_grad_(True)
    h1 = NonEmptyFaces(s1).entropy()
    bp = brute_gibbs(s2)
    h2 = -(bp * bp.log()).sum()
    g1, = torch.autograd.grad(h1, s1)
    g2, = torch.autograd.grad(h2, s2)
    torch.testing.assert_close(g1, g2)
    assert torch.autograd.gradcheck(
        lambda s: NonEmptyFaces(s).size_log_pmf(), (torch.randn(2, 4, dtype=D, requires_grad=True),)
    )


@pytest.mark.parametrize("form", ["maxent", "maxent-reference"])
@pytest.mark.parametrize("bits", [0, 1.5])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_maxent_prior_matches_enumeration(k, bits, form):
    prior = MaxEntropyFaces(k, bits=bits, form=form, dtype=D)
    faces = all_faces(k)
    expected = brute_maxent(k, bits, form)
    torch.testing.assert_close(prior.log_prob(faces).exp(), expected)
    torch.testing.assert_close(prior.entropy(), -(expected * expected.log()).sum())
    torch.testing.assert_close(prior.mean, expected @ faces)


def test_maxent_form_is_the_maximiser_of_direct_sum_entropy_with_uniform_faces():
    # H(F) + Σ_f P(f) log vol(f), vol(f) = 1/(|f|-1)!: the maxent form beats the reference form.
    k = 5
    faces = all_faces(k)
    log_vol = -torch.lgamma(faces.sum(-1))

    def objective(p):
        return -(p * p.log()).sum() + (p * log_vol).sum()

    best = objective(brute_maxent(k, 0, "maxent"))
    assert best > objective(brute_maxent(k, 0, "maxent-reference"))
    torch.testing.assert_close(best, torch.logsumexp(log_vol, 0))  # the log-partition bound


def test_maxent_sample_frequencies_match_chi_square():
    torch.manual_seed(3)
    k, n = 4, 30000
    prior = MaxEntropyFaces(k, bits=1, form="maxent-reference", dtype=D).expand((2,))
    samples = prior.sample((n,))
    assert samples.shape == (n, 2, k)
    faces = all_faces(k)
    codes = (samples[:, 0] * 2 ** torch.arange(k, dtype=D)).sum(-1).long()
    face_codes = (faces * 2 ** torch.arange(k, dtype=D)).sum(-1).long()
    counts = torch.stack([(codes == c).sum() for c in face_codes]).double()
    expected = brute_maxent(k, 1, "maxent-reference") * n
    assert stats.chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3


@pytest.mark.parametrize("form", ["maxent", "maxent-reference"])
@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_kls_between_gibbs_and_maxent_match_enumeration(k, form):
    torch.manual_seed(k)
    scores = 2 * torch.randn(3, k, dtype=D)
    p, prior = NonEmptyFaces(scores), MaxEntropyFaces(k, bits=0.5, form=form, dtype=D)
    bp, bq = brute_gibbs(scores), brute_maxent(k, 0.5, form)
    torch.testing.assert_close(kl_divergence(p, prior), (bp * (bp.log() - bq.log())).sum(-1))
    torch.testing.assert_close(kl_divergence(prior, p), (bq * (bq.log() - bp.log())).sum(-1))
    other = MaxEntropyFaces(k, bits=0.0, form="maxent", dtype=D)
    bo = brute_maxent(k, 0.0, "maxent")
    torch.testing.assert_close(kl_divergence(prior, other), (bq * (bq.log() - bo.log())).sum())
    assert kl_divergence(prior, prior).abs() < 1e-12


def test_kls_at_k64_match_monte_carlo_without_enumeration():
    """K = 64 (2^64 faces): each closed-form KL is zero at equality and within 5 standard errors
    of the Monte Carlo mean of log p(f) - log q(f) over 4,000 faces drawn from p."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 64, generator=gen, dtype=D)
    p, prior = NonEmptyFaces(scores), MaxEntropyFaces(64, dtype=D)
    other = NonEmptyFaces(scores.flip(-1))
    torch.manual_seed(1)
    for a, b in ((p, prior), (prior, p), (p, other)):
        kl = kl_divergence(a, b)
        assert kl.shape == (3,)
        assert kl_divergence(a, a).abs().max() <= 1e-9
        f = a.sample((4000,))
        f = f if a.batch_shape else f.unsqueeze(1)  # the unbatched prior: one face per draw
        ratio = a.log_prob(f) - b.log_prob(f)
        se = ratio.std(0) / 4000**0.5
        assert ((ratio.mean(0) - kl).abs() <= 5 * se + 1e-9).all(), (ratio.mean(0), kl, se)


def test_float32_matches_float64():
    scores = torch.randn(2, 6, generator=torch.Generator().manual_seed(2), dtype=D)
    faces = all_faces(6)
    for dtype in (torch.float32,):  # half precision is not supported by the face distributions
        dist, ref = NonEmptyFaces(scores.to(dtype)), NonEmptyFaces(scores)
        prior, prior64 = MaxEntropyFaces(6, dtype=dtype), MaxEntropyFaces(6, dtype=D)
        tol = {"rtol": 1e-5, "atol": 1e-5}
        assert dist.entropy().dtype == dtype
        torch.testing.assert_close(dist.entropy().double(), ref.entropy(), **tol)
        torch.testing.assert_close(kl_divergence(dist, prior).double(),
                                   kl_divergence(ref, prior64), **tol)  # fmt: skip
        lp = prior.log_prob(faces.to(dtype).unsqueeze(1))
        assert lp.dtype == dtype
        torch.testing.assert_close(lp.double(), prior64.log_prob(faces.unsqueeze(1)), **tol)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(TypeError, match="scores"):
        NonEmptyFaces([0.0, 1.0])
    with pytest.raises(TypeError, match="floating-point"):
        NonEmptyFaces(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="scores"):
        NonEmptyFaces(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="at least 1 dimension"):
        NonEmptyFaces(torch.tensor(1.0))
    with pytest.raises(ValueError, match="k must be"):
        MaxEntropyFaces(0)
    with pytest.raises(ValueError, match="form"):
        MaxEntropyFaces(3, form="uniform")
    with pytest.raises(ValueError, match="bits"):
        MaxEntropyFaces(3, bits=-1)
    with pytest.raises(ValueError, match="same K"):
        kl_divergence(NonEmptyFaces(torch.zeros(3)), MaxEntropyFaces(4))
    dist = NonEmptyFaces(torch.zeros(3))
    with pytest.raises(ValueError, match="support"):
        dist.log_prob(torch.zeros(3))  # the empty face
    with pytest.raises(ValueError, match="support"):
        MaxEntropyFaces(3).log_prob(torch.tensor([0.5, 1.0, 0.0]))


def test_gibbs_over_zero_coordinates_is_refused_at_construction():
    """K = 0 has no non-empty face, so no distribution: the constructor names the scores and
    the need for a coordinate (it accepted them, and entropy/sample then failed with an
    IndexError from inside torch), as MaxEntropyFaces(0) names k."""
    for shape in ((0,), (2, 0)):
        with pytest.raises(ValueError, match=r"scores must have at least one coordinate"):
            NonEmptyFaces(torch.zeros(shape))


def test_expand_keeps_parameters():
    dist = NonEmptyFaces(torch.randn(5)).expand((2, 3))
    assert dist.batch_shape == (2, 3) and dist.event_shape == (5,)
    assert dist.entropy().shape == (2, 3)
    prior = MaxEntropyFaces(5).expand((4,))
    assert prior.entropy().shape == (4,) and prior.sample((2,)).shape == (2, 4, 5)


@pytest.mark.parametrize("transform", [lambda s: s * 1e30, lambda s: s + 1e4, lambda s: s - 1e4,
                                       lambda s: s * 1e4])
def test_gibbs_is_accurate_in_float32_at_extreme_scores(transform):
    """Every closed form is assembled without cancellation: float32 equals the float64
    enumeration of the same (rounded) scores within float32 rounding of the result."""
    torch.manual_seed(0)
    s32 = transform(torch.randn(3, 5)).float()
    t32 = transform(torch.randn(3, 5)).float()
    s64, t64 = s32.double(), t32.double()
    bp, bq = brute_gibbs(s64), brute_gibbs(t64)
    faces = all_faces(5)
    p, q = NonEmptyFaces(s32), NonEmptyFaces(t32)
    entropy = -torch.where(bp > 0, bp * bp.log(), 0.0).sum(-1)
    eps = torch.finfo(torch.float32).eps
    tol = 50 * eps * (1 + entropy)
    assert (p.entropy().double() - entropy).abs().max() <= tol.max()
    torch.testing.assert_close(p.marginals().double(), bp @ faces, atol=50 * eps, rtol=0)
    for value in (p.entropy(), p.log_prob(faces.float().unsqueeze(1)), kl_divergence(p, q),
                  p.size_log_pmf()):
        assert not torch.isnan(value).any()
    kl = (bp * (torch.where(bp > 0, bp.log(), 0.0) - bq.log().clamp_min(-1e300))).sum(-1)
    finite = kl.abs() < 1e6  # otherwise the KL is dominated by score gaps of ~1e30
    assert ((kl_divergence(p, q).double() - kl).abs() <= 50 * eps * (1 + kl.abs()))[finite].all()


@pytest.mark.parametrize("bits", [0.0, 3.0, 1e300])
def test_maxent_handles_any_bit_precision(bits):
    prior = MaxEntropyFaces(5, bits=bits, dtype=D)
    assert torch.isfinite(prior.entropy()) and torch.isfinite(prior.size_log_pmf()).all()
    torch.testing.assert_close(prior.size_log_pmf().exp().sum(), torch.tensor(1.0, dtype=D))
    expected = brute_maxent(5, bits, "maxent") if bits < 100 else None
    if expected is not None:
        faces = all_faces(5)
        torch.testing.assert_close(prior.log_prob(faces).exp(), expected)
    else:  # N huge: all mass on the full face
        assert prior.size_log_pmf().exp()[-1] == 1.0


def _gibbs_terms(d: NonEmptyFaces, faces: Tensor) -> list[Tensor]:
    prior = MaxEntropyFaces(d.num_categories, form="maxent-reference", dtype=d.scores.dtype)
    other = NonEmptyFaces(torch.zeros_like(d.scores))
    return [d.log_prob(faces), d.entropy(), kl_divergence(d, prior), kl_divergence(d, other),
            d.size_log_pmf(), d.marginals(), d.log_prob_nonempty()]


def test_gibbs_shared_terms_are_computed_once_and_equal_a_fresh_instance(monkeypatch):
    torch.manual_seed(0)
    scores = torch.randn(3, 5, dtype=torch.float64)
    faces = NonEmptyFaces(scores).sample((4,))
    calls = []
    logits = NonEmptyFaces._logits
    monkeypatch.setattr(NonEmptyFaces, "_logits", lambda self: calls.append(self) or logits(self))
    d = NonEmptyFaces(scores)
    d.sample((2,))
    first = _gibbs_terms(d, faces)
    again = _gibbs_terms(d, faces)
    assert sum(c is d for c in calls) == 2  # the bits' log-probabilities and the entropy, once
    monkeypatch.undo()
    for cached, repeated, fresh in zip(first, again, _gibbs_terms(NonEmptyFaces(scores), faces)):
        assert torch.equal(cached, repeated)
        torch.testing.assert_close(cached, fresh, rtol=0, atol=0)


def test_gibbs_cache_keeps_the_graph_even_when_first_used_without_grad():
    torch.manual_seed(1)
    scores = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    faces = NonEmptyFaces(scores.detach()).sample((3,))
    d = NonEmptyFaces(scores)
    with torch.no_grad():
        d.sample()  # fills the cache inside no_grad
        d.entropy()
    total = sum(t.sum() for t in _gibbs_terms(d, faces))
    (grad,) = torch.autograd.grad(total, scores)
    # reference: every term from its own instance, nothing shared
    terms = [_gibbs_terms(NonEmptyFaces(scores), faces)[i].sum() for i in range(7)]
    (expected,) = torch.autograd.grad(sum(terms), scores)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_gibbs_expand_after_use_is_consistent_with_the_cache():
    torch.manual_seed(2)
    scores = torch.randn(1, 5, dtype=torch.float64)
    d = NonEmptyFaces(scores)
    entropy, faces = d.entropy(), d.sample((2,))
    wide = d.expand((3,))
    # the same float64 sums over faces in another batch layout: last-bit rounding may differ
    # between vectorised and scalar kernels, so a few ulps per summed term are allowed
    tol = 64 * torch.finfo(torch.float64).eps
    torch.testing.assert_close(wide.entropy(), entropy.expand(3), rtol=tol, atol=tol)
    torch.testing.assert_close(wide.log_prob(faces.expand(2, 3, 5)),
                               d.log_prob(faces).expand(2, 3), rtol=tol, atol=tol)
    assert wide._log_pi[0].shape == (3, 5)
