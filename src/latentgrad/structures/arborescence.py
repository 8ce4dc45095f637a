"""``Arborescence(n, root=None)``: directed spanning trees (dependency trees).

Convention: ``scores[..., i, j]`` is the score of the arc i -> j (head i, dependent j), and a
structure value ``z`` ``(n, n)`` has ``z[i, j] = 1`` iff i is the head of j; it scores <θ, z>.

- ``root=r``: arborescences rooted at node r (every other node has exactly one head, no cycle).
  The diagonal and column r of the scores are ignored.
- ``root=None``: single-root dependency trees over n words (Koo et al. 2007): an implicit root
  attaches to exactly one word. ``scores[..., j, j]`` is the score of "j is the root's child"
  and ``z[j, j] = 1`` marks that word.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._chu_liu_edmonds import max_arborescence_heads
from ._enumeration import check_int, flatten_batch
from ._tree_counts import (
    log_count_rooted,
    log_count_single_root,
    marginals_rooted,
    marginals_single_root,
)
from ._tree_enumeration import rooted_parent_arrays
from ._tree_structure import TreeStructure
from .tree_sampling import sample_arborescence


def _heads_to_indicator(heads: Tensor, dtype: torch.dtype) -> Tensor:
    """Parent arrays ``(B, n)`` -> ``z`` ``(B, n, n)`` with ``z[b, heads[b, j], j] = 1``.

    The root (its own head) lands on the diagonal."""
    n = heads.shape[-1]
    z = torch.zeros(heads.shape[0], n, n, dtype=dtype, device=heads.device)
    return z.scatter_(1, heads[:, None, :], 1.0)


class Arborescence(TreeStructure):
    """Arborescences of the complete digraph on n nodes, rooted at ``root`` or single-root.

    Scores ``(*batch, n, n)``, finite (entries that are ignored must still be finite).
    ``log_partition`` is Tutte's directed matrix-tree theorem (the single-root variant as a sum
    over the root's child j of ``exp(θ_jj) A_j``, ``A_j`` = arborescences rooted at j, Koo et al.
    2007), computed in float64 by a batched LU of the column-normalised Laplacian where that is
    accurate (``_dense_matrix_tree``) and by subtraction-free log-domain elimination
    (``_matrix_tree``) for the other rows (``_tree_counts``); ``argmax`` is batched
    Chu–Liu/Edmonds. ``marginals`` (``grad log Z``, in closed form from the inverse of the same
    matrix or by autograd of the elimination; differentiable, for SST) are the arc marginals
    ``P(i -> j)`` (single-root: ``P(j is the root's child)`` on the diagonal); each column of a
    non-root node sums to 1.
    """

    def __init__(self, n: int, root: int | None = None) -> None:
        self.n = check_int(n, "n", 2)
        self.root = None if root is None else check_int(root, "root", 0, self.n - 1)
        self.score_shape = (self.n, self.n)
        self.summed_scores = self.n  # n - 1 arcs (n - 1 arcs and the root's child)

    def __repr__(self) -> str:
        return f"Arborescence(n={self.n}, root={self.root})"

    @property
    def num_structures(self) -> int:
        """``n^(n-2)`` rooted arborescences, ``n^(n-1)`` single-root trees."""
        return self.n ** (self.n - 2 if self.root is not None else self.n - 1)

    def _counted(self, device: torch.device) -> Tensor:
        """Rooted: the arcs i -> j, i != j, j != root; single-root: every entry (the diagonal
        marks the root's child)."""
        if self.root is None:
            return torch.ones(self.n, self.n, dtype=torch.bool, device=device)
        counted = ~torch.eye(self.n, dtype=torch.bool, device=device)
        counted[:, self.root] = False
        return counted

    def argmax(self, scores: Tensor) -> Tensor:
        """Maximum arborescence (batched Chu–Liu/Edmonds), ``(*batch, n, n)`` 0/1, input dtype.

        Single-root: Chu–Liu/Edmonds on the graph extended by the implicit root (arcs root -> j
        scored ``θ_jj``) that first minimises the number of root children, then maximises the
        score (lexicographic arc weights, exact; the big-M trick without a finite M). The
        contractions add and subtract arc scores, so they run in float64 (any float32 score is
        far inside its range) and float64 scores must stay below ``check_range``'s bound (beyond
        it the differences overflowed and a wrong tree came back silently).
        """
        self.check_scores(scores)
        work = scores.detach().to(torch.float64)
        self.check_range(work)
        flat, _ = flatten_batch(work, 2)
        batch, n = flat.shape[0], self.n
        if self.root is not None:
            root = torch.full((batch,), self.root, dtype=torch.long, device=flat.device)
            z = _heads_to_indicator(max_arborescence_heads(flat, root), scores.dtype)
            z[:, self.root, self.root] = 0
            return z.reshape(scores.shape)
        extended = flat.new_zeros(batch, n + 1, n + 1)
        extended[:, :n, :n] = flat
        extended[:, n, :n] = flat.diagonal(dim1=-2, dim2=-1)
        priority = torch.zeros_like(extended)
        priority[:, n] = -1
        root = torch.full((batch,), n, dtype=torch.long, device=flat.device)
        heads = max_arborescence_heads(extended, root, priority)[:, :n]
        nodes = torch.arange(n, device=flat.device)
        z = _heads_to_indicator(torch.where(heads == n, nodes, heads), scores.dtype)
        return z.reshape(scores.shape)

    def _log_partition(self, flat: Tensor) -> Tensor:
        """``log Z`` of validated ``(B, n, n)`` scores, in the input dtype (computed in float64).
        The matrix-tree functions ignore the diagonal of their arc scores (it holds the root
        scores here), and it gets no gradient from them."""
        work = flat.to(torch.float64)
        if self.root is None:
            log_z = log_count_single_root(work, work.diagonal(dim1=-2, dim2=-1))
        else:
            log_z = log_count_rooted(self._rooted_first(work))
        return log_z.to(flat.dtype)

    def _marginals(self, flat: Tensor) -> Tensor:
        """Marginals ``(B, n, n)`` of validated scores, in the input dtype (float64 inside; the
        diagonal as in ``_log_partition``)."""
        if self.root is None:
            return marginals_single_root(flat)
        return self._rooted_first(marginals_rooted(self._rooted_first(flat)), -1)

    def _rooted_first(self, matrices: Tensor, direction: int = 1) -> Tensor:
        """``(B, n, n)`` with nodes reordered so that the root comes first (the matrix-tree code
        grounds node 0), or back with ``direction=-1``; as it is when the root is node 0."""
        if not self.root:
            return matrices
        order = torch.arange(self.n, device=matrices.device).roll(-direction * self.root)
        return matrices[:, order][:, :, order]

    def _sample(
        self, scores: Tensor, sample_shape: tuple[int, ...], generator: torch.Generator | None
    ) -> Tensor:
        """Exact draws from the Gibbs distribution, ``(*sample_shape, *batch, n, n)`` 0/1
        (sequential contraction with matrix-tree counts, ``tree_sampling``)."""
        return sample_arborescence(self, scores, sample_shape, generator)

    def enumerate(self) -> Tensor:
        """Every structure, ``(num_structures, n, n)`` 0/1 float (default dtype), n <= 7.

        Rooted: all parent arrays reaching the root. Single-root: for each word j in turn, the
        arborescences rooted at j with ``z[j, j] = 1``.
        """
        self._check_enumerable()
        roots = range(self.n) if self.root is None else [self.root]
        dtype = torch.get_default_dtype()
        z = torch.cat([_heads_to_indicator(rooted_parent_arrays(self.n, r), dtype) for r in roots])
        if self.root is not None:
            z[:, self.root, self.root] = 0
        return z
