"""The ``graph_layout`` task: latent layouts, NRI rollout, objective pieces and tiny CLI runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from _profiles import profile_config
from _run_logs import csv_rows
from torch import Tensor

from latentgrad.experiments.cli import main
from latentgrad.experiments.config import ConfigError, resolve, to_dict
from latentgrad.experiments.tasks import graph_layout as task
from latentgrad.experiments.tasks.structured import (
    posterior_kl,
    precision_recall,
    undirected,
)
from latentgrad.structures import SpanningTree

CONFIG = Path(task.__file__).parents[1] / "configs" / "graph_layout.yaml"
ESTIMATORS = list(yaml.safe_load(CONFIG.read_text())["estimators"])
TINY_N = 5  # data.num_vertices of the tiny profile


@pytest.fixture
def data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LATENTGRAD_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def tiny_model(estimator: str, **overrides):
    torch.manual_seed(0)
    cfg = resolve(task.Config, "graph_layout", estimator, 0, {"profile": "tiny", **overrides})
    return task.build_run(to_dict(cfg), None)


def test_estimators_cover_every_latent_and_the_paper_baselines() -> None:
    assert {"edges_sst", "edges_st", "subset_sst", "subset_st", "tree_sst", "tree_st"} <= set(
        ESTIMATORS
    )
    assert {"tree_sfe_ema", "tree_sfe_batch", "tree_sfe_multi", "tree_nvil", "tree_sparsemap"} <= (
        set(ESTIMATORS)
    )


def test_a_categorical_estimator_is_rejected(data_env: Path) -> None:
    with pytest.raises(ConfigError, match="has no estimator 'sfe'"):
        tiny_model("sfe")


def test_positions_are_scaled_to_the_training_range(data_env: Path) -> None:
    _, data = tiny_model("tree_sst")
    x = data.sets["train"].tensors[0]
    assert x.shape == (16, TINY_N, 4, 2)
    torch.testing.assert_close(x.min(), torch.tensor(-1.0))
    torch.testing.assert_close(x.max(), torch.tensor(1.0))


def test_tree_and_subset_layouts_give_the_same_edge_weights(data_env: Path) -> None:
    tree_model, data = tiny_model("tree_sst")
    subset_model, _ = tiny_model("subset_sst")
    adj = data.sets["train"].tensors[1][:6]
    i, j = torch.triu_indices(TINY_N, TINY_N, offset=1)
    subset = adj[:, i, j]
    torch.testing.assert_close(tree_model.edge_weights(adj), subset_model.edge_weights(subset))
    assert torch.equal(subset_model.adjacency(subset), adj)
    x = data.sets["train"].tensors[0][:6]
    tree_model.eval()
    scores = tree_model.scores(x)
    torch.testing.assert_close(scores, scores.mT)
    assert scores.shape == (6, TINY_N, TINY_N)


def test_decoder_rollout_feeds_true_frames_every_prediction_steps(data_env: Path) -> None:
    model, data = tiny_model("tree_sst")
    x = data.sets["train"].tensors[0][:3]  # (3, n, 4, 2)
    types = torch.rand(3, TINY_N * (TINY_N - 1), 2)
    dec = model.decoder
    one_step = dec(x, types, 1)
    for t in range(3):
        torch.testing.assert_close(one_step[:, :, t], dec.step(x[:, :, t], types))
    rollout = dec(x, types, 3)
    cur = x[:, :, 0]
    for t in range(3):
        cur = dec.step(cur, types)
        torch.testing.assert_close(rollout[:, :, t], cur)
    two = dec(x, types, 2)  # true frames 0 and 2 start the rollouts, the second one cut at T-1
    assert two.shape == (3, TINY_N, 3, 2)
    torch.testing.assert_close(two[:, :, 2], dec.step(x[:, :, 2], types))
    torch.testing.assert_close(two[:, :, 1], dec.step(dec.step(x[:, :, 0], types), types))


@pytest.mark.parametrize("estimator", ["tree_sst", "edges_st", "tree_sparsemap"])
def test_validation_computes_the_same_metrics_without_the_map_readings(
    estimator: str, data_env: Path
) -> None:
    model, data = tiny_model(estimator)
    model.eval()
    batch = tuple(t[:8] for t in data.sets["valid"].tensors)
    torch.manual_seed(1)
    full = model.evaluate(batch)
    torch.manual_seed(1)
    part = model.evaluate(batch, modes=False)
    assert set(part) == {k for k in full if not k.endswith("_mode")}
    for key, value in part.items():
        torch.testing.assert_close(value, full[key])


def test_nll_of_several_structures_per_example_is_decoded_in_blocks_of_the_batch(
    data_env: Path,
) -> None:
    model, data = tiny_model("tree_sfe_multi")
    model.double()
    x = data.sets["train"].tensors[0][:4].double()
    tree = SpanningTree(TINY_N)
    scores = torch.randn(4, TINY_N, TINY_N, dtype=torch.float64)
    rows = torch.arange(4).repeat(3)[:-1]  # 11 rows: 2 full blocks of 4 and one of 3
    z = tree.sample(scores + scores.mT)[rows]
    xs = x[rows]
    pred = model.decoder(xs, model.edge_weights(z), 2)  # all rows in one pass
    variance = model.cfg.model.variance
    want = (pred - xs[:, :, 1:]).square().flatten(1).sum(-1) / (2 * variance * TINY_N)
    torch.testing.assert_close(model.nll_fn(x, 2)(z, rows), want)


def per_edge(graph: task.Graph, h: Tensor, *extra: Tensor) -> Tensor:
    """The concatenation ``cat[h_sender, h_receiver, *extra]`` of every directed edge."""
    return torch.cat([h[:, graph.send], h[:, graph.recv], *extra], dim=-1)


@pytest.mark.parametrize("with_extra", [False, True])
def test_edge_linear_is_the_linear_map_of_the_concatenated_edge_features(with_extra: bool) -> None:
    torch.manual_seed(0)
    graph, n, f = task.Graph(4), 4, 3
    h = torch.randn(2, n, f, dtype=torch.float64)
    extra = (torch.randn(2, n * (n - 1), 5, dtype=torch.float64),) if with_extra else ()
    linear = torch.nn.Linear(2 * f + 5 * with_extra, 6, dtype=torch.float64)
    torch.testing.assert_close(
        graph.edge_linear(linear, h, *extra), linear(per_edge(graph, h, *extra))
    )


def test_encoder_on_edges_equals_the_mlps_on_concatenated_edge_features() -> None:
    """NRI's encoder as written in Kipf et al. (2018): each edge MLP reads the concatenation."""
    torch.manual_seed(0)
    graph = task.Graph(5)
    enc = task.NRIEncoder(graph, 8, 7, 1).double()
    x = torch.randn(3, 5, 4, 2, dtype=torch.float64)
    for train in (True, False):
        enc.train(train)
        e = enc.mlp2(per_edge(graph, enc.mlp1(x.flatten(2))))
        h = enc.mlp3(graph.to_nodes(e, mean=True))
        want = enc.head(enc.mlp4(per_edge(graph, h, e)))
        torch.testing.assert_close(enc(x), want)


def test_decoder_messages_read_the_concatenated_positions_of_sender_and_receiver() -> None:
    torch.manual_seed(0)
    graph = task.Graph(4)
    dec = task.NRIDecoder(graph, 6).double()
    x = torch.randn(2, 4, 2, dtype=torch.float64)
    types = torch.rand(2, 12, 2, dtype=torch.float64)
    pre = per_edge(graph, x)
    msg = sum(net(pre) * types[..., k : k + 1] for k, net in enumerate(dec.messages))
    want = x + dec.out(torch.cat([x, graph.to_nodes(msg, mean=False)], dim=-1))
    torch.testing.assert_close(dec.step(x, types), want)


@pytest.mark.parametrize("hard", [True, False])
def test_nonzero_messages_equal_the_dense_ones_with_their_parameter_gradients(hard: bool) -> None:
    # hard types (a spanning tree's indicators) or soft ones with a quarter exactly zero
    torch.manual_seed(0)
    n = 5
    graph = task.Graph(n)
    dec = task.NRIDecoder(graph, 6).double()
    x = torch.randn(3, n, 2, dtype=torch.float64)
    on = torch.rand(3, n * (n - 1), dtype=torch.float64)
    on = (on < 0.3).double() if hard else on.masked_fill(on < 0.25, 0.0)
    types = torch.stack([1 - on, on], -1)
    results = []
    for messages in (dec.dense_messages, dec.nonzero_messages):
        dec.zero_grad()
        agg = messages(x, types)
        agg.square().sum().backward()
        results.append((agg.detach(), *(p.grad.clone() for p in dec.messages.parameters())))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want)


def test_decoder_steps_take_the_dense_messages_where_the_types_need_a_gradient() -> None:
    torch.manual_seed(0)
    graph = task.Graph(4)
    dec = task.NRIDecoder(graph, 6).double()
    x = torch.randn(2, 4, 2, dtype=torch.float64)
    types = torch.rand(2, 12, 2, dtype=torch.float64)
    types = types.masked_fill(types < 0.3, 0.0).requires_grad_()
    (grad,) = torch.autograd.grad(dec.step(x, types).sum(), types)
    # every weight, zeros included (a straight-through gradient), through its type's message
    assert bool((types == 0).any()) and grad.abs().min() > 0
    with torch.no_grad():
        torch.testing.assert_close(dec.step(x, types), dec.step(x, types.detach()))


def test_gibbs_kl_to_the_uniform_prior_matches_enumeration() -> None:
    tree = SpanningTree(4)
    theta = torch.randn(2, 4, 4, dtype=torch.float64)
    theta = (theta + theta.mT) / 2
    z = tree.enumerate()  # (16, 4, 4)
    logp = tree.log_prob(theta[:, None], z[None])  # (2, 16)
    want = (logp.exp() * (logp + math.log(16))).sum(-1)
    torch.testing.assert_close(posterior_kl("gibbs", tree, theta), want)


def test_perturbed_kl_counts_each_undirected_edge_once() -> None:
    tree = SpanningTree(4)
    theta = torch.randn(3, 4, 4, dtype=torch.float64)
    theta = (theta + theta.mT) / 2
    i, j = torch.triu_indices(4, 4, offset=1)
    d = theta[:, i, j]
    want = (d + torch.expm1(-d)).sum(-1)
    torch.testing.assert_close(posterior_kl("perturbed", tree, theta), want)
    with pytest.raises(ValueError, match="entropy"):
        posterior_kl("sparse", tree, theta)


def test_undirected_edges_use_either_direction_and_micro_precision_recall() -> None:
    directed = torch.zeros(1, 3, 3)
    directed[0, 0, 1] = 1  # 0 -> 1 only
    directed[0, 2, 1] = directed[0, 1, 2] = 1
    assert undirected(directed).tolist() == [[True, False, True]]
    gold = torch.tensor([[True, True, False]])
    p, r = precision_recall(undirected(directed), gold)
    assert (p.item(), r.item()) == (0.5, 0.5)
    p, r = precision_recall(torch.zeros(1, 3, dtype=torch.bool), gold)
    assert (p.item(), r.item()) == (0.0, 0.0)


def test_best_weights_keep_the_best_validation_elbo_and_restore_it() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    best = task.BestWeights(("0.",))
    for step, elbos in ((10, [-5.0, -3.0]), (20, [-1.0, -2.0]), (30, [-9.0])):
        for value in elbos:
            best.add(torch.tensor(value), 4)
        if step == 20:
            kept = net[0].weight.detach().clone()
        best.update(net, step)
        with torch.no_grad():
            net[0].weight.add_(1.0)
    assert (best.value, best.step) == (-1.5, 20)
    assert set(best.weights) == {"0.weight", "0.bias"}
    restored = task.BestWeights(("0.",))
    restored.load(best.state())
    restored.restore(net)
    torch.testing.assert_close(net[0].weight, kept)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_cli_run_tiny_profile(estimator: str, tmp_path: Path, data_env: Path) -> None:
    code = main(["run", "graph_layout", "--estimator", estimator, "--out", str(tmp_path / "runs"),
                 "profile=tiny"])
    assert code == 0
    d = tmp_path / "runs" / "graph_layout" / estimator / "seed0"
    result = json.loads((d / "metrics.json").read_text())
    assert result["global_step"] == 4
    m = result["metrics"]
    assert all(math.isfinite(v) for v in m.values())
    assert m["test/elbo"] == pytest.approx(-(m["test/nll"] + m["test/kl"]), rel=1e-5)
    assert m["test/kl"] >= 0 and m["test/nll"] > 0
    for key in ("precision", "recall", "precision_mode", "recall_mode", "edge_acc"):
        assert 0.0 <= m[f"test/{key}"] <= 1.0
    if not estimator.startswith("edges"):  # n - 1 predicted and n - 1 true edges
        assert m["test/precision"] == pytest.approx(m["test/recall"])
        assert m["test/precision_mode"] == pytest.approx(m["test/recall_mode"])
    expected_calls = {"tree_sfe_multi": 2.0}.get(estimator, 1.0)
    if estimator == "tree_sparsemap":
        assert 1.0 <= m["decoder_calls"] <= TINY_N ** (TINY_N - 2)
    else:
        assert m["decoder_calls"] == expected_calls
    assert sum(1 for r in csv_rows(d) if r.get("val/elbo")) == 2  # validation after each epoch
    assert m["best_step"] in (2, 4)  # the test used the weights of the better validation ELBO
    # the generated data were cached once and reused by this run's later stages
    assert len(list(data_env.glob("graph_layout/*.npz"))) == 1


def test_tree_sst_learns_the_true_edges_given_a_decoder_that_uses_them(data_env: Path) -> None:
    """The ELBO's gradient through the tree SST reaches the encoder with the right sign: with a
    decoder trained on the true trees, a few dozen encoder steps of the task's training loss lift
    the edge precision of the MAP tree from chance (5 of 15 pairs) to well above it."""
    torch.manual_seed(0)
    overrides = {
        "profile": "tiny",
        "data": {"num_vertices": 6, "num_frames": 10, "num_train": 512, "num_valid": 128},
        "model": {"hidden": 16, "prediction_steps": 1},
        "estimator_args": {"temperature": 1.0},
    }
    cfg = resolve(task.Config, "graph_layout", "tree_sst", 0, overrides)
    model, data = task.build_run(to_dict(cfg), None)
    model.log_dict = lambda *args, **kwargs: None  # no Trainer attached
    x, adj = data.sets["train"].tensors
    vx, vadj = data.sets["valid"].tensors
    gen = torch.Generator().manual_seed(0)

    def batch() -> Tensor:
        return torch.randint(0, x.shape[0], (32,), generator=gen)

    def precision() -> float:
        model.eval()
        with torch.no_grad():
            tree = model.map_latent(model.scores(vx))
        model.train()
        return float(precision_recall(undirected(tree), undirected(vadj))[0])

    opt = torch.optim.Adam(model.decoder.parameters(), lr=3e-3)
    for _ in range(150):
        rows = batch()
        loss = model.nll_fn(x[rows], 1)(adj[rows], torch.arange(32)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    before = precision()
    opt = torch.optim.Adam(model.encoder.parameters(), lr=3e-3)
    for step in range(40):
        rows = batch()
        loss = model.training_step((x[rows], adj[rows]), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert before < 0.5 and precision() > 0.75


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_paper_profiles_are_the_defaults_and_faithful_ones_only_shorten_the_main_phase() -> None:
    def config(profile: str | None) -> dict:
        return _flat(profile_config("graph_layout", "tree_sst", profile, seed=42))

    defaults, paper, faithful = config(None), config("paper"), config("faithful")
    assert paper == defaults and paper["trainer.max_steps"] == 50_000
    assert {k for k in paper if paper[k] != faithful[k]} == {"trainer.max_steps"}
    assert faithful["trainer.max_steps"] == 5_000
    t20, faithful_t20 = config("paper_t20"), config("faithful_t20")
    assert {k for k in paper if paper[k] != t20[k]} == {"data.num_frames", "model.prediction_steps"}
    assert {k for k in t20 if t20[k] != faithful_t20[k]} == {"trainer.max_steps"}
