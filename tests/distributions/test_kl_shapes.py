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
    "ContinuousCategorical K": (
        lambda: D.ContinuousCategorical(_r(2, 3)), lambda: D.ContinuousCategorical(_r(2, 4)),
        "same K",
    ),
    "ContinuousCategorical batch": (
        lambda: D.ContinuousCategorical(_r(2, 3)), lambda: D.ContinuousCategorical(_r(4, 3)),
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



def _b(shape, *event):
    """float64 draws of shape (*shape, *event), seeded by the shape."""
    g = torch.Generator().manual_seed(7 + sum(shape) + len(shape))
    return torch.randn((*shape, *event), generator=g, dtype=torch.float64)


BROADCAST_PAIRS = {
    "HardConcrete": (lambda b: D.HardConcrete(_b(b), 0.5 + _b(b).abs()),) * 2,
    "GaussianSparsemax": (lambda b: D.GaussianSparsemax(_b(b, 3), 0.5 + _b(b, 3).abs()),) * 2,
    "BinaryGaussianSparsemax-MixedUniform": (
        lambda b: D.BinaryGaussianSparsemax(_b(b), 0.5 + _b(b).abs()),
        lambda b: D.MixedUniform(torch.float64).expand(b),
    ),
    "ContinuousCategorical": (lambda b: D.ContinuousCategorical(_b(b, 4)),) * 2,
    "HardConcrete-MixedUniform": (
        lambda b: D.HardConcrete(_b(b), 0.5 + _b(b).abs()),
        lambda b: D.MixedUniform(torch.float64).expand(b),
    ),
}  # fmt: skip


@pytest.mark.parametrize("pair", BROADCAST_PAIRS)
@pytest.mark.parametrize("shapes", [((), (3,)), ((3,), (2, 1)), ((2, 1), (3,)), ((), (0,))])
def test_kl_to_a_q_of_a_larger_batch_broadcasts_like_the_expanded_pair(pair, shapes):
    """The KL's batch shape is broadcast(p.batch_shape, q.batch_shape) and its values are those of
    the pair expanded to it (the quadrature nodes and Monte Carlo draws of p did not broadcast
    against a larger q: RuntimeError/ValueError; the MixedUniform KL kept p's shape)."""
    make_p, make_q = BROADCAST_PAIRS[pair]
    p, q = make_p(shapes[0]), make_q(shapes[1])
    shape = torch.broadcast_shapes(*shapes)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        kl = kl_divergence(p, q)
        torch.manual_seed(0)
        expected = kl_divergence(p.expand(shape), q.expand(shape))
    assert kl.shape == shape
    # the same float64 terms, summed over the quadrature nodes or draws, in another memory layout:
    # vectorised and scalar kernels may round each term differently in its last bit (an AMD CPU
    # gave 2.2e-16 on a KL of 0.22), so a few ulps per term of the 32-node sums are allowed
    tol = 64 * torch.finfo(torch.float64).eps
    torch.testing.assert_close(kl, expected, rtol=tol, atol=tol)
