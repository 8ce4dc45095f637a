"""On an accelerator (or under ``torch.compile``) the threshold searches do not read their
convergence test on the host at every step: the dense sparsemax and 1.5-entmax thresholds sort
the rows instead of iterating, and entmax_bisect reads its test once per few Newton steps. Each
must give the same mapping: the accelerator's path is forced here on the CPU and checked
against the float64 references (entmax_bisect: against its CPU path), with its gradients."""

from __future__ import annotations

import pytest
import torch
from _mapping_refs import entmax_root_reference, hard_rows, rowwise, sparsemax_sort_reference

from latentgrad.mappings import _entmax, _sparsemax, entmax15, entmax_bisect, sparsemax

CASES = {
    "sparsemax": (sparsemax, _sparsemax, lambda r: sparsemax_sort_reference(r)),
    "entmax15": (entmax15, _entmax, lambda r: entmax_root_reference(r, 1.5)),
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("k", [1, 2, 7, 40, 300])  # short rows, and long rows of near ties
def test_sorted_dense_path_matches_the_reference(name, k, monkeypatch):
    fn, module, reference = CASES[name]
    monkeypatch.setattr(module, "host_reads_free", lambda x: False)
    x = hard_rows(k, k)
    if k == 300:  # dense: most entries are candidates, so the full rows are searched
        x = 1e-3 * torch.randn(3, k, dtype=torch.float64)
    torch.testing.assert_close(fn(x), rowwise(reference, x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_sorted_dense_path_gradients(name, monkeypatch):
    fn, module, _ = CASES[name]
    monkeypatch.setattr(module, "host_reads_free", lambda x: False)
    x = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x,))


@pytest.mark.parametrize("alpha", [1.0, 1.2, 1.5, 2.0, 4.0, "per_row"])
def test_entmax_bisect_without_host_reads_is_the_same_mapping(alpha, monkeypatch):
    """Off the CPU entmax_bisect computes both parametrisations' logarithms (no read of which rows
    need which) and reads its convergence test once per ``_BISECT_CHECK_EVERY`` steps instead of
    every step: the same solution, to the solver's tolerance, and the same gradients."""
    gen = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(6, 9, generator=gen, dtype=torch.float64)
    if alpha == "per_row":  # rows on both sides of the switch between the two unknowns
        alpha = torch.tensor([1.0, 1.05, 1.3, 1.7, 2.5, 6.0], dtype=torch.float64).unsqueeze(1)
    expected = entmax_bisect(x, alpha)
    monkeypatch.setattr(_entmax, "host_reads_free", lambda x: False)
    torch.testing.assert_close(entmax_bisect(x, alpha), expected, rtol=1e-10, atol=1e-13)
    xg = x[1:4, :5].clone().requires_grad_(True)  # per row: alpha > 1 (gradcheck steps both ways)
    a = alpha[1:4].clone().requires_grad_(True) if torch.is_tensor(alpha) else alpha
    inputs = (xg, a) if torch.is_tensor(a) else (xg,)
    assert torch.autograd.gradcheck(lambda *t: entmax_bisect(t[0], a if len(t) == 1 else t[1]),
                                    inputs)  # fmt: skip
