"""Input-independent running baselines for score-function estimators.

The statistic lives in module buffers (so it is saved in checkpoints and follows ``.to(device)``)
and is updated only by ``update``, which the estimators call after the surrogate is formed and
only in training mode. ``update`` replaces the buffers by new tensors instead of writing into
them: a baseline value already read by this step's surrogate is never changed afterwards. Under
``torch.compile`` this matters for the gradients: AOT autograd may recompute a read of a buffer in
the backward pass instead of saving it, and a buffer mutated in place in the forward would then be
read after its update (eager and compiled gradients would differ).

- ``"moving_average"``: running mean over all steps, ``beta_n = beta_{n-1} + (l_n - beta_{n-1})/n``
  (``beta = 0`` before the first update).
- ``"ema"``: ``beta <- decay * beta + (1 - decay) * l``; the first update sets ``beta = l``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._validation import check_choice

RUNNING_KINDS = ("moving_average", "ema")


class RunningBaseline(nn.Module):
    """A scalar running statistic of the batch-mean loss."""

    value: Tensor
    count: Tensor

    def __init__(self, kind: str, decay: float = 0.99) -> None:
        super().__init__()
        check_choice(kind, "kind", RUNNING_KINDS)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.kind = kind
        self.decay = float(decay)
        self.register_buffer("value", torch.zeros(()))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def get(self, like: Tensor) -> Tensor:
        """The current baseline as a 0-dim tensor with ``like``'s dtype and device (no gradient;
        ``update`` replaces the buffer, so the value returned never changes)."""
        value = self.value
        if value.dtype == like.dtype and value.device == like.device:
            return value
        return value.to(device=like.device, dtype=like.dtype)

    def update(self, batch_mean: Tensor) -> None:
        """Fold in one step's batch-mean loss (a 0-dim tensor) into new buffers, on the loss's
        device (an estimator left on the CPU follows CUDA losses); no host sync, no graph."""
        x = batch_mean.detach() if batch_mean.requires_grad else batch_mean
        buffers = self._buffers  # (read and replaced directly: nn.Module's attribute hooks cost
        value, count = buffers["value"], buffers["count"]  # more than the update itself)
        if value.device != x.device:
            value, count = value.to(x.device), count.to(x.device)
        x, count = x if x.dtype == value.dtype else x.to(value.dtype), count + 1
        if self.kind == "moving_average":
            value = value + (x - value) / count
        else:
            value = torch.where(count == 1, x, value.lerp(x, 1.0 - self.decay))
        buffers["value"], buffers["count"] = value, count
