"""Log elementary symmetric polynomials in log space (the k-subset / budget count DP).

``e_j(θ) = sum_{|S| = j} exp(sum_{i in S} θ_i)`` is the coefficient of ``x^j`` in the generating
polynomial ``prod_i (1 + e^{θ_i} x)``. Instead of the n-step recursion
``a_{i,j} = logaddexp(a_{i-1,j}, a_{i-1,j-1} + θ_i)`` the product is formed as a balanced tree of
pairwise polynomial products, each a log-space convolution truncated at degree ``max_count``:
``ceil(log2 n)`` batched steps instead of n, the same O(n · max_count) coefficients per level.

Every step is built from autograd ops whose gradients stay finite when entries are ``-inf``
(excluded items, padding, unreachable counts), so ``log Z`` is differentiable twice: its gradient
is the marginal vector and its Hessian the covariance the k-subset SST backward needs.
"""

from __future__ import annotations

import torch
from torch import Tensor


def safe_logsumexp(x: Tensor, dim: int) -> Tensor:
    """``logsumexp`` along ``dim`` whose first and second derivatives are finite (zero) on
    slices that are entirely ``-inf`` (``torch.logsumexp`` gives NaN gradients there)."""
    m = x.amax(dim=dim, keepdim=True).detach()
    dead = m == float("-inf")
    m_safe = torch.where(dead, torch.zeros_like(m), m)
    s = torch.exp(x - m_safe).sum(dim=dim, keepdim=True)
    s_safe = torch.where(dead, torch.ones_like(s), s)
    return torch.where(dead, m, m_safe + torch.log(s_safe)).squeeze(dim)


def _log_poly_product(a: Tensor, b: Tensor, degree: int) -> Tensor:
    """Coefficients ``0..degree`` of the product of two polynomials given by log-coefficients
    ``a`` ``(..., la)`` and ``b`` ``(..., lb)``: ``c_j = logsumexp_i (a_i + b_{j-i})``."""
    la, lb = a.shape[-1], b.shape[-1]
    j = torch.arange(degree + 1, device=a.device).unsqueeze(-1)
    shift = j - torch.arange(la, device=a.device)
    valid = (shift >= 0) & (shift < lb)
    b_shifted = b[..., shift.clamp(0, lb - 1)]
    terms = a.unsqueeze(-2) + b_shifted
    terms = torch.where(valid, terms, torch.full_like(terms, float("-inf")))
    return safe_logsumexp(terms, -1)


def log_elementary_symmetric(scores: Tensor, max_count: int) -> Tensor:
    """``log e_j(scores)`` for ``j = 0..max_count``.

    scores: ``(*batch, n)``, entries finite or ``-inf``. Returns ``(*batch, max_count + 1)``;
    entry ``j`` is ``-inf`` when fewer than ``j`` items are finite. Vectorised over the batch,
    the items and ``j``; the loop runs over the ``ceil(log2 n)`` levels of the product tree.
    """
    n = scores.shape[-1]
    batch = scores.shape[:-1]
    size = 1 << (n - 1).bit_length()  # pad to a power of two with excluded (-inf) items
    pad = torch.full((*batch, size - n), float("-inf"), dtype=scores.dtype, device=scores.device)
    items = torch.cat([scores, pad], dim=-1)
    # each item's polynomial 1 + e^{θ_i} x, as log-coefficients (0, θ_i), truncated at max_count
    poly = torch.stack([torch.zeros_like(items), items], dim=-1)[..., : max_count + 1]
    while poly.shape[-2] > 1:
        degree = min(2 * (poly.shape[-1] - 1), max_count)
        poly = _log_poly_product(poly[..., 0::2, :], poly[..., 1::2, :], degree)
    return poly.squeeze(-2)
