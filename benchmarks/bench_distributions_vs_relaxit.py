"""Hard Concrete and IGR-I against relaxit, side by side: cost, agreement and range.

    python benchmarks/bench_distributions_vs_relaxit.py [--threads 1] [--repeats 5]

relaxit (``relaxit.distributions``) is a collection of relaxed distributions for PyTorch; two of
them are ours too. Each is called through its public API as a user would:

- ``HardConcrete(log_alpha, temperature)`` against ``relaxit.distributions.HardConcrete(alpha,
  beta, xi, gamma)``, (1024, 128) gates: ``rsample`` then ``log_prob`` of the draws, forward and
  backward to the parameters; agreement: the largest difference of ``log_prob`` on the same
  values (point masses at 0 and 1, the density inside);
- ``IGR(loc, scale, temperature)`` against ``relaxit.distributions.InvertibleGaussian(loc, scale,
  temperature)``, 1024 draws of K = 10 categories: ``rsample`` then ``log_prob``, forward and
  backward (and ours as one call, ``rsample_with_log_prob``: the density from the draw's own
  noise, no inversion, as ``IGREstimator`` uses it); agreement: the largest difference between
  our ``log_prob`` (one per draw) and the sum of relaxit's (one per Gaussian coordinate), and
  the shape each returns; range: the draws with a NaN at locations scaled by 1, 10 and 50
  (τ = 0.5).

Times are wall ms per call, the median of ``--repeats`` calls, interleaved, ours with argument
and value checks on (the default) and off (``latentgrad.validate_args(False)``); ratio = relaxit
/ latentgrad (> 1: latentgrad faster). float32 throughout (relaxit casts Hard Concrete's
parameters to float32). Needs relaxit installed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from _timing import benchmark_parser, start
from torch import Tensor
from torch.distributions import Distribution

import latentgrad
from latentgrad.distributions import IGR, HardConcrete

GATES = (1024, 128)
DRAWS, K = 1024, 10
TEMPERATURE = 2 / 3
STRETCH = (-0.1, 1.1)
IGR_TEMPERATURE = 0.5


def _hard_concrete(relaxit, log_alpha: Tensor, mine: bool) -> Distribution:
    """Our Hard Concrete gates with ``log_alpha`` (``mine``), or relaxit's (its ``alpha`` is the
    exp, ``beta`` the temperature, ``(gamma, xi)`` the stretch)."""
    if mine:
        return HardConcrete(log_alpha, TEMPERATURE, stretch=STRETCH)
    shape = log_alpha.shape
    return relaxit.HardConcrete(log_alpha.exp(), torch.full(shape, TEMPERATURE),
                                torch.full(shape, STRETCH[1]), torch.full(shape, STRETCH[0]))


def _igr(relaxit, loc: Tensor, scale: Tensor, mine: bool) -> Distribution:
    """Our IGR-I with ``loc`` and ``scale`` ``(draws, K - 1)`` (``mine``), or relaxit's."""
    if mine:
        return IGR(loc, scale, IGR_TEMPERATURE)
    return relaxit.InvertibleGaussian(loc, scale, torch.tensor(IGR_TEMPERATURE))


def _hard_concrete_steps(relaxit) -> dict[str, Callable[[], None]]:
    log_alpha = torch.randn(GATES, requires_grad=True)

    def step(mine: bool) -> None:
        gate = _hard_concrete(relaxit, log_alpha, mine)
        z = gate.rsample()
        (z.sum() + gate.log_prob(z).sum()).backward()

    return _timed_steps(step)


def _igr_steps(relaxit) -> dict[str, Callable[[], None]]:
    loc = torch.randn(DRAWS, K - 1, requires_grad=True)
    log_scale = torch.zeros(DRAWS, K - 1, requires_grad=True)

    def step(mine: bool) -> None:
        q = _igr(relaxit, loc, log_scale.exp(), mine)
        y = q.rsample()
        (y.square().sum() + q.log_prob(y).sum()).backward()

    def ours_joint() -> None:  # the draw's density from its own noise (what IGREstimator uses)
        y, log_q = IGR(loc, log_scale.exp(), IGR_TEMPERATURE).rsample_with_log_prob()
        (y.square().sum() + log_q.sum()).backward()

    return {**_timed_steps(step), "latentgrad rsample_with_log_prob": ours_joint}


def _timed_steps(step: Callable[[bool], None]) -> dict[str, Callable[[], None]]:
    """The calls to time of ``step(mine)``: ours with argument and value checks on (the default)
    and off, and relaxit's."""

    def ours_unchecked() -> None:
        with latentgrad.validate_args(False):
            step(True)

    return {"latentgrad": lambda: step(True), "latentgrad, validation off": ours_unchecked,
            "relaxit": lambda: step(False)}


def _timed(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median wall ms per call of each step, the steps called in interleaved rounds."""
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {name: statistics.median(ts) for name, ts in times.items()}


def _report(name: str, times: dict[str, float]) -> None:
    theirs = times["relaxit"]
    cells = [f"{who} {ms:.3f} ms ({theirs / ms:.2f}x)" for who, ms in times.items()
             if who != "relaxit"]
    print(f"{name}: relaxit {theirs:.3f} ms; " + ", ".join(cells))


def _hard_concrete_agreement(relaxit, seed: int) -> str:
    torch.manual_seed(seed)  # the draws compared
    gen = torch.Generator().manual_seed(seed)
    log_alpha = 2 * torch.randn(GATES, generator=gen)
    ours, theirs = (_hard_concrete(relaxit, log_alpha, mine) for mine in (True, False))
    values = ours.sample()
    gap = (ours.log_prob(values) - theirs.log_prob(values)).abs()
    exact = (values == 0) | (values == 1)
    return (f"max |log_prob difference| {gap.max().item():.1e} over {values.numel()} draws "
            f"({exact.float().mean().item():.0%} of them exactly 0 or 1)")


def _igr_agreement(relaxit, seed: int) -> str:
    torch.manual_seed(seed)  # the draws compared
    gen = torch.Generator().manual_seed(seed)
    loc = torch.randn(DRAWS, K - 1, generator=gen)
    ones = torch.ones(DRAWS, K - 1)
    ours, theirs = (_igr(relaxit, loc, ones, mine) for mine in (True, False))
    y = ours.sample()
    mine, other = ours.log_prob(y), theirs.log_prob(y)
    gap = (mine - other.sum(-1)).abs().max().item()
    lines = [f"log_prob shapes: latentgrad {tuple(mine.shape)}, relaxit {tuple(other.shape)}; "
             f"max |ours - sum(relaxit's)| {gap:.2f} nats"]
    for scale in (1.0, 10.0, 50.0):
        nans = [int(_igr(relaxit, scale * loc, ones, mine).rsample().isnan().any(-1).sum())
                for mine in (True, False)]
        lines.append(f"locations x{scale:g}: draws with a NaN, latentgrad {nans[0]}, relaxit "
                     f"{nans[1]} of {DRAWS}")
    return "\n  ".join(lines)


def main() -> None:
    args = benchmark_parser(__doc__, threads=1, repeats=5).parse_args()
    start(args)
    try:
        import relaxit.distributions as relaxit
    except ImportError:
        print("relaxit is not installed: nothing to compare (pip install relaxit)")
        return
    print(f"threads={args.threads} repeats={args.repeats} torch={torch.__version__}")
    _report(f"HardConcrete {GATES} rsample + log_prob, forward+backward",
            _timed(_hard_concrete_steps(relaxit), args.repeats))
    print("  " + _hard_concrete_agreement(relaxit, args.seed))
    _report(f"IGR-I {DRAWS} draws, K = {K}, rsample + log_prob, forward+backward",
            _timed(_igr_steps(relaxit), args.repeats))
    print("  " + _igr_agreement(relaxit, args.seed))


if __name__ == "__main__":
    main()
