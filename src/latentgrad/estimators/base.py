"""The ``Estimator`` contract: ``est(scores, loss_fn) -> EstimatorOutput``.

``loss_fn(z, rows)`` evaluates the downstream loss of latent values ``z`` (N, *event) paired with
example indices ``rows`` (N,) and returns ``(N,)`` losses. An estimator decides which (example, z)
pairs to evaluate and calls ``loss_fn`` exactly once per call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import violated

LossFn = Callable[[Tensor, Tensor], Tensor]


class Deferred:
    """A reported value computed on its first read: ``fn(*args)`` without gradients, once.

    What an estimator only reports -- the exact entropy when it is not in the loss, the logs,
    the support sizes and weights -- is returned this way, so a training step that never reads it
    never computes it. ``args`` are the call's tensors (detached) and other ``Deferred`` values
    (resolved first). Reading after one of the tensors was modified in place (scores that are a
    parameter, by an optimizer step) raises: the value would no longer be the call's.
    """

    __slots__ = ("args", "fn", "value", "versions")

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn, self.args, self.value = fn, args, None
        self.versions = None if torch.compiler.is_compiling() else _versions(args)

    def __call__(self) -> Any:
        if self.value is None:
            if self.versions is not None and _versions(self.args) != self.versions:
                raise RuntimeError(
                    "a tensor of the estimator call was modified in place (e.g. scores that are "
                    "a parameter, by an optimizer step) before this output field was read; read "
                    "it before modifying the tensor"
                )
            with torch.no_grad():
                self.value = self.fn(*[resolve(a) for a in self.args])
        return self.value


def _versions(args: tuple[Any, ...]) -> list[int]:
    return [a._version for a in args if isinstance(a, Tensor) and not a.is_inference()]


def resolve(value: Any) -> Any:
    """``value``, computed first if it is ``Deferred``."""
    return value() if isinstance(value, Deferred) else value


#: the ``EstimatorOutput`` fields an estimator may hand over as ``Deferred``
DEFERRABLE = ("support_size", "entropy", "logs", "weights")


@dataclass
class EstimatorOutput:
    """What every estimator returns.

    loss: scalar surrogate to backpropagate (its gradient is the estimator), a mean over the
        batch; 0 (with a graph, zero gradients) for an empty batch, whose other fields are
        empty.
    expected_loss: (B,) estimate of E_p[loss_b] (no entropy term).
    support_size: (B,) number of ``loss_fn`` evaluations each example cost.
    entropy: (B,) entropy of the example's latent distribution (exact where the family allows),
        reported without gradient: the estimator's ``entropy_coeff`` puts it in ``loss``.
    logs: scalars worth logging (support size, temperature, baseline value, ...).
    latents: what ``loss_fn`` was called on (detached): the N latent values (one-hot, relaxed,
        mixed or structures; int64 indices with ``one_hot=False``).
    rows: (N,) the example each latent belongs to.
    weights: (N,) how the N losses were combined: ``expected_loss[b] = sum_{rows_n = b}
        weights_n * loss_n`` (probabilities for marginalization, 1/S for S samples, 0 for a
        baseline's extra sample).

    ``support_size``, ``entropy``, ``logs`` and ``weights`` may be given as ``Deferred``: they
    are then computed on their first read (with the values of the call), and a step that reads
    only ``loss`` does not pay for them.
    """

    loss: Tensor
    expected_loss: Tensor
    support_size: Tensor
    entropy: Tensor
    logs: dict[str, float | Tensor] = field(default_factory=dict)
    latents: Tensor | None = None
    rows: Tensor | None = None
    # (no class attribute, which would shadow a Deferred value from ``__getattr__``)
    weights: Tensor | None = field(default_factory=lambda: None)

    def __post_init__(self) -> None:
        self._deferred: dict[str, Deferred] = {}
        for name in DEFERRABLE:
            self._store(name, getattr(self, name))

    def _store(self, name: str, value: Any) -> None:
        if isinstance(value, Deferred):
            self._deferred[name] = value
            if name in self.__dict__:
                delattr(self, name)
        else:
            self._deferred.pop(name, None)
            setattr(self, name, value)

    def __getattr__(self, name: str) -> Any:
        """A ``Deferred`` field, computed at its first read (then stored as a plain value)."""
        deferred = self.__dict__.get("_deferred", {}).pop(name, None)
        if deferred is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        value = deferred()
        setattr(self, name, value)
        return value

    def evaluated(
        self, latents: Tensor, rows: Tensor, weights: Tensor | Deferred
    ) -> EstimatorOutput:
        """Record what was evaluated (stored detached); returns ``self``."""
        self.latents, self.rows = detached(latents), rows
        self._store("weights", weights if isinstance(weights, Deferred) else detached(weights))
        return self


def call_loss_fn(
    loss_fn: LossFn, z: Tensor, rows: Tensor, pathwise: str | None = None
) -> Tensor:
    """Call ``loss_fn`` once and check it returned ``(N,)`` floating-point losses, finite (with
    validation on). ``pathwise``: the name of an estimator whose gradient flows through ``z``;
    then losses without a graph while ``z`` has one are refused at the call (they would give no
    gradient, or fail later in ``backward()``)."""
    out = loss_fn(z, rows)
    n = rows.shape[0]
    if not isinstance(out, Tensor) or out.shape != (n,):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"loss_fn must return a tensor of shape ({n},) (one loss per (z, row) pair), got {got}"
        )
    if not out.dtype.is_floating_point:
        raise TypeError(f"loss_fn must return floating-point losses, got dtype {out.dtype}")
    if pathwise and z.requires_grad and torch.is_grad_enabled() and not out.requires_grad:
        raise ValueError(
            f"{pathwise} differentiates the loss through the latents z (a pathwise gradient), "
            "but loss_fn returned losses without a graph (detached, computed under no_grad or "
            "not from z); compute them from z with gradients enabled"
        )
    if violated(out, torch.isfinite):
        raise ValueError("loss_fn returned NaN or infinite losses")
    return out


def detached(x: Tensor) -> Tensor:
    """``x.detach()``, or ``x`` itself when it has no gradient (one tensor object fewer per
    step)."""
    return x.detach() if x.requires_grad else x


def batch_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over its entries (the examples of a batch, or their samples). An empty
    batch has no loss: its mean is 0, a sum over no examples that keeps ``x``'s graph (so
    ``backward()`` works and gives zero gradients), where ``Tensor.mean`` would give NaN."""
    return x.mean() if x.numel() else x.sum()


def add_term(x: Tensor, coeff: float, term: Tensor | None) -> Tensor:
    """``x + coeff · term``; with ``coeff = 0`` (or no term) ``x`` itself: a regulariser that is
    not in the objective never enters it (a Monte Carlo entropy that overflowed to ±inf times a
    zero coefficient would be NaN)."""
    return x + coeff * term if coeff and term is not None else x


def fixed_support_output(
    loss: Tensor,
    expected: Tensor,
    entropy: Tensor | Deferred,
    n_eval: int,
    logs: dict[str, float | Tensor] | None = None,
    means: dict[str, Tensor] | None = None,
) -> EstimatorOutput:
    """The output of an estimator that evaluates every example ``n_eval`` times: ``expected``
    and ``entropy`` ``(B,)`` (stored detached; ``entropy`` may be ``Deferred``), ``support_size``
    ``n_eval`` for each example; logs ``entropy`` (mean, 0 over an empty batch),
    ``support_size``, the given ``logs`` and the means of the tensors ``means`` (0 over an empty
    batch). Support sizes and logs are computed when first read."""
    entropy = entropy if isinstance(entropy, Deferred) else detached(entropy)
    support = Deferred(filled, (expected.shape[0],), n_eval, torch.long, expected.device)
    all_logs = Deferred(_fixed_support_logs, entropy, float(n_eval), logs or {}, means or {})
    return EstimatorOutput(loss, detached(expected), support, entropy, all_logs)


def _fixed_support_logs(
    entropy: Tensor, n_eval: float, logs: dict[str, float | Tensor], means: dict[str, Tensor]
) -> dict[str, float | Tensor]:
    return {
        "entropy": batch_mean(entropy),
        "support_size": n_eval,
        **logs,
        **{name: batch_mean(detached(value)) for name, value in means.items()},
    }


def filled(
    shape: tuple[int, ...], value: float, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``torch.full(shape, value)`` (a ``Deferred`` support size or weight vector)."""
    return torch.full(shape, value, dtype=dtype, device=device)


def sum_latent(x: Tensor, batch_dims: int = 1) -> Tensor:
    """Sum every dim after the first ``batch_dims`` (the latent variables of an example):
    ``(*batch, *latent)`` -> ``(*batch,)``."""
    return x.flatten(batch_dims).sum(-1) if x.dim() > batch_dims else x


def exact_entropy(entropy: Callable[[Tensor], Tensor], scores: Tensor,
                  in_loss: bool) -> Tensor | Deferred:
    """The exact ``entropy(scores)`` ``(B, *latent)`` when it enters the loss (``in_loss``); else
    a value only reported: ``Deferred``, summed over the latent variables ``(B,)``, computed when
    read, and zeros where ``entropy`` has no tractable value (raises ``NotImplementedError``)."""
    if in_loss:
        return entropy(scores)
    return Deferred(_reported_entropy, entropy, scores.detach())


def _reported_entropy(entropy: Callable[[Tensor], Tensor], scores: Tensor) -> Tensor:
    try:
        return sum_latent(entropy(scores))
    except NotImplementedError:
        return scores.new_zeros(scores.shape[0])


def check_latent_shape(latent_shape: object, min_dim: int = 1) -> tuple[int, ...]:
    """Require a tuple of at least ``min_dim`` positive ints (the latent shape of one example)."""
    shape = tuple(latent_shape) if isinstance(latent_shape, (tuple, list, torch.Size)) else None
    if (
        shape is None
        or len(shape) < min_dim
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape)
    ):
        raise ValueError(
            f"latent_shape must be a tuple of at least {min_dim} positive int(s), e.g. (L, K) for "
            f"L variables with K categories, got {latent_shape!r}"
        )
    return shape


EVAL_MODES = ("mode", "sample", "expected")


def no_enumeration_target(self: Estimator, value_scores: Tensor) -> None:
    """``enumeration_probs`` of the estimators whose latent is not a distribution over the
    enumerated one-hots or structures (mixed, IGR, relaxed subsets): ``None``, so
    ``latentgrad.diagnostics`` reports no exact gradient (no brute-force target) for them."""
    return None


class Estimator(nn.Module):
    """Base class: subclasses implement ``forward(scores, loss_fn) -> EstimatorOutput``.

    Sampling, relaxation and mixed estimators read their latent differently in ``eval()`` mode,
    by ``eval_mode`` (the argument of their constructors; default ``"mode"``): ``"mode"``
    evaluates the most probable value (argmax category, MAP structure, most probable face),
    ``"sample"`` behaves as in training (running baselines are updated only in training), and
    ``"expected"`` (categorical latents) the exact expectation over the product of the supports.

    ``score_shape(latent_shape)`` says how many score units one example needs, so an encoder head
    is sized the same way for every estimator::

        head = torch.nn.Linear(hidden, math.prod(est.score_shape(latent_shape)))
        scores = head(h).view(-1, *est.score_shape(latent_shape))
    """

    eval_mode = "sample"

    def __init__(self, entropy_coeff: float = 0.0) -> None:
        super().__init__()
        self.entropy_coeff = float(entropy_coeff)

    def _set_eval_mode(self, eval_mode: object, allowed: tuple[str, ...] = EVAL_MODES) -> None:
        if eval_mode not in allowed:
            raise ValueError(
                f"eval_mode must be one of {allowed} for {type(self).__name__}, got {eval_mode!r}"
            )
        self.eval_mode = eval_mode

    def reading(self) -> str:
        """How this call reads the latent: ``"sample"`` in training, ``eval_mode`` in eval."""
        return "sample" if self.training else self.eval_mode

    def score_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one example's scores for latents of shape ``latent_shape``: ``(*latent, K)``
        for L categorical variables of K categories (or bits), ``(*latent, *structure.score_shape)``
        for structures; the scores are ``(B, *score_shape)``. Default: the latent shape itself
        (one score per category, bit or structure part), whose trailing dims must be the
        estimator's ``structure.score_shape`` where it has a structure (a ValueError otherwise)."""
        shape = check_latent_shape(latent_shape)
        want = tuple(getattr(getattr(self, "structure", None), "score_shape", None) or ())
        if want and shape[len(shape) - len(want):] != want:
            raise ValueError(
                f"latent_shape must end with the structure's score shape {want} "
                f"({self.structure!r}), got {shape}")
        return shape

    def forward(self, scores: Tensor, loss_fn: LossFn) -> EstimatorOutput:  # pragma: no cover
        raise NotImplementedError
