"""Every distribution on CUDA: the CPU's densities, entropies, means and KLs in float64 where
they are deterministic, and valid draws on the device (the noise streams of the two devices
differ, so draws are compared through their log-densities, not value by value)."""

from __future__ import annotations

import copy

import pytest
import torch
from _same import DEVICE, assert_same, to
from torch.distributions import kl_divergence

from latentgrad import distributions as D
from latentgrad.structures import BitVector, Categorical

F64 = torch.float64
B, K = 6, 5


def _param(*shape, seed, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _positive(*shape, seed):
    return torch.nn.functional.softplus(_param(*shape, seed=seed)) + 0.3


def _planar(seed):
    torch.manual_seed(seed)
    return [D.PlanarFlow(K - 1).to(F64)]


#: name -> factory(seed) of a distribution with float64 CPU parameters
FACTORIES = {
    "non_empty_faces": lambda s: D.NonEmptyFaces(_param(B, K, seed=s)),
    "max_entropy_faces": lambda s: D.MaxEntropyFaces(K, bits=0.3 * s, dtype=F64),
    "gaussian_sparsemax": lambda s: D.GaussianSparsemax(_param(B, K, seed=s), 0.7 + 0.1 * s),
    "igr": lambda s: D.IGR(_param(B, K - 1, seed=s), _positive(B, K - 1, seed=s + 9), 0.5),
    "igr_stick_breaking": lambda s: D.IGRStickBreaking(
        _param(B, K - 1, seed=s), _positive(B, K - 1, seed=s + 9), 0.5, eps=0.01
    ),
    "igr_planar": lambda s: D.IGRPlanar(
        _param(B, K - 1, seed=s), _positive(B, K - 1, seed=s + 9), 0.5, _planar(s)
    ),
    "binary_gaussian_sparsemax": lambda s: D.BinaryGaussianSparsemax(
        _param(B, K, seed=s), _positive(B, K, seed=s + 9)
    ),
    "hard_concrete": lambda s: D.HardConcrete(_param(B, K, seed=s), 0.5),
    "mixed_uniform": lambda s: D.MixedUniform(dtype=F64),
    "mixed_dirichlet": lambda s: D.MixedDirichlet(
        _param(B, K, seed=s), _positive(B, K, seed=s + 9)
    ),
    "continuous_categorical": lambda s: D.ContinuousCategorical(_param(B, K, seed=s, scale=3.0)),
    "stochastic_argmax": lambda s: D.StochasticArgmax(Categorical(K), _param(B, K, seed=s)),
    "stochastic_softmax": lambda s: D.StochasticSoftmax(Categorical(K), _param(B, K, seed=s), 0.5),
    "stochastic_softmax_bits": lambda s: D.StochasticSoftmax(
        BitVector(K), _param(B, K, seed=s), 0.5
    ),
}


def _on_cuda(dist):
    """The same distribution with its tensors (and flows) on the device under test."""
    gpu = copy.deepcopy(dist)
    for key, value in vars(gpu).items():
        if isinstance(value, torch.Tensor):
            setattr(gpu, key, value.to(DEVICE))
        elif isinstance(value, torch.nn.Module):
            value.to(DEVICE)
        elif isinstance(value, list) and value and isinstance(value[0], torch.nn.Module):
            for module in value:
                module.to(DEVICE)
        elif isinstance(value, torch.distributions.Distribution):
            setattr(gpu, key, _on_cuda(value))
    return gpu


def _deterministic(fn) -> bool:
    """Whether ``fn()`` (on the CPU) ignores the noise stream (closed form or quadrature)."""
    torch.manual_seed(0)
    first = fn()
    torch.manual_seed(1)
    return torch.equal(first, fn())


def _draw(dist):
    return dist.rsample((3,)) if dist.has_rsample else dist.sample((3,))


@pytest.mark.parametrize("name", FACTORIES)
def test_draws_live_on_the_device_and_have_the_cpu_density(name):
    cpu = FACTORIES[name](0)
    gpu = _on_cuda(cpu)
    draw = _draw(gpu)
    assert draw.device.type == DEVICE.type and draw.shape == _draw(cpu).shape
    assert torch.isfinite(draw).all()
    value = _draw(cpu)
    try:
        expected = cpu.log_prob(value)
    except NotImplementedError:  # e.g. the SST density beyond the Concrete case
        return
    assert_same(expected, gpu.log_prob(value.to(DEVICE)))


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("method", ["entropy", "mean"])
def test_deterministic_summaries_match_cpu(name, method):
    cpu = FACTORIES[name](0)
    try:
        fn = getattr(cpu, method) if method == "entropy" else lambda: cpu.mean
        fn()
    except NotImplementedError:
        pytest.skip(f"{name} has no {method}")
    if not _deterministic(fn):
        pytest.skip(f"{name}.{method} is a Monte Carlo estimate")
    gpu = _on_cuda(cpu)
    assert_same(fn(), gpu.entropy() if method == "entropy" else gpu.mean)


@pytest.mark.parametrize("name", FACTORIES)
def test_kl_divergence_matches_cpu(name):
    p, q = FACTORIES[name](0), FACTORIES[name](1)
    try:
        kl_divergence(p, q)
    except NotImplementedError:
        pytest.skip(f"no KL registered for {name}")
    if not _deterministic(lambda: kl_divergence(p, q)):
        pytest.skip(f"the KL of {name} is a Monte Carlo estimate")
    assert_same(kl_divergence(p, q), kl_divergence(_on_cuda(p), _on_cuda(q)))


def test_reparameterised_draws_carry_gradients_on_the_device():
    loc = to(_param(B, K, seed=3), DEVICE).requires_grad_(True)
    D.GaussianSparsemax(loc, 0.5).rsample((2,)).sum().backward()
    assert loc.grad is not None and loc.grad.device.type == DEVICE.type
    assert torch.isfinite(loc.grad).all()
