"""On an accelerator (or under ``torch.compile``) the dense threshold searches do not read their
convergence test on the host: sparsemax and 1.5-entmax then sort the rows instead of iterating.
Both ways must give the same mapping: the accelerator's path is forced here on the CPU and
checked against the float64 references, with its gradients."""

from __future__ import annotations

import pytest
import torch
from _mapping_refs import entmax_root_reference, hard_rows, rowwise, sparsemax_sort_reference

from latentgrad.mappings import _entmax, _sparsemax, entmax15, sparsemax

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
