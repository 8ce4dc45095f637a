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


def _no_host_reads(monkeypatch):
    """Make every Python-level read of a tensor's value raise (on a GPU each is a sync)."""

    def read(*_args, **_kwargs):
        raise AssertionError("a tensor value was read on the host")

    for method in ("__bool__", "item", "tolist", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, method, read)


@pytest.mark.parametrize(
    "structure",
    [
        lg.structures.Categorical(5),
        lg.structures.BitVector(5),
        lg.structures.BitVector(5, 2),
        lg.structures.KSubset(5, 2),
        lg.structures.SpanningTree(5),
        lg.structures.Arborescence(5),
        lg.structures.Arborescence(5, 1),
    ],
    ids=repr,
)
def test_with_checks_off_no_structure_reads_score_values_to_validate_them(structure, monkeypatch):
    """Value checks are what the switch turns off: shape and dtype checks stay, nothing waits for
    a value (KSubset's count of finite entries and SpanningTree's symmetry check did)."""
    scores = torch.randn(3, *structure.score_shape)
    with pytest.raises(ValueError):  # a shape check: on regardless
        structure.check_scores(scores[..., :1])
    with lg.validate_args(False):
        _no_host_reads(monkeypatch)
        assert structure.check_scores(scores) is scores
