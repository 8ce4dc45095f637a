"""Graph-layout data for neural relational inference with latent trees (Paulus et al. 2020 §5.3).

Each example is a random tree on ``n`` vertices and the trajectory of its vertices under a
force-directed layout algorithm, generated exactly as the stochastic-softmax-tricks release:

1. ``n(n-1)`` uniforms from torch (only the first ``n(n-1)/2`` are used, one per edge ``i < j``
   in row-major order) become Gumbel weights ``-log(-log u)``; the tree is the maximum spanning
   tree of ``K_n`` under them (Kruskal; ties broken by the lower edge index). Uniform scores are
   *not* uniform over trees.
2. Initial positions ``N(0, I_2)`` per vertex from numpy.
3. ``T`` calls of one Fruchterman–Reingold iteration each (the first from the initial
   positions, each later one from the previous frame), each followed by centring and rescaling to
   ``max |coordinate| = 1``; the frames are the outputs of these calls.

Random streams (``seed`` seeds both ``torch`` and numpy's legacy ``RandomState``; splits are
drawn one after the other from the same streams): per example, numpy draws the initial
positions, then per layout call ``n × 2`` uniforms that networkx draws and discards (positions are
given), and after every call but the first ``n × 2`` normals for a noise of scale 0. These draws
are kept so that the positions match networkx 3.6's ``spring_layout`` (the layout algorithm
implemented here natively, in the graph's node order: first appearance in the row-major list of
adjacency entries).

Arrays: ``positions`` ``(N, T, 2, n)`` float32 and ``adjacency`` ``(N, n, n)`` symmetric 0/1
float32.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from latentgrad.experiments.data.cache import cached_arrays
from latentgrad.structures.spanning_tree import SpanningTree

SPLITS = ("train", "valid", "test")
LAYOUT_REFERENCE = "networkx 3.6 spring_layout(iterations=1, threshold=1e-10, center=0, scale=1)"


def trees_from_uniforms(uniforms: torch.Tensor, n: int) -> torch.Tensor:
    """Maximum spanning trees under the weights ``-log(-log u)`` of the first ``n(n-1)/2``
    uniforms of each row: ``(N, >= n(n-1)/2)`` -> adjacency ``(N, n, n)`` float32.

    Only the order of the weights matters: they are replaced by their descending ranks (stable,
    so ties go to the lower edge index, as a stable Kruskal would), which are distinct and finite
    even where ``u = 0`` gives a weight of ``-inf``.
    """
    num_edges = n * (n - 1) // 2
    u = uniforms[:, :num_edges]
    weights = -torch.log(-torch.log(u))
    order = torch.argsort(-weights, dim=-1, stable=True)
    ranks = torch.empty_like(order).scatter_(
        -1, order, torch.arange(num_edges).expand_as(order).contiguous()
    )
    tree = SpanningTree(n)
    return tree.argmax(tree.from_edges(-ranks.to(torch.float64))).to(torch.float32)


def node_order(adjacency: np.ndarray) -> np.ndarray:
    """networkx's node order of ``Graph(edges of np.where(adj == 1))``: vertices by first
    appearance in the row-major list of adjacency entries ``(i, j)``. ``(N, n, n)`` -> ``(N, n)``
    permutations (position -> vertex). Every vertex needs an edge."""
    n = adjacency.shape[-1]
    slot = 2 * np.arange(n * n).reshape(n, n)  # (i, j) lists i at slot, j at slot + 1
    big = 2 * n * n + 2
    on = adjacency == 1
    as_row = np.where(on, slot, big).min(axis=-1)
    as_col = np.where(on, slot + 1, big).min(axis=-2)
    return np.argsort(np.minimum(as_row, as_col), axis=-1, kind="stable")


def layout_step(pos: np.ndarray, adjacency: np.ndarray) -> np.ndarray:
    """One Fruchterman–Reingold iteration with networkx's constants, then centring and scaling to
    ``max |x| = 1``: ``pos`` ``(N, n, 2)`` float64, ``adjacency`` ``(N, n, n)`` -> new positions.

    Repulsion ``k² / d`` and attraction ``d² / k`` along each pair (``k = sqrt(1 / n)``,
    ``d >= 0.01``); every vertex moves by ``t`` along its net force (by ``t |f| / 0.01`` when
    ``|f| < 0.01``), ``t`` = a tenth of the larger side of the bounding box.
    """
    n = pos.shape[-2]
    k = np.sqrt(1.0 / n)
    extent = pos.max(axis=-2) - pos.min(axis=-2)
    t = extent.max(axis=-1) * 0.1
    delta = pos[:, :, np.newaxis, :] - pos[:, np.newaxis, :, :]
    distance = np.sqrt((delta * delta).sum(-1))
    np.clip(distance, 0.01, None, out=distance)
    force = k * k / distance**2 - adjacency * distance / k
    displacement = np.einsum("bijk,bij->bik", delta, force)
    length = np.sqrt((displacement * displacement).sum(-1))
    length = np.clip(length, 0.01, None)
    pos = pos + displacement * (t[:, np.newaxis] / length)[..., np.newaxis]
    pos = pos - pos.mean(axis=-2, keepdims=True)
    lim = np.abs(pos).max(axis=(-2, -1), keepdims=True)
    return np.where(lim > 0, pos * (1.0 / np.where(lim > 0, lim, 1.0)), pos)


def generate_split(
    num_examples: int,
    n: int,
    num_frames: int,
    torch_gen: torch.Generator,
    rng: np.random.RandomState,
    progress: bool = True,
    desc: str = "graph layouts",
) -> tuple[np.ndarray, np.ndarray]:
    """``num_examples`` trees and trajectories from the given streams (module docstring):
    ``positions`` ``(N, T, 2, n)`` float64 and ``adjacency`` ``(N, n, n)`` float32."""
    uniforms = torch.empty(num_examples, n * (n - 1))
    init = np.empty((num_examples, n, 2))
    for b in tqdm(range(num_examples), desc=desc, disable=not progress, mininterval=1.0):
        uniforms[b] = torch.rand(n * (n - 1), generator=torch_gen)
        init[b] = rng.randn(n, 2)
        rng.random_sample((n, 2))  # networkx's discarded initial positions, first call
        for _ in range(num_frames - 1):
            rng.random_sample((n, 2))  # ... and every later call
            rng.randn(n, 2)  # the noise of scale 0 added after each later call
    adjacency = trees_from_uniforms(uniforms, n).numpy()
    order = node_order(adjacency)
    rows = np.arange(num_examples)[:, np.newaxis]
    graph_adj = adjacency[rows[..., np.newaxis], order[..., np.newaxis], order[:, np.newaxis, :]]
    pos = init[rows, order]
    frames = np.empty((num_examples, num_frames, n, 2))
    for f in range(num_frames):
        pos = layout_step(pos, graph_adj.astype(np.float64))
        frames[rows, f, order] = pos
    return frames.transpose(0, 1, 3, 2), adjacency


def graph_layout_splits(
    cache_dir: str,
    n: int = 10,
    num_frames: int = 10,
    sizes: tuple[int, int, int] = (50_000, 10_000, 10_000),
    seed: int = 42,
    progress: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """Train, validation and test sets (``SPLITS``), generated once into ``cache_dir`` and
    verified on every later load (``cache.cached_arrays``): per split ``positions``
    ``(N, T, 2, n)`` and ``adjacency`` ``(N, n, n)``, float32."""
    for name, value in (("n", n), ("num_frames", num_frames), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if n < 2 or num_frames < 1 or len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(
            f"need n >= 2, num_frames >= 1 and three split sizes >= 1; got n={n}, "
            f"num_frames={num_frames}, sizes={sizes}"
        )
    params = {
        "n": n,
        "num_frames": num_frames,
        "sizes": list(sizes),
        "seed": seed,
        "layout": LAYOUT_REFERENCE,
    }

    def generate() -> dict[str, np.ndarray]:
        torch_gen = torch.Generator().manual_seed(seed)
        rng = np.random.RandomState(seed)
        arrays = {}
        for split, size in zip(SPLITS, sizes, strict=True):
            positions, adjacency = generate_split(
                size, n, num_frames, torch_gen, rng, progress, f"graph layouts ({split})"
            )
            arrays[f"{split}_positions"] = positions.astype(np.float32)
            arrays[f"{split}_adjacency"] = adjacency
        return arrays

    name = f"graph_layout_n{n}_T{num_frames}_{'_'.join(map(str, sizes))}_seed{seed}"
    arrays = cached_arrays(cache_dir, name, params, generate)
    return {
        split: {key: arrays[f"{split}_{key}"] for key in ("positions", "adjacency")}
        for split in SPLITS
    }
