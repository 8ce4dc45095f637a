"""Independent float64 references for the simplex mappings (numpy/scipy, written from the math)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import brentq


def sparsemax_sort_reference(row: np.ndarray) -> np.ndarray:
    """Textbook sparsemax of one row by sorting (Martins & Astudillo 2016, Alg. 1); -inf -> 0."""
    finite = np.isfinite(row)
    with np.errstate(over="ignore"):  # -max - max overflows to -inf: outside the support anyway
        v = row[finite] - row[finite].max()  # exact: the map is shift invariant
        s = np.sort(v)[::-1]
        c = np.cumsum(s)
        k = np.arange(1, len(s) + 1)
        k_star = k[1 + k * s > c].max()
    tau = (c[k_star - 1] - 1) / k_star
    out = np.zeros_like(row)
    out[finite] = np.maximum(v - tau, 0.0)
    return out


def entmax_root_reference(row: np.ndarray, alpha: float) -> np.ndarray:
    """alpha-entmax of one row from its optimality condition, by brentq on the threshold:
    p_i = [(alpha - 1) x_i - tau]_+^{1/(alpha - 1)}, sum p = 1 (softmax at alpha = 1)."""
    finite = np.isfinite(row)
    with np.errstate(over="ignore"):  # -max - max overflows to -inf: outside the support anyway
        v = row[finite] - row[finite].max()  # exact: the map is shift invariant
    out = np.zeros_like(row)
    if alpha == 1.0:
        e = np.exp(v)
        out[finite] = e / e.sum()
        return out
    a1 = alpha - 1.0
    xs = a1 * v

    def excess(t: float) -> float:
        return float(np.sum(np.maximum(xs - t, 0.0) ** (1.0 / a1)) - 1.0)

    lo, hi = -1.0, -((1.0 / len(v)) ** a1)
    if excess(lo) == 0:
        tau = lo
    elif excess(hi) >= 0:  # all finite entries tied (up to rounding): the uniform distribution
        tau = hi
    else:
        tau = brentq(excess, lo, hi, xtol=1e-300, rtol=1e-15, maxiter=500)
    out[finite] = np.maximum(xs - tau, 0.0) ** (1.0 / a1)
    return out


def rowwise(fn, x: torch.Tensor, *args) -> torch.Tensor:
    """Apply a 1-D numpy reference to every row (last dim) of a float64 tensor."""
    arr = x.detach().cpu().double().numpy().reshape(-1, x.shape[-1])
    out = np.stack([fn(r, *args) for r in arr]) if len(arr) else arr
    return torch.from_numpy(out.reshape(x.shape))


def hard_rows(seed: int, k: int) -> torch.Tensor:
    """Float64 rows (14, k) that stress a threshold search: many scales, ties, huge offsets, tiny
    spreads, -inf entries (never a whole row)."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(1, k, generator=g, dtype=torch.float64) * s
             for s in (1e-6, 1e-2, 0.3, 1.0, 3.0, 30.0, 1e3)]
    parts.append(torch.randint(-3, 3, (2, k), generator=g).double() / 2)  # ties
    parts.append(torch.zeros(1, k, dtype=torch.float64))  # all tied
    parts.append(1e6 + torch.randn(1, k, generator=g, dtype=torch.float64))  # huge offset
    parts.append(-1e6 + 1e-3 * torch.randn(1, k, generator=g, dtype=torch.float64))
    x = torch.cat(parts)
    with_inf = torch.randn(2, k, generator=g, dtype=torch.float64) * 2
    if k > 1:
        with_inf[:, torch.randperm(k, generator=g)[: k // 2]] = float("-inf")
    return torch.cat([x, with_inf])
