"""Maps and structures written out from their definitions, independently of the library, for
the tests of several folders to compare the library with (float64)."""

from __future__ import annotations

import itertools
import math

import torch

from latentgrad.distributions.igr import PlanarFlow


def softmax_pp_ref(lam: torch.Tensor, tau: float, delta: float) -> torch.Tensor:
    """softmax([λ/τ, log δ]) written out: the reference map R^{K−1} -> open K-simplex."""
    last = torch.full_like(lam[..., :1], math.log(delta))
    return torch.softmax(torch.cat([lam / tau, last], dim=-1), dim=-1)


def sticks_ref(kappa: torch.Tensor) -> torch.Tensor:
    """π_k = σ(κ_k) Π_{j<k} (1 − σ(κ_j)), k = 1..K−1, by an explicit loop."""
    eta = torch.sigmoid(kappa)
    out, rest = [], torch.ones_like(eta[..., 0])
    for k in range(eta.shape[-1]):
        out.append(eta[..., k] * rest)
        rest = rest * (1 - eta[..., k])
    return torch.stack(out, dim=-1)


def planar_ref(z: torch.Tensor, flow: PlanarFlow) -> torch.Tensor:
    """One planar flow of 1-D parameters, ``z + û tanh(wᵀz + b)`` with
    ``û = u + (log(1 + e^{wᵀu}) − 1 − wᵀu) w / ‖w‖²``."""
    u, w, b = flow.u, flow.w, flow.b
    wu = (w * u).sum()
    u_hat = u + (torch.log1p(wu.exp()) - 1 - wu) * w / (w * w).sum()
    return z + u_hat * torch.tanh((w * z).sum(-1, keepdim=True) + b)


def pruefer_trees(n: int) -> torch.Tensor:
    """All n^(n-2) labelled trees, decoded from Prüfer sequences, as symmetric adjacencies."""
    trees = []
    for seq in itertools.product(range(n), repeat=n - 2):
        degree = [1] * n
        for x in seq:
            degree[x] += 1
        adj = torch.zeros(n, n, dtype=torch.float64)
        for x in seq:
            leaf = min(i for i in range(n) if degree[i] == 1)
            adj[leaf, x] = adj[x, leaf] = 1
            degree[leaf] -= 1
            degree[x] -= 1
        u, v = (i for i in range(n) if degree[i] == 1)
        adj[u, v] = adj[v, u] = 1
        trees.append(adj)
    return torch.stack(trees)
