"""Every mapping on CUDA: the CPU's values and gradients in float64."""

from __future__ import annotations

import pytest
import torch
from _same import same_on_gpu

from latentgrad import mappings

F64 = torch.float64


def _scores(*shape, seed=0, scale=2.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _simplex(*shape, seed=1):
    return torch.softmax(_scores(*shape, seed=seed), -1)


def _unit(*shape, seed=2):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * 0.9 + 0.05


MAPPINGS = {
    "sparsemax": (mappings.sparsemax, lambda: _scores(64, 300)),
    "sparsemax_dim0": (lambda x: mappings.sparsemax(x, dim=0), lambda: _scores(50, 7)),
    "sparsemax_threshold": (mappings.sparsemax_threshold, lambda: _scores(64, 300)),
    "entmax15": (mappings.entmax15, lambda: _scores(64, 300)),
    "entmax_bisect": (lambda x: mappings.entmax_bisect(x, 1.3), lambda: _scores(32, 100)),
    "softmax_pp": (mappings.softmax_pp, lambda: _scores(32, 9)),
    "log_softmax_pp": (mappings.log_softmax_pp, lambda: _scores(32, 9)),
    "softmax_pp_inverse": (mappings.softmax_pp_inverse, lambda: _simplex(32, 10)),
    "softmax_pp_log_abs_det_jacobian": (
        mappings.softmax_pp_log_abs_det_jacobian,
        lambda: _simplex(32, 10),
    ),
    "stick_breaking": (mappings.stick_breaking, lambda: _unit(32, 9)),
    "stick_breaking_inverse": (mappings.stick_breaking_inverse, lambda: _simplex(32, 10)),
    "stick_breaking_log_abs_det_jacobian": (
        mappings.stick_breaking_log_abs_det_jacobian,
        lambda: _unit(32, 9),
    ),
    "stick_breaking_logits": (mappings.stick_breaking_logits, lambda: _scores(32, 9)),
    "log_stick_breaking_logits": (mappings.log_stick_breaking_logits, lambda: _scores(32, 9)),
    "stick_breaking_logits_inverse": (
        mappings.stick_breaking_logits_inverse,
        lambda: _simplex(32, 10),
    ),
    "stick_breaking_logits_log_abs_det_jacobian": (
        mappings.stick_breaking_logits_log_abs_det_jacobian,
        lambda: _scores(32, 9),
    ),
}


#: Public names that switch the CPU's fused kernels on and report them: not mappings.
SWITCHES = {"use_fused_kernels", "fused_kernels_active"}


def test_every_public_mapping_is_covered():
    public = set(mappings.__all__) - SWITCHES
    assert public <= {name.removesuffix("_dim0") for name in MAPPINGS}


@pytest.mark.parametrize("name", MAPPINGS)
def test_mapping_matches_cpu(name):
    fn, make = MAPPINGS[name]
    same_on_gpu(fn, make())


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
def test_excluded_entries_and_ties_match_cpu(name):
    x = (_scores(16, 40) * 2).round() / 2  # many ties
    x[:, ::5] = float("-inf")
    same_on_gpu(MAPPINGS[name][0], x, grad=False)


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
def test_vmap_and_per_example_gradients_match_cpu(name):
    fn = MAPPINGS[name][0]
    w = torch.randn(300, generator=torch.Generator().manual_seed(3), dtype=F64)

    def per_example(x):
        return torch.func.vmap(torch.func.grad(lambda r: (fn(r) * w.to(r.device)).sum()))(x)

    same_on_gpu(torch.func.vmap(fn), _scores(8, 300), grad=False)
    same_on_gpu(per_example, _scores(8, 300), grad=False)
