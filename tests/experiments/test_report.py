"""``latentgrad report`` on fixture runs: numbers, CSV, Markdown and PNG plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latentgrad.experiments.cli import main
from latentgrad.experiments.report import mean_se, metric_label, read_curves

FIXTURE = {  # estimator -> per-seed (acc, neg_elbo, decoder_calls)
    "softmax": [(0.90, 100.0, 10.0), (0.92, 102.0, 10.0), (0.94, 101.0, 10.0)],
    "sfe": [(0.50, 120.0, 1.0), (0.60, 124.0, 1.0)],
}


def make_runs(root: Path, warmstart: int | None = None) -> None:
    for est, seeds in FIXTURE.items():
        for seed, (acc, elbo, calls) in enumerate(seeds):
            d = root / "ssvae" / est / f"seed{seed}"
            (d / "csv" / "version_0").mkdir(parents=True)
            if warmstart is not None:
                (d / "config.yaml").write_text(f"optim:\n  warmstart_epochs: {warmstart}\n")
            metrics = {"test/acc": acc, "test/neg_elbo": elbo, "decoder_calls": calls}
            result = {
                "task": "ssvae",
                "estimator": est,
                "seed": seed,
                "profile": "cpu",
                "metrics": metrics,
            }
            (d / "metrics.json").write_text(json.dumps(result))
            with open(d / "csv" / "version_0" / "metrics.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["epoch", "step", "test_epoch/neg_elbo", "test_epoch/acc"])
                for epoch in range(3):
                    w.writerow(
                        [epoch, epoch * 10, elbo + 10 * (2 - epoch), acc - 0.1 * (2 - epoch)]
                    )


def test_mean_and_standard_error() -> None:
    m, se = mean_se([1.0, 2.0, 3.0])
    assert m == 2.0 and se == pytest.approx(1.0 / math.sqrt(3))
    assert math.isnan(mean_se([5.0])[1])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=12))
def test_mean_se_matches_scipy_sem(values: list[float]) -> None:
    import numpy as np
    from scipy import stats

    m, se = mean_se(values)
    assert m == pytest.approx(float(np.mean(values)), abs=1e-6)
    assert se == pytest.approx(float(stats.sem(values)), rel=1e-6, abs=1e-6)


def test_report_writes_tables_with_mean_and_se_and_plots(tmp_path: Path) -> None:
    make_runs(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    acc_m, acc_se = mean_se([0.90, 0.92, 0.94])
    assert f"| softmax | 3 (0,1,2) | {acc_m:.4g} ± {acc_se:.2g} | 101 ± 0.58 | 10 ± 0 |" in md
    assert "| sfe | 2 (0,1) | 0.55 ± 0.05 | 122 ± 2 | 1 ± 0 |" in md
    with open(tmp_path / "report.csv", newline="") as fh:
        rows = {r["estimator"]: r for r in csv.DictReader(fh)}
    assert float(rows["sfe"]["test/neg_elbo mean"]) == pytest.approx(122.0)
    assert float(rows["sfe"]["test/neg_elbo se"]) == pytest.approx(2.0)
    assert rows["softmax"]["seeds"] == "3"
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == [
        "curve_ssvae_cpu_test_epoch_acc.png",
        "curve_ssvae_cpu_test_epoch_neg_elbo.png",
        "ssvae_cpu_test_acc_vs_decoder_calls.png",
        "ssvae_cpu_test_neg_elbo_vs_decoder_calls.png",
    ]
    for name in pngs:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md


def test_report_gives_the_cpu_hours_per_run_from_the_run_records(tmp_path: Path) -> None:
    """Mean CPU-hours per run over the seeds from run.json's compute totals; a lower bound (≥)
    when a seed lacks them or an attempt was not timed; a dash when no seed has them."""
    make_runs(tmp_path)
    for seed, (hours, untimed) in enumerate([(1.0, 0), (2.0, 0), (3.0, 0)]):
        compute = {"cpu_hours": hours, "wall_hours": hours, "attempts_not_timed": untimed}
        (tmp_path / "ssvae" / "softmax" / f"seed{seed}" / "run.json").write_text(
            json.dumps({"compute": compute}))
    compute = {"cpu_hours": 0.5, "wall_hours": 0.6, "attempts_not_timed": 1}
    (tmp_path / "ssvae" / "sfe" / "seed0" / "run.json").write_text(json.dumps({"compute": compute}))
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "| CPU-hours / run |" in md
    assert "| 10 ± 0 | 2 |" in md  # softmax: every attempt of its three seeds timed
    assert "| 1 ± 0 | ≥ 0.5 |" in md  # sfe: one seed untimed, the other with an untimed attempt
    with open(tmp_path / "report.csv", newline="") as fh:
        rows = {r["estimator"]: r for r in csv.DictReader(fh)}
    assert float(rows["softmax"]["cpu_hours mean"]) == 2.0
    assert rows["softmax"]["cpu_hours complete"] == "True"
    assert rows["sfe"]["cpu_hours complete"] == "False"
    for seed in range(3):
        (tmp_path / "ssvae" / "softmax" / f"seed{seed}" / "run.json").unlink()
    assert main(["report", str(tmp_path)]) == 0
    assert "| 10 ± 0 | — |" in (tmp_path / "report.md").read_text()


def test_curves_of_a_resumed_run_replace_the_overlapping_rows(tmp_path: Path) -> None:
    for version, steps in ((0, [0, 10, 20, 30]), (1, [20, 30, 40])):
        d = tmp_path / "csv" / f"version_{version}"
        d.mkdir(parents=True)
        rows = "\n".join(f"{s // 10},{s},{version}" for s in steps)
        (d / "metrics.csv").write_text("epoch,step,v\n" + rows + "\n")
    got = [(r["step"], r["v"]) for r in read_curves(tmp_path)]
    assert got == [(0, 0), (10, 0), (20, 1), (30, 1), (40, 1)]


@pytest.mark.parametrize("damage", ["cut number", "bytes"])
def test_a_damaged_csv_log_is_named_and_a_stray_version_folder_ignored(
        tmp_path: Path, damage: str) -> None:
    """A cut row (a run killed mid-write), non-UTF-8 bytes or a folder csv/version_x gave
    tracebacks (could not convert string to float, UnicodeDecodeError, int())."""
    good = tmp_path / "csv" / "version_0"
    good.mkdir(parents=True)
    (good / "metrics.csv").write_text("epoch,step,v\n0,0,1.5\n")
    (tmp_path / "csv" / "version_x").mkdir()
    assert [r["v"] for r in read_curves(tmp_path)] == [1.5]
    bad = tmp_path / "csv" / "version_1"
    bad.mkdir()
    body = b"epoch,step,v\n0,5,1.2e-\n" if damage == "cut number" else b"epoch,step,v\n\xff\xfe\n"
    (bad / "metrics.csv").write_bytes(body)
    from latentgrad.experiments.config import ConfigError

    with pytest.raises(ConfigError, match=r"version_1/metrics\.csv is not a valid CSV log"):
        read_curves(tmp_path)


def test_report_without_runs_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Every figure the report saves, by file name, captured before it is closed."""
    from matplotlib.figure import Figure

    saved: dict[str, object] = {}
    real_savefig = Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        saved[Path(path).name] = fig
        return real_savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def test_report_figures_read_at_a_glance(tmp_path: Path, figures: dict) -> None:
    make_runs(tmp_path, warmstart=1)
    assert main(["report", str(tmp_path)]) == 0
    assert len(figures) == 4
    for name, fig in figures.items():
        (ax,) = fig.axes
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert {"softmax", "sfe"} <= set(legend), name
        assert "/" not in ax.get_ylabel() and "_" not in ax.get_ylabel(), ax.get_ylabel()
        if name.startswith("curve_"):
            assert ax.get_xlabel() == "epoch"
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert all(float(t).is_integer() for t in ticks), ticks
            assert "band: ± 1 standard error over seeds" in legend
            assert "end of the 1-epoch warm start" in legend
        else:
            assert ax.get_xscale() == "log"
            assert ax.get_xlabel() == "decoder calls per example (log scale)"
            assert "standard error" in ax.get_ylabel()
            caps = {"_", "|", "None", "", None}  # error-bar caps
            markers = {line.get_marker() for line in ax.get_lines()} - caps
            assert len(markers) == len(FIXTURE), "each estimator has its own marker"
    acc = figures["curve_ssvae_cpu_test_epoch_acc.png"].axes[0]
    assert acc.get_ylabel() == "test accuracy"
    elbo = figures["ssvae_cpu_test_neg_elbo_vs_decoder_calls.png"].axes[0]
    assert elbo.get_ylabel().startswith("test -ELBO (nats)")


def test_metric_labels_are_spelled_out_with_units() -> None:
    labels = {"test/neg_elbo": ("test -ELBO (nats)", False)}
    assert metric_label("test_epoch/neg_elbo", labels) == "test -ELBO (nats)"
    assert metric_label("val/acc_reference", {}) == "validation accuracy reference"
    assert metric_label("train/nll_bpd", {}) == "training NLL (bits/dim)"


def test_report_of_a_missing_folder_names_it_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said "no finished runs" and created the folder (the output defaults to it)."""
    missing = tmp_path / "nosuchdir"
    assert main(["report", str(missing)]) == 2
    assert f"runs folder {missing} does not exist" in capsys.readouterr().err
    assert not missing.exists()
