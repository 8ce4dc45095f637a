"""Score-function (REINFORCE) estimators with baselines.

Per example b with S samples ``z_s ~ p_b``, the surrogate is

    L_b = (1/S) sum_s [ sg(l_b(z_s) - beta_{b,s}) log p_b(z_s) + l_b(z_s) ] - c H(p_b),

(Williams 1992; Mnih & Gregor 2014 for NVIL; Liu et al. 2019 for Sum&Sample). The first term trains
the encoder, the pathwise term trains whatever is inside ``l``; ``H`` is the exact entropy. The
score term is written as ``sg(l - beta) (log p - sg(log p))`` so the forward value of ``loss`` is
the estimate ``mean(l) - c H`` while its gradient is the estimator. Baselines never depend on
the sample they multiply and are always detached.

Latents: categorical, independent bits, or the Gibbs distribution ``p(z) ∝ exp <θ, z>`` of any
``Structure`` with an exact sampler (budgeted bit vectors, k-subsets, spanning trees,
arborescences). ``PerturbationScoreFunction`` (``perturbation.py``) needs only the MAP oracle.
Scores ``(B, *latent, *event)`` hold several independent latent variables per example: samples
are joint, ``log p`` and ``H`` sums over the variables.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin

from .._validation import check_choice, check_positive_int
from ..polytope.topk_sparsemax import check_topk_oracle
from ..structures._sampling import categorical as draw_categorical
from ..structures.base import Structure
from ._baselines import RUNNING_KINDS, RunningBaseline
from ._checks import check_leave_one_out
from ._families import CategoricalLatent
from ._sampler import (
    BASELINES,
    Sampler,
    first_columns,
    leave_one_out_over_batch,
    sample_mean,
    sample_weights,
    score_term,
)
from .base import EstimatorOutput, LossFn, add_term, batch_mean

__all__ = ["NVIL", "ScoreBaselineNet", "ScoreFunction", "SumAndSample"]


class ScoreFunction(Sampler):
    """REINFORCE with an optional baseline; S samples per example, one ``loss_fn`` call.

    Args:
        baseline: ``None`` (beta = 0), ``"moving_average"`` (running mean of the batch-mean loss
            over all training steps), ``"ema"`` (exponential moving average, ``decay``),
            ``"batch_loo"`` (mean loss of the other examples in the batch), ``"self_critic"``
            (the loss at one extra independent sample ``z' ~ p_b``; +1 evaluation per example),
            ``"leave_one_out"`` (mean loss of the other S - 1 samples; needs ``n_samples >= 2``).
        n_samples: S, samples per example.
        entropy_coeff: c, weight of the exact entropy bonus.
        structure: ``None`` or ``Categorical(K)``: scores ``(B, *latent, K)``, ``z`` one-hot
            ``(N, *latent, K)``; any ``Structure`` with ``sample`` and ``log_partition``
            (``BitVector(D)`` with or without budget, ``KSubset``, ``SpanningTree``,
            ``Arborescence``): scores ``(B, *latent, *score_shape)``, ``z ~ p(z) ∝ exp <θ, z>``
            drawn exactly, ``log p = <θ, z> - log Z`` and the exact entropy ``log Z - <θ, μ>``.
        decay: EMA decay (``baseline="ema"``).
        one_hot: categorical only; ``False`` hands ``loss_fn`` int64 indices ``(N, *latent)``.
        eval_mode: the reading in ``eval()``: ``"mode"``, ``"sample"`` or ``"expected"``
            (categorical) (``Estimator``).

    Returns ``EstimatorOutput`` with ``expected_loss_b = mean_s l_b(z_s)``, ``support_size_b`` the
    number of evaluations (S, or S + 1 with the self-critic), and logs ``baseline``, ``entropy``,
    ``support_size``. Running baselines update after the surrogate is formed, in training mode only.
    """

    def __init__(
        self,
        baseline: str | None = None,
        n_samples: int = 1,
        entropy_coeff: float = 0.0,
        structure: Structure | None = None,
        decay: float = 0.99,
        one_hot: bool = True,
        eval_mode: str = "mode",
    ) -> None:
        check_choice(baseline, "baseline", BASELINES)
        n_samples = check_positive_int(n_samples, "n_samples")
        check_leave_one_out(baseline, n_samples)
        super().__init__(
            baseline, entropy_coeff, structure, decay, one_hot=one_hot, eval_mode=eval_mode
        )
        self.n_samples = n_samples

    def forward(self, scores: Tensor, loss_fn: LossFn) -> EstimatorOutput:
        """``scores`` (B, *latent, *event) -> surrogate from S joint samples per example."""
        scores = self._check(scores)
        if (reading := self._eval_reading(scores, loss_fn)) is not None:
            return reading
        s = self.n_samples
        extra = 1 if self.baseline == "self_critic" else 0
        values = self._family.sample(scores, s + extra)
        ev = self._evaluate(values, scores, loss_fn)
        log_q = self._family.log_prob(scores, first_columns(values, s))
        return self._reinforce(scores, ev, log_q, s)


class ScoreBaselineNet(nn.Module):
    """NVIL's default input-dependent baseline ``b_psi``: a ReLU MLP ``flatten -> hidden -> 1``
    on the features ``asinh(x)`` of its input (by default the detached scores
    ``(B, *score_shape)``). ``asinh(x) ≈ x`` near 0 and ``≈ sign(x) log 2|x|`` beyond, so the
    baseline, its regression error and the surrogate stay finite at any finite score magnitude
    (raw scores of 1e20 would give a float32 squared error of 1e38 and beyond). The input size is
    read at the first call (``nn.LazyLinear``), where the net also takes the input's dtype and
    device; the parameter objects stay the same, so an optimiser built before the first call
    trains them. A later input of another floating dtype is cast to the net's (the baseline is a
    control variate: its precision does not bias the estimator; the running baselines likewise
    cast their state to the scores' dtype).
    """

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        hidden = check_positive_int(hidden, "hidden")
        self.net = nn.Sequential(
            nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, ...)`` -> ``(B, 1)``; non-finite entries (``-inf``: an excluded category) enter
        as 0, so the baseline stays finite."""
        x = torch.where(torch.isfinite(x), x, 0.0).asinh()
        first = self.net[1]
        if isinstance(first, LazyModuleMixin) and first.has_uninitialized_params():
            self.net.to(x)
        elif x.shape[1:].numel() != (size := first.weight.shape[1]):
            # the weight's shape, not in_features: a lazy layer filled by load_state_dict (a
            # resumed run) keeps in_features = 0 until its first forward
            raise ValueError(
                f"the baseline net was built at its first call for inputs of {size} "
                f"features per example, got input of shape {tuple(x.shape)}; use one NVIL per "
                "latent shape (or pass baseline_input of a fixed size)"
            )
        return self.net(x.to(self.net[-1].weight.dtype))


class NVIL(Sampler):
    """Neural variational inference and learning (Mnih & Gregor 2014).

    Learning signal ``A = l - c - b_psi(x)`` with ``c`` an optional input-independent running
    baseline (``centering``) and ``b_psi`` the ``baseline_net``; optional variance normalisation
    ``A / max(1, sqrt(v))`` with ``v`` an EMA of ``A^2``. Surrogate per example:

        mean_s [ sg(A_s) log p(z_s) + l(z_s) + lam (sg(l(z_s) - c) - b_psi(x))^2 ] - c_H H(p).

    ``baseline_net`` maps ``baseline_input`` (B, ...) to ``(B,)`` or ``(B, 1)``; default
    ``ScoreBaselineNet(baseline_hidden)``, a small MLP. It is a submodule, so its parameters are
    in ``est.parameters()`` and must be given to the optimiser. It is trained only by the
    regression term (weight ``regression_coeff``); the signal uses ``sg(b_psi)``. Called as
    ``est(scores, loss_fn)`` the baseline sees the detached scores; ``est(scores, loss_fn,
    baseline_input=x)`` gives it any other input (e.g. the encoder's input). Logs: ``baseline``
    (mean c + b_psi), ``baseline_mse``, ``entropy``, ``support_size``.

    The default net reads its input size at the first call (``nn.LazyLinear``): until then its
    first layer's parameters are uninitialised, so counting, copying or averaging
    ``est.parameters()`` works after one forward call (an optimiser may be built before it);
    one estimator serves one input size.
    """

    def __init__(
        self,
        baseline_net: nn.Module | None = None,
        n_samples: int = 1,
        entropy_coeff: float = 0.0,
        structure: Structure | None = None,
        centering: str | None = None,
        normalize: bool = False,
        regression_coeff: float = 1.0,
        decay: float = 0.99,
        baseline_hidden: int = 64,
        one_hot: bool = True,
        eval_mode: str = "mode",
    ) -> None:
        check_choice(centering, "baseline", (None, *RUNNING_KINDS))
        n_samples = check_positive_int(n_samples, "n_samples")
        super().__init__(
            centering, entropy_coeff, structure, decay, one_hot=one_hot, eval_mode=eval_mode
        )
        if baseline_net is None:
            baseline_net = ScoreBaselineNet(baseline_hidden)
        elif not callable(baseline_net):
            raise TypeError(
                f"baseline_net must be an nn.Module or None, got {type(baseline_net).__name__}"
            )
        self.baseline_net = baseline_net
        self.n_samples = n_samples
        self.regression_coeff = float(regression_coeff)
        self.signal_scale = RunningBaseline("ema", decay) if normalize else None

    def forward(
        self, scores: Tensor, loss_fn: LossFn, baseline_input: Tensor | None = None
    ) -> EstimatorOutput:
        """``scores`` (B, *event), ``baseline_input`` (B, ...) (default: the detached scores)
        -> NVIL surrogate."""
        scores = self._check(scores)
        if (reading := self._eval_reading(scores, loss_fn)) is not None:
            return reading
        b = scores.shape[0]
        if baseline_input is None:
            baseline_input = scores.detach()
        elif not isinstance(baseline_input, Tensor) or baseline_input.dim() < 1 or (
                baseline_input.shape[0] != b):
            got = tuple(baseline_input.shape) if isinstance(baseline_input, Tensor) else type(
                baseline_input).__name__
            raise ValueError(f"baseline_input must be a tensor (B, ...) with the scores' batch "
                             f"size B = {b} first, got {got}")
        learned = self.baseline_net(baseline_input)
        if learned.dim() == 2 and learned.shape[1] == 1:
            learned = learned.squeeze(1)
        if learned.shape != (b,):
            raise ValueError(
                f"baseline_net must return shape ({b},) or ({b}, 1), got {tuple(learned.shape)}"
            )
        s = self.n_samples
        values = self._family.sample(scores, s)
        ev = self._evaluate(values, scores, loss_fn)
        ell = ev.losses
        centre = self._running_value(ell)
        target = ell.detach() - centre
        signal = target - learned.detach().unsqueeze(1)
        raw_signal = signal
        if self.signal_scale is not None:
            signal = signal / self.signal_scale.get(signal).sqrt().clamp(min=1.0)
        logp = self._family.log_prob(scores, values)
        entropy = self._entropy(scores)
        sq_err = (target - learned.unsqueeze(1)) ** 2
        per_example = sample_mean(score_term(signal, logp) + ell + self.regression_coeff * sq_err)
        loss = batch_mean(add_term(per_example, -self.entropy_coeff, entropy))
        if self.signal_scale is not None and self.training and raw_signal.numel():
            self.signal_scale.update((raw_signal**2).mean())
        return self._finish(
            loss, sample_mean(ell.detach()), entropy, centre + learned, ev, sample_weights(ell, s),
            means={"baseline_mse": sq_err},
        )


class SumAndSample(Sampler):
    """Sum&Sample (Liu et al. 2019): sum the k most probable categories exactly,
    sample one more from p restricted to the rest.

    With ``C`` the top-k categories of ``sg(p)`` and ``1 - q_C`` the mass outside them, per example

        L = sum_{z in C} sg(p(z)) [sg(l(z) - beta) log p(z) + l(z)]
            + (1 - q_C) [sg(l(z~) - beta) log p(z~) + l(z~)] - c H(p),   z~ ~ p(. | z not in C),

    with the SAME z-independent beta in both terms (unbiased). ``k = K`` drops the sampled term
    and equals exact softmax marginalization.
    ``expected_loss = sum_C sg(p) l + (1 - q_C) l(z~)``; ``support_size = k + 1`` (``K`` when
    ``k = K``; +1 for the self-critic, whose ``z' ~ p`` is drawn independently).

    Structures (any ``structure`` with ``topk``, ``sample`` and ``log_partition``: bit vectors,
    budgeted or not, and k-subsets): ``C`` is the k best structures (the k most probable under
    the Gibbs distribution) and ``z~`` is drawn by rejection, exactly and without bias: ``M =
    max_draws`` exact draws from p, ``z~`` the first one outside ``C``. It exists with probability
    ``1 - q_C^M`` (known in closed form), so its term is weighted ``(1 - q_C) / (1 - q_C^M)`` when
    found and 0 when all M draws fall in C: the expectation is exactly ``(1 - q_C) E[. | not C]``
    (unbiased for any M; a larger M only lowers the variance when q_C is close to 1). Only the
    kept ``z~`` is evaluated (where none was found, a summed structure stands in at weight 0:
    the evaluations keep fixed shapes). ``k`` at least the number of structures drops the
    sampled term. A categorical never hands ``loss_fn`` an excluded (``-inf``) category: the
    zero-weight slots (summed categories beyond the possible ones, an empty remainder) evaluate
    the most probable category instead.

    Args:
        k: number of summed categories / structures, ``k >= 1`` (at most K for categoricals).
        baseline: ``None``, ``"moving_average"``, ``"ema"``, ``"batch_loo"`` (over the other
            examples' estimates) or ``"self_critic"``.
        structure: ``None`` / ``Categorical(K)`` (scores ``(B, K)``) or a ``Structure`` with an
            exact ``topk`` and ``sample`` (scores ``(B, *score_shape)``).
        max_draws: M, rejection draws per example for the structured sampled term.
        one_hot: categorical only; ``False`` hands ``loss_fn`` int64 indices ``(N, *latent)``.
        eval_mode: the reading in ``eval()``: ``"mode"``, ``"sample"`` or ``"expected"``
            (categorical) (``Estimator``).

    Several categorical variables per example (scores ``(B, *latent, K)``): ``C`` is the k most
    probable joint values (``joint_topk``) and the remainder is rejection-sampled as for
    structures.
    """

    def __init__(
        self,
        k: int = 1,
        baseline: str | None = None,
        entropy_coeff: float = 0.0,
        decay: float = 0.99,
        structure: Structure | None = None,
        max_draws: int = 32,
        one_hot: bool = True,
        eval_mode: str = "mode",
    ) -> None:
        check_choice(baseline, "baseline", (None, *RUNNING_KINDS, "batch_loo", "self_critic"))
        check_positive_int(k, "k")
        check_positive_int(max_draws, "max_draws")
        super().__init__(
            baseline, entropy_coeff, structure, decay, one_hot=one_hot, eval_mode=eval_mode
        )
        if not isinstance(self._family, CategoricalLatent):
            check_topk_oracle(structure)
        self.k = k
        self.max_draws = max_draws

    def forward(self, scores: Tensor, loss_fn: LossFn) -> EstimatorOutput:
        """``scores`` (B, *latent, K) logits or (B, *latent, *score_shape) structure scores ->
        surrogate. One categorical variable per example takes the exact restricted sampler;
        several (or a structure) the joint k best and the rejection-sampled remainder."""
        scores = self._check(scores)
        if (reading := self._eval_reading(scores, loss_fn)) is not None:
            return reading
        if isinstance(self._family, CategoricalLatent):
            if scores.dim() == 2:
                return self._forward_categorical(scores, loss_fn)
            total = scores.shape[-1] ** math.prod(scores.shape[1:-1])
            if self.k > total:
                raise ValueError(
                    f"k={self.k} exceeds the number of joint values K^L={total} of scores"
                )
            return self._forward_joint(scores, loss_fn, joint_topk(scores, self.k), total)
        structure = self.structure
        assert structure is not None
        if scores.dim() != 1 + structure.event_dim:  # the joint k best of several structures
            raise ValueError(
                "SumAndSample over structures takes one structure per example, scores "
                f"(B, {', '.join(map(str, structure.score_shape))}); got shape "
                f"{tuple(scores.shape)}"
            )
        total = getattr(structure, "num_structures", None)
        if total is not None and self.k > total:
            raise ValueError(
                f"k={self.k} exceeds the number of structures {total} of {structure!r}"
            )
        top, _ = structure.topk(scores.detach(), self.k)
        return self._forward_joint(scores, loss_fn, top, total)

    def _forward_categorical(self, scores: Tensor, loss_fn: LossFn) -> EstimatorOutput:
        """One categorical variable: top-k summed, one exact draw from p outside them."""
        n_cat = scores.shape[1]
        k = self.k
        if k > n_cat:
            raise ValueError(f"k={k} exceeds the number of categories K={n_cat} of scores")
        logp_all = scores.log_softmax(-1)
        p = logp_all.detach().exp()
        top = scores.detach().topk(k, dim=-1).indices
        in_c = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, top, True)
        idx = [top]
        sampled = k < n_cat
        if sampled:
            rest = scores.detach().masked_fill(in_c, float("-inf"))
            idx.append(draw_categorical(rest, None).unsqueeze(1))  # all -inf: weight 0
        if self.baseline == "self_critic":
            idx.append(self._family.sample(scores, 1))
        idx_t = torch.cat(idx, dim=1)
        # the slots of zero-probability categories (excluded, -inf; an empty remainder) carry
        # weight 0 but are evaluated (fixed shapes): evaluate the most probable one there
        # instead, so that loss_fn never sees an excluded category
        possible = scores.detach().gather(-1, idx_t) > float("-inf")
        ev = self._evaluate(torch.where(possible, idx_t, top[:, :1]), scores, loss_fn)
        losses = ev.losses
        logp = logp_all.gather(-1, idx_t)

        p_c = p.gather(-1, top)
        ell_c = losses[:, :k]
        expected = (p_c * ell_c.detach()).sum(1)
        weights = torch.zeros_like(losses.detach())
        weights[:, :k] = p_c
        if sampled:
            rest_mass = p.masked_fill(in_c, 0.0).sum(-1)
            has_rest = rest_mass > 0
            ell_s = torch.where(has_rest, losses[:, k], torch.zeros_like(losses[:, k]))
            logp_s = torch.where(has_rest, logp[:, k], torch.zeros_like(logp[:, k]))
            expected = expected + rest_mass * ell_s.detach()
            weights[:, k] = rest_mass
        beta = self._beta(losses.detach(), expected)

        logp_c = summed_log_prob(p_c, logp[:, :k])
        per_example = (p_c * (score_term(ell_c - beta, logp_c) + ell_c)).sum(1)
        if sampled:
            sampled_term = score_term(ell_s - beta[:, 0], logp_s) + ell_s
            per_example = per_example + rest_mass * sampled_term
        entropy = self._entropy(scores)
        loss = batch_mean(add_term(per_example, -self.entropy_coeff, entropy))
        return self._finish(loss, expected, entropy, beta, ev, weights)

    def _forward_joint(
        self, scores: Tensor, loss_fn: LossFn, top: Tensor, total: int | None
    ) -> EstimatorOutput:
        """Sum over the k best joint values ``top`` (B, k, ...) of ``total`` (None: unknown),
        one rejection-sampled value outside them."""
        b, k = scores.shape[0], self.k
        sampled = total is None or k < total
        values = [top]
        if sampled:
            draws = self._family.sample(scores, self.max_draws)
            event = tuple(range(3, draws.dim() + 1))
            in_c = (draws.unsqueeze(2) == top.unsqueeze(1)).all(dim=event).any(2)
            found = (~in_c).any(1)
            first = (~in_c).long().argmax(1)
            values.append(draws[torch.arange(b, device=draws.device), first].unsqueeze(1))
        if self.baseline == "self_critic":
            values.append(self._family.sample(scores, 1))
        values_all = torch.cat(values, dim=1)
        ev = self._evaluate(values_all, scores, loss_fn)
        losses = ev.losses
        logp = self._family.log_prob(scores, values_all)

        p_c = logp[:, :k].detach().exp()
        ell_c = losses[:, :k]
        expected = (p_c * ell_c.detach()).sum(1)
        weights = torch.zeros_like(losses.detach())
        weights[:, :k] = p_c
        if sampled:
            log_q = torch.logsumexp(logp[:, :k].detach(), 1).clamp_max(0.0)
            rest_mass = -torch.expm1(log_q)
            hit = -torch.expm1(self.max_draws * log_q)  # P(a draw lands outside C) = 1 - q_C^M
            ok = found & (rest_mass > 0)  # rest_mass > 0 implies hit > 0
            weight = torch.where(ok, rest_mass / torch.where(ok, hit, 1.0), 0.0)
            ell_s = losses[:, k]
            expected = expected + weight * ell_s.detach()
            weights[:, k] = weight
        beta = self._beta(losses.detach(), expected)
        logp_c = summed_log_prob(p_c, logp[:, :k])
        per_example = (p_c * (score_term(ell_c - beta, logp_c) + ell_c)).sum(1)
        if sampled:
            sampled_term = score_term(ell_s - beta[:, 0], logp[:, k]) + ell_s
            per_example = per_example + weight * sampled_term
        entropy = self._entropy(scores)
        loss = batch_mean(add_term(per_example, -self.entropy_coeff, entropy))
        means = {"rejection_miss_rate": (~found).to(scores.dtype)} if sampled else {}
        return self._finish(loss, expected, entropy, beta, ev, weights, means=means)

    def _beta(self, losses: Tensor, expected: Tensor) -> Tensor:
        """z-independent baseline ``(B, 1)`` shared by the summed and the sampled terms."""
        if self.baseline == "self_critic":
            return losses[:, -1:]
        if self.baseline == "batch_loo":
            return leave_one_out_over_batch(expected).unsqueeze(1)
        return self._running_value(expected).expand(expected.shape[0], 1)


def summed_log_prob(p_c: Tensor, logp_c: Tensor) -> Tensor:
    """``log p`` of the summed values ``(B, k)``, 0 where ``p = 0``: with ``k`` above the number
    of values of nonzero probability (``-inf`` scores) the k best include impossible ones, whose
    ``log p = -inf`` made the score term ``-inf - (-inf) = NaN`` and the loss NaN; their weight
    ``p = 0`` makes the term 0 in value and gradient either way."""
    return torch.where(p_c > 0, logp_c, torch.zeros_like(logp_c))


def joint_topk(scores: Tensor, k: int) -> Tensor:
    """The ``k`` most probable joint values of independent categoricals ``(B, *latent, K)`` as
    indices ``(B, k, *latent)``, most probable first (``k <= K^L``).

    Exact: a value among the k best uses, for each variable, one of that variable's k best
    categories, so merging the variables one at a time and keeping the k best partial sums of
    log-probabilities never drops one (L merges of k x k candidates; no loop over examples).
    """
    b, latent = scores.shape[0], scores.shape[1:-1]
    logp = scores.detach().log_softmax(-1).reshape(b, math.prod(latent), scores.shape[-1])
    best = logp.new_zeros(b, 1)
    idx = torch.zeros(b, 1, 0, dtype=torch.long, device=scores.device)
    for var in range(logp.shape[1]):
        top_val, top_idx = logp[:, var].topk(min(k, logp.shape[-1]), dim=-1)
        cand = (best.unsqueeze(2) + top_val.unsqueeze(1)).flatten(1)
        best, flat = cand.topk(min(k, cand.shape[1]), dim=-1)
        parent, choice = flat // top_val.shape[1], flat % top_val.shape[1]
        idx = torch.cat([idx.gather(1, parent.unsqueeze(2).expand(-1, -1, idx.shape[2])),
                         top_idx.gather(1, choice).unsqueeze(2)], dim=2)
    return idx.reshape(b, idx.shape[1], *latent)
