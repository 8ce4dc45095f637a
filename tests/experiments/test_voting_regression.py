"""Voting regression: the GLMs, their readings and metrics, and recovery of a known model."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from latentgrad.distributions import ContinuousCategorical, MixedDirichlet, NonEmptyFaces
from latentgrad.experiments.data.voting import synthetic_voting
from latentgrad.experiments.tasks.voting_regression import (
    ContinuousCategoricalGLM,
    DirichletGLM,
    MixedDirichletGLM,
    share_errors,
)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 400,
        lr: float = 0.1) -> None:
    """The protocol: full batch, Adam (lr 0.1; 0.5 for the continuous categorical), gradient-norm
    clip 1."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        model.loss(x, y).mean().backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def recovery(model: MixedDirichletGLM, data) -> tuple[float, float]:
    """Mean |P̂(f_k = 1|x) − P(f_k = 1|x)| and mean |log α̂_k − log α_k| where P(f_k = 1|x) > ½."""
    x = data.x.float()
    true_marg = NonEmptyFaces(data.x @ data.truth["face_weight"] + data.truth["face_bias"])
    true_marg = true_marg.marginals()
    true_log_conc = data.x @ data.truth["conc_weight"] + data.truth["conc_bias"]
    on = true_marg > 0.5
    face = (model.face_marginals(x).double() - true_marg).abs().mean()
    conc = (model.log_concentration(x).double() - true_log_conc).abs()[on].mean()
    return float(face), float(conc)


def test_mixed_dirichlet_glm_recovers_the_synthetic_model() -> None:
    """Fitted on all 650 synthetic rows with the paper's optimiser (400 steps), the GLM's face
    marginals are within 0.009 of the truth on average and its log-concentrations (on faces the
    truth uses) within 0.05-0.08 (data seeds 1, 2; both errors shrink as 1/sqrt(n): 0.004 and
    0.03-0.04 at n = 2,000). Tolerances: 0.03 and 0.2. Face-score coefficients themselves are
    not identifiable where the truth saturates (s = −6 and s = −9 give the same zeros), and
    concentrations off the face never enter the likelihood, hence the comparison of these
    functions of x rather than of coefficients."""
    torch.manual_seed(0)
    data = synthetic_voting(data_seed=1)
    model = MixedDirichletGLM(data.x.shape[1], 5)
    face0, conc0 = recovery(model, data)
    fit(model, data.x.float(), data.y.float())
    face, conc = recovery(model, data)
    assert face < 0.03 and conc < 0.2
    assert face0 > 0.1 and conc0 > 0.5  # the check fails for an unfitted model


def test_mixed_dirichlet_glm_readings() -> None:
    torch.manual_seed(0)
    model = MixedDirichletGLM(3, 4)
    x = torch.randn(6, 3)
    pred = model.predict(x, 2000)
    dist = model(x)
    # the mode face is the most probable of all 2^K - 1 faces (brute force)
    faces = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)))[1:]
    log_p = dist.faces.log_prob(faces.unsqueeze(1).expand(-1, 6, -1))
    best = faces[log_p.argmax(0)]
    assert torch.equal(pred["face"], best)
    # the most probable mean is the Dirichlet mean on that face
    alpha = dist.concentration
    for i in range(6):
        on = best[i] > 0
        expected = torch.zeros(4)
        expected[on] = alpha[i, on] / alpha[i, on].sum()
        assert torch.allclose(pred["mode"][i], expected, atol=1e-6)
    # the sample mean converges to the exact mean (enumerated over faces): 2,000 draws of
    # values in [0, 1] have a standard error below 0.5 / sqrt(2000) = 0.011
    exact = MixedDirichlet(dist.faces.scores.double(), alpha.double()).mean
    assert torch.allclose(pred["mean"].double(), exact, atol=0.06)


def test_dirichlet_glm_smooths_zeros_and_predicts_its_mean() -> None:
    model = DirichletGLM(2, 3, smoothing=1e-3)
    x, y = torch.randn(4, 2), torch.tensor([[1.0, 0.0, 0.0]] * 4)
    smoothed = (y + 1e-3) / (1 + 3e-3)
    assert torch.allclose(model.loss(x, y), -model(x).log_prob(smoothed))
    pred = model.predict(x, 10)
    assert torch.allclose(pred["mean"], model(x).mean) and torch.equal(pred["mode"], pred["mean"])
    assert bool((pred["face"] == 1).all())


def test_continuous_categorical_glm_has_k_minus_1_free_logits_and_predicts_its_mean() -> None:
    model = ContinuousCategoricalGLM(2, 3, smoothing=1e-3)
    x, y = torch.randn(4, 2), torch.tensor([[1.0, 0.0, 0.0]] * 4)
    dist = model(x)
    assert dist.logits.shape == (4, 3) and bool((dist.logits[:, -1] == 0).all())
    assert torch.allclose(model.loss(x, y), -dist.log_prob((y + 1e-3) / (1 + 3e-3)))
    pred = model.predict(x, 10)
    assert torch.allclose(pred["mean"], dist.mean) and torch.equal(pred["mode"], pred["mean"])
    assert bool((pred["face"] == 1).all())


def test_continuous_categorical_glm_fit_is_the_maximum_likelihood_of_a_known_model() -> None:
    torch.manual_seed(0)
    weight = torch.tensor([[1.5, -1.0, 0.0], [-0.5, 2.0, 1.0]])  # 2 covariates -> 3 free logits
    x = torch.randn(1000, 2)
    truth = ContinuousCategorical(torch.cat([x @ weight + 0.3, torch.zeros(1000, 1)], -1))
    y = truth.sample()
    model = ContinuousCategoricalGLM(2, 4, smoothing=1e-9)
    fit(model, x, y, steps=150)
    # the MLE's log-likelihood exceeds the truth's by chi2(9 parameters) / 2n: 0.0045 nats per
    # row expected, 0.0275 at probability 1e-9
    gain = float(-model.loss(x, y).detach().mean() - truth.log_prob(y).mean())
    assert 0 <= gain < 0.03
    assert (model.predict(x, 1)["mean"] - truth.mean).abs().mean() < 0.03


def test_share_errors_are_per_row_rmse_and_mae() -> None:
    y = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    pred = torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]])
    rmse, mae = share_errors(y, pred)
    assert rmse.tolist() == pytest.approx([(0.18 / 3) ** 0.5, 0.0])
    assert mae.tolist() == pytest.approx([0.2, 0.0])
