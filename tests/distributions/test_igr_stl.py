"""Sticking the landing (``stl=True``) for IGR-I, IGR-SB and IGR-Planar, in float64.

Specification: the draw and the values of its densities are unchanged; the gradient is that of
``log q_φ̄(ψ(φ))`` with the density's own parameters φ̄ held fixed (checked against an independent
computation: ``log_prob`` of a frozen copy of the distribution, which inverts the map, at the
differentiable draw); it is unbiased, and it vanishes at every draw where q equals the prior.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.distributions import kl_divergence

from latentgrad.distributions.igr import IGR, IGRPlanar, IGRStickBreaking, PlanarFlow

D = torch.float64
VARIANTS = ["I", "SB", "planar"]


def leaves(k1: int, seed: int, batch=(5,)):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(*batch, k1, generator=g, dtype=D).requires_grad_()
    log_scale = (0.3 * torch.randn(*batch, k1, generator=g, dtype=D)).requires_grad_()
    return loc, log_scale


def flows_for(k1: int, seed: int, batch=(5,), n: int = 2) -> list[PlanarFlow]:
    torch.manual_seed(seed)
    return [PlanarFlow(k1, batch).double() for _ in range(n)]


def family(variant: str, loc, log_scale, flows=None):
    """The variant at (loc, exp(log_scale)), τ = 0.5; SB keeps every stick."""
    scale = log_scale.exp()
    if variant == "I":
        return IGR(loc, scale, 0.5, log_scale=log_scale)
    if variant == "SB":
        return IGRStickBreaking(loc, scale, 0.5, eps=1e-9, quantile=1.0, log_scale=log_scale)
    return IGRPlanar(loc, scale, 0.5, flows, log_scale=log_scale)


def frozen(flows):
    if flows is None:
        return None
    copies = copy.deepcopy(flows)
    for flow in copies:
        flow.requires_grad_(False)
    return copies


def parameters(loc, log_scale, flows):
    return [loc, log_scale] + ([p for f in flows for p in f.parameters()] if flows else [])


@pytest.mark.parametrize("variant", VARIANTS)
def test_stl_keeps_the_draw_and_the_values_of_its_densities(variant):
    loc, log_scale = leaves(4, 0)
    flows = flows_for(4, 1) if variant == "planar" else None
    q = family(variant, loc, log_scale, flows)
    prior = IGR(torch.zeros(4, dtype=D), 1.0, 0.5) if variant != "SB" else IGRStickBreaking(
        torch.zeros(4, dtype=D), 1.0, 0.5, eps=1e-9, quantile=1.0)
    torch.manual_seed(2)
    plain = q.rsample_with_kl(prior, (3,))
    torch.manual_seed(2)
    stl = q.rsample_with_kl(prior, (3,), stl=True)
    for a, b in zip(plain, stl):
        assert torch.equal(a, b)


@pytest.mark.parametrize("variant", VARIANTS)
def test_stl_gradient_is_the_fixed_parameter_density_differentiated_along_the_draw(variant):
    loc, log_scale = leaves(4, 3)
    flows = flows_for(4, 4) if variant == "planar" else None
    params = parameters(loc, log_scale, flows)
    torch.manual_seed(5)
    psi, log_q = family(variant, loc, log_scale, flows).rsample_with_log_prob((3,), stl=True)
    got = torch.autograd.grad(log_q.sum(), params, retain_graph=True)
    fixed = family(variant, loc.detach(), log_scale.detach(), frozen(flows))
    expected = torch.autograd.grad(fixed.log_prob(psi).sum(), params)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-8 * (1 + e.abs().max().item()))
    # and it is not the ordinary gradient, which adds the score term
    torch.manual_seed(5)
    _, log_q = family(variant, loc, log_scale, flows).rsample_with_log_prob((3,))
    ordinary = torch.autograd.grad(log_q.sum(), params)
    assert not torch.allclose(ordinary[1], got[1])


@pytest.mark.parametrize("variant", ["I", "SB"])
def test_stl_kl_gradient_is_zero_at_every_draw_where_the_posterior_is_the_prior(variant):
    loc, log_scale = leaves(3, 6)
    q = family(variant, loc, log_scale)
    p = family(variant, loc.detach(), log_scale.detach())
    _, _, kl = q.rsample_with_kl(p, (50,), stl=True)
    for g in torch.autograd.grad(kl.sum(), [loc, log_scale]):
        assert g.abs().max() <= 1e-10
    _, _, kl = family(variant, loc, log_scale).rsample_with_kl(p, (50,))
    assert torch.autograd.grad(kl.sum(), log_scale)[0].abs().max() > 1  # the score term


def test_stl_kl_gradient_is_unbiased_for_the_closed_form_kl_gradient():
    """IGR-I: the mean over n draws of the STL gradient of the one-sample KL matches the
    gradient of the exact Gaussian KL within five standard errors of that mean."""
    n = 20_000
    loc0, log_scale0 = leaves(3, 7, batch=())
    loc = loc0.detach().expand(n, 3).clone().requires_grad_()  # one leaf row per draw
    log_scale = log_scale0.detach().expand(n, 3).clone().requires_grad_()
    prior = IGR(torch.tensor([0.3, -0.2, 0.1], dtype=D), 1.2, 0.5)
    torch.manual_seed(8)
    _, _, kl = family("I", loc, log_scale).rsample_with_kl(prior, stl=True)
    per_draw = torch.autograd.grad(kl.sum(), [loc, log_scale])
    exact = torch.autograd.grad(kl_divergence(family("I", loc0, log_scale0), prior),
                                [loc0, log_scale0])
    for g, e in zip(per_draw, exact):
        se = g.std(0) / math.sqrt(n)
        assert ((g.mean(0) - e).abs() <= 5 * se).all()


def test_planar_pulled_back_has_the_value_of_z_and_the_inverse_jacobian():
    flow = flows_for(4, 9, batch=(), n=1)[0]
    z = torch.randn(4, dtype=D)
    y = flow(z)[0].detach().requires_grad_()
    back = flow.pulled_back(y, z)
    assert torch.equal(back, z)
    inverse_jacobian = torch.stack(
        [torch.autograd.grad(back[i], y, retain_graph=True)[0] for i in range(4)]
    )
    expected = torch.linalg.inv(jacobian(lambda x: flow(x)[0], z))
    torch.testing.assert_close(inverse_jacobian, expected, rtol=1e-10, atol=1e-12)


def test_frozen_planar_flow_passes_gradient_to_its_input_only():
    flow = flows_for(3, 10, batch=(), n=1)[0]
    z = torch.randn(3, dtype=D, requires_grad=True)
    y, log_det = flow(z, frozen=True)
    torch.testing.assert_close((y, log_det), flow(z))
    (y.sum() + log_det).backward()
    assert z.grad.abs().sum() > 0
    assert all(p.grad is None for p in flow.parameters())


@pytest.mark.parametrize("variant", VARIANTS)
def test_stl_gradient_is_finite_where_the_scale_is_the_dtypes_smallest(variant):
    loc, _ = leaves(3, 11, batch=(2,))
    log_scale = torch.full((2, 3), -90.0, dtype=torch.float32, requires_grad=True)
    loc = loc.detach().float().requires_grad_()
    flows = [f.float() for f in flows_for(3, 12, batch=(2,))] if variant == "planar" else None
    _, log_q = family(variant, loc, log_scale, flows).rsample_with_log_prob(stl=True)
    grads = torch.autograd.grad(log_q.sum(), [loc, log_scale])
    assert all(torch.isfinite(g).all() for g in grads)
