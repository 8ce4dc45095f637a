"""Every script in ``examples/`` runs to completion in a fast mode and prints what it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from _scripts import run_script

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# script -> (fast-mode arguments, a phrase its output must contain)
FAST = {
    "categorical_vae.py": (["--steps", "5"], "sparsemax marginalization"),
    "bitvector_sparsemap.py": (["--steps", "5", "--bits", "8"], "SparseMAP, budget 4"),
    "spanning_tree.py": (["--steps", "3", "--n", "5"], "edges recovered"),
    "mixed_latent.py": (["--steps", "20"], "exact KL to the mixed uniform prior"),
    "compare_on_your_model.py": (["--draws", "20"], "ST Gumbel-Softmax"),
    "lightning_module.py": (["--steps", "25"], "val/reconstruction"),
}


def test_every_example_has_a_fast_mode():
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(FAST)


@pytest.mark.parametrize("script", sorted(FAST))
def test_example_runs(script, tmp_path):
    args, phrase = FAST[script]
    out = run_script(EXAMPLES / script, args, tmp_path, timeout=300,
                     LATENTGRAD_DATA=str(tmp_path / "no-data"))
    assert phrase in out
    assert "nan" not in out.lower()
