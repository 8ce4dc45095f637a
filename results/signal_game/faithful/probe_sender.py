"""Is a signaling-game sender still trainable? (the Gumbel numbers in ../README.md)

Usage: LATENTGRAD_DATA=DIR python probe_sender.py RUN_DIR
RUN_DIR is a finished signal_game run (config.yaml, checkpoints/last.ckpt). On one training batch
it prints each parameter's norm and gradient norm, the spread of the sender's scores across
messages, and the pre-activation of the scalar network's output h = sigmoid(Σ_c v_c sigmoid(w_c e)).
"""
import sys

import torch

from latentgrad.experiments.saved_run import load_run

model, data = load_run(sys.argv[1])
model.train()
model.log_train = lambda *args, **kwargs: None  # no Lightning trainer attached
batch = next(iter(data.train_dataloader()))
model.training_step(batch, 0).backward()
for name, p in model.named_parameters():
    print(f"{name:28s} norm {p.norm().item():9.4f}  grad norm {p.grad.norm().item():.3e}")
x = batch[0]
with torch.no_grad():
    scores = model.sender(x)  # (B, V)
    e = model.sender.project(x)
    pre = torch.sigmoid(e.unsqueeze(-1) * model.sender.w) @ model.sender.v  # (B, hidden)
print("score spread across messages (std over V, batch mean)", f"{scores.std(1).mean().item():.3e}")
print("pre-activation of h: median", f"{pre.median().item():.2f}", "max", f"{pre.max().item():.2f}")
