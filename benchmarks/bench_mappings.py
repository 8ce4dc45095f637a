"""Forward+backward timings of the simplex mappings, measured side by side in one run.

    python benchmarks/bench_mappings.py [--device cpu|cuda] [--threads 2] [--repeats 10]

For each shape (rows x K) it prints the median time of ``y = f(x); y.backward(v)`` for
torch.softmax, latentgrad's sparsemax / entmax15 / entmax_bisect(alpha=1.5) and, when the
``entmax`` package is installed, entmax.sparsemax / entmax.entmax15, plus the ratios to softmax
and to the entmax package. The functions are timed round-robin (one call of each per round), so
that load from other processes hits all of them alike.
"""

from __future__ import annotations

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


def main() -> None:
    parser = benchmark_parser(__doc__, threads=2, repeats=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = start(args)
    gen = torch.Generator().manual_seed(args.seed)
    fns = _candidates()
    print(f"device={device} threads={args.threads} repeats={args.repeats} "
          f"torch={torch.__version__}")
    print("forward+backward median times (ms), x ~ N(0, 1) float32; ratios to softmax [and to pkg]")
    for rows, k in SHAPES + (GPU_SHAPES if device.type == "cuda" else ()):
        x = torch.randn(rows, k, generator=gen).to(device).requires_grad_()
        v = torch.randn(rows, k, generator=gen).to(device)
        med = _time_round_robin(fns, x, v, args.repeats)
        base = med["softmax"]
        parts = []
        for name, t in med.items():
            part = f"{name} {1e3 * t:.3f}ms ({t / base:.2f}x"
            pkg = f"pkg.{name}"
            if pkg in med:
                part += f", pkg/ours {med[pkg] / t:.1f}"
            parts.append(part + ")")
        print(f"{rows}x{k}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
