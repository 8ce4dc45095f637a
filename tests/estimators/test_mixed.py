"""Mixed-latent estimators: one loss_fn call, exact zeros, exact entropies, unbiased gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import kl_divergence

from latentgrad.distributions.faces import MaxEntropyFaces
from latentgrad.distributions.gaussian_sparsemax import GaussianSparsemax
from latentgrad.distributions.mixed_binary import BinaryGaussianSparsemax, HardConcrete
from latentgrad.distributions.mixed_dirichlet import MixedDirichlet
from latentgrad.estimators.mixed import (
    BinaryMixedEstimator,
    GaussianSparsemaxEstimator,
    MixedDirichletEstimator,
)
from latentgrad.mappings import sparsemax

D = torch.float64


class CountingLoss:
    """loss_fn(z, rows) = Σ_k w_k z_k^p, recording every call."""

    def __init__(self, weights: torch.Tensor, power: int = 1) -> None:
        self.weights, self.power, self.calls = weights, power, []

    def __call__(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        self.calls.append((z.detach().clone(), rows.clone()))
        return (z**self.power * self.weights).flatten(1).sum(-1)


def copy_leaf(param: torch.Tensor, b: int) -> torch.Tensor:
    """b copies of one example as a leaf of their own: after ``loss.backward()`` (the batch
    mean), ``b * leaf.grad`` holds the b independent per-copy gradient estimates."""
    return param.detach().expand(b, *param.shape[1:]).clone().requires_grad_(True)


def assert_unbiased(leaf: torch.Tensor, exact: torch.Tensor, z: float = 5.0) -> None:
    """The mean of the per-copy gradients in ``leaf`` within z standard errors of ``exact``."""
    b = leaf.shape[0]
    per_copy = b * leaf.grad
    mean, se = per_copy.mean(0), per_copy.std(0) / b**0.5
    assert ((mean - exact[0]).abs() <= z * se + 1e-12).all(), (mean, exact, se)


def test_gaussian_sparsemax_estimator_calls_loss_once_and_has_exact_zeros():
    torch.manual_seed(0)
    loss_fn = CountingLoss(torch.ones(6, dtype=D))
    est = GaussianSparsemaxEstimator(scale=0.5, n_samples=3, entropy_coeff=0.1)
    loc = torch.randn(4, 6, dtype=D, requires_grad=True)
    out = est(loc, loss_fn)
    assert len(loss_fn.calls) == 1
    z, rows = loss_fn.calls[0]
    assert z.shape == (12, 6) and rows.shape == (12,)
    assert sorted(rows.tolist()) == sorted(list(range(4)) * 3)
    assert (z == 0).any() and torch.allclose(z.sum(-1), torch.ones(12, dtype=D))
    assert out.support_size.tolist() == [3] * 4 and out.entropy.shape == (4,)
    out.loss.backward()
    assert torch.isfinite(loc.grad).all() and loc.grad.abs().sum() > 0


def test_gaussian_sparsemax_estimator_gradient_is_unbiased_k2():
    # K = 2: E[y_1] is the mean of the binary Gaussian-sparsemax with loc (μ1 − μ2 + 1)/2 and
    # scale √(σ1² + σ2²)/2, in closed form.
    torch.manual_seed(1)
    mu = torch.tensor([[0.3, -0.2]], dtype=D)
    sigma = 0.8
    est = GaussianSparsemaxEstimator(scale=sigma)
    leaf = copy_leaf(mu, 40000)
    out = est(leaf, lambda z, rows: z[:, 0])
    out.loss.backward()
    mu2 = mu.detach().clone().requires_grad_(True)
    exact = BinaryGaussianSparsemax((mu2[0, 0] - mu2[0, 1] + 1) / 2,
                                    torch.tensor(sigma * math.sqrt(2) / 2, dtype=D)).mean
    exact.backward()
    assert abs(out.loss.item() - exact.item()) < 0.01
    assert_unbiased(leaf, mu2.grad)


def _gauss_hermite_gradient(mu, sigma, w, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient in (μ, σ) of E[Σ_k w_k y_k²], y = sparsemax(μ + σ ε), ε ~ N(0, I_3), by the
    n³-node tensor-product Gauss-Hermite rule."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(n)  # ∫ f(x) e^{-x²/2} dx
    x = torch.tensor(nodes, dtype=D)
    wt = torch.tensor(weights, dtype=D) / math.sqrt(2 * math.pi)
    eps = torch.stack(torch.meshgrid(x, x, x, indexing="ij"), -1).reshape(-1, 3)
    weight = (wt[:, None, None] * wt[None, :, None] * wt[None, None, :]).reshape(-1)
    mu, sigma = mu.clone().requires_grad_(True), sigma.clone().requires_grad_(True)
    y = sparsemax(mu + sigma * eps)
    return torch.autograd.grad((weight * (y**2 * w).sum(-1)).sum(), (mu, sigma))


def test_gaussian_sparsemax_estimator_gradient_is_unbiased_k3_in_loc_and_scale():
    """K = 3, loss Σ w_k y_k²: the objective E[f(sparsemax(μ + σ ε))] by a tensor-product
    Gauss-Hermite rule over ε (deterministic) and its gradient in μ and σ by autograd through
    the rule; the estimator's per-copy gradients (40,000 copies, scores (loc, scale)) have that
    mean within 5 standard errors plus the rule's error."""
    torch.manual_seed(5)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    mu = torch.tensor([[0.3, -0.2, 0.1]], dtype=D)
    sigma = torch.tensor([[0.7, 0.4, 1.1]], dtype=D)
    loc, scale = copy_leaf(mu, 40000), copy_leaf(sigma, 40000)
    out = GaussianSparsemaxEstimator()((loc, scale), CountingLoss(w, power=2))
    out.loss.backward()
    g_mu, g_sigma = _gauss_hermite_gradient(mu, sigma, w, 72)
    coarse = _gauss_hermite_gradient(mu, sigma, w, 48)
    # sparsemax is only piecewise smooth, so the rule converges slowly: allow twice the change
    # from 48 to 72 nodes per dimension
    rule_error = 2 * max((g_mu - coarse[0]).abs().max(), (g_sigma - coarse[1]).abs().max())
    for leaf, want in ((loc, g_mu), (scale, g_sigma)):
        per_copy = 40000 * leaf.grad
        mean, se = per_copy.mean(0), per_copy.std(0) / 40000**0.5
        assert ((mean - want[0]).abs() <= 5 * se + rule_error).all(), (mean, want, se)


def test_gaussian_sparsemax_estimator_accepts_loc_scale_tuple():
    loc = torch.randn(2, 3, 4)
    scale = torch.full((2, 3, 4), 0.7, requires_grad=True)
    out = GaussianSparsemaxEstimator(entropy_coeff=1.0)((loc, scale),
                                                        CountingLoss(torch.ones(4)))
    out.loss.backward()
    assert out.entropy.shape == (2,) and torch.isfinite(scale.grad).all()
    scalar = torch.tensor(0.5)
    out = GaussianSparsemaxEstimator()((loc, scalar), CountingLoss(torch.ones(4)))
    assert out.expected_loss.shape == (2,)
    with pytest.raises(ValueError, match="scale"):
        GaussianSparsemaxEstimator()((loc, torch.tensor(-1.0)), CountingLoss(torch.ones(4)))


@pytest.mark.parametrize("family", ["hard_concrete", "gaussian_sparsemax"])
def test_binary_estimator_has_exact_entropy_and_kl_to_uniform_prior(family):
    torch.manual_seed(2)
    scores = torch.randn(5, 7, dtype=D, requires_grad=True)
    loss_fn = CountingLoss(torch.ones(7, dtype=D))
    est = BinaryMixedEstimator(family, n_samples=2, kl_coeff=1.0)
    out = est(scores, loss_fn)
    assert len(loss_fn.calls) == 1
    z, _ = loss_fn.calls[0]
    assert z.shape == (10, 7) and ((z == 0) | (z == 1)).any()
    dist = est.distribution(scores)
    torch.testing.assert_close(out.entropy, dist.entropy().sum(-1).detach())
    kl = 7 * math.log(3) - out.entropy
    torch.testing.assert_close(out.loss, (out.expected_loss + kl).mean(), rtol=1e-12, atol=1e-12)
    out.loss.backward()
    assert torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("family", ["hard_concrete", "gaussian_sparsemax"])
def test_binary_estimator_gradient_is_unbiased(family):
    torch.manual_seed(3)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    theta = torch.tensor([[0.4, -0.3, 1.1]], dtype=D)
    est = BinaryMixedEstimator(family, temperature=0.5, scale=0.6)
    leaf = copy_leaf(theta, 40000)
    out = est(leaf, CountingLoss(w))
    out.loss.backward()
    theta2 = theta.detach().clone().requires_grad_(True)
    dist = (HardConcrete(theta2, 0.5) if family == "hard_concrete"
            else BinaryGaussianSparsemax(theta2, 0.6))
    exact = (dist.mean * w).sum()
    exact.backward()
    assert abs(out.loss.item() - exact.item()) < 0.02
    assert_unbiased(leaf, theta2.grad)


def test_hard_concrete_temperature_follows_a_schedule_stepped_by_the_optimizer():
    """β annealed as the relaxations are (Farinhas et al. anneal Hard Concrete from 1): each
    optimizer step after a training call advances the schedule, and the loss, entropy and
    logged temperature are those of ``HardConcrete`` at the schedule's current β."""
    from latentgrad.estimators.schedules import ExponentialDecay

    scores = torch.tensor([[0.4, -0.3, 1.1], [2.0, 0.0, -1.0]], dtype=D, requires_grad=True)
    est = BinaryMixedEstimator(temperature=ExponentialDecay(1.0, rate=0.2, every=1, floor=0.5),
                               entropy_coeff=1.0)
    opt = torch.optim.SGD([scores], lr=0.0)
    for step in range(6):
        beta = max(0.5, math.exp(-0.2 * step))
        out = est(scores, lambda z, rows: z.sum(-1))
        assert out.logs["temperature"].item() == pytest.approx(beta, rel=1e-12)
        want = HardConcrete(scores.detach(), beta).entropy().sum(-1)
        torch.testing.assert_close(out.entropy.detach(), want)
        out.loss.backward()
        opt.step()
    assert int(est.temperature.num_steps) == 6 and "temperature.num_steps" in est.state_dict()


def faces3() -> torch.Tensor:
    return torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1],
                         [1, 1, 1]], dtype=D)


def exact_objective(face_scores, alpha, w, prior, kl_coeff, entropy_coeff):
    """Σ_f P(f) E_{Dir(α_f)}[Σ_k w_k y_k²] + kl·KL⊕ − c·H⊕, by enumerating the 7 faces."""
    q = MixedDirichlet(face_scores, alpha)
    table = faces3()
    probs = q.faces.log_prob(table.unsqueeze(1)).exp()  # (7, B)
    a0 = table @ alpha.T  # (7, B)
    second = alpha * (alpha + 1) / (a0 * (a0 + 1)).unsqueeze(-1)  # E[y_k²] on the face
    value = (probs * (table.unsqueeze(1) * second * w).sum(-1)).sum(0)
    return value + kl_coeff * kl_divergence(q, prior) - entropy_coeff * q.entropy()


@pytest.mark.parametrize(
    ("baseline", "n_samples", "exact_regularizer"),
    [("self_critic", 1, False), ("leave_one_out", 3, False), ("self_critic", 1, True)],
)
def test_mixed_dirichlet_estimator_gradient_is_unbiased(baseline, n_samples, exact_regularizer):
    torch.manual_seed(4)
    w = torch.tensor([2.0, -1.0, 0.5], dtype=D)
    prior = MixedDirichlet(MaxEntropyFaces(3, form="maxent-reference", dtype=D),
                           torch.ones(3, dtype=D))
    s = torch.tensor([[0.3, -0.6, 0.2]], dtype=D)
    a = torch.tensor([[0.7, 1.5, 2.5]], dtype=D)
    est = MixedDirichletEstimator(n_samples, baseline, prior=prior, kl_coeff=0.5,
                                  entropy_coeff=0.2, exact_regularizer=exact_regularizer)
    b = 60000 // n_samples
    s_leaf, a_leaf = copy_leaf(s, b), copy_leaf(a, b)
    out = est((s_leaf, a_leaf), CountingLoss(w, power=2))
    out.loss.backward()
    s2, a2 = s.detach().clone().requires_grad_(True), a.detach().clone().requires_grad_(True)
    exact = exact_objective(s2, a2, w, prior, 0.5, 0.2).sum()
    exact.backward()
    assert abs(out.loss.item() - exact.item()) < 0.02
    assert_unbiased(s_leaf, s2.grad)
    assert_unbiased(a_leaf, a2.grad)


def test_mixed_dirichlet_estimator_one_call_exact_zeros_and_entropy():
    torch.manual_seed(5)
    face_scores = torch.randn(4, 2, 5, dtype=D, requires_grad=True)
    alpha = (0.5 + torch.rand(4, 2, 5, dtype=D)).requires_grad_(True)
    loss_fn = CountingLoss(torch.ones(5, dtype=D))
    est = MixedDirichletEstimator(n_samples=2, baseline="self_critic", entropy_coeff=1.0,
                                  exact_regularizer=True)
    out = est((face_scores, alpha), loss_fn)
    assert len(loss_fn.calls) == 1
    z, rows = loss_fn.calls[0]
    assert z.shape == (12, 2, 5) and rows.shape == (12,)
    assert out.support_size.tolist() == [3] * 4
    assert (z == 0).any() and torch.allclose(z.sum(-1), torch.ones(12, 2, dtype=D))
    exact = MixedDirichlet(face_scores, alpha).entropy().sum(-1).detach()
    torch.testing.assert_close(out.entropy, exact)
    out.loss.backward()
    assert torch.isfinite(face_scores.grad).all() and torch.isfinite(alpha.grad).all()


def test_mixed_dirichlet_estimator_runs_at_k64_with_the_sampled_regularizer():
    prior = MixedDirichlet(MaxEntropyFaces(64, form="maxent-reference"), torch.ones(64))
    face_scores = torch.randn(8, 64, requires_grad=True)
    alpha = torch.ones(8, 64, requires_grad=True)
    est = MixedDirichletEstimator(prior=prior)
    out = est((face_scores, alpha), CountingLoss(torch.linspace(0, 1, 64)))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(face_scores.grad).all()
    assert out.logs["kl"] > 0 and out.entropy.shape == (8,)


def test_mixed_dirichlet_standardisation_divides_the_advantage_by_the_running_std():
    scores = (torch.zeros(64, 4, requires_grad=True), torch.ones(64, 4))
    plain = MixedDirichletEstimator(baseline=None)
    scaled = MixedDirichletEstimator(baseline=None, standardize=True, history=3)
    for shift in (0.0, 30.0, 60.0):  # batch means of the cost ≈ 0, 30, 60: std ≈ 30
        def loss_fn(z, rows, shift=shift):
            return shift + z[:, 0]

        torch.manual_seed(7)
        g_plain, = torch.autograd.grad(plain(scores, loss_fn).loss, scores[0])
        torch.manual_seed(7)  # same faces: the two gradients differ only by the scale
        g_scaled, = torch.autograd.grad(scaled(scores, loss_fn).loss, scores[0])
    history = scaled._cost_means
    assert history.std() > 25
    torch.testing.assert_close(g_plain / history.std(), g_scaled, rtol=1e-5, atol=1e-7)
    scaled.eval()
    steps = scaled._steps.item()
    scaled(scores, loss_fn)
    assert scaled._steps.item() == steps  # no update outside training


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="family"):
        BinaryMixedEstimator("gumbel")
    with pytest.raises(ValueError, match="n_samples"):
        GaussianSparsemaxEstimator(n_samples=0)
    with pytest.raises(ValueError, match="scale"):
        GaussianSparsemaxEstimator(scale=-1.0)
    with pytest.raises(ValueError, match="leave_one_out"):
        MixedDirichletEstimator(n_samples=1, baseline="leave_one_out")
    with pytest.raises(ValueError, match="baseline"):
        MixedDirichletEstimator(baseline="ema")
    with pytest.raises(TypeError, match="prior"):
        MixedDirichletEstimator(prior=MaxEntropyFaces(3))
    with pytest.raises(ValueError, match="history"):
        MixedDirichletEstimator(standardize=True, history=1)
    est = MixedDirichletEstimator()
    loss_fn = CountingLoss(torch.ones(3))
    with pytest.raises(TypeError, match="tuple"):
        est([torch.zeros(2, 3)], loss_fn)
    with pytest.raises(ValueError, match=r"\(B, \*latent, 2, K\)"):
        est(torch.zeros(2, 3, 4), loss_fn)
    with pytest.raises(ValueError, match="concentration"):
        est((torch.zeros(2, 3), torch.zeros(2, 3)), loss_fn)
    with pytest.raises(ValueError, match="same shape"):
        est((torch.zeros(2, 3), torch.ones(2, 4)), loss_fn)
    with pytest.raises(ValueError, match="NaN"):
        BinaryMixedEstimator()(torch.tensor([[float("nan"), 0.0]]), loss_fn)
    with pytest.raises(ValueError, match="K = 4"):
        MixedDirichletEstimator(prior=MixedDirichlet(torch.zeros(4), torch.ones(4)))(
            (torch.zeros(2, 3), torch.ones(2, 3)), loss_fn)
    assert loss_fn.calls == []


@pytest.mark.parametrize(
    "kwargs",
    [{"entropy_coeff": 0.1}, {"entropy_coeff": 0.1, "exact_regularizer": True}, {"kl_coeff": 1.0}],
)
def test_mixed_dirichlet_estimator_in_float64_has_finite_gradients_at_a_tiny_concentration(kwargs):
    """A float64 pre-activation of -700 gives α = softplus(-700) ~ 1e-304, valid (the estimator
    clamps only at float64's tiny); the entropy and KL terms had NaN gradients there. Pinned:
    finite loss and gradients over several draws."""
    est = MixedDirichletEstimator(**kwargs)
    for seed in range(5):
        torch.manual_seed(seed)
        scores = torch.zeros(1, 2, 3, dtype=torch.float64)
        scores[0, 1] = torch.tensor([-700.0, 0.5, 1.0])
        scores.requires_grad_(True)
        out = est(scores, lambda z, rows: ((z - 0.3) ** 2).sum(-1))
        out.loss.backward()
        assert torch.isfinite(out.loss).all() and torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("as_tuple", [False, True])
def test_gaussian_sparsemax_estimator_refuses_locations_beyond_the_distributions_range(as_tuple):
    """|μ| above finfo.max / 8 (GaussianSparsemax's own range) gave NaN gradients with an entropy
    term; the estimator now refuses it with a ValueError naming the scores and the bound, and
    skips the check with validation off, as its other value checks."""
    from latentgrad import validate_args

    loc = torch.tensor([[1e38, -1e38, 0.0, 0.0]], requires_grad=True)
    scores = (loc, torch.ones(1, 4)) if as_tuple else loc
    est = GaussianSparsemaxEstimator(entropy_coeff=0.1)
    with pytest.raises(ValueError, match=r"scores.*finfo.max / 8"):
        est(scores, lambda z, rows: ((z - 0.3) ** 2).sum(-1))
    with validate_args(False):
        est(scores, lambda z, rows: ((z - 0.3) ** 2).sum(-1))  # unchecked: no error raised
    ok = torch.tensor([[4e37, -4e37, 0.0, 0.0]])
    out = est((ok, torch.ones(1, 4)) if as_tuple else ok, lambda z, rows: ((z - 0.3) ** 2).sum(-1))
    assert torch.isfinite(out.loss).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("magnitude", [3e4, 6e4, 1e37, 1e38, 1e300])
def test_gaussian_sparsemax_estimator_admits_the_locations_its_distribution_admits(dtype,
                                                                                   magnitude):
    """The estimator's range check is the distribution's: |μ| up to finfo.max / 8 of the dtype
    the locations are computed in (float32 for half precision). It used the input's own dtype, so
    float16 locations of 3e4 (finite, fine in float32) were refused although ``GaussianSparsemax``
    takes them; those that are admitted give a finite loss and gradients."""
    if magnitude > torch.finfo(dtype).max:
        pytest.skip("not representable in this dtype")
    loc = torch.tensor([[magnitude, -magnitude, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    try:
        GaussianSparsemax(loc.detach(), torch.ones_like(loc), validate_args=True)
        admitted = True
    except ValueError:
        admitted = False
    est = GaussianSparsemaxEstimator(entropy_coeff=0.1)
    loss_fn = lambda z, rows: ((z.double() - 0.3) ** 2).sum(-1)  # noqa: E731
    if not admitted:
        with pytest.raises(ValueError, match=r"scores.*finfo.max / 8"):
            est(loc, loss_fn)
        return
    out = est(loc, loss_fn)
    out.loss.backward()
    assert torch.isfinite(out.loss).all() and torch.isfinite(loc.grad).all()


@pytest.mark.parametrize("baseline", [None, "self_critic"])
def test_mixed_dirichlet_sampled_regularizers_are_reported_over_all_s_faces(baseline):
    """With the sampled regularizer, the reported entropy and ``logs["kl"]`` are the exact face
    part plus the mean of the Dirichlet part over the S training faces (not the first one, not
    the self-critic's extra face), recomputed here from the same face draws."""
    prior = MixedDirichlet(MaxEntropyFaces(5, form="maxent-reference", dtype=D),
                           torch.ones(5, dtype=D))
    face_scores = torch.randn(4, 5, dtype=D, generator=torch.Generator().manual_seed(1))
    alpha = 0.5 + torch.rand(4, 5, dtype=D, generator=torch.Generator().manual_seed(2))
    est = MixedDirichletEstimator(n_samples=3, baseline=baseline, prior=prior)
    torch.manual_seed(0)
    out = est((face_scores, alpha), CountingLoss(torch.ones(5, dtype=D)))
    q = MixedDirichlet(face_scores, alpha)
    torch.manual_seed(0)
    faces = q.faces.sample((3 + (baseline == "self_critic"),))[:3]  # the estimator's draws
    want_h = q.faces.entropy() + q.dirichlet_entropy(faces).mean(0)
    want_kl = kl_divergence(q.faces, prior.faces) + q.dirichlet_kl(prior, faces).mean(0)
    assert not torch.allclose(q.dirichlet_entropy(faces)[0], q.dirichlet_entropy(faces).mean(0))
    torch.testing.assert_close(out.entropy, want_h)
    torch.testing.assert_close(out.logs["kl"], want_kl.mean())


@pytest.mark.parametrize(("baseline", "n_samples"),
                         [("self_critic", 2), ("leave_one_out", 3), (None, 2)])
def test_mixed_dirichlet_logs_the_mean_baseline(baseline, n_samples):
    """``logs["baseline"]``, the batch mean of the baseline: the loss at the extra draw
    (self-critic; the evaluated latent of weight 0), the mean of the other draws' losses (whose
    average over the draws is the mean loss) for leave-one-out, 0 without one; recomputed here
    from the evaluated latents (no regulariser, so the cost is the loss)."""
    face_scores = torch.randn(4, 5, dtype=D, generator=torch.Generator().manual_seed(3))
    alpha = 0.5 + torch.rand(4, 5, dtype=D, generator=torch.Generator().manual_seed(4))
    w = torch.arange(1.0, 6.0, dtype=D)

    def loss_fn(z, rows):
        return (z * w).sum(-1)

    out = MixedDirichletEstimator(n_samples=n_samples, baseline=baseline)((face_scores, alpha),
                                                                        loss_fn)
    losses = loss_fn(out.latents, out.rows)
    if baseline == "self_critic":
        extra = out.weights == 0
        assert int(extra.sum()) == 4 and out.rows[extra].sort().values.tolist() == [0, 1, 2, 3]
        want = losses[extra].mean()
    elif baseline == "leave_one_out":
        want = losses.mean()
    else:
        want = torch.zeros((), dtype=D)
    assert float(want) != 0.0 or baseline is None
    torch.testing.assert_close(torch.as_tensor(out.logs["baseline"], dtype=D), want)


def test_tuple_scores_of_the_wrong_length_are_named():
    from latentgrad.estimators import GaussianSparsemaxEstimator, MixedDirichletEstimator

    loc = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"pair \(loc, scale\), got a tuple of 3"):
        GaussianSparsemaxEstimator()((loc, loc.exp(), loc), lambda z, rows: z.sum(-1))
    with pytest.raises(TypeError, match=r"tuple \(face_scores, concentration\), got a tuple of 1"):
        MixedDirichletEstimator()((loc,), lambda z, rows: z.sum(-1))


@pytest.mark.parametrize("make", [
    lambda prior: GaussianSparsemaxEstimator(prior=prior),
    lambda prior: MixedDirichletEstimator(prior=prior),
], ids=["gaussian_sparsemax", "mixed_dirichlet"])
def test_prior_like_is_the_prior_in_the_scores_dtype_built_once_per_dtype_and_prior(make):
    prior = MixedDirichlet(MaxEntropyFaces(3), torch.ones(3))
    est = make(prior)
    like = torch.zeros(2, 3, dtype=torch.float64)
    placed = est.prior_like(like)
    assert est.prior_like(like) is placed  # not rebuilt at every step
    assert placed.concentration.dtype == torch.float64
    y = torch.tensor([[0.2, 0.8, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(placed.log_prob(y), prior.log_prob(y.float()).double(),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    assert est.prior_like(like.float()).concentration.dtype == torch.float32
    assert est.prior_like(like) is not None  # float64 placed again, then a new prior is followed
    est.prior = MixedDirichlet(MaxEntropyFaces(3), 2 * torch.ones(3))
    assert torch.equal(est.prior_like(like).concentration, 2 * torch.ones(3, dtype=torch.float64))
    assert make(None).prior_like(like) is None
