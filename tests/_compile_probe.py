"""Whether ``torch.compile`` works on this machine, for the tests of the fused (compiled) paths:
inductor needs a C++ compiler; where it has none, those tests skip and the fallback tests run."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest

compile_state = importlib.import_module("latentgrad._compile")._state


def compiles(probe: Callable[[], object]) -> bool:
    """Whether ``probe()``, a call that compiles a kernel, compiled it (the process's compile
    state is left as it was)."""
    saved = dict(compile_state)
    compile_state["failed"] = False
    try:
        probe()
        return not compile_state["failed"]
    finally:
        compile_state.update(saved)


def require_compilation(works: bool, monkeypatch: pytest.MonkeyPatch, fallback: str) -> None:
    """Skip the test unless ``works``; otherwise let it compile (whatever failed before)."""
    if not works:
        pytest.skip(f"torch.compile does not work here (no C++ compiler?): {fallback} answers")
    monkeypatch.setitem(compile_state, "failed", False)
