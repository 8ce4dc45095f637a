"""Gradient diagnostics for estimators: mean, bias against the exact gradient, variance, cost.

``gradient_stats`` calls an estimator ``n_draws`` times on the same scores and summarises the
gradients of its ``loss`` w.r.t. the scores. When the latent space is small the exact gradient of

    J(theta) = (1/B) sum_b [ sum_z p_b(z) l_b(z) - c H(p_b) ]

is computed by enumerating every value (categorical: the K one-hots, or the K^L joint values of
L independent latents for scores ``(B, L, K)``; otherwise ``structure.enumerate()``), so the bias
of the estimator can be read off. ``p`` is the estimator's distribution over the enumerated
values:

- ``estimator.enumeration_probs(s)`` of the value scores ``s_b(z) = structure.score(theta_b, z)``
  (of each latent's scores for categorical ones) where the estimator defines it (sparsemax, top-k
  sparsemax; ``None`` where no unique target exists, as for SparseMAP);
- the perturb-and-MAP distribution of ``estimator.perturbation_target(theta)`` (a
  ``StochasticArgmax``: the SST estimators and the perturbation score function) where its
  ``log_prob`` has a closed form (a categorical with Gumbel noise, ``softmax(theta)``; unbudgeted
  bit vectors; k-subsets with Gumbel noise), none otherwise (trees, budgeted bit vectors,
  Gaussian noise on a categorical or a k-subset); its entropy term is the estimator's own, the
  Gibbs entropy of the structure at ``theta``;
- else the Gibbs distribution ``softmax(s)`` (the softmax / Bernoulli family that the score
  function, NVIL, Sum&Sample and Gumbel-Softmax target).

Example (a K = 4 toy; a full comparison table is in ``benchmarks/compare_estimators.py``)::

    >>> import torch
    >>> from latentgrad.diagnostics import gradient_stats
    >>> from latentgrad.estimators.score_function import ScoreFunction
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> target = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    >>> loss_fn = lambda z, rows: ((z - target[rows]) ** 2).sum(-1)
    >>> scores = torch.zeros(1, 4)
    >>> stats = gradient_stats(ScoreFunction(baseline="self_critic"), scores, loss_fn, 200)
    >>> stats.evaluations_per_example
    2.0
    >>> bool(stats.bias.abs().max() < 5 * stats.stderr.max())
    True
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from .estimators.base import Estimator, LossFn
from .structures.base import Structure
from .structures.categorical import Categorical


@dataclass
class GradientStats:
    """Summary of ``n_draws`` gradients of an estimator's loss w.r.t. scores ``(B, *score_shape)``.

    mean, variance, stderr: per-coordinate mean, unbiased variance and standard error of the mean.
    total_variance: sum of the per-coordinate variances (trace of the covariance), scalar.
    exact: the exact gradient by enumeration, or None (``exact=False`` or no unique target).
    bias: ``mean - exact`` or None; bias_norm: its Euclidean norm (includes Monte Carlo error of
        size about ``sqrt(total_variance / n_draws)``).
    evaluations_per_example: mean ``support_size`` (loss evaluations per example per call).
    """

    mean: Tensor
    variance: Tensor
    stderr: Tensor
    total_variance: Tensor
    exact: Tensor | None
    bias: Tensor | None
    bias_norm: Tensor | None
    evaluations_per_example: float
    n_draws: int


def gradient_stats(
    estimator: Estimator,
    scores: Tensor,
    loss_fn: LossFn,
    n_draws: int,
    exact: bool = True,
    structure: Structure | None = None,
    **estimator_kwargs,
) -> GradientStats:
    """Mean, bias, variance and cost of ``estimator``'s gradient at ``scores`` (B, *score_shape).

    The estimator is deep-copied first (running baselines of the copy warm up over the draws in
    its current train/eval mode; the caller's module is untouched). ``estimator_kwargs`` go to
    every call (e.g. ``baseline_input=x`` for NVIL). ``structure`` defaults to the estimator's
    ``structure`` attribute; None means categorical over the last dim. ``loss_fn`` must not
    depend on the scores except through ``z`` (it is also used for the enumeration).
    """
    if not isinstance(n_draws, int) or n_draws < 2:
        raise ValueError(f"n_draws must be an int >= 2 (for a variance), got {n_draws!r}")
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        raise TypeError("scores must be a floating-point torch.Tensor")
    if scores.dim() == 0 or scores.shape[0] == 0:
        raise ValueError(f"scores must hold at least one example (B >= 1), got shape "
                         f"{tuple(scores.shape)}")
    est = copy.deepcopy(estimator)
    grads, evals = [], []
    for _ in range(n_draws):
        x = scores.detach().clone().requires_grad_(True)
        out = est(x, loss_fn, **estimator_kwargs)
        (g,) = (torch.autograd.grad(out.loss, x, allow_unused=True) if out.loss.requires_grad
                else (None,))
        if g is None:
            raise ValueError(
                f"{type(estimator).__name__} returned a loss without a gradient to the scores "
                "(in eval mode an estimator returns its evaluation reading): call "
                "estimator.train() first")
        grads.append(g)
        evals.append(out.support_size.to(torch.float64).mean())
    stacked = torch.stack(grads)
    mean = stacked.mean(0)
    variance = stacked.var(0)
    if structure is None:
        structure = getattr(estimator, "structure", None)
    exact_grad = exact_gradient(estimator, scores, loss_fn, structure) if exact else None
    bias = None if exact_grad is None else mean - exact_grad
    return GradientStats(
        mean=mean,
        variance=variance,
        stderr=(variance / n_draws).sqrt(),
        total_variance=variance.sum(),
        exact=exact_grad,
        bias=bias,
        bias_norm=None if bias is None else bias.norm(),
        evaluations_per_example=float(torch.stack(evals).mean()),
        n_draws=n_draws,
    )


#: The most joint values ``exact_gradient`` enumerates for several categorical latents.
MAX_JOINT = 2**16


def _joint_categorical(probs: Tensor) -> tuple[Tensor, Tensor]:
    """Per-latent probabilities ``(B, *latent, K)`` of independent categorical latents -> every
    joint value as one-hots ``(N, *latent, K)``, ``N = K^L``, and its probability ``(B, N)``."""
    latent, k = probs.shape[1:-1], probs.shape[-1]
    count = k ** latent.numel()
    if count > MAX_JOINT:
        raise ValueError(
            f"exact: scores of shape {tuple(probs.shape)} have {count} joint values "
            f"({k}^{latent.numel()}); exact=True enumerates at most {MAX_JOINT}: pass exact=False"
        )
    codes = torch.arange(count, device=probs.device)
    powers = k ** torch.arange(latent.numel() - 1, -1, -1, device=probs.device)
    idx = (codes.unsqueeze(-1) // powers) % k  # (N, L), the last latent fastest
    flat = probs.reshape(probs.shape[0], -1, k)  # (B, L, K)
    picked = flat[:, torch.arange(latent.numel(), device=probs.device), idx]  # (B, N, L)
    space = torch.nn.functional.one_hot(idx, k).to(probs.dtype).reshape(count, *latent, k)
    return space, picked.prod(-1)


def enumerate_space(scores: Tensor, structure: Structure | None) -> Tensor:
    """Every latent value ``(N, *score_shape)`` in the scores' dtype/device (one-hots, or stacks
    of one-hots for several latents per example, if None)."""
    if structure is None:
        return _joint_categorical(scores.detach().softmax(-1))[0]
    return structure.enumerate().to(device=scores.device, dtype=scores.dtype)


def _argmax_probs(dist, values: Tensor) -> Tensor | None:
    """``P(X = v)`` of a perturb-and-MAP distribution at ``values`` (broadcast against its batch),
    or None where its ``log_prob`` has no closed form."""
    try:
        return dist.log_prob(values).exp()
    except NotImplementedError:
        return None


def exact_gradient(
    estimator: Estimator, scores: Tensor, loss_fn: LossFn, structure: Structure | None
) -> Tensor | None:
    """Gradient of ``J(theta)`` (module docstring) by enumeration, or None without a target.

    Categorical (``structure`` None or ``Categorical``): the latents along the middle dims of
    ``(B, *latent, K)`` are independent, so a joint value's probability is the product of the
    per-latent ones (``loss_fn`` gets indices if the estimator's ``one_hot`` is False). Another
    structure: every value's score ``structure.score(theta_b, z)`` (trees count each undirected
    edge once), then the estimator's target over them; one latent per example (``scores``
    ``(B, *event)``). None where the estimator has no target (``enumeration_probs`` None:
    SparseMAP, mixed, IGR and relaxed-subset estimators) or its perturb-and-MAP target has no
    closed-form probability (module docstring)."""
    x = scores.detach().clone().requires_grad_(True)
    probs_fn = getattr(estimator, "enumeration_probs", None)
    perturbed = getattr(estimator, "perturbation_target", None)
    entropy = None
    if structure is None or isinstance(structure, Categorical):
        if perturbed is not None:
            k = x.shape[-1]  # P(X = each one-hot), (K, B, *latent) -> (B, *latent, K)
            one_hots = torch.eye(k, dtype=x.dtype, device=x.device).view(k, *[1] * (x.dim() - 1), k)
            per_latent = _argmax_probs(perturbed(x), one_hots)
            per_latent = None if per_latent is None else per_latent.movedim(0, -1)
        else:
            per_latent = x.softmax(-1) if probs_fn is None else probs_fn(x)
        if per_latent is None:
            return None
        space, probs = _joint_categorical(per_latent)
        if not getattr(estimator, "one_hot", True):  # loss_fn takes category indices
            space = space.argmax(-1)
    else:
        if scores.dim() - 1 != structure.event_dim:
            raise ValueError(
                f"exact: scores of shape {tuple(scores.shape)} hold several {structure!r} "
                "latents per example, whose joint values are not enumerated: pass exact=False"
            )
        space = enumerate_space(scores, structure)
        if perturbed is not None:
            probs = _argmax_probs(perturbed(x), space.unsqueeze(1))  # (N, B)
            if probs is None:
                return None
            probs = probs.mT
            if getattr(estimator, "entropy_coeff", 0.0):
                entropy = structure.entropy(x)  # the estimators' surrogate regulariser
        else:
            value_scores = structure.score(x.unsqueeze(1), space)  # (B, N)
            probs = value_scores.softmax(-1) if probs_fn is None else probs_fn(value_scores)
        if probs is None:
            return None
    b, n = scores.shape[0], space.shape[0]
    rows = torch.arange(b, device=scores.device).repeat_interleave(n)
    z = space.repeat(b, *([1] * (space.dim() - 1)))
    with torch.no_grad():
        table = loss_fn(z, rows).view(b, n).to(probs.dtype)
    if entropy is None:
        logp = torch.where(probs > 0, probs, torch.ones_like(probs)).log()
        entropy = -(probs * logp).sum(-1)
    coeff = getattr(estimator, "entropy_coeff", 0.0)
    objective = ((probs * table).sum(-1) - coeff * entropy).mean()
    (g,) = torch.autograd.grad(objective, x)
    return g
