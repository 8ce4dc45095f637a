"""Memory-bounded loss evaluation: ``loss_fn`` on at most ``chunk_size`` (z, row) pairs per call.

Every estimator calls ``loss_fn(z, rows)`` once on all the (example, latent) pairs it evaluates:
exact marginalization over a support of s structures per example evaluates B·s pairs, and
autograd keeps every pair's activations until the backward. ``chunked(loss_fn, chunk_size)``
evaluates the pairs in chunks instead; with gradients enabled each chunk runs under activation
checkpointing (``torch.utils.checkpoint``, non-reentrant), so its activations are freed after
its forward and recomputed, one chunk at a time, in the backward. Peak memory then follows
``chunk_size`` rather than B·s, for one more forward of ``loss_fn``; the losses and gradients are
those of the single call up to rounding. ``loss_fn`` must be a function of ``(z, rows)`` alone:
it is called once per chunk, and again in the backward (random ops inside it replay the same
draws there, but draw per chunk, not once for all pairs).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .._validation import check_positive_int
from .base import LossFn


def chunked(loss_fn: LossFn, chunk_size: int) -> LossFn:
    """``loss_fn`` evaluated on at most ``chunk_size`` pairs per call, checkpointed in training.

    Args:
        loss_fn: ``loss_fn(z, rows) -> (N,)`` losses of the latents ``z`` (N, ...) for the
            examples ``rows`` (N,).
        chunk_size: the most pairs per call of ``loss_fn``.

    Returns:
        A ``loss_fn`` with the same values: ``torch.cat`` of the chunks' losses (one call when
        ``N <= chunk_size``).

    Example: ``estimator(scores, chunked(loss_fn, 4096))`` bounds a marginalization's decoder
    activations to 4096 pairs at a time, however large the support.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    chunk_size = check_positive_int(chunk_size, "chunk_size")

    def call(z: Tensor, rows: Tensor) -> Tensor:
        n = rows.shape[0]
        if n <= chunk_size:
            return loss_fn(z, rows)
        if not isinstance(z, Tensor) or z.shape[:1] != rows.shape:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"chunked loss_fn needs latents z of shape ({n}, ...), got {got}")
        pieces = []
        for start in range(0, n, chunk_size):
            part = (z[start:start + chunk_size], rows[start:start + chunk_size])
            if torch.is_grad_enabled():
                piece = checkpoint(loss_fn, *part, use_reentrant=False)
            else:
                piece = loss_fn(*part)
            m = part[1].shape[0]
            if not isinstance(piece, Tensor) or piece.shape != (m,):
                got = tuple(piece.shape) if isinstance(piece, Tensor) else type(piece).__name__
                raise ValueError(
                    f"loss_fn must return a tensor of shape ({m},) (one loss per (z, row) pair) "
                    f"for a chunk of {m} of the {n} pairs, got {got}")
            pieces.append(piece)
        return torch.cat(pieces)

    return call
