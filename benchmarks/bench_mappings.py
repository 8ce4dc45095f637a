"""Forward+backward timings of the simplex mappings, measured side by side in one run.

    python benchmarks/bench_mappings.py [--device cpu|cuda] [--thread-counts 1,2] [--load]
                                        [--repeats 10]

For each shape (rows x K) and each torch thread count it times ``y = f(x); y.backward(v)`` for
torch.softmax, latentgrad's sparsemax / entmax15 / entmax_bisect(alpha=1.5) and, when the
``entmax`` package is installed, entmax.sparsemax / entmax.entmax15, and prints the median times
with the ratios to softmax and to the entmax package. ``--load`` repeats every measurement while
a second process keeps one core busy (a spinning loop), so all the ratios (quiet and loaded, each
thread count) come out of the same run. The functions are timed round-robin (one call of each per
round), so that load from other processes hits all of them alike.
"""

from __future__ import annotations

import multiprocessing
import statistics

import torch
from _timing import benchmark_parser, start, time_call

from latentgrad.mappings import entmax15, entmax_bisect, sparsemax

SHAPES = ((1024, 16), (256, 1000), (64, 32000))
GPU_SHAPES = ((256, 32000),)  # the GPU target: sparsemax within 1.5x of softmax there


def _candidates() -> dict[str, callable]:
    fns = {
        "softmax": lambda x: torch.softmax(x, dim=-1),
        "sparsemax": sparsemax,
        "entmax15": entmax15,
        "entmax_bisect": lambda x: entmax_bisect(x, 1.5),
    }
    try:
        import entmax
    except ImportError:
        return fns
    fns["pkg.sparsemax"] = lambda x: entmax.sparsemax(x, dim=-1)
    fns["pkg.entmax15"] = lambda x: entmax.entmax15(x, dim=-1)
    return fns


def _time_round_robin(fns, x, v, repeats: int) -> dict[str, float]:
    times = {name: [] for name in fns}
    for _ in range(2):  # warm-up
        for fn in fns.values():
            fn(x).backward(v)
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_call(lambda fn=fn: fn(x).backward(v), x.device)[1])
    return {name: statistics.median(t) for name, t in times.items()}


def _spin() -> None:  # the load: one busy core
    while True:
        pass


def _measure(fns, inputs, thread_counts, repeats) -> dict[tuple[str, int], list[dict]]:
    """Median times per (shape, thread count): {(shape, threads): {name: seconds}}."""
    out = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for shape, (x, v) in inputs.items():
            out[shape, threads] = _time_round_robin(fns, x, v, repeats)
    return out


def _describe(med: dict[str, float]) -> str:
    base = med["softmax"]
    parts = []
    for name, t in med.items():
        if name == "softmax" or name.startswith("pkg."):
            continue
        part = f"{name} {t / base:.2f}x"
        if f"pkg.{name}" in med:
            part += f" (pkg/ours {med[f'pkg.{name}'] / t:.1f})"
        parts.append(part)
    return f"softmax {1e3 * base:.3f}ms; " + "; ".join(parts)


def main() -> None:
    parser = benchmark_parser(__doc__, threads=1, repeats=10)
    parser.add_argument("--thread-counts", default="1,2",
                        help="comma-separated torch thread counts to measure (overrides --threads)")
    parser.add_argument("--load", action="store_true",
                        help="also measure while another process keeps one core busy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = start(args)
    thread_counts = ([int(t) for t in args.thread_counts.split(",")] if device.type == "cpu"
                     else [torch.get_num_threads()])  # host threads do not matter on a GPU
    gen = torch.Generator().manual_seed(args.seed)
    fns = _candidates()
    inputs = {}
    for rows, k in SHAPES + (GPU_SHAPES if device.type == "cuda" else ()):
        x = torch.randn(rows, k, generator=gen).to(device).requires_grad_()
        inputs[f"{rows}x{k}"] = (x, torch.randn(rows, k, generator=gen).to(device))
    print(f"device={device} thread_counts={thread_counts} repeats={args.repeats} "
          f"torch={torch.__version__}")
    print("forward+backward, x ~ N(0, 1) float32: softmax median time, and each mapping's time "
          "as a ratio to softmax (pkg/ours: how many times faster than the entmax package)")
    results = {"quiet": _measure(fns, inputs, thread_counts, args.repeats)}
    if args.load:
        load = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
        load.start()
        try:
            results["one core busy"] = _measure(fns, inputs, thread_counts, args.repeats)
        finally:
            load.terminate()
            load.join()
    for shape in inputs:
        for condition, by_config in results.items():
            for threads in thread_counts:
                print(f"{shape} threads={threads} {condition}: "
                      f"{_describe(by_config[shape, threads])}")


if __name__ == "__main__":
    main()
