"""Compare every estimator on one toy problem: cost, bias and variance of the score gradient.

Toy: B examples, a categorical latent with K categories, scores ``theta_b`` and the loss
``l_b(z) = ||z - y_b||^2 + <z, c_b>`` (defined for one-hot and relaxed ``z`` alike). For each
estimator ``latentgrad.diagnostics.gradient_stats`` draws the gradient of its loss w.r.t. the
scores ``n_draws`` times and compares the mean with the exact gradient of its target objective,
computed by enumerating the K categories: ``softmax`` (Gibbs) for the sampling and relaxed
estimators, the sparse distribution itself for sparsemax / entmax marginalization.

    python benchmarks/compare_estimators.py [--draws 500] [--k 8] [--device cuda]

Columns: evals = loss evaluations per example; |bias| = norm of (mean - exact) (includes Monte
Carlo error about sqrt(var/draws)); var = total variance (trace of the covariance);
|exact| = norm of the exact gradient, for scale.
"""

from __future__ import annotations

import argparse

import torch

from latentgrad.diagnostics import gradient_stats
from latentgrad.estimators.marginalization import SoftmaxMarginalization, SparsemaxMarginalization
from latentgrad.estimators.score_function import NVIL, ScoreFunction, SumAndSample
from latentgrad.estimators.sst import SSTEstimator


class _Constant(torch.nn.Module):
    """A learned-baseline network that has learned the batch-mean loss (for NVIL)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.to(x.dtype).expand(x.shape[0])


def estimators(mean_loss: float) -> dict[str, tuple[torch.nn.Module, dict]]:
    return {
        "softmax marginalization": (SoftmaxMarginalization(), {}),
        "sparsemax marginalization": (SparsemaxMarginalization(), {}),
        "entmax15 marginalization": (SparsemaxMarginalization("entmax15"), {}),
        "SFE": (ScoreFunction(), {}),
        "SFE + EMA": (ScoreFunction(baseline="ema"), {}),
        "SFE + batch LOO": (ScoreFunction(baseline="batch_loo"), {}),
        "SFE + self-critic": (ScoreFunction(baseline="self_critic"), {}),
        "SFE, 4 samples LOO": (ScoreFunction(baseline="leave_one_out", n_samples=4), {}),
        "NVIL (learned b = mean loss)": (NVIL(_Constant(mean_loss)), {"baseline_input": None}),
        "Sum&Sample k=1": (SumAndSample(k=1), {}),
        "Sum&Sample k=2 + self-critic": (SumAndSample(k=2, baseline="self_critic"), {}),
        "Gumbel-softmax t=0.5": (SSTEstimator(None, 0.5), {}),
        "ST Gumbel-softmax t=0.5": (SSTEstimator(None, 0.5, straight_through=True), {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    b, k = args.batch, args.k
    scores = 1.5 * torch.randn(b, k, dtype=torch.float64).to(device)
    y = torch.softmax(torch.randn(b, k, dtype=torch.float64), -1).to(device)
    c = torch.randn(b, k, dtype=torch.float64).to(device)

    def loss_fn(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return ((z - y[rows]) ** 2).sum(-1) + (z * c[rows]).sum(-1) + 3.0

    onehots = torch.eye(k, dtype=torch.float64, device=device)
    table = torch.stack([loss_fn(onehots, torch.full((k,), i, device=device)) for i in range(b)])
    mean_loss = float((scores.softmax(-1) * table).sum(-1).mean())

    print(f"toy: B={b} K={k} draws={args.draws} seed={args.seed} device={device}")
    print(f"{'estimator':<30} {'evals':>6} {'|bias|':>9} {'var':>10} {'|exact|':>9}")
    for name, (est, kwargs) in estimators(mean_loss).items():
        if "baseline_input" in kwargs:
            kwargs = {"baseline_input": scores}
        stats = gradient_stats(est.to(device), scores, loss_fn, args.draws, **kwargs)
        print(
            f"{name:<30} {stats.evaluations_per_example:>6.2f} {float(stats.bias_norm):>9.5f} "
            f"{float(stats.total_variance):>10.5f} {float(stats.exact.norm()):>9.5f}"
        )


if __name__ == "__main__":
    main()
