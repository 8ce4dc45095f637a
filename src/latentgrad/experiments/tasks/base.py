"""The task skeleton: what every experiment task shares, so a task file holds only its data, model
and loss.

A new task ``foo`` is

1. ``Config``: a dataclass subclassing ``TaskConfig`` that sets ``task = "foo"`` and a default
   ``estimator`` and adds its own ``data`` and ``model`` sections (and, when it needs more
   optimiser settings, an ``optim`` section subclassing ``OptimConfig``). ``TaskConfig`` holds the
   run identity (``task``, ``estimator``, ``seed``, ``profile``), ``optim`` (Adam ``lr``,
   ``weight_decay``), ``estimator_args`` and ``trainer``, and checks the estimator name.
2. a ``LightningDataModule`` for its data;
3. a ``LatentTask`` subclass with the model: its encoder produces the estimator's ``scores``, its
   ``loss_fn(z, rows)`` is the decoder's loss of latent values ``z`` for examples ``rows``, and its
   Lightning hooks call the helpers below;
4. ``build_run(config, run_dir) -> (module, datamodule)``, ``REPORT_METRICS`` (metric ->
   (label, higher is better)) and ``CURVE_METRICS`` for the report, and a line in
   ``tasks.registry.TASKS`` and ``configs/foo.yaml``; optionally ``ESTIMATOR_ARGS`` (estimator
   name -> the ``estimator_args`` keys the task itself reads for it, beyond the registry
   entry's ``args``; other keys the user sets are refused before the run).

``LatentTask`` provides:

- estimator construction from the registry (``self.spec``, ``self.estimator``) and
  ``estimate(scores, loss_fn, baseline_input)``, which passes ``baseline_input`` only to
  estimators that take one (NVIL);
- decoder-call accounting: ``record_step(out)`` adds a training step's ``support_size`` to the
  checkpointed totals and the epoch's list (``step_logs(out)``: the step's estimator logs); at
  each epoch end
  the median and quartiles of the epoch's decoder calls per example are logged
  (``train/decoder_calls_median``, ``_q25``, ``_q75``); ``summary()`` gives the run's mean and
  the last epoch's quartiles;
- the estimator's temperatures logged after each training batch (``train/temperature``); the
  schedules advance by themselves once per optimizer step that used them, so the task never steps
  them (a second step per batch would double the annealing under gradient accumulation);
- ``logging_step()``: whether this step's on-step logs reach the loggers (log only then);
  ``log_train(metrics)`` builds the step's training metrics (a callable returning a dict) and
  logs them only then: what is computed only to be logged (an estimator's ``Deferred`` entropy
  and logs, a rate) is not computed on the other steps;
- the three test-time readings (``readings``): ``mode`` (the loss at the most probable latent:
  ``mode_latent``, by default the argmax one-hot of categorical scores), and the estimator
  called in eval mode, whose ``expected_loss`` is the ``expected`` reading for exact
  marginalization (the exact expectation over the support) and the ``sample`` reading (a fresh
  draw) for every other estimator;
- ``configure_optimizers``: Adam (``adam``: the fused update) over all parameters with
  ``optim.lr`` and ``optim.weight_decay``.

Importance-sampled likelihoods live in ``tasks.likelihood``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from latentgrad.estimators.base import EstimatorOutput, LossFn
from latentgrad.estimators.chunking import chunked
from latentgrad.estimators.schedules import TemperatureSchedule
from latentgrad.experiments.config import build, require
from latentgrad.experiments.estimators import ESTIMATORS, estimator_spec
from latentgrad.experiments.schema import EstimatorConfig, TrainerConfig

QUANTILES = {"q25": 0.25, "median": 0.5, "q75": 0.75}


@dataclass
class OptimConfig:
    """Adam settings of the run."""

    lr: float = 1e-3
    weight_decay: float = 0.0

    def validate(self) -> None:
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")


@dataclass
class TaskConfig:
    """The sections every task has; a task's ``Config`` subclasses it (module docstring)."""

    task: str = ""
    estimator: str = ""
    seed: int = 0
    profile: str = "full"
    optim: OptimConfig = field(default_factory=OptimConfig)
    estimator_args: EstimatorConfig = field(default_factory=EstimatorConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> None:
        known = ", ".join(ESTIMATORS)
        require(self.estimator in ESTIMATORS, "estimator", f"must be one of {known}, got "
                f"{self.estimator!r}")


def current_temperatures(estimator: nn.Module) -> list[Tensor]:
    """The temperature (scalar) of every ``TemperatureSchedule`` inside ``estimator``, in module
    order, read under ``no_grad`` so that reading does not count as a use that advances them."""
    with torch.no_grad():
        return [m() for m in estimator.modules() if isinstance(m, TemperatureSchedule)]


@contextmanager
def evaluation() -> Iterator[None]:
    """No gradient, but outside ``torch.inference_mode`` (which Lightning's validation and test
    loops enter): solvers that read structure weights by autograd (SparseMAP) need it off."""
    with torch.inference_mode(False), torch.no_grad():
        yield


def adam(params: Any, **kwargs: Any) -> torch.optim.Adam:
    """``torch.optim.Adam(params, **kwargs)`` with the fused update (one kernel per parameter
    tensor, on CPU and GPU). The same values as PyTorch's default per-tensor update up to float
    rounding; on CPU 3.3x faster than the multi-tensor (``foreach``) update and 3.7x faster than
    the default (mixed_vae's 1.3M parameters, one thread: 1.3 ms per step instead of 4.4 and
    5.0)."""
    return torch.optim.Adam(params, fused=True, **kwargs)


def categorical_mode(scores: Tensor) -> Tensor:
    """The most probable category of scores ``(B, K)`` as one-hot rows ``(B, K)``."""
    return torch.nn.functional.one_hot(scores.argmax(-1), scores.shape[-1]).to(scores.dtype)


class LatentTask(L.LightningModule):
    """A LightningModule with one estimator-trained latent (module docstring).

    ``config`` is the resolved config as a plain dict (checkpointed with ``dims``, the data-derived
    sizes the model needs); ``self.cfg`` is the built ``config_class``.
    """

    config_class: type[TaskConfig] = TaskConfig
    #: weights kept at the best validation score, where a task keeps them (checkpointed here)
    best: BestWeights | None = None

    def __init__(self, config: dict, run_dir: str | None = None, **dims: Any) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config, **dims})
        self.cfg = build(self.config_class, config)
        self.run_dir = run_dir
        self.spec = estimator_spec(self.cfg.estimator)
        self.register_buffer("decoder_calls_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("decoder_calls_count", torch.zeros((), dtype=torch.float64))
        self._epoch_calls: list[Tensor] = []

    # ---- estimator

    def make_estimator(self, num_classes: int, features_dim: int, **kwargs: Any) -> nn.Module:
        """The configured estimator for a latent of ``num_classes`` categories (or bits), with an
        NVIL baseline on ``features_dim`` inputs; ``kwargs`` go to the registry factory."""
        return self.spec.factory(self.cfg.estimator_args, num_classes, features_dim, **kwargs)

    def estimate(
        self, scores: Any, loss_fn: LossFn, baseline_input: Tensor | None = None
    ) -> EstimatorOutput:
        """``self.estimator(scores, loss_fn)``, with ``baseline_input`` for estimators that
        take one; ``loss_fn`` evaluated in checkpointed chunks of ``trainer.loss_chunk`` pairs
        when that is set."""
        if self.cfg.trainer.loss_chunk is not None:
            loss_fn = chunked(loss_fn, self.cfg.trainer.loss_chunk)
        if self.spec.needs_baseline_input:
            return self.estimator(scores, loss_fn, baseline_input=baseline_input)
        return self.estimator(scores, loss_fn)

    # ---- decoder calls

    def record_step(self, out: EstimatorOutput) -> None:
        """Add a training step's decoder calls (``out.support_size`` (B,)) to the run's totals
        and the epoch's list."""
        calls = out.support_size.detach().to(torch.float64)
        self.decoder_calls_sum += calls.sum()
        self.decoder_calls_count += calls.numel()
        self._epoch_calls.append(calls)  # stays on the device: a copy to the host every step waits

    @staticmethod
    def step_logs(out: EstimatorOutput) -> dict[str, Tensor]:
        """A training step's estimator logs under ``train/``: ``out.logs``, the mean expected
        loss, entropy and decoder calls (reading them computes the ``Deferred`` ones)."""
        skip = ("support_size", "entropy")
        return {
            **{f"train/{k}": v for k, v in out.logs.items() if k not in skip},
            "train/expected_loss": out.expected_loss.mean(),
            "train/entropy": out.entropy.mean(),
            "train/decoder_calls": out.support_size.to(torch.float64).mean().float(),
        }

    def epoch_call_quantiles(self) -> dict[str, float]:
        """Median and quartiles of the decoder calls per example recorded this epoch."""
        if not self._epoch_calls:
            return {}
        calls = self._epoch_calls_on_host()
        return {name: float(calls.quantile(q)) for name, q in QUANTILES.items()}

    def _epoch_calls_on_host(self) -> Tensor:
        """This epoch's decoder calls per example so far, (N,) float64 on the CPU: one copy."""
        if not self._epoch_calls:
            return torch.zeros(0, dtype=torch.float64)
        device = self._epoch_calls[-1].device  # the restored chunk may be on the CPU
        return torch.cat([c.to(device) for c in self._epoch_calls]).cpu()

    def on_train_epoch_start(self) -> None:
        self._epoch_calls = []

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["epoch_decoder_calls"] = self._epoch_calls_on_host()
        if self.best is not None:
            checkpoint["best_weights"] = self.best.state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the calls of the checkpoint's epoch so far: Lightning resumes inside that
        epoch without calling ``on_train_epoch_start``; after a checkpoint from an epoch's end a
        new epoch starts and clears them."""
        saved = checkpoint.get("epoch_decoder_calls")
        if saved is not None:
            self._epoch_calls = [saved.to(torch.float64)] if saved.numel() else []
        if self.best is not None:
            self.best.load(checkpoint.get("best_weights"))

    def on_train_epoch_end(self) -> None:
        for name, value in self.epoch_call_quantiles().items():
            self.log(f"train/decoder_calls_{name}", value)

    def mean_decoder_calls(self) -> float:
        """Decoder calls per example over all recorded steps (NaN before the first one)."""
        count = float(self.decoder_calls_count)
        return float(self.decoder_calls_sum) / count if count else float("nan")

    def summary(self) -> dict[str, float]:
        """Run-level numbers for ``metrics.json`` beyond the logged test metrics: the mean decoder
        calls per example over training and the quartiles of the last epoch trained
        (``decoder_calls_final_median``, ``_q25``, ``_q75``)."""
        final = {f"decoder_calls_final_{k}": v for k, v in self.epoch_call_quantiles().items()}
        return {"decoder_calls": self.mean_decoder_calls(), **final}

    # ---- schedules

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        """Log the estimator's temperatures (the schedules step themselves, module docstring)."""
        if self.logging_step():
            for tau in current_temperatures(self.estimator):
                self.log("train/temperature", tau.float())

    # ---- logging

    def logging_step(self) -> bool:
        """Whether Lightning writes this training step's on-step logs to the loggers (every
        ``trainer.log_every_n_steps`` steps, and at a stop; always outside a trainer). Values
        ``self.log`` receives on the other steps are discarded, yet each call costs about a
        millisecond of CPU per key (Lightning moves its result state per call): tasks log
        per-step metrics only when this holds, which writes the same logs."""
        trainer = self._trainer
        return trainer is None or trainer._logger_connector.should_update_logs

    def log_train(self, metrics: Callable[[], dict[str, Tensor]]) -> None:
        """``self.log_dict(metrics())`` on the steps the loggers write (``logging_step``); on the
        other steps ``metrics`` is not called."""
        if self.logging_step():
            self.log_dict(metrics())

    # ---- test-time readings

    def mode_latent(self, scores: Any) -> Tensor:
        """The most probable latent value of each example (default: categorical argmax)."""
        return categorical_mode(scores)

    @property
    def estimator_reading(self) -> str:
        """``expected`` for exact marginalization, ``sample`` for every other estimator."""
        return "expected" if self.spec.exact else "sample"

    def readings(
        self, scores: Any, loss_fn: LossFn, baseline_input: Tensor | None = None
    ) -> tuple[dict[str, Tensor], EstimatorOutput]:
        """Per-example ``(B,)`` losses of the ``mode`` reading and of the estimator's reading
        (``estimator_reading``), and the estimator's output (its ``support_size`` is the
        test-time decoder calls). Call in eval mode; runs under ``evaluation()``."""
        with evaluation():
            z = self.mode_latent(scores)
            rows = torch.arange(z.shape[0], device=z.device)
            out = self.estimate(scores, loss_fn, baseline_input)
            return {"mode": loss_fn(z, rows), self.estimator_reading: out.expected_loss}, out

    # ---- optimiser

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over all parameters with ``optim.lr`` and ``optim.weight_decay``."""
        optim = self.cfg.optim
        return adam(self.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)


class BestWeights:
    """The weights (state-dict entries under ``prefixes``) at the best validation score so far
    (higher is better: an ELBO, a negated NLL): ``add`` each validation batch's mean score,
    ``update`` at the end of the validation epoch, ``restore`` them into the module (or use them
    inside ``swapped``) for the test; checkpointed with ``state``/``load``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.prefixes = prefixes
        self.value, self.step = -math.inf, -1
        self.weights: dict[str, Tensor] | None = None
        self._sum, self._count = 0.0, 0

    def add(self, elbo: Tensor, count: int) -> None:
        self._sum += float(elbo) * count
        self._count += count

    def update(self, module: nn.Module, step: int) -> None:
        if self._count:
            value = self._sum / self._count
            if value > self.value:
                self.value, self.step = value, step
                self.weights = {
                    k: v.detach().clone()
                    for k, v in module.state_dict().items()
                    if k.startswith(self.prefixes)
                }
        self._sum, self._count = 0.0, 0

    def restore(self, module: nn.Module) -> None:
        if self.weights is not None:
            module.load_state_dict(self.weights, strict=False)

    @contextmanager
    def swapped(self, module: nn.Module) -> Iterator[None]:
        """The best weights in ``module`` inside the block, its own weights after it."""
        own = {k: v.detach().clone() for k, v in module.state_dict().items()
               if k.startswith(self.prefixes)}
        self.restore(module)
        try:
            yield
        finally:
            module.load_state_dict(own, strict=False)

    def state(self) -> dict:
        return {"value": self.value, "step": self.step, "weights": self.weights}

    def load(self, state: dict | None) -> None:
        if state is not None:
            self.value, self.step, self.weights = state["value"], state["step"], state["weights"]


class SampledEvaluation(LatentTask):
    """A ``LatentTask`` whose ``evaluate(images, n_samples)`` returns per-example ``(B,)``
    metrics, logged as batch means under ``val/`` and ``test/`` with ``importance.val_samples``
    (``val_samples_at`` the epoch) / ``importance.test_samples`` samples (batches are
    ``(images,)``); ``dataset_label`` (the data
    actually used, e.g. ``mnist-substitute``) goes to ``metrics.json``."""

    progress_metric = "nll"
    dataset_label = ""
    #: state-dict prefixes of the weights kept at the lowest validation ``progress_metric``; set:
    #: the test is also run with them and logged under ``test_best/`` (a second report)
    best_weights_prefixes: tuple[str, ...] = ()

    def __init__(self, config: dict, run_dir: str | None = None, **dims: Any) -> None:
        super().__init__(config, run_dir, **dims)
        prefixes = self.best_weights_prefixes
        self.best = BestWeights(prefixes) if prefixes else None

    def evaluate(self, images: Tensor, n_samples: int) -> dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _log_eval(self, prefix: str, images: Tensor, n_samples: int) -> dict[str, Tensor]:
        stats = self.evaluate(images, n_samples)
        for key, value in stats.items():
            self.log(f"{prefix}/{key}", value.mean(), prog_bar=key == self.progress_metric)
        return stats

    def validation_step(self, batch: tuple[Tensor], batch_idx: int) -> None:
        samples = self.cfg.importance.val_samples_at(self.current_epoch)
        stats = self._log_eval("val", batch[0], samples)
        if self.best is not None and not self.trainer.sanity_checking:
            self.best.add(-stats[self.progress_metric].mean(), batch[0].shape[0])

    def on_validation_epoch_end(self) -> None:
        if self.best is not None and not self.trainer.sanity_checking:
            self.best.update(self, self.global_step)

    def test_step(self, batch: tuple[Tensor], batch_idx: int) -> None:
        self._log_eval("test", batch[0], self.cfg.importance.test_samples)
        if self.best is not None and self.best.weights is not None:
            with self.best.swapped(self):
                self._log_eval("test_best", batch[0], self.cfg.importance.test_samples)

    def summary(self) -> dict:
        best = {} if self.best is None or self.best.step < 0 else {"best_val_step": self.best.step}
        return {**super().summary(), "dataset": self.dataset_label, **best}
