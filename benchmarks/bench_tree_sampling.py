"""Exact tree sampler: the linear-arithmetic elimination against the log-space one, ms per call.

    python benchmarks/bench_tree_sampling.py [--device cpu|cuda] [--threads 1] [--repeats 5]

Both are the contraction sampler of ``structures.tree_sampling`` on the same float64 log weights
(``_contract_linear`` is what ``sample`` runs for ordinary scores, ``_contract_log`` the fallback
for tiny root shares and the sampler used before the linear one). Cases: ListOps' training shape
(batch 100, 50 tokens, lengths uniform in 4..50, arc scores N(0, 3^2), padding forced onto the
root with scores +-1000 as ``experiments.tasks.listops`` does) and ``SpanningTree(10)`` /
``SpanningTree(30)`` at batch 128 (graph_layout's size and a larger one; N(0, 1) symmetric).
The two are called in interleaved rounds; medians of ``--repeats`` rounds.
"""

from __future__ import annotations

import statistics

import torch
from _timing import benchmark_parser, generator, start, time_call
from torch import Tensor

from latentgrad.structures import tree_sampling


def _listops(gen: torch.Generator, batch: int = 100, length: int = 50) -> Tensor:
    lengths = torch.randint(4, length + 1, (batch,), generator=gen)
    theta = 3 * torch.randn(batch, length, length, generator=gen, dtype=torch.float64)
    idx = torch.arange(length)
    real = idx < lengths[:, None]
    mask = real[:, :, None] & real[:, None, :] & (idx[:, None] != idx) & (idx != 0)
    pad_from_root = (idx >= lengths[:, None])[:, None, :] & (idx == 0)[None, :, None]
    return torch.where(mask, theta, torch.where(pad_from_root, 1e3, -1e3).double())


def _undirected(gen: torch.Generator, batch: int, n: int) -> Tensor:
    theta = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
    return (theta + theta.mT) / 2


def main() -> None:
    args = benchmark_parser(__doc__, threads=1, repeats=5).parse_args()
    device = start(args)
    gen = generator(args)
    cases = {
        "ListOps 100 x 50 nodes": _listops(gen),
        "SpanningTree(10) x 128": _undirected(gen, 128, 10),
        "SpanningTree(30) x 128": _undirected(gen, 128, 30),
    }
    samplers = {"linear": tree_sampling._contract_linear, "log": tree_sampling._contract_log}
    print(f"device={device} threads={args.threads} repeats={args.repeats} "
          f"torch={torch.__version__}")
    for name, logw in cases.items():
        logw = logw.to(device)
        assert bool((tree_sampling._log_root_share(logw) >= -300).all())
        times: dict[str, list[float]] = {key: [] for key in samplers}
        for r in range(args.repeats + 1):  # the first round warms up
            for key, fn in samplers.items():
                draw = torch.Generator(device).manual_seed(r)
                _, wall, _ = time_call(lambda fn=fn, w=logw, g=draw: fn(w, g), device)
                if r:
                    times[key].append(1e3 * wall)
        lin, log = (statistics.median(times[key]) for key in samplers)
        print(f"{name}: linear {lin:.1f} ms, log {log:.1f} ms per call: {log / lin:.1f}x")


if __name__ == "__main__":
    main()
