"""Temperature schedules: decay every N steps, floor, configured τ0 kept, state in state_dict."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latentgrad.estimators.schedules import (
    Constant,
    ExponentialDecay,
    Learnable,
    TemperatureSchedule,
    as_schedule,
)


def test_constant_returns_tau_and_ignores_steps():
    sched = Constant(0.7)
    for _ in range(3):
        sched.step()
    assert sched().item() == 0.7 and sched().dtype == torch.float64


def test_exponential_decay_changes_only_every_n_steps_and_matches_formula():
    tau0, rate, every, floor = 2.0, 1e-3, 10, 0.1
    sched = ExponentialDecay(tau0, rate, every=every, floor=floor)
    values = []
    for _ in range(45):
        values.append(sched().item())
        sched.step()
    for step, value in enumerate(values):
        expected = max(floor, tau0 * math.exp(-rate * every * (step // every)))
        assert value == pytest.approx(expected, rel=1e-12)
    assert values[0] == values[9] == tau0  # starts at the configured τ0, constant for N steps
    assert values[10] < values[9]


@settings(max_examples=20, deadline=None)
@given(
    tau0=st.floats(0.1, 10.0),
    rate=st.floats(0.0, 0.1),
    every=st.integers(1, 7),
    floor_fraction=st.floats(0.01, 1.0),
    steps=st.integers(1, 60),
)
def test_exponential_decay_is_piecewise_constant_non_increasing_and_bounded(
    tau0, rate, every, floor_fraction, steps
):
    floor = floor_fraction * tau0
    sched = ExponentialDecay(tau0, rate, every=every, floor=floor)
    values = []
    for _ in range(steps):
        values.append(sched().item())
        sched.step()
    assert all(later <= earlier for earlier, later in itertools.pairwise(values))
    assert all(floor <= v <= tau0 for v in values)
    assert all(values[i] == values[i - 1] for i in range(1, steps) if i % every)


def test_exponential_decay_stops_at_the_floor():
    sched = ExponentialDecay(1.0, 0.5, every=1, floor=0.5)
    for _ in range(100):
        sched.step()
    assert sched().item() == 0.5


def test_configured_tau0_is_never_overwritten():
    sched = ExponentialDecay(3.0, 0.1, every=2, floor=0.2)
    for _ in range(50):
        sched.step()
    assert sched.tau0 == 3.0
    assert sched().item() < 3.0


def test_reference_schedule_is_reproduced_with_explicit_tau0_one():
    # the reference computed max(0.5, exp(-r * step)) from step 0
    sched = ExponentialDecay(1.0, 3e-3, every=1, floor=0.5)
    for step in range(400):
        assert sched().item() == pytest.approx(max(0.5, math.exp(-3e-3 * step)), rel=1e-12)
        sched.step()


def test_step_counter_round_trips_through_state_dict():
    sched = ExponentialDecay(1.5, 0.01, every=5, floor=0.3)
    for _ in range(23):
        sched.step()
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)
    buffer.seek(0)
    restored = ExponentialDecay(1.5, 0.01, every=5, floor=0.3)
    restored.load_state_dict(torch.load(buffer))
    assert restored.num_steps.item() == 23
    assert restored().item() == sched().item()
    # nested in a model, the counter is part of the model's checkpoint
    model = torch.nn.Module()
    model.temperature = sched
    assert model.state_dict()["temperature.num_steps"].item() == 23


def test_learnable_temperature_starts_at_init_stays_positive_and_gets_gradients():
    sched = Learnable(0.5)
    assert sched().item() == pytest.approx(0.5, rel=1e-6)
    assert [name for name, _ in sched.named_parameters()] == ["free"]
    (3.0 * sched()).backward()
    assert sched.free.grad is not None and sched.free.grad.item() > 0
    with torch.no_grad():
        sched.free.fill_(-50.0)
    assert sched().item() > 0
    sched.step()  # no state to advance
    assert Learnable(1e-4)().item() == pytest.approx(1e-4, rel=1e-3)


def test_as_schedule_wraps_floats_and_passes_schedules_through():
    assert isinstance(as_schedule(0.3), Constant)
    sched = ExponentialDecay(1.0, 0.1)
    assert as_schedule(sched) is sched
    assert isinstance(sched, TemperatureSchedule)
    with pytest.raises(TypeError, match="temperature"):
        as_schedule("hot")
    with pytest.raises(ValueError, match="temperature"):
        as_schedule(-1.0)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: Constant(0.0), "tau"),
        (lambda: Constant(float("nan")), "tau"),
        (lambda: ExponentialDecay(-1.0, 0.1), "tau0"),
        (lambda: ExponentialDecay(1.0, -0.1), "rate"),
        (lambda: ExponentialDecay(1.0, float("inf")), "rate"),
        (lambda: ExponentialDecay(0.1, 0.1, floor=0.5), "floor .* tau0"),
        (lambda: ExponentialDecay(1.0, 0.1, every=0), "every"),
        (lambda: ExponentialDecay(1.0, 0.1, floor=0.0), "floor"),
        (lambda: Learnable(0.0), "init"),
    ],
)
def test_bad_configuration_raises(factory, match):
    """Each bad setting is refused with a ValueError naming it: a non-positive or NaN
    temperature, a negative or infinite rate (inf gave a NaN temperature), a floor above tau0
    (the run started at the floor)."""
    with pytest.raises(ValueError, match=match):
        factory()


# ------------------------------------------------------------------ advancing with the optimizer


def _step_with(est, optimizer, train=True, grad=True, manual=None):
    est.train(train)
    with torch.set_grad_enabled(grad):
        tau = est.temperature()
    if manual == "before":
        est.temperature.step()
    optimizer.step()
    if manual == "after":
        est.temperature.step()
    return tau


def _gumbel(auto_step=True):
    from latentgrad.estimators import GumbelSoftmax

    return GumbelSoftmax(ExponentialDecay(1.0, 0.5, every=1, floor=0.01, auto_step=auto_step))


def _optimizer():
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def test_a_schedule_advances_once_per_optimizer_step_that_followed_a_training_call():
    est, opt = _gumbel(), _optimizer()
    for _ in range(3):
        _step_with(est, opt)
    assert int(est.temperature.num_steps) == 3
    est.temperature()  # two calls (gradient accumulation), one optimizer step: one advance
    est.temperature()
    opt.step()
    assert int(est.temperature.num_steps) == 4
    opt.step()  # not used since the last step: no advance
    assert int(est.temperature.num_steps) == 4


@pytest.mark.parametrize(("train", "grad"), [(False, True), (True, False)])
def test_eval_mode_and_no_grad_calls_do_not_advance(train, grad):
    est, opt = _gumbel(), _optimizer()
    _step_with(est, opt, train=train, grad=grad)
    assert int(est.temperature.num_steps) == 0


@pytest.mark.parametrize("manual", ["before", "after"])
def test_loops_that_step_by_hand_keep_the_same_schedule(manual):
    est, opt = _gumbel(), _optimizer()
    for _ in range(3):
        _step_with(est, opt, manual=manual)
    assert int(est.temperature.num_steps) == 3


def test_auto_step_false_leaves_stepping_to_the_caller():
    est, opt = _gumbel(auto_step=False), _optimizer()
    _step_with(est, opt)
    assert int(est.temperature.num_steps) == 0
    _step_with(est, opt, manual="after")
    assert int(est.temperature.num_steps) == 1
    with pytest.raises(TypeError, match="auto_step"):
        ExponentialDecay(1.0, 0.5, auto_step=1)


@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_a_copied_schedule_advances_once_per_optimizer_step_independently_of_the_original(how):
    """A copy of an auto-stepped schedule (``copy.deepcopy``, or a whole-module
    ``torch.save``/``torch.load`` round trip) is auto-stepped too: it advances once per optimizer
    step that followed a training call of the copy, and the original, unused, stays put."""
    import copy

    est, opt = _gumbel(), _optimizer()
    _step_with(est, opt)
    if how == "deepcopy":
        clone = copy.deepcopy(est)
    else:
        buffer = io.BytesIO()
        torch.save(est, buffer)
        buffer.seek(0)
        clone = torch.load(buffer, weights_only=False)
    assert int(clone.temperature.num_steps) == 1
    for _ in range(3):
        _step_with(clone, opt)
    assert int(clone.temperature.num_steps) == 4
    assert int(est.temperature.num_steps) == 1


def _relaxed_estimators():
    from latentgrad.estimators import GumbelSoftmax, SSTEstimator
    from latentgrad.structures import BitVector, KSubset

    return [
        lambda tau: GumbelSoftmax(tau, structure=BitVector(4)),
        lambda tau: GumbelSoftmax(tau),
        lambda tau: SSTEstimator(KSubset(4, 2), tau),
    ]


@pytest.mark.parametrize("make", range(3))
@pytest.mark.parametrize(
    ("schedule", "dtype"),
    [
        (lambda: Constant(1e-46), torch.float32),  # positive as a float, 0 in float32
        (lambda: Constant(1e5), torch.float16),  # inf in float16
        (lambda: ExponentialDecay(1.0, 0.1, floor=1e-46), torch.float32),  # the floor is 0
        (lambda: ExponentialDecay(1e5, 0.1, floor=1.0), torch.float16),  # tau0 is inf
    ],
)
def test_a_temperature_that_is_zero_or_infinite_in_the_scores_dtype_is_refused(
    make, schedule, dtype
):
    """A temperature that passes as a positive Python float but rounds to 0 or infinity in the
    scores' dtype (NaN gradients before) is refused with a ValueError naming the temperature and
    the dtype; the schedule's whole range is checked at its first use."""
    est = _relaxed_estimators()[make](schedule())
    scores = torch.randn(2, 4, dtype=dtype, requires_grad=True)
    with pytest.raises(ValueError, match=rf"temperature .*{dtype}"):
        est(scores, lambda z, rows: ((z - 0.3) ** 2).sum(-1))


def test_tiny_temperatures_that_the_dtype_still_represents_are_accepted():
    """The dtype check refuses only 0 and infinity: a subnormal float32 temperature works and
    gives finite gradients."""
    est = _relaxed_estimators()[0](1e-40)
    scores = torch.randn(2, 4, requires_grad=True)
    est(scores, lambda z, rows: ((z - 0.3) ** 2).sum(-1)).loss.backward()
    assert torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("make", range(3))
def test_a_learnable_temperature_that_underflows_in_the_scores_dtype_is_clamped_not_nan(make):
    """``Learnable`` with ``free = -120`` has softplus 0 in float32 (before: NaN losses blamed on
    loss_fn); ``like`` clamps it to float32's smallest normal number, so losses and gradients are
    finite."""
    sched = Learnable(1.0)
    with torch.no_grad():
        sched.free.fill_(-120.0)
    scores = torch.randn(2, 4)
    assert sched.like(scores).item() == torch.finfo(torch.float32).tiny
    scores.requires_grad_(True)
    out = _relaxed_estimators()[make](sched)(scores, lambda z, rows: ((z - 0.3) ** 2).sum(-1))
    out.loss.backward()
    assert torch.isfinite(out.loss).all() and torch.isfinite(scores.grad).all()
