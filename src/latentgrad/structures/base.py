"""The ``Structure`` interface: a combinatorial latent space of 0/1 indicator vectors.

A structure value ``z`` is a 0/1 tensor of shape ``score_shape``; its score under ``scores`` is
``<scores, z>``. Every method takes batched scores ``(*batch, *score_shape)`` and runs without a
Python loop over the batch.
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .._dtypes import working_dtype
from .._validation import (
    broadcast_shapes,
    check_generator,
    check_no_nan,
    check_sample_shape,
    check_tensor,
    check_trailing_shape,
    validation_enabled,
    violated,
)


def autograd_gradients(fn: Callable[..., Tensor], *args: Tensor) -> tuple[Tensor, ...]:
    """``grad sum(fn(*args))`` w.r.t. every arg, by autograd, shaped like the args.

    Built with ``create_graph`` when an arg requires grad and grad mode is on, so the result is
    itself differentiable (Hessian-vector products); otherwise detached leaves are
    differentiated and the result carries no graph (under ``torch.no_grad`` as for any op).
    Under ``torch.inference_mode`` (Lightning's validation and test loops), or for inference
    tensors, autograd needs normal copies, made with inference mode lifted.
    """
    if torch.is_inference_mode_enabled() or any(a.is_inference() for a in args):
        with torch.inference_mode(False), torch.enable_grad():
            leaves = [a.clone().requires_grad_(True) for a in args]
            return torch.autograd.grad(fn(*leaves).sum(), leaves)
    create_graph = torch.is_grad_enabled() and any(a.requires_grad for a in args)
    if not create_graph:
        args = tuple(a.detach() for a in args)
    with torch.enable_grad():
        leaves = [a if a.requires_grad else a.detach().requires_grad_(True) for a in args]
        return torch.autograd.grad(fn(*leaves).sum(), leaves, create_graph=create_graph)


def autograd_gradient(log_partition: Callable[[Tensor], Tensor], scores: Tensor) -> Tensor:
    """``grad_scores sum(log_partition(scores))`` (``autograd_gradients`` of one tensor)."""
    return autograd_gradients(log_partition, scores)[0]


#: ``Structure.entropy`` warns where its rounding error may exceed this many nats
ENTROPY_ROUNDING_WARNING = 1e-3


class Structure(abc.ABC):
    """Abstract combinatorial space. Subclasses set ``score_shape`` and implement the oracles."""

    score_shape: tuple[int, ...]

    @property
    def event_dim(self) -> int:
        return len(self.score_shape)

    def check_scores(self, scores: Tensor, name: str = "scores") -> Tensor:
        """Validate ``scores`` of shape ``(*batch, *score_shape)``: float dtype, shape, no NaN."""
        check_tensor(scores, name)
        check_trailing_shape(scores, name, self.score_shape)
        check_no_nan(scores, name)
        return scores

    #: The most scores one structure's score sums where a dynamic program or matrix-tree
    #: computation sums them (``check_range``); None where nothing sums them.
    summed_scores: int | None = None

    def check_range(self, work: Tensor, name: str = "scores") -> None:
        """Raise unless the finite entries of ``work`` (scores in the dtype the computation runs
        in) have magnitude below ``finfo.max / (summed_scores + 2)``: the sums of up to
        ``summed_scores`` of them, shifted by the row maximum, then stay finite (beyond, log Z
        overflows and the marginals, its gradient, are NaN). A value check (one sync), off with
        validation."""
        terms = self.summed_scores
        if terms is None:
            return
        limit = torch.finfo(work.dtype).max / (terms + 2)

        def magnitude(w: Tensor) -> Tensor:
            return w.detach().masked_fill(w == float("-inf"), 0.0).abs()

        if violated(work, lambda w: magnitude(w) <= limit):
            raise ValueError(
                f"{name} of {self!r} must have magnitude below {limit:.3g} (finfo.max / "
                f"{terms + 2} in {work.dtype}); got {magnitude(work).amax().item():.3g}"
            )

    def _log_z_in_dtype_of(self, log_z: Tensor, scores: Tensor) -> Tensor:
        """``log_z`` (computed in a wider dtype) returned in the scores' dtype, or a ValueError
        naming the scores where it overflows there: no valid score is ``+inf``, so a ``+inf``
        log Z is a value beyond ``finfo(scores.dtype).max`` (float16 scores of 5e4 in
        ``BitVector(4, 2)``), refused rather than returned. A value check (one sync), off with
        validation (then ``+inf`` is returned)."""
        out = log_z.to(scores.dtype)
        if violated(out, lambda z: z != float("inf")):
            raise ValueError(
                f"scores: the log-partition of {self!r} exceeds {scores.dtype}'s range "
                f"(finfo.max = {torch.finfo(scores.dtype).max:.3g}); got scores up to "
                f"{scores.detach().abs().amax().item():.3g}; rescale the scores or pass them in "
                "a wider dtype"
            )
        return out

    def batch_shape(self, scores: Tensor) -> torch.Size:
        return scores.shape[: scores.dim() - self.event_dim]

    def score(self, scores: Tensor, z: Tensor) -> Tensor:
        """``<scores, z>`` summed over the score dimensions. Broadcasts; returns the batch shape.

        An excluded item (score ``-inf``) that is off (``z = 0``) contributes 0, not
        ``-inf * 0 = NaN``.
        """
        self._check_score_args(scores, z)
        excluded_off = (scores == float("-inf")) & (z == 0)
        safe = torch.where(excluded_off, torch.zeros_like(scores), scores)
        return (safe * z).sum(dim=tuple(range(-self.event_dim, 0)))

    def _check_score_args(self, scores: Tensor, z: Tensor) -> None:
        """``scores`` and ``z`` end with ``score_shape`` and their batch shapes broadcast (shape
        checks only, no sync): ``ValueError`` naming them, not torch's size mismatch."""
        check_trailing_shape(scores, "scores", self.score_shape)
        check_trailing_shape(z, "z", self.score_shape)
        a, b = scores.shape, z.shape  # the batch dims, aligned from the right
        if any(m != n and m != 1 and n != 1 for m, n in zip(reversed(a), reversed(b))):
            raise ValueError(f"z of shape {tuple(b)} does not broadcast with scores of shape "
                             f"{tuple(a)}")

    @abc.abstractmethod
    def argmax(self, scores: Tensor) -> Tensor:
        """MAP oracle: ``(*batch, *score_shape)`` -> 0/1 tensor of the same shape and dtype."""

    def topk(self, scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The k best structures, best first.

        Returns ``(*batch, k, *score_shape)`` indicators and their ``(*batch, k)`` scores.
        """
        raise NotImplementedError(f"{type(self).__name__} has no exact k-best oracle")

    def log_partition(self, scores: Tensor) -> Tensor:
        """``log sum_z exp(<scores, z>)``, shape ``(*batch,)``, differentiable twice."""
        raise NotImplementedError(f"{type(self).__name__} has no tractable log-partition")

    def marginals(self, scores: Tensor) -> Tensor:
        """Gibbs marginals ``E_p[z] = grad log Z``, ``(*batch, *score_shape)``, differentiable.

        Default: autograd of ``log_partition`` with ``create_graph`` so the result can itself be
        differentiated (the SST relaxations need the Hessian-vector product).
        """
        return autograd_gradient(self.log_partition, scores)

    def sample(
        self,
        scores: Tensor,
        sample_shape: torch.Size | tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Exact draws from the Gibbs distribution ``p(z) ∝ exp(<scores, z>)`` (no gradient).

        ``(*batch, *score_shape)`` -> 0/1 structures ``(*sample_shape, *batch, *score_shape)`` in
        the scores' dtype; ``generator`` (on the scores' device) makes the draws reproducible.
        Validates the scores, then draws with ``_sample`` from detached scores promoted to at
        least float32 (half-precision DP tables lose too much).
        """
        self.check_scores(scores)
        sample_shape = check_sample_shape(sample_shape)
        check_generator(generator, scores)
        with torch.no_grad():
            work = scores.detach().to(working_dtype(scores.dtype))
            z = self._sample(work, tuple(sample_shape), generator)
        return z.to(scores.dtype)

    def _sample(
        self, scores: Tensor, sample_shape: tuple[int, ...], generator: torch.Generator | None
    ) -> Tensor:
        """The sampler of a structure that has one: validated, detached scores ``(*batch,
        *score_shape)`` in float32/float64 -> 0/1 draws ``(*sample_shape, *batch, *score_shape)``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no exact Gibbs sampler")

    def contains(self, z: Tensor) -> Tensor:
        """Whether each ``z`` ``(*batch, *score_shape)`` is one of the structures: ``(*batch,)``
        bool. A 0/1 ``z`` is one iff it is the MAP of the scores ``2z - 1``: there ``z`` scores
        ``|z|`` and every other structure at most ``|z| - 1`` (it misses one of z's ones or has
        one outside z), so the MAP oracle decides membership for every structure."""
        dims = tuple(range(-self.event_dim, 0))
        binary = ((z == 0) | (z == 1)).all(dim=dims)
        theta = 2 * torch.where(binary.view(*binary.shape, *[1] * self.event_dim), z, 0).double()
        return binary & (self.argmax(theta - 1) == z).all(dim=dims)

    def check_structures(self, z: Tensor, name: str = "z") -> Tensor:
        """Require ``z`` ``(*batch, *score_shape)`` to hold structures (``contains``; a value
        check, one sync, off with validation); return it."""
        if not isinstance(z, Tensor) or z.is_complex():
            raise TypeError(f"{name} must be a real torch.Tensor of 0/1 structure indicators")
        check_trailing_shape(z, name, self.score_shape)
        if violated(z, self.contains):
            raise ValueError(
                f"{name} must hold structures of {self!r} (0/1 indicator tensors of its "
                "structures); got a value that is not one"
            )
        return z

    def log_prob(self, scores: Tensor, z: Tensor) -> Tensor:
        """``log p(z) = <scores, z> - log Z(scores)`` under the Gibbs distribution.

        ``scores`` ``(*batch, *score_shape)`` and structures ``z`` broadcast against each other
        (e.g. scores ``(B, 1, ...)`` with ``z`` ``(B, S, ...)``); returns the broadcast batch
        shape, differentiable in ``scores``; computed in ``log_prob_dtype``, returned in the
        scores' dtype. ``z`` must hold structures (``check_structures``).
        """
        check_tensor(scores, "scores")
        self.check_structures(z, "z")
        broadcast_shapes(scores.shape, z.shape, error=lambda: (
            f"scores of shape {tuple(scores.shape)} and z of shape {tuple(z.shape)} do not "
            "broadcast"
        ))
        return self.log_prob_of_structures(scores, z)

    def log_prob_of_structures(self, scores: Tensor, z: Tensor) -> Tensor:
        """``log_prob`` without checking ``z``: for values known to be structures (samples of
        this structure, enumerations)."""
        work = scores.to(self.log_prob_dtype(scores.dtype))
        return (self.score(work, z.to(work.dtype)) - self.log_partition(work)).to(scores.dtype)

    def log_prob_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype ``log_prob`` computes in: at least float32 (``working_dtype``)."""
        return working_dtype(dtype)

    def entropy(self, scores: Tensor) -> Tensor:
        """Gibbs entropy ``H(p) = log Z - <scores, μ>``, ``μ = marginals(scores)``: ``(*batch,)``.

        Differentiable in ``scores`` (through ``marginals``, built with ``create_graph`` when the
        scores require grad); excluded (``-inf``) items have ``μ = 0`` and contribute 0.
        The two terms grow like the scores while H stays in ``[0, log num_structures]``, so the
        difference is taken in float64 (no overflow at any float32 score), on scores shifted by
        ``_common_shift`` where the structure has one (a common offset, however large, then
        costs nothing), and clamped to that range; its absolute error is ``|scores|`` times the
        marginals' absolute error. That is about 1e-16 × |scores| × the number of ones for the
        k-subset and unbudgeted bit-vector oracles (1e-5 nats for float32 scores of 1e10). The
        tree and budgeted bit-vector oracles' marginals are accurate to about 1e-16 × |scores|
        only, so their entropy errs by about 1e-16 × |scores|² wherever the Gibbs distribution
        is spread over near-tied structures at a large scale (measured, trees n = 4-5, scores ±s
        plus N(0, 1): 3e-10 nats at s = 1e3, 5e-6 at 1e5, 0.07 at 1e7, 2-3 at 1e8; bit vectors
        d = 4-6, scores in {-s, 0, s} plus N(0, 1): 6e-10 at 1e3, 8e-6 at 1e5, 0.05 at 1e7, 3 at
        1e8); away from ties it is near 0 and exact. Where a
        structure's bound on that error (``_entropy_rounding``) exceeds
        ``ENTROPY_ROUNDING_WARNING`` nats, a ``RuntimeWarning`` says so (validation on). Returned
        in the scores' dtype.
        """
        self.check_scores(scores, "scores")  # before the shift, which turns -inf into NaN
        work = scores.to(torch.float64)
        self.check_range(work)
        shift = self._common_shift(work)
        if shift is not None:
            work = work - shift
        marginals = self.marginals(work)
        entropy = self.log_partition(work) - self.score(work, marginals)
        count = getattr(self, "num_structures", None)
        entropy = entropy.clamp(0.0, None if count is None else math.log(count))
        if violated(entropy, torch.isfinite):
            raise ValueError(
                "scores are too large for the entropy (the log-partition overflows float64: "
                f"|scores| up to {scores.detach().abs().amax().item():.3g}); rescale them"
            )
        if validation_enabled():
            self._warn_if_rounded(work.detach(), marginals.detach(), count)
        return entropy.to(scores.dtype)

    def _warn_if_rounded(self, scores: Tensor, marginals: Tensor, count: int | None) -> None:
        """The ``RuntimeWarning`` of ``entropy`` where ``_entropy_rounding`` exceeds
        ``ENTROPY_ROUNDING_WARNING`` (clamped to log N: the entropy lies in [0, log N])."""
        rounding = self._entropy_rounding(scores, marginals)
        if rounding is None:
            return
        if count is not None:
            rounding = rounding.clamp(max=math.log(count))
        if violated(rounding, lambda r: r <= ENTROPY_ROUNDING_WARNING):
            in_use = scores.masked_fill(marginals == 0, 0.0).abs().amax().item()
            warnings.warn(
                f"{self!r}.entropy: at these scores (|scores| up to {in_use:.3g} on the "
                "entries in use, after the common shift where there is one, spread over "
                "near-tied structures) float64 rounding may leave an error of up to "
                f"{rounding.amax().item():.3g} nats", RuntimeWarning, stacklevel=3)

    def _entropy_rounding(self, scores: Tensor, marginals: Tensor) -> Tensor | None:
        """A bound ``(*batch,)`` in nats on the rounding error of ``entropy`` at the (shifted,
        float64) ``scores`` with these ``marginals``, where it can exceed a few eps; None
        where it cannot (here)."""
        return None

    def _common_shift(self, scores: Tensor) -> Tensor | None:
        """A detached constant per row, broadcastable to ``scores``, whose subtraction from every
        score that counts changes every structure's score by the same amount (so the Gibbs
        distribution not at all): structures with a fixed number of ones have one. None here."""
        return None

    @abc.abstractmethod
    def enumerate(self) -> Tensor:
        """Every structure as a ``(N, *score_shape)`` 0/1 float tensor (small sizes only)."""
