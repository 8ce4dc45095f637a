"""When a computation may read a tensor's value on the host (``bool(t)``, ``.item()``) to skip
work: free on the CPU, but a synchronisation on an accelerator (the host waits for the device)
and a graph break under ``torch.compile``, where the full work is cheaper than the read."""

from __future__ import annotations

import torch
from torch import Tensor


def host_reads_free(x: Tensor) -> bool:
    """Whether reading values of tensors on ``x``'s device costs nothing extra (module
    docstring): on the CPU, outside ``torch.compile``."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()
