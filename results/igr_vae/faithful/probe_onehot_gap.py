"""When does an igr_vae run's decoder stop reading the one-hots well? (onehot_gap.md)

Usage: LATENTGRAD_DATA=DIR python probe_onehot_gap.py RUN_DIR CKPT [CKPT ...] [--images N]
RUN_DIR is an igr_vae run (its config.yaml); each CKPT is a checkpoint that run wrote at some step
(copies of its last.ckpt taken while it trained). For each, on the first N (default 2000) test
images, it prints the test metrics of the run's own evaluation: the relaxed −ELBO the run trains,
−log p(x|mode) at the one-hot of the posterior's mode, the paper's NLL estimator over hard samples
and the samples' distance to the nearest vertex, so that the relaxed and the one-hot model can be
followed through training.
"""
import argparse

import torch

from latentgrad.experiments.checkpoint import load_training_checkpoint
from latentgrad.experiments.saved_run import load_run

parser = argparse.ArgumentParser()
parser.add_argument("run_dir")
parser.add_argument("checkpoints", nargs="+")
parser.add_argument("--images", type=int, default=2000)
args = parser.parse_args()

rows = []
for ckpt in args.checkpoints:
    model, data = load_run(args.run_dir, checkpoint=ckpt)
    step = load_training_checkpoint(ckpt)["global_step"]
    data.setup("test")
    x = torch.cat([batch[0] for batch in data.test_dataloader()])[: args.images]
    torch.manual_seed(0)
    sums: dict[str, float] = {}
    for chunk in x.split(500):
        for key, value in model.evaluate(chunk).items():
            sums[key] = sums.get(key, 0.0) + value.double().sum().item()
    rows.append((step, {k: v / len(x) for k, v in sums.items()}))
keys = ["neg_elbo", "mode_nll", "nll_paper", "vertex_distance"]
print("| step | " + " | ".join(keys) + " |")
print("|---|" + "---|" * len(keys))
for step, stats in sorted(rows, key=lambda r: r[0]):
    print(f"| {step} | " + " | ".join(f"{stats[k]:.4g}" for k in keys) + " |")
