"""Sparsity turns into saved compute: one training step, sparsemax vs softmax marginalization.

A decoder MLP maps a one-hot latent (K,) to 784 Bernoulli logits, scored by binary cross-entropy
against a fixed binary target; it dominates the cost of a step (forward + backward). Softmax
marginalization evaluates it on all K categories per example, sparsemax only on the support, in
one batched call each. The script prints, side by side from one run, the ratio of step times
(sparsemax / softmax) next to the ratio of mean support sizes; the target is a time ratio within
1.5x of the support ratio.

A second table shows that with ``one_hot=False`` the cost grows with the support, not with K: at
K = 10^3, 10^5, 10^6 a sparsemax-marginalization step whose loss looks up an embedding of the
category index is timed against its floor, sparsemax forward+backward on the same scores plus the
same loss (forward+backward) on the support pairs alone (target: ratio <= 1.5).

Scores are "trained-ish" encoder logits: a confident class (margin ``margin``) plus Gaussian noise
(std ``noise``), scaled so sparsemax supports stay small, as after training.

    python benchmarks/bench_estimators.py [--device cuda] [--repeats 20] [--large 1000,100000]
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from _timing import benchmark_parser, start, time_call
from torch import nn

from latentgrad.estimators.marginalization import SoftmaxMarginalization, SparsemaxMarginalization
from latentgrad.mappings import sparsemax

PIXELS = 784


def make_problem(k: int, batch: int, hidden: int, margin: float, noise: float, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    decoder = nn.Sequential(nn.Linear(k, hidden), nn.ReLU(), nn.Linear(hidden, PIXELS)).to(device)
    target = (torch.rand(batch, PIXELS, generator=g) < 0.3).float().to(device)
    labels = torch.randint(k, (batch,), generator=g)
    logits = noise * torch.randn(batch, k, generator=g) + margin * F.one_hot(labels, k)
    return decoder, target, logits.to(device)


def step_time(est, decoder, target, logits, repeats: int, device) -> tuple[float, float]:
    """Median seconds of one forward+backward step, and the mean support size."""

    def loss_fn(z, rows):
        out = decoder(z)
        return F.binary_cross_entropy_with_logits(out, target[rows], reduction="none").sum(-1)

    def step(scores):
        out = est(scores, loss_fn)
        out.loss.backward()
        return out

    times, support = [], 0.0
    for i in range(repeats + 2):
        scores = logits.clone().requires_grad_(True)
        decoder.zero_grad(set_to_none=True)
        out, seconds, _ = time_call(lambda scores=scores: step(scores), device)
        if i >= 2:  # the first two steps warm up
            times.append(seconds)
        support = float(out.support_size.float().mean())
    return statistics.median(times), support


def median_time(fn, repeats: int, device) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    times = []
    for i in range(repeats + 1):
        _, seconds, _ = time_call(fn, device)
        if i:
            times.append(seconds)
    return statistics.median(times)


def large_k_ratios(k: int, batch: int, dim: int, repeats: int, device) -> tuple[float, ...]:
    """(support, step s, floor s, ratio) of an index-latent sparsemax step at K = ``k``."""
    g = torch.Generator().manual_seed(k)
    scores = (3.0 * torch.randn(batch, k, generator=g)).to(device)  # supports of a few items
    table = nn.Embedding(k, dim).to(device)
    target = torch.randn(batch, dim, generator=g).to(device)

    def loss_fn(idx, rows):
        return ((table(idx) - target[rows]) ** 2).sum(-1)

    est = SparsemaxMarginalization(one_hot=False)

    def step():
        x = scores.clone().requires_grad_(True)
        out = est(x, loss_fn)
        out.loss.backward()
        return out

    support = float(step().support_size.float().mean())
    t_step = median_time(step, repeats, device)

    def mapping():
        x = scores.clone().requires_grad_(True)
        p = sparsemax(x, dim=-1)
        p.backward(torch.ones_like(p))
        return p

    rows, idx = (mapping().detach() > 0).nonzero(as_tuple=True)

    def loss_on_support():
        loss_fn(idx, rows).sum().backward()

    t_floor = median_time(mapping, repeats, device) + median_time(loss_on_support, repeats, device)
    return support, t_step, t_floor, t_step / t_floor


def main() -> None:
    parser = benchmark_parser(__doc__, threads=1, repeats=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--margin", type=float, default=2.0)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--large", default="1000,100000,1000000", help="K values, comma-separated")
    parser.add_argument("--large-batch", type=int, default=64)
    args = parser.parse_args()
    device = start(args)

    header = (
        f"{'K':>5} {'supp softmax':>12} {'supp sparsemax':>14} {'supp ratio':>10} "
        f"{'t softmax ms':>12} {'t sparsemax ms':>14} {'time ratio':>10} {'time/supp':>9}"
    )
    print(f"device={device} batch={args.batch} hidden={args.hidden} threads={args.threads}")
    print(header)
    for k in (10, 256):
        decoder, target, logits = make_problem(
            k, args.batch, args.hidden, args.margin, args.noise, device
        )
        t_soft, s_soft = step_time(
            SoftmaxMarginalization(), decoder, target, logits, args.repeats, device
        )
        t_sparse, s_sparse = step_time(
            SparsemaxMarginalization(), decoder, target, logits, args.repeats, device
        )
        supp_ratio, time_ratio = s_sparse / s_soft, t_sparse / t_soft
        print(
            f"{k:>5} {s_soft:>12.2f} {s_sparse:>14.2f} {supp_ratio:>10.4f} "
            f"{1e3 * t_soft:>12.2f} {1e3 * t_sparse:>14.2f} {time_ratio:>10.4f} "
            f"{time_ratio / supp_ratio:>9.2f}"
        )

    print(f"\nindex latents (one_hot=False), embedding-lookup loss, batch={args.large_batch}")
    print(f"{'K':>8} {'supp':>6} {'step ms':>9} {'floor ms':>9} {'ratio':>6}")
    for k in (int(v) for v in args.large.split(",")):
        support, t_step, t_floor, ratio = large_k_ratios(
            k, args.large_batch, 16, max(3, args.repeats // 3), device
        )
        print(f"{k:>8} {support:>6.2f} {1e3 * t_step:>9.2f} {1e3 * t_floor:>9.2f} {ratio:>6.2f}")


if __name__ == "__main__":
    main()
