"""The mixed_vae task: the importance-sampled NLL against the exact log p(x) of a 2-dimensional
latent (continuous: Gaussian, Dirichlet; mixed: Mixed Dirichlet, Gaussian-sparsemax, both in the
direct-sum measure; one-hot: exact sum), the Mixed Dirichlet rate split, the two optimiser groups
with their own clipping, fixed evaluation binarisation, and every estimator end to end on tiny."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from _profiles import profile_config
from torch.distributions import Normal

from latentgrad.experiments.cli import main
from latentgrad.experiments.config import resolve, to_dict
from latentgrad.experiments.tasks import mixed_vae as task

PIXELS = 6


def small_model(estimator: str, k: int = 2, seed: int = 0,
                dropout_gen: float = 0.0) -> task.MixedVAE:
    """A float64 model on 6-pixel images whose decoder depends strongly on z."""
    cfg = resolve(task.Config, "mixed_vae", estimator, 0,
                  {"profile": "tiny", "model": {"latent_dim": k, "dropout_gen": dropout_gen}})
    torch.manual_seed(seed)
    model = task.MixedVAE(to_dict(cfg), PIXELS).double().eval()
    with torch.no_grad():
        next(m for m in model.decoder if isinstance(m, torch.nn.Linear)).weight.mul_(4.0)
    model.cfg.importance.max_decodes = 40000
    return model


def binary_images(n: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, PIXELS), 0.5, dtype=torch.float64), generator=g)


def _lik(model: task.MixedVAE, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """p(x|z) for latents z (P, K) -> (P, B), in chunks."""
    b, out = x.shape[0], []
    with torch.no_grad():
        for part in z.split(4000):
            zz = part.repeat_interleave(b, 0)
            out.append((-model.distortion(x.repeat(part.shape[0], 1), zz)).exp().view(-1, b))
    return torch.cat(out)


def _segment(model: task.MixedVAE, x: torch.Tensor, density) -> torch.Tensor:
    """∫_0^1 density(t) p(x | (t, 1 − t)) dt by the trapezoid rule on 2,001 points."""
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    w = torch.full_like(t, 1 / 2000)
    w[[0, -1]] /= 2
    y = torch.stack([t, 1 - t], 1)
    return ((w * density(t))[:, None] * _lik(model, x, y)).sum(0)


def exact_log_likelihood(model: task.MixedVAE, x: torch.Tensor) -> torch.Tensor:
    name = model.name
    if name == "gaussian":  # a 401 x 401 grid on [-8, 8]^2 with the N(0, I) prior weight
        g = torch.linspace(-8, 8, 401, dtype=torch.float64)
        z = torch.cartesian_prod(g, g)
        w = Normal(0.0, 1.0).log_prob(z).sum(-1).exp() * (16 / 400) ** 2
        return (w[:, None] * _lik(model, x, z)).sum(0).log()
    if name == "dirichlet":  # Dir(1, 1) on the segment: density 1 in y_1
        return _segment(model, x, torch.ones_like).log()
    if name in task.ONE_HOT:
        return (_lik(model, x, torch.eye(2, dtype=torch.float64)).mean(0)).log()
    # mixed prior, the reference's max-entropy face prior at K = 2, N = 0 written out: sizes 1
    # and 2 with Q(n) ∝ 1 / (n − 1)!, i.e. 1/2 each, the two vertices sharing size 1's half;
    # Dir(1, 1) (density 1 in y_1) on the edge
    assert model.cfg.estimator_args.face_prior == "maxent-reference"
    faces = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    p_face = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    # (the likelihood below barely depends on how the vertices and the edge share the mass: the
    # model's face probabilities are checked against the definition directly)
    torch.testing.assert_close(model.prior(x).faces.log_prob(faces).exp(), p_face)
    vertices = (p_face[:2, None] * _lik(model, x, faces[:2])).sum(0)
    return (vertices + p_face[2] * _segment(model, x, torch.ones_like)).log()


@pytest.mark.parametrize("estimator", task.ESTIMATORS)
def test_log_likelihood_matches_the_exact_value_of_a_two_dimensional_latent(
    estimator: str,
) -> None:
    model = small_model(estimator)
    x = binary_images()
    exact = exact_log_likelihood(model, x)
    torch.manual_seed(0)
    got = model.log_likelihood(x, model.scores(x), 32000)
    if estimator in task.ONE_HOT:
        torch.testing.assert_close(got, exact)
    else:  # IS with 32,000 draws: measured standard errors <= 0.015 (Gaussian), <= 0.004 else
        torch.testing.assert_close(got, exact, atol=0.06, rtol=0)


def test_mixed_dirichlet_rate_is_the_face_kl_plus_the_sampled_within_face_kl() -> None:
    from torch.distributions import kl_divergence

    model = small_model("mixed_dirichlet", k=4)
    model.cfg.importance.rate_samples = 4000
    x = torch.bernoulli(torch.full((3, PIXELS), 0.5, dtype=torch.float64))
    scores = model.scores(x)
    torch.manual_seed(0)
    rates = model.rate(scores)
    q, prior = model.posterior(scores), model.prior(x)
    torch.testing.assert_close(rates["rate_face"], kl_divergence(q.faces, prior.faces))
    torch.testing.assert_close(rates["rate"], rates["rate_face"] + rates["rate_dirichlet"])
    exact = kl_divergence(q, prior)  # enumerates the 15 faces
    torch.testing.assert_close(rates["rate"], exact, atol=0.05, rtol=0)


@pytest.mark.parametrize("estimator", ["gaussian", "dirichlet", "softmax"])
def test_closed_form_rates(estimator: str) -> None:
    model = small_model(estimator, k=3)
    x = binary_images()
    scores = model.scores(x)
    rate = model.rate(scores)["rate"]
    if estimator == "softmax":
        p = scores.softmax(-1)
        torch.testing.assert_close(rate, (p * (p.log() + math.log(3))).sum(-1))
    elif estimator == "gaussian":
        mu, sigma = scores
        want = (0.5 * (mu**2 + sigma**2 - 1) - sigma.log()).sum(-1)
        torch.testing.assert_close(rate, want)
    else:
        torch.testing.assert_close(rate, -torch.distributions.Dirichlet(scores).entropy()
                                   - math.log(2))  # KL to Dir(1) = -H - log Γ(3)


def test_gaussian_sparsemax_kl_to_the_prior_is_the_estimators() -> None:
    """Its KL (with the entropy in it) is the estimator's, whose gradient is the score
    function's: −log p(z) in the loss, differentiated pathwise in z, was biased (the prior's
    log-density jumps between faces). The loss is the distortion alone."""
    model = small_model("gaussian_sparsemax")
    x = binary_images()
    y = torch.tensor([[1.0, 0.0], [0.3, 0.7]], dtype=torch.float64)
    rows = torch.tensor([0, 1])
    torch.testing.assert_close(model.loss_fn(x)(y, rows), model.distortion(x, y))
    est = model.estimator
    assert est.kl_coeff == 1.0 and est.entropy_coeff == 0.0
    for like in (x, x.float()):  # the model's prior is the estimator's, in the scores' dtype
        assert model.prior(like) is est.prior_like(like.new_empty(2))
    # built in float64 and rounded once to the dtype in use
    torch.testing.assert_close(model.prior(x).log_prob(y), est.prior.log_prob(y))


def _softmax_step(model: task.MixedVAE, x: torch.Tensor, one_hot: bool) -> list[torch.Tensor]:
    """The softmax marginalization surrogate's gradients, the estimator handing the loss
    category indices (the model's) or one-hot rows (decoded per image)."""
    from latentgrad.estimators.marginalization import SoftmaxMarginalization

    if one_hot:
        model.estimator = SoftmaxMarginalization(model.estimator.entropy_coeff)
    model.zero_grad()
    torch.manual_seed(3)
    model.estimate(model.scores(x), model.loss_fn(x)).loss.backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_softmax_marginalization_decodes_the_one_hot_latents_once_per_batch(
    dropout: float,
) -> None:
    model = small_model("softmax", k=4, dropout_gen=dropout).train()
    x = binary_images(5)
    assert model.shared_decodes() == (dropout == 0)
    shared = _softmax_step(model, x, one_hot=False)
    per_image = _softmax_step(model, x, one_hot=True)
    for got, want in zip(shared, per_image, strict=True):
        torch.testing.assert_close(got, want)
    eye = torch.eye(4, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        want = model.distortion(x.repeat_interleave(4, 0), eye.repeat(5, 1)).view(5, 4)
        torch.testing.assert_close(model.category_distortion(x), want)


def test_two_parameter_groups_and_per_group_clipping() -> None:
    model = small_model("mixed_dirichlet")
    conf = model.configure_optimizers()
    groups = conf["optimizer"].param_groups
    assert [g["lr"] for g in groups] == [1e-4, 2e-4]
    assert [g["weight_decay"] for g in groups] == [0.0, 1e-6]
    gen, inf = model.parameter_groups()
    assert {id(p) for p in gen} == {id(p) for p in model.decoder.parameters()}
    assert len(gen) + len(inf) == len(list(model.parameters()))
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    model.on_before_optimizer_step(conf["optimizer"])
    for params in (gen, inf):
        norm = torch.cat([p.grad.flatten() for p in params]).norm()
        assert abs(float(norm) - 1.0) < 1e-6  # clip_norm = 1 for Mixed Dirichlet


def test_categorical_learning_rates_warm_up_linearly() -> None:
    model = small_model("softmax")
    conf = model.configure_optimizers()
    scheduler = conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    torch.testing.assert_close([g["lr"] for g in conf["optimizer"].param_groups], [1e-7, 1e-6])
    for _ in range(150):
        conf["optimizer"].step()
        scheduler.step()
    torch.testing.assert_close([g["lr"] for g in conf["optimizer"].param_groups], [1e-5, 1e-4])


def test_evaluation_images_are_binarised_once(data_env: Path) -> None:
    cfg = resolve(task.Config, "mixed_vae", "gaussian", 0, {"profile": "tiny"})
    _, data = task.build_run(to_dict(cfg), None)
    _, again = task.build_run(to_dict(cfg), None)
    test = data.images("test")
    assert set(test.unique().tolist()) <= {0, 255}
    assert torch.equal(test, again.images("test"))
    assert len(set(data.images("train").unique().tolist())) > 2  # raw bytes, drawn per step


@pytest.mark.parametrize("estimator", task.ESTIMATORS)
def test_cli_run_tiny_profile(estimator: str, tmp_path: Path, data_env: Path) -> None:
    code = main(["run", "mixed_vae", "--estimator", estimator, "--out", str(tmp_path),
                 "profile=tiny"])
    assert code == 0
    result = json.loads((tmp_path / "mixed_vae" / estimator / "seed0" / "metrics.json")
                        .read_text())
    m = result["metrics"]
    assert result["global_step"] == 4 and m["dataset"] == "mnist"
    assert 0 < m["test/nll"] < 784 * math.log(2) * 1.5
    # the protocol's second report: the test at the weights of the best validation NLL (the
    # validations after steps 2 and 4)
    assert m["best_val_step"] in (2, 4) and 0 < m["test_best/nll"] < 784 * math.log(2) * 1.5
    torch.testing.assert_close(m["test/neg_elbo"], m["test/rate"] + m["test/distortion"],
                               rtol=1e-5, atol=0)
    assert m["decoder_calls"] == {"softmax": 4.0, "mixed_dirichlet": 2.0}.get(estimator, 1.0)
    if estimator == "mixed_dirichlet":
        torch.testing.assert_close(m["test/rate"], m["test/rate_face"] + m["test/rate_dirichlet"],
                                   rtol=1e-5, atol=1e-6)


def test_paper_profile_is_the_defaults_and_faithful_only_validates_less() -> None:
    defaults, paper, faithful = (
        profile_config("mixed_vae", "mixed_dirichlet", p) for p in (None, "paper", "faithful")
    )
    assert paper == defaults and paper["trainer"]["max_epochs"] == 500
    assert faithful["trainer"] == {**paper["trainer"], "check_val_every_n_epoch": 10}
    assert {k for k in paper if paper[k] != faithful[k]} == {"trainer"}
