"""Calling an autograd Function that defines ``setup_context`` at the cost of one that does not.

``torch.autograd.Function.apply`` binds every call's arguments with ``inspect.signature`` when the
Function defines ``setup_context`` (the style that ``torch.func`` transforms require): about 75 us
per call on a 2-core CPU, more than many of the calls it wraps. ``apply`` runs such a Function
through a twin whose ``forward`` takes ``ctx`` and calls the original ``forward`` and
``setup_context`` (same saved tensors, same ``backward`` and ``jvp``, so the same results and
derivatives), and calls the original under ``torch.func`` transforms and ``torch.compile``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch

from latentgrad._compile import transforms_active


def apply(function: type[torch.autograd.Function], *args: Any) -> Any:
    """``function.apply(*args)`` (positional arguments only), through its ctx-style twin
    outside ``torch.func`` transforms and ``torch.compile``."""
    if torch.compiler.is_compiling() or transforms_active():
        return function.apply(*args)
    return _ctx_twin(function).apply(*args)


@cache
def _ctx_twin(function: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """A Function with ``forward(ctx, *args)`` = ``function.forward`` then
    ``function.setup_context``, and ``function``'s ``backward`` and ``jvp``; ``function``
    itself if its ``forward`` already takes ``ctx``."""
    if "setup_context" not in vars(function):
        return function

    def forward(ctx: Any, *args: Any) -> Any:
        output = function.forward(*args)
        function.setup_context(ctx, args, output)
        return output

    body = {"forward": staticmethod(forward), "backward": staticmethod(function.backward),
            "__doc__": f"``{function.__name__}`` with a ctx-style forward (see ``apply``)."}
    if "jvp" in vars(function):
        body["jvp"] = staticmethod(function.jvp)
    return type(f"{function.__name__}Twin", (torch.autograd.Function,), body)
