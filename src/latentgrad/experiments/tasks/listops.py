"""Task ``listops``: unsupervised parsing with latent arborescences on ListOps (Paulus et al.
2020, §5.4; data of Nangia & Bowman 2018, ``experiments.data.listops``).

The label (the expression's value, 10 classes) is predicted through a latent dependency tree over
the tokens, learned without tree supervision:

- Arc scores: token embeddings feed two bidirectional LSTMs, one for heads and one for
  dependents; ``θ_ij = h_i^T W d_j + b`` scores the arc i -> j (i the head of j).
- Latent: ``tree_*`` an arborescence rooted at token 0 (the outermost operator) over the tokens
  (``Arborescence(max_length, root=0)``; padding tokens are forced onto the root with scores
  ``±PAD_SCORE``, which leaves the distribution over the real tokens' arcs unchanged); ``edges_*``
  one independent binary variable per arc (Gumbel-Softmax), the unstructured baseline.
- Decoder: ``gnn_rounds`` rounds of message passing over the (relaxed) arcs ``z``: each token adds
  ``Σ_j z_ij W_c s_j`` from its dependents and ``Σ_i z_ij W_h s_i`` from its heads to its state
  (residual MLP and LayerNorm); an MLP on token 0's final state gives the 10 class scores;
  loss = cross-entropy.

Evaluation: ``acc`` with the MAP arborescence (independent arcs: the arcs with ``θ > 0``),
``acc_sample`` with one hard sample (the stochastic argmax; an exact Gibbs sample for NVIL), and
the precision/recall of the MAP arcs against the gold arcs (every token's head among the real
tokens; an arborescence has as many arcs as the gold tree, so both are equal for ``tree_*``).

Protocols (``configs/listops.yaml``): the paper's code and sizes were never published; profile
``paper`` is the documented setup of a later paper reusing it (90,000/10,000/10,000 expressions,
width 128, 10 epochs of batch 100, Adam 1e-3, seeds 0-4). Measured on one quiet thread of the
2-vCPU development CPU: 0.4 s per training step of ``tree_sst`` and of ``tree_nvil`` (its exact
Gibbs sampler about 0.08 s of it), 0.6–0.7 s for ``tree_st`` and ``tree_sfe_*`` (the
Chu–Liu/Edmonds argmax of the perturbed scores about 0.27 s of it), about a minute per
validation pass over 10,000 expressions, so one run is 1.2–2 CPU-hours and the protocol's 35
runs (7 estimators, 5 seeds) about 55. Profile ``faithful`` changes only the length: 2 of the 10
epochs (0.25–0.4 CPU-hours per run), with one seed (``--seeds 0``) instead of five.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from latentgrad.experiments.config import build, require
from latentgrad.experiments.data.files import dataset_dir, require_file
from latentgrad.experiments.data.listops import VOCAB, listops_splits, read_listops_tsv
from latentgrad.experiments.data.splits import TensorSplits
from latentgrad.experiments.tasks.base import LatentTask, TaskConfig
from latentgrad.experiments.tasks.structured import hard_sample, precision_recall
from latentgrad.structures import Arborescence

SOURCES = ("generated", "tsv")
PAD_SCORE = 1e3


@dataclass
class DataConfig:
    """``source=generated``: the generator (cached under ``path``, default
    ``$LATENTGRAD_DATA/listops``); ``source=tsv``: ``train.tsv``, ``valid.tsv`` and ``test.tsv``
    in the original layout under ``path``."""

    source: str = "generated"
    path: str | None = None
    num_train: int = 90_000
    num_valid: int = 10_000
    num_test: int = 10_000
    max_args: int = 5
    max_depth: int = 5
    max_length: int = 50
    nest_prob: float = 0.5
    nest_decay: float = 0.7
    generator_seed: int = 0
    batch_size: int = 100
    progress: bool = True

    def validate(self) -> None:
        require(self.source in SOURCES, "source", f"must be one of {SOURCES}, got {self.source!r}")
        for key in ("num_train", "num_valid", "num_test", "batch_size"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.max_length >= 4, "max_length", f"must be >= 4, got {self.max_length}")


@dataclass
class ModelConfig:
    embedding_dim: int = 128
    hidden_dim: int = 128
    gnn_rounds: int = 3

    def validate(self) -> None:
        for key in ("embedding_dim", "hidden_dim", "gnn_rounds"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")


@dataclass
class ListOpsConfig(TaskConfig):
    task: str = "listops"
    estimator: str = "tree_sst"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)


Config = ListOpsConfig


# ---------------------------------------------------------------------------------------- data


def load_splits(cfg: DataConfig) -> dict[str, dict]:
    if cfg.source == "tsv":
        folder = dataset_dir("listops", cfg.path)
        return {
            split: read_listops_tsv(require_file(folder, f"{split}.tsv", "ListOps", "listops"),
                                    cfg.max_length)
            for split in ("train", "valid", "test")
        }
    return listops_splits(
        str(dataset_dir("listops", cfg.path)),
        (cfg.num_train, cfg.num_valid, cfg.num_test),
        cfg.max_args,
        cfg.max_depth,
        cfg.max_length,
        cfg.nest_prob,
        cfg.nest_decay,
        cfg.generator_seed,
        cfg.progress,
    )


class ListOpsData(TensorSplits):
    """Batches ``(tokens (B, max_length), lengths (B,), labels (B,), heads (B, max_length))``."""

    def load(self) -> dict[str, TensorDataset]:
        keys = ("tokens", "lengths", "labels", "heads")
        return {
            split: TensorDataset(*(torch.from_numpy(a[k]) for k in keys))
            for split, a in load_splits(self.cfg).items()
        }


# --------------------------------------------------------------------------------------- model


def arc_mask(lengths: Tensor, size: int) -> Tensor:
    """``(B, size, size)`` booleans: arcs i -> j between real tokens, ``i != j``, ``j != 0``."""
    idx = torch.arange(size, device=lengths.device)
    real = idx < lengths[:, None]
    ok = real[:, :, None] & real[:, None, :]
    return ok & (idx[:, None] != idx[None, :]) & (idx != 0)


def gold_arcs(heads: Tensor) -> Tensor:
    """Gold heads ``(B, L)`` (-1: none) -> arc indicators ``(B, L, L)``, ``z[b, h_j, j] = 1``."""
    z = torch.zeros(*heads.shape, heads.shape[-1], dtype=torch.bool, device=heads.device)
    b, j = (heads >= 0).nonzero(as_tuple=True)
    z[b, heads[b, j], j] = True
    return z


class ArcScorer(nn.Module):
    """Tokens -> bilinear arc scores ``(B, L, L)`` from a head and a dependent BiLSTM."""

    def __init__(self, embedding_dim: int, hidden_dim: int) -> None:
        super().__init__()
        half = max(hidden_dim // 2, 1)
        self.head = nn.LSTM(embedding_dim, half, batch_first=True, bidirectional=True)
        self.dep = nn.LSTM(embedding_dim, half, batch_first=True, bidirectional=True)
        self.bilinear = nn.Parameter(torch.zeros(2 * half, 2 * half))
        nn.init.xavier_uniform_(self.bilinear)
        self.bias = nn.Parameter(torch.zeros(()))

    def _run(self, lstm: nn.LSTM, emb: Tensor, host_lengths: Tensor) -> Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(
            emb, host_lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = lstm(packed)
        return nn.utils.rnn.pad_packed_sequence(
            out, batch_first=True, total_length=emb.shape[1]
        )[0]

    def forward(self, emb: Tensor, lengths: Tensor) -> Tensor:
        host_lengths = lengths.cpu()  # packing needs them on the host: one copy for both LSTMs
        h = self._run(self.head, emb, host_lengths)
        d = self._run(self.dep, emb, host_lengths)
        return torch.einsum("bif,fg,bjg->bij", h, self.bilinear, d) + self.bias


class TreeGNN(nn.Module):
    """Message passing over arc weights ``z`` ``(B, L, L)`` -> class scores (module docstring)."""

    def __init__(self, dim: int, rounds: int, num_classes: int = 10) -> None:
        super().__init__()
        self.rounds = rounds
        self.from_deps = nn.Linear(dim, dim, bias=False)
        self.from_heads = nn.Linear(dim, dim, bias=False)
        self.update = nn.Sequential(nn.Linear(3 * dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, num_classes))

    def forward(self, emb: Tensor, z: Tensor, real: Tensor) -> Tensor:
        s = emb * real[..., None]
        for _ in range(self.rounds):
            down = z @ self.from_deps(s)
            up = z.mT @ self.from_heads(s)
            s = self.norm(s + self.update(torch.cat([s, down, up], dim=-1))) * real[..., None]
        return self.out(s[:, 0])


class ListOps(LatentTask):
    """Arc scorer, latent arborescence (or independent arcs), GNN classifier (module docstring)."""

    config_class = ListOpsConfig

    def __init__(self, config: dict, run_dir: str | None = None) -> None:
        super().__init__(config, run_dir)
        cfg = self.cfg
        m, size = cfg.model, cfg.data.max_length
        self.size = size
        self.latent = self.spec.latent
        self.posterior = self.spec.posterior
        self.embed = nn.Embedding(len(VOCAB), m.embedding_dim, padding_idx=0)
        self.scorer = ArcScorer(m.embedding_dim, m.hidden_dim)
        self.gnn = TreeGNN(m.embedding_dim, m.gnn_rounds)
        self.structure = Arborescence(size, root=0)
        self.estimator = self.spec.factory(
            cfg.estimator_args, size, m.embedding_dim, structure=self.structure
        )

    def encode(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Embeddings ``(B, L, E)``, arc mask ``(B, L, L)`` and the latent's scores: ``(B, L, L)``
        with padding forced onto the root (tree) or ``(B, L, L, 2)`` (independent arcs)."""
        emb = self.embed(tokens)
        theta = self.scorer(emb, lengths)
        mask = arc_mask(lengths, self.size)
        if self.latent == "edges":
            return emb, mask, torch.stack([torch.zeros_like(theta), theta], dim=-1)
        pad_dep = (torch.arange(self.size, device=tokens.device) >= lengths[:, None])[:, None, :]
        from_root = (torch.arange(self.size, device=tokens.device) == 0)[None, :, None]
        forced = torch.where(pad_dep & from_root, PAD_SCORE, -PAD_SCORE).to(theta.dtype)
        return emb, mask, torch.where(mask, theta, forced)

    def arcs(self, z: Tensor, mask: Tensor) -> Tensor:
        """A latent value -> arc weights between real tokens ``(B, L, L)``."""
        arcs = z[..., 1] if self.latent == "edges" else z
        return arcs * mask

    def classify(self, emb: Tensor, mask: Tensor, lengths: Tensor, z: Tensor) -> Tensor:
        """Class scores ``(N, 10)`` of the examples ``emb`` ``(N, L, E)`` given latents ``z``."""
        real = torch.arange(self.size, device=emb.device) < lengths[:, None]
        return self.gnn(emb, self.arcs(z, mask), real.to(emb.dtype))

    def loss_fn(self, emb: Tensor, mask: Tensor, labels: Tensor, lengths: Tensor):
        """``loss_fn(z, rows)``: cross-entropy of the examples ``rows`` given latents ``z``."""

        def loss(z: Tensor, rows: Tensor) -> Tensor:
            logits = self.classify(emb[rows], mask[rows], lengths[rows], z)
            return F.cross_entropy(logits, labels[rows], reduction="none")

        return loss

    def map_latent(self, scores: Tensor) -> Tensor:
        if self.latent == "edges":
            return F.one_hot(scores.argmax(-1), 2).to(scores.dtype)
        return self.structure.argmax(scores.detach())

    def sample_latent(self, scores: Tensor) -> Tensor:
        if self.latent == "edges":
            gumbel = -torch.empty_like(scores).exponential_().log()
            return F.one_hot((scores + gumbel).argmax(-1), 2).to(scores.dtype)
        return hard_sample(self.posterior, self.structure, scores)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        tokens, lengths, labels, _ = batch
        emb, mask, scores = self.encode(tokens, lengths)
        baseline_input = emb.detach().sum(1) / lengths[:, None].to(emb.dtype)
        out = self.estimate(scores, self.loss_fn(emb, mask, labels, lengths), baseline_input)
        self.record_step(out)
        self.log_train(lambda: {"train/loss": out.loss.detach(), **self.step_logs(out)})
        return out.loss

    @torch.no_grad()
    def evaluate(self, batch) -> dict[str, Tensor]:
        tokens, lengths, labels, heads = batch
        emb, mask, scores = self.encode(tokens, lengths)
        gold = gold_arcs(heads)
        stats = {}
        for tag, z in (("", self.map_latent(scores)), ("_sample", self.sample_latent(scores))):
            logits = self.classify(emb, mask, lengths, z)
            stats[f"acc{tag}"] = (logits.argmax(-1) == labels).to(emb.dtype).mean()
            stats[f"nll{tag}"] = F.cross_entropy(logits, labels)
            arcs = self.arcs(z, mask) > 0.5
            stats[f"precision{tag}"], stats[f"recall{tag}"] = precision_recall(arcs, gold)
        return stats

    def validation_step(self, batch, batch_idx: int) -> None:
        stats = self.evaluate(batch)
        self.log("val/acc", stats["acc"], prog_bar=True)
        self.log("val/precision", stats["precision"])

    def test_step(self, batch, batch_idx: int) -> None:
        for key, value in self.evaluate(batch).items():
            self.log(f"test/{key}", value)


def build_run(config: dict, run_dir: str | None) -> tuple[ListOps, ListOpsData]:
    """The task entry point used by the runner: (LightningModule, LightningDataModule)."""
    cfg = build(ListOpsConfig, config)
    data = ListOpsData(cfg.data, cfg.seed)
    data.setup()
    return ListOps(config, run_dir), data


# metric name -> (label, higher is better); the report shows these, in this order
REPORT_METRICS = {
    "test/acc": ("test accuracy (MAP tree)", True),
    "test/acc_sample": ("test accuracy (one sample)", True),
    "test/precision": ("arc precision (MAP)", True),
    "test/recall": ("arc recall (MAP)", True),
    "decoder_calls": ("decoder calls / example (training)", False),
}
CURVE_METRICS = ("val/acc", "val/precision")
