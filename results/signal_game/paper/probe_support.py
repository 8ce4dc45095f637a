"""Where does a sparsemax-marginalization sender stand? (the sparsemax paragraph in ../README.md)

Usage: LATENTGRAD_DATA=DIR python probe_support.py RUN_DIR
RUN_DIR is a signal_game run (config.yaml, checkpoints/last.ckpt). Over the validation targets it
prints the share of saturated targets (all message scores within 1e-9: sparsemax is uniform), the
quartiles of the sparsemax support (receiver calls per game), and the number of distinct argmax
messages among the targets whose support is not the whole vocabulary.
"""
import sys

import torch

from latentgrad.experiments.saved_run import load_run
from latentgrad.mappings import sparsemax

model, data = load_run(sys.argv[1])
data.setup()
targets = torch.cat([batch[0] for batch in data.val_dataloader()])  # (games, F)
with torch.no_grad():
    scores = model.sender(targets)  # (games, V)
spread = scores.max(-1).values - scores.min(-1).values
support = (sparsemax(scores) > 0).sum(-1)
vocab = scores.shape[-1]
quartiles = support.double().quantile(torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
print(f"validation targets: {len(scores)}")
print(f"saturated (score spread < 1e-9): {(spread < 1e-9).double().mean().item():.3f}")
single = (support == 1).double().mean().item()
print(f"support quartiles: {quartiles.tolist()}, support 1: {single:.3f}")
used = scores.argmax(-1)[support < vocab].unique().numel()
print(f"distinct argmax messages among non-uniform targets: {used}")
print(f"sender input projection norm: {model.sender.project.weight.norm().item():.1f}")
