"""Exact resume: a run resumed from any checkpoint, mid-epoch included, ends bit-identical to the
uninterrupted run, with nothing resume-specific in the task files.

Three pieces, installed by the runner around any task's LightningModule and LightningDataModule:

- ``StepSeeds`` (callback): before every training batch, the global RNGs (python ``random``, numpy,
  torch CPU and CUDA) are re-seeded from ``(run seed, rank, epoch, batch index)``; before every
  validation and test pass from ``(run seed, rank, phase, global step)``. Every draw a task makes
  from the global RNGs (dynamic binarisation, reparameterisation noise, estimator samples, game
  sampling inside a step) is then a function of the position in the run alone, which the checkpoint
  holds, instead of the whole history of draws since the start.
- ``ResumableLoader``: replaces each training ``DataLoader`` the datamodule returns. Its batch order
  for pass ``k`` of epoch ``e`` is the loader's own sampler iterated under a torch RNG seeded from
  ``(run seed, e, loader index, k)``, sharded over DDP ranks; it implements Lightning's stateful
  loader protocol (``state_dict``/``load_state_dict``, saved in the checkpoint's fit-loop state),
  holding the number of passes started and the batches yielded in the current one, so a resumed
  run skips exactly the batches already trained on.
- ``EpochSafeCheckpoint``: step checkpoints that never fall between an epoch's last batch and
  its validation, the one point Lightning does not resume from exactly.

The rest of the state is in the checkpoint already: weights and buffers (estimator baselines,
temperature schedules), optimizer state, loop progress and the loggers' step.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader


def derived_seed(*key: object) -> int:
    """A 63-bit seed that is a fixed function of ``key`` (independent of Python's hash salt)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_all(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and every accelerator). Without
    an accelerator only torch's CPU generator is seeded (the same state ``torch.manual_seed``
    gives): ``torch.manual_seed`` also queues lazy seeding for each absent device type, formatting
    a stack trace each time, ~0.6 ms per call, paid before every training batch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global RNG is what tasks may use
    if torch.accelerator.is_available():
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


class StepSeeds(L.Callback):
    """Re-seeds the global RNGs before every training batch and every validation/test pass from
    the run seed and the position in the run (module docstring)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        seed_all(derived_seed(self.seed, trainer.global_rank, "train", trainer.current_epoch,
                              batch_idx))  # fmt: skip

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed_all(derived_seed(self.seed, trainer.global_rank, "validate", trainer.global_step))

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed_all(derived_seed(self.seed, trainer.global_rank, "test", trainer.global_step))


class EpochSafeCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose every-``n``-steps save falls on an epoch's last batch is taken at
    the end of that epoch instead, after its validation: Lightning cannot resume exactly from a
    checkpoint taken between an epoch's last batch and its validation (it skips that validation
    and starts the next epoch from the old epoch's data position). Conversely, a run that
    ``trainer.max_steps`` stops inside an epoch is saved at that last batch, as a step
    checkpoint: saved at the cut epoch's end, the epoch would count as finished, and a resume
    with more steps would skip the rest of its batches. A run that SIGTERM stops is saved the
    same way at the batch where Lightning stops it, so a resume repeats none of its steps. A
    SIGTERM that arrives in an epoch's last batch or its validation is held until the epoch's
    end (Lightning would stop inside the validation, where no checkpoint can be exact): the
    validation finishes, the epoch is saved, and the run stops there. Under DDP a SIGTERM still
    resumes from the previous checkpoint."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._deferred = False
        self._held_sigterm = False

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._deferred = self._every_n_train_steps >= 1 and (
                trainer.global_step % self._every_n_train_steps == 0
            )
            self._deferred |= self._hold_sigterm(trainer)
            return
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        # one process only: under DDP the ranks learn of a SIGTERM at different batches, and a
        # save (a collective) on one of them alone would wait for the others forever
        sigterm = trainer.received_sigterm and trainer.world_size == 1
        stopped = 0 < trainer.max_steps <= trainer.global_step or sigterm
        if stopped and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        super().on_validation_batch_end(trainer, pl_module, *args, **kwargs)
        epoch_end = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if trainer.state.fn == "fit" and not trainer.sanity_checking and epoch_end:
            self._deferred |= self._hold_sigterm(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._deferred and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        self._deferred = False
        if self._held_sigterm:  # Lightning stops the run right after the epoch-end hooks
            trainer._signal_connector.received_sigterm = True
            self._held_sigterm = False

    def _hold_sigterm(self, trainer: L.Trainer) -> bool:
        """Take back a SIGTERM Lightning has received (one process only: under DDP every rank
        must stop at the same point), to be given back at the epoch's end; whether one was."""
        connector = getattr(trainer, "_signal_connector", None)
        if trainer.world_size != 1 or not getattr(connector, "received_sigterm", False):
            return False
        connector.received_sigterm = False
        self._held_sigterm = True
        return True


class _Batches:
    """A batch sampler over a list of index batches that can be replaced between passes."""

    def __init__(self) -> None:
        self.batches: list[Any] = []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ResumableLoader:
    """A training ``DataLoader`` with a reproducible, resumable batch order (module docstring).

    ``loader``: the task's loader (any sampler drawing from torch's global RNG, e.g. the
    ``shuffle=True`` one, or from its own ``generator``, or a sequential one; ``batch_size=None``
    loaders yield one item per index). ``key``: what the order depends on besides the pass number,
    e.g. (seed, epoch, index).
    ``rank``/``world_size``: this process's share of the batches under DDP (the batch list is padded
    by wrapping around to a multiple of ``world_size``, then strided).
    """

    def __init__(self, loader: DataLoader, key: tuple, rank: int = 0, world_size: int = 1) -> None:
        self.loader = loader
        self.dataset = loader.dataset
        self.batch_size = loader.batch_size
        self.key = key
        self.rank, self.world_size = rank, world_size
        self._passes = 0  # passes started
        self._position = 0  # batches yielded in the current pass
        self._skip = 0  # batches of the next pass already trained on (set by load_state_dict)
        self._sampler = _Batches()
        # the shuffling sampler sits under a batch sampler, given as the sampler of a
        # ``batch_size=None`` loader (``batched_loader``) or as its batch sampler
        samplers = [loader.sampler, getattr(loader.sampler, "sampler", None),
                    getattr(loader.batch_sampler, "sampler", None)]
        own = {id(g): g for g in (getattr(x, "generator", None) for x in samplers) if g is not None}
        self._generators = [(g, g.get_state()) for g in own.values()]
        auto = loader.batch_sampler is not None
        self._inner = DataLoader(
            loader.dataset,
            batch_size=1 if auto else None,  # with a batch sampler: DataLoader's required default
            sampler=None if auto else self._sampler,
            batch_sampler=self._sampler if auto else None,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context,
            generator=torch.Generator(),
            prefetch_factor=loader.prefetch_factor,
            persistent_workers=loader.persistent_workers,
        )

    def _order(self, k: int) -> list[Any]:
        """Index batches (or single indices) of pass ``k`` for this rank. A sampler with its own
        generator is replayed from the generator's initial state through passes ``0..k``, so pass
        ``k`` is the same whether or not this process drew the earlier ones."""
        source = self.loader.batch_sampler or self.loader.sampler
        for gen, state in self._generators:
            gen.set_state(state)
        with torch.random.fork_rng(devices=[]):
            for j in range(0 if self._generators else k, k + 1):
                torch.manual_seed(derived_seed(*self.key, j))
                batches = list(source)
        if self.world_size > 1 and batches:
            total = -(-len(batches) // self.world_size) * self.world_size
            batches = (batches * (total // len(batches) + 1))[:total][self.rank :: self.world_size]
        return batches

    def __len__(self) -> int:
        n = len(self.loader.batch_sampler or self.loader.sampler)
        return -(-n // self.world_size)

    def __iter__(self) -> Iterator[Any]:
        """One pass. It counts, and draws its order, at its first batch (a generator body runs
        at the first ``next``): Lightning creates iterators it never reads, and not as many in
        a resumed run as in an uninterrupted one."""
        k = self._passes
        self._passes += 1
        self._sampler.batches = self._order(k)[self._skip :]
        self._inner.generator.manual_seed(derived_seed(*self.key, k, "workers"))
        self._position, self._skip = self._skip, 0
        for batch in self._inner:
            self._position += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"passes": self._passes, "position": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue in pass ``passes - 1`` after its first ``position`` batches."""
        self._passes = max(0, int(state["passes"]) - 1)
        self._skip = int(state["position"]) if state["passes"] else 0


def resumable(loaders: Any, seed: int, epoch: int, rank: int, world_size: int) -> Any:
    """``loaders`` (a DataLoader, a CombinedLoader, or a dict/list of them) with every
    ``DataLoader`` replaced by a ``ResumableLoader`` keyed by (seed, epoch, its index)."""
    combined = loaders if isinstance(loaders, CombinedLoader) else CombinedLoader(loaders)
    combined.flattened = [
        ResumableLoader(dl, (seed, epoch, i), rank, world_size)
        if isinstance(dl, DataLoader)
        else dl
        for i, dl in enumerate(combined.flattened)
    ]
    return combined if isinstance(loaders, CombinedLoader) else combined.iterables


def make_resumable(data: L.LightningDataModule, seed: int) -> None:
    """Make ``data.train_dataloader()`` return resumable loaders (see ``resumable``), built under
    global RNGs seeded from (seed, epoch): a task drawing its epoch's data from them gets the same
    data in a resumed run."""
    original: Callable[[], Any] = data.train_dataloader

    def train_dataloader() -> Any:
        trainer = data.trainer
        epoch = trainer.current_epoch if trainer is not None else 0
        shard = (trainer.distributed_sampler_kwargs if trainer is not None else None) or {}
        seed_all(derived_seed(seed, "train_dataloader", epoch))
        return resumable(
            original(), seed, epoch, shard.get("rank", 0), shard.get("num_replicas", 1)
        )

    data.train_dataloader = train_dataloader  # type: ignore[method-assign]
