"""``on_device``: a distribution (and the distributions it holds) with its tensors moved, for
priors built once on the host and used beside parameters on an accelerator. The ``meta``
device stands in for an accelerator here."""

from __future__ import annotations

import torch
from torch.distributions import Distribution

from latentgrad.distributions import MaxEntropyFaces, MixedDirichlet
from latentgrad.distributions._device import on_device


def _tensors(dist: Distribution) -> list[torch.Tensor]:
    found = []
    for value in vars(dist).values():
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, Distribution):
            found.extend(_tensors(value))
    return found


def test_every_tensor_moves_also_those_of_held_distributions():
    prior = MixedDirichlet(MaxEntropyFaces(5), torch.ones(5))
    prior.faces.mean  # a cached lazy property moves too  # noqa: B018
    moved = on_device(prior, torch.device("meta"))
    assert moved is not prior and moved.faces is not prior.faces
    assert _tensors(moved) and all(t.device.type == "meta" for t in _tensors(moved))
    assert all(t.device.type == "cpu" for t in _tensors(prior))  # the original is untouched
    assert moved.batch_shape == prior.batch_shape and moved.event_shape == prior.event_shape


def test_nothing_to_move_returns_the_distribution_itself():
    prior = MixedDirichlet(MaxEntropyFaces(5), torch.ones(5))
    assert on_device(prior, torch.device("cpu")) is prior



def test_a_dtype_casts_the_floating_tensors_only():
    faces = MaxEntropyFaces(4)
    cast = on_device(faces, torch.device("cpu"), torch.float64)
    assert all(t.dtype == torch.float64 for t in _tensors(cast) if t.is_floating_point())
    kept = [t for t in _tensors(cast) if not t.is_floating_point()]
    assert [t.dtype for t in kept] == [t.dtype for t in _tensors(faces)
                                       if not t.is_floating_point()]
    torch.testing.assert_close(cast.mean, faces.mean.double(), rtol=1e-5, atol=1e-6)  # float32 in
