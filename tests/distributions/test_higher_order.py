"""Second derivatives of the densities: ``log_prob`` is differentiable twice in its parameters
(gradient penalties, Hessian-vector products), checked by ``gradgradcheck`` in float64 at values
each distribution drew itself (the mixed ones include exact 0s, 1s and faces)."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradgradcheck

from latentgrad.distributions import (
    IGR,
    BinaryGaussianSparsemax,
    ContinuousCategorical,
    GaussianSparsemax,
    HardConcrete,
    MixedDirichlet,
    StochasticSoftmax,
)
from latentgrad.structures import Categorical

F64 = torch.float64


def _params(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


CASES = {
    # name: (parameters, distribution from the parameters)
    "GaussianSparsemax": ((_params(2, 4, seed=1),),
                          lambda loc: GaussianSparsemax(loc, 0.7)),
    "BinaryGaussianSparsemax": ((_params(2, 3, seed=2),),
                                lambda loc: BinaryGaussianSparsemax(loc, 0.7)),
    "HardConcrete": ((_params(2, 3, seed=3),), lambda log_alpha: HardConcrete(log_alpha, 0.5)),
    "MixedDirichlet": ((_params(2, 4, seed=4), _params(2, 4, seed=5)),
                       lambda faces, conc: MixedDirichlet(faces, conc.exp())),
    "IGR": ((_params(2, 3, seed=6), 0.3 * _params(2, 3, seed=7)),
            lambda loc, log_scale: IGR(loc, log_scale.exp(), 0.5)),
    "ContinuousCategorical": ((_params(2, 4, seed=9),), ContinuousCategorical),
    "Concrete SST": ((_params(2, 4, seed=8),),
                     lambda scores: StochasticSoftmax(Categorical(4), scores, 0.7)),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_log_prob_is_twice_differentiable_in_the_parameters(name):
    params, make = CASES[name]
    torch.manual_seed(0)
    with torch.no_grad():
        value = make(*params).sample((3,))
    params = tuple(p.clone().requires_grad_() for p in params)
    assert gradgradcheck(lambda *ps: make(*ps).log_prob(value), params, eps=1e-6, atol=1e-5)
