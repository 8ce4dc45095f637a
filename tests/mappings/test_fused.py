"""The fused (torch.compile) path of sparsemax and 1.5-entmax: the same mapping as the plain path
and the float64 references, exact gradients, hard inputs, when it is taken, and its fallback when
compilation fails. Compiles four kernels (float64) once per test process."""

from __future__ import annotations

import importlib

import pytest
import torch
from _mapping_refs import entmax_root_reference, hard_rows, rowwise, sparsemax_sort_reference
from torch.autograd import gradcheck, gradgradcheck

from latentgrad.mappings import entmax15, fused_kernels_active, sparsemax, use_fused_kernels

fused = importlib.import_module("latentgrad.mappings._fused")
compile_state = importlib.import_module("latentgrad._compile")._state
MAPPINGS = {
    "sparsemax": (sparsemax, importlib.import_module("latentgrad.mappings._sparsemax")._FUSED,
                  lambda x: rowwise(sparsemax_sort_reference, x)),
    "entmax15": (entmax15, importlib.import_module("latentgrad.mappings._entmax")._FUSED,
                 lambda x: rowwise(entmax_root_reference, x, 1.5)),
}
pytestmark = pytest.mark.parametrize("name", list(MAPPINGS))


@pytest.fixture(scope="module")
def compiles() -> bool:
    """Whether ``torch.compile`` works on this machine (inductor needs a C++ compiler): the
    tests of the fused path itself skip where it does not, the fallback tests run anyway."""
    saved, saved_failed = dict(fused._state), dict(compile_state)
    fused._state.update(enabled=True)
    compile_state.update(failed=False)
    try:
        sparsemax(torch.randn(2, 150, dtype=torch.float64))
        return not compile_state["failed"]
    finally:
        fused._state.update(saved)
        compile_state.update(saved_failed)


@pytest.fixture(autouse=True)
def fused_on(monkeypatch, request, compiles):
    """The fused path switched on (restored after the test)."""
    if not compiles and "fallback" not in request.node.name:
        pytest.skip("torch.compile does not work here (no C++ compiler?): the plain path answers")
    monkeypatch.setitem(fused._state, "enabled", True)
    monkeypatch.setitem(compile_state, "failed", False)


def _run(fn, x: torch.Tensor, **kwargs) -> tuple[torch.Tensor, bool]:
    """``fn(x)`` and whether it took the fused path (its autograd node, maybe under views)."""
    y = fn(x.requires_grad_(), **kwargs)
    node, took = y.grad_fn, False
    while node is not None and not took:
        took = type(node).__name__.startswith("_FusedFunction")
        node = node.next_functions[0][0] if node.next_functions else None
    return y, took


def _plain(fn, x: torch.Tensor) -> torch.Tensor:
    previous = use_fused_kernels(False)
    try:
        return fn(x)
    finally:
        use_fused_kernels(previous)


@pytest.mark.parametrize("k", [150, 300, 1000])
def test_fused_path_is_the_mapping(name, k):
    # hard_rows: scales from 1e-6 to 1e3 (flat rows restart the kernel), ties, huge offsets,
    # -inf entries; against the float64 reference and the plain path
    fn, _, reference = MAPPINGS[name]
    x = torch.cat([hard_rows(k, k), torch.randn(40, k, dtype=torch.float64) * 2])
    y, took = _run(fn, x)
    assert took and fused_kernels_active()
    torch.testing.assert_close(y, reference(x.detach()), rtol=0, atol=1e-12)
    torch.testing.assert_close(y, _plain(fn, x.detach()), rtol=0, atol=1e-12)


def test_gradients(name):
    fn, _, _ = MAPPINGS[name]
    g = torch.Generator().manual_seed(0)
    for scale in (0.05, 3.0):  # dense and sparse supports
        x = (torch.randn(3, 150, generator=g, dtype=torch.float64) * scale).requires_grad_()
        assert _run(fn, x.detach().clone())[1]
        assert gradcheck(fn, (x,))
        assert gradgradcheck(fn, (x,))
    # the VJP of long rows, the plain path's, and the JVP (forward mode) likewise
    x = torch.randn(8, 1000, generator=g, dtype=torch.float64)
    v = torch.randn(8, 1000, generator=g, dtype=torch.float64)
    xf = x.clone().requires_grad_()
    y, took = _run(fn, xf)
    assert took
    (got,) = torch.autograd.grad(y, xf, v)
    xp = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(_plain(fn, xp), xp, v)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():
        jv = fwad.unpack_dual(fn(fwad.make_dual(x, v))).tangent
    torch.testing.assert_close(jv, expected, rtol=0, atol=1e-12)  # J is symmetric


@pytest.mark.parametrize(
    "dtype", [pytest.param(torch.float32, marks=pytest.mark.slow), torch.float64], ids=str)
def test_extreme_magnitudes_ties_and_minus_inf(name, dtype):
    # entries up to the dtype's largest value (differences overflow to -inf), exact ties,
    # -inf entries: the output is on the simplex, finite, and the float64 mapping of the input
    fn, _, reference = MAPPINGS[name]
    big = torch.finfo(dtype).max
    k = 200
    rows = torch.zeros(6, k, dtype=torch.float64)
    rows[0, :3] = big  # three tied maxima at the top of the range
    rows[1] = torch.linspace(-1, 1, k, dtype=torch.float64) * big
    rows[2, ::2] = float("-inf")
    rows[3] = 7.0  # all tied
    rows[4, 50:] = float("-inf")
    rows[4, 0], rows[4, 1] = big, -big
    rows[5] = torch.arange(k) % 3  # many ties
    x = rows.to(dtype)
    y, took = _run(fn, x)
    assert took
    assert not y.isnan().any() and (y >= 0).all()
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(y.sum(-1).double(), torch.ones(6, dtype=torch.float64),
                               rtol=0, atol=8 * k * eps)
    torch.testing.assert_close(y.double(), reference(x.detach().double()), rtol=0,
                               atol=8 * k * eps)


def test_rows_that_stay_inexact_take_the_plain_path(name, monkeypatch):
    # flat rows need more iterations than one kernel call: without restarts, the plain path
    # finishes them; with them, the kernel does
    fn, _, reference = MAPPINGS[name]
    x = torch.randn(30, 2000, dtype=torch.float64) * 0.05
    expected = reference(x)
    for restarts in (0, fused._RESTARTS):
        monkeypatch.setattr(fused, "_RESTARTS", restarts)
        y, took = _run(fn, x.clone())
        assert took
        torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    one = torch.randn(2, 2000, dtype=torch.float64) * torch.tensor([[3.0], [0.05]])
    torch.testing.assert_close(_run(fn, one)[0], reference(one.detach()), rtol=0, atol=1e-12)


def test_where_the_fused_path_applies(name, monkeypatch):
    fn, _, reference = MAPPINGS[name]
    x = torch.randn(4, 200, 3, dtype=torch.float64)
    y, took = _run(fn, x.clone(), dim=1)  # rows along any dim
    assert took
    torch.testing.assert_close(y, reference(x.movedim(1, -1)).movedim(-1, 1), rtol=0, atol=1e-12)
    for shape in [(5, fused.FUSED_MIN_K - 1), (2, fused.FUSED_MAX_K + 1), (1, 300)]:
        assert not _run(fn, torch.randn(shape, dtype=torch.float64))[1]
    y, took = _run(fn, torch.empty(0, 300, dtype=torch.float64))
    assert y.shape == (0, 300)
    use_fused_kernels(False)
    assert not _run(fn, torch.randn(5, 300, dtype=torch.float64))[1] and not fused_kernels_active()
    with pytest.raises(TypeError, match="enabled"):
        use_fused_kernels(1)
    monkeypatch.setenv(fused.ENV_VAR, "1")
    assert fused._enabled_by_environment()
    monkeypatch.setenv(fused.ENV_VAR, "0")
    assert not fused._enabled_by_environment()


def test_bad_scores_are_rejected(name):
    fn, _, _ = MAPPINGS[name]
    x = torch.randn(4, 300, dtype=torch.float64)
    for value, message in [(float("nan"), "NaN"), (float("inf"), r"\+inf")]:
        bad = x.clone()
        bad[2, 7] = value
        with pytest.raises(ValueError, match=message):
            fn(bad)
    bad = x.clone()
    bad[1] = float("-inf")
    with pytest.raises(ValueError, match="entirely -inf"):
        fn(bad)


@pytest.mark.parametrize("stage", ["compile", "call"])
def test_failed_compilation_fallback_is_the_plain_path(name, stage, monkeypatch):
    # no C++ compiler (say): torch.compile, or the first call of its result, raises; the plain
    # path answers, the fused path stays off for the process, and nothing is compiled again
    fn, mapping, reference = MAPPINGS[name]
    attempts = []

    def failing(*args, **kwargs):
        attempts.append(1)
        raise RuntimeError("no compiler")

    monkeypatch.setattr(mapping.kernel, "compiled", None if stage == "compile" else failing)
    monkeypatch.setattr(torch, "compile", failing)
    x = torch.randn(6, 300, dtype=torch.float64)
    for _ in range(2):
        y, took = _run(fn, x.clone())
        assert not took and not fused_kernels_active()
        torch.testing.assert_close(y, reference(x), rtol=0, atol=1e-12)
    assert len(attempts) == 1


def test_compilation_keeps_distribution_validation_on(name):
    # torch.compile's first use switches torch.distributions' argument validation off for the
    # process; the fused path restores it
    fn, _, _ = MAPPINGS[name]
    assert _run(fn, torch.randn(4, 300, dtype=torch.float64))[1]
    assert torch.distributions.Distribution._validate_args


def test_output_can_be_modified_in_place(name):
    # as on the plain path, the output is a fresh tensor (not a view made in a custom
    # Function): in-place ops on it work, and backward through them sees the modification
    fn, _, _ = MAPPINGS[name]
    x = torch.randn(4, 300, dtype=torch.float64)
    y, took = _run(fn, x.clone())
    assert took and not y._is_view()
    expected = _plain(fn, x).detach()
    y.mul_(2.0)  # raised "Output 0 of _FusedFunction is a view and is being modified inplace"
    torch.testing.assert_close(y.detach(), 2.0 * expected, rtol=0, atol=1e-12)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()  # y is saved for backward: a stale y is refused, not used
