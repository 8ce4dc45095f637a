"""Every benchmark script runs to completion at a tiny size and prints its comparison (the
numbers are not checked: they belong to the machine; ``benchmarks/README.md`` records them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from _scripts import run_script

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# script -> (tiny arguments, a phrase its output must contain)
TINY = {
    "bench_mappings.py": (["--repeats", "1", "--shapes", "8x300", "--thread-counts", "1"],
                          "softmax"),
    "bench_structures.py": (["--repeats", "1"], "lp-sparsemap"),
    "bench_estimators.py": (["--repeats", "1", "--large", "1000", "--hidden", "64"],
                            "index latents"),
    "bench_overhead.py": (["--repeats", "1"], "validation"),
    "bench_pixel_likelihood.py": (["--repeats", "1", "--eval-decodes", "4",
                                   "--train-decodes", "4"], "per decoder call"),
    "compare_estimators.py": (["--draws", "20"], "|bias|"),
    "bench_tree_sampling.py": (["--repeats", "1"], "ms"),
    "bench_continuous_categorical.py": (["--repeats", "1", "--rows", "2", "--ks", "3"],
                                        "closed form"),
    "bench_trees_vs_peers.py": (["--repeats", "1"], "float32 max |error|"),
    "bench_distributions_vs_relaxit.py": (["--repeats", "1"], "relaxit"),
    "bench_estimators_vs_storchastic.py": (["--repeats", "1", "--draws", "1024"], "storchastic"),
    "bench_game_vs_egg.py": (["--repeats", "1", "--draws", "1024", "--features", "32"], "EGG"),
}


def test_every_benchmark_has_a_tiny_run():
    scripts = {p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(TINY)


@pytest.mark.parametrize("script", sorted(TINY))
def test_benchmark_runs(script, tmp_path):
    args, phrase = TINY[script]
    out = run_script(BENCHMARKS / script, args, tmp_path, timeout=600)
    assert phrase in out, out[-2000:]
