"""A bit-vector latent trained by exact sparse marginalization: top-k sparsemax and SparseMAP.

An autoencoder whose code is a D-bit vector: the encoder scores each bit, the estimator picks a
small set of bit vectors with weights (a sparse distribution over 2^D codes), and the decoder is
evaluated on exactly those. SparseMAP with a budget allows at most D/2 active bits.

    python examples/bitvector_sparsemap.py [--steps 300] [--bits 16]

Time: measured once with the default arguments on scikit-learn's 8x8 digits (no MNIST under
$LATENTGRAD_DATA): 29 s wall, 8.0 s CPU, one thread (OMP_NUM_THREADS=1, nice -n 5), on a shared
2-core machine with one core busy with a background training sweep (load average about 8).

What to look at: the reconstruction loss (expected over the sparse posterior) against the number
of decoder calls per example, which is the size of each example's support.
"""

from __future__ import annotations

import argparse
import time

import torch
from _data import binary_images
from torch import nn

from latentgrad.estimators import SparseMAPMarginalization, TopKSparsemaxMarginalization
from latentgrad.structures import BitVector


def _late_mean(values: list[float]) -> float:
    """Mean over the second half of training."""
    late = values[len(values) // 2:]
    return sum(late) / len(late)


def train(est: nn.Module, x_all, bits: int, steps: int) -> tuple[float, float]:
    """-> (reconstruction loss, decoder calls per example), second half of training."""
    torch.manual_seed(0)
    d_in = x_all.shape[1]
    encoder = nn.Sequential(nn.Linear(d_in, 128), nn.ReLU(), nn.Linear(128, bits))
    decoder = nn.Sequential(nn.Linear(bits, 128), nn.ReLU(), nn.Linear(128, d_in))
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=2e-3)
    calls, recon = [], []
    for _ in range(steps):
        x = x_all[torch.randint(0, x_all.shape[0], (64,))]

        def loss_fn(z, rows, x=x):     # z: (N, bits) 0/1 codes, rows: (N,) example indices
            return nn.functional.binary_cross_entropy_with_logits(
                decoder(z), x[rows], reduction="none").sum(-1)

        out = est(encoder(x), loss_fn)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        calls.append(out.support_size.float().mean().item())
        recon.append(out.expected_loss.mean().item())
    return _late_mean(recon), _late_mean(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--bits", type=int, default=16)
    args = parser.parse_args()
    x_all, name = binary_images(2000)
    bits = args.bits
    print(f"data: {name}; {bits}-bit latent code; {args.steps} steps each")
    print(f"{'estimator':34s} {'reconstruction':>14s} {'decoder calls':>14s} {'seconds':>8s}")
    budgeted = BitVector(bits, budget=bits // 2)
    for label, est in {
        "top-k sparsemax (k = 10)": TopKSparsemaxMarginalization(BitVector(bits), k=10),
        "SparseMAP": SparseMAPMarginalization(BitVector(bits)),
        f"SparseMAP, budget {bits // 2}": SparseMAPMarginalization(budgeted),
    }.items():
        start = time.perf_counter()
        recon, calls = train(est, x_all, bits, args.steps)
        print(f"{label:34s} {recon:14.2f} {calls:14.2f} {time.perf_counter() - start:8.1f}")
    print(f"decoder calls per example are out of 2^{bits} = {2 ** bits} possible codes "
          "(second half of training).")


if __name__ == "__main__":
    main()
