"""The ``l2x`` task: metrics on hand-made explainers, and tiny CLI runs of every subset
relaxation on the synthetic sets and on review files in the BeerAdvocate layout."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import yaml
from _profiles import profile_config

from latentgrad.experiments.cli import main
from latentgrad.experiments.config import resolve, to_dict
from latentgrad.experiments.data.l2x import DATASETS
from latentgrad.experiments.tasks import l2x as task

CONFIG = Path(task.__file__).parents[1] / "configs" / "l2x.yaml"
ESTIMATORS = list(yaml.safe_load(CONFIG.read_text())["estimators"])


def tiny_model(estimator: str, **data):
    torch.manual_seed(0)
    cfg = resolve(task.Config, "l2x", estimator, 0, {"profile": "tiny", "data": data})
    return task.build_run(to_dict(cfg), None)


def test_estimators_cover_the_papers_subset_relaxations() -> None:
    assert {"l2x", "softsub", "subset_sst", "corr_subset_sst"} <= set(ESTIMATORS)
    assert {"l2x_st", "softsub_st", "subset_st", "corr_subset_st"} <= set(ESTIMATORS)


def test_metrics_of_an_oracle_explainer_are_perfect(monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = tiny_model("subset_sst", dataset="switch")
    x, probs, relevant = data.sets["valid"].tensors
    oracle = relevant.float() * 10 + torch.arange(10.0) * 0.01  # relevant first
    monkeypatch.setattr(model, "scores", lambda batch: (oracle, oracle))
    model.eval()
    stats = model.evaluate((x, probs, relevant))
    assert stats["precision"] == 1.0
    assert stats["median_rank"] == 3.0  # k = 5 relevant features at ranks 1..5
    reverse = -oracle
    monkeypatch.setattr(model, "scores", lambda batch: (reverse, reverse))
    stats = model.evaluate((x, probs, relevant))
    assert stats["precision"] == 0.0 and stats["median_rank"] == 8.0  # ranks 6..10


def test_review_metrics_of_an_oracle_explainer(monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = tiny_model("subset_sst", source="beer_substitute", k=5, max_length=72)
    tokens, lengths, rating, relevant = data.sets["test"].tensors
    position = torch.arange(tokens.shape[1]) * 1e-3
    oracle = relevant.float() * 10 - position  # the aroma sentence, from its first word
    monkeypatch.setattr(model, "scores", lambda batch: (oracle, oracle))
    model.eval()
    batch = (tokens, lengths, rating, relevant)
    best = (relevant.sum(-1).clamp_max(5) / 5).mean()  # 1: every span has >= 5 words
    assert model.evaluate(batch)["precision"] == pytest.approx(float(best), abs=1e-6)
    outside = (~relevant).float() * 10 - position  # selects the review's first other words
    monkeypatch.setattr(model, "scores", lambda batch: (outside, outside))
    assert model.evaluate(batch)["precision"] == 0.0


@pytest.mark.parametrize("estimator", ["l2x", "softsub", "subset_sst", "corr_subset_sst"])
def test_padding_words_get_no_weight(estimator: str) -> None:
    model, data = tiny_model(estimator, source="beer_substitute", k=5, max_length=72)
    batch = data.sets["train"].tensors
    pad = torch.arange(72) >= batch[1][:, None]
    assert bool(pad.any())  # reviews are shorter than 72 words
    seen = []

    def loss(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        seen.append(z.detach())
        return z.sum(-1)

    scores, select = model.scores(batch)
    model.estimate(scores, loss)
    (z,) = seen  # the relaxed k-hot vectors the predictor would see
    assert float(z[pad].abs().max()) < 1e-6 and bool((select[pad] < select[~pad].min()).all())


def test_k_defaults_to_the_number_of_relevant_features() -> None:
    for dataset, k in (("xor", 2), ("orange_skin", 4), ("switch", 5)):
        model, _ = tiny_model("l2x", dataset=dataset)
        assert model.k == k
    model, _ = tiny_model("l2x", dataset="xor", k=3)
    assert model.k == 3


CELLS = [(est, "orange_skin") for est in ESTIMATORS] + [
    (est, dataset)
    for dataset in DATASETS
    if dataset != "orange_skin"
    for est in ("subset_sst", "subset_st")
]


@pytest.mark.parametrize(("estimator", "dataset"), CELLS)
def test_cli_run_tiny_profile_synthetic(estimator: str, dataset: str, tmp_path: Path) -> None:
    code = main(["run", "l2x", "--estimator", estimator, "--out", str(tmp_path), "profile=tiny",
                 f"data.dataset={dataset}"])
    assert code == 0
    result = json.loads((tmp_path / "l2x" / estimator / "seed0" / "metrics.json").read_text())
    m = result["metrics"]
    assert result["global_step"] == 8 and m["dataset"] == dataset
    assert all(math.isfinite(v) for v in m.values() if not isinstance(v, str))
    assert 0 <= m["test/precision"] <= 1 and 0 <= m["test/acc"] <= 1
    k = DATASETS[dataset]  # relevant features among 10: median rank within [(k+1)/2, 10-(k-1)/2]
    assert (k + 1) / 2 <= m["test/median_rank"] <= 10 - (k - 1) / 2


@pytest.mark.parametrize(("k", "estimator"), [(5, "l2x_st"), (10, "subset_sst"),
                                              (15, "corr_subset_st")])
def test_cli_run_tiny_profile_generated_reviews(k: int, estimator: str, tmp_path: Path) -> None:
    code = main(["run", "l2x", "--estimator", estimator, "--out", str(tmp_path), "profile=tiny",
                 "data.source=beer_substitute", f"data.k={k}"])
    assert code == 0
    result = json.loads((tmp_path / "l2x" / estimator / "seed0" / "metrics.json").read_text())
    m = result["metrics"]
    assert m["dataset"] == "beer-substitute"
    assert math.isfinite(m["test/mse"]) and m["test/mse"] >= 0
    assert 0 <= m["test/precision"] <= 1


def _write_beer(folder: Path) -> None:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(30)]
    folder.mkdir(parents=True)
    (folder / "review+wiki.filtered.200.txt").write_text(
        "".join(f"{w} {rng.random():.3f} {rng.random():.3f}\n" for w in words)
    )

    def review() -> list[str]:
        return rng.choices(words, k=rng.randint(3, 16))

    for name, n in (("train", 40), ("heldout", 10)):
        lines = [f"0.1 {rng.random():.2f} 0.3 0.4 0.5\t{' '.join(review())}\n" for _ in range(n)]
        (folder / f"reviews.aspect1.{name}.txt").write_text("".join(lines))
    records = []
    for _ in range(12):
        tokens = review()
        records.append({"x": tokens, "y": [0.1, rng.random(), 0.3], "0": [], "1": [[0, 2]],
                        "2": []})
    (folder / "annotations.json").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.parametrize("estimator", ["l2x", "corr_subset_st"])
def test_cli_run_tiny_profile_reviews(estimator: str, tmp_path: Path) -> None:
    _write_beer(tmp_path / "beer")
    code = main(["run", "l2x", "--estimator", estimator, "--out", str(tmp_path / "runs"),
                 "profile=tiny", "data.source=beer", f"data.path={tmp_path / 'beer'}",
                 "data.k=3"])
    assert code == 0
    result = json.loads(
        (tmp_path / "runs" / "l2x" / estimator / "seed0" / "metrics.json").read_text()
    )
    m = result["metrics"]
    assert m["dataset"] == "beer"
    assert m["test/mse"] >= 0 and 0 <= m["test/precision"] <= 1
    assert math.isfinite(m["test/mse"])


def test_paper_profile_is_chen_et_al_s_protocol() -> None:
    def config(profile: str | None) -> dict:
        return profile_config("l2x", "subset_sst", profile)

    paper = config("paper")
    assert paper == config(None)
    assert (paper["data"]["num_train"], paper["data"]["num_valid"]) == (10**6, 10**5)
    assert (paper["data"]["batch_size"], paper["trainer"]["max_epochs"]) == (1000, 1)
    assert paper["optim"]["lr"] == 1e-3
    assert paper["optim"]["weight_decay"] == 2e-3  # Chen et al.'s L2 penalty 1e-3


@pytest.mark.parametrize("source", ["beer", "beer_substitute"])
def test_reviews_default_to_batch_100_without_weight_decay(source: str) -> None:
    cfg = resolve(task.Config, "l2x", "l2x", 0, {"data": {"source": source}})
    assert (cfg.data.batch_size, cfg.optim.weight_decay) == (100, 0.0)
    chosen = {"data": {"source": source, "batch_size": 7}, "optim": {"weight_decay": 0.5}}
    cfg = resolve(task.Config, "l2x", "l2x", 0, chosen)
    assert (cfg.data.batch_size, cfg.optim.weight_decay) == (7, 0.5)
    with pytest.raises(ValueError, match="weight_decay"):
        resolve(task.Config, "l2x", "l2x", 0, {"optim": {"weight_decay": -1.0}})
