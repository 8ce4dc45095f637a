"""use_huge_pages: a ``latentgrad run`` with ``trainer.huge_pages`` backs its large tensors with
transparent huge pages, one without it does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latentgrad.experiments.allocator import HUGE_PAGES_VARIABLE, use_huge_pages

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# runs the CLI (a tiny training run), then reports whether a fresh 64 MiB tensor lies in memory
# the kernel may back with huge pages (its mapping's THPeligible flag in /proc/self/smaps)
_PROBE = """
import json, sys
from latentgrad.experiments.cli import main
assert main(["run", "signal_game", "--estimator", "sparsemax", "--out", sys.argv[1],
             "--no-progress-bar", "profile=tiny", "trainer.huge_pages=" + sys.argv[2]]) == 0
import torch
x = torch.ones(16 * 2**20)
address, eligible, lines = x.data_ptr(), None, open("/proc/self/smaps").read().splitlines()
for i, line in enumerate(lines):
    bounds = line.split()[0].split("-")
    if len(bounds) == 2 and all(c in "0123456789abcdef" for c in "".join(bounds)):
        if int(bounds[0], 16) <= address < int(bounds[1], 16):
            eligible = next(int(m.split()[1]) for m in lines[i + 1:] if m.startswith("THPeligible"))
            break
print(json.dumps({"eligible": eligible}))
"""


def _thp_mode() -> str | None:
    if not THP_MODE.exists():
        return None
    text = THP_MODE.read_text()
    return text[text.index("[") + 1 : text.index("]")]


@pytest.mark.skipif(
    _thp_mode() != "madvise",
    reason="huge pages are granted on request only when the kernel's THP mode is 'madvise'",
)
@pytest.mark.parametrize(("setting", "eligible"), [("true", 1), ("false", 0)])
def test_a_run_backs_large_tensors_with_huge_pages_when_its_config_asks(
    setting: str, eligible: int, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_VARIABLE}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path), setting],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {"eligible": eligible}


def test_a_setting_in_the_environment_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HUGE_PAGES_VARIABLE, "0")
    use_huge_pages()
    assert os.environ[HUGE_PAGES_VARIABLE] == "0"
    monkeypatch.delenv(HUGE_PAGES_VARIABLE)
    use_huge_pages()
    assert os.environ[HUGE_PAGES_VARIABLE] == "1"
