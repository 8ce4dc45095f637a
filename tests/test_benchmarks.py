"""Every benchmark script runs to completion at a tiny size and prints its comparison (the
numbers are not checked: they belong to the machine; ``benchmarks/README.md`` records them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    "bench_trees_vs_peers.py": (["--repeats", "1"], "float32 max |error|"),
    "bench_distributions_vs_relaxit.py": (["--repeats", "1"], "relaxit"),
}


def test_every_benchmark_has_a_tiny_run():
    scripts = {p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(TINY)


@pytest.mark.parametrize("script", sorted(TINY))
def test_benchmark_runs(script, tmp_path):
    args, phrase = TINY[script]
    src = str(BENCHMARKS.parent / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, (src, os.environ.get("PYTHONPATH"))))}
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert phrase in done.stdout, done.stdout[-2000:]
