"""``HardConcrete`` agrees with relaxit's Hard Concrete (Louizos et al. 2018; relaxit computes in
float32): the same point masses at 0 and 1 and the same density inside, for the same
parameterisation (relaxit's ``alpha = exp(log_alpha)``, ``beta`` the temperature, ``(gamma, xi)``
the stretch). Skipped where relaxit is not installed (it is in the ``test`` extra)."""

from __future__ import annotations

import pytest
import torch

from latentgrad.distributions import HardConcrete

relaxit = pytest.importorskip("relaxit.distributions")

EPS32 = torch.finfo(torch.float32).eps
# relaxit evaluates in float32: a few ulps of each factor of its density formula, and its mass
# at 1, log(1 - Q), loses eps / P(z = 1) to the cancellation in 1 - Q
RTOL = 64 * EPS32


def _pair(log_alpha: torch.Tensor, temperature: float, stretch: tuple[float, float]):
    ours = HardConcrete(log_alpha, temperature, stretch=stretch)
    shape = log_alpha.shape
    theirs = relaxit.HardConcrete(log_alpha.exp(), torch.full(shape, temperature),
                                  torch.full(shape, stretch[1]), torch.full(shape, stretch[0]))
    return ours, theirs


@pytest.mark.parametrize("temperature", (0.3, 2 / 3, 1.5))
@pytest.mark.parametrize("stretch", ((-0.1, 1.1), (-0.5, 1.2)))
def test_log_prob_of_the_point_masses_and_the_density(temperature, stretch):
    gen = torch.Generator().manual_seed(0)
    log_alpha = 2 * torch.randn(64, generator=gen, dtype=torch.float64)
    ours, theirs = _pair(log_alpha, temperature, stretch)
    inside = torch.rand(7, 64, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    values = torch.cat((torch.zeros(1, 64, dtype=torch.float64),
                        torch.ones(1, 64, dtype=torch.float64), inside))
    expected = ours.log_prob(values)
    got = theirs.log_prob(values.float()).double()
    cancellation = 8 * EPS32 / expected.exp().clamp(max=1.0)
    allowed = RTOL * (1 + expected.abs()) + torch.where(values == 1, cancellation, 0.0)
    assert ((got - expected).abs() <= allowed).all()
