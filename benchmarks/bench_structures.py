"""Per-example forward+backward cost of the structured mappings at batch 1, 64 and 1024, and
SparseMAP on bit vectors against lp-sparsemap.

    python benchmarks/bench_structures.py [--device cpu|cuda] [--threads 1] [--repeats 3]

Cases: ``sparsemap`` on BitVector(32) and BitVector(128, budget=64) (the threshold solver, and the
active set for comparison), ``topk_sparsemax`` (k = 10) on the same structures, ``sparsemap`` on
SpanningTree(10) and the Gibbs marginals of SpanningTree(10), SpanningTree(30) and the single-root
Arborescence(30) (matrix-tree).
Scores are N(0, 1) float32 rows; the backward pass is that of ``<v, marginals> + <u, weights>``
for N(0, 1) v (drawn once per shape, so its cost is not timed) and u (drawn per call: the support
size varies). Every cost is the median of ``--repeats`` calls; at batch 1 it is averaged over
8 different single rows (the active-set iteration count varies from row to row). The ratio
columns are per-example(batch 1) / per-example(batch 1024), what batching buys, and
per-example(batch 1024) / per-example(batch 64), each in wall time and in process CPU time (the
steadier of the two when other processes share the machine). One intra-op thread by default:
on a loaded machine, multi-threaded small ops wait on descheduled sibling threads. With
``--device cuda`` two more columns: the CPU's per-example cost at batch 1024 (one call) and its
ratio to the GPU's.

Then SparseMAP at batch 64 against lp-sparsemap (Niculae & Martins, 2020; deep-spin's C++
package, one factor graph with a budget factor per instance, forward+backward of the
marginals), measured side by side when ``lpsmap`` is importable; otherwise against its timings
recorded on a 2-core CPU (0.10 ms per instance on BitVector(32), 0.14 ms on BitVector(128, 64)).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from _timing import benchmark_parser, generator, start, time_call
from torch import Tensor

from latentgrad.polytope.sparsemap import sparsemap
from latentgrad.polytope.topk_sparsemax import topk_sparsemax
from latentgrad.structures.arborescence import Arborescence
from latentgrad.structures.base import Structure
from latentgrad.structures.bitvector import BitVector
from latentgrad.structures.spanning_tree import SpanningTree

BATCHES = (1, 64, 1024)
SINGLE_ROWS = 8
#: lp-sparsemap's forward+backward wall ms per instance at batch 64, recorded on a 2-core CPU
LPSMAP_RECORDED = {32: 0.10, 128: 0.14}


_COTANGENTS: dict[tuple, Tensor] = {}


def _cotangent(like: Tensor) -> Tensor:
    """A fixed N(0, 1) cotangent per shape, drawn at its first use: drawing one at every call
    would add its cost (2.5 ms for a ``(1024, 30, 30)`` one) to the timed forward+backward."""
    key = (tuple(like.shape), like.dtype, like.device)
    if key not in _COTANGENTS:
        _COTANGENTS[key] = torch.randn_like(like)
    return _COTANGENTS[key]


def _sparsemap_step(structure: Structure, solver: str = "auto") -> Callable[[Tensor], Tensor]:
    def step(theta: Tensor) -> Tensor:
        res = sparsemap(theta, structure, solver=solver)
        return (res.marginals * _cotangent(res.marginals)).sum() + (
            res.weights * torch.randn_like(res.weights)  # (B, support size): small, varies
        ).sum()

    return step


def _topk_step(structure: Structure, k: int) -> Callable[[Tensor], Tensor]:
    def step(theta: Tensor) -> Tensor:
        res = topk_sparsemax(theta, structure, k)
        return (res.marginals * _cotangent(res.marginals)).sum() + (
            res.weights * torch.randn_like(res.weights)
        ).sum()

    return step


def _marginals_step(structure: Structure) -> Callable[[Tensor], Tensor]:
    def step(theta: Tensor) -> Tensor:
        mu = structure.marginals(theta)
        return (mu * _cotangent(mu)).sum()

    return step


def _per_example_ms(step, theta: Tensor, batch: int, repeats: int) -> tuple[float, float]:
    """Forward+backward time / batch, wall and process-CPU ms: the median of ``repeats`` calls
    on each input (robust to bursts of load from other processes), averaged over the inputs.

    Batch 1 runs ``SINGLE_ROWS`` different rows (their costs differ); larger batches one input."""
    if batch == 1:
        inputs = [theta[i : i + 1] for i in range(SINGLE_ROWS)]
    else:
        inputs = [theta[:batch]]
    wall, cpu = [], []
    for x in inputs:
        x = x.detach().requires_grad_(True)
        call = lambda x=x: step(x).backward()  # noqa: E731
        times = [time_call(call, theta.device)[1:] for _ in range(repeats)]
        wall.append(statistics.median(t[0] for t in times) / batch)
        cpu.append(statistics.median(t[1] for t in times) / batch)
    return 1e3 * statistics.mean(wall), 1e3 * statistics.mean(cpu)


def _scores(structure: Structure, gen: torch.Generator, device: torch.device) -> Tensor:
    theta = torch.randn(max(BATCHES), *structure.score_shape, generator=gen)
    if isinstance(structure, SpanningTree):
        theta = (theta + theta.mT) / 2
    return theta.to(device)


def _lpsmap_step(budget: int) -> Callable[[Tensor], Tensor] | None:
    """lp-sparsemap's marginals for each row, one factor graph with a budget factor per row (the
    unbudgeted case is budget = d); None when ``lpsmap`` is not installed."""
    try:
        from lpsmap import Budget, TorchFactorGraph
    except ImportError:
        return None

    def step(theta: Tensor) -> Tensor:
        total = theta.new_zeros(())
        for row in theta:
            graph = TorchFactorGraph()
            bits = graph.variable_from(row)
            graph.add(Budget(bits, budget))
            graph.solve()
            total = total + (bits.value * torch.randn_like(bits.value)).sum()
        return total

    return step


def _table(cases, gen: torch.Generator, device: torch.device, repeats: int) -> None:
    on_gpu = device.type == "cuda"
    header = f"{'case':34s}" + "".join(f"{'b=' + str(b):>10s}" for b in BATCHES)
    header += f"{'1/1024':>8s}{'cpu':>7s}{'1024/64':>9s}{'cpu':>7s}"
    print(header + (f"{'CPU b=1024':>12s}{'CPU/GPU':>9s}" if on_gpu else ""))
    for name, structure, step in cases:
        theta = _scores(structure, gen, device)
        step(theta[:2].detach().requires_grad_(True)).backward()  # warm-up
        cost = [_per_example_ms(step, theta, b, repeats) for b in BATCHES]
        cells = "".join(f"{wall:10.4f}" for wall, _ in cost)
        ratio, cpu_ratio = cost[0][0] / cost[-1][0], cost[0][1] / cost[-1][1]
        load, cpu_load = cost[2][0] / cost[1][0], cost[2][1] / cost[1][1]
        line = f"{name:34s}{cells}{ratio:7.1f}x{cpu_ratio:6.1f}x{load:8.2f}x{cpu_load:6.2f}x"
        if on_gpu:  # the same batch of 1024 on the CPU (one thread), for the GPU's speed-up
            host = _per_example_ms(step, theta.cpu(), max(BATCHES), 1)[0]
            line += f"{host:12.4f}{host / cost[-1][0]:8.1f}x"
        print(line, flush=True)


def _against_lpsmap(gen: torch.Generator, device: torch.device, repeats: int) -> None:
    print(
        "\nSparseMAP forward+backward at batch 64, ms per instance (wall / process CPU); "
        "ratio = lp-sparsemap / latentgrad (> 1: latentgrad faster)"
    )
    for d, budget in ((32, None), (128, 64)):
        structure = BitVector(d, budget)
        theta = _scores(structure, gen, torch.device("cpu"))[:64]
        ours = _per_example_ms(_sparsemap_step(structure), theta.to(device), 64, repeats)
        line = f"BitVector({d}, budget={budget}): latentgrad {ours[0]:.4f} / {ours[1]:.4f}"
        theirs = _lpsmap_step(d if budget is None else budget)
        if theirs is None:
            recorded = LPSMAP_RECORDED[d]
            line += (
                f"; lp-sparsemap not installed, recorded {recorded:.2f} wall: "
                f"ratio {recorded / ours[0]:.2f}x wall"
            )
        else:
            lps = _per_example_ms(theirs, theta, 64, repeats)
            line += (
                f"; lp-sparsemap {lps[0]:.4f} / {lps[1]:.4f}: ratio {lps[0] / ours[0]:.2f}x "
                f"wall, {lps[1] / ours[1]:.2f}x CPU"
            )
        print(line, flush=True)


def main() -> None:
    args = benchmark_parser(__doc__, threads=1, repeats=3).parse_args()
    device = start(args)
    gen = generator(args)
    bits, budget = BitVector(32), BitVector(128, 64)
    cases = [
        ("sparsemap BitVector(32)", bits, _sparsemap_step(bits)),
        ("sparsemap BitVector(128,B=64)", budget, _sparsemap_step(budget)),
        ("  active set BitVector(32)", bits, _sparsemap_step(bits, "active_set")),
        ("  active set BitVector(128,B=64)", budget, _sparsemap_step(budget, "active_set")),
        ("topk10 BitVector(32)", bits, _topk_step(bits, 10)),
        ("topk10 BitVector(128,B=64)", budget, _topk_step(budget, 10)),
        ("sparsemap SpanningTree(10)", SpanningTree(10), _sparsemap_step(SpanningTree(10))),
        ("marginals SpanningTree(10)", SpanningTree(10), _marginals_step(SpanningTree(10))),
        ("marginals SpanningTree(30)", SpanningTree(30), _marginals_step(SpanningTree(30))),
        ("marginals Arborescence(30)", Arborescence(30), _marginals_step(Arborescence(30))),
    ]
    print(
        f"device={device} threads={args.threads} repeats={args.repeats} torch={torch.__version__}"
    )
    print(
        "forward+backward wall ms per example; ratios: per-example cost at batch 1 / at batch "
        "1024 (wall, process CPU), and at batch 1024 / at batch 64 (wall, process CPU)"
    )
    _table(cases, gen, device, args.repeats)
    _against_lpsmap(gen, device, args.repeats)


if __name__ == "__main__":
    main()
