"""Every closed-form KL and discrete entropy is non-negative as returned, exactly 0 where the two
distributions coincide or the space has one point, whatever the rounding of the CPU."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.distributions import kl_divergence

from latentgrad.distributions import (
    IGR,
    BinaryGaussianSparsemax,
    ContinuousCategorical,
    HardConcrete,
    IGRStickBreaking,
    MaxEntropyFaces,
    MixedDirichlet,
    MixedUniform,
    NonEmptyFaces,
)

D = torch.float64


def _pair(seed: int, k: int, nudge: float):
    """Closed-form-KL families with parameters θ and θ·(1 + nudge) (nudge 0: identical)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=D)

    s, a, loc, sig = r(3, k), r(3, k).exp(), r(3, max(k - 1, 1)), r(3, max(k - 1, 1)).exp()
    m, t = r(3), r(3).exp()

    def two(make, *params):
        return make(*params), make(*(p * (1 + nudge) for p in params))

    return {
        "faces": two(NonEmptyFaces, s),
        "faces-maxent": (NonEmptyFaces(s), MaxEntropyFaces(k, dtype=D)),
        "maxent-faces": (MaxEntropyFaces(k, dtype=D), NonEmptyFaces(s)),
        "maxent": (MaxEntropyFaces(k, dtype=D), MaxEntropyFaces(k, form="maxent-reference",
                                                                 dtype=D)),
        "mixed-dirichlet": two(MixedDirichlet, s, a),
        "continuous-categorical": two(ContinuousCategorical, s),
        "igr": two(lambda loc_, sig_: IGR(loc_, sig_, 0.5), loc, sig),
        "igr-sb": two(lambda loc_, sig_: IGRStickBreaking(loc_, sig_, 0.5, eps=0.01), loc, sig),
        "bgs": two(BinaryGaussianSparsemax, m, t),
        "hard-concrete": two(HardConcrete, m, t),
        "bgs-uniform": (BinaryGaussianSparsemax(m, t), MixedUniform(dtype=D).expand((3,))),
    }


@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 5),
       nudge=st.sampled_from([0.0, 1e-16, 1e-12, 1e-6, 0.3]))
def test_kl_is_nonnegative_and_exactly_zero_between_identical_parameters(seed, k, nudge):
    for name, (p, q) in _pair(seed, k, nudge).items():
        kl = kl_divergence(p, q)
        assert torch.isfinite(kl).all() and (kl >= 0).all(), (name, kl)
        assert (kl_divergence(p, p) == 0).all(), name


@pytest.mark.parametrize("form", ["maxent", "maxent-reference"])
def test_one_face_space_has_zero_kl_and_entropy(form):
    s = torch.randn(4, 1, dtype=D) * 3
    p = MixedDirichlet(NonEmptyFaces(s), torch.rand(4, 1, dtype=D) + 0.1)
    q = MixedDirichlet(NonEmptyFaces(-s), torch.rand(4, 1, dtype=D) + 2)
    prior = MixedDirichlet(MaxEntropyFaces(1, form=form, dtype=D), torch.ones(1, dtype=D))
    for kl in (kl_divergence(p, q), kl_divergence(p, prior), kl_divergence(p.faces, q.faces),
               kl_divergence(p.faces, prior.faces.expand((4,)))):
        assert (kl == 0).all()
    assert (p.entropy() == 0).all() and (p.faces.entropy() == 0).all()
    assert (prior.faces.entropy() == 0).all()


def test_discrete_entropies_are_nonnegative_at_extreme_scores():
    s = torch.tensor([[40.0, -40.0, 40.0], [1e3, 1e3, -1e3]], dtype=torch.float32)
    assert (NonEmptyFaces(s).entropy() >= 0).all()
