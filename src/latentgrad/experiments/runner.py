"""One training run: resolve the config, record it, train with Lightning, test, write metrics.json.

Run directory: ``<out>/<task>/<estimator>/seed<seed>/`` holding ``config.yaml`` (resolved),
``command.txt``, ``run.json`` (seed, git commit, package versions), ``checkpoints/last.ckpt``
(atomic, ``weights_only``-loadable), ``csv/version_*/metrics.csv`` and ``tb/`` logs (one version
per attempt: a resumed run adds one) and, once finished, ``metrics.json``; ``.lock`` while a
process trains in it (a second process on the same directory is refused: ``runlock``).

Every user mistake (config, task, seed, trainer flags, data files, checkpoints) raises a
``ConfigError``/``DataError``/``FileNotFoundError`` before anything is written.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from latentgrad.experiments.checkpoint import (
    AtomicCheckpointIO,
    CheckpointError,
    CheckpointSummary,
    atomic_write_text,
    checkpoint_summary,
    prepare_resume,
    remove_temp_files,
    resume_checkpoint,
)
from latentgrad.experiments.config import (
    ConfigError,
    deep_merge,
    load_yaml,
    read_run_config,
    resolve,
    to_dict,
)
from latentgrad.experiments.data.files import DataError
from latentgrad.experiments.plugins import load_entry_points
from latentgrad.experiments.records import (
    record_attempt_end,
    record_finish,
    start_clock,
    write_run_records,
)
from latentgrad.experiments.runlock import hold_run_dir
from latentgrad.experiments.stopping import RunStopped
from latentgrad.experiments.tasks.registry import get_task

METRICS_FILE = "metrics.json"
MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range


def run_dir_for(out: str | os.PathLike[str], task: str, estimator: str, seed: int) -> Path:
    return Path(out) / task / estimator / f"seed{seed}"


def _differing(saved: dict[str, Any], config: dict[str, Any], prefix: str = "",
               ignore: frozenset[str] = frozenset()) -> tuple[list[str], list[str]]:
    """The dotted keys, the trainer section and the keys in ``ignore`` aside, at which ``saved``
    and ``config`` differ (``optim.lr``, not ``optim``), and apart from them the keys set now that
    the saved config lacks (a run started by a version without that setting; a key unset in both
    is no difference)."""
    differ: list[str] = []
    unsaved: list[str] = []
    for key in sorted(set(saved) | set(config), key=str):
        if (not prefix and key == "trainer") or f"{prefix}{key}" in ignore:
            continue
        a, b = saved.get(key), config.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            more, more_unsaved = _differing(a, b, f"{prefix}{key}.", ignore)
            differ += more
            unsaved += more_unsaved
        elif key not in saved and b is not None:
            unsaved.append(f"{prefix}{key} ({b!r} now)")
        elif key not in config and a is not None:
            differ.append(f"{prefix}{key} ({a!r} saved, not a setting now)")
        elif a != b:
            differ.append(f"{prefix}{key} ({a!r} saved, {b!r} now)")
    return differ, unsaved


def saved_config(path: Path) -> dict[str, Any]:
    """The resolved config a run recorded in ``path`` (its ``config.yaml``); a file that is not
    a readable YAML mapping raises a ConfigError naming it."""
    saved = read_run_config(path, hint="; restore it or use another --out")
    if not isinstance(saved, dict):
        raise ConfigError(
            f"{path} is not a readable run config (a {type(saved).__name__}, not a mapping); "
            "restore it or use another --out"
        )
    return saved


def _run_differences(saved: dict[str, Any], config: dict[str, Any], module: Any,
                     estimator: str) -> tuple[list[str], list[str]]:
    """``_differing`` for a run of ``estimator`` in the task ``module``: the ``estimator_args``
    it does not read are no difference (``_unread_settings``)."""
    return _differing(saved, config, ignore=_unread_settings(module, estimator, saved, config))


def check_same_config(saved_path: Path, config: dict[str, Any], module: Any = None,
                      estimator: str = "") -> dict[str, Any]:
    """On resume (and in a sweep over existing cells), all but the trainer section (run length,
    devices) and the ``estimator_args`` that a run of ``estimator`` in the task ``module`` does
    not read must match the saved run: a ConfigError naming the differing sections. Returns the
    saved config."""
    saved = saved_config(saved_path)
    differ, unsaved = _run_differences(saved, config, module, estimator)
    problems = []
    if differ:
        problems.append(f"differs from {saved_path} in {', '.join(differ)} (resume with the "
                        "same settings: only trainer.* may change)")
    if unsaved:
        problems.append(f"has settings that {saved_path} lacks, {', '.join(unsaved)}: they were "
                        "added to latentgrad after the run started (continue it with the version "
                        "that started it, whose commit is in run.json)")
    if problems:
        raise ConfigError(f"--resume: the resolved config {'; and it '.join(problems)}; or "
                          "start a new run under another --out")
    return saved


def _flushing_denormals() -> bool:
    """Whether CPU arithmetic currently flushes subnormal floats to 0 (torch has no getter)."""
    import torch

    return float(torch.tensor(1e-39, dtype=torch.float32) * 1.0) == 0.0


@contextmanager
def flushed_denormals(enabled: bool) -> Iterator[None]:
    """``torch.set_flush_denormal(enabled)`` inside the block, the previous setting after it."""
    import torch

    before = _flushing_denormals()
    torch.set_flush_denormal(enabled)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def _is_global_zero() -> bool:
    return all(
        int(os.environ.get(var, "0")) == 0 for var in ("NODE_RANK", "LOCAL_RANK", "GLOBAL_RANK")
    )


def _estimator_args_read(module: Any, estimator: str) -> tuple[str, ...] | None:
    """The ``estimator_args`` keys a run of ``estimator`` reads: its registry entry's ``args``,
    plus those the task ``module`` reads itself for it (``ESTIMATOR_ARGS``, a dict estimator ->
    keys, optional); None where that is not known (an entry without ``args``, or a task whose
    ``estimator`` names a model rather than a registry entry: its ``Config`` has checked it)."""
    from latentgrad.experiments.estimators import ESTIMATORS

    if estimator not in ESTIMATORS or ESTIMATORS[estimator].args is None:
        return None
    return (*ESTIMATORS[estimator].args,
            *getattr(module, "ESTIMATOR_ARGS", {}).get(estimator, ()))


def _unread_settings(module: Any, estimator: str, *configs: dict[str, Any]) -> frozenset[str]:
    """The dotted ``estimator_args.<key>`` settings of ``configs`` (resolved configs, saved or
    current) that a run of ``estimator`` does not read: a change to one of them (another
    estimator's default changed in the task's config) does not stop a run from resuming."""
    used = _estimator_args_read(module, estimator)
    if used is None:
        return frozenset()
    keys: set[str] = set()
    for config in configs:
        args = config.get("estimator_args")
        if isinstance(args, dict):
            keys.update(args)
    return frozenset(f"estimator_args.{k}" for k in keys - set(used))


def _check_estimator_args(
    module: Any, estimator: str, overrides: dict[str, Any],
    config_file: str | os.PathLike[str] | None,
) -> None:
    """Refuse ``estimator_args`` keys the user set that ``estimator`` does not read
    (``_estimator_args_read``): they would be silently ignored."""
    used = _estimator_args_read(module, estimator)
    user = deep_merge(load_yaml(config_file) if config_file is not None else {}, overrides)
    given = user.get("estimator_args")
    if used is None or not isinstance(given, dict):
        return
    ignored = sorted(set(given) - set(used))
    if ignored:
        raise ConfigError(
            f"estimator_args.{ignored[0]}: does not apply to estimator {estimator!r}, which reads "
            f"only {', '.join(f'estimator_args.{k}' for k in used)}"
        )


def _check_run_length(ckpt: Path, summary: CheckpointSummary, tc: Any) -> None:
    """A resumed run may be extended, not shortened: Lightning cannot undo the epochs or steps
    the checkpoint ``ckpt`` (``summary``) has trained beyond ``trainer.max_epochs``/
    ``trainer.max_steps`` (it would refuse a lower max_epochs only after the records are
    rewritten, and silently keep the extra steps of a lower max_steps while ``config.yaml``
    records the lower value)."""
    _refuse_shorter(ckpt, summary.epochs, summary.global_step, tc.max_epochs, tc.max_steps)


def _refuse_shorter(source: Path, epochs: int, steps: int, max_epochs: int | None,
                    max_steps: int | None) -> None:
    """ConfigError naming the trainer key whose limit is below what ``source`` has trained."""
    for key, done, limit in [("max_epochs", epochs, max_epochs), ("max_steps", steps, max_steps)]:
        if limit is not None and limit >= 0 and done > limit:
            unit = "epochs" if key == "max_epochs" else "steps"
            raise ConfigError(
                f"trainer.{key}: {source} has already trained {done} {unit}, more than "
                f"trainer.{key}={limit}; a resumed run can only be extended (use another --out "
                "for a shorter run)"
            )


def check_not_shortened(run_dir: Path, trainer: dict[str, Any]) -> None:
    """Before a sweep starts: the run in ``run_dir`` (its ``metrics.json`` if finished, else its
    ``last.ckpt``) has not trained more than the ``trainer`` section (a dict) allows, which its
    resume would refuse only once the cell had started. Unreadable files are left to the run."""
    metrics = run_dir / METRICS_FILE
    limits = trainer.get("max_epochs"), trainer.get("max_steps")
    if metrics.exists():
        try:
            done = json.loads(metrics.read_text())
            epochs, steps = int(done["epochs"]), int(done["global_step"])
        except (ValueError, KeyError, TypeError):
            return
        _refuse_shorter(metrics, epochs, steps, *limits)
        return
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        try:
            summary = checkpoint_summary(last)
        except CheckpointError:
            return
        _refuse_shorter(last, summary.epochs, summary.global_step, *limits)


_LIGHTNING_INFO = "lightning.pytorch.utilities.rank_zero"  # the logger of rank_zero_info


class _NoTips(logging.Filter):
    """Drops Lightning's promotional "Tip:" lines; its warnings and other messages pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def _silence_lightning_tips() -> None:
    log = logging.getLogger(_LIGHTNING_INFO)
    if not any(isinstance(f, _NoTips) for f in log.filters):
        log.addFilter(_NoTips())


def check_run(
    task: str,
    estimator: str,
    seed: int,
    overrides: dict[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> tuple[Any, Any]:
    """Validate one run without writing anything: -> (task module, resolved config).

    Raises ``ConfigError`` (one line naming the key or flag) for an unknown task or estimator, a
    seed outside ``[0, 2**32 - 1]``, an invalid or inapplicable config value, or trainer flags
    (accelerator, devices, strategy, precision) Lightning refuses on this machine.
    """
    load_entry_points()
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"--seed: must be an integer in [0, {MAX_SEED}], got {seed!r}")
    try:
        module = get_task(task)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    overrides = overrides or {}
    cfg = resolve(module.Config, task, estimator, seed, overrides, config_file)
    _check_estimator_args(module, estimator, overrides, config_file)
    info = logging.getLogger(_LIGHTNING_INFO)
    level = info.level
    info.setLevel(logging.WARNING)  # the real Trainer prints the device summary, this one not
    try:
        _trainer(cfg.trainer, {"logger": False, "enable_checkpointing": False})
    finally:
        info.setLevel(level)
    return module, cfg


def _trainer(tc: Any, extra: dict[str, Any]) -> Any:
    """``L.Trainer`` for the trainer section ``tc``; a setting Lightning refuses -> ConfigError."""
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    _silence_lightning_tips()
    try:
        return L.Trainer(
            max_epochs=tc.max_epochs,
            max_steps=tc.max_steps,
            limit_train_batches=tc.limit_train_batches,
            limit_val_batches=tc.limit_eval_batches,
            limit_test_batches=tc.limit_eval_batches,
            accelerator=tc.accelerator,
            devices=tc.devices,
            num_nodes=tc.num_nodes,
            strategy=tc.strategy,
            precision=tc.precision,
            deterministic=tc.deterministic,
            log_every_n_steps=tc.log_every_n_steps,
            check_val_every_n_epoch=tc.check_val_every_n_epoch,
            num_sanity_val_steps=tc.num_sanity_val_steps,
            enable_progress_bar=tc.progress_bar,
            enable_model_summary=False,
            reload_dataloaders_every_n_epochs=1,
            **extra,
        )
    except (ValueError, MisconfigurationException) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"trainer (accelerator={tc.accelerator!r}, devices={tc.devices}, "
            f"strategy={tc.strategy!r}, precision={tc.precision!r}): {first}"
        ) from None


def run(
    task: str,
    estimator: str,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] = "runs",
    resume: bool = False,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Train and test one (task, estimator, seed); returns the content of ``metrics.json``.

    Raises ``ConfigError`` before any training when the config is invalid, ``FileExistsError``
    when the run directory already holds a run and ``resume`` is False, ``RunDirBusy`` when
    another process is training in it (``latentgrad.experiments.runlock``), and ``RunStopped``
    when SIGTERM stops it.
    """
    module, cfg = check_run(task, estimator, seed, overrides, config_file)
    run_dir = run_dir_for(out, task, estimator, seed)
    # DDP worker processes re-run this command while rank 0 holds the directory
    with hold_run_dir(run_dir) if _is_global_zero() else nullcontext():
        return _train_and_test(module, cfg, (task, estimator, seed), run_dir, resume, argv)


def _train_and_test(
    module: Any,
    cfg: Any,
    cell: tuple[str, str, int],
    run_dir: Path,
    resume: bool,
    argv: list[str] | None,
) -> dict[str, Any]:
    """``run``'s work for ``cell`` = (task, estimator, seed) in ``run_dir``, held by this
    process."""
    task, estimator, seed = cell
    config = to_dict(cfg)
    metrics_path = run_dir / METRICS_FILE
    ckpt: Path | None = None
    # DDP worker processes re-run this command after rank 0 has written the records: skip the check
    if _is_global_zero() and (run_dir / "config.yaml").exists():
        if not resume:
            raise FileExistsError(
                f"run directory {run_dir} already holds a run; "
                "pass --resume to continue it or choose another --out"
            )
        saved_trainer = check_same_config(
            run_dir / "config.yaml", config, module, estimator).get("trainer")
        if metrics_path.exists() and saved_trainer == config["trainer"]:
            return json.loads(metrics_path.read_text())  # finished with these settings
    if resume:  # DDP workers start after rank 0 chose and pruned: they find the same file
        with warnings.catch_warnings():
            if not _is_global_zero():
                warnings.simplefilter("ignore")
            try:
                ckpt = resume_checkpoint(run_dir / "checkpoints")
            except CheckpointError as err:
                raise ConfigError(str(err)) from None
        if ckpt is not None:
            try:
                summary = checkpoint_summary(ckpt)
            except CheckpointError as err:
                raise ConfigError(str(err)) from None
            changed, unsaved = ([], []) if summary.config is None else _run_differences(
                summary.config, config, module, estimator)
            differ = changed + unsaved
            if differ:  # a checkpoint copied in from another run: it would not even load
                raise ConfigError(
                    f"--resume: {ckpt} was written by a run of another config (it differs in "
                    f"{', '.join(differ)}); resume it with that config or remove it"
                )
            _check_run_length(ckpt, summary, cfg.trainer)

    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from latentgrad.experiments.resumable import EpochSafeCheckpoint, StepSeeds, make_resumable

    tc = cfg.trainer
    # the main thread's setting (threads started later inherit it), restored afterwards
    with flushed_denormals(tc.flush_denormal):
        checkpoint = EpochSafeCheckpoint(
            dirpath=run_dir / "checkpoints",
            save_last=True,  # last.ckpt: what --resume loads
            save_top_k=1,  # with no monitor: keeps the latest epoch/step checkpoint beside it
            every_n_train_steps=tc.checkpoint_every_n_steps or None,
            save_on_train_epoch_end=True,
        )
        if tc.num_threads is not None:
            torch.set_num_threads(tc.num_threads)
        L.seed_everything(seed, workers=True, verbose=False)
        # loads the data: fails before any record
        try:
            model, data = module.build_run(config, str(run_dir))
        except (ConfigError, DataError):
            raise
        except ValueError as err:  # a value the config check let through, refused by the model
            raise ConfigError(f"the model cannot be built from this config: {err}") from None
        make_resumable(data, seed)
        trainer = _trainer(
            tc,
            {
                "default_root_dir": run_dir,
                "logger": [CSVLogger(run_dir, name="csv"), TensorBoardLogger(run_dir, name="tb")],
                "callbacks": [StepSeeds(seed), checkpoint],
                "plugins": [AtomicCheckpointIO()],
            },
        )
        if _is_global_zero():
            for folder in (run_dir, run_dir / "checkpoints"):
                remove_temp_files(folder)  # left by a write that was killed
            if ckpt is not None:
                ckpt = prepare_resume(run_dir / "checkpoints", ckpt)
            write_run_records(run_dir, config, argv)
        clock, outcome = start_clock(), "error"
        with warnings.catch_warnings():
            # resuming in place: the checkpoint folder holds this run's own checkpoints by design
            warnings.filterwarnings("ignore", message="Checkpoint directory .* is not empty")
            # a run folder moved (a committed snapshot resumed elsewhere): with no monitor the
            # checkpoint callback tracks only the latest file, which prepare_resume has settled
            warnings.filterwarnings("ignore", message="The dirpath has changed from")
            # Lightning's own use of a torch API deprecated after its release; nothing to act on
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`")
            try:
                trainer.fit(model, datamodule=data, ckpt_path=ckpt)
                tested = trainer.test(model, datamodule=data, verbose=False)
                outcome = "finished"
            except SIGTERMException:  # a SystemExit without a code: the process would exit 0
                outcome = "stopped by SIGTERM"
                raise RunStopped(
                    f"stopped by SIGTERM at step {trainer.global_step}, before the run finished; "
                    f"`--resume` continues it from its last checkpoint in {run_dir / 'checkpoints'}"
                ) from None
            finally:
                if trainer.is_global_zero:
                    record_attempt_end(run_dir, clock, trainer.global_step, outcome,
                                       torch.get_num_threads())
        metrics = {k: float(v) for k, v in tested[0].items()} if tested else {}
        metrics.update(model.summary())
        result = {
            "task": task,
            "estimator": estimator,
            "seed": seed,
            "profile": cfg.profile,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "metrics": metrics,
        }
        # metrics.json: the same bytes for a resumed and an uninterrupted run
        if trainer.is_global_zero:
            atomic_write_text(json.dumps(result, indent=2) + "\n", metrics_path)
            record_finish(run_dir)
        return result
