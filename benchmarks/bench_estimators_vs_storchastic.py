"""Gradient estimators against storchastic, side by side: cost of a VAE step and agreement.

    python benchmarks/bench_estimators_vs_storchastic.py [--threads 1] [--repeats 30]

storchastic (``storch``) estimates gradients of stochastic computation graphs: a ``Method`` draws
a sample from a ``torch.distributions`` object, costs are registered with ``storch.add_cost`` and
``storch.backward()`` forms the surrogate. Four of its methods have a counterpart here, each
called through its public API as a user would, with the same settings:

==============================  =====================================  ===========================
case                            storchastic                            latentgrad
==============================  =====================================  ===========================
REINFORCE, running baseline     ``ScoreFunction(baseline_factory=      ``ScoreFunction(baseline=
                                "moving_average")`` (decay 0.95)       "ema", decay=0.95)``
REINFORCE, leave-one-out, S=4   ``ScoreFunction(n_samples=4,           ``ScoreFunction(baseline=
                                baseline_factory="batch_average")``    "leave_one_out",
                                                                       n_samples=4)``
Gumbel-Softmax, tau = 1         ``GumbelSoftmax()``                    ``GumbelSoftmax(1.0)``
straight-through Gumbel         ``GumbelSoftmax(straight_through=      ``GumbelSoftmax(1.0,
                                True)``                                straight_through=True)``
==============================  =====================================  ===========================

- Cost: one training step (forward and backward) of storchastic's own discrete-VAE example
  (784 -> 512 -> 256 -> 20 x 10 logits, decoder 200 -> 256 -> 512 -> 784, leaky ReLU 0.1,
  Bernoulli likelihood, the exact KL to the uniform prior), batch 100 of binarised inputs; the
  median of ``--repeats`` interleaved steps each, wall ms, ratio = storchastic / latentgrad
  (> 1: latentgrad faster), ours with argument checks on (the default) and off.
- Agreement: the mean gradient of E[f(z)] over ``--draws`` draws (two categorical latents of 3
  categories, the same logits for every example, ``f(z) = z1^T A z2 + c^T z1 + d^T z2``) against
  the exact gradient by enumeration (score function: unbiased) or against each other (Gumbel:
  both estimate the same relaxed gradient), as a relative L2 error with its standard error
  (from the spread of the per-call means).

storchastic is optional (``pip install storchastic``; the test extra installs it): without it
the script prints latentgrad's side alone.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _timing import benchmark_parser, interleaved, relative_error, start
from torch import Tensor, nn
from torch.distributions import OneHotCategorical

import latentgrad
from latentgrad.estimators import GumbelSoftmax, ScoreFunction

PIXELS, LATENTS, K = 784, 20, 10
BATCH = 100
DECAY = 0.95  # storchastic's moving-average decay; ours as an EMA with the same decay


def storch_methods(storch) -> dict[str, Callable[[], object]]:
    m = storch.method
    return {
        "REINFORCE, running baseline": lambda: m.ScoreFunction(
            "z", n_samples=1, baseline_factory="moving_average", exponential_decay=DECAY),
        "REINFORCE, leave-one-out, S=4": lambda: m.ScoreFunction(
            "z", n_samples=4, baseline_factory="batch_average"),
        "Gumbel-Softmax": lambda: m.GumbelSoftmax("z", initial_temperature=1.0),
        "straight-through Gumbel": lambda: m.GumbelSoftmax(
            "z", initial_temperature=1.0, straight_through=True),
    }


OURS: dict[str, Callable[[], nn.Module]] = {
    "REINFORCE, running baseline": lambda: ScoreFunction(baseline="ema", decay=DECAY),
    "REINFORCE, leave-one-out, S=4": lambda: ScoreFunction(baseline="leave_one_out", n_samples=4),
    "Gumbel-Softmax": lambda: GumbelSoftmax(1.0),
    "straight-through Gumbel": lambda: GumbelSoftmax(1.0, straight_through=True),
}


class DiscreteVAE(nn.Module):
    """storchastic's example architecture: ``encode`` (B, 784) -> logits (B, 20, 10),
    ``decode`` (..., 20, 10) one-hot or relaxed -> Bernoulli logits (..., 784)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.ModuleList([nn.Linear(PIXELS, 512), nn.Linear(512, 256),
                                  nn.Linear(256, LATENTS * K)])
        self.dec = nn.ModuleList([nn.Linear(LATENTS * K, 256), nn.Linear(256, 512),
                                  nn.Linear(512, PIXELS)])

    @staticmethod
    def _mlp(layers: nn.ModuleList, h: Tensor) -> Tensor:
        for i, layer in enumerate(layers):
            h = layer(h)
            if i < len(layers) - 1:
                h = F.leaky_relu(h, negative_slope=0.1)
        return h

    def encode(self, x: Tensor) -> Tensor:
        return self._mlp(self.enc, x).unflatten(-1, (LATENTS, K))

    def decode(self, z: Tensor) -> Tensor:
        return self._mlp(self.dec, z.flatten(-2))


def kl_to_uniform(logits: Tensor) -> Tensor:
    """KL(Cat(softmax(logits)) || uniform) summed over the latents: (..., L, K) -> (...)."""
    logp = logits.log_softmax(-1)
    return (logp.exp() * logp).sum(-1).sum(-1) + logits.shape[-2] * math.log(logits.shape[-1])


def storch_step(storch, model: DiscreteVAE, method, x: Tensor) -> None:
    """One step as storchastic's VAE example writes it (its broadcasting binary cross-entropy
    on the decoder's probabilities; ours takes the logits)."""
    storch.reset()
    data = storch.denote_independent(x, 0, "data")
    logits = model.encode(data)
    posterior = OneHotCategorical(logits=logits)
    storch.add_cost(kl_to_uniform(logits), "kl")
    z = method(posterior)
    recon = model.decode(z).sigmoid()
    storch.add_cost(storch.nn.b_binary_cross_entropy(recon, data, reduction="sum"),
                    "reconstruction")
    storch.backward()


def our_step(model: DiscreteVAE, estimator, x: Tensor) -> None:
    logits = model.encode(x)

    def loss_fn(z: Tensor, rows: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(model.decode(z), x[rows],
                                                  reduction="none").sum(-1)

    (estimator(logits, loss_fn).loss + kl_to_uniform(logits).mean()).backward()



# ---- agreement on a problem small enough to enumerate


class Toy:
    """Two categorical latents of 3 categories with fixed logits (1, 2, 3) and
    ``f(z) = z1^T A z2 + c^T z1 + d^T z2`` (the same polynomial for one-hot and relaxed z)."""

    def __init__(self, gen: torch.Generator) -> None:
        self.logits = torch.randn(1, 2, 3, generator=gen, dtype=torch.float64)
        self.a = torch.randn(3, 3, generator=gen, dtype=torch.float64)
        self.c = torch.randn(3, generator=gen, dtype=torch.float64)
        self.d = torch.randn(3, generator=gen, dtype=torch.float64)

    def f(self, z: Tensor) -> Tensor:
        z1, z2 = z[..., 0, :], z[..., 1, :]
        return torch.einsum("...i,ij,...j->...", z1, self.a, z2) + z1 @ self.c + z2 @ self.d

    def exact_gradient(self) -> Tensor:
        logits = self.logits.clone().requires_grad_()
        logp = logits.log_softmax(-1)[0]  # (2, 3)
        i, j = torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij")
        eye = torch.eye(3, dtype=torch.float64)
        z = torch.stack([eye[i.flatten()], eye[j.flatten()]], dim=1)  # (9, 2, 3)
        p = (logp[0, i.flatten()] + logp[1, j.flatten()]).exp()
        return torch.autograd.grad((p * self.f(z)).sum(), logits)[0]


def mean_gradient(call: Callable[[Tensor], None], toy: Toy, rows: int,
                  calls: int) -> tuple[Tensor, Tensor]:
    """Mean over ``calls`` calls of the gradient of the batch-mean loss (``rows`` copies of the
    toy's logits each) and its standard error (per entry)."""
    grads = []
    for _ in range(calls):
        logits = toy.logits.expand(rows, 2, 3).clone().requires_grad_()
        call(logits)
        grads.append(logits.grad.sum(0))
    g = torch.stack(grads)
    return g.mean(0), g.std(0) / math.sqrt(calls)


def storch_toy_call(storch, method, toy: Toy) -> Callable[[Tensor], None]:
    def call(logits: Tensor) -> None:
        storch.reset()
        theta = storch.denote_independent(logits, 0, "data")
        z = method(OneHotCategorical(logits=theta))
        storch.add_cost(toy.f(z), "f")
        storch.backward()

    return call


def our_toy_call(estimator, toy: Toy) -> Callable[[Tensor], None]:
    def call(logits: Tensor) -> None:
        estimator(logits, lambda z, rows: toy.f(z)).loss.backward()

    return call



def main() -> None:
    parser = benchmark_parser(__doc__, threads=1, repeats=30)
    parser.add_argument("--draws", type=int, default=51200,
                        help="draws per estimator in the agreement check (rows x calls)")
    args = parser.parse_args()
    device = start(args)
    if device.type != "cpu":
        raise SystemExit("storchastic's comparison runs on the CPU only")
    try:
        import storch
    except ImportError:
        storch = None
        print("storchastic is not installed (pip install storchastic): latentgrad's side only")
    theirs = storch_methods(storch) if storch is not None else dict.fromkeys(OURS)

    model = DiscreteVAE()
    x = (torch.rand(BATCH, PIXELS) < 0.3).float()
    print(f"threads={args.threads} repeats={args.repeats} batch={BATCH} latents={LATENTS}x{K}")
    print("cost of one VAE step (median wall ms); ratio = storchastic / latentgrad")
    print(f"{'case':<31} {'storchastic':>11} {'ours':>7} {'ours, checks off':>16} "
          f"{'ratio':>6} {'ratio, off':>10}")
    for name, make_storch in theirs.items():
        ours = OURS[name]()

        def off(ours=ours) -> None:
            with latentgrad.validate_args(False):
                our_step(model, ours, x)

        steps = [lambda ours=ours: our_step(model, ours, x), off]
        if make_storch is not None:
            method = make_storch()
            steps.append(lambda method=method: storch_step(storch, model, method, x))
        t_ours, t_off, *t_storch = (statistics.median(t)
                                    for t in interleaved(steps, args.repeats))
        mine = f"{1e3 * t_ours:>7.2f} {1e3 * t_off:>16.2f}"
        if t_storch:
            print(f"{name:<31} {1e3 * t_storch[0]:>11.2f} {mine} {t_storch[0] / t_ours:>6.1f} "
                  f"{t_storch[0] / t_off:>10.1f}")
        else:
            print(f"{name:<31} {'-':>11} {mine}")

    toy = Toy(torch.Generator().manual_seed(args.seed))
    exact = toy.exact_gradient()
    rows, calls = 512, max(2, args.draws // 512)
    print(f"\nagreement: mean gradient over {rows * calls} draws ({calls} calls of {rows} rows), "
          "relative L2 error ± s.e.")
    print(f"{'case':<31} {'storchastic':>15} {'latentgrad':>15}   against")
    for name, make_storch in theirs.items():
        g_ours, se_ours = mean_gradient(our_toy_call(OURS[name](), toy), toy, rows, calls)
        g_storch = se_storch = None
        if make_storch is not None:
            g_storch, se_storch = mean_gradient(storch_toy_call(storch, make_storch(), toy),
                                                toy, rows, calls)
        if name.startswith("REINFORCE"):
            mine = relative_error(g_ours - exact, se_ours, exact)
            their = "-" if g_storch is None else relative_error(g_storch - exact, se_storch, exact)
            print(f"{name:<31} {their:>15} {mine:>15}   the exact gradient")
        elif g_storch is not None:
            se = (se_storch.square() + se_ours.square()).sqrt()
            print(f"{name:<31} {relative_error(g_storch - g_ours, se, g_ours):>15} "
                  f"{'':>15}   each other (relaxed: no closed form)")


if __name__ == "__main__":
    main()
