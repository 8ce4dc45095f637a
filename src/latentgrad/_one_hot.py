"""One-hot vectors of category indices, built without a host read."""

from __future__ import annotations

import torch
from torch import Tensor


def one_hot(index: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    """Indices ``(...)`` in ``[0, k)`` -> one-hot rows ``(..., k)`` of ``dtype``.

    As ``F.one_hot(index, k).to(dtype)``, written as a ``scatter`` into zeros: ``F.one_hot``
    checks the range of the indices on the host (``item``), a synchronisation that the callers,
    whose indices come from an argmax, a sort or a sampler, do not need.
    """
    out = torch.zeros((*index.shape, k), dtype=dtype, device=index.device)
    return out.scatter_(-1, index.unsqueeze(-1), 1)
