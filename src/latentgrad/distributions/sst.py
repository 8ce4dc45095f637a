"""Stochastic argmax and stochastic softmax tricks over a ``Structure`` (Paulus et al. 2020).

Utilities ``U = θ + N`` with iid noise ``N`` (Gumbel(0, 1) or standard Gaussian), one draw per
free score entry: per entry of the score tensor, except that a ``SpanningTree``
draws one utility per undirected edge (upper triangle, mirrored) and an ``Arborescence`` rooted at
r draws none for the entries it ignores (diagonal, column r); see ``utility_mask``.

- SMT, ``StochasticArgmax``: the hard sample ``X = argmax_{x in X} <U, x>`` (the structure's MAP
  oracle at ``U``).
- SST, ``StochasticSoftmax``: the relaxation ``X_t = argmax_{x in conv X} <U, x> - t Ω(x)``,
  reparameterised through ``U``. Ω = negative exponential-family entropy gives the Gibbs
  marginals ``X_t = ∇ log Z(U / t)`` (Categorical: Gumbel-Softmax; KSubset: the ESP DP; trees:
  the matrix-tree theorem); Ω = ½‖x‖² gives ``sparsemax(U / t)`` for categoricals,
  ``clip(U / t, 0, 1)`` for unbudgeted bit vectors and ``SparseMAP(U / t)`` in general.
  ``straight_through=True`` returns the SMT sample in the forward pass with the SST gradient.

ELBOs over utilities use ``utility_kl``: ``KL(Gumbel(θ, 1) ‖ Gumbel(θ₀, 1)) = δ + e^{-δ} - 1``
with ``δ = θ - θ₀`` (Gaussian noise: ``δ² / 2``) per drawn utility, each counted once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from .._dtypes import working_dtype
from .._validation import (
    broadcast_shapes,
    check_choice,
    check_no_nan,
    check_sample_shape,
    check_tensor,
    check_trailing_shape,
)
from .._validation import validate_args as validating
from ..mappings import sparsemax
from ..polytope.sparsemap import sparsemap
from ..structures.arborescence import Arborescence
from ..structures.base import Structure
from ..structures.bitvector import BitVector
from ..structures.categorical import Categorical
from ..structures.ksubset import KSubset
from ..structures.spanning_tree import SpanningTree
from ._log_ndtr import log_ndtr
from ._params import CheckedDistribution

NOISES = ("gumbel", "gaussian")
REGULARIZERS = ("entropy", "euclidean")
MAX_SUBSET_K = 16  # subset_without_replacement_log_prob: 2^k states per value


def subset_without_replacement_log_prob(theta: Tensor, value: Tensor, k: int) -> Tensor:
    """``log P(top-k of θ + G = S)``, G iid Gumbel(0, 1), of the k-hot ``value`` ``(*, n)`` at
    ``theta`` ``(*, n)`` (same shape; ``-inf`` items are never drawn): ``(*)``.

    The k items of S are drawn one by one without replacement, item i with probability
    ``e^θ_i / (W + Σ_{j in S not drawn yet} e^θ_j)``, W the mass outside S; summed over the
    orders by a dynamic programme over the subsets A of S drawn first,
    ``f(A) = Σ_{i in A} f(A - i) e^θ_i / (W + Σ_{S - (A - i)} e^θ)``, in log space (every term
    and denominator a sum of positive masses: no cancellation). ``2^k k`` ops per value."""
    picked = value.bool()
    order = picked.to(torch.uint8).argsort(dim=-1, descending=True, stable=True)[..., :k]
    chosen = theta.gather(-1, order)  # (*, k): θ of S
    others = theta.masked_fill(picked, float("-inf"))
    empty = others.amax(dim=-1) == float("-inf")  # nothing outside S: W = 0 (a finite stand-in
    # keeps logsumexp's gradient finite there)
    outside = torch.logsumexp(torch.where(empty.unsqueeze(-1), 0.0, others), dim=-1)
    outside = outside.masked_fill(empty, float("-inf"))  # log W
    count = 1 << k
    bits = torch.arange(k, device=theta.device)
    members = (torch.arange(count, device=theta.device).unsqueeze(-1) >> bits) & 1  # (2^k, k)
    # log(W + mass of S outside the mask), per mask: (*, 2^k)
    rest = chosen.unsqueeze(-2).masked_fill(members.bool(), float("-inf"))
    remaining = torch.logsumexp(torch.cat(
        [outside.unsqueeze(-1).unsqueeze(-1).expand(*rest.shape[:-1], 1), rest], dim=-1), dim=-1)
    f = [theta.new_zeros(theta.shape[:-1])] + [None] * (count - 1)
    for mask in range(1, count):
        terms = [f[mask ^ (1 << i)] + chosen[..., i] - remaining[..., mask ^ (1 << i)]
                 for i in range(k) if mask >> i & 1]
        f[mask] = torch.logsumexp(torch.stack(terms, dim=-1), dim=-1)
    return f[count - 1]


def draw_noise(shape: torch.Size, like: Tensor, noise: str) -> Tensor:
    """iid noise of ``shape`` in ``like``'s dtype/device: Gumbel ``-log E`` with ``E ~ Exp(1)``
    clamped to ``>= tiny`` (never ``±inf``), or standard Gaussian."""
    if noise == "gaussian":
        return torch.randn(shape, dtype=like.dtype, device=like.device)
    e = torch.empty(shape, dtype=like.dtype, device=like.device).exponential_()
    return -e.clamp_min(torch.finfo(like.dtype).tiny).log()


def utility_mask(structure: Structure, like: Tensor) -> Tensor:
    """Bool ``score_shape`` mask of the score entries that carry an independently drawn utility.

    SpanningTree: the strict upper triangle (the lower one mirrors it); rooted Arborescence: every
    arc except the diagonal and the arcs into the root; any other structure: every entry.
    """
    free = torch.ones(structure.score_shape, dtype=torch.bool, device=like.device)
    if isinstance(structure, SpanningTree):
        return free.triu(1)
    if isinstance(structure, Arborescence) and structure.root is not None:
        free.fill_diagonal_(False)
        free[:, structure.root] = False
    return free


def structured_noise(structure: Structure, shape: torch.Size, like: Tensor, noise: str) -> Tensor:
    """Noise ``N`` of ``shape`` ``(*, *score_shape)``: iid on ``utility_mask``, 0 elsewhere;
    symmetric (one draw per undirected edge) for a ``SpanningTree``."""
    mask = utility_mask(structure, like)
    n = draw_noise(shape, like, noise).masked_fill(~mask, 0.0)
    return n + n.mT if isinstance(structure, SpanningTree) else n


def utility_kl(
    structure: Structure, logits: Tensor, prior_logits: Tensor | float, noise: str
) -> Tensor:
    """``sum_e KL(q_e ‖ p_e)`` over the drawn utilities ``U_e = θ_e + N_e`` of each example.

    Gumbel: ``δ + e^{-δ} - 1``, Gaussian: ``δ² / 2`` with ``δ = θ - θ₀``; the sum runs over
    ``utility_mask`` (each drawn utility once: one term per undirected tree edge; the SST
    reference code counted each edge twice). Entries whose logit is ``-inf`` are excluded
    items, never drawn, and count 0.
    logits ``(*batch, *score_shape)`` -> ``(*batch,)``. ``TypeError``/``ValueError`` naming the
    argument for a non-``Structure`` structure, a noise not in ``NOISES``, and logits of the
    wrong shape or with NaN, and ``prior_logits`` with NaN or not broadcasting with the logits
    (the value checks follow the validation switch).
    """
    if not isinstance(structure, Structure):
        raise TypeError(f"structure must be a Structure, got {type(structure).__name__}")
    check_choice(noise, "noise", NOISES)
    structure.check_scores(logits, "logits")
    if isinstance(prior_logits, Tensor):
        check_tensor(prior_logits, "prior_logits")
        check_no_nan(prior_logits, "prior_logits")
        broadcast_shapes(prior_logits.shape, logits.shape, error=lambda: (
            f"prior_logits of shape {tuple(prior_logits.shape)} does not broadcast with the "
            f"logits' {tuple(logits.shape)}"))
        prior = prior_logits.to(dtype=logits.dtype, device=logits.device)
    elif isinstance(prior_logits, bool) or not isinstance(prior_logits, (int, float)):
        raise TypeError(
            f"prior_logits must be a float or a tensor, got {type(prior_logits).__name__}")
    elif math.isnan(prior_logits):
        raise ValueError("prior_logits must not be NaN")
    else:
        prior = torch.full((), float(prior_logits), dtype=logits.dtype, device=logits.device)
    drawn = (logits > float("-inf")) & utility_mask(structure, logits)
    delta = torch.where(drawn, logits - prior, torch.zeros_like(logits))
    kl = delta.square() / 2 if noise == "gaussian" else delta + torch.expm1(-delta)
    kl = torch.where(drawn, kl, torch.zeros_like(kl))
    return kl.sum(dim=tuple(range(-structure.event_dim, 0)))


class _Structures(constraints.Constraint):
    """The support of ``StochasticArgmax``: the structures of ``structure`` (``contains``)."""

    is_discrete = True

    def __init__(self, structure: Structure) -> None:
        self.structure = structure
        self.event_dim = structure.event_dim
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        return self.structure.contains(value)

    def __repr__(self) -> str:
        return f"{type(self).__name__[1:]}({self.structure!r})"


class _Perturbed(CheckedDistribution):
    """Shared part of SMT and SST: the structure, the logits and the perturbation ``U = θ + N``."""

    def __init__(
        self,
        structure: Structure,
        logits: Tensor,
        noise: str = "gumbel",
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(structure, Structure):
            raise TypeError(f"structure must be a Structure, got {type(structure).__name__}")
        check_tensor(logits, "logits")
        check_trailing_shape(logits, "logits", structure.score_shape)
        self.structure = structure
        self.logits = logits
        self.noise = check_choice(noise, "noise", NOISES)
        event_dim = structure.event_dim
        batch_shape = logits.shape[: logits.dim() - event_dim]
        super().__init__(batch_shape, torch.Size(structure.score_shape), validate_args)
        if self._validate_args:
            with validating(True):  # the instance's setting, not the global one
                structure.check_scores(logits, "logits")

    @property
    def arg_constraints(self) -> dict[str, constraints.Constraint]:
        # -inf logits are allowed (item excluded); NaN is rejected by structure.check_scores
        return {}

    def _copy_into(self, new: _Perturbed, batch_shape: torch.Size) -> None:
        new.structure = self.structure
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        new.noise = self.noise
        Distribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args

    def perturb(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Utilities ``U = θ + N``: ``(*sample_shape, *batch_shape, *score_shape)``,
        differentiable in ``logits``; ``sample_shape`` a sequence of non-negative ints
        (``check_sample_shape``)."""
        shape = self._extended_shape(check_sample_shape(sample_shape))
        return self.logits + structured_noise(self.structure, shape, self.logits, self.noise)

    def utility_kl(self, prior_logits: Tensor | float = 0.0) -> Tensor:
        """``KL(q(U) ‖ p(U))``, ``p`` the same noise around ``prior_logits``: ``(*batch_shape,)``.

        Each drawn utility (``utility_mask``) is counted once;
        ``-inf`` entries are not drawn and count 0.
        """
        return utility_kl(self.structure, self.logits, prior_logits, self.noise)

    def _hard(self, utilities: Tensor) -> Tensor:
        return self.structure.argmax(utilities.detach())


class StochasticArgmax(_Perturbed):
    """SMT: ``X = argmax_{x in structure} <θ + N, x>``, a 0/1 structure of shape ``score_shape``.

    Args:
        structure: a ``Structure`` (its ``argmax`` is the MAP oracle).
        logits: ``(*batch_shape, *score_shape)`` scores θ; ``-inf`` entries allowed where the
            structure allows them.
        noise: ``"gumbel"`` (Gumbel(0, 1)) or ``"gaussian"`` (N(0, 1)), iid per score entry.

    With Gumbel noise, a ``Categorical`` SMT is exactly ``Categorical(softmax(θ))`` (Gumbel-max);
    on k-subsets it is sampling without replacement; in general it is not the Gibbs distribution.
    ``log_prob`` is implemented where it is closed form: Categorical with Gumbel noise,
    unbudgeted bit vectors (independent bits, ``P(z_i = 1) = P(N_i > -θ_i)``) and k-subsets with
    Gumbel noise (the top k of ``θ + G``: sampling without replacement, ``k <= 16``).
    """

    has_rsample = False

    @property
    def support(self) -> constraints.Constraint:
        return _Structures(self.structure)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StochasticArgmax, _instance)
        self._copy_into(new, torch.Size(batch_shape))
        return new

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Hard structures ``(*sample_shape, *batch_shape, *score_shape)`` in the logits' dtype."""
        with torch.no_grad():
            return self._hard(self.perturb(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        """``log P(X = value)``, ``(*sample_shape, *batch_shape)``; closed form cases only.

        ``value`` ``(*sample_shape, *batch_shape, *score_shape)`` broadcasts against the batch
        (a single structure is scored under every batch element)."""
        check_tensor(value, "value")
        check_trailing_shape(value, "value", self.structure.score_shape)
        shape = broadcast_shapes(value.shape, self.logits.shape, error=lambda: (
            f"value of shape {tuple(value.shape)} does not broadcast with the batch and event "
            f"shape {tuple(self.logits.shape)}"
        ))
        if self._validate_args:
            with validating(True):
                self.structure.check_structures(value, "value")
        value = value.expand(shape)
        s = self.structure
        if isinstance(s, Categorical) and self.noise == "gumbel":
            logp = self.logits.log_softmax(-1).expand(shape)
            return logp.gather(-1, value.argmax(-1, keepdim=True)).squeeze(-1)
        if isinstance(s, BitVector) and s.budget in (None, s.d):
            on = value.bool()
            theta = self.logits
            if self.noise == "gumbel":  # P(G > -θ) = 1 - exp(-e^θ), P(G <= -θ) = exp(-e^θ)
                # log(1 - e^{-x}), x = e^θ: θ - x/2 + x²/24 + O(x⁴) below θ = -5 (no underflow),
                # direct above. Each branch sees θ clamped to its own range, so no e^θ overflows
                # (from θ ≈ 88.7 in float32) into a NaN gradient; beyond θ = 7, e^{-x} underflows
                # even in float64, and the direct value and its gradient are exactly 0 anyway.
                low = theta.clamp(max=-5.0)
                x_low = low.exp()
                series = low - x_low / 2 + x_low.square() / 24
                direct = torch.log(-torch.expm1(-theta.clamp(-5.0, 7.0).exp()))
                log_on = torch.where(theta < -5.0, series, direct)
                # -e^θ (-inf once it overflows), from θ only where the bit is off: elsewhere
                # its zero gradient would meet e^θ = inf (0 · inf)
                log_off = -torch.where(on, 0.0, theta).exp()
            else:
                log_on = log_ndtr(theta)
                log_off = log_ndtr(-theta)
            return torch.where(on, log_on, log_off).sum(-1)
        if isinstance(s, KSubset) and self.noise == "gumbel" and s.k <= MAX_SUBSET_K:
            return subset_without_replacement_log_prob(self.logits.expand(shape), value, s.k)
        raise NotImplementedError(
            f"log_prob of the stochastic argmax has no closed form for {s!r} with "
            f"{self.noise} noise"
        )


class StochasticSoftmax(_Perturbed):
    """SST: the regularised relaxation ``X_t`` of the stochastic argmax (see module docstring).

    Args:
        structure: a ``Structure``; ``regularizer="entropy"`` needs its ``marginals``,
            ``"euclidean"`` uses sparsemax / clip / ``latentgrad.polytope.sparsemap.sparsemap``.
        logits: ``(*batch_shape, *score_shape)`` scores θ.
        temperature: ``t > 0``, a float or a tensor broadcastable to ``batch_shape``
            (differentiable: a learnable temperature works).
        noise: ``"gumbel"`` or ``"gaussian"``.
        regularizer: ``"entropy"`` (Gibbs marginals of ``U / t``) or ``"euclidean"``.
        straight_through: ``rsample`` returns the hard SMT sample at the same ``U`` in the forward
            pass and the relaxed sample's gradient in the backward pass.

    Samples lie in the marginal polytope ``conv(structure)`` (hard ones on its vertices).
    ``log_prob`` is the Concrete density for a Categorical with Gumbel noise and the entropy
    regulariser (no straight-through); it is not available otherwise.
    """

    has_rsample = True

    def __init__(
        self,
        structure: Structure,
        logits: Tensor,
        temperature: float | Tensor,
        noise: str = "gumbel",
        regularizer: str = "entropy",
        straight_through: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(structure, logits, noise, validate_args)
        self.regularizer = check_choice(regularizer, "regularizer", REGULARIZERS)
        if not isinstance(straight_through, bool):
            got = type(straight_through).__name__
            raise TypeError(f"straight_through must be a bool, got {got}")
        self.straight_through = straight_through
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float, Tensor)):
            got = type(temperature).__name__
            raise TypeError(f"temperature must be a float or a tensor, got {got}")
        if isinstance(temperature, Tensor):
            check_tensor(temperature, "temperature")
        tau = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
        if tau.dim():
            try:
                tau = tau.expand(self.batch_shape)
            except RuntimeError:
                raise ValueError(
                    f"temperature of shape {tuple(tau.shape)} does not broadcast to the batch "
                    f"shape {tuple(self.batch_shape)}"
                ) from None
        if self._validate_args and not bool(((tau > 0) & torch.isfinite(tau)).all()):
            raise ValueError("temperature must be finite and strictly positive")
        self.temperature = tau

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.unit_interval, self.structure.event_dim)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StochasticSoftmax, _instance)
        batch_shape = torch.Size(batch_shape)
        self._copy_into(new, batch_shape)
        new.regularizer = self.regularizer
        new.straight_through = self.straight_through
        t = self.temperature
        new.temperature = t.expand(batch_shape) if t.dim() else t
        return new

    def relax(self, utilities: Tensor) -> Tensor:
        """``X_t`` at given utilities ``(*shape, *batch_shape, *score_shape)``, same shape.

        ``U / t`` is formed in at least float32 and kept within ``±max / (16 n)`` (n entries per
        structure): an overflow to ``+inf`` at a tiny temperature becomes a score large enough
        for the hard limit, not an invalid one; excluded (``-inf``) utilities stay ``-inf``.
        """
        dtype = utilities.dtype
        work = working_dtype(dtype)
        t = self.temperature.to(work)
        t = t.reshape(t.shape + (1,) * self.structure.event_dim)
        u = utilities.to(work)
        big = torch.finfo(work).max / (16 * max(1, math.prod(self.structure.score_shape)))
        scaled = torch.where(torch.isinf(u), u, (u / t).clamp(-big, big))
        s = self.structure
        if self.regularizer == "entropy":
            return s.marginals(scaled).to(dtype)
        if isinstance(s, Categorical):
            return sparsemax(s.check_scores(scaled), dim=-1).to(dtype)
        if isinstance(s, BitVector) and s.budget in (None, s.d):
            return s.check_scores(scaled).clamp(0.0, 1.0).to(dtype)
        return sparsemap(scaled, s).marginals.to(dtype)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Relaxed (or straight-through) samples ``(*sample_shape, *batch_shape, *score_shape)``,
        differentiable in ``logits`` (and ``temperature``)."""
        utilities = self.perturb(sample_shape)
        relaxed = self.relax(utilities)
        if not self.straight_through:
            if self._has_density():
                # softmax(U / t) underflows to exact zeros at low temperature (float32 t = 0.1,
                # float64 t = 0.01), outside the open simplex of the Concrete density: log_prob
                # refused the draw (NaN without validation). Raised to the dtype's smallest normal
                # number, as torch's RelaxedOneHotCategorical does (the sum moves by <= K tiny)
                relaxed = relaxed.clamp_min(torch.finfo(relaxed.dtype).tiny)
            return relaxed
        # forward value is exactly the hard sample: relaxed - relaxed.detach() is exactly 0
        return self._hard(utilities).to(relaxed.dtype) + (relaxed - relaxed.detach())

    def _has_density(self) -> bool:
        """Whether ``log_prob`` is closed form: the Concrete distribution (Categorical, Gumbel
        noise, entropy regulariser, no straight-through)."""
        return (
            isinstance(self.structure, Categorical)
            and self.noise == "gumbel"
            and self.regularizer == "entropy"
            and not self.straight_through
        )

    def log_prob(self, value: Tensor) -> Tensor:
        """Concrete log-density of ``value`` (Categorical, Gumbel noise, entropy, no ST only)."""
        if not self._has_density():
            raise NotImplementedError(
                "the SST density is closed form only for a Categorical with Gumbel noise and the "
                "entropy regulariser (the Concrete distribution)"
            )
        from .concrete import concrete_log_prob

        with validating(bool(self._validate_args)):  # the instance's setting decides
            return concrete_log_prob(value, self.logits, self.temperature)


def hard_sample_distribution(structure: Structure | None, scores: Tensor,
                             noise: str) -> StochasticArgmax:
    """The distribution ``argmax <θ + N, x>`` of a perturbation estimator's hard samples at
    ``scores`` (``structure`` None: a categorical over the last dim), unvalidated (the estimator
    checked the scores)."""
    structure = structure or Categorical(scores.shape[-1])
    return StochasticArgmax(structure, scores, noise, validate_args=False)
