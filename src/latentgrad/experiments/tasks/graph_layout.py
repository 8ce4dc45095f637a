"""Task ``graph_layout``: neural relational inference with a latent graph (Kipf et al. 2018) on
force-directed layouts of random trees, the headline experiment of Paulus et al. 2020 (§5.3).

Data (``experiments.data.graph_layout``): n = 10 vertices, T frames of 2-d positions, scaled to
[-1, 1] with the global minimum and maximum of the training positions. The model is a VAE whose
latent is the interaction graph:

- Encoder (NRI's factor-graph MLP encoder): per vertex its whole trajectory ``(T·2,)`` -> node MLP
  -> edge MLP on (sender, receiver) -> mean over incoming edges -> node MLP -> edge MLP on
  (sender, receiver, skip) -> linear head. Every MLP is two linear layers with ELU and a
  BatchNorm at the output. The head gives 1 logit per directed edge, averaged over both
  directions, for trees and top-(n-1) edges, or 2 logits per directed edge for independent edges.
- Latent: ``edges_*`` one binary variable per directed edge (Gumbel-Softmax); ``subset_*`` exactly
  n - 1 of the n(n-1)/2 undirected edges (k-subset SST); ``tree_*`` a spanning tree (SST with the
  matrix-tree marginals, score-function estimators, NVIL, SparseMAP).
- Decoder (NRI's MLP decoder): per edge a message MLP for each of the two edge types ("edge",
  "no edge") on (sender, receiver) positions, weighted by the (relaxed) edge indicator ``z`` and
  ``1 - z``, summed per receiver; an output MLP predicts the position increment. In training it
  is fed the true frame every ``prediction_steps`` frames and its own predictions in between.
- Objective per example (per vertex, i.e. divided by n): Gaussian NLL with variance 5e-5 and no
  normalising constant, summed over vertices, frames and coordinates, plus the KL term of the
  estimator's posterior kind (``tasks.structured``: utilities' KL for SMT/SST samples, each
  undirected edge once; Gibbs or sparse-distribution KL to the uniform prior over trees).

Evaluation (validation and test), with one-step teacher forcing (every prediction starts from
the true previous frame): ``elbo`` = -(NLL + KL) per vertex at one hard sample (the stochastic
argmax; an exact Gibbs sample for NVIL; the exact expectation over the support for SparseMAP),
``nll`` its reconstruction part; ``precision``/``recall``/``edge_acc`` of that sample's undirected
edges against the true tree (an undirected edge {i, j} is predicted when either direction is:
``z_ij`` or ``z_ji``; ``edge_acc`` over all n(n-1)/2 pairs); ``*_mode`` the same for the MAP
structure of the scores. For independent edges, "edge" is the second of the two edge types (a
fixed reading; the original code took the better of both readings, reported as
``edge_acc_swapped``, the accuracy when the two types are exchanged). Validation runs once per
epoch; the test uses the weights of the best validation ELBO (``eval.test_weights=best``, as the
paper) or the final ones (``last``); ``metrics.json`` records ``best_step`` and
``best_val_elbo``.

Protocols (``configs/graph_layout.yaml``): ``paper`` (T = 10) and ``paper_t20`` are the
published protocol, seed 42: 50,000 iterations of batch 128 at width 256, Adam 3e-4, τ = 5 (the
paper then tuned lr and τ per structure by random search; box and trial count are unpublished).
One training step of ``tree_sst`` at width 256 takes 2.0-2.3 s on one quiet thread of the
2-core development CPU (about 30-35 CPU-hours per ``paper`` run, validation included) and a
validation batch of 128 0.7-0.8 s; the decoder's message MLPs are four fifths of the arithmetic.
``faithful`` and ``faithful_t20`` change only the length of the main phase: 5,000 of the 50,000
iterations (about 3-3.5 CPU-hours per run of a one-sample estimator), one seed.

What to expect from one run: the decoder cannot learn the dynamics without the graph (given a
random tree per example its one-step NLL stays at that of predicting no motion), and the encoder
gets a useful gradient only from a decoder that uses the graph. Joint training from scratch has
to break this symmetry, and it can settle in a second basin where the sampled "edges" are pairs
that are *not* adjacent (far apart; the precision falls below chance while the MAP tree of the
negated scores recovers the true edges). Which basin a run reaches depends on the seed; the
basins differ in ELBO, which is why model selection over runs by validation ELBO (the paper's
random search) matters. Given a decoder trained on the true trees, the tree SST's gradient
recovers the edges in a few dozen steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from latentgrad.estimators.base import EstimatorOutput, LossFn
from latentgrad.experiments.config import build, require
from latentgrad.experiments.data.files import dataset_dir
from latentgrad.experiments.data.graph_layout import graph_layout_splits
from latentgrad.experiments.data.splits import TensorSplits
from latentgrad.experiments.tasks.base import BestWeights, LatentTask, OptimConfig, TaskConfig
from latentgrad.experiments.tasks.structured import (
    hard_sample,
    log_num_structures,
    posterior_kl,
    precision_recall,
    undirected,
)
from latentgrad.structures import Categorical, KSubset, SpanningTree
from latentgrad.structures.spanning_tree import symmetrized


@dataclass
class DataConfig:
    """Generated trajectories (cached under ``path``, default ``$LATENTGRAD_DATA/graph_layout``;
    ``generator_seed`` is independent of the run seed) and the batch size."""

    path: str | None = None
    num_vertices: int = 10
    num_frames: int = 10
    num_train: int = 50_000
    num_valid: int = 10_000
    num_test: int = 10_000
    generator_seed: int = 42
    batch_size: int = 128
    progress: bool = True

    def validate(self) -> None:
        require(self.num_vertices >= 3, "num_vertices", f"must be >= 3, got {self.num_vertices}")
        require(self.num_frames >= 2, "num_frames", f"must be >= 2, got {self.num_frames}")
        for key in ("num_train", "num_valid", "num_test", "batch_size"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")


@dataclass
class ModelConfig:
    """NRI widths, the training rollout length and the Gaussian likelihood's variance."""

    hidden: int = 256
    prediction_steps: int = 9
    variance: float = 5e-5

    def validate(self) -> None:
        require(self.hidden >= 1, "hidden", f"must be >= 1, got {self.hidden}")
        require(self.prediction_steps >= 1, "prediction_steps", "must be >= 1")
        require(self.variance > 0, "variance", f"must be > 0, got {self.variance}")


@dataclass
class EvalConfig:
    """``test_weights``: ``best`` tests the weights of the best validation ELBO (the protocol),
    ``last`` the final ones."""

    test_weights: str = "best"

    def validate(self) -> None:
        choices = ("best", "last")
        require(self.test_weights in choices, "test_weights", f"must be one of {choices}")


@dataclass
class GraphLayoutConfig(TaskConfig):
    task: str = "graph_layout"
    estimator: str = "tree_sst"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4))


Config = GraphLayoutConfig


# ---------------------------------------------------------------------------------------- data


class GraphLayoutData(TensorSplits):
    """Batches ``(positions (B, n, T, 2), adjacency (B, n, n))``."""

    def load(self) -> dict[str, TensorDataset]:
        cfg = self.cfg
        splits = graph_layout_splits(
            str(dataset_dir("graph_layout", cfg.path)),
            cfg.num_vertices,
            cfg.num_frames,
            (cfg.num_train, cfg.num_valid, cfg.num_test),
            cfg.generator_seed,
            cfg.progress,
        )
        train = torch.from_numpy(splits["train"]["positions"])
        lo, hi = train.min(), train.max()
        sets = {}
        for name, arrays in splits.items():
            x = torch.from_numpy(arrays["positions"]).permute(0, 3, 1, 2)  # (N, n, T, 2)
            x = (x - lo) * (2.0 / (hi - lo)) - 1.0
            sets[name] = TensorDataset(x.contiguous(), torch.from_numpy(arrays["adjacency"]))
        return sets


# --------------------------------------------------------------------------------------- model


class NRIMLP(nn.Module):
    """``Linear -> ELU -> Linear -> ELU -> BatchNorm`` over the last dim of ``(..., in)``."""

    def __init__(self, n_in: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_in, hidden), nn.ELU(), nn.Linear(hidden, n_out), nn.ELU()
        )
        self.norm = nn.BatchNorm1d(n_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.after_first(self.net[0](x))

    def on_edges(self, graph: Graph, h: Tensor, extra: Tensor | None = None) -> Tensor:
        """``forward`` of the per-edge input ``cat[h_sender, h_receiver, extra]`` ``(B, E, out)``
        from node features ``h`` ``(B, n, F)`` (``Graph.edge_linear``)."""
        return self.after_first(graph.edge_linear(self.net[0], h, extra))

    def after_first(self, a: Tensor) -> Tensor:
        """The layers after the first linear one, given its output ``a`` ``(..., hidden)``."""
        h = self.net[1:](a)
        return self.norm(h.reshape(-1, h.shape[-1])).reshape(h.shape)


class Graph(nn.Module):
    """The n(n-1) directed edges ``e = (receiver, sender)`` of K_n in row-major order."""

    def __init__(self, n: int) -> None:
        super().__init__()
        off = ~torch.eye(n, dtype=torch.bool)
        recv, send = off.nonzero(as_tuple=True)
        self.n = n
        self.register_buffer("recv", recv, persistent=False)
        self.register_buffer("send", send, persistent=False)

    def edge_linear(self, linear: nn.Linear, h: Tensor, extra: Tensor | None = None) -> Tensor:
        """``linear(cat[h_sender, h_receiver, extra])`` per edge ``(B, E, out)`` from node features
        ``h`` ``(B, n, F)`` and optional edge features ``extra`` ``(B, E, F')``. A linear map of a
        concatenation is the sum of its blocks' maps, ``W [a; b] = W_a a + W_b b``, so the node
        blocks are mapped once per vertex (n rows instead of n(n-1)); the edges are ordered by
        receiver, so the receiver's term broadcasts over its n - 1 edges."""
        b, n, f = h.shape
        w = linear.weight
        out = F.linear(h, w[:, :f]).index_select(1, self.send).view(b, n, n - 1, -1)
        out = out + F.linear(h, w[:, f : 2 * f], linear.bias).unsqueeze(2)
        if extra is not None:
            out = out + F.linear(extra, w[:, 2 * f :]).view(out.shape)
        return out.view(b, n * (n - 1), -1)

    def to_nodes(self, e: Tensor, mean: bool) -> Tensor:
        """Edge features ``(B, E, F)`` summed (or averaged over n) per receiver -> ``(B, n, F)``."""
        out = e.new_zeros(e.shape[0], self.n, e.shape[-1]).index_add(1, self.recv, e)
        return out / self.n if mean else out


class NRIEncoder(nn.Module):
    """Trajectories ``(B, n, T, 2)`` -> edge logits ``(B, E, n_out)`` (module docstring)."""

    def __init__(self, graph: Graph, n_in: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.graph = graph
        self.mlp1 = NRIMLP(n_in, hidden, hidden)
        self.mlp2 = NRIMLP(2 * hidden, hidden, hidden)
        self.mlp3 = NRIMLP(hidden, hidden, hidden)
        self.mlp4 = NRIMLP(3 * hidden, hidden, hidden)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: Tensor) -> Tensor:
        g = self.graph
        e = self.mlp2.on_edges(g, self.mlp1(x.flatten(2)))
        h = self.mlp3(g.to_nodes(e, mean=True))
        return self.head(self.mlp4.on_edges(g, h, e))


class NRIDecoder(nn.Module):
    """One-step position predictor given edge-type weights ``(B, E, 2)`` (module docstring)."""

    def __init__(self, graph: Graph, hidden: int) -> None:
        super().__init__()
        self.graph = graph
        self.messages = nn.ModuleList(
            nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
            for _ in range(2)
        )
        self.out = nn.Sequential(
            nn.Linear(2 + hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 2),
        )

    def step(self, x: Tensor, types: Tensor) -> Tensor:
        """Positions ``(B, n, 2)`` -> predicted next positions ``(B, n, 2)``: the messages of
        ``dense_messages``, or of ``nonzero_messages`` where ``types`` needs no gradient (on
        the CPU: the row selection reads a tensor)."""
        if types.requires_grad or types.device.type != "cpu":
            agg = self.dense_messages(x, types)
        else:
            agg = self.nonzero_messages(x, types)
        return x + self.out(torch.cat([x, agg], dim=-1))

    def dense_messages(self, x: Tensor, types: Tensor) -> Tensor:
        """Each edge type's message on every edge, weighted by ``types`` ``(B, E, 2)`` and summed
        per receiver: ``(B, n, hidden)``."""
        no_edge, edge = (net[1:](self.graph.edge_linear(net[0], x)) for net in self.messages)
        msg = torch.addcmul(no_edge * types[..., :1], edge, types[..., 1:])
        return self.graph.to_nodes(msg, mean=False)

    def nonzero_messages(self, x: Tensor, types: Tensor) -> Tensor:
        """``dense_messages`` with each type's MLP run only on the edges where its weight is
        nonzero (a zero weight adds an exact zero): hard types (evaluation's samples,
        score-function samples) halve the arithmetic or better. The first layer maps each
        vertex's position once, as ``Graph.edge_linear``, and gathers the selected edges."""
        b, n, d = x.shape
        g = self.graph
        edges = g.send.shape[0]
        base = torch.arange(b, device=x.device).repeat_interleave(edges) * n
        send, recv = base + g.send.repeat(b), base + g.recv.repeat(b)
        flat = x.reshape(b * n, d)
        agg = x.new_zeros(b * n, self.messages[0][2].out_features)
        for net, weight in zip(self.messages, types.reshape(b * edges, 2).unbind(-1), strict=True):
            rows = weight.nonzero().squeeze(1)
            first = net[0]
            h = (F.linear(flat, first.weight[:, :d]).index_select(0, send[rows])
                 + F.linear(flat, first.weight[:, d:], first.bias).index_select(0, recv[rows]))
            agg = agg.index_add(0, recv[rows], net[1:](h) * weight[rows].unsqueeze(-1))
        return agg.view(b, n, -1)

    def forward(self, x: Tensor, types: Tensor, prediction_steps: int) -> Tensor:
        """Predictions of frames ``1..T-1`` ``(B, n, T-1, 2)``: rollouts of ``prediction_steps``
        steps (the last one cut at frame T-1) from the true frames ``0, p, 2p, ...``, one after
        the other: stacking the S rollouts into one batch would make every activation S times
        larger (``(S·B, E, hidden)``, 106 MB at B = 128 and S = 9 in evaluation), past the size
        at which the allocator maps, faults in and zeroes fresh pages on every call."""
        t = x.shape[2]
        preds = []
        for start in range(0, t - 1, prediction_steps):
            cur = x[:, :, start]
            for _ in range(min(prediction_steps, t - 1 - start)):
                cur = self.step(cur, types)
                preds.append(cur)
        return torch.stack(preds, dim=2)


class GraphLayout(LatentTask):
    """NRI VAE with the configured latent graph and estimator (module docstring)."""

    config_class = GraphLayoutConfig

    def __init__(self, config: dict, run_dir: str | None = None) -> None:
        super().__init__(config, run_dir)
        cfg, n = self.cfg, self.cfg.data.num_vertices
        self.n = n
        self.latent = self.spec.latent
        self.posterior = self.spec.posterior
        self.graph = Graph(n)
        heads = 2 if self.latent == "edges" else 1
        self.encoder = NRIEncoder(self.graph, 2 * cfg.data.num_frames, cfg.model.hidden, heads)
        self.decoder = NRIDecoder(self.graph, cfg.model.hidden)
        self.structure = {
            "edges": Categorical(2),
            "subset": KSubset(n * (n - 1) // 2, n - 1),
            "tree": SpanningTree(n),
        }[self.latent]
        est_cfg = cfg.estimator_args
        if self.posterior in ("gibbs", "sparse"):  # the ELBO's entropy term, per vertex
            est_cfg = dataclasses.replace(est_cfg, entropy_coeff=1.0 / n)
        self.estimator = self.spec.factory(
            est_cfg, n, n * cfg.data.num_frames * 2, structure=self.structure
        )
        i, j = self.graph.recv, self.graph.send
        lo, hi = torch.minimum(i, j), torch.maximum(i, j)
        # undirected index (i < j, row-major) of every directed edge
        self.register_buffer("pair", lo * n - lo * (lo + 1) // 2 + hi - lo - 1, persistent=False)
        self.best = BestWeights(("encoder.", "decoder.", "estimator."))

    # ---- latent layouts

    def scores(self, x: Tensor) -> Tensor:
        """Encoder logits in the latent's layout: ``(B, E, 2)`` (edges), undirected edge scores
        ``(B, n(n-1)/2)`` (subset) or symmetric ``(B, n, n)`` (tree), directions averaged."""
        logits = self.encoder(x)
        if self.latent == "edges":
            return logits
        b, n = x.shape[0], self.n
        full = logits.new_zeros(b, n, n)
        full[:, self.graph.recv, self.graph.send] = logits[..., 0]
        sym = symmetrized(full)
        if self.latent == "tree":
            return sym
        i, j = torch.triu_indices(n, n, offset=1, device=x.device)
        return sym[:, i, j]

    def edge_weights(self, z: Tensor) -> Tensor:
        """A latent value in its layout -> per directed edge weights of (no edge, edge)."""
        if self.latent == "edges":
            return z
        if self.latent == "tree":
            on = z[:, self.graph.recv, self.graph.send]
        else:
            on = z[:, self.pair]
        return torch.stack([1 - on, on], dim=-1)

    def adjacency(self, z: Tensor) -> Tensor:
        """A hard latent value -> directed 0/1 adjacency ``(B, n, n)``."""
        if self.latent == "tree":
            return z
        on = z[..., 1] if self.latent == "edges" else z[:, self.pair]
        adj = on.new_zeros(on.shape[0], self.n, self.n)
        adj[:, self.graph.recv, self.graph.send] = on
        return adj

    def map_latent(self, scores: Tensor) -> Tensor:
        if self.latent == "edges":
            return nn.functional.one_hot(scores.argmax(-1), 2).to(scores.dtype)
        return self.structure.argmax(scores.detach())

    def sample_latent(self, scores: Tensor) -> Tensor:
        return hard_sample(self.posterior, self.structure, scores)

    # ---- loss

    def nll_fn(self, x: Tensor, prediction_steps: int) -> LossFn:
        """``loss_fn(z, rows)``: Gaussian NLL per vertex of the trajectories ``x[rows]``. Several
        structures per example (score-function samples, SparseMAP's support) are decoded in
        blocks of ``len(x)`` rows: one decoder pass over all of them would allocate every
        activation that many times larger, past the size at which the allocator maps, faults in
        and zeroes fresh pages on every call (the decoder treats rows independently)."""
        var = self.cfg.model.variance

        def nll(z: Tensor, rows: Tensor) -> Tensor:
            xs = x[rows]
            pred = self.decoder(xs, self.edge_weights(z), prediction_steps)
            err = (pred - xs[:, :, 1:]).square().flatten(1).sum(-1)
            return err / (2 * var * self.n)

        def loss_fn(z: Tensor, rows: Tensor) -> Tensor:
            size = x.shape[0]
            if rows.shape[0] <= size:
                return nll(z, rows)
            return torch.cat([nll(*block) for block in zip(z.split(size), rows.split(size))])

        return loss_fn

    def kl(self, scores: Tensor, out: EstimatorOutput | None = None) -> Tensor:
        """Per-vertex KL term ``(B,)`` of the posterior kind (sparse: from ``out.entropy``)."""
        entropy = None if out is None else out.entropy
        return posterior_kl(self.posterior, self.structure, scores, entropy) / self.n

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        scores = self.scores(x)
        out = self.estimate(
            scores, self.nll_fn(x, self.cfg.model.prediction_steps), x.flatten(1)
        )
        loss = out.loss
        kl = None
        if self.posterior == "perturbed":
            kl = self.kl(scores)
            loss = loss + kl.mean()
        self.record_step(out)

        def logs() -> dict[str, Tensor]:
            # sparse posteriors: the estimator's entropy is the KL's only varying part (log|X|/n
            # is constant), computed here only for the log
            step_kl = kl if kl is not None else (
                (log_num_structures(self.structure) - out.entropy) / self.n)
            return {
                "train/loss": loss.detach(),
                "train/neg_elbo": (out.expected_loss + step_kl.detach()).mean(),
                **self.step_logs(out),
            }

        self.log_train(logs)
        return loss

    # ---- evaluation

    @torch.no_grad()
    def evaluate(self, batch: tuple[Tensor, Tensor], modes: bool = True) -> dict[str, Tensor]:
        """Batch means of the evaluation metrics (module docstring); ``modes=False`` leaves out
        those of the MAP structure (``*_mode``: one decoder pass more)."""
        x, adj = batch
        scores = self.scores(x)
        loss_fn = self.nll_fn(x, 1)
        rows = torch.arange(x.shape[0], device=x.device)
        gold = undirected(adj)
        if self.posterior == "sparse":
            out = self.estimator(scores, loss_fn)
            nll, kl = out.expected_loss, self.kl(scores, out)
            z = self.map_latent(scores)
        else:
            z = self.sample_latent(scores)
            nll, kl = loss_fn(z, rows), self.kl(scores)
        stats = {"elbo": -(nll + kl).mean(), "nll": nll.mean(), "kl": kl.mean()}
        readings = [("", z)]
        if modes:
            mode = self.map_latent(scores)
            stats["nll_mode"] = loss_fn(mode, rows).mean()
            readings.append(("_mode", mode))
        for tag, value in readings:
            predicted = undirected(self.adjacency(value))
            stats[f"precision{tag}"], stats[f"recall{tag}"] = precision_recall(predicted, gold)
            stats[f"edge_acc{tag}"] = (predicted == gold).to(x.dtype).mean()
        if self.latent == "edges":
            swapped = undirected(self.adjacency(1 - z))
            stats["edge_acc_swapped"] = (swapped == gold).to(x.dtype).mean()
        return stats

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        stats = self.evaluate(batch, modes=False)  # the MAP readings are logged on test only
        self.best.add(stats["elbo"], batch[0].shape[0])
        self.log("val/elbo", stats["elbo"], prog_bar=True)
        self.log("val/precision", stats["precision"])
        self.log("val/recall", stats["recall"])

    def on_validation_epoch_end(self) -> None:
        self.best.update(self, self.global_step)

    def on_test_start(self) -> None:
        if self.cfg.eval.test_weights == "best":
            self.best.restore(self)

    def summary(self) -> dict[str, float]:
        if self.best.step < 0:  # never validated
            return super().summary()
        return {**super().summary(), "best_val_elbo": self.best.value, "best_step": self.best.step}

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        for key, value in self.evaluate(batch).items():
            self.log(f"test/{key}", value)


def build_run(config: dict, run_dir: str | None) -> tuple[GraphLayout, GraphLayoutData]:
    """The task entry point used by the runner: (LightningModule, LightningDataModule)."""
    cfg = build(GraphLayoutConfig, config)
    data = GraphLayoutData(cfg.data, cfg.seed)
    data.setup()
    return GraphLayout(config, run_dir), data


# metric name -> (label, higher is better); the report shows these, in this order
REPORT_METRICS = {
    "test/elbo": ("test ELBO per vertex (one sample)", True),
    "test/precision": ("edge precision (sample)", True),
    "test/recall": ("edge recall (sample)", True),
    "test/precision_mode": ("edge precision (MAP)", True),
    "test/recall_mode": ("edge recall (MAP)", True),
    "test/nll": ("test NLL per vertex (sample)", False),
    "test/kl": ("KL per vertex", False),
}
CURVE_METRICS = ("val/elbo", "val/precision")
