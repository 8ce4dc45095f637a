"""What the tasks with a structured latent (trees, subsets, independent edges) share: the sample
and the KL term of each posterior kind of ``experiments.estimators`` (``EstimatorSpec.posterior``)
and edge precision/recall against a gold structure.

- ``perturbed``: the latent is ``X = argmax_x <θ + N, x>`` (N iid Gumbel, one per drawn utility),
  so ``KL(q(X) ‖ p(X)) <= KL(q(U) ‖ p(U))`` with the prior utilities ``Gumbel(0, 1)``; the ELBO
  uses the latter, ``Σ_e δ_e + e^{-δ_e} - 1`` over the drawn utilities, each counted once
  (Paulus et al. 2020, §3; ``distributions.sst.utility_kl``).
- ``gibbs``: an exact sample of ``p(z) ∝ exp <θ, z>`` with the uniform prior over the structures:
  ``KL = log |X| - H(p_θ)``.
- ``sparse``: a sparse distribution ``q`` over structures (SparseMAP), uniform prior:
  ``KL = log |X| - H(q)`` with ``H(q)`` the estimator's entropy of its support weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from latentgrad.distributions.sst import StochasticArgmax, utility_kl
from latentgrad.structures.base import Structure
from latentgrad.structures.categorical import Categorical


def log_num_structures(structure: Structure) -> float:
    """``log |X|`` of a structure (Python integers, so no overflow)."""
    return math.log(structure.num_structures)


def hard_sample(posterior: str, structure: Structure, scores: Tensor) -> Tensor:
    """One 0/1 sample per example: the stochastic argmax (``perturbed``), an exact Gibbs draw
    (``gibbs``), or the MAP structure (``sparse``: its distribution is summed, not sampled)."""
    if posterior == "perturbed":
        return StochasticArgmax(structure, scores).sample()
    if posterior == "gibbs":
        return structure.sample(scores)
    return structure.argmax(scores.detach())


def posterior_kl(
    posterior: str, structure: Structure, scores: Tensor, entropy: Tensor | None = None
) -> Tensor:
    """Per-example KL term ``(B,)`` of the ELBO (module docstring); ``entropy`` is the sparse
    distribution's ``H(q)`` (``sparse`` only). A ``Categorical`` structure stands for independent
    categoricals over the last dim (scores ``(B, *latent, K)``; KL summed over the latents)."""
    if posterior == "perturbed":
        kl = utility_kl(structure, scores, 0.0, "gumbel")
        return kl.flatten(1).sum(-1) if isinstance(structure, Categorical) else kl
    if posterior == "gibbs":
        return log_num_structures(structure) - structure.entropy(scores)
    if entropy is None:
        raise ValueError("posterior 'sparse' needs the entropy of its support weights")
    return log_num_structures(structure) - entropy


def undirected(adjacency: Tensor) -> Tensor:
    """Undirected edge indicators ``(B, n, n)`` -> ``(B, n(n-1)/2)`` booleans, ``i < j``: an
    undirected edge is present when either direction is (``a_ij`` or ``a_ji``)."""
    n = adjacency.shape[-1]
    i, j = torch.triu_indices(n, n, offset=1, device=adjacency.device)
    on = adjacency > 0.5
    return on[:, i, j] | on[:, j, i]


def edge_counts(predicted: Tensor, gold: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(true positives, predicted, gold)`` edge totals over a batch of boolean edge sets of the
    same shape ``(B, ...)``: precision = tp / predicted, recall = tp / gold."""
    predicted, gold = predicted.bool(), gold.bool()
    return (predicted & gold).sum(), predicted.sum(), gold.sum()


def precision_recall(predicted: Tensor, gold: Tensor) -> tuple[Tensor, Tensor]:
    """Micro-averaged edge precision and recall of a batch (0 where nothing is predicted)."""
    tp, pred, true = (c.to(torch.float32) for c in edge_counts(predicted, gold))
    return tp / pred.clamp_min(1.0), tp / true.clamp_min(1.0)
