"""A mixed discrete/continuous latent: Hard Concrete gates that are exactly zero, with exact KL.

Sparse linear regression: only 5 of 30 features matter. Each feature has a gate
``y_j ~ HardConcrete(log_alpha_j)`` on [0, 1] with point masses at 0 and 1; the prediction is
``(y * w) @ x``. The KL of the gates to the uniform mixed prior (mass 1/3 at 0, 1/3 at 1, 1/3
spread on (0, 1)) is exact (direct-sum KL), and P(y_j != 0) is the expected L0 norm.

    python examples/mixed_latent.py [--steps 600]

Time: measured once with the default arguments: 17 s wall, 4.8 s CPU, one thread
(OMP_NUM_THREADS=1, nice -n 5), on a shared 2-core machine with one core busy with a background
training sweep (load average about 8).

What to look at: the probability of each gate being non-zero after training (the 5 relevant
features near 1, the others near 0), and the exact KL and entropy used in the objective.
"""

from __future__ import annotations

import argparse

import torch
from torch.distributions import kl_divergence

from latentgrad.distributions import HardConcrete, MixedUniform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    n, d, relevant = 512, 30, 5
    x = torch.randn(n, d, generator=gen)
    w_true = torch.zeros(d)
    w_true[:relevant] = torch.tensor([2.0, -1.5, 1.0, 3.0, -2.5])
    y = x @ w_true + 0.1 * torch.randn(n, generator=gen)

    torch.manual_seed(0)
    log_alpha = torch.zeros(d, requires_grad=True)
    w = torch.zeros(d, requires_grad=True)
    opt = torch.optim.Adam([log_alpha, w], lr=5e-2)
    prior = MixedUniform().expand((d,))
    for _ in range(args.steps):
        gates = HardConcrete(log_alpha, temperature=2 / 3)
        z = gates.rsample((8,))                                   # (8, d), exact zeros and ones
        mse = ((x @ (z * w).T - y[:, None]) ** 2).mean()
        kl = kl_divergence(gates, prior).sum()                    # exact direct-sum KL
        loss = mse + 1e-3 * kl + 3e-2 * (1 - gates.prob_zero()).sum()   # + expected L0
        opt.zero_grad()
        loss.backward()
        opt.step()

    gates = HardConcrete(log_alpha.detach(), temperature=2 / 3)
    p_on = 1 - gates.prob_zero()
    print(f"P(gate != 0), relevant features 0-{relevant - 1}:",
          " ".join(f"{v:.2f}" for v in p_on[:relevant].tolist()))
    print(f"P(gate != 0), the {d - relevant} irrelevant features: max {p_on[relevant:].max():.3f}, "
          f"mean {p_on[relevant:].mean():.3f}")
    print(f"exact KL to the mixed uniform prior: {kl_divergence(gates, prior).sum():.3f} nats; "
          f"exact entropy: {gates.entropy().sum():.3f} nats (direct-sum measure)")
    draws = gates.sample((10000,))
    print(f"fraction of exact zeros among 10,000 draws of the irrelevant gates: "
          f"{(draws[:, relevant:] == 0).float().mean():.3f}")


if __name__ == "__main__":
    main()
