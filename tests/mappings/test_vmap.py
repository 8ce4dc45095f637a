"""``torch.func`` transforms over the sparse mappings: ``vmap`` (the vmapped dimension becomes
more rows of the plain path), per-example gradients, ``jacfwd`` and ``hessian`` through the
closed-form Jacobian, against the unbatched mapping and reverse-mode autograd in float64."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, hessian, jacfwd, jacrev, vmap

from latentgrad.mappings import entmax15, sparsemax
from latentgrad.mappings._sparsemax import sparsemax_by_sorting

MAPPINGS = {"sparsemax": sparsemax, "entmax15": entmax15, "by_sorting": sparsemax_by_sorting}
D = torch.float64


def _scores(*shape: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D) * 2
    x[(0,) * x.dim()] = float("-inf")  # a masked entry
    return x


@pytest.mark.parametrize("name", sorted(MAPPINGS))
@pytest.mark.parametrize("in_dim", [0, 1, 2])
def test_vmap_is_the_mapping_of_the_stacked_rows(name: str, in_dim: int) -> None:
    f = MAPPINGS[name]
    x = _scores(4, 3, 130)  # long rows: the candidate lists of the plain path
    got = vmap(f, in_dims=in_dim)(x)
    torch.testing.assert_close(got, f(x.movedim(in_dim, 0)), rtol=0, atol=1e-15)
    along_first = vmap(lambda t: f(t, dim=0), in_dims=in_dim)(x)
    torch.testing.assert_close(along_first, f(x.movedim(in_dim, 0), dim=1), rtol=0, atol=1e-15)
    torch.testing.assert_close(vmap(vmap(f))(x), f(x), rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", sorted(MAPPINGS))
def test_per_example_gradients_and_forward_mode_match_reverse_mode(name: str) -> None:
    f = MAPPINGS[name]
    x = _scores(5, 9, seed=1)
    w = torch.randn(9, generator=torch.Generator().manual_seed(2), dtype=D)

    def loss(t: torch.Tensor) -> torch.Tensor:
        return (f(t) * w).sum() + (f(t) ** 2).sum()

    per_example = vmap(grad(loss))(x)
    leaf = x.clone().requires_grad_()
    sum(loss(row) for row in leaf).backward()
    torch.testing.assert_close(per_example, leaf.grad)
    row = x[0]
    torch.testing.assert_close(jacfwd(f)(row), jacrev(f)(row))
    torch.testing.assert_close(hessian(loss)(row),
                               torch.autograd.functional.hessian(loss, row))


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
def test_vmapped_mapping_passes_gradcheck_and_gradgradcheck(name: str) -> None:
    """Under vmap the mapping runs as one autograd function with the closed-form Jacobian:
    checked against finite differences, forward mode included."""
    f = MAPPINGS[name]
    x = torch.randn(3, 7, generator=torch.Generator().manual_seed(5), dtype=D).requires_grad_()
    assert torch.autograd.gradcheck(vmap(f), (x,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(vmap(f), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_vmap_keeps_the_dtype_and_validates_the_scores(dtype: torch.dtype) -> None:
    x = _scores(3, 6).to(dtype)
    torch.testing.assert_close(vmap(sparsemax)(x), sparsemax(x))
    assert vmap(entmax15)(x).dtype == dtype
    with pytest.raises(ValueError, match="x"):
        vmap(sparsemax)(torch.full((2, 3), float("nan"), dtype=dtype))


def test_vmap_over_entmax_bisect_says_it_is_unsupported() -> None:
    from latentgrad.mappings import entmax_bisect

    with pytest.raises(RuntimeError, match=r"does not support torch\.func\.vmap"):
        vmap(lambda t: entmax_bisect(t, 1.3))(_scores(3, 5))


@pytest.mark.parametrize("name", ["softmax_pp", "stick_breaking"])
def test_validated_closed_form_mappings_vmap_and_still_refuse_bad_values(name: str) -> None:
    """Their value checks read the data on the host: under vmap they read the unwrapped batch
    (once torch's data-dependent-control-flow error), so vmap, nested vmap and per-example
    Jacobians work with validation on, and a bad entry anywhere in the batch is refused."""
    from latentgrad import mappings

    f = getattr(mappings, name)
    x = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(1), dtype=D)
    torch.testing.assert_close(vmap(f)(x), f(x))
    torch.testing.assert_close(vmap(vmap(f))(x), f(x))
    per_example = vmap(jacrev(f))(x[:, 0])
    torch.testing.assert_close(per_example[1], jacrev(f)(x[1, 0]))
    bad = x[:, 0].clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        vmap(jacrev(f))(bad)
