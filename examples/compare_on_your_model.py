"""Compare gradient estimators on your own model with ``latentgrad.gradient_stats``.

Replace ``loss_fn`` and ``scores`` below by your model's. ``gradient_stats`` draws the gradient of
each estimator's loss with respect to the scores many times and compares its mean with the exact
gradient, computed by enumerating the latent space.

    python examples/compare_on_your_model.py [--draws 300]

Time: measured once with the default arguments: 13 s wall, 3.9 s CPU, one thread
(OMP_NUM_THREADS=1, nice -n 5), on a shared 2-core machine with one core busy with a background
training sweep (load average about 8).

What to look at: |bias| (zero up to Monte Carlo noise, about sqrt(variance / draws), for the
unbiased estimators; systematic for the relaxations), the variance, and the loss evaluations
each estimator pays per example.
"""

from __future__ import annotations

import argparse

import torch

from latentgrad import gradient_stats
from latentgrad.estimators import (
    GumbelSoftmax,
    ScoreFunction,
    SoftmaxMarginalization,
    SparsemaxMarginalization,
    SumAndSample,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=300)
    args = parser.parse_args()
    torch.manual_seed(0)
    k, batch = 6, 4
    # Your model: a small decoder and targets; the latent is a k-way categorical per example.
    decoder = torch.nn.Sequential(torch.nn.Linear(k, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    targets = torch.randn(batch, 3)

    def loss_fn(z, rows):                   # z: (N, k) one-hot or relaxed, rows: (N,)
        return ((decoder(z) - targets[rows]) ** 2).sum(-1)

    scores = torch.randn(batch, k)
    print(f"{'estimator':28s} {'|bias|':>8s} {'MC noise':>9s} {'variance':>9s} {'evals':>6s}")
    for label, est in {
        "softmax marginalization": SoftmaxMarginalization(),
        "sparsemax marginalization": SparsemaxMarginalization(),
        "SFE": ScoreFunction(),
        "SFE + self-critic": ScoreFunction(baseline="self_critic"),
        "Sum&Sample": SumAndSample(),
        "Gumbel-Softmax t=0.5": GumbelSoftmax(temperature=0.5),
        "ST Gumbel-Softmax t=0.5": GumbelSoftmax(temperature=0.5, straight_through=True),
    }.items():
        s = gradient_stats(est, scores, loss_fn, args.draws)
        noise = (s.total_variance / args.draws).sqrt().item()
        print(f"{label:28s} {s.bias_norm.item():8.4f} {noise:9.4f} "
              f"{s.total_variance.item():9.4f} {s.evaluations_per_example:6.1f}")
    print("Each estimator is compared with the exact gradient of its own objective (softmax "
          "distribution; sparsemax's own distribution for sparsemax). 'MC noise' is the size of "
          "the Monte Carlo error in |bias|: an unbiased estimator has |bias| of that order.")


if __name__ == "__main__":
    main()
