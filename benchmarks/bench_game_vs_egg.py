"""A signaling game's estimators against EGG, side by side: cost of a training step and agreement.

    python benchmarks/bench_game_vs_egg.py [--threads 1] [--repeats 30] [--features 512]

EGG (facebookresearch/EGG, "Emergence of lanGuage in Games") trains sender/receiver games with
wrappers: ``SymbolGameReinforce`` over a ``ReinforceWrapper`` sender (REINFORCE with a running-mean
baseline and an entropy bonus) and ``SymbolGameGS`` over a ``GumbelSoftmaxWrapper`` sender
(Gumbel-Softmax, optionally straight-through), the receiver embedding the symbol with
``SymbolReceiverWrapper``. The same single-symbol referential game is trained here with
``ScoreFunction(baseline="moving_average", entropy_coeff=0.1, one_hot=False)`` and
``GumbelSoftmax(1.0, straight_through=...)``, on the same sender and receiver modules and weights:

- sender: features (F) -> 256 (tanh) -> log-probabilities over a vocabulary of 256 symbols;
- receiver: the symbol's embedding (256) scored against each of 16 candidates' features mapped
  to 256; loss: the negative log-likelihood of the target candidate; batch 64.

The receiver's candidate projections do not depend on the message: EGG's receiver computes them
in its forward, ours once per step outside ``loss_fn``, which indexes them by ``rows`` (the
idiom of this library's loss functions: ``loss_fn`` holds only what depends on the latent).

Cost: the median of ``--repeats`` interleaved steps (forward and backward), wall ms, ratio = EGG /
latentgrad (> 1: latentgrad faster), ours with argument checks on (the default) and off.
Agreement: REINFORCE's mean gradient on one categorical of 6 symbols with fixed logits and a
fixed loss per symbol, over ``--draws`` draws (calls of 512 rows), against the exact gradient
by enumeration; Gumbel-Softmax's mean gradients of the two libraries against each other. Relative
L2 errors with their standard errors.

EGG is not on PyPI: install it from its repository (``pip install
git+https://github.com/facebookresearch/EGG``); without it the script prints latentgrad's side
alone.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _timing import benchmark_parser, interleaved, relative_error, start
from torch import Tensor, nn

import latentgrad
from latentgrad.estimators import GumbelSoftmax, ScoreFunction

VOCAB, HIDDEN, CANDIDATES, BATCH = 256, 256, 16, 64
ENTROPY_COEFF = 0.1


class Sender(nn.Module):
    """features (B, F) -> log-probabilities over the vocabulary (B, V) (EGG's agent contract)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(features, HIDDEN)
        self.out = nn.Linear(HIDDEN, VOCAB)

    def forward(self, x: Tensor, aux_input=None) -> Tensor:
        return self.out(torch.tanh(self.hidden(x))).log_softmax(-1)


class Receiver(nn.Module):
    """message embedding (B, H) and candidates (B, C, F) -> log-probabilities over the candidates
    (B, C) (EGG's agent contract: ``(embedded_message, input, aux_input)``)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.candidates = nn.Linear(features, HIDDEN)

    def forward(self, message: Tensor, candidates: Tensor, aux_input=None) -> Tensor:
        return self.score(message, self.candidates(candidates))

    @staticmethod
    def score(message: Tensor, projected: Tensor) -> Tensor:
        """message (B, H), projected candidates (B, C, H) -> log-probabilities (B, C)."""
        return (projected @ message.unsqueeze(-1)).squeeze(-1).log_softmax(-1)


class Game(nn.Module):
    """The shared agents: ``sender``, ``receiver`` and the symbol ``embedding`` (V, H) (EGG's
    ``RelaxedEmbedding``: an index lookup for symbols, a matrix product for relaxed ones)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.sender, self.receiver = Sender(features), Receiver(features)
        self.embedding = nn.Parameter(torch.randn(VOCAB, HIDDEN))

    def embed(self, message: Tensor) -> Tensor:
        if message.dtype == torch.long:
            return F.embedding(message, self.embedding)
        return message @ self.embedding


def nll(receiver_output: Tensor, labels: Tensor) -> Tensor:
    return -receiver_output.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def our_step(game: Game, estimator, x: Tensor, candidates: Tensor, labels: Tensor) -> None:
    """The candidates do not depend on the message: projected once, outside ``loss_fn``, which
    indexes the projections (B, C, H) by ``rows`` (indexing the raw candidates (B, C, F) would
    copy them: 16 MB per step at F = 4096)."""
    projected = game.receiver.candidates(candidates)

    def loss_fn(z: Tensor, rows: Tensor) -> Tensor:
        return nll(game.receiver.score(game.embed(z), projected[rows]), labels[rows])

    estimator(game.sender(x), loss_fn).loss.backward()


OURS: dict[str, Callable[[], nn.Module]] = {
    "REINFORCE, running mean, entropy 0.1": lambda: ScoreFunction(
        baseline="moving_average", entropy_coeff=ENTROPY_COEFF, one_hot=False),
    "Gumbel-Softmax": lambda: GumbelSoftmax(1.0),
    "straight-through Gumbel": lambda: GumbelSoftmax(1.0, straight_through=True),
}


class EggReceiver(nn.Module):
    """The shared receiver behind EGG's ``SymbolReceiverWrapper`` contract, using the shared
    embedding (so both libraries train the same parameters)."""

    def __init__(self, game: Game) -> None:
        super().__init__()
        self.game = game

    def forward(self, message: Tensor, candidates: Tensor, aux_input=None) -> Tensor:
        return self.game.receiver(self.game.embed(message), candidates)


def egg_loss(sender_input, message, receiver_input, receiver_output, labels, aux_input):
    return nll(receiver_output, labels), {}


def egg_games(core, game: Game) -> dict[str, Callable[[], nn.Module]]:
    receiver = EggReceiver(game)
    return {
        "REINFORCE, running mean, entropy 0.1": lambda: core.SymbolGameReinforce(
            core.ReinforceWrapper(game.sender), core.ReinforceDeterministicWrapper(receiver),
            egg_loss, sender_entropy_coeff=ENTROPY_COEFF),
        "Gumbel-Softmax": lambda: core.SymbolGameGS(
            core.GumbelSoftmaxWrapper(game.sender, temperature=1.0), receiver, egg_loss),
        "straight-through Gumbel": lambda: core.SymbolGameGS(
            core.GumbelSoftmaxWrapper(game.sender, temperature=1.0, straight_through=True),
            receiver, egg_loss),
    }


def egg_step(egg_game, x: Tensor, candidates: Tensor, labels: Tensor) -> None:
    loss, _ = egg_game(x, labels, candidates)
    loss.backward()



# ---- agreement on one categorical of 6 symbols


class Toy(nn.Module):
    """Fixed logits (6,) as the sender (a parameter, expanded to the batch), a fixed loss per
    symbol ``table`` and, for relaxed symbols, ``f(z) = <z, table> + <z, b>^2``."""

    def __init__(self, gen: torch.Generator) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.randn(6, generator=gen, dtype=torch.float64))
        self.table = torch.randn(6, generator=gen, dtype=torch.float64)
        self.b = torch.randn(6, generator=gen, dtype=torch.float64)
        self.rows = 512

    def forward(self, x: Tensor, aux_input=None) -> Tensor:  # EGG's sender contract
        return self.logits.log_softmax(-1).expand(x.shape[0], 6)

    def f(self, z: Tensor) -> Tensor:
        if z.dtype == torch.long:
            return self.table[z]
        return z @ self.table + (z @ self.b).square()

    def exact_gradient(self) -> Tensor:
        p = self.logits.softmax(-1)
        return torch.autograd.grad((p * self.table).sum(), self.logits)[0]


def mean_gradient(call: Callable[[Tensor], Tensor], toy: Toy, calls: int) -> tuple[Tensor, Tensor]:
    """Mean and standard error over ``calls`` calls of the gradient that ``call(x)`` leaves on
    the toy's logits (``call`` returns the loss to differentiate)."""
    x = torch.zeros(toy.rows, 1, dtype=torch.float64)
    grads = []
    for _ in range(calls):
        grads.append(torch.autograd.grad(call(x), toy.logits)[0])
    g = torch.stack(grads)
    return g.mean(0), g.std(0) / math.sqrt(calls)



def agreement(core, draws: int, seed: int) -> None:
    toy = Toy(torch.Generator().manual_seed(seed))
    calls = max(2, draws // toy.rows)
    exact = toy.exact_gradient()
    print(f"\nagreement: mean gradient over {toy.rows * calls} draws ({calls} calls of "
          f"{toy.rows} rows), relative L2 error ± s.e.")
    print(f"{'case':<38} {'EGG':>15} {'latentgrad':>15}   against")

    def ours(estimator) -> Callable[[Tensor], Tensor]:
        return lambda x: estimator(toy.logits.expand(x.shape[0], 6),
                                   lambda z, rows: toy.f(z)).loss

    def theirs(egg_game) -> Callable[[Tensor], Tensor]:
        return lambda x: egg_game(x, None)[0]

    def identity_receiver(message, receiver_input=None, aux_input=None):
        return message

    def toy_loss(sender_input, message, receiver_input, receiver_output, labels, aux_input):
        return toy.f(receiver_output), {}

    g_ours, se_ours = mean_gradient(
        ours(ScoreFunction(baseline="moving_average", one_hot=False)), toy, calls)
    mine = relative_error(g_ours - exact, se_ours, exact)
    their = "-"
    if core is not None:
        receiver = core.ReinforceDeterministicWrapper(identity_receiver)
        game = core.SymbolGameReinforce(core.ReinforceWrapper(toy), receiver, toy_loss)
        g_egg, se_egg = mean_gradient(theirs(game), toy, calls)
        their = relative_error(g_egg - exact, se_egg, exact)
    print(f"{'REINFORCE, running mean':<38} {their:>15} {mine:>15}   the exact gradient")
    if core is None:
        return
    for name, st in (("Gumbel-Softmax", False), ("straight-through Gumbel", True)):
        g_ours, se_ours = mean_gradient(ours(GumbelSoftmax(1.0, straight_through=st)), toy, calls)
        game = core.SymbolGameGS(core.GumbelSoftmaxWrapper(toy, 1.0, straight_through=st),
                                 identity_receiver, toy_loss)
        g_egg, se_egg = mean_gradient(theirs(game), toy, calls)
        se = (se_ours.square() + se_egg.square()).sqrt()
        print(f"{name:<38} {relative_error(g_egg - g_ours, se, g_ours):>15} {'':>15}   each other")


def main() -> None:
    parser = benchmark_parser(__doc__, threads=1, repeats=30)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--draws", type=int, default=51200,
                        help="draws per estimator in the agreement check")
    args = parser.parse_args()
    device = start(args)
    if device.type != "cpu":
        raise SystemExit("EGG's comparison runs on the CPU only")
    try:
        import egg.core as core
    except ImportError:
        core = None
        print("EGG is not installed (see the docstring): latentgrad's side only")

    game = Game(args.features)
    x = torch.randn(BATCH, args.features)
    candidates = torch.randn(BATCH, CANDIDATES, args.features)
    labels = torch.randint(CANDIDATES, (BATCH,))
    theirs = egg_games(core, game) if core is not None else dict.fromkeys(OURS)
    print(f"threads={args.threads} repeats={args.repeats} batch={BATCH} features={args.features} "
          f"vocabulary={VOCAB} candidates={CANDIDATES}")
    print("cost of one training step (median wall ms); ratio = EGG / latentgrad")
    print(f"{'case':<38} {'EGG':>7} {'ours':>7} {'ours, checks off':>16} {'ratio':>6} "
          f"{'ratio, off':>10}")
    for name, make_egg in theirs.items():
        ours = OURS[name]()

        def off(ours=ours) -> None:
            with latentgrad.validate_args(False):
                our_step(game, ours, x, candidates, labels)

        steps = [lambda ours=ours: our_step(game, ours, x, candidates, labels), off]
        if make_egg is not None:
            egg_game = make_egg()
            steps.append(lambda egg_game=egg_game: egg_step(egg_game, x, candidates, labels))
        t_ours, t_off, *t_egg = (statistics.median(t) for t in interleaved(steps, args.repeats))
        mine = f"{1e3 * t_ours:>7.2f} {1e3 * t_off:>16.2f}"
        if t_egg:
            print(f"{name:<38} {1e3 * t_egg[0]:>7.2f} {mine} {t_egg[0] / t_ours:>6.2f} "
                  f"{t_egg[0] / t_off:>10.2f}")
        else:
            print(f"{name:<38} {'-':>7} {mine}")
    agreement(core, args.draws, args.seed)


if __name__ == "__main__":
    main()
