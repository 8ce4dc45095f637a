"""Running the repository's scripts (examples, benchmarks) as a user would, for their tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_script(script: Path, args: list[str], cwd: Path, timeout: float, **env: str) -> str:
    """``python script *args`` in ``cwd`` with one intra-op thread and the extra environment
    ``env``; asserts that it exits 0 (showing the end of its stderr) and returns its stdout."""
    done = subprocess.run([sys.executable, str(script), *args], cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
