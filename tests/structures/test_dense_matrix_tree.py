"""Dense matrix-tree fast path: equals the log-domain elimination on every row it trusts, rejects
the rows where cancellation ruins it, and the structures stay exact on mixed batches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latentgrad.structures import _dense_matrix_tree as dense
from latentgrad.structures._matrix_tree import log_count_every_root, log_count_rooted_at_zero
from latentgrad.structures.arborescence import Arborescence
from latentgrad.structures.spanning_tree import SpanningTree

F64 = torch.float64
# Two log-partition computations of a 4-node graph (an elimination and a brute-force sum, or a
# batch and a single row) agree to O(n^3) roundings of the log-scale values: n^3 * eps, times 8.
ELIMINATION_RTOL = 8 * 4**3 * torch.finfo(F64).eps


@pytest.fixture(params=["reads_on_host", "no_host_reads"])
def host_reads(request, monkeypatch):
    """On an accelerator the trust test is not read on the host: every row goes through the
    selects (``torch.where``) that the CPU skips when all rows are trusted; both give the same."""
    if request.param == "no_host_reads":
        monkeypatch.setattr(dense, "host_reads_free", lambda x: False)
    return request.param


def _single_root_eliminated(logw: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(rho + log_count_every_root(logw), dim=-1)


def _inputs(kind: str, batch: int, n: int, scale: float, seed: int) -> tuple[torch.Tensor, ...]:
    """Validated-style inputs of each fast function: zero diagonal, symmetric when undirected."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, n, n, generator=gen, dtype=F64) * scale
    if kind == "undirected":
        a = (a + a.mT) / 2
    a = a.masked_fill(torch.eye(n, dtype=torch.bool), 0)
    if kind == "single_root":
        return a, torch.randn(batch, n, generator=gen, dtype=F64) * scale
    return (a,)


#: kind -> (fast log count, fast closed-form marginals, elimination reference)
PATHS = {
    "undirected": (
        dense.dense_log_count_undirected,
        dense.dense_marginals_undirected,
        log_count_rooted_at_zero,
    ),
    "rooted": (
        dense.dense_log_count_rooted_at_zero,
        dense.dense_marginals_rooted_at_zero,
        log_count_rooted_at_zero,
    ),
    "single_root": (
        dense.dense_log_count_single_root,
        # the marginals take one matrix: the arc scores with the root scores on the diagonal
        lambda a, roots: dense.dense_marginals_single_root(
            a.diagonal_scatter(roots, dim1=-2, dim2=-1)),
        _single_root_eliminated,
    ),
}


def _value_and_marginals(kind: str, fn, args: tuple[torch.Tensor, ...]):
    """``fn(*args)`` (first output if a tuple) and the marginals as its gradient: undirected,
    ``g + gᵀ`` (only symmetric perturbations exist); single root, root children on the diagonal.
    """
    leaves = [a.detach().requires_grad_(True) for a in args]
    out = fn(*leaves)
    value = out[0] if isinstance(out, tuple) else out
    grads = torch.autograd.grad(value.sum(), leaves)
    if kind == "undirected":
        return value.detach(), grads[0] + grads[0].mT
    if kind == "single_root":
        return value.detach(), grads[0] + torch.diag_embed(grads[1])
    return value.detach(), grads[0]


def weak_bridge() -> torch.Tensor:
    """Edges {0,1}, {2,3} at +100, bridge {1,2} at 0, the rest -100 (symmetric, zero diagonal)."""
    scores = torch.full((4, 4), -100.0, dtype=F64)
    for (a, b), value in {(0, 1): 100.0, (2, 3): 100.0, (1, 2): 0.0}.items():
        scores[a, b] = scores[b, a] = value
    return scores.fill_diagonal_(0)


def weak_arc() -> torch.Tensor:
    """0 -> 1 and the 2-cycle 2 <-> 3 at +100, the arc 1 -> 2 at 0, the rest -100."""
    scores = torch.full((4, 4), -100.0, dtype=F64)
    scores[0, 1] = scores[2, 3] = scores[3, 2] = 100.0
    scores[1, 2] = 0.0
    return scores.fill_diagonal_(0)


@pytest.mark.parametrize("kind", list(PATHS))
@pytest.mark.parametrize("n", [2, 3, 8, 20])
def test_fast_path_trusts_moderate_scores_and_matches_elimination(kind, n, host_reads):
    fast, fast_marginals, slow = PATHS[kind]
    args = _inputs(kind, 16, n, 1.5, seed=n)
    mu, ok = fast_marginals(*args)
    assert ok.all() and torch.equal(fast(*args)[1], ok)
    (log_z, grad), (expected_log_z, expected) = (
        _value_and_marginals(kind, f, args) for f in (fast, slow)
    )
    torch.testing.assert_close(log_z, expected_log_z, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mu, expected, rtol=1e-10, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(
    kind=st.sampled_from(list(PATHS)),
    n=st.integers(3, 9),
    scale=st.sampled_from([1.0, 4.0, 10.0, 30.0, 100.0]),
    seed=st.integers(0, 2**16),
)
def test_trusted_rows_are_within_the_tolerance_of_elimination(kind, n, scale, seed):
    # The trust test is a first-order bound on the error of the gradient (the marginals); check
    # it is honest on rows of every conditioning, the ill-conditioned ones being rejected.
    fast, fast_marginals, slow = PATHS[kind]
    args = _inputs(kind, 32, n, scale, seed)
    mu, ok = fast_marginals(*args)
    assert torch.equal(fast(*args)[1], ok)
    (log_z, grad), (expected_log_z, expected) = (
        _value_and_marginals(kind, f, args) for f in (fast, slow)
    )
    rel = (log_z - expected_log_z).abs() / expected_log_z.abs().clamp_min(1)
    assert (rel[ok] <= 1e-12).all()
    for got in (grad, mu):
        assert ((got - expected).abs()[ok] <= dense.TOLERANCE).all()
        assert torch.all(got[~ok] == 0)  # rejected rows: zero, and no gradient from the fast path


def test_weak_bridge_and_weak_arc_are_rejected():
    # The true normalised determinants are ~exp(-100): a float64 factorisation cancels there.
    assert not dense.dense_log_count_undirected(weak_bridge()[None])[1].item()
    assert not dense.dense_log_count_rooted_at_zero(weak_arc()[None])[1].item()
    rho = torch.tensor([[100.0, -100.0, -100.0, -100.0]], dtype=F64)
    assert not dense.dense_log_count_single_root(weak_arc()[None], rho)[1].item()


def _mixed_batch(extreme: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rows with ``extreme`` at rows 1 and 4 (and row 4 also scaled): scores, expected ok."""
    a = torch.randn(6, 4, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    if symmetric:
        a = (a + a.mT) / 2
    a[1] = extreme
    a[4] = extreme * 0.9
    return a, torch.tensor([True, False, True, True, False, True])


def test_spanning_tree_mixed_batch_falls_back_only_on_the_extreme_rows(host_reads):
    scores, expected_ok = _mixed_batch(weak_bridge(), symmetric=True)
    work = scores.masked_fill(torch.eye(4, dtype=torch.bool), 0)
    assert torch.equal(dense.dense_log_count_undirected(work)[1], expected_ok)
    tree = SpanningTree(4)
    leaf = scores.clone().requires_grad_(True)
    log_z = tree.log_partition(leaf)
    torch.testing.assert_close(log_z, log_count_rooted_at_zero(work), rtol=ELIMINATION_RTOL,
                               atol=0)
    (grad,) = torch.autograd.grad(log_z.sum(), leaf)
    assert torch.isfinite(grad).all()
    mu = tree.marginals(scores)
    for b in range(scores.shape[0]):  # row by row (fast or fallback alone) = within the batch
        torch.testing.assert_close(tree.marginals(scores[b]), mu[b], rtol=ELIMINATION_RTOL,
                                   atol=1e-300)
    torch.testing.assert_close(tree.marginals(scores.float()).double(), mu, rtol=0, atol=1e-6)


@pytest.mark.parametrize("root", [None, 0])
def test_arborescence_mixed_batch_falls_back_only_on_the_extreme_rows(root, host_reads):
    scores, expected_ok = _mixed_batch(weak_arc(), symmetric=False)
    if root is None:
        scores.diagonal(dim1=-2, dim2=-1).copy_(torch.tensor([100.0, -100.0, -100.0, -100.0]))
    arcs = scores.masked_fill(torch.eye(4, dtype=torch.bool), 0)
    if root is None:
        rho = scores.diagonal(dim1=-2, dim2=-1)
        _, ok = dense.dense_log_count_single_root(arcs, rho)
        reference = _single_root_eliminated(arcs, rho)
    else:
        _, ok = dense.dense_log_count_rooted_at_zero(arcs)
        reference = log_count_rooted_at_zero(arcs)
    assert torch.equal(ok, expected_ok)
    arb = Arborescence(4, root)
    torch.testing.assert_close(arb.log_partition(scores), reference, rtol=ELIMINATION_RTOL,
                               atol=0)
    mu = arb.marginals(scores)
    for b in range(scores.shape[0]):
        torch.testing.assert_close(arb.marginals(scores[b]), mu[b], rtol=ELIMINATION_RTOL,
                                   atol=1e-300)


def _sym(e: torch.Tensor, n: int) -> torch.Tensor:
    return SpanningTree(n).from_edges(e)


@pytest.mark.parametrize(
    "structure", [SpanningTree(5), Arborescence(5, 0), Arborescence(5, 2), Arborescence(5)]
)
def test_marginals_through_the_fast_path_pass_gradcheck_and_gradgradcheck(structure):
    n = 5
    gen = torch.Generator().manual_seed(21)
    if isinstance(structure, SpanningTree):
        params = torch.randn(2, n * (n - 1) // 2, generator=gen, dtype=F64)

        def to_scores(p):
            return _sym(p, n)

        _, ok = dense.dense_log_count_undirected(to_scores(params))
    else:
        params = torch.randn(2, n, n, generator=gen, dtype=F64)

        def to_scores(p):
            return p

        arcs = params.masked_fill(torch.eye(n, dtype=torch.bool), 0)
        if structure.root is None:
            _, ok = dense.dense_log_count_single_root(arcs, params.diagonal(dim1=-2, dim2=-1))
        else:
            _, ok = dense.dense_log_count_rooted_at_zero(arcs)
    assert ok.all()  # these inputs go through the fast path
    params.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: structure.marginals(to_scores(p)), (params,))
    assert torch.autograd.gradgradcheck(lambda p: structure.marginals(to_scores(p)), (params,))


@pytest.mark.parametrize("structure", [SpanningTree(10), Arborescence(10, 0), Arborescence(10)])
def test_float32_scores_up_to_100_match_the_float64_elimination(structure):
    uniform = torch.rand(8, 10, 10, generator=torch.Generator().manual_seed(5), dtype=F64)
    if isinstance(structure, SpanningTree):
        uniform = (uniform + uniform.mT) / 2
    scores = (uniform * 200 - 100).float()
    work = scores.double()
    arcs = work.masked_fill(torch.eye(10, dtype=torch.bool), 0)
    if isinstance(structure, SpanningTree) or structure.root == 0:
        reference = log_count_rooted_at_zero
        args = (arcs,)
    else:
        reference = _single_root_eliminated
        args = (arcs, work.diagonal(dim1=-2, dim2=-1))
    log_z = structure.log_partition(scores)
    assert log_z.dtype == torch.float32
    torch.testing.assert_close(log_z.double(), reference(*args), rtol=2e-7, atol=0)
    mu = structure.marginals(scores)
    assert mu.dtype == torch.float32 and torch.isfinite(mu).all()
    # the float64 elimination's gradient (undirected: both triangles of the symmetric matrix)
    leaf = work.clone().requires_grad_(True)
    if isinstance(structure, SpanningTree):
        sym = ((leaf + leaf.mT) / 2).masked_fill(torch.eye(10, dtype=torch.bool), 0)
        (grad,) = torch.autograd.grad(reference(sym).sum(), leaf)
        expected = grad + grad.mT
    else:
        lw = leaf.masked_fill(torch.eye(10, dtype=torch.bool), 0)
        extra = (leaf.diagonal(dim1=-2, dim2=-1),) if structure.root is None else ()
        (expected,) = torch.autograd.grad(reference(lw, *extra).sum(), leaf)
    torch.testing.assert_close(mu.double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("structure", [SpanningTree(4), Arborescence(4, 0), Arborescence(4)])
def test_mixed_batch_marginals_pass_gradcheck_and_gradgradcheck(structure, host_reads):
    # Row 0 takes the fast path, row 1 (the extreme pattern at +-40) the elimination fallback.
    if isinstance(structure, SpanningTree):
        extreme = weak_bridge() * 0.4
        random = torch.randn(4, 4, generator=torch.Generator().manual_seed(8), dtype=F64)
        params = structure.to_edges(torch.stack([(random + random.mT) / 2, extreme]))
        ok = dense.dense_log_count_undirected(_sym(params, 4))[1]

        def marginals(p):
            return structure.marginals(_sym(p, 4))
    else:
        random = torch.randn(4, 4, generator=torch.Generator().manual_seed(8), dtype=F64)
        params = torch.stack([random, weak_arc() * 0.4])
        arcs = params.masked_fill(torch.eye(4, dtype=torch.bool), 0)
        if structure.root is None:
            params[1].diagonal().copy_(torch.tensor([40.0, -40.0, -40.0, -40.0]))
            ok = dense.dense_log_count_single_root(arcs, params.diagonal(dim1=-2, dim2=-1))[1]
        else:
            ok = dense.dense_log_count_rooted_at_zero(arcs)[1]
        marginals = structure.marginals
    assert ok.tolist() == [True, False]
    params.requires_grad_(True)
    assert torch.autograd.gradcheck(marginals, (params,))
    assert torch.autograd.gradgradcheck(marginals, (params,))


@pytest.mark.parametrize("structure", [SpanningTree(4), Arborescence(4, 1), Arborescence(4)])
def test_empty_batch_gives_empty_results(structure):
    scores = torch.zeros(0, 4, 4, dtype=F64)
    assert structure.log_partition(scores).shape == (0,)
    assert structure.marginals(scores).shape == (0, 4, 4)


def test_closed_form_backward_of_undirected_marginals_equals_autograd_of_their_graph():
    """The hand-written VJP (two batched products) against autograd through the same formula,
    on symmetric perturbations, for rows the fast path trusts and a row it rejects."""
    n = 7
    random = torch.randn(3, n, n, generator=torch.Generator().manual_seed(31), dtype=F64) * 3
    scores = torch.cat([(random + random.mT) / 2, torch.zeros(1, n, n, dtype=F64)])
    scores[-1, :4, :4] = weak_bridge()  # rejected: the VJP must be zero there, like autograd's
    scores = scores.masked_fill(torch.eye(n, dtype=torch.bool), 0)
    cotangent = torch.randn(4, n, n, generator=torch.Generator().manual_seed(32), dtype=F64)
    grads = []
    for fn in (dense.dense_marginals_undirected, lambda x: dense._undirected_marginals_graph(x)):
        leaf = scores.clone().requires_grad_(True)
        marginals, ok = fn(leaf)[:2]
        (grad,) = torch.autograd.grad(marginals, leaf, cotangent)
        grads.append((grad + grad.mT) / 2)
    assert ok.tolist() == [True, True, True, False]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    assert (grads[0][-1] == 0).all()


@pytest.mark.parametrize("single_root", [False, True], ids=["rooted at 0", "single root"])
def test_closed_form_backward_of_arborescence_marginals_equals_autograd_of_their_graph(single_root):
    """The hand-written VJPs against autograd through the same formulas, for trusted rows and a
    row the fast path rejects (its VJP must be zero, like autograd's); gradcheck, and
    gradgradcheck of the double backward."""
    n = 6
    g = torch.Generator().manual_seed(41)
    logw = torch.cat([torch.randn(3, n, n, generator=g, dtype=F64) * 3,
                      torch.zeros(1, n, n, dtype=F64)])
    logw[-1, :4, :4] = weak_bridge()
    roots = torch.randn(4, n, generator=g, dtype=F64)
    roots[-1] = -100.0
    cotangent = torch.randn(4, n, n, generator=g, dtype=F64)
    if single_root:
        inputs = (logw.diagonal_scatter(roots, dim1=-2, dim2=-1),)  # root scores on the diagonal
        fast, graph = dense.dense_marginals_single_root, dense._single_root_marginals_graph
    else:
        inputs = (logw,)
        fast, graph = dense.dense_marginals_rooted_at_zero, dense._rooted_marginals_graph
    grads = []
    for fn in (fast, graph):
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        marginals, ok = fn(*leaves)[:2]
        grads.append(torch.autograd.grad(marginals, leaves, cotangent))
    assert ok[:3].all() and not ok[3]
    for closed, autograd in zip(*grads):
        torch.testing.assert_close(closed, autograd, rtol=1e-10, atol=1e-12)
        assert (closed[-1] == 0).all()
    trusted = [x[:3].clone().requires_grad_(True) for x in inputs]
    assert torch.autograd.gradcheck(lambda *x: fast(*x)[0], trusted)
    # the double backward (the graph's VJP) at unit scale: at scale 3 the finite differences of
    # gradgradcheck's default eps = 1e-6 are off by ~1e-5 (eps = 1e-5 passes there too)
    unit = [(x / 3).detach().requires_grad_(True) for x in trusted]
    assert torch.autograd.gradgradcheck(lambda *x: fast(*x)[0], unit)


@pytest.mark.parametrize("symmetric", [True, False])
def test_logdet_inverse_passes_gradcheck_and_gradgradcheck(symmetric):
    """The factorisation's own backward (both outputs), on positive definite (Cholesky) and
    diagonally dominant (LU) matrices that pass the trust test; against finite differences."""
    gen = torch.Generator().manual_seed(6)
    a = torch.randn(3, 4, 4, generator=gen, dtype=F64)
    a = a @ a.mT + 4 * torch.eye(4, dtype=F64) if symmetric else a + 6 * torch.eye(4, dtype=F64)
    a.requires_grad_(True)

    def outputs(m):
        logdet, inverse, ok = dense._LogdetInverse.apply(m, symmetric)
        assert bool(ok.all())
        return logdet, inverse

    if symmetric:  # only the lower triangle is read: differentiate through a symmetric input
        def outputs_sym(m):
            return outputs((m + m.mT) / 2)

        f = outputs_sym
    else:
        f = outputs
    torch.testing.assert_close(f(a)[0], torch.logdet((a + a.mT) / 2 if symmetric else a))
    assert torch.autograd.gradcheck(f, (a,))
    assert torch.autograd.gradgradcheck(f, (a,))
