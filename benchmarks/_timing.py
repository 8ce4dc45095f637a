"""Timing helpers shared by the benchmark scripts (imported as a sibling module: each script is
run as ``python benchmarks/<script>.py``, which puts this folder on ``sys.path``)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def benchmark_parser(doc: str, threads: int, repeats: int) -> argparse.ArgumentParser:
    """A parser with ``--device`` (cpu), ``--threads`` and ``--repeats`` (these defaults) and
    ``--seed`` (0), described by the first line of ``doc``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def start(args: argparse.Namespace) -> torch.device:
    """Set torch's intra-op threads to ``args.threads`` and seed its global generator with
    ``args.seed``; return ``args.device``."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return torch.device(args.device)


def generator(args: argparse.Namespace) -> torch.Generator:
    """A CPU generator seeded with ``args.seed``, for the benchmark's inputs."""
    return torch.Generator().manual_seed(args.seed)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], T], device: torch.device) -> tuple[T, float, float]:
    """Run ``fn()`` once between synchronisations of ``device``; return its result, the wall time
    and the process CPU time, in seconds."""
    _sync(device)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - start_wall, time.process_time() - start_cpu


def interleaved(steps: list[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Wall seconds of ``repeats`` calls of each of ``steps``, interleaved (the order rotates
    every round, so that load from other processes hits them alike), after three warm-up
    rounds."""
    times: list[list[float]] = [[] for _ in steps]
    for r in range(repeats + 3):
        for j in range(len(steps)):
            i = (j + r) % len(steps)
            t0 = time.perf_counter()
            steps[i]()
            if r >= 3:
                times[i].append(time.perf_counter() - t0)
    return times


def relative_error(diff: torch.Tensor, se: torch.Tensor, scale: torch.Tensor) -> str:
    """``|diff| / |scale|`` with its standard error ``|se| / |scale|`` (L2 norms), formatted."""
    return f"{diff.norm() / scale.norm():.3f} ± {se.norm() / scale.norm():.3f}"
