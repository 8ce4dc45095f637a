"""CUDA tests: every layer gives the same results on a GPU as on the CPU (float64), and the hot
paths that are meant to stay on the device do not synchronise with the host when validation is
off. Every test in this folder carries the ``cuda`` marker and is skipped without a GPU
(``pytest -m cuda`` selects them; ``benchmarks/gpu_check.sh`` runs them).
``LATENTGRAD_TEST_DEVICE=cpu`` dry-runs them on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _same import DEVICE

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    missing = DEVICE.type == "cuda" and not torch.cuda.is_available()
    for item in items:
        if _HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.cuda)
            if missing:
                item.add_marker(skip)
