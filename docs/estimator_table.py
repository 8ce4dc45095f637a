"""Regenerate ``docs/guide/estimator_table.md``: bias, variance and cost of every estimator on
three stated toy problems, measured with ``latentgrad.gradient_stats``.

    python docs/estimator_table.py [--draws 400] [--seed 0]

Toy problems (float64, B = 3 examples, scores 1.5 * N(0, 1), fixed seed):
- categorical, K = 8: loss ``||z - y_b||^2 + <z, c_b> + 3`` with ``y_b`` a random point of the
  simplex and ``c_b ~ N(0, I)`` (defined for one-hot and relaxed ``z`` alike);
- bit vector, D = 5 (32 codes): the same loss form in R^5, ``y_b`` uniform in [0, 1]^5;
- k-subset, n = 6, k = 2 (15 subsets): the same loss form in R^6.
Each estimator is compared with the exact gradient of its own objective, computed by
enumeration: the Gibbs/softmax distribution for the score function, Sum&Sample and
Gumbel-Softmax; the perturb-and-MAP distribution argmax <θ + Gumbel, x> for the SST estimators and
the perturbation score function (on bit vectors independent bits with P(on) = 1 - exp(-e^θ); on
k-subsets sampling without replacement); the sparse
distribution for sparsemax and top-k sparsemax.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from latentgrad import gradient_stats
from latentgrad.estimators import (
    GumbelSoftmax,
    PerturbationScoreFunction,
    ScoreFunction,
    SoftmaxMarginalization,
    SparseMAPMarginalization,
    SparsemaxMarginalization,
    SSTEstimator,
    SumAndSample,
    TopKSparsemaxMarginalization,
)
from latentgrad.structures import BitVector, KSubset

OUT = Path(__file__).parent / "guide" / "estimator_table.md"
UNBIASED = {"SFE", "SFE + self-critic", "SFE, 4 samples, leave-one-out", "Sum&Sample",
            "perturbation SFE + EMA"}


def problems() -> dict[str, tuple[int, object, dict]]:
    """latent type -> (score size, structure or None, estimators)."""
    bits, subsets = BitVector(5), KSubset(6, 2)
    return {
        "categorical, K = 8": (8, None, {
            "softmax marginalization": SoftmaxMarginalization(),
            "sparsemax marginalization": SparsemaxMarginalization(),
            "entmax-1.5 marginalization": SparsemaxMarginalization("entmax15"),
            "SFE": ScoreFunction(),
            "SFE + self-critic": ScoreFunction(baseline="self_critic"),
            "SFE, 4 samples, leave-one-out": ScoreFunction(baseline="leave_one_out", n_samples=4),
            "Sum&Sample": SumAndSample(),
            "Gumbel-Softmax t = 0.5": GumbelSoftmax(temperature=0.5),
            "ST Gumbel-Softmax t = 0.5": GumbelSoftmax(temperature=0.5, straight_through=True),
        }),
        "bit vector, D = 5": (5, bits, {
            "top-k sparsemax, k = 4": TopKSparsemaxMarginalization(bits, k=4),
            "SparseMAP": SparseMAPMarginalization(bits),
            "SFE": ScoreFunction(structure=bits),
            "SFE + self-critic": ScoreFunction(baseline="self_critic", structure=bits),
            "Sum&Sample": SumAndSample(structure=bits),
            "SST t = 0.5": SSTEstimator(bits, 0.5),
            "ST SST t = 0.5": SSTEstimator(bits, 0.5, straight_through=True),
        }),
        "k-subset, n = 6, k = 2": (6, subsets, {
            "top-k sparsemax, k = 4": TopKSparsemaxMarginalization(subsets, k=4),
            "SparseMAP": SparseMAPMarginalization(subsets),
            "SFE + self-critic": ScoreFunction(baseline="self_critic", structure=subsets),
            "perturbation SFE + EMA": PerturbationScoreFunction(subsets, baseline="ema"),
            "SST (k-subset DP) t = 0.5": SSTEstimator(subsets, 0.5),
            "ST SST t = 0.5": SSTEstimator(subsets, 0.5, straight_through=True),
        }),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [
        "| latent | estimator | loss evals / example | ‖bias‖ | MC noise | ‖bias‖ / ‖exact‖ "
        "| variance |",
        "|---|---|---|---|---|---|---|",
    ]
    for latent, (size, structure, estimators) in problems().items():
        gen = torch.Generator().manual_seed(args.seed)
        b = 3
        scores = 1.5 * torch.randn(b, size, generator=gen, dtype=torch.float64)
        y = torch.rand(b, size, generator=gen, dtype=torch.float64)
        if structure is None:
            y = y / y.sum(-1, keepdim=True)
        c = torch.randn(b, size, generator=gen, dtype=torch.float64)

        def loss_fn(z, rows, y=y, c=c):
            return ((z - y[rows]) ** 2).sum(-1) + (z * c[rows]).sum(-1) + 3.0

        for name, est in estimators.items():
            torch.manual_seed(args.seed)
            s = gradient_stats(est, scores, loss_fn, args.draws, structure=structure)
            noise = float((s.total_variance / args.draws).sqrt())
            if s.bias_norm is None:
                bias = rel = "no exact target"
            else:
                bias = f"{float(s.bias_norm):.4f}"
                rel = f"{float(s.bias_norm / s.exact.norm()):.3f}"
                if name in UNBIASED:
                    bias, rel = f"*{bias}*", f"*{rel}*"
            lines.append(f"| {latent} | {name} | {s.evaluations_per_example:.2f} | {bias} | "
                         f"{noise:.4f} | {rel} | {float(s.total_variance):.4f} |")
    header = (
        f"<!-- generated by `python docs/estimator_table.py --draws {args.draws} "
        f"--seed {args.seed}`; do not edit -->\n\n"
    )
    OUT.write_text(header + "\n".join(lines) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
