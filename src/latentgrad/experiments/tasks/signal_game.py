"""Task ``signal_game``: the Lewis signaling game of Correia et al. 2020 §5.2 and Farinhas et al.
2022 §5.1, after Lazaridou et al. 2017.

A sender sees the target item's features ``x`` ``(F,)`` and emits one message from a vocabulary of
V = 256 symbols; the receiver sees the G = 16 items of the game in a random order and scores them.

- Sender: ``Linear(F→H, no bias)`` → every coordinate through one shared scalar network
  ``e ↦ sigmoid(Σ_{c=1}^{512} v_c sigmoid(w_c e))`` → ``Linear(H→V, no bias)`` → ``/ τ_s``
  (τ_s = 10). The output is the message scores θ ``(B, V)`` handed to the estimator.
- Receiver: ``Linear(F→E, no bias)`` per candidate; the message ``z`` ``(V,)`` (a one-hot row for
  discrete estimators, a relaxed or sparse point of the simplex otherwise) is embedded by
  ``Linear(V→E, no bias)`` — on one-hot rows this is exactly the reference's ``Embedding(V, E)``
  lookup, so one module serves every estimator. It also starts as the reference's does: with
  ``N(0, 1)`` entries (``Embedding``'s initialisation) for the estimators whose messages are
  symbols (marginalization, score function, NVIL, Sum&Sample), with ``Linear``'s
  ``U(±1/√V)`` for relaxed and mixed messages. Candidate scores are dot products, then
  log-softmax over the G candidates.
- ``loss_fn(z, rows)``: receiver NLL of the target of game ``rows[n]`` given message ``z[n]``,
  one batched receiver call per estimator call. With ``model.loss = zero_one`` (SFE 0/1, SFE+)
  the receiver is stochastic: its choice ``a`` is drawn from its log-softmax and
  ``ℓ = −1[a = target]``; the receiver is then a second categorical latent variable trained by
  the same score-function estimator as the sender (its own baseline and entropy bonus, same
  coefficient). ``loss_fn`` returns ``ℓ`` plus a zero-valued term whose
  gradient is the receiver's surrogate gradient, so the sender's estimator sees the 0/1 loss.
- NVIL: the learned baseline is the registry's MLP applied to each of the G candidates' features
  and averaged over them; ``baseline_input`` = candidates ``(B, G, F)``.

Evaluation protocol (the same for every method), on validation and test games:

- ``acc`` (communication success, ``mode`` reading): the sender's argmax message, as a one-hot
  vector, and the receiver's argmax choice.
- ``acc_reference`` (the paper's reading): the estimator itself is called in eval mode with
  ``loss_fn = −(correct)``, and ``acc_reference = −expected_loss``. For marginalization this is
  the exact expected accuracy under p (receiver argmax); for SFE/NVIL a sampled message (and the
  receiver's sampled choice for 0/1 runs); for Gumbel a fresh relaxed sample, for ST a hard one.
- ``nll``: receiver NLL of the target at the mode message.
- ``decoder_calls``: receiver evaluations per game (the estimator's ``support_size``), the
  training mean in ``metrics.json`` and the test-time mean as ``test/decoder_calls``.
- ``nonzeros``: mean number of non-zero entries of the messages the receiver evaluated (1 for
  one-hot messages; V for relaxed Gumbel-Softmax samples; in between for sparse ones).

Compute at the protocol's scale (4096-d features; one thread of a 2-vCPU AMD EPYC virtual
machine with the other processes paused; ``latentgrad run signal_game profile=faithful
trainer.max_steps=200``): 7.3 training steps per second for sparsemax (0.137 s per step; 4.8
before the CLI asked for transparent huge pages, when a third of each step was the kernel
faulting in and zeroing 4 KiB pages of the 32 MiB scalar-network activations again), 3.4 for NVIL
(2.8 before: its baseline MLP 4096 → 512 → 512 → 512 → 1 runs on all 16 candidates of each game).
Nearly all of it is the model's own work — the sender's scalar network (64 × 256 × 512 sigmoids
and their backward) and the receiver's projection of the 64 × 16 candidates' 4096-d features;
gathering a batch's features is ~4%, Lightning's loop ~3%. Sparsemax marginalization starts with
nearly full support (about 255 of the 256 messages per game, since the sender's scores are
divided by τ_s = 10); the discrete estimators hand the receiver symbol indices, which it looks up
in its per-game table, so those 255 receiver calls cost almost nothing and a sparsemax step costs
the same in every phase of training as an SFE step. Validation (1,024 games after every 100
steps) adds about 1 s per 100 steps (7%). One run of 50,000 steps: about 2.0 CPU-hours (NVIL
4.3); the protocol's 9 methods × 10 seeds: about 200 CPU-hours. Profile ``faithful`` keeps
everything but runs 20,000 of the 50,000 steps (200 of the 500 epochs): about 0.8 CPU-hours per
run (NVIL 1.7), 8.3 CPU-hours for one seed of the 9 methods. The Gumbel temperature schedule,
r = 1e-5 per 1,000 steps, reaches τ = 0.82 there instead of 0.61.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from latentgrad.estimators.base import EstimatorOutput, LossFn
from latentgrad.experiments.config import build, require
from latentgrad.experiments.data.files import dataset_dir
from latentgrad.experiments.data.signal_game import (
    ConceptFeatures,
    GameBatches,
    load_lazaridou,
    sample_games,
    synthetic_concepts,
)
from latentgrad.experiments.tasks.base import LatentTask, TaskConfig, categorical_mode

SOURCES = ("synthetic", "lazaridou")
LOSSES = ("nll", "zero_one")
# estimators that can train a stochastic receiver with the 0/1 loss (score function, no extra input)
ZERO_ONE_ESTIMATORS = ("sfe", "sfe_01", "sfe_plus")


@dataclass
class DataConfig:
    """Features and games. ``source=synthetic``: the offline generator (seed ``generator_seed``,
    independent of the run seed); ``source=lazaridou``: the original features under ``path``
    (default ``$LATENTGRAD_DATA/signal_game``) with ``train/`` and ``test/`` folders.
    Training games of epoch ``e`` are drawn with the generator seed ``2**20 * seed + e``;
    validation games (``validation_games``, from the training items) and test games
    (``test_batches × batch_size``, from the test items) with their own fixed seeds."""

    source: str = "synthetic"
    path: str | None = None
    num_concepts: int = 463
    items_per_concept: int = 100
    feature_dim: int = 4096
    num_groups: int = 24
    prototype_noise: float = 0.8
    item_noise: float = 0.6
    generator_seed: int = 0
    game_size: int = 16
    batch_size: int = 64
    batches_per_epoch: int = 100
    validation_games: int = 1024
    validation_seed: int = 20200724
    test_batches: int = 156
    test_seed: int = 20200725

    def validate(self) -> None:
        require(self.source in SOURCES, "source", f"must be one of {SOURCES}, got {self.source!r}")
        for key in (
            "num_concepts",
            "items_per_concept",
            "feature_dim",
            "num_groups",
            "batch_size",
            "batches_per_epoch",
            "validation_games",
            "test_batches",
        ):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.prototype_noise >= 0, "prototype_noise", "must be >= 0")
        require(self.item_noise > 0, "item_noise", f"must be > 0, got {self.item_noise}")
        require(self.game_size >= 2, "game_size", f"must be >= 2, got {self.game_size}")
        require(
            self.source != "synthetic" or self.game_size <= self.num_concepts,
            "game_size",
            f"({self.game_size}) must not exceed num_concepts ({self.num_concepts}): a game "
            "holds distinct concepts",
        )


@dataclass
class ModelConfig:
    """Sender and receiver sizes (the paper's) and the game loss (``nll`` or ``zero_one``)."""

    vocab_size: int = 256
    hidden_dim: int = 256
    scalar_net_width: int = 512
    embedding_dim: int = 256
    sender_temperature: float = 10.0
    loss: str = "nll"

    def validate(self) -> None:
        for key in ("vocab_size", "hidden_dim", "scalar_net_width", "embedding_dim"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.vocab_size >= 2, "vocab_size", f"must be >= 2, got {self.vocab_size}")
        require(self.sender_temperature > 0, "sender_temperature", "must be > 0")
        require(self.loss in LOSSES, "loss", f"must be one of {LOSSES}, got {self.loss!r}")


@dataclass
class SignalGameConfig(TaskConfig):
    task: str = "signal_game"
    estimator: str = "sparsemax"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    def validate(self) -> None:
        super().validate()
        require(
            self.model.loss == "nll" or self.estimator in ZERO_ONE_ESTIMATORS,
            "model.loss",
            f"'zero_one' needs a score-function estimator {ZERO_ONE_ESTIMATORS}, got "
            f"{self.estimator!r} (the 0/1 loss has no gradient to marginalize or relax)",
        )


Config = SignalGameConfig


# ---------------------------------------------------------------------------------------- data


def load_splits(cfg: DataConfig) -> tuple[ConceptFeatures, ConceptFeatures]:
    """(train, test) features of the configured source."""
    if cfg.source == "lazaridou":
        return load_lazaridou(dataset_dir("signal_game", cfg.path))
    return synthetic_concepts(
        cfg.num_concepts,
        cfg.items_per_concept,
        cfg.feature_dim,
        cfg.num_groups,
        cfg.prototype_noise,
        cfg.item_noise,
        cfg.generator_seed,
    )


class SignalGameData(L.LightningDataModule):
    """Fresh training games every epoch (``batches_per_epoch`` batches); fixed validation and
    test games. Batches are ``(sender (B, F), candidates (B, G, F), label (B,))``."""

    def __init__(self, cfg: DataConfig, seed: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = seed

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_items"):
            return
        cfg = self.cfg
        self.train_items, self.test_items = load_splits(cfg)
        if self.train_items.dim != self.test_items.dim:
            raise ValueError(
                f"train and test features differ in dimension: {self.train_items.dim} vs "
                f"{self.test_items.dim}"
            )
        self.feature_dim = self.train_items.dim
        gen = torch.Generator().manual_seed(cfg.validation_seed)
        self.validation = sample_games(self.train_items, cfg.validation_games, cfg.game_size, gen)
        gen = torch.Generator().manual_seed(cfg.test_seed)
        self.test = sample_games(
            self.test_items, cfg.test_batches * cfg.batch_size, cfg.game_size, gen
        )

    def _loader(self, dataset: GameBatches) -> DataLoader:
        return DataLoader(dataset, batch_size=None, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        cfg = self.cfg
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        gen = torch.Generator().manual_seed((self.seed << 20) + epoch)
        games = sample_games(
            self.train_items, cfg.batches_per_epoch * cfg.batch_size, cfg.game_size, gen
        )
        return self._loader(GameBatches(self.train_items, games, cfg.batch_size))

    def val_dataloader(self) -> DataLoader:
        return self._loader(GameBatches(self.train_items, self.validation, self.cfg.batch_size))

    def test_dataloader(self) -> DataLoader:
        return self._loader(GameBatches(self.test_items, self.test, self.cfg.batch_size))


# --------------------------------------------------------------------------------------- agents


class Sender(nn.Module):
    """Target features ``(B, F)`` -> message scores ``(B, V)`` (module docstring).

    The scalar network's weights start like the reference's 1×1 and 512×1 convolutions:
    ``w ~ U(−1, 1)``, ``v ~ U(−1/√width, 1/√width)``.
    """

    def __init__(
        self, feature_dim: int, hidden_dim: int, width: int, vocab_size: int, temperature: float
    ) -> None:
        super().__init__()
        self.project = nn.Linear(feature_dim, hidden_dim, bias=False)
        self.w = nn.Parameter(torch.empty(width).uniform_(-1.0, 1.0))
        bound = width**-0.5
        self.v = nn.Parameter(torch.empty(width).uniform_(-bound, bound))
        self.out = nn.Linear(hidden_dim, vocab_size, bias=False)
        self.temperature = float(temperature)

    def forward(self, x: Tensor) -> Tensor:
        e = self.project(x)
        h = torch.sigmoid(torch.sigmoid(e.unsqueeze(-1) * self.w) @ self.v)
        return self.out(h) / self.temperature


class Receiver(nn.Module):
    """Scores candidates given a message: ``log_softmax_j <c_j, W_m z>`` with ``c_j = W_c x_j``.

    The scores are linear in the message, ``s_b(z) = T_b z`` with the per-game table
    ``T_b = C_b W_m`` ``(G, V)`` (``C_b`` the embedded candidates), built once per batch by
    ``game_tables``. The marginalization and score-function estimators hand the receiver symbol
    indices (their messages are one-hot): a lookup in the table, ``O(G)`` per message, so a
    receiver call over many (game, message) pairs costs little beyond the table. A message
    vector that needs no gradient (the mode's one-hot rows) is evaluated from its non-zero
    entries only; one with a gradient (relaxations, mixed samples) uses the dense product. All
    three give the same scores on one-hot messages.
    """

    def __init__(
        self, feature_dim: int, vocab_size: int, embedding_dim: int, symbol_embedding: bool
    ) -> None:
        super().__init__()
        self.candidates = nn.Linear(feature_dim, embedding_dim, bias=False)
        self.message = nn.Linear(vocab_size, embedding_dim, bias=False)
        if symbol_embedding:  # initialised as the reference's Embedding(V, E): N(0, 1) entries
            nn.init.normal_(self.message.weight)

    def game_tables(self, candidates: Tensor) -> Tensor:
        """Candidates ``(B, G, F)`` -> ``T`` ``(B, G, V)``: the score of candidate ``j`` for symbol
        ``v`` is ``T[b, j, v]``."""
        return self.candidates(candidates) @ self.message.weight

    def forward(self, tables: Tensor, z: Tensor, rows: Tensor) -> Tensor:
        """``tables`` ``(B, G, V)``, messages ``z`` ``(N, V)`` or symbol indices ``(N,)`` int64,
        games ``rows`` ``(N,)`` -> log-probabilities ``(N, G)`` over the candidates of game
        ``rows[n]``."""
        if not z.is_floating_point():  # a symbol index: the one-hot row's scores, looked up
            return tables[rows, :, z].log_softmax(-1)
        if z.requires_grad:
            scores = torch.einsum("ngv,nv->ng", tables[rows], z)
        else:
            n, v = z.nonzero(as_tuple=True)
            terms = tables[rows[n], :, v] * z[n, v].unsqueeze(-1)
            shape = (z.shape[0], tables.shape[1])
            scores = tables.new_zeros(shape).index_add(0, n, terms)
        return scores.log_softmax(-1)


def message_nonzeros(z: Tensor) -> Tensor:
    """Mean number of non-zero entries of messages ``z`` ``(N, V)`` (1 for symbol indices
    ``(N,)``)."""
    if not z.is_floating_point():
        return torch.ones((), dtype=torch.float32, device=z.device)
    return (z != 0).sum(-1).to(torch.float32).mean()


class CandidateAverage(nn.Module):
    """NVIL baseline over a game: ``net`` on each candidate ``(B, G, F)``, averaged -> ``(B,)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, candidates: Tensor) -> Tensor:
        return self.net(candidates).squeeze(-1).mean(-1)


# ---------------------------------------------------------------------------------------- model


class SignalGame(LatentTask):
    """Sender, receiver and estimator; ``config`` is the resolved config as a plain dict."""

    config_class = SignalGameConfig

    def __init__(self, config: dict, feature_dim: int, run_dir: str | None = None) -> None:
        super().__init__(config, run_dir, feature_dim=feature_dim)
        cfg = self.cfg
        m = cfg.model
        self.sender = Sender(
            feature_dim, m.hidden_dim, m.scalar_net_width, m.vocab_size, m.sender_temperature
        )
        self.receiver = Receiver(feature_dim, m.vocab_size, m.embedding_dim, self.spec.indices)
        # discrete messages reach the receiver as symbol indices (no one-hot rows of V entries)
        indices = {"one_hot": False} if self.spec.indices else {}
        self.estimator = self.make_estimator(m.vocab_size, feature_dim, **indices)
        if self.spec.needs_baseline_input:
            self.estimator.baseline_net = CandidateAverage(self.estimator.baseline_net)
        self.zero_one = m.loss == "zero_one"
        # the stochastic receiver's choice is a categorical latent over the G candidates
        self.receiver_estimator = (
            self.make_estimator(cfg.data.game_size, feature_dim) if self.zero_one else None
        )
        self._nonzeros: list[Tensor] = []

    # ---- the game's losses (no estimator math here)

    def _zero_one(self, logp: Tensor, target: Tensor) -> tuple[Tensor, EstimatorOutput]:
        """0/1 loss of the receiver's sampled choice, ``(N, G)`` log-probs, ``(N,)`` targets."""

        def choice_loss(a: Tensor, rows: Tensor) -> Tensor:
            return -a.gather(1, target[rows].unsqueeze(1)).squeeze(1)

        out = self.receiver_estimator(logp, choice_loss)
        return out.expected_loss, out

    def game_loss_fn(self, tables: Tensor, label: Tensor) -> LossFn:
        """The training ``loss_fn(z, rows)`` of a batch (NLL, or 0/1 with the receiver's term)."""

        def loss_fn(z: Tensor, rows: Tensor) -> Tensor:
            self._nonzeros.append(message_nonzeros(z).detach())
            logp = self.receiver(tables, z, rows)
            target = label[rows]
            if not self.zero_one:
                return -logp.gather(1, target.unsqueeze(1)).squeeze(1)
            loss01, out = self._zero_one(logp, target)
            return loss01 + (out.loss - out.loss.detach())

        return loss_fn

    def reference_loss_fn(self, tables: Tensor, label: Tensor) -> LossFn:
        """``loss_fn`` whose value is ``−1[correct]``: the receiver's sampled choice for 0/1
        runs, its argmax otherwise."""

        def loss_fn(z: Tensor, rows: Tensor) -> Tensor:
            self._nonzeros.append(message_nonzeros(z))
            logp = self.receiver(tables, z, rows)
            target = label[rows]
            if self.zero_one:
                return self._zero_one(logp, target)[0]
            return -(logp.argmax(-1) == target).to(logp.dtype)

        return loss_fn

    @torch.no_grad()
    def evaluate(self, batch: tuple[Tensor, Tensor, Tensor]) -> dict[str, Tensor]:
        """Per-batch means of every evaluation reading (module docstring)."""
        x, candidates, label = batch
        scores = self.sender(x)
        tables = self.receiver.game_tables(candidates)
        rows = torch.arange(x.shape[0], device=x.device)
        logp = self.receiver(tables, categorical_mode(scores), rows)
        self._nonzeros.clear()
        out = self.estimate(scores, self.reference_loss_fn(tables, label), candidates)
        return {
            "acc": (logp.argmax(-1) == label).to(x.dtype).mean(),
            "nll": -logp.gather(1, label.unsqueeze(1)).mean(),
            "acc_reference": -out.expected_loss.mean(),
            "decoder_calls": out.support_size.to(x.dtype).mean(),
            "nonzeros": torch.stack(self._nonzeros).mean(),
        }

    # ---- Lightning hooks

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, candidates, label = batch
        scores = self.sender(x)
        tables = self.receiver.game_tables(candidates)
        self._nonzeros.clear()
        out = self.estimate(scores, self.game_loss_fn(tables, label), candidates)
        self.record_step(out)
        self.log_train(lambda: {
            "train/loss": out.loss.detach(),
            **self.step_logs(out),
            "train/nonzeros": torch.stack(self._nonzeros).mean(),
        })
        return out.loss

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        stats = self.evaluate(batch)
        self.log("val/acc", stats["acc"], prog_bar=True)
        self.log("val/acc_reference", stats["acc_reference"])
        self.log("val/nll", stats["nll"])

    def test_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        for key, value in self.evaluate(batch).items():
            self.log(f"test/{key}", value)


def build_run(config: dict, run_dir: str | None) -> tuple[SignalGame, SignalGameData]:
    """The task entry point used by the runner: (LightningModule, LightningDataModule)."""
    cfg = build(SignalGameConfig, config)
    data = SignalGameData(cfg.data, cfg.seed)
    data.setup()
    return SignalGame(config, data.feature_dim, run_dir), data


# metric name -> (label, higher is better); the report shows these, in this order
REPORT_METRICS = {
    "test/acc": ("communication success (mode)", True),
    "test/acc_reference": ("communication success (reference reading)", True),
    "decoder_calls": ("receiver calls / game (training)", False),
    "test/nonzeros": ("non-zero message entries (test)", False),
}
CURVE_METRICS = ("val/acc", "val/acc_reference")
