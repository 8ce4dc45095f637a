"""retain_freed_memory: a large block freed by one training step is reused by the next without
the kernel zeroing its pages again."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from latentgrad.experiments import allocator

MIB = 2**20
BLOCK = 64 * MIB  # above glibc's largest mmap threshold (32 MiB): always mmap-served by default

# page faults of re-allocating (and filling) a block of BLOCK bytes just freed, before and after
# retain_freed_memory, in a fresh process (the test process may have called it already)
_PROBE = f"""
import json, resource, torch
from latentgrad.experiments.allocator import retain_freed_memory

def faults_of_reallocation():
    x = torch.ones({BLOCK // 4})
    del x
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = torch.ones({BLOCK // 4})
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del y
    return faults

default = faults_of_reallocation()
applied = retain_freed_memory()
print(json.dumps({{"default": default, "applied": applied, "retained": faults_of_reallocation()}}))
"""

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the setting applies to glibc's malloc only",
)


@glibc_only
def test_a_freed_large_block_is_reused_without_page_faults() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["applied"] is True
    pages = BLOCK // 4096
    if got["default"] < pages // 2:
        pytest.skip(f"this system's malloc already reuses freed blocks ({got['default']} faults)")
    # with the setting, the block comes back from the heap already mapped: no fault per page
    assert got["retained"] < pages // 8, got


def test_other_c_libraries_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_call(*args: object) -> None:
        raise AssertionError("the C library was loaded")

    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(allocator.ctypes, "CDLL", no_call)
    assert allocator.retain_freed_memory() is False
