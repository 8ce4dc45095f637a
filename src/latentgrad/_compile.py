"""Kernels that ``torch.compile`` generates on first use, with the plain path as the fallback.

Shared by every fused CPU path (the sparse mappings' kernels, the experiments' fused
likelihoods): a failed compilation (no C++ compiler, an unsupported platform) switches all of
them off for the process, once, and the callers' plain torch paths answer from then on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

_state = {"failed": False}


def compilation_failed() -> bool:
    """Whether a compilation of a ``Compiled`` kernel has failed in this process."""
    return _state["failed"]


class Compiled:
    """``fn`` compiled on first use (``torch.compile(fn, dynamic=dynamic, fullgraph=True,
    options=options)``); ``__call__`` returns ``None`` once any compilation in this process has
    failed (``compilation_failed()``), and the caller takes its plain path."""

    def __init__(self, fn: Callable[..., object], dynamic: bool = True,
                 options: dict[str, object] | None = None) -> None:
        self.fn = fn
        self.dynamic = dynamic
        self.options = options
        self.compiled = None

    def __call__(self, *args: Tensor) -> object:
        if _state["failed"]:
            return None
        validate = Distribution._validate_args
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.fn, dynamic=self.dynamic, fullgraph=True,
                                              options=self.options)
            return self.compiled(*args)
        except Exception:  # no compiler, an unsupported platform: the plain path takes over
            _state["failed"] = True
            return None
        finally:  # torch.compile's first use turns torch.distributions' validation off: undo
            Distribution.set_default_validate_args(validate)


def transforms_active() -> bool:
    """Whether a ``torch.func`` transform (vmap, jvp, grad, ...) is active: the plain paths,
    which support them, run then."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return active is not None and active()
