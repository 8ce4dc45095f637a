"""The experiments' estimator registry: each entry declares exactly the settings it reads."""

from __future__ import annotations

import dataclasses

import pytest

from latentgrad.experiments.estimators import ESTIMATORS
from latentgrad.experiments.schema import EstimatorConfig


class _Recorder:
    """An EstimatorConfig that records which fields are read."""

    def __init__(self) -> None:
        object.__setattr__(self, "read", set())
        object.__setattr__(self, "cfg", EstimatorConfig(nvil_hidden=[4]))

    def __getattr__(self, name: str) -> object:
        self.read.add(name)
        return getattr(self.cfg, name)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_declared_args_are_exactly_the_fields_the_factory_reads(name: str) -> None:
    spec = ESTIMATORS[name]
    recorder = _Recorder()
    spec.factory(recorder, 5, 3)  # type: ignore[arg-type]
    fields = {f.name for f in dataclasses.fields(EstimatorConfig)}
    assert spec.args is not None and set(spec.args) <= fields
    assert recorder.read == set(spec.args)
