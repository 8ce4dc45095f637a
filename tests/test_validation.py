"""The global validation switch (modeled on torch.distributions' ``set_default_validate_args``)."""

import pytest
import torch
from torch.distributions import Distribution

import latentgrad as lg
from latentgrad._validation import (
    check_finite,
    check_no_nan,
    check_no_pos_inf,
    check_rows_valid,
    checked_row_max,
)


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


def _hot_paths():
    """Forward+backward calls that must not wait for a value on the device (the CPU-visible
    half of ``tests/cuda/test_cuda_sync.py``: Python-level reads; kernels that sync, such as
    ``nonzero``, only a GPU run can catch). Not listed: paths whose work depends on the data
    (sparse supports, IGR-SB's adaptive truncation, entmax_bisect's iteration count)."""
    from latentgrad import distributions as D
    from latentgrad.estimators import GumbelSoftmax, ScoreFunction, SoftmaxMarginalization

    def loss(z, rows):
        return (z.flatten(1) ** 2).sum(-1)

    s = lg.structures
    return {
        "softmax_pp (tensor tau)": lambda x: lg.mappings.softmax_pp(x, torch.tensor(0.5)),
        "stick_breaking_logits": lg.mappings.stick_breaking_logits,
        "Categorical marginals": s.Categorical(6).marginals,
        "BitVector marginals": s.BitVector(6).marginals,
        "BitVector(6, 2) log_partition": s.BitVector(6, 2).log_partition,
        "KSubset marginals": s.KSubset(6, 2).marginals,
        "KSubset argmax": s.KSubset(6, 2).argmax,
        "stick_breaking": lambda x: lg.mappings.stick_breaking(torch.sigmoid(x)),
        "IGR rsample": lambda x: D.IGR(x[:, 1:], 1.0, 0.5).rsample((2,)),
        "exp_concrete_log_prob": lambda x: D.exp_concrete_log_prob(
            torch.log_softmax(x.detach(), -1), x, torch.tensor(0.5)
        ),
        "binary_concrete_log_prob": lambda x: D.binary_concrete_log_prob(
            torch.sigmoid(x.detach()), x, torch.tensor(0.5)
        ),
        "GaussianSparsemax rsample": lambda x: D.GaussianSparsemax(x, 1.0).rsample((2,)),
        "GumbelSoftmax": lambda x: GumbelSoftmax(0.5)(x, loss).loss,
        "ScoreFunction": lambda x: ScoreFunction(n_samples=2)(x, loss).loss,
        "SoftmaxMarginalization": lambda x: SoftmaxMarginalization()(x, loss).loss,
    }


@pytest.mark.parametrize("name", sorted(_hot_paths()))
def test_with_checks_off_the_hot_paths_read_no_tensor_value_on_the_host(name, monkeypatch):
    fn = _hot_paths()[name]
    x = torch.randn(4, 6).requires_grad_(True)
    fn(x)  # first call with checks on: lazy set-up
    with lg.validate_args(False):
        _no_host_reads(monkeypatch)
        out = fn(x)
        if out.requires_grad:
            out.sum().backward()


SPECIALS = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf"),
            "max": None}  # None: the dtype's largest finite value (finite, must pass)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(), (1,), (5, 7), (3, 4, 9)])
@pytest.mark.parametrize("injected", [(), ("nan",), ("+inf",), ("-inf",), ("max",),
                                      ("nan", "+inf"), ("+inf", "-inf"), ("nan", "-inf")])
def test_value_checks_match_their_entrywise_definitions(dtype, shape, injected):
    """The checks read a tensor's extremes; they must refuse exactly what a test of every entry
    refuses, whatever mix of special values a tensor holds (NaN beside +inf included)."""
    gen = torch.Generator().manual_seed(len(injected) * 10 + len(shape))
    x = torch.randn(shape, generator=gen).to(dtype)
    flat = x.view(-1)
    for i, name in enumerate(injected[: flat.numel()]):
        value = SPECIALS[name]
        flat[(3 * i) % flat.numel()] = torch.finfo(dtype).max if value is None else value
    expected = {
        check_finite: not bool(torch.isfinite(x).all()),
        check_no_nan: bool(torch.isnan(x).any()),
        check_no_pos_inf: bool((x == float("inf")).any()),
    }
    for check, refuses in expected.items():
        if refuses:
            with pytest.raises(ValueError, match="values"):
                check(x, "values")
        else:
            check(x, "values")
