"""kl_divergence between latentgrad distributions of incompatible shapes: one ValueError naming
both shapes (torch raised its own RuntimeError from inside the KL's arithmetic)."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import kl_divergence

import latentgrad.distributions as D


def _r(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


CASES = {
    "IGR K": (lambda: D.IGR(_r(3), 1.0, 0.5), lambda: D.IGR(_r(4), 1.0, 0.5), "same K"),
    "IGR batch": (
        lambda: D.IGR(_r(2, 3), 1.0, 0.5), lambda: D.IGR(_r(4, 3), 1.0, 0.5), "(2,) and (4,)"
    ),
    "IGR-SB K": (
        lambda: D.IGRStickBreaking(_r(3), 1.0, 0.5, eps=0.01),
        lambda: D.IGRStickBreaking(_r(4), 1.0, 0.5, eps=0.01),
        "same K",
    ),
    "HardConcrete": (
        lambda: D.HardConcrete(_r(3), 0.5), lambda: D.HardConcrete(_r(4), 0.5), "(3,) and (4,)"
    ),
    "BinaryGaussianSparsemax": (
        lambda: D.BinaryGaussianSparsemax(_r(3), 1.0),
        lambda: D.BinaryGaussianSparsemax(_r(4), 1.0),
        "(3,) and (4,)",
    ),
    "NonEmptyFaces batch": (
        lambda: D.NonEmptyFaces(_r(2, 3)), lambda: D.NonEmptyFaces(_r(4, 3)), "(2,) and (4,)"
    ),
    "NonEmptyFaces K": (
        lambda: D.NonEmptyFaces(_r(2, 3)), lambda: D.NonEmptyFaces(_r(2, 4)), "same K"
    ),
    "MixedDirichlet batch": (
        lambda: D.MixedDirichlet(D.NonEmptyFaces(_r(2, 3)), torch.ones(3)),
        lambda: D.MixedDirichlet(D.NonEmptyFaces(_r(4, 3)), torch.ones(3)),
        "(2,) and (4,)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_incompatible_shapes_raise_one_value_error_naming_them(case):
    make_p, make_q, shapes = CASES[case]
    p, q = make_p(), make_q()
    with pytest.raises(ValueError, match=f"kl_divergence\\({type(p).__name__}, ") as err:
        kl_divergence(p, q)
    assert shapes in str(err.value)


def test_broadcasting_batch_shapes_still_work():
    p = D.HardConcrete(_r(2, 1), 0.5)
    q = D.HardConcrete(_r(3), 0.5)
    assert kl_divergence(p, q).shape == (2, 3)
