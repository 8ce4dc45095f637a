"""The 256-way pixel likelihood of the bit-vector VAE: one ``Linear(r → V)`` shared by all pixels
turns each pixel's r decoder features into V logits, and

    ℓ_n = −log p(x_n | h_n) = Σ_p [logsumexp_j (w_j · h_np + b_j) − (w_{x_np} · h_np + b_{x_np})]

(Correia et al. 2020 §5.3). Two paths compute the same ℓ:

- plain: the logits ``(N·P, V)`` as one matrix product, then ``F.cross_entropy``: it writes
  the logits, and reads and writes them again in its log-softmax and in the backward (at
  P = 784, V = 256: 0.8 MB per image, moved several times, for a few hundred thousand
  exponentials);
- fused (CPU, float32/float64): kernels that ``torch.compile`` generates (inductor's C++
  backend) compute each pixel's V logits in registers, r multiply-adds each, inside one pass
  that sums their exponentials, and never store them. The logits are shifted by an upper bound
  of their maximum computed from the r features alone, ``max_j b_j + Σ_k max(h_k max_j W_jk,
  h_k min_j W_jk)``, instead of the maximum itself (a pass of its own); the pixels where the
  bound lies so far above the maximum that their exponentials near underflow (about 65 nats in
  float32) are redone with the maximum (two passes). The
  backward forms ``g softmax`` and ``∂h = G W`` in one pass (its only ``(N·P, V)`` store), then
  ``∂W = Gᵀ h`` as a BLAS product and ``∂b = Σ_rows G`` as a column sum over it, of
  ``G = g (softmax − onehot(x))``; the one-hot part is gathered and index-added, M rows of r.

Same values up to rounding; measured speed-ups in ``docs/guide/tasks/bitvector_vae.md`` (and
``benchmarks/bench_pixel_likelihood.py``). The fused path compiles once per process and dtype
(the backward twice: up to 4,096 rows and more), a few seconds each, with the number of rows
dynamic; inductor caches the code on disk. A failed compilation switches it off for the process
(``latentgrad._compile``) and the plain path answers. Other devices and dtypes, fewer than two
rows, ``torch.func`` transforms and code being compiled take the plain path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from latentgrad._compile import Compiled, transforms_active
from latentgrad._validation import violated

# inductor materialises a pointwise result read by several reductions once it counts more than a
# few loads or ops in it: r multiply-adds are cheaper to redo in each pass than to write to memory
_INDUCTOR = {"realize_reads_threshold": 64, "realize_opcount_threshold": 64}
_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class _PixelLogits(torch.autograd.Function):
    """``F.linear(h, weight, bias)`` for ``h`` ``(N, r)`` with many rows and few columns (the
    shared pixel layer: N = 784 × decodes, r = 5). Same forward; in the backward the weight
    gradient ``Σ_n g_n h_nᵀ`` ``(out, r)`` is computed as ``(hᵀ g)ᵀ``, the same sum in another
    order, where autograd's ``gᵀ h`` hits a slow CPU GEMM for r = 5 (132 vs 10 ms at N = 50,176,
    256 outputs). The input and bias gradients are autograd's ``g W`` and ``Σ_n g_n``."""

    @staticmethod
    def forward(ctx: FunctionCtx, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(h, weight)
        return F.linear(h, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        h, weight = ctx.saved_tensors
        needs_h, needs_weight, needs_bias = ctx.needs_input_grad
        return (
            grad @ weight if needs_h else None,
            (h.T @ grad).T if needs_weight else None,
            grad.sum(0) if needs_bias else None,
        )


# ---------------------------------------------------------------------------------------------
# The fused kernels: rows h (M, r), the layer as wt = Wᵀ (r, V) and b (V,), targets x (M,)
# ---------------------------------------------------------------------------------------------


def _logits(h: Tensor, wt: Tensor, b: Tensor) -> Tensor:
    """``h Wᵀ + b`` ``(M, V)`` as r broadcast multiply-adds: a pointwise chain that inductor
    recomputes inside each reduction reading it (with ``_INDUCTOR``), never a stored matrix."""
    out = b
    for k in range(wt.shape[0]):
        out = out + h[:, k : k + 1] * wt[k]
    return out


def nll_kernel(h: Tensor, wt: Tensor, b: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row ``−log softmax(W h + b)[x]`` ``(M,)``, its logsumexp ``(M,)`` and the sum
    ``Σ_j exp(l_j − c)`` ``(M,)`` of its logits ``l`` shifted by their upper bound ``c``
    (module docstring): one pass over the logits."""
    bound = b.max() + torch.maximum(h * wt.max(1).values, h * wt.min(1).values).sum(-1)
    total = (_logits(h, wt, b) - bound.unsqueeze(-1)).exp().sum(-1)
    lse = bound + total.log()
    return lse - (h * wt.T[x]).sum(-1) - b[x], lse, total


def nll_max_kernel(h: Tensor, wt: Tensor, b: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``nll_kernel``'s first two outputs with the logits shifted by their maximum (two passes:
    the maximum, then the sum of exponentials)."""
    lse = torch.logsumexp(_logits(h, wt, b), -1)
    return lse - (h * wt.T[x]).sum(-1) - b[x], lse


def nll_vjp_kernel(h: Tensor, wt: Tensor, b: Tensor, x: Tensor, lse: Tensor,
                   g: Tensor) -> tuple[Tensor, Tensor]:
    """The row part of the VJP of ``nll_kernel``'s first output with ``g`` ``(M,)``: with
    ``G = g (softmax − onehot(x))`` ``(M, V)``, the stored ``g softmax`` ``(M, V)`` and
    ``∂h = G W`` ``(M, r)`` (its one-hot part by a gather). ``∂wt = hᵀ G`` and ``∂b = Σ_rows G``
    are left to ``_vjp``: a BLAS product and a column sum over the stored matrix are faster than
    inductor's column reductions over it (one pass each, where those took r + 1)."""
    weighted = g.unsqueeze(-1) * (_logits(h, wt, b) - lse.unsqueeze(-1)).exp()
    grad_h = torch.stack([(weighted * wt[k]).sum(-1) for k in range(wt.shape[0])], -1)
    return weighted, grad_h - g.unsqueeze(-1) * wt.T[x]


_NLL = Compiled(nll_kernel, dynamic=False, options=_INDUCTOR)
_NLL_MAX = Compiled(nll_max_kernel, dynamic=False, options=_INDUCTOR)
_NLL_VJP = Compiled(nll_vjp_kernel, dynamic=False, options=_INDUCTOR)


def _rows_dynamic(*tensors: Tensor) -> tuple[Tensor, ...]:
    """The tensors, their first dimension (rows) marked dynamic: one compilation serves every
    number of rows (r and V stay static)."""
    for t in tensors:
        torch._dynamo.mark_dynamic(t, 0)
    return tensors


def _plain_nll(h: Tensor, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Per row ``−log softmax(W h + b)[x]`` ``(M,)`` through the stored logits."""
    return F.cross_entropy(_PixelLogits.apply(h, weight, bias), x, reduction="none")


def _fused_applies(h: Tensor, weight: Tensor) -> bool:
    """Whether the rows ``h`` ``(M, r)`` take the fused path."""
    return (h.device.type == "cpu" and h.dtype in (torch.float32, torch.float64)
            and weight.dtype == h.dtype and h.shape[0] >= 2
            and not torch.compiler.is_compiling() and not transforms_active())


def _redo_loose_rows(nll: Tensor, lse: Tensor, total: Tensor, h: Tensor, wt: Tensor, b: Tensor,
                     x: Tensor) -> tuple[Tensor, Tensor] | None:
    """``nll_kernel``'s ``(nll, lse)`` with the rows whose shifted sum ``total`` is below
    ``V · tiny / eps`` (or not finite) redone by ``nll_max_kernel``: there the bound lies so far
    above the row's maximum that terms within rounding of the largest could be subnormal.
    ``None`` if that kernel is unavailable."""
    finfo = torch.finfo(total.dtype)
    loose = (~(total >= wt.shape[1] * finfo.tiny / finfo.eps)).nonzero().squeeze(1)
    if loose.numel() == 0:
        return nll, lse
    if loose.numel() == 1:  # the kernels take two rows or more (a dynamic dimension)
        loose = loose.repeat(2)
    redone = _NLL_MAX(_rows_dynamic(h[loose])[0], wt, b, _rows_dynamic(x[loose])[0])
    if redone is None:
        return None
    return nll.index_put((loose,), redone[0]), lse.index_put((loose,), redone[1])


def _fused_nll(h: Tensor, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor | None:
    """Per row NLL ``(M,)`` by ``nll_kernel`` (differentiable), or ``None`` if the kernel is
    unavailable."""
    h_rows, x_rows = _rows_dynamic(h.detach(), x)
    wt, b = weight.detach().T.contiguous(), bias.detach()
    with torch.no_grad():  # one compilation for training and evaluation (grad mode is guarded)
        found = _NLL(h_rows, wt, b, x_rows)
        if found is not None:
            found = _redo_loose_rows(*found, h_rows, wt, b, x_rows)
    if found is None:
        return None
    nll, lse = found
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad
                                    or bias.requires_grad):
        return _FusedPixelNLL.apply(h, weight, bias, x, nll, lse)
    return nll


class _FusedPixelNLL(torch.autograd.Function):
    """Rows ``(h, weight, bias, x)`` -> the per-row NLL ``nll`` that ``nll_kernel`` computed from
    them (with its logsumexp ``lse``), differentiable through ``_vjp``."""

    @staticmethod
    def forward(ctx: FunctionCtx, h: Tensor, weight: Tensor, bias: Tensor, x: Tensor,
                nll: Tensor, lse: Tensor) -> Tensor:
        ctx.save_for_backward(h, weight, bias, x, lse)
        return nll.view_as(nll)  # an output, not an input

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        grads = _vjp(*ctx.saved_tensors, grad)
        needs = ctx.needs_input_grad
        return (*(g if need else None for g, need in zip(grads, needs, strict=False)),
                None, None, None)


def _vjp(h: Tensor, weight: Tensor, bias: Tensor, x: Tensor, lse: Tensor,
         grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(∂h, ∂W, ∂b)`` of the per-row NLL with ``grad`` ``(M,)``: ``nll_vjp_kernel``, or the
    plain path's autograd should that kernel be unavailable. Rows of zero ``grad`` (the decodes
    of a self-critic baseline, read detached) add nothing to any of the three: with two or more
    other rows, only those are computed (``∂h`` is 0 on the rest)."""
    live = grad.nonzero().squeeze(1)
    if 2 <= live.shape[0] < grad.shape[0]:
        grad_h, grad_w, grad_b = _vjp(h[live], weight, bias, x[live], lse[live], grad[live])
        return h.new_zeros(h.shape).index_copy(0, live, grad_h), grad_w, grad_b
    h_rows, x_rows, lse_rows, grad_rows = _rows_dynamic(h, x, lse, grad.contiguous())
    with torch.no_grad():
        found = _NLL_VJP(h_rows, weight.T.contiguous(), bias, x_rows, lse_rows, grad_rows)
        if found is not None:
            weighted, grad_h = found
            # the one-hot part of G: -g at (row, x_row), gathered by index-adds of M rows
            grad_w = (h.T @ weighted).T - torch.zeros_like(weight).index_add(
                0, x, grad.unsqueeze(-1) * h)
            grad_b = weighted.sum(0) - torch.zeros_like(bias).index_add(0, x, grad)
            return grad_h, grad_w, grad_b
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_() for t in (h, weight, bias)]
        return torch.autograd.grad(_plain_nll(inputs[0], x, *inputs[1:]), inputs, grad)


def pixel_nll(h: Tensor, x: Tensor, layer: nn.Linear, fused: bool = True) -> Tensor:
    """``ℓ_n = −log p(x_n | h_n)`` (module docstring) ``(N,)`` for decoder features ``h``
    ``(N, P, r)`` and targets ``x`` ``(N, P)`` (integers in ``[0, V)``, V = ``layer``'s
    outputs), through the shared ``layer`` (``Linear(r → V)``). ``fused``: take the fused path
    where it applies (module docstring); the plain path otherwise."""
    _check(h, x, layer)
    n, pixels, rank = h.shape
    rows, targets = h.reshape(n * pixels, rank), x.reshape(n * pixels).long()
    nll = None
    if fused and _fused_applies(rows, layer.weight):
        nll = _fused_nll(rows, targets, layer.weight, layer.bias)
    if nll is None:
        nll = _plain_nll(rows, targets, layer.weight, layer.bias)
    return nll.view(n, pixels).sum(-1)


def _check(h: Tensor, x: Tensor, layer: nn.Linear) -> None:
    """Shapes and dtypes of ``pixel_nll``'s inputs; the range of ``x`` when value checks are on
    (``latentgrad.set_default_validate_args``; one reduction, one sync)."""
    if not isinstance(h, Tensor) or not h.is_floating_point():
        raise TypeError(f"h must be a floating-point tensor, got {getattr(h, 'dtype', type(h))}")
    if h.dim() != 3 or h.shape[-1] != layer.in_features:
        raise ValueError(f"h must have shape (N, P, {layer.in_features}) (decoder features per "
                         f"pixel), got {tuple(h.shape)}")
    if not isinstance(x, Tensor) or x.dtype not in _INTEGER_DTYPES:
        raise TypeError(f"x must be an integer tensor (pixel values), got "
                        f"{getattr(x, 'dtype', type(x))}")
    if x.shape != h.shape[:2]:
        raise ValueError(f"x must have shape (N, P) = {tuple(h.shape[:2])} like h, got "
                         f"{tuple(x.shape)}")
    if violated(x, lambda v: (v.long() >= 0) & (v.long() < layer.out_features)):
        raise ValueError(f"x must hold values in [0, {layer.out_features}), got values "
                         f"from {int(x.long().min())} to {int(x.long().max())}")
