"""``SpanningTree(n)``: undirected spanning trees of the complete graph K_n.

A tree is a symmetric 0/1 adjacency matrix ``z`` ``(n, n)`` with zero diagonal: edge {i, j} sets
both ``z[i, j]`` and ``z[j, i]``. Scores are symmetric ``(n, n)`` edge scores (diagonal ignored),
and a tree scores each undirected edge once: ``s(z) = sum_{i<j} θ_ij z_ij``, the Gibbs
distribution is ``p(z) ∝ exp(s(z))``, and ``marginals`` returns ``E_p[z]`` (both triangles).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_tensor, violated
from ._dense_matrix_tree import symmetric_float64
from ._enumeration import check_int, flatten_batch
from ._tree_counts import log_count_undirected, marginals_undirected
from ._tree_enumeration import rooted_parent_arrays
from ._tree_structure import TreeStructure, symmetrized
from .tree_sampling import sample_spanning_tree


class SpanningTree(TreeStructure):
    """Spanning trees of K_n as symmetric adjacency matrices.

    Scores ``(*batch, n, n)``: finite, symmetric up to a relative tolerance of ``sqrt(eps)`` of the
    dtype (computations use ``(θ + θᵀ)/2``; symmetrise with ``(s + s.mT) / 2``); the diagonal is
    ignored. ``score(θ, z) = sum_{i<j} θ_ij z_ij`` counts each edge once (= ½<θ, z>).
    """

    def __init__(self, n: int) -> None:
        self.n = check_int(n, "n", 2)
        self.score_shape = (self.n, self.n)
        self.summed_scores = self.n - 1  # edges

    def __repr__(self) -> str:
        return f"SpanningTree(n={self.n})"

    @property
    def num_structures(self) -> int:
        """Cayley's formula, ``n^(n-2)``."""
        return self.n ** (self.n - 2)

    def _counted(self, device: torch.device) -> Tensor:
        """The off-diagonal entries (both triangles: each edge is scored once from either)."""
        return ~torch.eye(self.n, dtype=torch.bool, device=device)

    @property
    def edges(self) -> Tensor:
        """The ``n(n-1)/2`` undirected edges ``(i, j)``, ``i < j``, row-major: ``(E, 2)`` long."""
        return torch.triu_indices(self.n, self.n, offset=1).T

    def from_edges(self, values: Tensor) -> Tensor:
        """Per-edge values ``(*batch, E)`` in ``edges`` order -> symmetric ``(*batch, n, n)``,
        zero diagonal (e.g. one Gumbel draw per undirected edge for SST)."""
        check_tensor(values, "values")
        num_edges = self.n * (self.n - 1) // 2
        if values.dim() < 1 or values.shape[-1] != num_edges:
            raise ValueError(
                f"values must have trailing dimension n(n-1)/2 = {num_edges}, "
                f"got shape {tuple(values.shape)}"
            )
        i, j = self.edges.to(values.device).T
        batch = values.shape[:-1]
        flat = values.new_zeros(*batch, self.n * self.n).index_add(-1, i * self.n + j, values)
        upper = flat.reshape(*batch, self.n, self.n)
        return upper + upper.mT

    def to_edges(self, matrix: Tensor) -> Tensor:
        """The upper triangle of ``(*batch, n, n)`` in ``edges`` order: ``(*batch, E)``."""
        i, j = self.edges.to(matrix.device).T
        return matrix[..., i, j]

    def check_scores(self, scores: Tensor, name: str = "scores") -> Tensor:
        """Float ``(*batch, n, n)``, finite, symmetric within ``sqrt(eps)`` relative tolerance
        (value checks: off with validation, when asymmetric scores are symmetrised)."""
        super().check_scores(scores, name)
        tol = torch.finfo(scores.dtype).eps ** 0.5

        def symmetric(s: Tensor) -> Tensor:  # |s - sᵀ| - tol max(|s|, |sᵀ|) <= tol, in place
            values = s.detach()
            size = values.abs()
            excess = (values - values.mT).abs_().sub_(torch.maximum(size, size.mT), alpha=tol)
            return excess <= tol

        if violated(scores, symmetric):
            gap = (scores.detach() - scores.detach().mT).abs()
            raise ValueError(
                f"{name} must be symmetric (undirected edge scores), but max |s - s^T| = "
                f"{gap.max().item():.3g}; symmetrise with (s + s.mT) / 2"
            )
        return scores

    def contains(self, z: Tensor) -> Tensor:
        """``Structure.contains`` for symmetric ``z`` (an asymmetric one is no spanning tree)."""
        return (z == z.mT).all(dim=(-2, -1)) & super().contains(symmetrized(z))

    def score(self, scores: Tensor, z: Tensor) -> Tensor:
        """``sum_{i<j} θ_ij z_ij``: each undirected edge counted once. Broadcasts; ``(*batch,)``.

        Computed from ``(θ + θᵀ)/2`` like ``log_partition``, so its gradient splits each edge
        half/half between the triangles too and ``log p = score - log Z`` stays normalised
        along any (even asymmetric) perturbation of the scores.
        """
        self._check_score_args(scores, z)
        upper = torch.ones(self.n, self.n, dtype=torch.bool, device=scores.device).triu(1)
        sym = symmetrized(scores)
        return (sym * z).masked_fill(~upper, 0).sum(dim=(-2, -1))

    def argmax(self, scores: Tensor) -> Tensor:
        """Maximum spanning tree by batched Prim (1957): n - 1 vectorised steps from node 0.

        ``(*batch, n, n)`` -> symmetric 0/1 adjacency of the same shape and dtype (ties: lowest
        node index first).
        """
        self.check_scores(scores)
        flat, _ = flatten_batch(scores, 2)
        sym = symmetrized(flat)
        nodes = torch.arange(self.n, device=flat.device)
        rows = torch.arange(flat.shape[0], device=flat.device)
        in_tree = (nodes == 0).expand(flat.shape[0], self.n).clone()
        best = sym[:, 0, :]
        parent = torch.zeros(flat.shape[0], self.n, dtype=torch.long, device=flat.device)
        for _ in range(self.n - 1):
            new = best.masked_fill(in_tree, float("-inf")).argmax(dim=-1)
            in_tree[rows, new] = True
            row = sym[rows, new]
            closer = (row > best) & ~in_tree
            best = torch.where(closer, row, best)
            parent = torch.where(closer, new[:, None], parent)
        z = torch.zeros_like(flat).scatter_(1, parent[:, None, :], 1.0)
        z[:, 0, 0] = 0
        return (z + z.mT).reshape(scores.shape)

    def _log_partition(self, flat: Tensor) -> Tensor:
        """``log sum_trees exp(sum_{i<j} θ_ij z_ij)`` of validated ``(B, n, n)`` scores, in the
        input dtype: Kirchhoff's matrix-tree theorem in float64, by a batched Cholesky of the
        degree-normalised Laplacian minor where that is accurate (``_dense_matrix_tree``) and by
        log-domain elimination (``_matrix_tree``) for the other rows; stable for any finite
        scores and differentiable twice. Its gradient w.r.t. the full matrix is ``marginals / 2``.
        """
        return log_count_undirected(symmetric_float64(flat)).to(flat.dtype)

    def _marginals(self, flat: Tensor) -> Tensor:
        """Edge marginals ``P({i, j} in tree)`` as a symmetric ``(B, n, n)`` matrix, zero
        diagonal, ``sum_{i<j} μ_ij = n - 1`` (= ``g + gᵀ``, ``g = grad log Z``): closed form
        from the inverse of the normalised Laplacian minor where trusted, autograd of the
        elimination elsewhere; differentiable (for the SST relaxation)."""
        return marginals_undirected(flat)

    def _sample(
        self, scores: Tensor, sample_shape: tuple[int, ...], generator: torch.Generator | None
    ) -> Tensor:
        """Exact draws from the Gibbs distribution, ``(*sample_shape, *batch, n, n)`` symmetric
        0/1 (sequential contraction with matrix-tree counts, ``tree_sampling``)."""
        return sample_spanning_tree(self, scores, sample_shape, generator)

    def enumerate(self) -> Tensor:
        """Every spanning tree, ``(n^(n-2), n, n)`` symmetric 0/1 float (default dtype), n <= 7.

        Each tree is listed once, as its orientation away from node 0 (a parent array).
        """
        self._check_enumerable()
        parents = rooted_parent_arrays(self.n, 0)
        z = torch.zeros(parents.shape[0], self.n, self.n).scatter_(1, parents[:, None, :], 1.0)
        z[:, 0, 0] = 0
        return z + z.mT
