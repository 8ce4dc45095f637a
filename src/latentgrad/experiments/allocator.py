"""Huge pages for a training run's large tensors.

glibc's ``malloc`` hands every block of 32 MiB or more to the kernel as a fresh ``mmap`` and
unmaps it on ``free``, so a training step that allocates and frees the same large activations each
time has the kernel fault in and zero every 4 KiB page of them again: the signaling game's sender
holds ``64 × 256 × 512`` float32 activations (32 MiB) per step, and its forward and backward passes
took ~49,000 page faults and as much system time as arithmetic per step (234 ms instead of 148 ms
on one thread). PyTorch's CPU allocator advises the kernel to back blocks of 2 MiB or more with
transparent huge pages when the environment variable ``THP_MEM_ALLOC_ENABLE`` is set: 2 MiB pages,
512 times fewer faults. Freed blocks still go back to the system (keeping them in the process
instead, with glibc's ``mallopt``, fragmented its heap without bound when small tensors that
outlive a step landed between the large ones). Values are unchanged.

It is a run's choice (``trainer.huge_pages``, set by the tasks where it pays: the signaling game,
the bit-vector VAE): where a step's tensors are a few MB, which glibc recycles in its heap anyway,
huge pages only add work (the IGR VAE's test pass took 9.5 s instead of 5.8 s with them).
"""

from __future__ import annotations

import os

HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"


def use_huge_pages() -> None:
    """Ask PyTorch's CPU allocator for transparent huge pages (module docstring), unless the
    environment already sets ``THP_MEM_ALLOC_ENABLE`` (``0`` keeps them off). PyTorch reads the
    variable once, at the process's first allocation of 2 MiB or more: call this before it (a
    process that allocated one already keeps its setting). Linux only; elsewhere PyTorch ignores
    the variable."""
    os.environ.setdefault(HUGE_PAGES_VARIABLE, "1")
