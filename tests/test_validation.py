"""The global validation switch (modeled on torch.distributions' ``set_default_validate_args``)."""

import pytest
import torch
from torch.distributions import Distribution

import latentgrad as lg
from latentgrad._validation import check_finite, check_rows_valid, checked_row_max


def test_checks_run_by_default_and_the_context_manager_turns_them_off_then_restores():
    bad = torch.tensor([[float("nan"), 0.0]])
    assert lg.validation_enabled()
    with pytest.raises(ValueError, match="NaN"):
        check_rows_valid(bad, "scores")
    with lg.validate_args(False):
        assert not lg.validation_enabled()
        assert not Distribution._validate_args
        check_rows_valid(bad, "scores")
        check_finite(bad, "scores")
        assert torch.isnan(checked_row_max(bad, "scores")).all()
    assert lg.validation_enabled() and Distribution._validate_args
    with pytest.raises(ValueError, match="NaN"):
        check_finite(bad, "scores")


def test_the_setting_is_restored_when_the_block_raises():
    with pytest.raises(RuntimeError), lg.validate_args(False):
        raise RuntimeError
    assert lg.validation_enabled()


def test_set_default_validate_args_sets_the_global_default():
    try:
        lg.set_default_validate_args(False)
        assert not lg.validation_enabled() and not Distribution._validate_args
    finally:
        lg.set_default_validate_args(True)
    assert lg.validation_enabled()
    with pytest.raises(TypeError, match="bool"):
        lg.set_default_validate_args(0)
