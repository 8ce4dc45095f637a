"""The ``listops`` task: padding leaves the latent arborescence of the real tokens unchanged, gold
arcs, GNN message direction, and tiny CLI runs of every estimator."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from _profiles import profile_config
from _run_logs import csv_rows

from latentgrad.experiments.cli import main
from latentgrad.experiments.config import resolve, to_dict
from latentgrad.experiments.tasks import listops as task
from latentgrad.structures import Arborescence

CONFIG = Path(task.__file__).parents[1] / "configs" / "listops.yaml"
ESTIMATORS = list(yaml.safe_load(CONFIG.read_text())["estimators"])


@pytest.fixture
def data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LATENTGRAD_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def tiny_model(estimator: str):
    torch.manual_seed(0)
    cfg = resolve(task.Config, "listops", estimator, 0, {"profile": "tiny"})
    return task.build_run(to_dict(cfg), None)


def test_estimators_compare_arborescence_sst_with_baselines() -> None:
    assert {"tree_sst", "tree_st", "edges_sst", "tree_sfe_ema", "tree_nvil"} <= set(ESTIMATORS)


def test_padding_leaves_the_real_tokens_arborescence_unchanged(data_env: Path) -> None:
    model, data = tiny_model("tree_sst")
    tokens, lengths, _, _ = data.sets["train"].tensors
    tokens, lengths = tokens[:4], lengths[:4]
    _, mask, scores = model.encode(tokens, lengths)
    size = model.size
    for tau in (0.2, 1.0, 5.0):
        marg = Arborescence(size, root=0).marginals(scores.double() / tau)
        for b in range(4):
            n = int(lengths[b])
            want = Arborescence(n, root=0).marginals(scores[b, :n, :n].double() / tau)
            torch.testing.assert_close(marg[b, :n, :n], want)
            assert torch.all(marg[b, 0, n:] > 1 - 1e-12)  # padding hangs on the root
    z = model.map_latent(scores)
    assert torch.equal(model.arcs(z, mask).sum((1, 2)), (lengths - 1).to(z.dtype))


def test_gold_arcs_and_arc_mask() -> None:
    heads = torch.tensor([[-1, 0, 0, 2, 2, 0, -1]])
    gold = task.gold_arcs(heads)
    assert gold.sum() == 5 and gold[0, 2, 3] and gold[0, 0, 5] and not gold[0, :, 6].any()
    mask = task.arc_mask(torch.tensor([6]), 7)
    assert mask.sum() == 6 * 5 - 5  # heads 0..5, dependents 1..5, no self-arcs
    assert not mask[0, :, 0].any() and not mask[0, 6].any() and not mask[0, :, 6].any()


def test_gnn_passes_dependents_to_their_head(data_env: Path) -> None:
    model, _ = tiny_model("tree_sst")
    gnn = model.gnn.eval()
    emb = torch.randn(1, 4, 8)
    real = torch.ones(1, 4)
    z = torch.zeros(1, 4, 4)
    z[0, 0, 1] = z[0, 0, 2] = z[0, 2, 3] = 1
    base = gnn(emb, z, real)
    changed = emb.clone()
    changed[0, 3] += 1.0  # token 3 reaches the root through token 2 in 2 rounds
    assert not torch.allclose(gnn(changed, z, real), base)
    cut = z.clone()
    cut[0, 2, 3] = 0  # now token 3 is cut off from the tree
    assert torch.allclose(gnn(changed, cut, real), gnn(emb, cut, real))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_cli_run_tiny_profile(estimator: str, tmp_path: Path, data_env: Path) -> None:
    code = main(["run", "listops", "--estimator", estimator, "--out", str(tmp_path / "runs"),
                 "profile=tiny"])
    assert code == 0
    d = tmp_path / "runs" / "listops" / estimator / "seed0"
    result = json.loads((d / "metrics.json").read_text())
    assert result["global_step"] == 4
    m = result["metrics"]
    assert all(math.isfinite(v) for v in m.values())
    for key in ("acc", "acc_sample", "precision", "recall", "precision_sample"):
        assert 0.0 <= m[f"test/{key}"] <= 1.0
    if estimator.startswith("tree"):
        assert m["test/precision"] == pytest.approx(m["test/recall"])
    assert m["decoder_calls"] == 1.0
    assert sum(1 for r in csv_rows(d) if r.get("val/acc")) == 2


def test_paper_profile_is_the_defaults_and_faithful_only_shortens_training() -> None:
    defaults, paper, faithful = (
        profile_config("listops", "tree_sst", p) for p in (None, "paper", "faithful")
    )
    assert paper == defaults
    assert faithful["trainer"] == {**paper["trainer"], "max_epochs": 2}
    assert {k for k in paper if paper[k] != faithful[k]} == {"trainer"}
