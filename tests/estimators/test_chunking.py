"""chunked(loss_fn, chunk_size): the same losses and gradients as one call, with the activations
of at most one chunk kept for the backward."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from latentgrad.estimators import (
    SoftmaxMarginalization,
    SparseMAPMarginalization,
    SparsemaxMarginalization,
    TopKSparsemaxMarginalization,
    chunked,
)
from latentgrad.structures import BitVector

D = torch.float64


class MLPLoss:
    """A decoder-like loss ``|| tanh(z W1) W2 - y_b ||^2`` (float64), counting its calls."""

    def __init__(self, batch: int, in_dim: int, hidden: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(in_dim, hidden, generator=g, dtype=D).requires_grad_(True)
        self.w2 = torch.randn(hidden, 3, generator=g, dtype=D).requires_grad_(True)
        self.y = torch.randn(batch, 3, generator=g, dtype=D)
        self.calls: list[int] = []

    def __call__(self, z: Tensor, rows: Tensor) -> Tensor:
        self.calls.append(rows.shape[0])
        h = torch.tanh(z.flatten(1).to(D) @ self.w1)
        return (h @ self.w2 - self.y[rows]).pow(2).sum(-1)


def _estimators():
    return {
        "softmax": (SoftmaxMarginalization(), (5, 6)),
        "sparsemax": (SparsemaxMarginalization(), (5, 6)),
        "entmax15, two variables": (SparsemaxMarginalization("entmax15"), (5, 2, 4)),
        "sparsemap": (SparseMAPMarginalization(BitVector(4)), (5, 4)),
        "top-k sparsemax": (TopKSparsemaxMarginalization(BitVector(4), k=5), (5, 4)),
    }


def _step(name: str, chunk_size: int | None):
    estimator, shape = _estimators()[name]
    scores = (2 * torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=D))
    scores.requires_grad_(True)
    in_dim = math.prod(shape[1:])
    loss_fn = MLPLoss(shape[0], in_dim)
    out = estimator(scores, loss_fn if chunk_size is None else chunked(loss_fn, chunk_size))
    grads = torch.autograd.grad(out.loss, (scores, loss_fn.w1, loss_fn.w2))
    return out, grads, loss_fn.calls


@pytest.mark.parametrize("name", list(_estimators()))
@pytest.mark.parametrize("chunk_size", [1, 3, 10_000])
def test_the_loss_and_its_gradients_are_those_of_one_call(name: str, chunk_size: int) -> None:
    out, grads, _ = _step(name, None)
    out_c, grads_c, _ = _step(name, chunk_size)
    torch.testing.assert_close(out_c.loss, out.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_c.expected_loss, out.expected_loss, rtol=1e-12, atol=1e-12)
    for g_c, g in zip(grads_c, grads, strict=True):
        torch.testing.assert_close(g_c, g, rtol=1e-10, atol=1e-12)


def test_each_call_gets_one_chunk_and_the_backward_recomputes_them_one_by_one() -> None:
    _, _, calls = _step("softmax", None)
    n = calls[0]  # 5 examples x 6 categories
    assert calls == [30] and n == 30
    _, _, calls = _step("softmax", 8)
    assert calls[:4] == [8, 8, 8, 6]  # the forward
    assert calls[4:] == [6, 8, 8, 8]  # the backward recomputes them, last chunk first


def test_without_gradients_the_chunks_are_evaluated_once() -> None:
    loss_fn = MLPLoss(4, 3)
    z = torch.randn(10, 3, dtype=D)
    rows = torch.arange(10) % 4
    with torch.no_grad():
        whole = loss_fn(z, rows)
        parts = chunked(loss_fn, 4)(z, rows)
    assert loss_fn.calls == [10, 4, 4, 2]
    torch.testing.assert_close(parts, whole, rtol=1e-14, atol=0)


def _saved_bytes(fn) -> int:
    """Bytes that autograd saves for the backward, outside checkpointed regions, while ``fn``
    runs."""
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_only_the_chunks_inputs_are_kept_for_the_backward() -> None:
    """A loss with (N, 512) activations over 4096 pairs: one call keeps them all (~16 MB per
    layer); chunks of 256 keep the chunks' inputs and outputs."""
    n, k, hidden = 4096, 8, 512
    loss_fn = MLPLoss(n // k, k, hidden=hidden)
    scores = torch.randn(n // k, k, dtype=D, requires_grad=True)
    estimator = SoftmaxMarginalization()
    whole = _saved_bytes(lambda: estimator(scores, loss_fn))
    parts = _saved_bytes(lambda: estimator(scores, chunked(loss_fn, 256)))
    assert whole > n * hidden * 8  # the tanh's input and output at least
    assert parts < whole / 20


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        chunked(MLPLoss(2, 2), 0)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked(MLPLoss(2, 2), 2.5)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        chunked("not a function", 4)
    with pytest.raises(ValueError, match=r"latents z of shape \(6, ...\)"):
        chunked(MLPLoss(2, 2), 4)(torch.zeros(5, 2, dtype=D), torch.zeros(6, dtype=torch.long))
    # a loss_fn of the wrong shape is named as unchunked (torch.cat's error on 0-d pieces before)
    for wrong in (lambda z, rows: z.sum(), lambda z, rows: z):
        with pytest.raises(ValueError, match=r"loss_fn must return a tensor of shape \(5,\)"):
            SoftmaxMarginalization()(torch.randn(3, 4), chunked(wrong, 5))
