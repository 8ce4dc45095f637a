"""Score-function estimators: unbiasedness against enumeration, variance ordering, exact limits."""

from __future__ import annotations

import itertools

import pytest
import torch
from _estimator_toys import QuadraticLoss, exact_objective, loss_table

from latentgrad.estimators.marginalization import SoftmaxMarginalization
from latentgrad.estimators.score_function import NVIL, ScoreFunction, SumAndSample
from latentgrad.structures.bitvector import BitVector

K = 5
N_DRAWS = 4000
THETA = torch.tensor([1.0, -0.5, 0.3, 2.0, -1.0], dtype=torch.float64)


def _per_draw_grads(est, theta, loss_fn, n_draws=N_DRAWS):
    """Run ``est`` once on ``n_draws`` identical rows; per-row gradients ``(n_draws, ...)``."""
    scores = theta.expand(n_draws, *theta.shape).clone().requires_grad_(True)
    out = est(scores, loss_fn)
    (g,) = torch.autograd.grad(out.loss, scores)
    return g * n_draws, out


def _exact_grad(theta, space, probs_fn, entropy_coeff=0.0, offset=0.0):
    """Gradient of E_p[l] - c H(p) for one example of the QuadraticLoss toy, by enumeration."""
    th = theta.clone().requires_grad_(True)
    loss_fn = QuadraticLoss(1, tuple(theta.shape), offset=offset, seed=3)
    table = loss_table(loss_fn, space, 1)
    (g,) = torch.autograd.grad(exact_objective(probs_fn(th).unsqueeze(0), table, entropy_coeff), th)
    return g


def _toy_loss(n, event_shape, offset=0.0):
    """Every row is the same example (the single example of the seed-3 toy)."""
    single = QuadraticLoss(1, event_shape, offset=offset, seed=3)
    single.y = single.y.expand(n)
    single.c = single.c.expand(n, *event_shape)
    return single


def _assert_unbiased(grads, exact, z=5.0):
    mean = grads.mean(0)
    stderr = grads.std(0) / grads.shape[0] ** 0.5
    assert ((mean - exact).abs() <= z * stderr + 1e-9).all(), (mean, exact, stderr)


def _categorical_probs(th):
    return th.softmax(-1)


@pytest.mark.parametrize(
    ("baseline", "n_samples"),
    [(None, 1), ("batch_loo", 1), ("self_critic", 1), ("leave_one_out", 3), (None, 2)],
)
@pytest.mark.parametrize("entropy_coeff", [0.0, 0.5])
def test_score_function_categorical_is_unbiased(baseline, n_samples, entropy_coeff):
    torch.manual_seed(0)
    est = ScoreFunction(baseline=baseline, n_samples=n_samples, entropy_coeff=entropy_coeff)
    grads, _ = _per_draw_grads(est, THETA, _toy_loss(N_DRAWS, (K,), offset=2.0))
    space = torch.eye(K, dtype=torch.float64)
    exact = _exact_grad(THETA, space, _categorical_probs, entropy_coeff, offset=2.0)
    _assert_unbiased(grads, exact)


@pytest.mark.parametrize("baseline", ["moving_average", "ema"])
def test_score_function_running_baselines_are_unbiased_after_warmup(baseline):
    """The baseline of step t is the running statistic of the batch means of steps < t (the mean
    of all of them, or an exponential average with ``decay`` started at the first), and the
    gradient stays unbiased with it."""
    torch.manual_seed(1)
    est = ScoreFunction(baseline=baseline, decay=0.5)
    loss_fn = _toy_loss(N_DRAWS, (K,), offset=2.0)
    means = []
    for _ in range(3):
        _, out = _per_draw_grads(est, THETA, loss_fn)
        means.append(out.expected_loss.mean().item())
    assert est.running.count.item() == 3
    grads, out = _per_draw_grads(est, THETA, loss_fn)
    exact = _exact_grad(THETA, torch.eye(K, dtype=torch.float64), _categorical_probs, offset=2.0)
    _assert_unbiased(grads, exact)
    if baseline == "moving_average":
        expected = sum(means) / 3
    else:
        expected = means[0]
        for m in means[1:]:
            expected = 0.5 * expected + 0.5 * m
    # the buffer is float32: a few roundings of 6e-8 relative each
    assert out.logs["baseline"].item() == pytest.approx(expected, rel=1e-6)


def _bit_space(d):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=torch.float64)


def _bernoulli_probs(th):
    space = _bit_space(th.shape[-1])
    logsig = torch.nn.functional.logsigmoid
    logp = logsig(th) * space + logsig(-th) * (1 - space)
    return logp.sum(-1).exp()


@pytest.mark.parametrize("baseline", [None, "self_critic"])
def test_score_function_bitvector_is_unbiased(baseline):
    torch.manual_seed(2)
    d = 4
    theta = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    est = ScoreFunction(baseline=baseline, structure=BitVector(d), entropy_coeff=0.2)
    grads, out = _per_draw_grads(est, theta, _toy_loss(N_DRAWS, (d,), offset=1.0))
    exact = _exact_grad(theta, _bit_space(d), _bernoulli_probs, 0.2, offset=1.0)
    _assert_unbiased(grads, exact)
    p = _bernoulli_probs(theta)
    torch.testing.assert_close(out.entropy[0], -(p * p.log()).sum())


def test_score_function_baselines_reduce_variance():
    """On a loss far from zero every baseline lowers the total gradient variance."""
    loss_fn = _toy_loss(N_DRAWS, (K,), offset=10.0)
    torch.manual_seed(3)
    plain, _ = _per_draw_grads(ScoreFunction(), THETA, loss_fn)
    plain_var = plain.var(0).sum()
    for baseline, s in [("batch_loo", 1), ("self_critic", 1), ("leave_one_out", 2), ("ema", 1)]:
        est = ScoreFunction(baseline=baseline, n_samples=s, decay=0.5)
        for _ in range(2 if baseline == "ema" else 0):
            _per_draw_grads(est, THETA, loss_fn)
        grads, _ = _per_draw_grads(est, THETA, loss_fn)
        assert grads.var(0).sum() < 0.5 * plain_var, baseline


def test_sum_and_sample_never_has_more_variance_than_plain_sampling():
    """Rao-Blackwellisation: summing the top categories exactly cannot add variance."""
    loss_fn = _toy_loss(N_DRAWS, (K,), offset=10.0)
    torch.manual_seed(12)
    previous = _per_draw_grads(ScoreFunction(), THETA, loss_fn)[0].var(0).sum()
    for k in (1, 2, 4):
        current = _per_draw_grads(SumAndSample(k=k), THETA, loss_fn)[0].var(0).sum()
        assert current < previous, k
        previous = current


def test_running_baseline_updates_only_in_training_mode():
    est = ScoreFunction(baseline="moving_average")
    loss_fn = _toy_loss(64, (K,), offset=2.0)
    out = est(THETA.expand(64, K), loss_fn)
    torch.testing.assert_close(est.running.value, out.expected_loss.mean().float())
    est.eval()
    est(THETA.expand(64, K), loss_fn)
    assert est.running.count.item() == 1
    assert "running.value" in est.state_dict()


def test_self_critic_baseline_is_detached_from_the_decoder():
    """The decoder gradient is the pathwise gradient of the S sampled losses only: the
    self-critic's extra evaluation enters through sg(beta)."""
    torch.manual_seed(4)
    loss_fn = QuadraticLoss(8, (K,), offset=1.0, seed=5)
    scores = torch.randn(8, K, dtype=torch.float64)
    est = ScoreFunction(baseline="self_critic", n_samples=2)
    out = est(scores, loss_fn)
    (g_w,) = torch.autograd.grad(out.loss, loss_fn.w)
    z, rows = loss_fn.last
    assert loss_fn.calls == [8 * 3]
    first = torch.arange(z.shape[0]) % 3 < 2
    ref = loss_fn(z[first], rows[first]).sum() / (8 * 2)
    (r_w,) = torch.autograd.grad(ref, loss_fn.w)
    torch.testing.assert_close(g_w, r_w)


def test_sum_and_sample_with_k_equal_to_K_is_exact_marginalization():
    torch.manual_seed(5)
    scores = torch.randn(7, K, dtype=torch.float64, requires_grad=True)
    outs, grads = [], []
    for est in (SumAndSample(k=K, entropy_coeff=0.3), SoftmaxMarginalization(entropy_coeff=0.3)):
        loss_fn = QuadraticLoss(7, (K,), seed=6)
        out = est(scores, loss_fn)
        outs.append(out)
        grads.append(torch.autograd.grad(out.loss, (scores, loss_fn.w)))
    torch.testing.assert_close(outs[0].loss, outs[1].loss)
    torch.testing.assert_close(outs[0].expected_loss, outs[1].expected_loss)
    torch.testing.assert_close(grads[0], grads[1])
    assert (outs[0].support_size == K).all()


@pytest.mark.parametrize(
    ("k", "baseline"),
    [(1, None), (2, None), (1, "self_critic"), (2, "batch_loo"), (1, "moving_average")],
)
def test_sum_and_sample_is_unbiased(k, baseline):
    """Also catches the reference's beta = 0 in the sampled term: with a warmed-up
    running baseline near E[l] = 10 that version is biased by -beta * sum_C grad p."""
    torch.manual_seed(6)
    est = SumAndSample(k=k, baseline=baseline, entropy_coeff=0.2)
    loss_fn = _toy_loss(N_DRAWS, (K,), offset=10.0)
    if baseline == "moving_average":
        _per_draw_grads(est, THETA, loss_fn)
    grads, out = _per_draw_grads(est, THETA, loss_fn)
    space = torch.eye(K, dtype=torch.float64)
    exact = _exact_grad(THETA, space, _categorical_probs, 0.2, offset=10.0)
    _assert_unbiased(grads, exact)
    table = loss_table(QuadraticLoss(1, (K,), offset=10.0, seed=3), space, 1)
    exact_value = (THETA.softmax(-1) * table[0]).sum()
    stderr = out.expected_loss.std() / N_DRAWS**0.5
    assert (out.expected_loss.mean() - exact_value).abs() <= 5 * stderr + 1e-9
    assert (out.support_size == k + 1 + (baseline == "self_critic")).all()


def test_sum_and_sample_handles_an_empty_complement():
    """With only k categories of nonzero mass the sampled term has weight 0: exact, finite."""
    torch.manual_seed(7)
    scores = torch.randn(5, K, dtype=torch.float64)
    scores[:, 2:] = float("-inf")
    scores.requires_grad_(True)
    grads = []
    for est in (SumAndSample(k=2), SoftmaxMarginalization()):
        loss_fn = QuadraticLoss(5, (K,), seed=8)
        out = est(scores, loss_fn)
        grads.append(torch.autograd.grad(out.loss, scores))
        assert torch.isfinite(out.loss)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("baseline", [None, "self_critic"])
def test_sum_and_sample_never_hands_loss_fn_an_excluded_category(k, baseline):
    """Categories at -inf (masked actions) may be undefined for the user's model: the zero-weight
    slots (summed beyond the possible categories, an empty remainder) evaluate a possible one."""
    scores = torch.tensor([[float("-inf"), float("-inf"), 1.0, 2.0],
                           [0.5, float("-inf"), 0.0, float("-inf")]], dtype=torch.float64)
    seen = []

    def loss_fn(z, rows):
        seen.append((rows, z.argmax(-1)))
        return (z * torch.arange(4.0, dtype=z.dtype)).sum(-1)

    torch.manual_seed(0)
    out = SumAndSample(k=k, baseline=baseline)(scores.requires_grad_(True), loss_fn)
    ((rows, picked),) = seen
    assert torch.isfinite(scores[rows, picked]).all()
    assert torch.isfinite(out.loss)


class _ConstantNet(torch.nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor(value, dtype=torch.float64))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 1)


def test_nvil_is_unbiased_and_a_good_baseline_reduces_variance():
    torch.manual_seed(8)
    loss_fn = _toy_loss(N_DRAWS, (K,), offset=10.0)
    space = torch.eye(K, dtype=torch.float64)
    exact = _exact_grad(THETA, space, _categorical_probs, offset=10.0)
    table = loss_table(QuadraticLoss(1, (K,), offset=10.0, seed=3), space, 1)
    mean_loss = float((THETA.softmax(-1) * table[0]).sum().detach())
    x = torch.zeros(N_DRAWS, 3, dtype=torch.float64)
    variances = {}
    for value in (0.0, mean_loss):
        est = NVIL(_ConstantNet(value))
        scores = THETA.expand(N_DRAWS, K).clone().requires_grad_(True)
        out = est(scores, loss_fn, baseline_input=x)
        (g,) = torch.autograd.grad(out.loss, scores)
        grads = g * N_DRAWS
        _assert_unbiased(grads, exact)
        variances[value] = grads.var(0).sum()
    assert variances[mean_loss] < 0.1 * variances[0.0]


def test_nvil_baseline_net_is_trained_by_its_squared_error_only():
    torch.manual_seed(9)
    net = _ConstantNet(1.5)
    est = NVIL(net, n_samples=2, centering="ema", regression_coeff=0.7)
    est.running.value.fill_(3.0)
    est.running.count.fill_(1)
    loss_fn = QuadraticLoss(6, (K,), offset=4.0, seed=10)
    scores = torch.randn(6, K, dtype=torch.float64)
    out = est(scores, loss_fn, baseline_input=torch.zeros(6, 2))
    (g_bias,) = torch.autograd.grad(out.loss, net.bias)
    ell = loss_fn(*loss_fn.last).detach()
    ref = (-2 * 0.7 * (ell - 3.0 - 1.5)).mean()
    torch.testing.assert_close(g_bias, ref)
    torch.testing.assert_close(out.logs["baseline"], torch.tensor(4.5, dtype=torch.float64))


def test_nvil_variance_normalisation_scales_the_signal():
    torch.manual_seed(10)
    loss_fn = _toy_loss(N_DRAWS, (K,), offset=10.0)
    est = NVIL(_ConstantNet(0.0), normalize=True)
    x = torch.zeros(N_DRAWS, 1, dtype=torch.float64)
    scores = THETA.expand(N_DRAWS, K).clone().requires_grad_(True)
    est(scores, loss_fn, baseline_input=x)
    v = est.signal_scale.value.item()
    assert v > 1.0
    out = est(scores, loss_fn, baseline_input=x)
    (g,) = torch.autograd.grad(out.loss, scores)
    exact = _exact_grad(THETA, torch.eye(K, dtype=torch.float64), _categorical_probs, offset=10.0)
    pathwise_free = exact / v**0.5
    _assert_unbiased(g * N_DRAWS, pathwise_free)


def test_nvil_rejects_a_baseline_net_of_the_wrong_shape():
    est = NVIL(torch.nn.Linear(3, 2).double())
    with pytest.raises(ValueError, match="baseline_net must return shape"):
        est(torch.zeros(4, K, dtype=torch.float64), QuadraticLoss(4, (K,)),
            baseline_input=torch.zeros(4, 3, dtype=torch.float64))


def test_score_function_never_samples_minus_inf_categories_and_loss_value_is_the_estimate():
    torch.manual_seed(11)
    scores = torch.randn(50, K, dtype=torch.float64)
    scores[:, 1] = float("-inf")
    scores.requires_grad_(True)
    loss_fn = QuadraticLoss(50, (K,), seed=12)
    est = ScoreFunction(n_samples=4, entropy_coeff=0.3)
    out = est(scores, loss_fn)
    z, _ = loss_fn.last
    assert (z[:, 1] == 0).all()
    p = scores.detach().softmax(-1)
    entropy = -torch.where(p > 0, p * p.log(), 0).sum(-1)
    torch.testing.assert_close(out.entropy, entropy)
    torch.testing.assert_close(out.loss, (out.expected_loss - 0.3 * entropy).mean())
    (g,) = torch.autograd.grad(out.loss, scores)
    assert torch.isfinite(g).all() and (g[:, 1] == 0).all()


def test_nvil_default_baseline_learns_each_examples_loss():
    """Each example favours another category (loss = its index, nearly deterministic): the
    default baseline net, trained by the surrogate's regression term alone, brings its squared
    error to a small fraction of the spread it starts from."""
    torch.manual_seed(0)
    est = NVIL()
    scores = 6.0 * torch.eye(5)[:4]  # example i draws category i with probability ~0.99

    def loss_fn(z, rows):
        return (z * torch.arange(5.0)).sum(-1)

    est(scores, loss_fn)  # the first call sizes the default baseline net
    opt = torch.optim.Adam(est.parameters(), lr=0.01)
    mse = []
    for _ in range(300):
        out = est(scores, loss_fn)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        mse.append(float(out.logs["baseline_mse"]))
    early, late = sum(mse[:10]) / 10, sum(mse[-50:]) / 50
    assert late < 0.1 * early, (early, late)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nvil_default_baseline_is_finite_at_any_score_magnitude(dtype):
    """The default net reads asinh(scores): at scores up to an eighth of the dtype's maximum the
    baseline is of the order of log|scores| (raw scores of 1e20 once gave an infinite float32
    surrogate through a squared error of 1e38), and the surrogate and its gradients are finite."""
    top = torch.finfo(dtype).max / 8
    for magnitude in (1.0, 1e4, 1e20, top):
        if magnitude > top:
            continue
        torch.manual_seed(0)
        scores = (torch.randn(4, K, dtype=torch.float64) * magnitude).to(dtype).requires_grad_()
        est = NVIL()
        out = est(scores, lambda z, rows: (z * torch.arange(K, dtype=z.dtype)).sum(-1))
        assert torch.isfinite(out.loss), magnitude
        first, last = est.baseline_net.net[1], est.baseline_net.net[3]
        features = float(scores.detach().double().abs().max().asinh())  # |asinh x| <= this
        hidden = first.weight.double().abs().sum(1) * features + first.bias.double().abs()
        bound = float(last.weight.double().abs() @ hidden + last.bias.double().abs())
        rounding = 2 * (K + first.out_features) * torch.finfo(dtype).eps  # two dot products
        assert abs(float(out.logs["baseline"])) <= (1 + rounding) * bound, magnitude
        grads = torch.autograd.grad(out.loss, [scores, *est.parameters()])
        assert all(torch.isfinite(g).all() for g in grads), magnitude


def test_nvil_default_baseline_built_in_float32_reads_float64_scores_in_its_own_dtype():
    """The default net takes its dtype at its first call; float64 scores afterwards raised
    torch's "mat1 and mat2 must have the same dtype". They are now cast to the net's float32
    (the baseline is a control variate), so the surrogate is float64, its gradients are finite,
    and the logged baseline is the net's value at the float32-cast features."""
    torch.manual_seed(0)
    est = NVIL()
    est(torch.randn(3, K), lambda z, rows: z[:, 0])
    scores = torch.randn(3, K, dtype=torch.float64, requires_grad=True)
    out = est(scores, lambda z, rows: z[:, 0])
    assert out.loss.dtype == torch.float64 and est.baseline_net.net[1].weight.dtype == torch.float32
    out.loss.backward()
    assert torch.isfinite(scores.grad).all()
    with torch.no_grad():
        expected = est.baseline_net.net(scores.float().asinh()).mean()
    assert float(out.logs["baseline"]) == pytest.approx(float(expected), rel=1e-6)


def test_nvil_resumes_from_its_state_dict_before_any_call():
    """A resumed run loads the state into a fresh NVIL whose default net has not been called:
    torch fills the lazy first layer but leaves its in_features at 0, which the size check read
    ("built ... for inputs of 0 features"). The loaded net now serves, with the saved weights."""
    torch.manual_seed(0)
    trained = NVIL()
    scores = torch.randn(3, K)
    trained(scores, lambda z, rows: z.sum(-1))
    resumed = NVIL()
    resumed.load_state_dict(trained.state_dict())
    torch.manual_seed(1)
    out = resumed(scores, lambda z, rows: z.sum(-1))
    torch.manual_seed(1)
    want = trained(scores, lambda z, rows: z.sum(-1))
    torch.testing.assert_close(out.loss, want.loss)
    assert out.logs["baseline"] == want.logs["baseline"]
    other = NVIL()
    other.load_state_dict(trained.state_dict())
    with pytest.raises(ValueError, match=f"inputs of {K} features per example"):
        other(torch.randn(3, K + 1), lambda z, rows: z.sum(-1))


def _excluded_loss(z, rows):
    z = z.flatten(1).to(torch.float64)
    return (z * torch.linspace(-1.0, 2.0, z.shape[1], dtype=torch.float64)).sum(-1) + rows + 1.0


@pytest.mark.parametrize(
    ("scores", "k", "structure"),
    [
        ([[0.5, -0.2, float("-inf"), float("-inf")]], 3, None),  # 2 possible categories
        ([[0.5, -0.2, float("-inf"), float("-inf")]], 4, None),
        ([[[0.5, float("-inf"), float("-inf")], [0.1, 0.2, float("-inf")]]], 3, None),  # joint
        ([[0.5, -0.2, 0.3, float("-inf")]], 4, "ksubset"),  # 3 possible 2-subsets of 4
    ],
)
@pytest.mark.parametrize("baseline", [None, "self_critic"])
def test_sum_and_sample_summing_impossible_values_keeps_a_finite_exact_loss(
    scores, k, structure, baseline
):
    """k above the number of values of nonzero probability: the k best include values of log p
    = -inf; their terms are 0 (the loss was NaN: -inf - (-inf) in the score term). All the mass
    is summed, so the loss and gradient are those of exact marginalization."""
    from latentgrad.structures.ksubset import KSubset

    torch.manual_seed(0)
    scores = torch.tensor(scores, dtype=torch.float64, requires_grad=True)
    st = KSubset(4, 2) if structure == "ksubset" else None
    out = SumAndSample(k=k, baseline=baseline, structure=st)(scores, _excluded_loss)
    (grad,) = torch.autograd.grad(out.loss, scores)
    if st is None:
        exact = SoftmaxMarginalization()(scores, _excluded_loss).loss
    else:
        space = st.enumerate().to(torch.float64)
        logp = st.log_prob(scores.unsqueeze(1), space.unsqueeze(0))
        exact = (logp.exp() * _excluded_loss(space, torch.zeros(len(space)))).sum()
    (exact_grad,) = torch.autograd.grad(exact, scores)
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, exact)
    torch.testing.assert_close(grad, exact_grad)


def test_nvil_names_a_baseline_input_of_another_batch_size():
    scores = torch.randn(2, K)
    with pytest.raises(ValueError, match=r"baseline_input must be .* B = 2 first, got \(3, 4\)"):
        NVIL()(scores, lambda z, rows: z.sum(-1), baseline_input=torch.randn(3, 4))


def test_nvil_default_baseline_net_names_an_input_size_it_was_not_built_for():
    """The lazy net takes its input size at the first call; another size later is named, not a
    torch matrix-shape error."""
    est = NVIL()
    est(torch.randn(2, K), lambda z, rows: z.sum(-1))
    with pytest.raises(ValueError, match=f"built at its first call for inputs of {K} features"):
        est(torch.randn(2, K + 3), lambda z, rows: z.sum(-1))
