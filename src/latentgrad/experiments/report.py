"""Tables and plots from a directory of runs: mean ± standard error over seeds per estimator.

Reads every ``metrics.json`` under RUNS_DIR (and the runs' CSV logs for curves) and writes
``report.md``, ``report.csv``, one ``curve_<metric>.png`` per learning-curve metric of the task
(mean over seeds ± s.e. per estimator, against epochs) and ``<metric>_vs_decoder_calls.png``.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from latentgrad.experiments.config import ConfigError, read_run_config
from latentgrad.experiments.tasks.registry import get_task


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error ``std(ddof=1) / sqrt(n)`` (NaN s.e. for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def load_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """Every finished run (``metrics.json``) under ``runs_dir``, with its directory."""
    runs = []
    for path in sorted(runs_dir.rglob("metrics.json")):
        try:
            result = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} is not a valid metrics.json ({err})") from None
        if not isinstance(result, dict):
            raise ConfigError(f"{path} is not a valid metrics.json (not a mapping)")
        _check_result(path, result)
        result["run_dir"] = path.parent
        runs.append(result)
    return runs


#: The entries of a ``metrics.json`` the report reads, with their types.
_RESULT_FIELDS = {"task": str, "profile": str, "estimator": str, "seed": int, "metrics": dict}


def _check_result(path: Path, result: dict[str, Any]) -> None:
    """A ConfigError naming ``path`` unless ``result`` holds the fields the report reads."""
    for key, kind in _RESULT_FIELDS.items():
        value = result.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            got = "missing" if key not in result else f"{value!r}"
            raise ConfigError(
                f"{path} is not a valid metrics.json ({key!r}: expected {kind.__name__}, got {got})"
            )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_curves(run_dir: Path) -> list[dict[str, float]]:
    """Rows of the run's CSV logs in step order; a resumed attempt's rows replace the rows of
    earlier attempts from its first step on."""
    rows: list[dict[str, float]] = []
    versions = sorted((v for v in (run_dir / "csv").glob("version_*")
                       if v.name.split("_")[1].isdigit()),  # Lightning's; a stray one is not
                      key=lambda p: int(p.name.split("_")[1]))
    for version in versions:
        file = version / "metrics.csv"
        if not file.exists():
            continue
        try:
            with open(file, newline="", encoding="utf-8") as fh:
                new = [
                    {k: float(v) for k, v in row.items() if v not in ("", None)}
                    for row in csv.DictReader(fh)
                ]
        except (ValueError, TypeError) as err:  # UnicodeDecodeError is a ValueError
            raise ConfigError(f"{file} is not a valid CSV log ({err}); a run killed while "
                              "writing it leaves a cut row: delete that row") from None
        if new:
            first = min(r.get("step", 0.0) for r in new)
            rows = [r for r in rows if r.get("step", 0.0) < first] + new
    return rows


_PREFIXES = {"train": "training", "val": "validation", "test": "test"}
_NAMES = {
    "acc": "accuracy",
    "neg_elbo": "-ELBO (nats)",
    "nll": "NLL (nats)",
    "nll_bpd": "NLL (bits/dim)",
    "loss": "loss",
    "decoder_calls": "decoder calls / example",
}


def metric_label(key: str, report_metrics: dict[str, tuple[str, bool]]) -> str:
    """A person's label for a logged metric key, with its unit: the task's ``REPORT_METRICS``
    label for the key (``test_epoch/x`` reads as ``test/x``), else the key spelled out
    (``val/acc_reference`` -> ``validation accuracy reference``)."""
    for candidate in (key, key.replace("_epoch/", "/")):
        if candidate in report_metrics:
            return report_metrics[candidate][0]
    prefix, _, name = key.replace("_epoch/", "/").rpartition("/")
    head, _, rest = name.partition("_")
    words = _NAMES.get(name) or " ".join(
        filter(None, [_NAMES.get(head, head), rest.replace("_", " ")])
    )
    return f"{_PREFIXES.get(prefix, prefix)} {words}".strip()


def warmstart_epochs(run_dir: Path) -> int:
    """The run's ``warmstart_epochs`` from its recorded ``config.yaml`` (0 when it has none)."""
    file = run_dir / "config.yaml"
    if not file.exists():
        return 0
    stack = [read_run_config(file) or {}]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("warmstart_epochs"), int):
                return node["warmstart_epochs"]
            stack.extend(node.values())
    return 0


def cpu_hours(run_dir: Path) -> tuple[float, bool] | None:
    """The CPU-hours that ``run_dir``'s ``run.json`` records over its attempts, and whether every
    attempt was timed; None where it records none (runs of before the compute records, or an
    unreadable file)."""
    try:
        compute = json.loads((run_dir / "run.json").read_text()).get("compute")
        hours, untimed = float(compute["cpu_hours"]), int(compute["attempts_not_timed"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return hours, untimed == 0


def _compute_cell(group: list[dict[str, Any]], row: dict[str, Any]) -> str:
    """Mean CPU-hours per run of ``group`` for the table (``≥`` where an attempt or a run was not
    timed; ``—`` where none was), also put into ``row``."""
    recorded = [cpu_hours(g["run_dir"]) for g in group]
    timed = [r for r in recorded if r is not None]
    if not timed:
        return "—"
    mean = sum(h for h, _ in timed) / len(timed)
    complete = len(timed) == len(group) and all(ok for _, ok in timed)
    row["cpu_hours mean"], row["cpu_hours complete"] = mean, complete
    return f"{'' if complete else '≥ '}{mean:.2g}"


def _fmt(mean: float, se: float) -> str:
    if math.isnan(se):
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {se:.2g}"


def report(runs_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Write the report files; returns their paths (keys: markdown, csv, and one per plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs_dir = Path(runs_dir)
    out = Path(out) if out is not None else runs_dir
    if not runs_dir.is_dir():  # before anything is written (out defaults to runs_dir)
        raise FileNotFoundError(f"runs folder {runs_dir} does not exist (or is not a folder)")
    runs = load_runs(runs_dir)
    if not runs:
        raise FileNotFoundError(f"no finished runs (metrics.json) under {runs_dir}")
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["task"], r["profile"], r["estimator"])].append(r)

    md = [f"# latentgrad report: {runs_dir}", ""]
    table_rows: list[dict[str, Any]] = []
    paths: dict[str, Path] = {}
    for task, profile in sorted({(t, p) for t, p, _ in groups}):
        try:
            spec = get_task(task)
        except ValueError as err:  # a metrics.json of a task not registered here
            where = next(r["run_dir"] for r in runs if r["task"] == task)
            raise ConfigError(
                f"{where / 'metrics.json'}: {err} (a plugin task needs --plugin MODULE)"
            ) from None
        metrics = dict(spec.REPORT_METRICS)
        estimators = sorted(e for t, p, e in groups if (t, p) == (task, profile))
        md += [f"## {task} (profile `{profile}`)", ""]
        md.append(
            "| estimator | seeds | " + " | ".join(label for label, _ in metrics.values())
            + " | CPU-hours / run |"
        )
        md.append("|---" * (len(metrics) + 3) + "|")
        summary: dict[str, dict[str, tuple[float, float]]] = {}
        for est in estimators:
            group = groups[(task, profile, est)]
            row: dict[str, Any] = {
                "task": task,
                "profile": profile,
                "estimator": est,
                "seeds": len(group),
            }
            cells = []
            summary[est] = {}
            for key in metrics:
                values = [g["metrics"][key] for g in group if key in g["metrics"]]
                for g in group:
                    if key in g["metrics"] and not _number(g["metrics"][key]):
                        raise ConfigError(
                            f"{g['run_dir'] / 'metrics.json'} is not a valid metrics.json "
                            f"(metrics[{key!r}]: expected a number, got {g['metrics'][key]!r})"
                        )
                if values:
                    m, se = mean_se(values)
                    summary[est][key] = (m, se)
                    row[f"{key} mean"], row[f"{key} se"] = m, se
                    cells.append(_fmt(m, se))
                else:
                    cells.append("—")
            table_rows.append(row)
            seeds = ",".join(str(g["seed"]) for g in sorted(group, key=lambda g: g["seed"]))
            cells.append(_compute_cell(group, row))
            md.append(f"| {est} | {len(group)} ({seeds}) | " + " | ".join(cells) + " |")
        md.append("")
        paths.update(_plots(plt, spec, task, profile, estimators, groups, summary, out, md))
    md.append("Mean ± standard error over seeds (s.e. = sample std / sqrt(n)). CPU-hours: the "
              "training process's CPU time over all its attempts (run.json's `compute`), mean "
              "over the seeds; `≥` where an attempt was not timed (killed, or run before these "
              "records), `—` where none was.")
    paths["markdown"] = out / "report.md"
    paths["markdown"].write_text("\n".join(md) + "\n")
    paths["csv"] = out / "report.csv"
    fields = list(dict.fromkeys(k for row in table_rows for k in row))
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table_rows)
    return paths


def _finish_plot(plt, fig, ax, xlabel, ylabel, title, path: Path, md, alt: str,
                 extra: list[tuple[Any, str]] = ()) -> Path:
    """Label ``ax`` (with a legend outside the axes, plus the ``extra`` (handle, label) entries),
    save ``fig`` to ``path``, close it, and link it from the markdown lines ``md`` with alt text
    ``alt``; return ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    for handle, name in extra:
        handles.append(handle)
        names.append(name)
    ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small",
              frameon=False)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    md.append(f"![{alt}]({path.name})")
    return path


# Distinct hollow markers and line styles, so estimators drawn on top of each other stay visible.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h")
_LINES = ("-", "--", "-.", ":")


def _plots(plt, spec, task, profile, estimators, groups, summary, out, md) -> dict[str, Path]:
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    paths: dict[str, Path] = {}
    tag = f"{task}_{profile}"
    labels = dict(spec.REPORT_METRICS)
    warmstart = max(
        (warmstart_epochs(r["run_dir"]) for e in estimators for r in groups[(task, profile, e)]),
        default=0,
    )
    for key in spec.CURVE_METRICS:
        fig, ax = plt.subplots(figsize=(7, 4))
        drawn = False
        for i, est in enumerate(estimators):
            per_epoch: dict[float, list[float]] = defaultdict(list)
            for run in groups[(task, profile, est)]:
                for row in read_curves(run["run_dir"]):
                    if key in row and "epoch" in row:
                        per_epoch[row["epoch"]].append(row[key])
            if not per_epoch:
                continue
            epochs = sorted(per_epoch)
            stats = [mean_se(per_epoch[e]) for e in epochs]
            means = [m for m, _ in stats]
            ses = [0.0 if math.isnan(s) else s for _, s in stats]
            (line,) = ax.plot(epochs, means, marker=_MARKERS[i % len(_MARKERS)], markersize=4,
                              fillstyle="none", linestyle=_LINES[i % len(_LINES)], label=est)
            ax.fill_between(epochs, [m - s for m, s in zip(means, ses)],
                            [m + s for m, s in zip(means, ses)], color=line.get_color(), alpha=0.15)
            drawn = True
        if drawn:
            extra = [(Patch(color="grey", alpha=0.15), "band: ± 1 standard error over seeds")]
            if warmstart:
                boundary = ax.axvline(warmstart - 0.5, color="black", linewidth=0.8,
                                      linestyle=":")
                extra.append((boundary, f"end of the {warmstart}-epoch warm start"))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            name = f"curve_{tag}_{key.replace('/', '_')}.png"
            label = metric_label(key, labels)
            paths[name] = _finish_plot(plt, fig, ax, "epoch", label,
                                       f"{task} ({profile}): {label}", out / name, md, label,
                                       extra)
        else:
            plt.close(fig)
    for key in spec.REPORT_METRICS:
        if key == "decoder_calls":
            continue
        points = [
            (e, summary[e][key], summary[e].get("decoder_calls"))
            for e in estimators
            if key in summary[e]
        ]
        points = [p for p in points if p[2] is not None]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for i, (est, (m, se), (calls, calls_se)) in enumerate(points):
            ax.errorbar(calls, m, yerr=None if math.isnan(se) else se,
                        xerr=None if math.isnan(calls_se) else calls_se,
                        fmt=_MARKERS[i % len(_MARKERS)], fillstyle="none", markersize=8,
                        capsize=3, label=est)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        label = metric_label(key, labels)
        name = f"{tag}_{key.replace('/', '_')}_vs_decoder_calls.png"
        paths[name] = _finish_plot(
            plt, fig, ax, "decoder calls per example (log scale)",
            f"{label} (mean ± standard error over seeds)",
            f"{task} ({profile}): {label} vs decoder calls", out / name, md,
            f"{label} vs decoder calls",
        )
    md.append("")
    return paths
