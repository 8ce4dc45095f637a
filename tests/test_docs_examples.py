"""Every ```python block of the user guide runs: the blocks of one page in order, in one
namespace (a page reads as one session), and their ``assert`` lines hold. The README's block is
run by ``tests/estimators/test_swap.py``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import latentgrad
from latentgrad.mappings import use_fused_kernels

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
PAGES = sorted(p for p in GUIDE.rglob("*.md") if BLOCK.search(p.read_text()))


@pytest.fixture(autouse=True)
def _switches_restored():
    """A page may flip a process-wide switch (``concepts.md`` turns the value checks off,
    ``mappings.md`` the fused kernels on); the tests that run after it in the same process must
    not inherit that."""
    checks = latentgrad.validation_enabled()
    fused = use_fused_kernels(False)  # reads the switch (and sets it back below)
    use_fused_kernels(fused)
    yield
    latentgrad.set_default_validate_args(checks)
    use_fused_kernels(fused)


def test_the_layer_pages_have_examples():
    """The pages of the library's layers must keep runnable examples (the extraction must find
    them, or this suite would check nothing)."""
    assert {"mappings.md", "structures.md", "distributions.md", "concepts.md"} <= {
        p.name for p in PAGES}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(GUIDE)))
def test_page_examples_run(page):
    torch.manual_seed(0)
    namespace: dict = {}
    for number, block in enumerate(BLOCK.findall(page.read_text()), 1):
        exec(compile(block, f"{page.name} (python block {number})", "exec"), namespace)
