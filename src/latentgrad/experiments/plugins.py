"""User-defined tasks and estimators, without editing latentgrad.

Two ways in:

- entry points of an installed distribution, found in every process with no flag: group
  ``latentgrad.tasks`` maps a task name to its module (``toy = mypkg.toy``), group
  ``latentgrad.estimators`` an estimator name to an ``EstimatorSpec``
  (``mine = mypkg.estimators:MINE``);
- ``latentgrad --plugin mypkg.plugin ...``: a module imported before the command runs, which calls
  ``register_task`` and/or ``register_estimator`` (``latentgrad sweep`` passes it on to its runs).

A task module provides what the built-in ones do (``Config``, ``build_run``, ``REPORT_METRICS``,
``CURVE_METRICS``; ``experiments.tasks.base`` is the skeleton) plus ``CONFIG_FILE``, the path of its
YAML with the sections ``defaults``, ``estimators``, ``profiles`` (and optionally ``sweeps``) of
the packaged ``configs/<task>.yaml``. A plugin estimator can be chosen for every task (with the
task's defaults).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from latentgrad.experiments.config import ConfigError
from latentgrad.experiments.estimators import ESTIMATORS, EstimatorSpec
from latentgrad.experiments.tasks.registry import TASKS

BUILTIN_TASKS = frozenset(TASKS)
BUILTIN_ESTIMATORS = frozenset(ESTIMATORS)
_loaded_entry_points = False


def register_task(name: str, module: str | ModuleType) -> None:
    """Make task ``name`` the task module ``module`` (a module or its import path)."""
    path = module if isinstance(module, str) else module.__name__
    if name in BUILTIN_TASKS and TASKS[name] != path:
        raise ConfigError(f"plugin task {name!r}: the name of a built-in task")
    TASKS[name] = path


def register_estimator(name: str, spec: EstimatorSpec) -> None:
    """Make estimator ``name`` (usable with every task) the registry entry ``spec``."""
    if not isinstance(spec, EstimatorSpec):
        raise ConfigError(
            f"plugin estimator {name!r}: expected an EstimatorSpec, got {type(spec).__name__}"
        )
    if name in BUILTIN_ESTIMATORS and ESTIMATORS[name] is not spec:
        raise ConfigError(f"plugin estimator {name!r}: the name of a built-in estimator")
    ESTIMATORS[name] = spec


def load_entry_points() -> None:
    """Register the tasks and estimators of installed distributions' entry points (once)."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in entry_points(group="latentgrad.tasks"):
        register_task(ep.name, ep.value)
    for ep in entry_points(group="latentgrad.estimators"):
        register_estimator(ep.name, ep.load())


def load_plugins(modules: list[str] | None = None) -> None:
    """Entry points, then each ``--plugin`` module (imported: it registers what it defines)."""
    load_entry_points()
    for name in modules or []:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"--plugin {name}: cannot import it ({err})") from None


def plugin_estimators() -> list[str]:
    """Names of the registered plugin estimators (usable with every task)."""
    return [name for name in ESTIMATORS if name not in BUILTIN_ESTIMATORS]


def task_config_file(task: str) -> Path | None:
    """The YAML of plugin task ``task`` (its module's ``CONFIG_FILE``); None for other names."""
    if task in BUILTIN_TASKS or task not in TASKS:
        return None
    module = importlib.import_module(TASKS[task])
    file = getattr(module, "CONFIG_FILE", None)
    if file is None:
        raise ConfigError(f"plugin task {task!r}: its module {module.__name__} sets no CONFIG_FILE")
    return Path(file)
