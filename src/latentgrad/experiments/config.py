"""Typed experiment configs: dataclass schemas, YAML layers, ``key=value`` overrides, validation.

A task's YAML (``experiments/configs/<task>.yaml``) has the sections ``defaults`` (the paper's
protocol at full scale), ``estimators`` (per-estimator settings, e.g. learning rates; its keys are
the estimators the task supports), ``profiles`` (named settings: ``paper``, ``faithful``,
``cpu``, ``tiny``) and optionally ``sweeps``: per profile, the ``seeds`` (``"43-52"``) and
``estimators`` that ``latentgrad sweep TASK profile=NAME`` runs when ``--seeds`` and
``--estimators`` are not given.
Layers apply in the order schema defaults < ``defaults`` < ``estimators[name]`` < ``profiles[p]`` <
``profiles[p].estimators[name]`` (a profile's own per-estimator settings, e.g. another paper's
learning rates for the same task) < ``--config FILE`` < command-line overrides. Every layer is
checked against the schema before any training starts: unknown keys, wrong types and impossible
values raise ``ConfigError`` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """An invalid experiment configuration; the message names the offending key."""


def require(condition: bool, key: str, message: str) -> None:
    """Raise ``ConfigError`` for ``key`` unless ``condition``; for use in ``validate`` methods."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and where lossless, convert) ``value`` to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: must not be null (expected {_type_name(tp)})")
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(
            f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"
        )
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif tp is int or tp is float:
        numbers = int if tp is int else int | float  # an int is a valid float, not vice versa
        number = None
        try:
            if isinstance(value, numbers) and not isinstance(value, bool):
                number = tp(value)
            elif isinstance(value, str):
                number = tp(value)
        except ValueError:
            pass
        except OverflowError:  # an int beyond float's range
            raise ConfigError(f"{key}: must be a finite number, got {value!r}") from None
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - schema error, not user error
        raise TypeError(f"unsupported config field type {tp!r} at {key}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from a (partial) nested dict, checking every key and type.

    Calls ``validate()`` on the result when the class defines it.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; "
            f"valid keys under '{prefix or '<top>'}' are: "
            f"{', '.join(sorted(names))}"
        )
    kwargs = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as err:
            raise ConfigError(f"{prefix}{err}") from None
    return obj


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (YAML- and ``weights_only``-load-safe) of a config dataclass."""
    return dataclasses.asdict(config)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins; neither input is modified."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping holding a key twice (PyYAML keeps the last one
    silently, so a repeated ``lr:`` in a config would drop the first without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # unhashable: the base class reports it
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _safe_load(text: str, source: str) -> Any:
    """``yaml.safe_load(text)``, refusing duplicate keys; malformed YAML raises a one-line
    ``ConfigError`` naming ``source`` and the position."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}: malformed YAML{where}: {problem}") from None


def read_run_config(path: Path, hint: str = "") -> Any:
    """The YAML document a run recorded in ``path`` (its ``config.yaml``), as parsed; a file that
    cannot be read as text or parsed raises a one-line ``ConfigError`` naming it (then ``hint``)."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path} is not a readable run config ({first}){hint}") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-4", "trainer.max_epochs=3"]`` -> nested dict; values parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=0.001)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        value = _safe_load(raw, f"override {item!r}") if raw.strip() else ""
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"override {item!r} conflicts with an earlier override of '{part}'"
                )
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (an empty file is ``{}``)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a YAML file" if path.is_dir() else "does not exist"
        raise ConfigError(f"--config: file {path} {what}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--config: cannot read {path} as text: {err}") from None
    data = _safe_load(text, f"--config {path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a YAML mapping, got {type(data).__name__}")
    return data


def task_yaml(task: str) -> dict[str, Any]:
    """The task's YAML: the packaged ``experiments/configs/<task>.yaml``, or a plugin task's
    ``CONFIG_FILE`` (``experiments.plugins``)."""
    ref = resources.files("latentgrad.experiments").joinpath("configs", f"{task}.yaml")
    source = f"configs/{task}.yaml"
    if ref.is_file():
        text = ref.read_text()
    else:
        from latentgrad.experiments.plugins import task_config_file

        file = task_config_file(task)
        if file is None:
            raise ConfigError(
                f"no config for task {task!r} (expected experiments/configs/{task}.yaml)"
            )
        if not file.is_file():
            raise ConfigError(f"task {task!r}: its CONFIG_FILE {file} does not exist")
        text, source = file.read_text(), str(file)
    data = _safe_load(text, source) or {}
    if not isinstance(data, dict) or set(data) - {"defaults", "estimators", "profiles", "sweeps"}:
        raise ConfigError(
            f"{source}: expected a mapping with the sections defaults, estimators, profiles "
            "(and optionally sweeps)"
        )
    return data


def sweep_grid(
    task: str, profile: str | None, estimators: str | None, seeds: str | None
) -> tuple[list[str], str]:
    """The (estimators, seeds) of ``latentgrad sweep``: the command line's where given, else the
    YAML's ``sweeps[profile]`` entry; estimators default to every estimator of the task."""
    if profile is not None and not isinstance(profile, str):
        raise ConfigError(f"profile: expected a profile name, got {profile!r}")
    entry = (task_yaml(task).get("sweeps") or {}).get(profile or "full") or {}
    seeds = seeds if seeds is not None else entry.get("seeds")
    if seeds is None:
        known = ", ".join(task_yaml(task).get("sweeps") or {}) or "none"
        raise ConfigError(
            f"--seeds: required, since task {task!r} names no seeds for profile "
            f"{profile or 'full'!r} (profiles with seeds: {known})"
        )
    names = estimators.split(",") if estimators is not None else entry.get("estimators")
    return list(names or task_estimators(task)), str(seeds)


def task_estimators(task: str) -> list[str]:
    """The estimators task ``task`` can run: its YAML's ``estimators`` and the plugin ones."""
    from latentgrad.experiments.plugins import plugin_estimators

    names = list(task_yaml(task).get("estimators") or {})
    return names + [name for name in plugin_estimators() if name not in names]


def resolve(
    schema: type[T],
    task: str,
    estimator: str,
    seed: int,
    overrides: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
) -> T:
    """Resolve the full config of one run (see the module docstring for the layer order)."""
    return build(schema, merged_config(task, estimator, seed, overrides, config_file))


def merged_config(
    task: str,
    estimator: str,
    seed: int,
    overrides: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
) -> dict[str, Any]:
    """The layers of one run's config merged into a plain dict, not yet checked against the
    task's schema (``resolve`` does that); needs the task's YAML only, not its module."""
    spec = task_yaml(task)
    estimators = spec.get("estimators") or {}
    if estimator not in task_estimators(task):
        raise ConfigError(
            f"--estimator: task {task!r} has no estimator {estimator!r}; "
            f"choose from {', '.join(task_estimators(task))}"
        )
    layers: list[dict[str, Any]] = [spec.get("defaults") or {}, estimators.get(estimator) or {}]
    user: dict[str, Any] = {}
    if config_file is not None:
        user = load_yaml(config_file)
    user = deep_merge(user, overrides or {})
    profile = user.pop("profile", None)
    profiles = spec.get("profiles") or {}
    if profile is not None:
        if not isinstance(profile, str) or profile not in profiles:
            raise ConfigError(
                f"profile: unknown profile {profile!r} for task {task!r}; "
                f"choose from {list(profiles)}"
            )
        chosen = dict(profiles[profile] or {})
        per_estimator = chosen.pop("estimators", None) or {}
        layers += [chosen, per_estimator.get(estimator) or {}]
    layers.append(user)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    for key in ("task", "estimator", "seed", "profile"):
        if key in user:
            raise ConfigError(
                f"{key}: set it with the command line (run TASK --estimator/--seed/profile=)"
            )
    merged.update(task=task, estimator=estimator, seed=seed, profile=profile or "full")
    return merged
