"""Resolving a task's profiles, for the tests that compare them with the published protocol."""

from __future__ import annotations

from latentgrad.experiments.config import resolve, to_dict
from latentgrad.experiments.tasks.registry import get_task


def profile_config(task: str, estimator: str, profile: str | None, seed: int = 0) -> dict:
    """The resolved config of one run as a plain dict, without its ``profile`` name, so that two
    profiles compare equal exactly when they set the same values (``None``: the defaults)."""
    overrides = {} if profile is None else {"profile": profile}
    config = to_dict(resolve(get_task(task).Config, task, estimator, seed, overrides))
    config.pop("profile")
    return config
