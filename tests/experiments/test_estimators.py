"""The experiments' estimator registry: each entry declares exactly the settings it reads."""

from __future__ import annotations

import dataclasses

import pytest

from latentgrad.experiments.estimators import ESTIMATORS
from latentgrad.experiments.schema import EstimatorConfig
from latentgrad.structures.bitvector import BitVector

BITS_ONLY = tuple(name for name, spec in ESTIMATORS.items() if spec.latent == "bits")


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
    kwargs = {"structure": BitVector(5)} if name in BITS_ONLY else {}
    spec.factory(recorder, 5, 3, **kwargs)  # type: ignore[arg-type]
    fields = {f.name for f in dataclasses.fields(EstimatorConfig)}
    assert spec.args is not None and set(spec.args) <= fields
    assert recorder.read == set(spec.args)


@pytest.mark.parametrize("name", BITS_ONLY)
def test_bit_vector_estimators_refuse_a_categorical_latent(name: str) -> None:
    with pytest.raises(ValueError, match="BitVector"):
        ESTIMATORS[name].factory(EstimatorConfig(), 5, 3)


def test_budget_defaults_to_half_the_bits_and_is_checked() -> None:
    est = ESTIMATORS["sparsemap_budget"].factory(EstimatorConfig(), 6, 3, structure=BitVector(6))
    assert est.structure.budget == 3
    with pytest.raises(ValueError, match="budget"):
        ESTIMATORS["sparsemap_budget"].factory(
            EstimatorConfig(budget=7), 6, 3, structure=BitVector(6)
        )


def test_hard_concrete_anneals_its_temperature_unless_the_rate_is_zero() -> None:
    """Farinhas et al. anneal Hard Concrete's β from 1 like the relaxations' τ; a rate of 0 keeps
    the configured β fixed (the setting of the runs made before the schedule existed)."""
    from latentgrad.estimators.schedules import Constant, ExponentialDecay

    make = ESTIMATORS["hard_concrete"].factory
    annealed = make(EstimatorConfig(anneal_rate=1e-5, anneal_every=1000), 4, 3,
                    structure=BitVector(4)).temperature
    assert isinstance(annealed, ExponentialDecay)
    assert (annealed.tau0, annealed.rate, annealed.every, annealed.floor) == (1.0, 1e-5, 1000, 0.5)
    fixed = make(EstimatorConfig(temperature=2 / 3, anneal_rate=0.0), 4, 3,
                 structure=BitVector(4)).temperature
    assert isinstance(fixed, Constant) and fixed.tau == 2 / 3
