"""Graph-layout generator: valid trees, documented shapes, determinism, agreement with the
networkx/Kruskal procedure of the reference script, and the verified on-disk cache."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
import torch

from latentgrad.experiments.data.cache import cache_paths
from latentgrad.experiments.data.graph_layout import (
    generate_split,
    graph_layout_splits,
    layout_step,
    node_order,
    trees_from_uniforms,
)


def _reference(num: int, n: int, frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference procedure with networkx: Kruskal on Gumbel weights, spring_layout calls
    with one iteration each, zero-scale noise draws; the script's global numpy stream is the
    RandomState ``rs`` (networkx draws from it too)."""
    rs = np.random.RandomState(seed)
    gen = torch.Generator().manual_seed(seed)
    layout = {"iterations": 1, "threshold": 1e-10, "center": np.zeros(2), "seed": rs}
    i_idx, j_idx = torch.triu_indices(n - 1, n, offset=1).tolist()
    positions, adjacency = [], []
    for _ in range(num):
        w = -torch.log(-torch.log(torch.rand(n * (n - 1), generator=gen)))
        full = nx.Graph()
        for e, (i, j) in enumerate(zip(i_idx, j_idx, strict=True)):
            full.add_edge(i, j, weight=float(w[e]))
        adj = np.zeros((n, n))
        for i, j in nx.maximum_spanning_tree(full, algorithm="kruskal").edges():
            adj[i, j] = adj[j, i] = 1
        graph = nx.Graph()
        graph.add_edges_from(zip(*np.where(adj == 1), strict=True))
        init = rs.randn(n, 2)
        pos = {i: init[i] for i in range(n)}
        pos = nx.spring_layout(graph, pos=pos, **layout)
        out = [[pos[i] for i in range(n)]]
        for _ in range(frames - 1):
            pos = nx.spring_layout(graph, pos=pos, **layout)
            pos = {i: pos[i] + rs.randn(2) * 0.0 for i in pos}
            out.append([pos[i] for i in range(n)])
        positions.append(np.stack(out).transpose(0, 2, 1))
        adjacency.append(adj)
    return np.stack(positions), np.stack(adjacency)


def _ours(num: int, n: int, frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    return generate_split(num, n, frames, gen, np.random.RandomState(seed), progress=False)


@pytest.mark.parametrize(("n", "frames"), [(10, 4), (5, 3)])
def test_generator_matches_the_networkx_reference_procedure(n: int, frames: int) -> None:
    ref_pos, ref_adj = _reference(12, n, frames, seed=42)
    pos, adj = _ours(12, n, frames, seed=42)
    np.testing.assert_array_equal(adj, ref_adj)
    # float64 layout arithmetic: a few ulps of the unit-scale coordinates per frame
    np.testing.assert_allclose(pos, ref_pos, rtol=0, atol=64 * frames * np.finfo(float).eps)


def test_shapes_trees_and_determinism() -> None:
    pos, adj = _ours(30, 10, 5, seed=3)
    assert pos.shape == (30, 5, 2, 10) and adj.shape == (30, 10, 10)
    assert np.array_equal(adj, adj.transpose(0, 2, 1)) and not adj[:, range(10), range(10)].any()
    for a in adj:
        assert nx.is_tree(nx.from_numpy_array(a))
    # every frame is centred and scaled to max |x| = 1
    np.testing.assert_allclose(np.abs(pos).max(axis=(2, 3)), 1.0, atol=1e-12)
    np.testing.assert_allclose(pos.mean(axis=3), 0.0, atol=1e-12)
    pos2, adj2 = _ours(30, 10, 5, seed=3)
    assert np.array_equal(pos, pos2) and np.array_equal(adj, adj2)
    pos3, _ = _ours(30, 10, 5, seed=4)
    assert not np.array_equal(pos, pos3)


def test_trees_use_only_the_weight_order_and_survive_zero_uniforms() -> None:
    u = torch.rand(50, 10 * 9)
    u[0, :3] = 0.0  # weight -inf, still a valid (lowest) weight
    adj = trees_from_uniforms(u, 10)
    for b in range(50):
        w = -torch.log(-torch.log(u[b, :45]))
        full = nx.Graph()
        for e, (i, j) in enumerate(torch.triu_indices(10, 10, 1).T.tolist()):
            full.add_edge(i, j, weight=float(w[e]) if b else float(-e))  # row 0: ties by index
        if b:
            best = nx.maximum_spanning_tree(full)
            expected = nx.to_numpy_array(best, nodelist=range(10), weight=None)
            np.testing.assert_array_equal(adj[b].numpy(), expected)
        else:
            assert nx.is_tree(nx.from_numpy_array(adj[b].numpy()))


def test_node_order_is_first_appearance_in_row_major_entries() -> None:
    adj = np.zeros((1, 4, 4))
    for i, j in [(0, 3), (3, 2), (2, 1)]:
        adj[0, i, j] = adj[0, j, i] = 1
    graph = nx.Graph()
    graph.add_edges_from(zip(*np.where(adj[0] == 1), strict=True))
    assert node_order(adj).tolist() == [list(graph)]


def test_layout_step_is_equivariant_to_vertex_relabelling() -> None:
    _, adj = _ours(4, 6, 1, seed=0)
    x = np.random.default_rng(0).normal(size=(4, 6, 2))
    perm = np.random.default_rng(1).permutation(6)
    a = adj.astype(np.float64)
    out = layout_step(x, a)
    out_perm = layout_step(x[:, perm], a[:, perm][:, :, perm])
    np.testing.assert_allclose(out_perm, out[:, perm], atol=1e-13)


def test_cache_is_written_once_reused_and_verified(tmp_path, monkeypatch) -> None:
    sizes = (6, 3, 2)
    first = graph_layout_splits(tmp_path, n=5, num_frames=3, sizes=sizes, seed=1, progress=False)
    assert first["train"]["positions"].shape == (6, 3, 2, 5)
    assert first["test"]["adjacency"].shape == (2, 5, 5)
    name = "graph_layout_n5_T3_6_3_2_seed1"
    data_path, record_path = cache_paths(tmp_path, name)
    assert json.loads(record_path.read_text())["params"]["seed"] == 1

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr("latentgrad.experiments.data.graph_layout.generate_split", fail)
    again = graph_layout_splits(tmp_path, n=5, num_frames=3, sizes=sizes, seed=1, progress=False)
    for split in first:
        for key in first[split]:
            assert np.array_equal(first[split][key], again[split][key])

    raw = bytearray(data_path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data_path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        graph_layout_splits(tmp_path, n=5, num_frames=3, sizes=sizes, seed=1, progress=False)

    record = json.loads(record_path.read_text())
    record["params"]["seed"] = 2
    record_path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="parameters"):
        graph_layout_splits(tmp_path, n=5, num_frames=3, sizes=sizes, seed=1, progress=False)
    data_path.unlink()
    with pytest.raises(ValueError, match="incomplete"):
        graph_layout_splits(tmp_path, n=5, num_frames=3, sizes=sizes, seed=1, progress=False)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n >= 2"):
        graph_layout_splits("unused", n=1, progress=False)
    with pytest.raises(TypeError, match="num_frames"):
        graph_layout_splits("unused", num_frames=2.0, progress=False)
