"""A distribution moved to another device, for priors built once on the host and used beside
parameters on an accelerator: a host tensor used there is copied at every use, and every copy
waits for the device."""

from __future__ import annotations

import copy

import torch
from torch import Tensor
from torch.distributions import Distribution


def on_device(dist: Distribution, device: torch.device,
              dtype: torch.dtype | None = None) -> Distribution:
    """``dist`` with every tensor it holds on ``device`` (and its floating tensors in ``dtype``,
    if given), also those of the distributions it holds (a Mixed Dirichlet's faces): a shallow
    copy, or ``dist`` itself when nothing changes. Cached lazy properties move with the
    parameters they were computed from."""
    moved = {}
    for name, value in vars(dist).items():
        if isinstance(value, Tensor):
            cast = dtype if dtype is not None and value.is_floating_point() else value.dtype
            if value.device != device or value.dtype != cast:
                moved[name] = value.to(device, cast)
        elif isinstance(value, Distribution):
            inner = on_device(value, device, dtype)
            if inner is not value:
                moved[name] = inner
    if not moved:
        return dist
    new = copy.copy(dist)
    vars(new).update(moved)
    return new
