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

import latentgrad
from latentgrad.distributions import IGR, HardConcrete

GATES = (1024, 128)
DRAWS, K = 1024, 10
TEMPERATURE = 2 / 3
STRETCH = (-0.1, 1.1)
IGR_TEMPERATURE = 0.5


def _hard_concrete_steps(relaxit) -> dict[str, Callable[[], None]]:
    log_alpha = torch.randn(GATES, requires_grad=True)

    def ours() -> None:
        gate = HardConcrete(log_alpha, TEMPERATURE, stretch=STRETCH)
        z = gate.rsample()
        (z.sum() + gate.log_prob(z).sum()).backward()

    def theirs() -> None:
        alpha = log_alpha.exp()
        gate = relaxit.HardConcrete(alpha, torch.full(GATES, TEMPERATURE),
                                    torch.full(GATES, STRETCH[1]), torch.full(GATES, STRETCH[0]))
        z = gate.rsample()
        (z.sum() + gate.log_prob(z).sum()).backward()

    return _with_validation_off(ours, theirs)


def _igr_steps(relaxit) -> dict[str, Callable[[], None]]:
    loc = torch.randn(DRAWS, K - 1, requires_grad=True)
    log_scale = torch.zeros(DRAWS, K - 1, requires_grad=True)

    def ours() -> None:
        q = IGR(loc, log_scale.exp(), IGR_TEMPERATURE)
        y = q.rsample()
        (y.square().sum() + q.log_prob(y).sum()).backward()

    def theirs() -> None:
        q = relaxit.InvertibleGaussian(loc, log_scale.exp(), torch.tensor(IGR_TEMPERATURE))
        y = q.rsample()
        (y.square().sum() + q.log_prob(y).sum()).backward()

    def ours_joint() -> None:  # the draw's density from its own noise (what IGREstimator uses)
        y, log_q = IGR(loc, log_scale.exp(), IGR_TEMPERATURE).rsample_with_log_prob()
        (y.square().sum() + log_q.sum()).backward()

    return {**_with_validation_off(ours, theirs), "latentgrad rsample_with_log_prob": ours_joint}


def _with_validation_off(ours: Callable[[], None],
                         theirs: Callable[[], None]) -> dict[str, Callable[[], None]]:
    """The steps to time: ours with argument and value checks on (the default) and off."""

    def ours_unchecked() -> None:
        with latentgrad.validate_args(False):
            ours()

    return {"latentgrad": ours, "latentgrad, validation off": ours_unchecked, "relaxit": theirs}


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


def _hard_concrete_agreement(relaxit) -> str:
    torch.manual_seed(0)  # the draws compared
    gen = torch.Generator().manual_seed(0)
    log_alpha = 2 * torch.randn(GATES, generator=gen)
    ours = HardConcrete(log_alpha, TEMPERATURE, stretch=STRETCH)
    theirs = relaxit.HardConcrete(log_alpha.exp(), torch.full(GATES, TEMPERATURE),
                                  torch.full(GATES, STRETCH[1]), torch.full(GATES, STRETCH[0]))
    values = ours.sample()
    gap = (ours.log_prob(values) - theirs.log_prob(values)).abs()
    exact = (values == 0) | (values == 1)
    return (f"max |log_prob difference| {gap.max().item():.1e} over {values.numel()} draws "
            f"({exact.float().mean().item():.0%} of them exactly 0 or 1)")


def _igr_agreement(relaxit) -> str:
    torch.manual_seed(0)  # the draws compared
    gen = torch.Generator().manual_seed(0)
    loc = torch.randn(DRAWS, K - 1, generator=gen)
    ours = IGR(loc, 1.0, IGR_TEMPERATURE)
    theirs = relaxit.InvertibleGaussian(loc, torch.ones(DRAWS, K - 1),
                                        torch.tensor(IGR_TEMPERATURE))
    y = ours.sample()
    mine, other = ours.log_prob(y), theirs.log_prob(y)
    gap = (mine - other.sum(-1)).abs().max().item()
    lines = [f"log_prob shapes: latentgrad {tuple(mine.shape)}, relaxit {tuple(other.shape)}; "
             f"max |ours - sum(relaxit's)| {gap:.2f} nats"]
    for scale in (1.0, 10.0, 50.0):
        big = scale * loc
        nan_ours = IGR(big, 1.0, IGR_TEMPERATURE).rsample().isnan().any(-1).sum().item()
        nan_theirs = relaxit.InvertibleGaussian(big, torch.ones(DRAWS, K - 1),
                                                torch.tensor(IGR_TEMPERATURE)).rsample()
        lines.append(f"locations x{scale:g}: draws with a NaN, latentgrad {nan_ours}, relaxit "
                     f"{nan_theirs.isnan().any(-1).sum().item()} of {DRAWS}")
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
    torch.manual_seed(0)
    _report(f"HardConcrete {GATES} rsample + log_prob, forward+backward",
            _timed(_hard_concrete_steps(relaxit), args.repeats))
    print("  " + _hard_concrete_agreement(relaxit))
    _report(f"IGR-I {DRAWS} draws, K = {K}, rsample + log_prob, forward+backward",
            _timed(_igr_steps(relaxit), args.repeats))
    print("  " + _igr_agreement(relaxit))


if __name__ == "__main__":
    main()
