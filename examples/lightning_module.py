"""An estimator inside your own ``LightningModule``.

The estimator is a submodule like any layer: Lightning moves it to the device, puts it in
train/eval mode, and saves its state (running baselines, temperature schedules) in checkpoints.
Temperature schedules advance by themselves once per optimiser step in training mode.

    python examples/lightning_module.py [--steps 200] [--estimator sparsemax|gumbel|sfe]

Time: measured once with the default arguments on scikit-learn's 8x8 digits (no MNIST under
$LATENTGRAD_DATA): 26 s wall, 6.4 s CPU, one thread (OMP_NUM_THREADS=1, nice -n 5), on a shared
2-core machine with one core busy with a background training sweep (load average about 8).

What to look at: the logged training loss and decoder calls per example, and the validation
reconstruction read at the latent's mode (the estimator's ``eval()`` behaviour).
"""

from __future__ import annotations

import argparse
import logging
import warnings

import lightning as L
import torch
from _data import binary_images
from torch import nn

from latentgrad.estimators import (
    ExponentialDecay,
    GumbelSoftmax,
    ScoreFunction,
    SparsemaxMarginalization,
)

ESTIMATORS = {
    "sparsemax": lambda: SparsemaxMarginalization(),
    "gumbel": lambda: GumbelSoftmax(ExponentialDecay(1.0, rate=1e-3, every=10, floor=0.5),
                                    straight_through=True),
    "sfe": lambda: ScoreFunction(baseline="self_critic"),
}


class DiscreteAutoencoder(L.LightningModule):
    def __init__(self, d_in: int, k: int, estimator: nn.Module) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d_in, 128), nn.ReLU(), nn.Linear(128, k))
        self.decoder = nn.Sequential(nn.Linear(k, 128), nn.ReLU(), nn.Linear(128, d_in))
        self.estimator = estimator

    def _run(self, x):
        def loss_fn(z, rows):
            return nn.functional.binary_cross_entropy_with_logits(
                self.decoder(z), x[rows], reduction="none").sum(-1)

        return self.estimator(self.encoder(x), loss_fn)

    def training_step(self, batch, batch_idx):
        out = self._run(batch[0])
        self.log("train/loss", out.expected_loss.mean(), prog_bar=True)
        self.log("train/decoder_calls", out.support_size.float().mean(), prog_bar=True)
        return out.loss

    def validation_step(self, batch, batch_idx):
        out = self._run(batch[0])
        self.log("val/reconstruction", out.expected_loss.mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--estimator", choices=sorted(ESTIMATORS), default="sparsemax")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)   # no banners or tips
    torch.manual_seed(0)
    x, name = binary_images(2000)
    n_train = int(0.8 * x.shape[0])
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:n_train]),
                                        batch_size=64, shuffle=True)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[n_train:]), batch_size=256)
    model = DiscreteAutoencoder(x.shape[1], 10, ESTIMATORS[args.estimator]())
    trainer = L.Trainer(max_steps=args.steps, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False,
                        val_check_interval=None, check_val_every_n_epoch=1, accelerator="cpu")
    trainer.fit(model, train, val)
    metrics = {k: round(float(v), 3) for k, v in trainer.callback_metrics.items()}
    print(f"data: {name}; estimator: {args.estimator}; after {trainer.global_step} steps:")
    for key in sorted(metrics):
        print(f"  {key:24s} {metrics[key]}")


if __name__ == "__main__":
    main()
