"""Probe of a graph_layout tree run's encoder: are the true edges scored highest or lowest?

    PYTHONPATH=src LATENTGRAD_DATA=<data> python results/graph_layout/probe_edge_scores.py CELL

CELL is a run folder with ``config.yaml`` and ``checkpoints/last.ckpt`` (an ``in_progress/``
snapshot or a sweep's cell). Prints, over the first 512 validation layouts, the mean encoder
score of the true and of the other undirected pairs, and the fraction of true edges among the
n - 1 highest- and the n - 1 lowest-scored pairs of each layout.
"""

import sys

import torch

from latentgrad.experiments.checkpoint import load_training_checkpoint
from latentgrad.experiments.saved_run import load_run
from latentgrad.experiments.tasks.structured import undirected

cell = sys.argv[1]
model, data = load_run(cell)
step = load_training_checkpoint(f"{cell}/checkpoints/last.ckpt")["global_step"]
x, adj = data.load()["valid"][:512]
with torch.no_grad():
    scores = model.scores(x)  # (B, n, n), symmetric
n = scores.shape[1]
i, j = torch.triu_indices(n, n, 1)
pair_scores = scores[:, i, j]
true = undirected(adj)  # (B, n(n-1)/2), the same i < j order
high = true.gather(1, pair_scores.topk(n - 1, dim=1).indices).float().mean()
low = true.gather(1, (-pair_scores).topk(n - 1, dim=1).indices).float().mean()
print(f"step {step}: mean score {pair_scores[true].mean():.2f} on true edges, "
      f"{pair_scores[~true].mean():.2f} on the others")
print(f"true edges among the {n - 1} highest-scored pairs {high:.3f}, among the {n - 1} lowest "
      f"{low:.3f} (chance {true.float().mean():.3f})")
