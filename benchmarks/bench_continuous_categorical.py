"""The continuous categorical's normaliser: ours against the textbook closed form, side by side.

    python benchmarks/bench_continuous_categorical.py [--rows 32] [--ks 3,5,10,20] [--repeats 20]

``Z(η) = ∫_Δ exp(η·x) dx = Σ_k e^{η_k} / Π_{i≠k} (η_k − η_i)``. The closed form is what Gordon-
Rodriguez et al.'s code evaluates (in TensorFlow, after dividing the differences by the
parameters' standard deviation to keep the products in range); it is rewritten here in torch,
float64, the same way, so that both run on the same inputs. ``latentgrad`` reads ``Z`` off a
bidiagonal matrix exponential instead (``latentgrad.distributions.ContinuousCategorical``).

For each K and spread s (η = s · N(0, 1), ``--rows`` rows): the median and largest relative error
of log Z against the closed form evaluated in mpmath with 50 + 20 K digits (enough for the
cancellation at the smallest spread), and the share of rows where the mean ∇ log Z (autograd
through each method) has an entry that is not in (0, 1) or not finite (the reference code marks
those rows NaN). Then the wall time of log Z forward and backward at the voting GLM's shape
(650 rows, K = 5), median of ``--repeats`` interleaved calls, one thread by default.
"""

from __future__ import annotations

import statistics

import mpmath
import torch
from _timing import benchmark_parser, generator, interleaved, start
from torch import Tensor

from latentgrad.distributions.continuous_categorical import log_normalizer

SPREADS = (1e-6, 1e-3, 0.1, 1.0, 10.0, 100.0)


def closed_form(eta: Tensor) -> Tensor:
    """log Σ_k e^{η_k} / Π_{i≠k} (η_k − η_i) (*batch,), shifted by the largest η and with the
    differences divided by the standard deviation s of η (then × s^{-(K−1)})."""
    k = eta.shape[-1]
    top = eta.detach().amax(-1, keepdim=True)
    scale = eta.detach().std(-1, keepdim=True)
    a = (eta - top) / scale
    diffs = a.unsqueeze(-1) - a.unsqueeze(-2) + torch.eye(k, dtype=eta.dtype)  # 1 on the diagonal
    terms = (eta - top).exp() / diffs.prod(-1)
    return terms.sum(-1).log() + top.squeeze(-1) - (k - 1) * scale.squeeze(-1).log()


def reference(eta: list[float]) -> float:
    """The closed form in mpmath with enough digits for its cancellation."""
    with mpmath.workdps(50 + 20 * len(eta)):
        nodes = [mpmath.mpf(e) for e in eta]
        total = mpmath.mpf(0)
        for k, a in enumerate(nodes):
            denominator = mpmath.mpf(1)
            for i, b in enumerate(nodes):
                if i != k:
                    denominator *= a - b
            total += mpmath.e**a / denominator
        return float(mpmath.log(total))


def _bad_means(method, eta: Tensor) -> float:
    """Share of rows whose mean ∇ log Z has an entry outside (0, 1) or not finite."""
    eta = eta.clone().requires_grad_()
    (mean,) = torch.autograd.grad(method(eta).sum(), eta)
    bad = ~(torch.isfinite(mean) & (mean > 0) & (mean < 1)).all(-1)
    return float(bad.double().mean())


def accuracy(rows: int, ks: list[int], gen: torch.Generator) -> None:
    print(f"log Z relative error against mpmath ({rows} rows per cell; median / largest), and rows"
          " with an invalid mean")
    print(f"{'K':>3} {'spread':>7} | {'latentgrad':>21} {'bad mean':>8} | "
          f"{'closed form':>21} {'bad mean':>8}")
    for k in ks:
        for spread in SPREADS:
            eta = torch.randn(rows, k, generator=gen, dtype=torch.float64) * spread
            want = torch.tensor([reference(r) for r in eta.tolist()], dtype=torch.float64)
            cells = []
            for method in (log_normalizer, closed_form):
                with torch.no_grad():
                    got = method(eta)
                error = ((got - want).abs() / want.abs().clamp_min(1.0)).nan_to_num(float("inf"))
                cells.append(f"{error.median():9.1e} / {error.max():9.1e} "
                             f"{100 * _bad_means(method, eta):7.0f}%")
            print(f"{k:>3} {spread:>7.0e} | {cells[0]} | {cells[1]}")


def timing(repeats: int, gen: torch.Generator) -> None:
    eta = torch.randn(650, 5, generator=gen, dtype=torch.float64).requires_grad_()

    def step(method):
        def run():
            method(eta).sum().backward()
        return run

    ours, theirs = interleaved([step(log_normalizer), step(closed_form)], repeats)
    a, b = statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3
    print(f"\nlog Z forward+backward, 650 rows, K = 5: latentgrad {a:.3f} ms, closed form "
          f"{b:.3f} ms (closed form / latentgrad = {b / a:.2f})")


def main() -> None:
    parser = benchmark_parser(__doc__, threads=1, repeats=20)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--ks", default="3,5,10,20")
    args = parser.parse_args()
    start(args)
    gen = generator(args)
    accuracy(args.rows, [int(k) for k in args.ks.split(",")], gen)
    timing(args.repeats, gen)


if __name__ == "__main__":
    main()
