"""The ``latentgrad`` command: ``run``, ``sweep``, ``report``, ``export``, ``demo`` and ``list``.

    latentgrad run TASK --estimator NAME [--seed S] [--config FILE.yaml] [--out DIR] [--resume]
        [--devices N] [--num-nodes N] [--accelerator A] [--strategy S] [key=value ...]
    latentgrad sweep TASK --estimators a,b,c --seeds 1-10 [--workers N] [--ray auto|ADDRESS]
        [key=value ...]
    latentgrad report RUNS_DIR
    latentgrad export OUT/TASK --out RESULTS_DIR [--in-progress]
    latentgrad demo [--out DIR] [--mnist PATH]
    latentgrad list
    latentgrad --version

``--plugin MODULE`` (before the command, repeatable) imports a module that registers user tasks or
estimators; installed ones register through entry points (``experiments.plugins``).

A user's mistake (unknown task or estimator, bad value, malformed YAML, bad data file, unusable
checkpoint) exits with status 2 and one line on stderr, before anything is written. A run whose
directory another process is training in exits with status 75 (try again later); a run or sweep
stopped by SIGTERM exits with status 143 (``--resume`` continues it).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from latentgrad import __version__
from latentgrad.experiments.allocator import use_huge_pages
from latentgrad.experiments.config import ConfigError, merged_config, parse_overrides
from latentgrad.experiments.data.files import UNWRITABLE_ERRNOS, DataError
from latentgrad.experiments.runlock import BUSY_EXIT_CODE, RunDirBusy
from latentgrad.experiments.stopping import STOPPED_EXIT_CODE, RunStopped


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``latentgrad run: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if seed < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {seed}")
    return seed


def _trainer_flags(args: argparse.Namespace) -> list[str]:
    """``--devices 2`` etc. -> ``trainer.devices=2`` overrides."""
    flags = []
    for name in ("devices", "num_nodes", "accelerator", "strategy"):
        value = getattr(args, name)
        if value is not None:
            flags.append(f"trainer.{name}={value}")
    if getattr(args, "no_progress_bar", False):
        flags.append("trainer.progress_bar=false")
    return flags


def _add_trainer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, help="devices per node (Lightning DDP when > 1)")
    p.add_argument("--num-nodes", dest="num_nodes", type=int, help="number of nodes")
    p.add_argument("--accelerator", help="cpu, gpu, auto, ...")
    p.add_argument("--strategy", help="auto, ddp, ddp_spawn, ...")
    p.add_argument("--no-progress-bar", action="store_true", help="disable the progress bar")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="latentgrad", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"latentgrad {__version__}")
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first: it registers user tasks/estimators (repeatable)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="tasks, their estimators and profiles")

    r = sub.add_parser("run", help="one training run")
    r.add_argument("task")
    r.add_argument("--estimator", required=True)
    r.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    r.add_argument("--config", help="YAML file with config overrides")
    r.add_argument("--out", default="runs", help="root of run directories (default: runs)")
    r.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    _add_trainer_args(r)
    r.add_argument(
        "overrides", nargs="*", help="key=value config overrides, e.g. optim.lr=1e-4 profile=cpu"
    )

    s = sub.add_parser("sweep", help="a grid of runs (estimators x seeds)")
    s.add_argument("task")
    s.add_argument(
        "--estimators",
        help="comma-separated estimator names (default: the profile's sweep, else all)",
    )
    s.add_argument("--seeds", help="e.g. 1-10 or 43,44,45 (default: the profile's published seeds)")
    s.add_argument(
        "--resume",
        action="store_true",
        help="continue unfinished cells from their checkpoints (always done; finished cells are "
        "skipped)",
    )
    s.add_argument("--workers", type=int, default=1, help="parallel local processes")
    s.add_argument("--ray", help="run on Ray: 'auto' or a cluster address ('local' starts one)")
    s.add_argument("--config", help="YAML file with config overrides")
    s.add_argument("--out", default="runs")
    _add_trainer_args(s)
    s.add_argument("overrides", nargs="*")

    rep = sub.add_parser("report", help="tables and plots from a runs directory")
    rep.add_argument("runs_dir")
    rep.add_argument("--out", help="where to write report files (default: RUNS_DIR)")

    e = sub.add_parser(
        "export",
        help="copy a sweep's records (no checkpoints) into a results folder, then report there",
    )
    e.add_argument("sweep_dir", help="the sweep's task folder, OUT/TASK")
    e.add_argument("--out", required=True, help="results folder (runs/ and in_progress/ inside)")
    e.add_argument(
        "--in-progress",
        dest="in_progress",
        action="store_true",
        help="also copy each unfinished cell with its last checkpoint into the results folder's "
        "in_progress/ (resumable)",
    )

    d = sub.add_parser(
        "demo", help="semi-supervised VAE on the bundled digits with three estimators"
    )
    d.add_argument("--out", default="runs/demo")
    d.add_argument(
        "--mnist", help="folder with the MNIST IDX files: use MNIST (cpu profile) instead of digits"
    )
    d.add_argument("--seed", type=_seed, default=0)
    return p


def _list() -> int:
    """Print every task with its profiles and estimators (name and description)."""
    from latentgrad.experiments.config import task_estimators, task_yaml
    from latentgrad.experiments.estimators import ESTIMATORS
    from latentgrad.experiments.tasks.registry import TASKS

    for task in TASKS:
        profiles = ", ".join(task_yaml(task).get("profiles") or {}) or "-"
        print(f"{task}  (profiles: {profiles})")
        for name in task_estimators(task):
            spec = ESTIMATORS.get(name)
            print(f"  {name:<20} {spec.description if spec else ''}".rstrip())
    return 0


def _wants_huge_pages(args: argparse.Namespace, overrides: dict[str, Any]) -> bool:
    """``trainer.huge_pages`` of the run, read from its config layers before anything imports
    Lightning; a config the runner will refuse reads as False (the runner then reports it)."""
    try:
        merged = merged_config(args.task, args.estimator, args.seed, overrides, args.config)
    except ConfigError:
        return False
    trainer = merged.get("trainer")  # not a mapping: the runner refuses it by name
    return isinstance(trainer, dict) and trainer.get("huge_pages") is True


def main(argv: list[str] | None = None) -> int:
    entry_point = argv is None  # the process's own command line (not a caller in Python)
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    args, rest = p.parse_known_args(argv)
    stray = [
        r for r in rest if r.startswith("-") or "=" not in r or args.command not in ("run", "sweep")
    ]
    if stray:
        p.error(f"unrecognized arguments: {' '.join(stray)}")
    if args.command in ("run", "sweep"):
        args.overrides = [*args.overrides, *rest]
    try:
        from latentgrad.experiments.plugins import load_plugins

        load_plugins(args.plugin)
        if args.command == "list":
            return _list()
        if args.command == "run":
            overrides = parse_overrides([*args.overrides, *_trainer_flags(args)])
            if _wants_huge_pages(args, overrides):
                use_huge_pages()  # before Lightning's import fixes PyTorch's setting
            from latentgrad.experiments.runner import run

            result = run(
                args.task,
                args.estimator,
                args.seed,
                overrides,
                args.config,
                args.out,
                args.resume,
                argv,
            )
            if entry_point:  # finished and recorded: a SIGTERM from now on (a scheduler's,
                # racing the exit) must not turn the status into 143, as if pre-empted
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print(f"finished {args.task}/{args.estimator}/seed{args.seed}: {result['metrics']}")
            return 0
        if args.command == "sweep":
            from latentgrad.experiments.config import load_yaml, sweep_grid
            from latentgrad.experiments.sweep import parse_seeds, sweep

            # the profile the runs will use: the command line's over the --config file's
            user = load_yaml(args.config) if args.config else {}
            profile = parse_overrides(args.overrides).get("profile", user.get("profile"))
            estimators, seeds = sweep_grid(args.task, profile, args.estimators, args.seeds)
            return sweep(
                args.task,
                estimators,
                parse_seeds(seeds),
                [*args.overrides, *_trainer_flags(args)],
                out=args.out,
                workers=args.workers,
                ray_address=args.ray,
                config_file=args.config,
                plugins=args.plugin,
            )
        if args.command == "report":
            from latentgrad.experiments.report import report

            paths = report(args.runs_dir, args.out)
            print(paths["markdown"].read_text())
            print("written:", ", ".join(str(p) for p in paths.values()))
            return 0
        if args.command == "export":
            from latentgrad.experiments.export import export
            from latentgrad.experiments.report import report

            copied = export(args.sweep_dir, args.out, args.in_progress)
            for kind, cells in copied.items():
                print(f"{kind}: {', '.join(cells) or '-'}")
            if copied["finished"]:
                paths = report(Path(args.out) / "runs", args.out)
                print("written:", ", ".join(str(p) for p in paths.values()))
            return 0
        from latentgrad.experiments.demo import demo

        return demo(args.out, args.mnist, args.seed)
    except (ConfigError, DataError, FileNotFoundError, FileExistsError) as err:
        message = " ".join(str(err).split())  # one line
        print(f"latentgrad {args.command}: error: {message}", file=sys.stderr)
        return BUSY_EXIT_CODE if isinstance(err, RunDirBusy) else 2
    except RunStopped as err:
        print(f"latentgrad {args.command}: {err}", file=sys.stderr)
        return STOPPED_EXIT_CODE
    except OSError as err:  # a folder it must write to is read-only or not the user's: a
        # one-line error like the user's other mistakes, not a traceback
        if err.errno not in UNWRITABLE_ERRNOS:
            raise
        print(f"latentgrad {args.command}: error: cannot write {err.filename}: {err.strerror}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
