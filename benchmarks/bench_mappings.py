"""Forward+backward timings of the simplex mappings, measured side by side in one run.

    python benchmarks/bench_mappings.py [--device cpu|cuda] [--thread-counts 1,2] [--load]
                                        [--repeats 10] [--shapes 256x1000,64x32000]
                                        [--functions sparsemax,entmax15] [--cold-allocator]

For each shape (rows x K) and each torch thread count it times ``y = f(x); y.backward(v)`` for
torch.softmax, latentgrad's sparsemax / entmax15 (the plain path, and ``fused.sparsemax`` /
``fused.entmax15``: the same functions through their fused kernels, ``use_fused_kernels``) /
entmax_bisect(alpha=1.5) and, when the ``entmax`` package is installed, entmax.sparsemax /
entmax.entmax15, and prints the fastest (min-of-N) times with the ratios to softmax and to the
entmax package, and the same ratios of the process CPU times (which exclude time spent
descheduled). The fused kernels are compiled before the timing starts; the compile times are
printed. ``--load`` repeats every measurement
while a second process keeps one core busy (a spinning loop), so all the ratios (quiet and loaded,
each thread count) come out of the same run. The functions are timed round-robin (one call of
each per round), so that load from other processes hits all of them alike; the minimum over the
rounds is the least disturbed call.

Before timing, the allocator is warmed as in any training process (a 16 MB tensor allocated and
freed; ``--cold-allocator`` skips it): in a fresh process glibc returns the top of its heap to the
OS whenever a call frees more than about twice the largest block it has seen freed, so a call
whose output, gradient and temporaries pass about 2 MB faults all of it in again on the next call
(sparsemax at 256x1000: 250-300 minor page faults per call, about a quarter of its time). The
minor page faults per call of every function are printed where they exceed one.
"""

from __future__ import annotations

import multiprocessing
import resource
import time

import torch
from _timing import benchmark_parser, generator, start, time_call

from latentgrad.mappings import (
    entmax15,
    entmax_bisect,
    fused_kernels_active,
    sparsemax,
    use_fused_kernels,
)

SHAPES = ((1024, 16), (256, 1000), (64, 32000))
GPU_SHAPES = ((256, 32000),)  # the GPU target: sparsemax within 1.5x of softmax there


def _path(fn: callable, fused: bool) -> callable:
    """``fn`` with the fused kernels switched on or off for the call (the backward follows the
    forward's path)."""

    def call(x: torch.Tensor) -> torch.Tensor:
        previous = use_fused_kernels(fused)
        try:
            return fn(x)
        finally:
            use_fused_kernels(previous)

    return call


def _candidates() -> dict[str, callable]:
    fns = {
        "softmax": lambda x: torch.softmax(x, dim=-1),
        "sparsemax": _path(sparsemax, False),
        "entmax15": _path(entmax15, False),
        "fused.sparsemax": _path(sparsemax, True),
        "fused.entmax15": _path(entmax15, True),
        "entmax_bisect": lambda x: entmax_bisect(x, 1.5),
    }
    try:
        import entmax
    except ImportError:
        return fns
    fns["pkg.sparsemax"] = lambda x: entmax.sparsemax(x, dim=-1)
    fns["pkg.entmax15"] = lambda x: entmax.entmax15(x, dim=-1)
    return fns


Timing = tuple[float, float, float]  # min wall seconds, min CPU seconds, minor faults per call


def _time_round_robin(fns, x, v, repeats: int) -> dict[str, Timing]:
    """{name: (min wall seconds, min CPU seconds, mean minor page faults per call)} over
    ``repeats`` interleaved rounds."""
    times = {name: [] for name in fns}
    faults = dict.fromkeys(fns, 0)
    for _ in range(2):  # warm-up
        for fn in fns.values():
            fn(x).backward(v)
    for _ in range(repeats):
        for name, fn in fns.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            times[name].append(time_call(lambda fn=fn: fn(x).backward(v), x.device)[1:])
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return {name: (min(w for w, _ in t), min(c for _, c in t), faults[name] / repeats)
            for name, t in times.items()}


def _warm_allocator() -> None:
    """Allocate and free a 16 MB tensor (module docstring): glibc then raises its trim threshold
    to twice that, as it is in any process that has trained a model."""
    torch.empty(4 * 2**20).fill_(0.0)


def _compile(fns, inputs, threads: int) -> None:
    """Run the fused functions once per input (the first call compiles, for ``threads``
    threads: inductor parallelises its kernels for the thread count of the compilation); print
    how long that took and whether the fused kernels are active (a failed compilation falls
    back)."""
    torch.set_num_threads(threads)
    for name, fn in fns.items():
        if name.startswith("fused."):
            start_wall = time.perf_counter()
            for x, v in inputs.values():
                fn(x).backward(v)
            previous = use_fused_kernels(True)
            active = fused_kernels_active()
            use_fused_kernels(previous)
            print(f"{name}: first calls (compilation) {time.perf_counter() - start_wall:.1f}s, "
                  f"fused kernels active: {active}")


def _spin() -> None:  # the load: one busy core
    while True:
        pass


def _measure(fns, inputs, thread_counts, repeats) -> dict[tuple[str, int], dict]:
    """Times per (shape, thread count): {(shape, threads): {name: (wall, cpu) seconds}}."""
    out = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for shape, (x, v) in inputs.items():
            out[shape, threads] = _time_round_robin(fns, x, v, repeats)
    return out


def _describe(times: dict[str, Timing]) -> str:
    base, base_cpu, _ = times["softmax"]
    parts = []
    for name, (t, cpu, _) in times.items():
        if name == "softmax" or name.startswith("pkg."):
            continue
        part = f"{name} {t / base:.2f}x (cpu {cpu / base_cpu:.2f}x)"
        package = f"pkg.{name.removeprefix('fused.')}"
        if package in times:
            part += f" pkg/ours {times[package][0] / t:.1f}"
        parts.append(part)
    faulting = [f"{name} {f:.0f}" for name, (_, _, f) in times.items() if f > 1]
    if faulting:
        parts.append("page faults per call: " + ", ".join(faulting))
    return f"softmax {1e3 * base:.3f}ms; " + "; ".join(parts)


def main() -> None:
    parser = benchmark_parser(__doc__, threads=1, repeats=10)
    parser.add_argument("--thread-counts", default="1,2",
                        help="comma-separated torch thread counts to measure (overrides --threads)")
    parser.add_argument("--load", action="store_true",
                        help="also measure while another process keeps one core busy")
    parser.add_argument("--shapes", default=None,
                        help="comma-separated ROWSxK shapes (default: "
                             + ",".join(f"{r}x{k}" for r, k in SHAPES) + ", and on cuda "
                             + ",".join(f"{r}x{k}" for r, k in GPU_SHAPES) + ")")
    parser.add_argument("--functions", default=None,
                        help="comma-separated subset of the functions to time (softmax always): "
                             + ",".join(_candidates()))
    parser.add_argument("--cold-allocator", action="store_true",
                        help="skip the allocator warm-up (module docstring)")
    args = parser.parse_args()
    device = start(args)
    if not args.cold_allocator:
        _warm_allocator()
    thread_counts = ([int(t) for t in args.thread_counts.split(",")] if device.type == "cpu"
                     else [torch.get_num_threads()])  # host threads do not matter on a GPU
    gen = generator(args)
    fns = _candidates()
    if args.functions:
        keep = {"softmax", *args.functions.split(",")}
        fns = {name: fn for name, fn in fns.items() if name in keep}
    inputs = {}
    shapes = SHAPES + (GPU_SHAPES if device.type == "cuda" else ())
    if args.shapes:
        shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",")]
    for rows, k in shapes:
        x = torch.randn(rows, k, generator=gen).to(device).requires_grad_()
        inputs[f"{rows}x{k}"] = (x, torch.randn(rows, k, generator=gen).to(device))
    print(f"device={device} thread_counts={thread_counts} repeats={args.repeats} "
          f"torch={torch.__version__} allocator={'cold' if args.cold_allocator else 'warmed'}")
    _compile(fns, inputs, max(thread_counts))
    print("forward+backward, x ~ N(0, 1) float32: softmax min-of-N wall time, and each mapping's "
          "min wall time as a ratio to softmax's (cpu: the ratio of min process CPU times; "
          "pkg/ours: how many times faster than the entmax package, wall)")
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
