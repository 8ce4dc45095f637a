"""Several categorical variables per example, scores ``(B, L, K)``: exact marginalization over the
product of the supports (brute force over all K^L joint values), joint sampling, and index
latents (``one_hot=False``)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from latentgrad.estimators import (
    ScoreFunction,
    SoftmaxMarginalization,
    SparsemaxMarginalization,
    SumAndSample,
)
from latentgrad.estimators.score_function import joint_topk
from latentgrad.mappings import entmax15, sparsemax

pytestmark = pytest.mark.usefixtures("one_thread")
B, L, K = 3, 2, 4
D = torch.float64
NORMALIZERS = {
    "softmax": (SoftmaxMarginalization, lambda s: s.softmax(-1)),
    "sparsemax": (lambda **kw: SparsemaxMarginalization("sparsemax", **kw), sparsemax),
    "entmax15": (lambda **kw: SparsemaxMarginalization("entmax15", **kw), entmax15),
}


class EmbeddingLoss:
    """``l_b(z) = ||sum_l E_l z_l - t_b||^2`` from one-hots ``(N, L, K)`` or indices ``(N, L)``."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(L, K, 3, generator=g, dtype=D)
        self.target = torch.randn(B, 3, generator=g, dtype=D)
        self.calls = []

    def embed(self, z):
        if z.dtype == torch.long:
            return self.table[torch.arange(L), z].sum(1)
        return torch.einsum("nlk,lkd->nd", z, self.table)

    def __call__(self, z, rows):
        self.calls.append((z, rows))
        return ((self.embed(z) - self.target[rows]) ** 2).sum(-1)


def brute_force(scores, normalize, loss_fn, entropy_coeff=0.0):
    """``mean_b [sum over all K^L joint values of prod_l p_bl(z_l) l_b(z) - c sum_l H(p_bl)]``."""
    p = normalize(scores)
    total = 0.0
    for values in itertools.product(range(K), repeat=L):
        idx = torch.tensor(values).expand(B, L)
        weight = p.gather(-1, idx.unsqueeze(-1)).squeeze(-1).prod(-1)
        total = total + weight * loss_fn(F.one_hot(idx, K).to(D), torch.arange(B))
    logp = torch.where(p > 0, p, 1.0).log()
    return (total + entropy_coeff * (p * logp).sum((-1, -2))).mean()


def _scores(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (1.5 * torch.randn(B, L, K, generator=g, dtype=D)).requires_grad_(True)


@pytest.mark.parametrize("name", NORMALIZERS)
@pytest.mark.parametrize("one_hot", [True, False])
def test_marginalization_over_several_variables_matches_brute_force(name, one_hot):
    factory, normalize = NORMALIZERS[name]
    scores, loss_fn = _scores(), EmbeddingLoss()
    out = factory(entropy_coeff=0.3, one_hot=one_hot)(scores, loss_fn)
    exact = brute_force(scores, normalize, loss_fn, 0.3)
    torch.testing.assert_close(out.loss, exact)
    torch.testing.assert_close(
        torch.autograd.grad(out.loss, scores)[0], torch.autograd.grad(exact, scores)[0]
    )
    (z, rows), = loss_fn.calls[:1]
    p = normalize(scores.detach())
    assert torch.equal(out.support_size, (p > 0).sum(-1).prod(-1))
    assert z.shape == ((len(rows), L) if not one_hot else (len(rows), L, K))
    assert torch.equal(out.rows, rows) and out.weights.shape == rows.shape
    torch.testing.assert_close(
        torch.zeros(B, dtype=D).index_add(0, rows, out.weights), torch.ones(B, dtype=D)
    )


def test_the_product_support_is_capped_with_a_pointer_to_structured_estimators():
    scores = torch.zeros(2, 3, K, dtype=D)  # softmax: K^3 = 64 joint values per example
    with pytest.raises(ValueError, match=r"max_support=10.*SumAndSample"):
        SoftmaxMarginalization(max_support=10)(scores, EmbeddingLoss())
    out = SoftmaxMarginalization(max_support=64)(scores[:, :L], EmbeddingLoss())
    assert out.support_size.tolist() == [K**L, K**L]


def test_joint_topk_is_the_k_most_probable_joint_values():
    scores = _scores(3).detach()
    logp = scores.log_softmax(-1)
    every = torch.tensor(list(itertools.product(range(K), repeat=L)))  # (K^L, L)
    joint = logp[:, torch.arange(L), every].sum(-1)  # (B, K^L)
    for k in (1, 5, K**L):
        top = joint_topk(scores, k)  # (B, k, L)
        got = logp.gather(-1, top.transpose(1, 2)).sum(1)  # (B, k)
        torch.testing.assert_close(got, joint.topk(k, dim=-1).values)


def test_sum_and_sample_with_every_joint_value_summed_is_exact_marginalization():
    scores, loss_fn = _scores(), EmbeddingLoss()
    out = SumAndSample(k=K**L)(scores, loss_fn)
    exact = SoftmaxMarginalization()(scores, loss_fn)
    torch.testing.assert_close(out.loss, exact.loss)
    torch.testing.assert_close(
        torch.autograd.grad(out.loss, scores)[0], torch.autograd.grad(exact.loss, scores)[0]
    )


def _assert_unbiased(est, scores, loss_fn, calls: int, z: float = 5.0) -> None:
    """The mean gradient of ``calls`` independent calls within z standard errors of the
    enumerated exact gradient of E_p[loss]."""
    exact = brute_force(scores, lambda s: s.softmax(-1), loss_fn)
    (g_exact,) = torch.autograd.grad(exact, scores)
    grads = torch.stack([torch.autograd.grad(est(scores, loss_fn).loss, scores)[0]
                         for _ in range(calls)])  # fmt: skip
    mean, se = grads.mean(0), grads.std(0) / calls**0.5
    assert ((mean - g_exact).abs() <= z * se + 1e-12).all(), (mean, g_exact, se)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: ScoreFunction(baseline="leave_one_out", n_samples=100),
        lambda: ScoreFunction(baseline="leave_one_out", n_samples=100, one_hot=False),
    ],
)
def test_joint_score_function_is_unbiased_over_several_variables(factory):
    torch.manual_seed(0)
    _assert_unbiased(factory(), _scores(), EmbeddingLoss(), calls=40)


def test_sum_and_sample_over_several_variables_is_unbiased():
    torch.manual_seed(0)
    _assert_unbiased(SumAndSample(k=3, baseline="batch_loo"), _scores(), EmbeddingLoss(),
                     calls=600)  # fmt: skip
