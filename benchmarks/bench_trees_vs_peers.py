"""Tree marginals against pyro and torch-struct, side by side: cost and float32 accuracy.

    python benchmarks/bench_trees_vs_peers.py [--device cpu|cuda] [--threads 1] [--repeats 3]

Two comparisons, each with the peer's public API as a user would call it:

- undirected spanning trees: ``SpanningTree(n).marginals`` against pyro's
  ``pyro.distributions.SpanningTree(edge_logits).edge_mean`` (one distribution per instance:
  pyro's is not batched);
- single-root dependency trees: ``Arborescence(n).marginals`` against torch-struct's
  ``NonProjectiveDependencyCRF(log_potentials).marginals`` (batched), which adds 1e-5 to every
  exponentiated score (its default ``eps``), so it differs from the exact marginals by about that
  much even in float64.

Cost: forward+backward of ``<v, marginals>`` (v fixed per shape), wall ms per instance at batch 1,
64 and 1024 (pyro: 1 and 64, its loop costs the same per instance at any batch), the median of
``--repeats`` calls; ratio = peer / latentgrad (> 1: latentgrad faster). Accuracy: the largest
absolute error of float32 marginals at score scales 1, 10 and 100 (N(0, 1) scores times the
scale; symmetric for spanning trees) against latentgrad's float64 marginals (which the test suite
checks against enumeration, and against both peers in float64), over 64 instances, with the
count of instances whose marginals hold a NaN. A peer that is not installed is skipped.
"""

from __future__ import annotations

import importlib.util
import statistics
import warnings
from collections.abc import Callable

import torch
from _timing import benchmark_parser, generator, start, time_call
from torch import Tensor

from latentgrad.structures.arborescence import Arborescence
from latentgrad.structures.spanning_tree import SpanningTree

BATCHES = (1, 64, 1024)
SIZES = (10, 30)
SCALES = (1.0, 10.0, 100.0)
ACCURACY_BATCH = 64

Marginals = Callable[[Tensor], Tensor]  # (B, n, n) scores -> (B, n, n) marginals


def _pyro_tree_marginals() -> Marginals | None:
    """pyro's spanning-tree edge marginals, one unbatched distribution per instance, as an
    ``(n, n)`` symmetric matrix per instance; None without pyro."""
    if importlib.util.find_spec("pyro") is None:
        return None
    from pyro.distributions import SpanningTree as PyroTree
    from pyro.distributions.spanning_tree import make_complete_graph

    def marginals(theta: Tensor) -> Tensor:
        n = theta.shape[-1]
        u, v = make_complete_graph(n).to(theta.device)
        # edge_mean is the symmetric (n, n) matrix of edge marginals
        return torch.stack([PyroTree(scores[u, v], validate_args=False).edge_mean
                            for scores in theta])

    return marginals


def _torch_struct_marginals() -> Marginals | None:
    """torch-struct's single-root non-projective dependency marginals (its default eps); None
    without torch-struct."""
    if importlib.util.find_spec("torch_struct") is None:
        return None
    from torch_struct import NonProjectiveDependencyCRF

    def marginals(theta: Tensor) -> Tensor:
        with warnings.catch_warnings():  # its class declares no arg_constraints
            warnings.simplefilter("ignore", UserWarning)
            return NonProjectiveDependencyCRF(theta).marginals

    return marginals


def _scores(n: int, batch: int, symmetric: bool, gen: torch.Generator) -> Tensor:
    theta = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
    return (theta + theta.mT) / 2 if symmetric else theta


def _per_instance_ms(marginals: Marginals, theta: Tensor, repeats: int) -> float:
    v = torch.randn_like(theta)
    x = theta.detach().requires_grad_(True)

    def call() -> None:
        (marginals(x) * v).sum().backward()

    call()  # warm-up
    times = [time_call(call, theta.device)[1] for _ in range(repeats)]
    return 1e3 * statistics.median(times) / theta.shape[0]


def _accuracy(ours: Callable[[Tensor], Tensor], peer: Marginals | None, symmetric: bool,
              n: int, gen: torch.Generator, device: torch.device) -> str:
    cells = []
    for scale in SCALES:
        theta = (scale * _scores(n, ACCURACY_BATCH, symmetric, gen)).to(device)
        exact = ours(theta)
        row = []
        for fn in (ours, peer):
            if fn is None:
                continue
            with torch.no_grad():
                mu = fn(theta.float()).double()
            nan_rows = int(mu.isnan().flatten(1).any(1).sum())
            err = (mu - exact).abs().nan_to_num(nan=float("inf")).amax().item()
            row.append(f"{err:8.1e}" + (f" ({nan_rows} NaN)" if nan_rows else ""))
        cells.append(f"scale {scale:g}: " + " / ".join(row))
    return "; ".join(cells)


def _compare(name: str, ours: Callable[[Tensor], Tensor], peer_name: str,
             peer: Marginals | None, peer_batches: tuple[int, ...], symmetric: bool,
             gen: torch.Generator, device: torch.device, repeats: int) -> None:
    print(f"\n{name} against {peer_name}" + ("" if peer else f" ({peer_name} not installed)"))
    for n in SIZES:
        theta = _scores(n, max(BATCHES), symmetric, gen).float().to(device)
        cells = []
        for batch in BATCHES:
            mine = _per_instance_ms(ours, theta[:batch], repeats)
            cell = f"b={batch}: {mine:.4f}"
            if peer is not None and batch in peer_batches:
                theirs = _per_instance_ms(peer, theta[:batch], repeats)
                cell += f" vs {theirs:.4f} ({theirs / mine:.1f}x)"
            cells.append(cell)
        print(f"  n={n} ms per instance, latentgrad vs {peer_name}: " + "; ".join(cells))
        print(f"  n={n} float32 max |error| latentgrad / {peer_name}: "
              + _accuracy(ours, peer, symmetric, n, gen, device), flush=True)


def main() -> None:
    args = benchmark_parser(__doc__, threads=1, repeats=3).parse_args()
    device = start(args)
    gen = generator(args)
    print(f"device={device} threads={args.threads} repeats={args.repeats} "
          f"torch={torch.__version__}")
    print("forward+backward of <v, marginals>; ratio = peer / latentgrad (> 1: latentgrad faster)")
    _compare("SpanningTree(n).marginals", lambda t: SpanningTree(t.shape[-1]).marginals(t),
             "pyro", _pyro_tree_marginals(), (1, 64), True, gen, device, args.repeats)
    _compare("Arborescence(n).marginals (single root)",
             lambda t: Arborescence(t.shape[-1]).marginals(t), "torch-struct",
             _torch_struct_marginals(), BATCHES, False, gen, device, args.repeats)


if __name__ == "__main__":
    main()
