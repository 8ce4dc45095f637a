"""The ``signal_game`` task: data generator, game sampler, agents, loss wiring and CLI runs."""

from __future__ import annotations

import json
import pickle
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _profiles import profile_config
from _run_logs import csv_rows
from scipy import stats

from latentgrad.experiments.cli import main
from latentgrad.experiments.config import ConfigError, resolve, to_dict
from latentgrad.experiments.data.files import DataError
from latentgrad.experiments.data.signal_game import (
    FEATURES_FILE,
    LABELS_FILE,
    ConceptFeatures,
    GameBatches,
    load_lazaridou,
    sample_games,
    synthetic_concepts,
)
from latentgrad.experiments.estimators import ESTIMATORS as ESTIMATOR_SPECS
from latentgrad.experiments.tasks import signal_game as task

TINY_VOCAB = 24  # model.vocab_size of the tiny profile
# receiver evaluations per game during training, per estimator (sparsemax is data-dependent)
EXPECTED_CALLS = {
    "softmax": float(TINY_VOCAB),
    "sfe": 1.0,
    "sfe_01": 1.0,
    "sfe_plus": 2.0,
    "nvil": 1.0,
    "gumbel": 1.0,
    "st_gumbel": 1.0,
    "gaussian_sparsemax": 1.0,
    "kd_hard_concrete": 1.0,
}
ESTIMATORS = [*EXPECTED_CALLS, "sparsemax"]


def tiny_model(estimator: str, **overrides) -> tuple[task.SignalGame, task.SignalGameData]:
    torch.manual_seed(0)  # model initialisation and the estimators' draws
    cfg = resolve(task.Config, "signal_game", estimator, 0, {"profile": "tiny", **overrides})
    return task.build_run(to_dict(cfg), None)


def first_batch(data: task.SignalGameData, dtype: torch.dtype = torch.float32):
    x, cands, label = next(iter(data.val_dataloader()))
    return x.to(dtype), cands.to(dtype), label


# ------------------------------------------------------------------------------------ generator


def test_synthetic_concepts_shapes_unit_norm_nonnegative_and_seeded() -> None:
    train, test = synthetic_concepts(num_concepts=7, items_per_concept=5, dim=11, seed=3)
    for split in (train, test):
        assert split.features.shape == (35, 11) and split.features.dtype == torch.float32
        assert split.num_concepts == 7 and split.dim == 11
        assert torch.equal(split.counts, torch.full((7,), 5))
        assert torch.equal(split.offsets, torch.arange(7) * 5)
        assert bool((split.features >= 0).all())
        torch.testing.assert_close(split.features.norm(dim=1), torch.ones(35))
    again, _ = synthetic_concepts(num_concepts=7, items_per_concept=5, dim=11, seed=3)
    other, _ = synthetic_concepts(num_concepts=7, items_per_concept=5, dim=11, seed=4)
    assert torch.equal(train.features, again.features)
    assert not torch.equal(train.features, other.features)
    assert not torch.equal(train.features, test.features)  # independent draws


def test_synthetic_items_cluster_by_concept_in_both_splits() -> None:
    # train and test items come from the same prototypes: a test item's nearest training concept
    # centroid is (almost always) its own concept at low item noise
    train, test = synthetic_concepts(num_concepts=30, items_per_concept=8, dim=64, item_noise=0.3)
    centroids = train.features.view(30, 8, 64).mean(1)
    nearest = (test.features @ centroids.T).argmax(1)
    assert (nearest == torch.arange(30).repeat_interleave(8)).float().mean() > 0.95


def test_item_noise_is_a_difficulty_knob() -> None:
    def within_minus_across(noise: float) -> float:
        data, _ = synthetic_concepts(num_concepts=20, items_per_concept=6, dim=32, item_noise=noise)
        sim = data.features @ data.features.T
        same = torch.arange(20).repeat_interleave(6)
        mask = same[:, None] == same[None, :]
        return float(sim[mask & ~torch.eye(120, dtype=torch.bool)].mean() - sim[~mask].mean())

    assert within_minus_across(0.2) > within_minus_across(2.0) > 0


def test_synthetic_concepts_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_concepts"):
        synthetic_concepts(num_concepts=0)
    with pytest.raises(ValueError, match="item_noise"):
        synthetic_concepts(num_concepts=3, items_per_concept=2, dim=4, item_noise=0.0)


def test_concept_features_from_labels_groups_rows_by_concept() -> None:
    features = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [6.0, 8.0]])
    data = ConceptFeatures.from_labels(features, torch.tensor([7, 2, 7, 7]))
    assert torch.equal(data.counts, torch.tensor([1, 3]))
    assert torch.equal(data.offsets, torch.tensor([0, 1]))
    expected = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.6, 0.8]])
    torch.testing.assert_close(data.features, expected)
    with pytest.raises(ValueError, match="all-zero row"):
        ConceptFeatures.from_labels(torch.zeros(2, 3), torch.tensor([0, 1]))


# -------------------------------------------------------------------------------------- games


def _concept_of(data: ConceptFeatures, items: torch.Tensor) -> torch.Tensor:
    return torch.bucketize(items.contiguous(), data.offsets, right=True) - 1


def test_games_hold_distinct_concepts_and_the_label_points_at_the_target() -> None:
    data = ConceptFeatures.from_labels(torch.rand(60, 5) + 0.1, torch.arange(60) % 17)
    games = sample_games(data, 500, 16, torch.Generator().manual_seed(0))
    assert games.candidates.shape == (500, 16) and games.label.shape == (500,)
    concepts = _concept_of(data, games.candidates)
    assert all(len(set(row.tolist())) == 16 for row in concepts)
    assert torch.equal(games.candidates.gather(1, games.label[:, None]).squeeze(1), games.sender)
    x, cands, label = GameBatches(data, games, 64)[1]
    assert x.shape == (64, 5) and cands.shape == (64, 16, 5)
    torch.testing.assert_close(cands[torch.arange(64), label], x)
    assert len(GameBatches(data, games, 64)) == 8  # 500 games: 7 full batches + 1 partial


def test_target_position_is_uniform_over_the_game() -> None:
    data = ConceptFeatures.from_labels(torch.rand(40, 3) + 0.1, torch.arange(40) % 20)
    games = sample_games(data, 16000, 16, torch.Generator().manual_seed(1))
    counts = torch.bincount(games.label, minlength=16).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3


def test_concepts_and_items_are_uniform_with_unequal_concept_sizes() -> None:
    labels = torch.tensor([0] * 1 + [1] * 2 + [2] * 5 + [3] * 3)
    data = ConceptFeatures.from_labels(torch.rand(11, 2) + 0.1, labels)
    games = sample_games(data, 12000, 2, torch.Generator().manual_seed(2))
    concepts = _concept_of(data, games.sender)
    assert stats.chisquare(torch.bincount(concepts, minlength=4).numpy()).pvalue > 1e-3
    items = games.sender[concepts == 2] - data.offsets[2]  # concept 2 has 5 items
    assert stats.chisquare(torch.bincount(items, minlength=5).numpy()).pvalue > 1e-3


def test_sample_games_is_seeded_and_checks_game_size() -> None:
    data, _ = synthetic_concepts(num_concepts=20, items_per_concept=3, dim=4)
    a = sample_games(data, 10, 16, torch.Generator().manual_seed(5))
    b = sample_games(data, 10, 16, torch.Generator().manual_seed(5))
    assert torch.equal(a.candidates, b.candidates) and torch.equal(a.label, b.label)
    with pytest.raises(ValueError, match="game_size"):
        sample_games(data, 10, 21, torch.Generator())


def test_training_games_are_fresh_per_epoch_and_seeded_by_the_run_seed() -> None:
    _, data = tiny_model("sfe")
    again = task.SignalGameData(data.cfg, seed=0)
    again.setup()
    other = task.SignalGameData(data.cfg, seed=1)
    other.setup()
    first = next(iter(data.train_dataloader()))
    assert torch.equal(first[1], next(iter(again.train_dataloader()))[1])
    assert not torch.equal(first[1], next(iter(other.train_dataloader()))[1])
    assert len(data.train_dataloader()) == 3 and len(data.test_dataloader()) == 2
    assert sum(b[2].shape[0] for b in data.val_dataloader()) == 16


# ----------------------------------------------------------------------------- lazaridou layout


def _write_layout(root: Path, rows: int = 6) -> None:
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        (root / split / FEATURES_FILE).write_bytes(b"not read by the fake h5py")
        labels = ["dog", "cat", "dog", "owl", "cat", "dog"][:rows]
        (root / split / LABELS_FILE).write_bytes(pickle.dumps(labels))


def test_lazaridou_loader_without_h5py_asks_to_install_it(tmp_path: Path, monkeypatch) -> None:
    _write_layout(tmp_path)
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` fail
    with pytest.raises(ImportError, match="pip install h5py"):
        load_lazaridou(tmp_path)


def test_lazaridou_loader_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=FEATURES_FILE):
        load_lazaridou(tmp_path)


def _fake_h5py(monkeypatch, rows: np.ndarray) -> None:
    """An ``h5py`` whose files hold the one dataset ``rows``."""

    class FakeFile(dict):
        def __init__(self, path: Path, mode: str) -> None:
            assert mode == "r" and Path(path).name == FEATURES_FILE
            super().__init__(dataset_1=rows)

        def __enter__(self) -> FakeFile:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setitem(sys.modules, "h5py", types.SimpleNamespace(File=FakeFile))


def test_lazaridou_loader_reads_the_original_layout(tmp_path: Path, monkeypatch) -> None:
    _write_layout(tmp_path)
    rows = np.arange(1, 25, dtype=np.float32).reshape(6, 4)
    _fake_h5py(monkeypatch, rows)
    train, test = load_lazaridou(tmp_path)
    assert torch.equal(train.counts, torch.tensor([3, 2, 1]))  # dog, cat, owl in first-seen order
    normed = torch.from_numpy(rows / np.linalg.norm(rows, axis=1, keepdims=True))
    torch.testing.assert_close(train.features, normed[[0, 2, 5, 1, 4, 3]])
    assert test.dim == 4


def test_lazaridou_format_errors_name_the_file(tmp_path: Path, monkeypatch) -> None:
    _write_layout(tmp_path)
    _fake_h5py(monkeypatch, np.ones((6, 2, 2), dtype=np.float32))
    with pytest.raises(DataError, match=re.escape(
            f"{tmp_path / 'train' / FEATURES_FILE}: expected a (N, F) matrix")):
        load_lazaridou(tmp_path)
    _fake_h5py(monkeypatch, np.ones((5, 4), dtype=np.float32))
    with pytest.raises(DataError, match=re.escape(
            f"{tmp_path / 'train' / LABELS_FILE}: 6 labels for 5 feature rows")):
        load_lazaridou(tmp_path)
    (tmp_path / "train" / LABELS_FILE).write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=re.escape(
            f"{tmp_path / 'train' / LABELS_FILE}: not a pickled list of labels")):
        load_lazaridou(tmp_path)


def test_cli_with_lazaridou_source_and_no_h5py_fails_clearly(tmp_path: Path, monkeypatch) -> None:
    _write_layout(tmp_path / "data")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="pip install h5py"):
        main(["run", "signal_game", "--estimator", "sfe", "--out", str(tmp_path / "runs"),
              "profile=tiny", "data.source=lazaridou", f"data.path={tmp_path / 'data'}"])


# ------------------------------------------------------------------------------------- agents


def test_sender_is_the_reference_architecture() -> None:
    torch.manual_seed(0)
    sender = task.Sender(feature_dim=5, hidden_dim=4, width=3, vocab_size=6, temperature=10.0)
    assert sender.project.bias is None and sender.out.bias is None
    assert sum(p.numel() for p in sender.parameters()) == 5 * 4 + 3 + 3 + 4 * 6
    x = torch.rand(2, 5, dtype=torch.float64)
    sender = sender.double()
    e = x @ sender.project.weight.T
    h = torch.sigmoid(sum(sender.v[c] * torch.sigmoid(sender.w[c] * e) for c in range(3)))
    torch.testing.assert_close(sender(x), h @ sender.out.weight.T / 10.0)


def test_receiver_embeds_one_hot_messages_like_an_embedding_lookup() -> None:
    torch.manual_seed(0)
    receiver = task.Receiver(5, 7, 3, symbol_embedding=True).double()  # F, V, E
    cands = torch.rand(2, 4, 5, dtype=torch.float64)
    tables = receiver.game_tables(cands)
    symbols = torch.tensor([3, 6, 0])
    rows = torch.tensor([1, 0, 1])
    onehot = F.one_hot(symbols, 7).double()
    logp = receiver(tables, onehot, rows)
    lookup = receiver.message.weight.T  # (V, E): row v is Embedding(V, E)(v)
    cand_emb = cands @ receiver.candidates.weight.T
    expected = torch.einsum("nge,ne->ng", cand_emb[rows], lookup[symbols]).log_softmax(-1)
    torch.testing.assert_close(logp, expected)
    perm = torch.tensor([2, 0, 3, 1])  # candidates in another order: scores follow them
    permuted = receiver(receiver.game_tables(cands[:, perm]), onehot, rows)
    torch.testing.assert_close(permuted, logp[:, perm])


def test_receiver_sparse_and_dense_message_paths_agree() -> None:
    torch.manual_seed(1)
    receiver = task.Receiver(5, 7, 3, symbol_embedding=True).double()  # F, V, E
    tables = receiver.game_tables(torch.rand(3, 4, 5, dtype=torch.float64))
    z = torch.rand(6, 7, dtype=torch.float64) * (torch.rand(6, 7) < 0.4)
    z[0] = 0.0  # an all-zero message scores every candidate 0
    rows = torch.tensor([2, 0, 1, 1, 0, 2])
    dense = receiver(tables, z.clone().requires_grad_(), rows)
    sparse = receiver(tables, z, rows)
    torch.testing.assert_close(sparse, dense)
    expected = torch.einsum("ngv,nv->ng", tables[rows], z).log_softmax(-1)
    torch.testing.assert_close(sparse, expected)
    (g_sparse,) = torch.autograd.grad(sparse.sum(), receiver.message.weight, retain_graph=True)
    (g_dense,) = torch.autograd.grad(expected.sum(), receiver.message.weight)
    torch.testing.assert_close(g_sparse, g_dense)


def test_receiver_on_symbol_indices_equals_one_hot_messages_with_gradients() -> None:
    torch.manual_seed(2)
    receiver = task.Receiver(5, 7, 3, symbol_embedding=True).double()  # F, V, E
    tables = receiver.game_tables(torch.rand(3, 4, 5, dtype=torch.float64))
    symbols = torch.tensor([6, 0, 3, 3, 1])
    rows = torch.tensor([2, 0, 1, 0, 2])
    onehot = F.one_hot(symbols, 7).double()
    by_index = receiver(tables, symbols, rows)
    # a lookup is the one-hot row's sum with the zero terms left out: 1.0 * t and 0 + t are exact
    assert torch.equal(by_index, receiver(tables, onehot, rows))
    torch.testing.assert_close(by_index, receiver(tables, onehot.requires_grad_(), rows))
    (g_index,) = torch.autograd.grad(by_index.sum(), receiver.message.weight, retain_graph=True)
    (g_dense,) = torch.autograd.grad(
        torch.einsum("ngv,nv->ng", tables[rows], onehot).log_softmax(-1).sum(),
        receiver.message.weight,
    )
    torch.testing.assert_close(g_index, g_dense)


@pytest.mark.parametrize("symbols", [True, False])
def test_message_embedding_starts_as_the_references(symbols: bool) -> None:
    """Symbol messages: ``Embedding(V, E)``'s N(0, 1) entries; message vectors: ``Linear``'s
    U(±1/√V). The two scales differ by a factor ~28 at V = 256, which decides whether the
    4096-d game leaves chance level early."""
    torch.manual_seed(0)
    vocab = 256
    w = task.Receiver(4, vocab, 256, symbol_embedding=symbols).message.weight.detach()
    if symbols:  # 65,536 N(0, 1) draws: sample mean and std within 0.02 of 0 and 1
        assert abs(float(w.std()) - 1.0) < 0.02 and abs(float(w.mean())) < 0.02
    else:
        assert float(w.abs().max()) <= vocab**-0.5
        expected = (3 * vocab) ** -0.5  # std of U(-b, b) is b / sqrt(3)
        assert abs(float(w.std()) - expected) < 0.05 * expected


@pytest.mark.parametrize(
    "estimator", ["softmax", "sparsemax", "sfe", "sfe_01", "nvil", "gumbel", "gaussian_sparsemax"]
)
def test_symbol_message_estimators_get_the_embedding_initialisation(estimator: str) -> None:
    model, _ = tiny_model(estimator)
    symbols = ESTIMATOR_SPECS[estimator].indices
    assert symbols == (estimator not in ("gumbel", "gaussian_sparsemax"))
    w = model.receiver.message.weight.detach()
    assert (float(w.abs().max()) > TINY_VOCAB**-0.5) == symbols


@pytest.mark.parametrize("estimator", ["sparsemax", "sfe", "nvil", "gumbel"])
def test_discrete_estimators_hand_the_receiver_indices_relaxations_vectors(estimator) -> None:
    model, data = tiny_model(estimator)
    x, cands, label = first_batch(data)
    seen: list[torch.Tensor] = []
    inner = model.game_loss_fn(model.receiver.game_tables(cands), label)

    def spy(z, rows):
        seen.append(z)
        return inner(z, rows)

    model.estimate(model.sender(x), spy, cands)
    z = seen[0]
    if estimator == "gumbel":
        assert z.is_floating_point() and z.shape[-1] == TINY_VOCAB
    else:
        assert z.dtype == torch.long and z.dim() == 1
        assert int(z.min()) >= 0 and int(z.max()) < TINY_VOCAB
    assert float(task.message_nonzeros(z)) == (TINY_VOCAB if estimator == "gumbel" else 1.0)


# -------------------------------------------------------------------------------- loss wiring


def _counting(model: task.SignalGame, calls: list[int], monkeypatch) -> None:
    """Count (and size) the calls of every loss_fn the task hands to its estimator."""
    for name in ("game_loss_fn", "reference_loss_fn"):
        make = getattr(model, name)

        def wrapped(emb, label, make=make):
            inner = make(emb, label)

            def counted(z, rows):
                calls.append(rows.shape[0])
                return inner(z, rows)

            return counted

        monkeypatch.setattr(model, name, wrapped)


def test_softmax_loss_is_the_exact_expected_receiver_nll(monkeypatch) -> None:
    model, data = tiny_model("softmax")
    model = model.double()
    x, cands, label = first_batch(data, torch.float64)
    calls: list[int] = []
    _counting(model, calls, monkeypatch)
    scores = model.sender(x)
    emb = model.receiver.game_tables(cands)
    out = model.estimate(scores, model.game_loss_fn(emb, label), cands)
    b, v = scores.shape
    assert calls == [b * v]  # one receiver call over all (game, message) pairs
    # brute force: every message, one game at a time
    p = scores.softmax(-1)
    eye, zeros = torch.eye(v, dtype=x.dtype), torch.zeros(v, dtype=torch.long)
    nll = torch.stack(
        [-model.receiver(emb[i : i + 1], eye, zeros)[:, label[i]] for i in range(b)]
    )
    torch.testing.assert_close(out.expected_loss, (p * nll).sum(-1))
    out.loss.backward()
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in model.parameters())


def test_reference_reading_of_marginalization_is_the_exact_expected_accuracy() -> None:
    model, data = tiny_model("sparsemax")
    model = model.double().eval()
    x, cands, label = first_batch(data, torch.float64)
    model.sender.out.weight.data.mul_(300.0)  # a sparse sender: support smaller than V
    stats_ = model.evaluate((x, cands, label))
    from latentgrad.mappings import sparsemax

    scores = model.sender(x)
    p = sparsemax(scores)
    b, v = p.shape
    emb = model.receiver.game_tables(cands)
    eye, zeros = torch.eye(v, dtype=x.dtype), torch.zeros(v, dtype=torch.long)
    correct = torch.stack(
        [model.receiver(emb[i : i + 1], eye, zeros).argmax(-1) == label[i] for i in range(b)]
    ).double()
    torch.testing.assert_close(stats_["acc_reference"], (p * correct).sum(-1).mean())
    torch.testing.assert_close(stats_["decoder_calls"], (p > 0).sum(-1).double().mean())
    assert stats_["decoder_calls"] < v
    mode = correct[torch.arange(b), scores.argmax(-1)]
    torch.testing.assert_close(stats_["acc"], mode.mean())


@pytest.mark.parametrize("estimator", ["sfe_01", "sfe_plus"])
def test_zero_one_loss_samples_the_receiver_and_trains_it_by_score_function(estimator: str) -> None:
    model, data = tiny_model(estimator)
    model = model.double()
    x, cands, label = first_batch(data, torch.float64)
    emb = model.receiver.game_tables(cands)
    loss_fn = model.game_loss_fn(emb, label)
    n = 6000
    z = F.one_hot(torch.randint(TINY_VOCAB, (n,)), TINY_VOCAB).double()
    rows = torch.randint(x.shape[0], (n,))
    losses = loss_fn(z, rows)
    assert set(losses.detach().unique().tolist()) <= {-1.0, 0.0}
    # E_a[-1(a = target)] = -r(target | z): the value is the loss of a sampled choice
    r_target = model.receiver(emb, z, rows).exp()[torch.arange(n), label[rows]]
    assert abs(float(losses.mean().detach() + r_target.detach().mean())) < 4 * 0.5 / n**0.5
    losses.mean().backward()  # the zero-valued receiver term carries the receiver's gradient
    assert model.receiver.message.weight.grad.abs().sum() > 0
    assert model.receiver.candidates.weight.grad.abs().sum() > 0


def test_nvil_baseline_averages_the_candidates() -> None:
    model, data = tiny_model("nvil")
    x, cands, _ = first_batch(data)
    net = model.estimator.baseline_net
    assert isinstance(net, task.CandidateAverage)
    torch.testing.assert_close(net(cands), net.net(cands).squeeze(-1).mean(-1))
    assert net(cands).shape == (x.shape[0],)


def test_config_rejects_impossible_settings() -> None:
    with pytest.raises(ConfigError, match=r"model\.loss"):
        tiny_model("sparsemax", model={"loss": "zero_one"})
    with pytest.raises(ConfigError, match="game_size"):
        tiny_model("sfe", data={"game_size": 21})
    with pytest.raises(ConfigError, match="source"):
        tiny_model("sfe", data={"source": "imagenet"})


# ---------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_cli_run_tiny_profile(estimator: str, tmp_path: Path, monkeypatch) -> None:
    calls: list[int] = []
    original = task.SignalGame.game_loss_fn

    def counted(self, emb, label):
        inner = original(self, emb, label)

        def loss_fn(z, rows):
            calls.append(rows.shape[0])
            return inner(z, rows)

        return loss_fn

    monkeypatch.setattr(task.SignalGame, "game_loss_fn", counted)
    code = main(["run", "signal_game", "--estimator", estimator, "--seed", "322",
                 "--out", str(tmp_path), "profile=tiny"])
    assert code == 0
    d = tmp_path / "signal_game" / estimator / "seed322"
    result = json.loads((d / "metrics.json").read_text())
    assert result["global_step"] == 6 and len(calls) == 6  # one loss_fn call per training step
    m = result["metrics"]
    for key in ("test/acc", "test/acc_reference"):
        assert 0.0 <= m[key] <= 1.0
    assert m["test/nll"] > 0
    if estimator == "sparsemax":
        assert 1.0 <= m["decoder_calls"] <= TINY_VOCAB
    else:
        assert m["decoder_calls"] == EXPECTED_CALLS[estimator]
        assert m["test/decoder_calls"] == EXPECTED_CALLS[estimator]
    if estimator in ("gaussian_sparsemax", "kd_hard_concrete"):  # sparse points, exact zeros
        assert 1.0 <= m["test/nonzeros"] <= TINY_VOCAB
    else:
        assert m["test/nonzeros"] == (TINY_VOCAB if estimator == "gumbel" else 1.0)
    rows = csv_rows(d)
    assert sum(1 for r in rows if r.get("val/acc")) == 2  # validation after each epoch
    assert any(r.get("train/decoder_calls") for r in rows)


@pytest.mark.parametrize("estimator", ["sparsemax", "nvil", "gumbel"])
def test_paper_profile_is_the_defaults_and_faithful_only_shortens_training(estimator) -> None:
    defaults, paper, faithful = (
        profile_config("signal_game", estimator, p) for p in (None, "paper", "faithful")
    )
    assert paper == defaults
    assert paper["trainer"]["max_epochs"] == 500 and paper["data"]["batches_per_epoch"] == 100
    assert faithful["trainer"] == {**paper["trainer"], "max_epochs": 200}
    assert {k for k in paper if paper[k] != faithful[k]} == {"trainer"}


@pytest.mark.parametrize("sums_in", ["root", "split"])
def test_lazaridou_label_pickles_are_checked_before_unpickling(tmp_path: Path, monkeypatch,
                                                               sums_in: str) -> None:
    _write_layout(tmp_path)
    listed = f"train/{LABELS_FILE}" if sums_in == "root" else LABELS_FILE
    folder = tmp_path if sums_in == "root" else tmp_path / "train"
    (folder / "SHA256SUMS").write_text(f"{'0' * 64}  {listed}\n")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an unverified pickle was loaded")

    monkeypatch.setattr(pickle, "load", refuse)
    labels = tmp_path / "train" / LABELS_FILE
    with pytest.raises(DataError, match=f"checksum mismatch for {labels}"):
        load_lazaridou(tmp_path)
