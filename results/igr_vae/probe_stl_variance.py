"""Gradient variance of a trained igr_vae run's training loss with and without sticking the landing.

    PYTHONPATH=src LATENTGRAD_DATA=<data> python results/igr_vae/probe_stl_variance.py CELL [N] [S]

CELL is a run folder with ``config.yaml`` and ``checkpoints/last.ckpt`` (an IGR estimator). For
the first N (default 100) images of the training set, draws S (default 200) one-sample losses
(−log p(x|ψ) + the sampled KL) with ``stl`` off and on, from the same noise, and prints for each:
the mean over images of the summed per-coordinate variance of the per-image gradient with
respect to the encoder's output (the scores), and of the squared norm of the mean gradient. The
means estimate the same gradient (STL drops a zero-mean term), so their difference is reported
in units of its standard error.
"""

import sys

import torch

from latentgrad.experiments.checkpoint import load_training_checkpoint
from latentgrad.experiments.saved_run import load_run

cell = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
draws = int(sys.argv[3]) if len(sys.argv) > 3 else 200
model, data = load_run(cell)
step = load_training_checkpoint(f"{cell}/checkpoints/last.ckpt")["global_step"]
model.train()  # relaxed draws, as in training
data.setup("fit")
x = data.train.tensors[0][:n]
with torch.no_grad():
    scores = model.scores(x)
grads = {}
for stl in (False, True):
    model.estimator.stl = stl
    torch.manual_seed(0)
    per_draw = []
    for _ in range(draws):
        s = scores.clone().requires_grad_()
        out = model.estimate(s, model.loss_fn(x))
        per_draw.append(torch.autograd.grad(out.loss * n, s)[0].flatten(1))  # per image
    grads[stl] = torch.stack(per_draw)  # (S, N, P)
for stl, g in grads.items():
    var = g.var(0).sum(-1).mean().item()
    sq = g.mean(0).pow(2).sum(-1).mean().item()
    print(f"stl={stl}: gradient variance per image {var:.4g} (summed over "
          f"{g.shape[-1]} score coordinates), squared norm of the mean gradient {sq:.4g}")
diff = grads[True].mean(0) - grads[False].mean(0)
se = ((grads[True] - grads[False]).var(0) / draws).sqrt()
print(f"step {step}, {n} images, {draws} draws: the mean gradients differ by "
      f"{(diff.abs() / se.clamp_min(1e-30)).mean().item():.2f} standard errors on average "
      f"(unbiased: about 0.8)")
