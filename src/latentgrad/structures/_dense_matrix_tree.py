"""Matrix-tree log-counts by batched dense factorisation, with a per-row trust test.

The fast path of the tree structures. With column shifts ``m_j`` (the largest
score into node j), ``log Z = sum_j m_j + log det Ã`` where ``Ã`` is the normalised Laplacian
minor: off-diagonal entries ``-exp(θ - m)`` in ``[-1, 0]``, diagonal (the normalised degree) in
``[1, n - 1]``, so nothing overflows. ``Ã`` is factorised for all rows at once (Cholesky
for the symmetric spanning-tree minor, LU otherwise) and inverted; the inverse ``M`` gives the
gradient ``d log det Ã = <M^T, dÃ>`` and its own derivative ``dM = -M dÃ M`` (so ``log Z`` is
differentiable to any order by autograd, all in batched matrix products).

Trust test. A backward-stable factorisation returns the exact determinant and inverse of
``Ã + ΔÃ`` with ``|ΔÃ| <~ n eps s`` entrywise, ``s`` the largest diagonal entry (the factors of
the Laplacian minors, diagonally dominant M-matrices, stay bounded by it; Koo's matrix differs
from one in its first row, and the tests check the bound on it empirically, over many score
scales). To first order the error of ``M`` is
``M ΔÃ M``, so every marginal (and every entry of ``grad log Z``) is off by at most
``n eps s ||M||_inf ||M||_1``, and ``log det`` by less.
A row is trusted when the factorisation succeeded, the determinant is positive and finite, and
that bound is below ``TOLERANCE``. The computed ``||M||`` is a reliable witness: ``||M||_inf >=
||M||_2 = 1 / sigma_min(Ã + ΔÃ)``, so an ill-conditioned ``Ã`` cannot hide behind a small
computed inverse. Rows that fail (weak bridges between strongly bound groups, where the true
``det Ã`` is below ``eps``) get zero from here and are recomputed by the subtraction-free
elimination of ``_matrix_tree`` (``_tree_counts``).

Marginals in closed form from ``M`` (padded by zeros at the ground node: node 0, or for
spanning trees the node of largest degree). ``log Z`` does not depend on the shifts ``m`` (they
cancel exactly, as long as the diagonal of ``Ã`` is written as the shifted degree), so ``m``
carries no gradient and the marginals, and their derivatives, follow from ``Ã`` alone:
- undirected: ``μ_ij = P_ij M_ii + P_ji M_jj - 2 W̃_ij M_ij`` with ``P_ij = exp(θ_ij - m_i)``
  and ``W̃_ij = exp(θ_ij - (m_i + m_j)/2)`` (both triangles);
- rooted at 0: ``μ_{i->j} = Q_ij (M_jj - M_ji)`` with ``Q_ij = exp(θ_ij - m_j)``;
- single root (Koo): the same with ``M``'s column 0 zeroed, and ``μ_jj = exp(ρ_j - m_j) M_j0``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from .._autograd import apply
from .._host import host_reads_free

#: Bound on the first-order error of a trusted row's marginals (absolute, float64).
TOLERANCE = 1e-9


class _LogdetInverse(torch.autograd.Function):
    """``(log det A, A^{-1}, ok)`` for a batch ``A`` ``(B, k, k)`` of float64 matrices.

    Cholesky when ``symmetric`` (A must be symmetric; only its lower triangle is read), LU
    otherwise. ``ok`` ``(B,)`` flags the rows that pass the trust test; the others return
    ``log det = 0`` and ``A^{-1} = 0`` (so they carry zero gradient). Backward:
    ``grad_A = g_logdet A^{-T} - A^{-T} g_inv A^{-T}``, written in differentiable operations on
    the saved inverse, hence differentiable again.
    """

    @staticmethod
    def forward(a: Tensor, symmetric: bool) -> tuple[Tensor, Tensor, Tensor]:
        k = a.shape[-1]
        eye = torch.eye(k, dtype=a.dtype, device=a.device)
        if symmetric:
            factor, info = torch.linalg.cholesky_ex(a)
            ok = info == 0
            if not (host_reads_free(a) and bool(ok.all())):  # skip the select where it is free
                factor = torch.where(ok[:, None, None], factor, eye)
            logdet = 2 * factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            inverse = torch.cholesky_inverse(factor)
            row_sums = inverse.abs().sum(-1).amax(-1)
            norms = row_sums * row_sums  # ||M||_1 = ||M||_inf
        else:
            lu, pivots, info = torch.linalg.lu_factor_ex(a)
            diag = lu.diagonal(dim1=-2, dim2=-1)
            identity = torch.arange(1, k + 1, dtype=pivots.dtype, device=a.device)
            flips = (pivots != identity).sum(-1) + (diag < 0).sum(-1)
            ok = (info == 0) & (flips % 2 == 0)
            if not (host_reads_free(a) and bool(ok.all())):
                lu = torch.where(ok[:, None, None], lu, eye)
                pivots = torch.where(ok[:, None], pivots, identity)
            logdet = lu.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)
            inverse = torch.linalg.lu_solve(lu, pivots, eye.expand_as(a))
            magnitudes = inverse.abs()
            norms = magnitudes.sum(-1).amax(-1) * magnitudes.sum(-2).amax(-1)
        scale = a.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1)
        bound = k * torch.finfo(a.dtype).eps * scale * norms
        ok = ok & torch.isfinite(logdet) & (bound <= TOLERANCE)
        if not (host_reads_free(a) and bool(ok.all())):
            logdet = torch.where(ok, logdet, 0.0)
            inverse = torch.where(ok[:, None, None], inverse, 0.0)
        return logdet, inverse, ok

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, inverse, ok = output
        ctx.mark_non_differentiable(ok)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(inverse)

    @staticmethod
    def backward(ctx, g_logdet: Tensor | None, g_inverse: Tensor | None, _):
        (inverse,) = ctx.saved_tensors
        inverse_t = inverse.mT
        grad = None
        if g_logdet is not None:
            grad = g_logdet[:, None, None] * inverse_t
        if g_inverse is not None:
            term = inverse_t @ g_inverse @ inverse_t
            grad = -term if grad is None else grad - term
        return grad, None


def _trusted_log_det(shift: Tensor, normalised: Tensor, symmetric: bool) -> tuple[Tensor, Tensor]:
    """``sum(shift) + log det normalised`` ``(B,)`` and the trust flags ``(B,)``."""
    logdet, _, ok = apply(_LogdetInverse, normalised, symmetric)
    return torch.where(ok, shift.sum(-1) + logdet, 0.0), ok


def _padded_inverse(normalised: Tensor, symmetric: bool) -> tuple[Tensor, Tensor]:
    """The inverse, zero-padded at row and column 0, and the trust flags."""
    _, inverse, ok = apply(_LogdetInverse, normalised, symmetric)
    return torch.nn.functional.pad(inverse, (1, 0, 1, 0)), ok


def _masked(logw: Tensor) -> tuple[Tensor, Tensor]:
    """``logw`` with ``-inf`` on the diagonal (no self-loops) and the shifts ``m_j = max_i
    logw_ij`` (no gradient)."""
    eye = torch.eye(logw.shape[-1], dtype=torch.bool, device=logw.device)
    lw = logw.masked_fill(eye, float("-inf"))
    return lw, lw.detach().amax(-2)


def _sum_with_transpose(a: Tensor) -> Tensor:
    """``a + aᵀ`` ``(B, n, n)`` in float64, into one fresh buffer (a transposed, casting copy
    and an in-place add) where casting first and adding would allocate two: at batch size each
    fresh buffer is page-faulted in, which costs as much as the arithmetic."""
    out = torch.empty(a.shape, dtype=torch.float64, device=a.device)
    return out.copy_(a.mT).add_(a)


def symmetric_float64(scores: Tensor) -> Tensor:
    """``(θ + θᵀ)/2`` of ``(B, n, n)`` scores in float64 with a zero diagonal (differentiable;
    the diagonal gets zero gradient)."""
    work = scores.to(torch.float64)
    symmetric = (work + work.mT).mul_(0.5)
    symmetric.diagonal(dim1=-2, dim2=-1).zero_()
    return symmetric


def _graph_vjp(
    graph: Callable[..., tuple[Tensor, ...]], inputs: tuple[Tensor, ...], grad: Tensor
) -> tuple[Tensor | None, ...]:
    """The VJP of ``graph(*inputs)[0]`` by autograd, differentiable again (``create_graph``):
    the double backward of the closed-form marginal functions below."""
    marginals = graph(*inputs)[0]
    return torch.autograd.grad(marginals, inputs, grad, create_graph=True, allow_unused=True)


def _arc_cotangent(grad: Tensor, q: Tensor) -> Tensor:
    """``∂L/∂N = diag(Σ_i G_ij Q_ij) − (G∘Q)ᵀ`` for arc marginals ``μ_ij = Q_ij (N_jj − N_ji)``
    and their cotangent ``G``: a fresh ``(B, n, n)`` buffer."""
    weighted = grad * q
    x = weighted.mT.neg()
    x.diagonal(dim1=-2, dim2=-1).add_(weighted.sum(-2))
    return x


def _grounded(diagonal: Tensor, weights: Tensor) -> Tensor:
    """``diag(diagonal) - weights`` without row and column 0: ``(B, n-1, n-1)``, one buffer."""
    minor = weights[:, 1:, 1:].neg()
    minor.diagonal(dim1=-2, dim2=-1).copy_(diagonal[:, 1:])
    return minor


def _clear_cross(x: Tensor, node: Tensor) -> Tensor:
    """Zero row and column ``node[b]`` of every ``x[b]`` of ``(B, n, n)`` ``x``, in place:
    ``B n`` writes where a ``(B, n, n)`` mask would be built and read."""
    batch = torch.arange(x.shape[0], device=x.device)
    x[batch, node] = 0.0
    x[batch, :, node] = 0.0
    return x


def _undirected(lw: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``P``, ``W̃``, the ground node ``r`` one-hot ``(B, n)`` and the normalised Laplacian
    ``(B, n, n)`` (diagonal ``sum_j P_ij``) with row and column r replaced by those of the
    identity (same determinant and, off ``(r, r)``, the same inverse as the minor ``Ã``), from
    ``_masked``'s ``(lw, m)``; ``lw`` is overwritten (it becomes ``W̃``).

    The ground is the node of largest degree: it keeps ``Ã`` far better conditioned than a fixed
    node when the degrees are uneven (strong scores), so more rows pass the trust test.
    """
    prob = (lw - m[:, :, None]).exp_()
    half = m / 2
    w_tilde = lw.sub_(half[:, :, None]).sub_(half[:, None, :]).exp_()
    degree = prob.sum(-1)
    node = (m + degree.detach().log()).argmax(-1)
    ground = torch.nn.functional.one_hot(node, m.shape[-1]).bool()
    grounded = w_tilde.neg()  # in place from here on: no new (B, n, n) buffers
    grounded.diagonal(dim1=-2, dim2=-1).copy_(degree)
    _clear_cross(grounded, node)
    grounded.diagonal(dim1=-2, dim2=-1).masked_fill_(ground, 1.0)
    return prob, w_tilde, ground, grounded


def dense_log_count_undirected(logw: Tensor) -> tuple[Tensor, Tensor]:
    """Kirchhoff: ``log`` of the weighted count of spanning trees of symmetric ``logw``
    ``(B, n, n)`` (diagonal ignored) and the trust flags ``(B,)``.

    ``Ã = D_m^{-1/2} L D_m^{-1/2}`` without the row and column of the ground node r,
    ``D_m = diag(exp(m))``: ``Ã_ij = -exp(θ_ij - (m_i + m_j)/2)``;
    ``log Z = sum_{i != r} m_i + log det Ã`` (Cholesky).
    """
    lw, m = _masked(logw)
    _, _, ground, normalised = _undirected(lw, m)
    return _trusted_log_det(m.masked_fill(ground, 0), normalised, symmetric=True)


def _undirected_marginals_of(lw: Tensor, m: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """Edge marginals (float64) from ``_masked``'s ``(lw, m)`` of symmetric scores, the trust
    flags, and ``(P, W̃, M, r)``: ``M`` the inverse of the grounded matrix (the minor's inverse
    padded, with ``M_rr = 1``, which no marginal reads: ``W̃_rr = 0``) and the ground one-hot
    ``r`` of the trusted rows. Differentiable operations (any order)."""
    prob, w_tilde, ground, normalised = _undirected(lw, m)
    _, inverse, ok = apply(_LogdetInverse, normalised, True)
    ground = ground & ok[:, None]
    diagonal = inverse.diagonal(dim1=-2, dim2=-1) - ground.to(inverse.dtype)  # M_rr = 0
    half = prob * diagonal[:, :, None]
    marginals = (half + half.mT).addcmul_(w_tilde, inverse, value=-2)
    return marginals, ok, (prob, w_tilde, inverse, ground)


def _undirected_marginals_graph(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Edge marginals of ``(θ + θᵀ)/2`` (in ``scores``' dtype) and the trust flags, in
    differentiable operations (any order)."""
    marginals, ok, _ = _undirected_marginals_of(*_masked(symmetric_float64(scores)))
    return marginals.to(scores.dtype), ok


class _UndirectedMarginals(torch.autograd.Function):
    """``(μ, ok, P, W̃, M, r)`` of ``(B, n, n)`` scores θ (any float dtype; the computation runs
    on ``(θ + θᵀ)/2`` in float64, μ is returned in θ's dtype, only μ carries a gradient), with
    a closed-form backward.

    With ``H = G + Gᵀ`` (G the cotangent of μ), μ = P∘(diag(M) 1ᵀ) + (…)ᵀ − 2 W̃∘M gives
    ∂L/∂M = X = diag(Σ_j H_ij P_ij) − H∘W̃ and, through M = Ã⁻¹, ∂L/∂Ã = Y = −M X M. As
    Ã_ii = Σ_j P_ij and Ã_ij = −W̃_ij, the cotangent of the symmetrised scores is
    Γ_ij = P_ij (H_ij M_ii + Y_ii) − W̃_ij (H_ij M_ij + Y_ij), and that of θ is (Γ + Γᵀ)/2
    with a zero diagonal: two batched products and a few elementwise passes, where autograd
    walks the whole chain. A double backward (``create_graph``) differentiates
    :func:`_undirected_marginals_graph` instead.
    """

    @staticmethod
    def forward(scores: Tensor) -> tuple[Tensor, ...]:
        lw = _sum_with_transpose(scores).mul_(0.5)  # symmetric_float64's values, masked as by
        lw.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))  # _masked, without its extra buffer
        marginals, ok, saved = _undirected_marginals_of(lw, lw.amax(-2))
        return marginals.to(scores.dtype), ok, *saved

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        (scores,) = inputs
        _, ok, prob, w_tilde, inverse, ground = output
        ctx.mark_non_differentiable(ok, prob, w_tilde, inverse, ground)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(scores, prob, w_tilde, inverse, ground)

    @staticmethod
    def backward(ctx, grad: Tensor | None, *_):
        if grad is None:
            return None
        scores, prob, w_tilde, inverse, ground = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: differentiate the graph itself
            return _graph_vjp(_undirected_marginals_graph, (scores,), grad)[0]
        # in place wherever a buffer is free: fresh (B, n, n) buffers cost more than the math
        sym = _sum_with_transpose(grad)
        x = (sym * w_tilde).neg_()  # W̃_ii = 0: the diagonal is only the degree term
        x.diagonal(dim1=-2, dim2=-1).add_(torch.linalg.vecdot(sym, prob))
        # M (with M_rr = 1) around X without row and column r equals M0 X M0 (M0: M_rr = 0)
        # (untrusted rows have no ground and M = 0: clearing their node 0 changes nothing)
        _clear_cross(x, ground.to(torch.uint8).argmax(-1))
        left = torch.bmm(inverse, x)
        y = torch.bmm(left, inverse, out=x).neg_()
        diagonal = inverse.diagonal(dim1=-2, dim2=-1) - ground.to(inverse.dtype)
        y_diagonal = y.diagonal(dim1=-2, dim2=-1)[:, :, None]
        gamma = torch.addcmul(y_diagonal, sym, diagonal[:, :, None], out=left).mul_(prob)
        gamma.sub_(sym.mul_(inverse).add_(y).mul_(w_tilde))
        out = y.copy_(gamma.mT).add_(gamma).mul_(0.5)  # (Γ + Γᵀ)/2 in y's buffer
        out.diagonal(dim1=-2, dim2=-1).zero_()
        return out.to(scores.dtype)


def dense_marginals_undirected(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Edge marginals ``(B, n, n)`` (symmetric, zero diagonal, in ``scores``' dtype) of the
    symmetrised scores ``(θ + θᵀ)/2`` (diagonal ignored) and the trust flags ``(B,)``;
    untrusted rows are zero. Differentiable to any order."""
    marginals, ok, *_ = apply(_UndirectedMarginals, scores)
    return marginals, ok


def _rooted(logw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Shifts ``m``, ``Q`` and the grounded normalised minor ``Ã`` (diagonal ``sum_i Q_ij``)."""
    lw, m = _masked(logw)
    q = lw.sub_(m[:, None, :]).exp_()  # lw is _masked's fresh buffer
    return m, q, _grounded(q.sum(-2), q)


def dense_log_count_rooted_at_zero(logw: Tensor) -> tuple[Tensor, Tensor]:
    """Tutte: ``log`` of the weighted count of arborescences rooted at node 0 of ``logw``
    ``(B, n, n)`` (arc i -> j; diagonal and column 0 ignored) and the trust flags ``(B,)``.

    ``Ã = L D_m^{-1}`` without row/column 0: ``Ã_ij = -exp(θ_ij - m_j)``;
    ``log Z = sum_{j>0} m_j + log det Ã`` (LU).
    """
    m, _, normalised = _rooted(logw)
    return _trusted_log_det(m[:, 1:], normalised, symmetric=False)


def _rooted_marginals_graph(logw: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(μ, ok, Q, N)`` of arborescences rooted at 0 in differentiable operations (any order):
    ``μ_ij = Q_ij (N_jj - N_ji)``, ``N`` the inverse of ``Ã`` padded by zeros at node 0."""
    _, q, normalised = _rooted(logw)
    inverse, ok = _padded_inverse(normalised, symmetric=False)
    return q * (inverse.diagonal(dim1=-2, dim2=-1)[:, None, :] - inverse.mT), ok, q, inverse


def _in_dtype(graph: Callable[[Tensor], tuple[Tensor, ...]], scores: Tensor) -> tuple[Tensor, ...]:
    """``graph``'s outputs for ``scores`` of any float dtype: computed on the float64 scores,
    the first output (the marginals, the only differentiable one) cast back to ``scores``'
    dtype. The arborescence marginal functions' forward, and the graph their double backward
    differentiates."""
    marginals, *rest = graph(scores.to(torch.float64))
    return marginals.to(scores.dtype), *rest


class _RootedMarginals(torch.autograd.Function):
    """``(μ, ok, Q, N)`` of arc scores ``logw`` ``(B, n, n)`` (any float dtype; computed in
    float64, μ returned in the scores' dtype; only μ carries a gradient), with a closed-form
    backward that also takes the casts.

    For the cotangent G of μ: ∂L/∂N = X = diag(Σ_i G_ij Q_ij) − (G∘Q)ᵀ, through N = Ã⁻¹ (padded)
    ∂L/∂Ã = Y = −Nᵀ X Nᵀ (zero in row and column 0), and as Ã_jj = Σ_i Q_ij, Ã_ij = −Q_ij,
    ∂L/∂Q_ij = G_ij (N_jj − N_ji) + Y_jj − Y_ij; the cotangent of logw is Q ∘ ∂L/∂Q (the shifts
    cancel from μ, so they carry none). A double backward differentiates
    :func:`_rooted_marginals_graph` (through :func:`_in_dtype`).
    """

    @staticmethod
    def forward(logw: Tensor) -> tuple[Tensor, ...]:
        return _in_dtype(_rooted_marginals_graph, logw)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, ok, q, inverse = output
        ctx.mark_non_differentiable(ok, q, inverse)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(inputs[0], q, inverse)

    @staticmethod
    def backward(ctx, grad: Tensor | None, *_):
        if grad is None:
            return None
        logw, q, inverse = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _graph_vjp(partial(_in_dtype, _rooted_marginals_graph), (logw,), grad)[0]
        x = _arc_cotangent(grad, q)  # float64 (Q is): G's cast folded into the product
        inverse_t = inverse.mT
        p = torch.bmm(torch.bmm(inverse_t, x), inverse_t, out=x)  # P = −Y
        dq = torch.sub(inverse.diagonal(dim1=-2, dim2=-1)[:, None, :], inverse_t)
        dq.mul_(grad).sub_(p.diagonal(dim1=-2, dim2=-1)[:, None, :]).add_(p).mul_(q)
        return dq.to(logw.dtype)


def dense_marginals_rooted_at_zero(logw: Tensor) -> tuple[Tensor, Tensor]:
    """Arc marginals ``(B, n, n)`` of arborescences rooted at 0 (any float dtype, returned in
    it) and the trust flags ``(B,)``."""
    marginals, ok, *_ = apply(_RootedMarginals, logw)
    return marginals, ok


def _single_root(logw: Tensor, root_scores: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Shifts ``m``, ``Q``, the root row ``exp(ρ - m)`` and Koo's normalised matrix (the
    Laplacian ``diag(Σ_i Q_ij) − Q`` with its row 0 replaced by the root row), each ``(B, n, n)``
    buffer written once: at batch size every pass over one costs as much as the arithmetic."""
    lw, m = _masked(logw)
    m = torch.maximum(m, root_scores.detach())
    q = lw.sub_(m[:, None, :]).exp_()  # lw is _masked's fresh buffer
    root_row = (root_scores - m).exp()
    koo = q.neg()
    koo.diagonal(dim1=-2, dim2=-1).copy_(q.sum(-2))
    koo[:, 0] = root_row
    return m, q, root_row, koo


def dense_log_count_single_root(logw: Tensor, root_scores: Tensor) -> tuple[Tensor, Tensor]:
    """Koo et al. (2007): ``log sum_j exp(ρ_j) A_j`` (``A_j``: arborescences of ``logw`` ``(B, n,
    n)`` rooted at j; ``ρ`` = ``root_scores`` ``(B, n)``) and the trust flags ``(B,)``.

    The in-degree Laplacian ``L`` with its first row replaced by ``exp(ρ)`` has determinant
    ``sum_j exp(ρ_j) A_j``; its columns are scaled by ``exp(-m_j)``,
    ``m_j = max(ρ_j, max_i θ_ij)`` (LU).
    """
    m, _, _, normalised = _single_root(logw, root_scores)
    return _trusted_log_det(m, normalised, symmetric=False)


def _single_root_marginals_graph(scores: Tensor) -> tuple[Tensor, ...]:
    """``(μ, ok, Q, r, M)`` of single-root trees of float64 ``scores`` ``(B, n, n)`` (arc scores
    off the diagonal, root scores ρ on it) in differentiable operations (any order):
    ``μ_ij = Q_ij (N_jj - N_ji)`` off the diagonal (``N``: ``M`` with column 0 zeroed),
    ``μ_jj = r_j M_j0``, ``r = exp(ρ - m)`` the root row of Koo's matrix, ``M`` its inverse."""
    _, q, root_row, normalised = _single_root(scores, scores.diagonal(dim1=-2, dim2=-1))
    _, inverse, ok = apply(_LogdetInverse, normalised, False)
    marginals = q * _arc_gap(inverse)  # zero diagonal (Q_jj = 0): the root children go there
    marginals.diagonal(dim1=-2, dim2=-1).add_(root_row * inverse[:, :, 0])
    return marginals, ok, q, root_row, inverse


def _arc_gap(inverse: Tensor) -> Tensor:
    """``N_jj − N_ji`` ``(B, n, n)`` for ``N``: the inverse ``M`` of Koo's matrix with column 0
    zeroed (a fresh buffer; differentiable). ``Nᵀ``'s row 0 is that zeroed column, so row 0 is
    ``N_jj`` alone."""
    diagonal = _without_first(inverse.diagonal(dim1=-2, dim2=-1))  # N_jj
    gap = torch.sub(diagonal[:, None, :], inverse.mT)
    gap[:, 0] = diagonal
    return gap


def _without_first(v: Tensor) -> Tensor:
    """A copy of ``v`` ``(B, n)`` with column 0 set to zero (differentiable)."""
    return torch.nn.functional.pad(v[:, 1:], (1, 0))


class _SingleRootMarginals(torch.autograd.Function):
    """``(μ, ok, Q, r, M)`` of scores θ ``(B, n, n)`` (any float dtype: arc scores off the
    diagonal, root scores ρ on it; computed in float64, μ returned in θ's dtype; only μ carries
    a gradient), with a closed-form backward that also takes the casts and writes ρ's cotangent
    into the diagonal of the arcs' (where autograd would add a separate diagonal buffer).

    For the cotangent G of μ: ∂L/∂M = X, the arcs' diag(Σ_i G_ij Q_ij) − (G∘Q)ᵀ with its
    column 0 replaced by ``G_jj r_j`` (the root marginals read column 0; the arcs do not);
    ∂L/∂A = Y = −Mᵀ X Mᵀ for Koo's matrix A (row 0 is r, rows j ≥ 1 the Laplacian's), so
    ∂L/∂Q_ij = G_ij (N_jj − N_ji) + Y_jj [j ≥ 1] − Y_ij [i ≥ 1] and ∂L/∂r_j = G_jj M_j0 + Y_0j;
    the cotangent of θ is Q ∘ ∂L/∂Q off the diagonal (Q_jj = 0) and r ∘ ∂L/∂r on it. A double
    backward differentiates :func:`_single_root_marginals_graph` (through :func:`_in_dtype`).
    """

    @staticmethod
    def forward(scores: Tensor) -> tuple[Tensor, ...]:
        return _in_dtype(_single_root_marginals_graph, scores)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, ok, q, root_row, inverse = output
        ctx.mark_non_differentiable(ok, q, root_row, inverse)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*inputs, q, root_row, inverse)

    @staticmethod
    def backward(ctx, grad: Tensor | None, *_):
        if grad is None:
            return None
        scores, q, root_row, inverse = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _graph_vjp(partial(_in_dtype, _single_root_marginals_graph), (scores,),
                              grad)[0]
        root_grad = grad.diagonal(dim1=-2, dim2=-1)
        root_column = inverse[:, :, 0]
        x = _arc_cotangent(grad, q)  # float64 (Q is): G's cast folded into the product
        x[:, :, 0] = root_grad * root_row
        inverse_t = inverse.mT
        p = torch.bmm(torch.bmm(inverse_t, x), inverse_t, out=x)  # P = −Y
        d_root = (root_grad * root_column).sub_(p[:, 0]).mul_(root_row)
        # ∂L/∂Q = G ∘ (N_jj − N_ji) − P_jj [j ≥ 1] + P_ij [i ≥ 1]
        p_diagonal = _without_first(p.diagonal(dim1=-2, dim2=-1))
        p[:, 0] = 0.0
        dq = _arc_gap(inverse).mul_(grad).sub_(p_diagonal[:, None, :]).add_(p).mul_(q)
        dq.diagonal(dim1=-2, dim2=-1).add_(d_root)
        return dq.to(scores.dtype)


def dense_marginals_single_root(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Marginals ``(B, n, n)`` of single-root trees of ``scores`` (arc scores off the diagonal,
    root scores on it; any float dtype, returned in it): ``P(i -> j)`` off the diagonal,
    ``P(j is the root's child)`` on it, and the trust flags ``(B,)``."""
    marginals, ok, *_ = apply(_SingleRootMarginals, scores)
    return marginals, ok
