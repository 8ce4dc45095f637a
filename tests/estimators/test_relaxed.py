"""Gumbel-Softmax / straight-through and IGR estimators: contract, hard samples, entropies, KLs."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch.distributions import RelaxedBernoulli, RelaxedOneHotCategorical, kl_divergence

import latentgrad as lg
from _references import planar_ref, softmax_pp_ref, sticks_ref
from latentgrad.distributions.igr import IGR, IGRPlanar, IGRStickBreaking, uniform_prior_loc
from latentgrad.estimators import relaxed
from latentgrad.estimators.relaxed import GumbelSoftmax, IGREstimator
from latentgrad.estimators.schedules import Constant, ExponentialDecay, Learnable
from latentgrad.structures.bitvector import BitVector
from latentgrad.structures.categorical import Categorical
from latentgrad.structures.ksubset import KSubset

D = torch.float64


class Recorder:
    """A linear loss ``<c_row, z>`` (default ``c = (0, 1, ..., K−1)``) that records every call."""

    def __init__(self, weights: torch.Tensor | None = None) -> None:
        self.weights = weights
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        self.calls.append((z, rows))
        if self.weights is None:
            w = torch.arange(z.shape[-1], dtype=z.dtype)
        else:
            w = self.weights[rows]
        return (z * w).flatten(1).sum(-1)


def run(est, scores, weights=None, seed=0):
    torch.manual_seed(seed)
    rec = Recorder(weights)
    out = est(scores, rec)
    return out, rec


# ------------------------------------------------------------------------------ GumbelSoftmax


@pytest.mark.parametrize("straight_through", [False, True])
def test_gumbel_softmax_calls_loss_fn_once_with_rows_and_simplex_points(straight_through):
    scores = torch.randn(5, 4, dtype=D, requires_grad=True)
    out, rec = run(GumbelSoftmax(0.5, straight_through=straight_through), scores)
    assert len(rec.calls) == 1
    z, rows = rec.calls[0]
    assert z.shape == (5, 4) and torch.equal(rows, torch.arange(5))
    torch.testing.assert_close(z.sum(-1), torch.ones(5, dtype=D))
    assert out.loss.shape == () and out.expected_loss.shape == (5,)
    assert torch.equal(out.support_size, torch.ones(5, dtype=torch.long))
    out.loss.backward()
    assert torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0


def test_straight_through_forward_is_exact_one_hot_of_the_same_noise():
    scores = torch.randn(64, 6, dtype=D)
    _, soft = run(GumbelSoftmax(0.5), scores, seed=3)
    _, hard = run(GumbelSoftmax(0.5, straight_through=True), scores, seed=3)
    y, h = soft.calls[0][0], hard.calls[0][0]
    assert ((h == 0) | (h == 1)).all() and (h.sum(-1) == 1).all()
    # argmax y = argmax (θ + g): the hard sample is the argmax of the relaxed sample's noise
    assert torch.equal(h.argmax(-1), y.argmax(-1))


def test_straight_through_samples_follow_softmax_not_the_mode():
    torch.manual_seed(0)
    theta = torch.tensor([1.0, 0.0, -0.5], dtype=D)
    scores = theta.expand(20_000, 3)
    _, rec = run(GumbelSoftmax(0.3, straight_through=True), scores)
    freq = rec.calls[0][0].mean(0)
    p = theta.softmax(-1)
    se = (p * (1 - p) / 20_000).sqrt()
    assert ((freq - p).abs() < 4 * se).all()


def test_straight_through_bits_sample_bernoulli_sigmoid_not_the_mode():
    theta = torch.tensor([1.5, -0.5, 0.0], dtype=D)
    scores = theta.expand(20_000, 3)
    est = GumbelSoftmax(0.5, straight_through=True, structure=BitVector(3))
    _, rec = run(est, scores)
    z = rec.calls[0][0]
    assert ((z == 0) | (z == 1)).all()
    p = torch.sigmoid(theta)
    se = (p * (1 - p) / 20_000).sqrt()
    assert ((z.mean(0) - p).abs() < 4 * se).all()


def test_straight_through_gradient_is_the_relaxed_gradient():
    scores = torch.randn(8, 5, dtype=D, requires_grad=True)
    w = torch.randn(8, 5, dtype=D)
    out_st, _ = run(GumbelSoftmax(0.7, straight_through=True), scores, w, seed=1)
    (g_st,) = torch.autograd.grad(out_st.loss, scores)
    out_soft, _ = run(GumbelSoftmax(0.7), scores, w, seed=1)
    (g_soft,) = torch.autograd.grad(out_soft.loss, scores)
    torch.testing.assert_close(g_st, g_soft)
    assert g_st.abs().sum() > 0


def test_categorical_entropy_is_exact_and_enters_the_loss():
    scores = torch.randn(6, 4, dtype=D)
    out, _ = run(GumbelSoftmax(0.5, entropy_coeff=0.3), scores)
    p = scores.softmax(-1)
    torch.testing.assert_close(out.entropy, -(p * p.log()).sum(-1))
    torch.testing.assert_close(out.loss, (out.expected_loss - 0.3 * out.entropy).mean())


def test_relaxed_entropy_is_minus_concrete_log_density_at_the_sample():
    scores = torch.randn(6, 4, dtype=D)
    tau = torch.tensor(0.6, dtype=D)
    out, rec = run(GumbelSoftmax(0.6, kl="relaxed"), scores)
    y = rec.calls[0][0]
    expected = -RelaxedOneHotCategorical(tau, logits=scores).log_prob(y)
    torch.testing.assert_close(out.entropy, expected)
    bits = GumbelSoftmax(0.6, kl="relaxed", structure=BitVector(4))
    out, rec = run(bits, scores)
    y = rec.calls[0][0]
    expected = -RelaxedBernoulli(tau, logits=scores).log_prob(y).sum(-1)
    torch.testing.assert_close(out.entropy, expected)


def test_uniform_prior_kl_categorical_and_relaxed():
    scores = torch.randn(5, 2, 4, dtype=D)
    out, _ = run(GumbelSoftmax(0.5, prior="uniform", kl_coeff=2.0), scores)
    p = scores.softmax(-1)
    kl = (math.log(4) + (p * p.log()).sum(-1)).sum(-1)
    assert out.logs["kl"].item() == pytest.approx(kl.mean().item())
    torch.testing.assert_close(out.loss, (out.expected_loss + 2.0 * kl).mean())
    tau, tau0 = torch.tensor(0.3, dtype=D), torch.tensor(0.5, dtype=D)
    est = GumbelSoftmax(0.3, kl="relaxed", prior="uniform", prior_temperature=0.5)
    out, rec = run(est, scores)
    y = rec.calls[0][0]
    kl = RelaxedOneHotCategorical(tau, logits=scores).log_prob(y) - RelaxedOneHotCategorical(
        tau0, logits=torch.zeros_like(scores)
    ).log_prob(y)
    assert out.logs["kl"].item() == pytest.approx(kl.sum(-1).mean().item(), rel=1e-8)
    bits = GumbelSoftmax(0.3, kl="relaxed", prior="uniform", structure=BitVector(4))
    out, rec = run(bits, scores)
    y = rec.calls[0][0]
    kl = RelaxedBernoulli(tau, logits=scores).log_prob(y) - RelaxedBernoulli(
        tau0, logits=torch.zeros_like(scores)
    ).log_prob(y)
    assert out.logs["kl"].item() == pytest.approx(kl.sum((-1, -2)).mean().item(), rel=1e-8)
    out, _ = run(GumbelSoftmax(0.3, prior="uniform", structure=BitVector(4)), scores)
    q = torch.sigmoid(scores)
    kl = (math.log(2) + q * q.log() + (1 - q) * (1 - q).log()).sum((-1, -2))
    assert out.logs["kl"].item() == pytest.approx(kl.mean().item())


def test_bit_entropy_is_sum_of_binary_entropies():
    scores = torch.randn(5, 3, dtype=D)
    out, rec = run(GumbelSoftmax(0.5, structure=BitVector(3)), scores)
    p = torch.sigmoid(scores)
    expected = -(p * p.log() + (1 - p) * (1 - p).log()).sum(-1)
    torch.testing.assert_close(out.entropy, expected)
    y = rec.calls[0][0]
    assert ((y > 0) & (y < 1)).all()


def test_minus_inf_scores_never_receive_mass():
    scores = torch.tensor([[0.0, float("-inf"), 1.0], [float("-inf"), 2.0, 0.0]], dtype=D)
    for st in (False, True):
        out, rec = run(GumbelSoftmax(0.5, straight_through=st), scores)
        z = rec.calls[0][0]
        assert (z[scores == float("-inf")] == 0).all()
        assert torch.isfinite(out.entropy).all()


def test_several_latent_variables_per_example():
    scores = torch.randn(4, 3, 5, dtype=D, requires_grad=True)
    out, rec = run(GumbelSoftmax(0.5), scores)
    assert rec.calls[0][0].shape == (4, 3, 5)
    p = scores.detach().softmax(-1)
    torch.testing.assert_close(out.entropy, -(p * p.log()).sum((-1, -2)))
    out.loss.backward()
    assert torch.isfinite(scores.grad).all()


def test_schedule_drives_the_temperature_and_learnable_temperature_gets_gradients():
    sched = ExponentialDecay(2.0, 0.1, every=1, floor=0.5)
    est = GumbelSoftmax(sched)
    scores = torch.randn(3, 4)
    out, _ = run(est, scores)
    assert out.logs["temperature"].item() == pytest.approx(2.0)
    est.temperature.step()
    out, _ = run(est, scores)
    assert out.logs["temperature"].item() == pytest.approx(2.0 * math.exp(-0.1))
    assert "temperature.num_steps" in est.state_dict()
    learn = GumbelSoftmax(Learnable(0.8))
    out, _ = run(learn, scores)
    out.loss.backward()
    assert learn.temperature.free.grad is not None and learn.temperature.free.grad != 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_low_temperature_stays_finite(dtype):
    scores = (torch.randn(16, 10) * 5).to(dtype).requires_grad_(True)
    out, _ = run(GumbelSoftmax(0.01, kl="relaxed"), scores)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(scores.grad).all()
    assert out.expected_loss.dtype == dtype


def test_gumbel_softmax_bad_inputs_raise():
    with pytest.raises(ValueError, match="kl"):
        GumbelSoftmax(kl="gaussian")
    with pytest.raises(ValueError, match="SSTEstimator"):
        GumbelSoftmax(structure=KSubset(4, 2))
    with pytest.raises(ValueError, match="BitVector"):
        GumbelSoftmax(structure=BitVector(4, budget=2))
    with pytest.raises(ValueError, match="temperature"):
        GumbelSoftmax(temperature=0.0)
    with pytest.raises(ValueError, match="prior_temperature"):
        GumbelSoftmax(prior="uniform", prior_temperature=-1.0)
    with pytest.raises(ValueError, match="prior"):
        GumbelSoftmax(prior="gaussian")
    est = GumbelSoftmax(structure=Categorical(4))
    with pytest.raises(ValueError, match="last dimension 4"):
        est(torch.zeros(2, 3), Recorder(torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        GumbelSoftmax()(torch.tensor([[0.0, float("nan")]]), Recorder(torch.zeros(1, 2)))
    with pytest.raises(ValueError, match="entirely -inf"):
        GumbelSoftmax()(torch.full((1, 2), float("-inf")), Recorder(torch.zeros(1, 2)))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        GumbelSoftmax()(torch.zeros(3), Recorder(torch.zeros(1, 3)))
    with pytest.raises(TypeError, match="scores"):
        GumbelSoftmax()(torch.zeros(2, 3, dtype=torch.long), Recorder(torch.zeros(2, 3)))


# ------------------------------------------------------------------------------- IGREstimator


def igr_scores(b: int, k1: int, seed: int = 0, latent=()) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(b, *latent, k1, generator=g, dtype=D)
    log_scale = 0.3 * torch.randn(b, *latent, k1, generator=g, dtype=D)
    return torch.stack([loc, log_scale], dim=-2).requires_grad_(True)


@pytest.mark.parametrize("variant", ["I", "SB", "planar"])
@pytest.mark.parametrize("straight_through", [False, True])
def test_igr_estimator_contract_and_gradients(variant, straight_through):
    est = IGREstimator(
        variant, 0.5, straight_through=straight_through, num_categories=5, eps=0.05
    ).double()
    scores = igr_scores(6, 4)
    out, rec = run(est, scores, weights=torch.randn(6, 5, dtype=D))
    assert len(rec.calls) == 1
    z, rows = rec.calls[0]
    assert z.shape == (6, 5) and torch.equal(rows, torch.arange(6))
    torch.testing.assert_close(z.sum(-1), torch.ones(6, dtype=D))
    if straight_through:
        assert ((z == 0) | (z == 1)).all()
    out.loss.backward()
    assert torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0
    for flow in est.flows:
        assert torch.isfinite(flow.u.grad).all()
    if variant == "SB":
        assert 1 <= out.logs["truncation"].item() <= 4
        n = out.logs["truncation"].item()
        assert (z[:, n + 1 :] == 0).all()


def test_igr_straight_through_is_argmax_of_the_same_sample():
    scores = igr_scores(32, 5)
    _, soft = run(IGREstimator("I", 0.5).double(), scores, seed=4)
    _, hard = run(IGREstimator("I", 0.5, straight_through=True).double(), scores, seed=4)
    psi, h = soft.calls[0][0], hard.calls[0][0]
    assert torch.equal(h, torch.nn.functional.one_hot(psi.argmax(-1), 6).to(D))


def test_igr_entropy_is_minus_log_density_at_the_sample():
    scores = igr_scores(5, 3, seed=2)
    out, rec = run(IGREstimator("I", 0.7).double(), scores)
    psi = rec.calls[0][0]
    loc, log_scale = scores.detach().unbind(-2)
    expected = -IGR(loc, log_scale.exp(), 0.7).log_prob(psi)
    torch.testing.assert_close(out.entropy, expected)


def test_igr_kl_to_given_and_uniform_priors_enters_the_loss():
    scores = igr_scores(5, 3, seed=3)
    loc, log_scale = scores.detach().unbind(-2)
    q = IGR(loc, log_scale.exp(), 0.5)
    prior_loc, prior_scale = torch.tensor([0.1, -0.2, 0.3]), 1.5
    est = IGREstimator("I", 0.5, prior=(prior_loc, prior_scale), kl_coeff=0.7).double()
    out, _ = run(est, scores)
    kl = kl_divergence(q, IGR(prior_loc.to(D), prior_scale, 0.5))
    assert out.logs["kl"].item() == pytest.approx(kl.mean().item())
    torch.testing.assert_close(out.loss, (out.expected_loss + 0.7 * kl).mean())
    out, _ = run(IGREstimator("I", 0.5, prior="uniform").double(), scores)
    uniform = IGR(uniform_prior_loc(4, 1.0).expand(3), 1.0, 0.5)
    assert out.logs["kl"].item() == pytest.approx(kl_divergence(q, uniform).mean().item())


def test_igr_sb_kl_and_planar_mc_kl():
    scores = igr_scores(4, 6, seed=5)
    loc, log_scale = scores.detach().unbind(-2)
    est = IGREstimator("SB", 0.5, prior=(0.0, 1.0), eps=0.05).double()
    out, _ = run(est, scores)
    q = IGRStickBreaking(loc, log_scale.exp(), 0.5, eps=0.05)
    prior = IGRStickBreaking(torch.zeros(6, dtype=D), 1.0, 0.5, eps=0.05)
    assert out.logs["kl"].item() == pytest.approx(kl_divergence(q, prior).mean().item())
    planar = IGREstimator("planar", 0.5, prior="uniform", kl="sampled", num_categories=7).double()
    out, _ = run(planar, scores)
    assert torch.isfinite(out.logs["kl"]) and torch.isfinite(out.loss)


def test_igr_sampled_kl_is_the_log_ratio_at_the_sample_passed_to_the_loss():
    scores = igr_scores(6, 3, seed=6)
    loc, log_scale = scores.detach().unbind(-2)
    est = IGREstimator("I", 0.5, prior=(0.2, 1.3), kl="sampled", kl_coeff=0.5).double()
    out, rec = run(est, scores)
    psi = rec.calls[0][0].detach()
    q, p = IGR(loc, log_scale.exp(), 0.5), IGR(torch.full((3,), 0.2, dtype=D), 1.3, 0.5)
    kl = q.log_prob(psi) - p.log_prob(psi)
    assert out.logs["kl"].item() == pytest.approx(kl.mean().item(), rel=1e-8)
    torch.testing.assert_close(out.loss, (out.expected_loss + 0.5 * kl).mean())


def test_igr_several_latent_variables_with_planar_flows_per_variable():
    est = IGREstimator(
        "planar", 0.5, num_categories=4, latent_shape=(3,), prior="uniform", kl="sampled"
    )
    est = est.double()
    assert est.flows[0].u.shape == (3, 3)
    scores = igr_scores(2, 3, latent=(3,))
    out, rec = run(est, scores)
    assert rec.calls[0][0].shape == (2, 3, 4)
    assert out.entropy.shape == (2,)
    out.loss.backward()
    assert torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("variant", ["I", "SB", "planar"])
def test_igr_stl_keeps_the_loss_and_drops_exactly_the_score_term_from_the_gradient(variant):
    """With ``stl=True`` the loss is the same number, and its gradient differs from the ordinary
    one by ``kl_coeff · mean_b ∇ log q(ψ_b)`` at the drawn ψ held fixed (the score term)."""
    kw = {"prior": (0.1, 1.2) if variant != "planar" else "uniform", "kl": "sampled",
          "kl_coeff": 0.7, "num_categories": 5, "eps": 0.05}
    plain = IGREstimator(variant, 0.5, **kw).double()
    stl = IGREstimator(variant, 0.5, stl=True, **kw).double()
    stl.load_state_dict(plain.state_dict())  # the same flows
    weights = torch.randn(4, 5, dtype=D)
    grads, losses = [], []
    for est in (plain, stl):
        scores = igr_scores(4, 4, seed=9)
        out, rec = run(est, scores, weights=weights, seed=3)
        grads.append(torch.autograd.grad(out.loss, scores)[0])
        losses.append(out.loss.detach())
    assert torch.equal(*losses)
    psi = rec.calls[0][0].detach()
    scores = igr_scores(4, 4, seed=9)
    loc, log_scale = scores.unbind(-2)
    if variant == "I":
        q = IGR(loc, log_scale.exp(), 0.5)
    elif variant == "SB":
        q = IGRStickBreaking(loc, log_scale.exp(), 0.5, eps=0.05)
    else:
        q = IGRPlanar(loc, log_scale.exp(), 0.5, stl.flows)
    score_term = torch.autograd.grad(0.7 * q.log_prob(psi).mean(), scores)[0]
    torch.testing.assert_close(grads[0] - grads[1], score_term, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("variant", ["I", "SB", "planar"])
def test_igr_stl_gradient_is_finite_where_the_log_scale_is_below_the_dtypes_range(variant):
    """ξ = −90 in float32: σ is clamped to the smallest normal number and passes no gradient to
    ξ; the path coefficient −ε/σ is kept finite, so no inf · 0 = NaN reaches the scores."""
    est = IGREstimator(variant, 0.5, prior=(0.0, 1.0) if variant != "planar" else "uniform",
                       kl="sampled", stl=True, num_categories=4)
    scores = torch.stack([torch.randn(3, 3), torch.full((3, 3), -90.0)], -2).requires_grad_()
    out, _ = run(est, scores, weights=torch.randn(3, 4))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(scores.grad).all()


def test_igr_estimator_bad_inputs_raise():
    with pytest.raises(ValueError, match="variant"):
        IGREstimator("II")
    with pytest.raises(ValueError, match="num_categories"):
        IGREstimator("planar")
    with pytest.raises(ValueError, match="uniform"):
        IGREstimator("SB", prior="uniform")
    with pytest.raises(ValueError, match="prior"):
        IGREstimator("I", prior="gaussian")
    with pytest.raises(ValueError, match="prior scale"):
        IGREstimator("I", prior=(0.0, -1.0))
    with pytest.raises(ValueError, match="delta"):
        IGREstimator("I", delta=0.0)
    with pytest.raises(ValueError, match="eps"):
        IGREstimator("SB", eps=1.5)
    with pytest.raises(ValueError, match="kl='sampled'"):
        IGREstimator("planar", num_categories=3, prior="uniform")
    with pytest.raises(ValueError, match="kl"):
        IGREstimator("I", kl="exact")
    with pytest.raises(ValueError, match=r"stl=True .* pass kl='sampled' with a prior"):
        IGREstimator("I", prior="uniform", stl=True)  # the closed-form KL has no sampled density
    with pytest.raises(TypeError, match="stl must be a bool"):
        IGREstimator("I", prior="uniform", kl="sampled", stl="yes")
    est = IGREstimator("I")
    with pytest.raises(ValueError, match=r"\(B, \*latent, 2, K-1\)"):
        est(torch.zeros(2, 3, 4), Recorder(torch.zeros(2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        est(torch.full((2, 2, 3), float("nan")), Recorder(torch.zeros(2, 4)))
    planar = IGREstimator("planar", num_categories=4)
    with pytest.raises(ValueError, match="K-1 = 3"):
        planar(torch.zeros(2, 2, 4), Recorder(torch.zeros(2, 5)))


@pytest.mark.parametrize("variant", ["I", "SB", "planar"])
def test_igr_estimator_is_finite_at_low_temperature_in_float32(variant):
    torch.manual_seed(0)
    est = IGREstimator(
        variant, 0.01, prior="uniform" if variant != "SB" else (0.0, 1.0), kl="sampled",
        num_categories=10, eps=0.1,
    )
    scores = (torch.randn(50, 2, 9) * torch.tensor([3.0, 0.5]).view(1, 2, 1)).requires_grad_(True)
    out, _ = run(est, scores)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(out.entropy).all()
    assert torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("dtype, xi", [(torch.float32, 100.0), (torch.float64, 1e4)])
@pytest.mark.parametrize("variant", ["I", "SB", "planar"])
def test_igr_log_scale_beyond_the_dtype_is_refused_and_unchecked_has_zero_gradient(dtype, xi,
                                                                                  variant):
    """exp(ξ) beyond the dtype has no draw there: σ saturated at finfo.max / e gave draws and
    entropies at the wrong scale (or -inf) without an error; now a ValueError naming the scores
    and the bound log(finfo.max) - 1. With checks off σ still saturates, and a saturated σ has
    gradient 0 (the clamp used to act after exp, whose backward took 0 · exp(ξ) = 0 · inf = NaN)."""
    torch.manual_seed(0)
    est = IGREstimator(variant, 0.5, num_categories=5, eps=0.1)
    scores = torch.zeros(3, 2, 4, dtype=dtype)
    scores[:, 1] = xi
    scores.requires_grad_(True)
    limit, got = math.log(torch.finfo(dtype).max) - 1, re.escape(f"{xi:.3g}")
    with pytest.raises(ValueError, match=rf"^scores: the log-scales .* at most log\(finfo.max\) "
                                         rf"- 1 = {limit:.4g} of {dtype}.* got {got}"):
        est(scores, lambda z, rows: z.square().sum(-1))
    with lg.validate_args(False):
        out = est(scores, lambda z, rows: z.square().sum(-1))
    out.loss.backward()
    assert torch.isfinite(out.loss) and not scores.grad.isnan().any()
    assert (scores.grad[:, 1] == 0).all()


def _igr_case(loc, log_scale, dtype=torch.float32):
    """Scores (2, 2, K - 1) of two equal rows: loc and log-scale per coordinate."""
    return torch.tensor([[loc, log_scale]] * 2, dtype=dtype).requires_grad_(True)


@pytest.mark.parametrize(
    ("variant", "kwargs", "scores"),
    [
        ("I", {"prior": "uniform"}, _igr_case([0.0, 0.0], [50.0, 50.0])),
        ("I", {"prior": "uniform", "kl": "sampled"}, _igr_case([0.0, 0.0], [50.0, 50.0])),
        ("I", {"prior": "uniform"}, _igr_case([0.0, 0.0], [400.0, 0.0], D)),
        ("I", {"prior": "uniform"}, _igr_case([0.0, 0.0], [9.0, 0.0], torch.float16)),
        ("I", {}, _igr_case([3e38, -3e38, 0.0], [0.0, 0.0, 0.0])),
        ("I", {"temperature": 0.5}, _igr_case([3e38], [0.0])),
        ("I", {}, _igr_case([0.0, 0.0, 0.0], [-3e38, -3e38, -3e38])),
        ("SB", {}, _igr_case([-3e38, -3e38, -3e38], [0.0, 0.0, 0.0])),
        ("planar", {"num_categories": 4}, _igr_case([3e38, -3e38, 0.0], [0.0, 0.0, 0.0])),
        ("planar", {"num_categories": 4}, _igr_case([3e38] * 3, [3e38] * 3)),
    ],
    ids=["closed-form-kl", "sampled-kl", "closed-form-kl-float64", "closed-form-kl-float16",
         "entropy-loc", "entropy-at-the-clamp", "entropy-log-scale", "sb-entropy", "planar",
         "planar-log-scale"],
)
def test_igr_terms_beyond_the_scores_dtype_are_refused_by_name(variant, kwargs, scores):
    """One-sample entropies and KLs beyond the scores' dtype (float32 unless named): the
    closed-form KL ½ e^{2ξ} at ξ = 50 (1.3e43; float64 ξ = 400, float16 ξ = 9) and the sampled
    one (~ κ²/2, κ ~ e^50); entropies ~ -Σ_k (max λ - λ_k)/τ at locations ±3e38 (K = 2 at
    τ = 0.5: -6e38, which an underflowed log ψ kept at finfo.min rounded to -finfo.max instead)
    or ~ Σ ξ at ξ = -3e38. They gave a loss inf or NaN, an entropy ±inf, NaN or -finfo.max, or
    (planar) "x contains NaN"; now a ValueError naming the scores and the temperature (ξ above
    log(finfo.max) - 1: the log-scale bound)."""
    est = IGREstimator(variant, **kwargs)
    with pytest.raises(ValueError, match=r"^scores: (IGR needs the one-sample entropy .* within "
                                         r".* range .* at temperature .*raise the temperature"
                                         r"|the log-scales)"):
        est(scores, lambda z, rows: z.float().square().sum(-1))


def test_igr_closed_form_kl_method_refuses_a_kl_beyond_the_dtype():
    est = IGREstimator("I", prior="uniform")
    with pytest.raises(ValueError, match=r"^scores: IGR needs the one-sample entropy"):
        est.closed_form_kl(_igr_case([0.0, 0.0], [50.0, 50.0]))


def test_igr_terms_within_the_dtype_are_kept_up_to_its_max():
    """At ξ = 44 the closed-form KL to the uniform prior is ½ Σ (e^{88} + μ₀² - 1 - 88) =
    1.65e38, within float32 (refused at ξ = 50 above): kept, the float64 closed form within a
    few roundings (exp to ~1 ulp, a sum of two terms), with a finite gradient; ``closed_form_kl``
    reports it per example (scores without latent dims raised an IndexError there)."""
    scores = _igr_case([0.0, 0.0], [44.0, 44.0])
    est = IGREstimator("I", prior="uniform")
    out = est(scores, lambda z, rows: z.square().sum(-1))
    torch.testing.assert_close(est.closed_form_kl(scores).mean(), out.logs["kl"])
    out.loss.backward()
    m0 = float(uniform_prior_loc(3, 1.0))
    want = 0.5 * 2 * (math.exp(88.0) + m0**2 - 1 - 88.0)
    assert abs(float(out.logs["kl"]) - want) <= 4 * torch.finfo(torch.float32).eps * want
    assert torch.isfinite(out.loss) and torch.isfinite(out.entropy).all()
    assert torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("variant", ["I", "SB"])
def test_igr_closed_form_kl_uses_the_log_scale_where_its_exp_underflows(dtype, variant):
    """ξ = -120 (float32) or -20 (half) puts σ = exp(ξ) below the dtype's smallest normal number:
    the KL reads log σ = ξ itself, so it matches the float64 closed form within the dtype's
    rounding (clamping σ once put each coordinate's KL term ~ 33 nats (float32) / 10 nats
    (float16) too low)."""
    low = -120.0 if dtype == torch.float32 else -20.0
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(4, 3, generator=g, dtype=D)
    xi = low + torch.rand(4, 3, generator=g, dtype=D)
    scores = torch.stack([loc, xi], -2).to(dtype)
    prior = "uniform" if variant == "I" else (0.0, 1.0)
    out = IGREstimator(variant, 0.5, prior=prior)(scores, lambda z, rows: z.square().sum(-1))
    m, x = scores.double().unbind(-2)
    m0 = uniform_prior_loc(4, 1.0).to(D) if variant == "I" else torch.zeros(3, dtype=D)
    want = 0.5 * ((2 * x).exp() + (m - m0).square() - 1 - 2 * x).sum(-1).mean()
    eps = torch.finfo(dtype).eps
    assert abs(float(out.logs["kl"]) - float(want)) <= 4 * eps * float(want)


@pytest.mark.parametrize("variant", ["I", "SB", "planar"])
def test_igr_estimator_does_not_validate_its_checked_scores_twice(variant, monkeypatch):
    """The estimator checks its scores once (``_check``); the posterior and prior it builds from
    them skip the distributions' argument checks, and the step is the same draw either way."""
    from latentgrad.distributions import _params

    kw = {"prior": (0.3, 1.5), "kl": "sampled"} if variant == "SB" else {"prior": "uniform",
                                                                            "kl": "sampled"}
    if variant == "planar":
        kw["num_categories"] = 4
    torch.manual_seed(0)
    est = IGREstimator(variant, temperature=0.5, eps=0.05, **kw)
    scores = torch.randn(5, 2, 2, 3, dtype=D, requires_grad=True)
    checked: list[str] = []
    real = _params._Independent.check
    monkeypatch.setattr(_params._Independent, "check",
                        lambda self, v: checked.append("param") or real(self, v))
    torch.manual_seed(1)
    out = est(scores, Recorder())
    assert checked == []
    monkeypatch.undo()
    torch.manual_seed(1)
    ref = est(scores, Recorder())  # same seed: the same draw, loss and gradient
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=0)
    with pytest.raises(ValueError, match="NaN"):
        est(torch.full((5, 2, 2, 3), float("nan"), dtype=D), Recorder())


@pytest.mark.parametrize("straight_through", [False, True])
def test_gumbel_softmax_at_the_largest_finite_scores_at_low_temperature(straight_through):
    """(θ + g)/τ overflowed for τ < 1 at θ near finfo.max, and the loss_fn received NaN
    latents; the relaxation is now taken on the row shifted by its maximum. (kl='relaxed' has
    no float32 entropy there: refused, see below.)"""
    big = torch.finfo(torch.float32).max
    scores = torch.tensor([[big, -big, 0.0], [-big, 1.0, big]], requires_grad=True)
    seen = []

    def loss_fn(z, rows):
        seen.append(z.detach())
        return (z * torch.tensor([1.0, 2.0, 3.0])).sum(-1)

    est = GumbelSoftmax(temperature=0.25, straight_through=straight_through)
    out = est(scores, loss_fn)
    out.loss.backward()
    torch.testing.assert_close(seen[0], torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    assert torch.isfinite(out.loss) and torch.isfinite(scores.grad).all()


def test_relaxed_entropy_and_kl_have_the_concrete_log_densitys_value_and_gradient():
    """The entropy and KL terms come from closed forms in the noise; they are the Concrete
    log-densities at the sample, as functions of the scores through the sample too."""
    scores = torch.randn(6, 4, dtype=D, requires_grad=True)
    tau, tau0 = torch.tensor(0.6, dtype=D), torch.tensor(0.4, dtype=D)
    est = GumbelSoftmax(0.6, kl="relaxed", prior="uniform", prior_temperature=0.4,
                        entropy_coeff=0.3)  # fmt: skip
    out, rec = run(est, scores)
    y = rec.calls[0][0]
    log_q = RelaxedOneHotCategorical(tau, logits=scores).log_prob(y)
    log_prior = RelaxedOneHotCategorical(tau0, logits=torch.zeros_like(scores)).log_prob(y)
    value = (y * torch.arange(4, dtype=D)).sum(-1)  # the Recorder's loss, with its graph
    ref = (value + (log_q - log_prior) + 0.3 * log_q).mean()
    torch.testing.assert_close(out.loss, ref)
    (got,) = torch.autograd.grad(out.loss, scores, retain_graph=True)
    (want,) = torch.autograd.grad(ref, scores)
    torch.testing.assert_close(got, want)


def test_relaxed_bit_entropy_and_kl_have_the_binary_concrete_log_densitys_value_and_gradient():
    """The same for Binary Concrete bits: closed forms in the logistic noise, equal in value and
    gradient to the log-densities of the relaxed bits at the sample."""
    scores = torch.randn(6, 4, dtype=D, requires_grad=True)
    tau, tau0 = torch.tensor(0.6, dtype=D), torch.tensor(0.4, dtype=D)
    est = GumbelSoftmax(0.6, kl="relaxed", prior="uniform", prior_temperature=0.4,
                        entropy_coeff=0.3, structure=BitVector(4))  # fmt: skip
    out, rec = run(est, scores)
    y = rec.calls[0][0]
    log_q = RelaxedBernoulli(tau, logits=scores).log_prob(y).sum(-1)
    log_prior = RelaxedBernoulli(tau0, logits=torch.zeros_like(scores)).log_prob(y).sum(-1)
    value = (y * torch.arange(4, dtype=D)).sum(-1)
    ref = (value + (log_q - log_prior) + 0.3 * log_q).mean()
    torch.testing.assert_close(out.loss, ref)
    (got,) = torch.autograd.grad(out.loss, scores, retain_graph=True)
    (want,) = torch.autograd.grad(ref, scores)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("structure", [None, BitVector(4)], ids=["categorical", "bits"])
def test_relaxed_entropy_and_kl_are_finite_at_a_temperature_near_float32s_smallest(structure):
    """Score gaps over τ = 1e-37 made entries of log y round to -inf in float32, and the
    Concrete density inf - inf (bits: v = (θ + L)/τ overflowed, the same); the terms are taken
    in float64 from the noise, and at these scores (|θ| <= 3: terms ~ 1e38) they fit float32."""
    scores = torch.tensor([[1.0, 0.0, 0.0, -1.0], [0.5, -1.0, 1.0, 0.0]]) * 3.0
    scores.requires_grad_(True)
    est = GumbelSoftmax(1e-37, kl="relaxed", prior="uniform", entropy_coeff=0.1,
                        structure=structure)  # fmt: skip
    out, _ = run(est, scores)
    out.loss.backward()
    assert torch.isfinite(out.entropy).all() and torch.isfinite(out.loss)
    assert torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("structure", [None, BitVector(4)], ids=["categorical", "bits"])
@pytest.mark.parametrize(
    ("dtype", "scores", "tau", "prior"),
    [
        (torch.float32, [[3e38, 0.0, -3e38, 5.0]], 0.5, "uniform"),
        (torch.float32, [[3e38, 0.0, -3e38, 5.0]], 0.5, None),
        (torch.float32, [[1.0, 0.0, -1.0, 0.5]], Constant(1e-38), None),
        (D, [[torch.finfo(D).max, -torch.finfo(D).max, 0.0, 5.0]], 0.5, "uniform"),
    ],
    ids=["float32-prior", "float32", "float32-tiny-temperature", "float64-prior"],
)
def test_relaxed_terms_beyond_the_scores_dtype_are_refused_by_name(dtype, scores, tau, prior,
                                                                   structure):
    """The one-sample entropy (~ -Σ_k (max θ - θ_k)/τ; bits -Σ |θ|/τ) beyond the scores' dtype
    (float32: -2.4e39 at the huge scores, ~ -3e38 per unit gap at τ = 1e-38; float64: inf) has
    no value to report in it: a ValueError naming the scores and the temperature, where float32
    returned loss inf and entropy -inf (float64 already raised)."""
    x = torch.tensor(scores, dtype=dtype, requires_grad=True)
    est = GumbelSoftmax(tau, kl="relaxed", prior=prior, structure=structure)
    with pytest.raises(ValueError, match=r"^scores: kl='relaxed' needs .* range; .* at "
                                         r"temperature .*rescale the scores or raise the temp"):
        est(x, Recorder())


@pytest.mark.parametrize("variant", ["I", "SB", "planar"])
def test_igr_estimator_hands_the_loss_latents_in_the_scores_dtype(variant):
    """Half precision is computed in float32 and returned as given; the planar flows' float32
    parameters promoted its latents to float32."""
    kwargs = {"num_categories": 4, "latent_shape": (2,)} if variant == "planar" else {}
    est = IGREstimator(variant, 0.5, **kwargs)
    seen = []

    def loss_fn(z, rows):
        seen.append(z.dtype)
        return z.float().square().flatten(1).sum(-1)

    est(torch.randn(3, 2, 2, 3).half(), loss_fn)
    assert seen == [torch.float16]


@pytest.mark.parametrize(
    "kind", ["categorical", "bits", "igr_i", "igr_sb", "igr_sb_truncated", "igr_planar"]
)
@pytest.mark.parametrize("straight_through", [False, True])
def test_pathwise_gradient_matches_the_relaxation_written_from_its_definition(kind,
                                                                              straight_through):
    """The latents and the gradient of a loss of them are those of the relaxation at the same
    noise, written from the definitions (re-seeded): Concrete ``softmax((θ + g)/τ)`` with
    ``g = -log E``, E ~ Exp(1); Binary Concrete ``σ((θ + log U - log(1 - U))/τ)``; IGR
    ``softmax([λ/τ, log δ])`` with ``λ = κ = μ + σ ε`` (IGR-I), the first K − 1 stick-breaking
    weights ``π_k = σ(κ_k) Π_{j<k} (1 − σ(κ_j))`` (IGR-SB; truncated: the first n* of them, n*
    the most any row needs for its sticks to hold 1 − eps, zeros after ``n* + 1``), or ``κ``
    through two planar flows (IGR-Planar; their parameters get the same gradient too).
    Straight-through: the hard argmax (bits: the sign of the perturbed score) forward, the
    relaxation's Jacobian backward."""
    tau = 0.7
    gen = torch.Generator().manual_seed(3)
    igr = kind.startswith("igr")
    shape = (4, 2, 4) if igr else (4, 5)
    scores = torch.randn(shape, generator=gen, dtype=D).requires_grad_(True)
    w = torch.randn(5, generator=gen, dtype=D)
    if igr:
        variant = {"igr_i": "I", "igr_planar": "planar"}.get(kind, "SB")
        options = {"igr_i": {}, "igr_sb": {"eps": 0.0}, "igr_sb_truncated": {"eps": 0.5},
                   "igr_planar": {"num_categories": 5}}  # fmt: skip
        est = IGREstimator(variant, tau, straight_through=straight_through,
                           **options[kind]).double()  # fmt: skip
        for flow in est.flows:  # away from the flows' initial b = 0
            torch.nn.init.normal_(flow.b, generator=gen)
    else:
        est = GumbelSoftmax(tau, straight_through=straight_through,
                            structure=BitVector(5) if kind == "bits" else None)  # fmt: skip

    def loss_fn(z, rows):
        return (z @ w).sin() + z.square().sum(-1)

    torch.manual_seed(5)
    out = est(scores, loss_fn)
    params = [p for flow in est.flows for p in (flow.u, flow.w, flow.b)] if igr else []
    got = torch.autograd.grad(out.loss, [scores, *params])
    torch.manual_seed(5)
    if kind == "categorical":
        g = -torch.empty(shape, dtype=D).exponential_().log()
        relaxed = torch.exp((scores + g) / tau)
        relaxed = relaxed / relaxed.sum(-1, keepdim=True)
        hard = torch.nn.functional.one_hot((scores + g).argmax(-1), 5).to(D)
    elif kind == "bits":
        u = torch.rand(shape, dtype=D)
        logistic = u.log() - (-u).log1p()
        relaxed = torch.sigmoid((scores + logistic) / tau)
        hard = (scores + logistic > 0).to(D)
    else:
        loc, log_scale = scores.unbind(-2)
        lam = loc + log_scale.exp() * torch.randn(loc.shape, dtype=D)
        if variant == "SB":
            lam = sticks_ref(lam)
            kept = 4
            if kind == "igr_sb_truncated":
                needed = 1 + (lam.detach().cumsum(-1) <= 1 - 0.5).sum(-1)
                kept = min(max(int(needed.max()), 1), 4)
                assert kept < 4  # the case truncates
            lam = lam[:, :kept]
        for flow in est.flows:
            lam = planar_ref(lam, flow)
        relaxed = softmax_pp_ref(lam, tau, 1.0)
        relaxed = torch.nn.functional.pad(relaxed, (0, 5 - relaxed.shape[-1]))
        hard = torch.nn.functional.one_hot(relaxed.argmax(-1), 5).to(D)
    z = hard + relaxed - relaxed.detach() if straight_through else relaxed
    torch.testing.assert_close(out.latents.detach(), z.detach())
    want = torch.autograd.grad(loss_fn(z, None).mean(), [scores, *params])
    for g, h in zip(got, want, strict=True):
        torch.testing.assert_close(g, h)


@pytest.mark.parametrize(
    ("structure", "rows", "tau", "entropy_coeff"),
    [
        (None, [[1e38, 0.0, -1e38]] * 4, 1.0, 0.0),
        (None, [[-1e38, -1e38, 1e38]] * 4, 2.0, 1.0),
        (BitVector(3), [[3e38, 0.0, -3e38]] * 4, 2.0, 0.0),
        (BitVector(3), [[1e38, -1e38, 0.0]] * 4, 2.0, 1.0),
    ],
    ids=["categorical-mean", "categorical-entropy", "bits-mean", "bits-entropy"],
)
def test_relaxed_loss_within_float32_is_finite_when_the_sum_of_its_terms_is_not(
    structure, rows, tau, entropy_coeff, monkeypatch
):
    """float32 scores at ±1e38-3e38: relaxed KLs (5e37-1.5e38 per example) and entropies
    (-1e38 to -3e38) within float32, whose sums over the batch in the mean lie beyond it; loss
    and logged KL were inf where float64 gives 1e38-3e38. The
    float64 terms enter the loss and its mean before rounding: the float64 run at the same
    (fixed) noise, within the final float32 rounding (the loss_fn's part, < 10, is below its
    resolution); gradients (O(1), through y in float32) within a few roundings."""
    noise = torch.randn(len(rows), 3, generator=torch.Generator().manual_seed(0), dtype=D)
    monkeypatch.setattr(relaxed, "draw_noise", lambda shape, like, kind: noise.to(like.dtype))
    monkeypatch.setattr(relaxed, "logistic", lambda shape, like: noise.to(like.dtype))
    got = {}
    for dtype in (torch.float32, D):
        # the same scores in both runs (float32 values): only the output's rounding differs
        scores = torch.tensor(rows, dtype=torch.float32).to(dtype).requires_grad_()
        est = GumbelSoftmax(tau, kl="relaxed", prior="uniform", entropy_coeff=entropy_coeff,
                            structure=structure)  # fmt: skip
        out, _ = run(est, scores)
        (grad,) = torch.autograd.grad(out.loss, scores)
        got[dtype] = (out.loss, out.logs["kl"], grad)
    (loss32, kl32, grad32), (loss64, kl64, grad64) = got[torch.float32], got[D]
    assert loss32.dtype == torch.float32 and abs(loss64) < torch.finfo(torch.float32).max
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(loss32.double(), loss64, rtol=eps, atol=0)
    torch.testing.assert_close(float(kl32), float(kl64), rtol=eps, atol=0)
    torch.testing.assert_close(grad32.double(), grad64, rtol=4 * eps, atol=0)


def test_kd_hard_concrete_is_sparsemax_of_the_stretched_concrete_draw(monkeypatch):
    """K-D Hard Concrete (Farinhas et al. 2022): ``z = sparsemax(λ y)`` with y the Concrete draw
    softmax((θ + g)/τ) of the same noise; pathwise gradient through both; exact zeros where the
    stretched draw falls outside the simplex, which it does with positive probability."""
    from latentgrad.mappings import sparsemax

    scores = torch.randn(64, 6, generator=torch.Generator().manual_seed(0), dtype=D)
    noise = -torch.log(-torch.log(torch.rand(64, 6, generator=torch.Generator().manual_seed(1),
                                             dtype=D)))
    monkeypatch.setattr(relaxed, "draw_noise", lambda shape, like, kind: noise.to(like.dtype))
    est = GumbelSoftmax(0.5, stretch=1.1, eval_mode="sample")
    leaf = scores.clone().requires_grad_()
    out, rec = run(est, leaf)
    want_leaf = scores.clone().requires_grad_()
    want = sparsemax(1.1 * torch.softmax((want_leaf + noise) / 0.5, -1))
    torch.testing.assert_close(rec.calls[0][0].detach(), want.detach())
    assert int((want == 0).sum()) > 0 and torch.allclose(want.sum(-1), torch.ones(64, dtype=D))
    (got,) = torch.autograd.grad(out.loss, leaf)
    (expected,) = torch.autograd.grad((want * torch.arange(6, dtype=D)).sum(-1).mean(), want_leaf)
    torch.testing.assert_close(got, expected)
    assert torch.equal(out.entropy, torch.zeros(64, dtype=D))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"stretch": 1.0}, "> 1"), ({"stretch": float("inf")}, "> 1"),
     ({"stretch": 1.1, "structure": BitVector(3)}, "bits"),
     ({"stretch": 1.1, "straight_through": True}, "straight-through"),
     ({"stretch": 1.1, "eval_mode": "expected"}, "expected"),
     ({"stretch": 1.1, "entropy_coeff": 0.1}, "entropy_coeff"),
     ({"stretch": 1.1, "prior": "uniform"}, "prior")],
)
def test_kd_hard_concrete_refuses_what_it_cannot_compute(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GumbelSoftmax(1.0, **kwargs)
