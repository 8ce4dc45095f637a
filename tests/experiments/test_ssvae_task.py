"""The ssvae task's pieces: splits, binarisation, exact -ELBO, the unlabelled loss_fn, losses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from latentgrad.experiments.config import parse_overrides, resolve, to_dict
from latentgrad.experiments.losses import sparsemax_loss
from latentgrad.experiments.tasks.ssvae import SSVAE, SSVAEConfig, SSVAEData, build_run

TINY = {"profile": "tiny"}


def tiny_config(estimator: str = "softmax", **extra: object) -> dict:
    overrides = {**TINY, **parse_overrides([f"{k}={v}" for k, v in extra.items()])}
    return to_dict(resolve(SSVAEConfig, "ssvae", estimator, 0, overrides))


def test_split_is_the_seeded_permutation_validation_then_labelled_then_unlabelled(
    data_env: Path,
) -> None:
    from latentgrad.experiments.data.idx import load_idx_dataset

    cfg = resolve(SSVAEConfig, "ssvae", "softmax", 0, TINY)
    data = SSVAEData(cfg.data)
    data.setup()
    xtr, ytr = load_idx_dataset("mnist", "train", data_env)
    perm = torch.randperm(60000, generator=torch.Generator().manual_seed(0))
    n_val, n_lab, n_unl = cfg.data.n_validation, cfg.data.n_labelled, cfg.data.n_unlabelled
    lab_idx = perm[n_val : n_val + n_lab]
    unl_idx = perm[n_val + n_lab : n_val + n_lab + n_unl]
    assert torch.equal(data.labelled.tensors[0], xtr[lab_idx].flatten(1).float() / 255)
    assert torch.equal(data.labelled.tensors[1], ytr[lab_idx])
    assert torch.equal(data.unlabelled.tensors[0], xtr[unl_idx].flatten(1).float() / 255)
    assert torch.equal(data.validation.tensors[1], ytr[perm[:n_val]])
    # evaluation images are binarised once, reproducibly
    val = data.validation.tensors[0]
    assert set(val.unique().tolist()) <= {0.0, 1.0}
    again = SSVAEData(cfg.data)
    again.setup()
    assert torch.equal(again.validation.tensors[0], val)
    assert data.test.tensors[0].shape == (cfg.data.n_test, 784)


def test_full_protocol_split_sizes(data_env: Path) -> None:
    cfg = resolve(SSVAEConfig, "ssvae", "softmax", 0)
    data = SSVAEData(cfg.data)
    data.setup()
    sizes = [len(d) for d in (data.validation, data.labelled, data.unlabelled, data.test)]
    assert sizes == [10000, 5000, 45000, 10000]


def test_reference_split_files_replace_the_permutation(data_env: Path, tmp_path: Path) -> None:
    import numpy as np

    from latentgrad.experiments.data.idx import load_idx_dataset

    xtr, ytr = load_idx_dataset("mnist", "train", data_env)
    idx = {"validation": [5, 7, 9], "labeled_train": [0, 1], "unlabeled_train": [2, 3, 4, 59999]}
    for name, values in idx.items():
        np.save(tmp_path / f"{name}_indx.npy", np.array(values))
    overrides = {**TINY, "data": {"split_dir": str(tmp_path)}}
    cfg = resolve(SSVAEConfig, "ssvae", "softmax", 0, overrides)
    data = SSVAEData(cfg.data)
    data.setup()
    assert torch.equal(data.labelled.tensors[1], ytr[[0, 1]])
    assert torch.equal(data.unlabelled.tensors[0], xtr[[2, 3, 4, 59999]].flatten(1).float() / 255)
    assert torch.equal(data.validation.tensors[1], ytr[[5, 7, 9]])
    np.save(tmp_path / "labeled_train_indx.npy", np.array([0, 2]))  # overlaps the unlabelled set
    with pytest.raises(ValueError, match="overlap"):
        SSVAEData(cfg.data).setup()
    (tmp_path / "validation_indx.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"validation_indx\.npy"):
        SSVAEData(cfg.data).setup()


def test_digits_split_carves_out_the_test_set() -> None:
    cfg = resolve(SSVAEConfig, "ssvae", "softmax", 0, {"profile": "demo"})
    data = SSVAEData(cfg.data)
    data.setup()
    assert [len(d) for d in (data.test, data.validation, data.labelled, data.unlabelled)] == [
        297, 300, 300, 1797 - 897,
    ]  # fmt: skip
    assert data.input_dim == 64


def _deterministic_loss_u(model: SSVAE) -> None:
    """Replace the sampled ℓ_U by a deterministic function of (x, y) for exact comparisons."""
    w = torch.linspace(0.5, 5.0, 10)

    def loss_u(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.sum(-1) + y @ w

    model.loss_u = loss_u  # type: ignore[method-assign]


@pytest.mark.parametrize("estimator", ["softmax", "sparsemax"])
def test_exact_neg_elbo_matches_enumeration(estimator: str, data_env: Path) -> None:
    model, data = build_run(tiny_config(estimator), None)
    _deterministic_loss_u(model)
    x, y = data.validation.tensors
    x, y = x[:8], y[:8]
    with torch.no_grad():
        model.classifier[-1].bias.copy_(torch.linspace(-3, 3, 10))  # make sparsemax sparse
        correct, neg_elbo, _ = model.evaluate(x, y)
        scores = model.classifier(x)
    q = model.q_y(scores)
    for b in range(8):
        expected = math.log(10)
        for k in range(10):
            if q[b, k] > 0:
                onehot = F.one_hot(torch.tensor([k]), 10).float()
                expected += float(q[b, k]) * (
                    float(model.loss_u(x[b : b + 1], onehot)) + math.log(q[b, k])
                )
        assert float(neg_elbo[b]) == pytest.approx(expected, rel=1e-5)
        assert bool(correct[b]) == (int(scores[b].argmax()) == int(y[b]))
    if estimator == "sparsemax":
        assert bool((q == 0).any())  # the 0 log 0 = 0 convention was exercised


def test_unlabelled_loss_fn_gets_one_hot_rows_and_estimator_support(data_env: Path) -> None:
    model, data = build_run(tiny_config("softmax"), None)
    seen = {}

    def spy(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen["x"], seen["y"] = x, y
        return x.sum(-1) * 0 + y.argmax(-1).to(x.dtype)

    model.loss_u = spy  # type: ignore[method-assign]
    xu = data.unlabelled.tensors[0][:5]
    xl, yl = data.labelled.tensors[0][:5], data.labelled.tensors[1][:5]
    model.trainer = None  # type: ignore[assignment]
    batch = {"unlabelled": [xu], "labelled": [xl, yl]}
    model.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    model.log = lambda *a, **k: None  # type: ignore[method-assign]
    model.training_step(batch, 0)
    assert seen["y"].shape == (50, 10) and torch.equal(seen["y"].sum(-1), torch.ones(50))
    assert set(seen["x"].unique().tolist()) <= {0.0, 1.0}  # dynamically binarised
    assert model.decoder_calls_count == 5 and model.decoder_calls_sum == 50


def test_loss_u_is_bce_plus_gaussian_kl(data_env: Path) -> None:
    model, _ = build_run(tiny_config(), None)
    x = torch.bernoulli(torch.full((4, 784), 0.3))
    y = F.one_hot(torch.arange(4), 10).float()
    torch.manual_seed(0)
    got = model.loss_u(x, y)
    torch.manual_seed(0)
    mu, log_sigma = model.encoder(torch.cat([x, y], -1)).chunk(2, -1)
    h = mu + log_sigma.exp() * torch.randn_like(mu)
    p = torch.sigmoid(model.decoder(torch.cat([h, y], -1)))
    bce = -(x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    q = torch.distributions.Normal(mu, log_sigma.exp())
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(got, bce + kl, rtol=1e-4)


def test_sparsemax_loss_is_fenchel_young_with_gradient_p_minus_onehot() -> None:
    from latentgrad.mappings import sparsemax

    torch.manual_seed(0)
    theta = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (6,))
    loss = sparsemax_loss(theta, y)
    p = sparsemax(theta.detach(), dim=-1)
    onehot = F.one_hot(y, 5).double()
    # L = Ω*(θ) + Ω(e_y) - θ_y with Ω(p) = ½||p||²: Ω*(θ) = <θ, p> - ½||p||²
    reference = (
        (theta.detach() * p).sum(-1)
        - 0.5 * (p * p).sum(-1)
        + 0.5
        - (theta.detach() * onehot).sum(-1)
    )
    assert torch.allclose(loss.detach(), reference)
    assert bool((loss >= -1e-12).all())
    loss.sum().backward()
    assert torch.allclose(theta.grad, p - onehot)
    big = theta.detach().clone()
    big[torch.arange(6), y] += 100.0  # confidently right: zero loss
    assert torch.allclose(sparsemax_loss(big, y), torch.zeros(6, dtype=torch.float64))


def _main_phase_step(model: SSVAE, xl: torch.Tensor, yl: torch.Tensor, xu: torch.Tensor):
    """One main-phase ``training_step`` outside a Trainer; returns (loss, logged values)."""
    logged: dict[str, torch.Tensor] = {}
    model.trainer = None  # type: ignore[assignment]
    model.log_dict = lambda d, **k: logged.update(d)  # type: ignore[method-assign]
    model.log = lambda *a, **k: None  # type: ignore[method-assign]
    loss = model.training_step({"unlabelled": [xu], "labelled": [xl, yl]}, 0)
    return loss, logged


@pytest.mark.parametrize("estimator", ["softmax", "sparsemax"])
def test_main_phase_loss_is_labelled_plus_weighted_unlabelled_neg_elbo(
    estimator: str, data_env: Path
) -> None:
    """Step loss = mean_l[ℓ_U(x, y) + CE] + w · mean_u[Σ_y q(y|x) ℓ_U(x, y) - H(q(y|x))]:
    the classification term is there with weight 1, the entropy enters once, as a bonus, with
    coefficient 1 (sparsemax runs: Fenchel-Young loss, sparse q)."""
    model, data = build_run(tiny_config(estimator, **{"optim.unlabelled_weight": 7.0}), None)
    _deterministic_loss_u(model)
    x, y = data.validation.tensors  # already 0/1: the dynamic binarisation keeps them as they are
    xl, yl, xu = x[:6], y[:6], x[6:14]
    with torch.no_grad():
        model.classifier[-1].bias.copy_(torch.linspace(-3, 3, 10))  # make sparsemax sparse
    loss, logged = _main_phase_step(model, xl, yl, xu)

    eye = torch.eye(10)
    with torch.no_grad():
        sl, su = model.classifier(xl).double(), model.classifier(xu).double()
    if estimator == "sparsemax":
        from latentgrad.mappings import sparsemax

        supervised, q = sparsemax_loss(sl, yl), sparsemax(su, dim=-1)
    else:
        supervised, q = F.cross_entropy(sl, yl, reduction="none"), su.softmax(-1)
    labelled = (model.loss_u(xl, eye[yl]).double() + supervised).mean()
    losses_u = torch.stack([model.loss_u(xu, eye[k].expand(8, 10)) for k in range(10)], -1)
    entropy = -torch.where(q > 0, q * q.log(), torch.zeros_like(q)).sum(-1)
    unlabelled = ((q * losses_u.double()).sum(-1) - entropy).mean()
    assert float(logged["train/labelled"].detach()) == pytest.approx(float(labelled), rel=1e-5)
    assert float(logged["train/unlabelled"].detach()) == pytest.approx(float(unlabelled), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(labelled + 7.0 * unlabelled), rel=1e-5)
    if estimator == "sparsemax":
        assert bool((q == 0).any())


def test_unlabelled_objective_pulls_q_to_the_generative_posterior() -> None:
    """Why accuracy can drop after the warm start (module docstring): per unlabelled x,
    ``Σ_y q(y) ℓ_U(x, y) - H(q) = KL(q || p) - log Σ_y exp(-ℓ_U(x, y))`` with
    ``p(y|x) ∝ exp(-ℓ_U(x, y))``, so minimising it drives q(y|x) to the generative posterior,
    whatever the true label, and a confident correct q moves to ``argmin_y ℓ_U``."""
    from latentgrad.estimators.marginalization import SoftmaxMarginalization

    torch.manual_seed(0)
    est = SoftmaxMarginalization(entropy_coeff=1.0)
    losses = 100.0 + 3.0 * torch.randn(16, 10, dtype=torch.float64)
    scores = torch.randn(16, 10, dtype=torch.float64)
    out = est(scores, lambda z, rows: losses[rows, z.argmax(-1)])
    q, p = scores.softmax(-1), (-losses).softmax(-1)
    kl = (q * (q.log() - p.log())).sum(-1)
    identity = kl - torch.logsumexp(-losses, -1)
    assert float(out.loss) == pytest.approx(float(identity.mean()), rel=1e-12)

    truth = torch.tensor([int(losses[b].argsort()[5]) for b in range(16)])  # not argmin ℓ_U
    free = torch.full((16, 10), -5.0, dtype=torch.float64)
    free[torch.arange(16), truth] = 5.0  # a confident, correct classifier
    free.requires_grad_(True)
    opt = torch.optim.Adam([free], lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        est(free, lambda z, rows: losses[rows, z.argmax(-1)]).loss.backward()
        opt.step()
    assert torch.equal(free.argmax(-1), losses.argmin(-1))
    assert torch.allclose(free.detach().softmax(-1), p, atol=1e-2)


def test_evaluate_reports_the_generative_classifier_accuracy(data_env: Path) -> None:
    model, data = build_run(tiny_config(), None)
    _deterministic_loss_u(model)  # ℓ_U increases with the class index: argmin_y ℓ_U = 0
    x, y = data.validation.tensors
    _, _, gen_correct = model.evaluate(x, y)
    assert torch.equal(gen_correct, (y == 0).float())


class _StubTrainer:
    """The attributes of a Trainer that the warm-start hooks read."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.current_epoch = 0
        self.sanity_checking = False
        self.is_global_zero = True
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.optimizers = [optimizer]


def test_warm_start_restores_the_best_epoch_into_the_trained_modules(
    data_env: Path, tmp_path: Path
) -> None:
    """The best-validation warm-start weights are copied into the very parameters the main-phase
    optimiser updates (not into a copy), Adam's moments are reset, lr/weight decay switch."""
    cfg = tiny_config("nvil", **{"optim.warmstart_epochs": 2, "trainer.max_epochs": 3})
    model, _ = build_run(cfg, str(tmp_path))
    opt = model.configure_optimizers()
    stub = _StubTrainer(opt)
    model.trainer = stub  # type: ignore[assignment]
    params = {name: p for name, p in model.named_parameters()}
    assert any(name.startswith("estimator.") for name in params)  # the NVIL baseline MLP
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in params.values()
    }

    stub.callback_metrics["val/acc"] = torch.tensor(0.5)
    model.on_validation_epoch_end()  # epoch 0: the best so far
    best = {name: p.detach().clone() for name, p in params.items()}
    for p in params.values():  # epoch 1: training moves every weight, validation is worse
        p.grad = torch.ones_like(p)
    opt.step()
    stub.current_epoch, stub.callback_metrics["val/acc"] = 1, torch.tensor(0.25)
    model.on_validation_epoch_end()
    assert not torch.equal(params["classifier.0.weight"], best["classifier.0.weight"])

    stub.current_epoch = 2  # first main-phase epoch
    model.on_train_epoch_start()
    for name, p in model.named_parameters():
        assert p is params[name] and torch.equal(p, best[name]), name
    assert len(opt.state) == 0
    assert all(g["lr"] == 1e-3 and g["weight_decay"] == 1e-5 for g in opt.param_groups)
    saved = torch.load(tmp_path / "warmstart.ckpt", weights_only=True)
    assert saved["epoch"] == 0 and saved["val_acc"] == pytest.approx(0.5)
    assert torch.equal(saved["state_dict"]["classifier.0.weight"], best["classifier.0.weight"])


def test_warm_start_validation_logs_only_the_accuracy_it_selects_by(
    data_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the warm start, validation computes the classifier's accuracy and nothing else (no
    K-fold -ELBO enumeration, no test pass); the main phase logs all three metrics."""
    cfg = tiny_config(**{"optim.warmstart_epochs": 1, "trainer.max_epochs": 2})
    model, data = build_run(cfg, None)
    model.trainer = _StubTrainer(model.configure_optimizers())  # type: ignore[assignment]
    logged: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(model, "log", lambda name, value, **kw: logged.__setitem__(name, value))
    x, y = data.validation.tensors
    with torch.no_grad():
        model.validation_step((x, y), 0, dataloader_idx=0)
        model.validation_step((x, y), 0, dataloader_idx=1)
    expected = (model.classifier(x).argmax(-1) == y).float().mean()
    assert logged.keys() == {"val/acc"} and torch.equal(logged["val/acc"], expected)

    model.trainer.current_epoch = 1  # main phase
    with torch.no_grad():
        model.validation_step((x, y), 0, dataloader_idx=1)
    assert logged.keys() >= {"test_epoch/acc", "test_epoch/acc_generative", "test_epoch/neg_elbo"}
