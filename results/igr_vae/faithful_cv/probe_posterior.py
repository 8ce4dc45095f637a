"""Where an IGR-I run's posterior carries its information (the numbers in ../README.md).

Usage: LATENTGRAD_DATA=DIR python probe_posterior.py RUN_DIR [N_TEST_IMAGES]
RUN_DIR is a finished igr_i, igr_planar or gumbel_concrete run (config.yaml,
checkpoints/last.ckpt). For Gumbel-Softmax it prints the quantiles of each posterior's largest
class probability. For IGR-I (IGR-Planar: its base Gaussian, before the flows), over the first N
test images: the quantiles of σ and |μ| of the 20 × 9 Gaussian coordinates, the
closed-form KL to the prior N(μ₀, 1) (μ₀ = −Φ⁻¹(K^(−1/(K−1)))), how many coordinates per image
have a small σ, and how many (variable, coordinate) pairs are ever active (σ < 0.5).
"""
import sys

import torch
from torch.distributions import Normal, kl_divergence

from latentgrad.distributions.igr import uniform_prior_loc
from latentgrad.experiments.saved_run import load_run

n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
model, data = load_run(sys.argv[1])


def quantiles(t: torch.Tensor) -> list[float]:
    """The 10%, 50% and 90% quantiles of all entries of ``t``."""
    levels = torch.tensor([0.1, 0.5, 0.9])
    return [round(v, 3) for v in torch.quantile(t.flatten(), levels).tolist()]


if model.cfg.estimator == "gumbel_concrete":
    with torch.no_grad():
        probs = model.scores(data.test.tensors[0][:n]).softmax(-1)  # (N, V, K)
    print("largest class probability, quantiles (10/50/90%)", quantiles(probs.amax(-1)))
    sys.exit()
with torch.no_grad():
    loc, log_scale = model.scores(data.test.tensors[0][:n]).unbind(-2)  # (N, V, K - 1) each
sigma = log_scale.exp()
mu0 = uniform_prior_loc(loc.shape[-1] + 1, 1.0).to(loc)
kl = kl_divergence(Normal(loc, sigma), Normal(mu0, 1.0))  # per coordinate, σ₀ = 1
print("sigma quantiles (10/50/90%)", quantiles(sigma))
print("|mu| quantiles (10/50/90%)", quantiles(loc.abs()))
print("prior mu0", round(mu0.flatten()[0].item(), 4))
print("closed-form KL per image", round(kl.sum((1, 2)).mean().item(), 2))
for t in (0.5, 0.1):
    per_image = (sigma < t).sum((1, 2)).float().mean().item()
    print(f"coordinates with sigma < {t} per image", round(per_image, 2))
top = kl.flatten(1).sort(-1, descending=True).values[:, :10].sum(1) / kl.sum((1, 2))
print("share of the KL in the 10 costliest coordinates", round(top.mean().item(), 3))
print("(variable, coordinate) pairs ever active (sigma < 0.5)", (sigma < 0.5).any(0).sum().item(),
      "of", sigma[0].numel())
