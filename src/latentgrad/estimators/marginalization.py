"""Exact marginalization: sum the downstream loss over the support of p.

Correia et al. 2020, "Efficient Marginalization of Discrete and Structured Latent Variables via
Sparsity". With weights ``p_b`` over candidate latent values, the surrogate is

    L = (1/B) sum_b [ sum_{z in supp p_b} p_b(z) l_b(z) - c H(p_b) ],

whose gradient is exact: through ``p`` (the normaliser's Jacobian) and pathwise through ``l``.
Only the (example, z) pairs with ``p_b(z) > 0`` are evaluated, all in ONE ``loss_fn`` call, so a
sparse ``p`` turns directly into saved decoder compute. With several independent categorical
variables per example the support is the product of the per-variable supports.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import check_choice, check_no_pos_inf, check_positive_int
from ..mappings import entmax15, sparsemax
from ..polytope.result import SparseMAPResult
from ..polytope.sparsemap import check_solver_options, sparsemap
from ..polytope.topk_sparsemax import check_topk_oracle, topk_sparsemax
from ..structures.base import Structure
from ._checks import check_batched
from ._families import CategoricalLatent, masked_entropy
from .base import Estimator, EstimatorOutput, LossFn, batch_mean, call_loss_fn


def marginalize(
    weights: Tensor,
    rows: Tensor,
    z: Tensor,
    loss_fn: LossFn,
    entropy: Tensor,
    entropy_coeff: float,
    support: Tensor,
) -> EstimatorOutput:
    """Sum ``loss_fn`` over the evaluated pairs in one call.

    ``weights`` (N,) differentiable probabilities of the pairs ``(rows[n], z[n])`` (the support
    of each example), ``entropy`` (B,) and ``support`` (B,) its size. Returns the estimator
    output with the exact surrogate as ``loss``.
    """
    losses = call_loss_fn(loss_fn, z, rows)
    terms = weights * losses
    expected = torch.zeros(entropy.shape[0], device=terms.device, dtype=terms.dtype)
    expected = expected.index_add(0, rows, terms)
    loss = batch_mean(expected - entropy_coeff * entropy)
    logs: dict[str, float | Tensor] = {
        "support_size": batch_mean(support.detach().to(weights.dtype)),
        "entropy": batch_mean(entropy.detach()),
    }
    out = EstimatorOutput(loss, expected.detach(), support, entropy.detach(), logs)
    return out.evaluated(z, rows, weights)


def product_support(p: Tensor, max_support: int) -> tuple[Tensor, ...]:
    """The joint support of independent categoricals ``p`` ``(B, *latent, K)``.

    Returns ``rows`` (N,), category indices ``(N, *latent)``, joint probabilities (N,)
    (differentiable, the product over the variables), the support size per example (B,) and
    the entropy ``-sum p log p`` summed over the variables (B,), from the support alone (the
    cost of everything after the nonzero search grows with the support, not with K).
    Every example's pairs enumerate the product of its per-variable supports (mixed-radix
    decoding of ``0 .. prod_l |supp p_bl| - 1``; no loop over examples); more than
    ``max_support`` pairs for one example is an error.
    """
    b, k = p.shape[0], p.shape[-1]
    flat = p.reshape(b, math.prod(p.shape[1:-1]), k)
    n_var = flat.shape[1]
    mask = flat > 0
    ex, var, cat = mask.nonzero(as_tuple=True)  # sorted by (example, variable, category)
    probs = flat[ex, var, cat]
    entropy = torch.zeros(b, dtype=p.dtype, device=p.device).index_add(0, ex, -probs * probs.log())
    if n_var == 1:
        return ex, cat.view(-1, *p.shape[1:-1]), probs, torch.bincount(ex, minlength=b), entropy
    counts = torch.bincount(ex * n_var + var, minlength=b * n_var).view(b, n_var)
    support = counts.prod(-1)
    largest = int(support.max()) if b else 0
    if largest > max_support:
        raise ValueError(
            f"the product of the per-variable supports has {largest} joint values for one "
            f"example, above max_support={max_support}; raise max_support, or use an estimator "
            "whose cost does not multiply over the variables (SumAndSample sums the k most "
            "probable joint values and samples one more; ScoreFunction, NVIL, the relaxations)"
        )
    offsets = (counts.flatten().cumsum(0) - counts.flatten()).view(b, n_var)
    rows = torch.repeat_interleave(torch.arange(b, device=p.device), support)
    local = torch.arange(rows.shape[0], device=p.device) - (support.cumsum(0) - support)[rows]
    radix = counts[rows]  # (N, L)
    stride = torch.cat([radix.flip(1).cumprod(1).flip(1)[:, 1:], radix.new_ones(len(rows), 1)], 1)
    digit = torch.div(local.unsqueeze(1), stride, rounding_mode="floor") % radix
    position = offsets[rows] + digit  # (N, L) into the nonzero list
    idx = cat[position].view(-1, *p.shape[1:-1])
    return rows, idx, probs[position].prod(-1), support, entropy


def softmax_expectation(
    scores: Tensor,
    loss_fn: LossFn,
    entropy_coeff: float,
    one_hot: bool = True,
    extra: Tensor | None = None,
    max_support: int = 65536,
) -> EstimatorOutput:
    """The ``"expected"`` eval reading of a categorical latent ``(B, *latent, K)``: exact
    ``E_{softmax}[l] - c H`` (+ ``extra`` (B,), e.g. a KL term, averaged in its own dtype) over
    the product of supports."""
    family = CategoricalLatent(one_hot)
    rows, idx, weights, support, _ = product_support(scores.softmax(-1), max_support)
    entropy = family.entropy(scores)
    z = family.latent_values(idx, scores)
    out = marginalize(weights, rows, z, loss_fn, entropy, entropy_coeff, support)
    if extra is not None:
        out.loss = (out.loss + batch_mean(extra)).to(out.loss.dtype)
    return out


_NORMALIZERS = {"sparsemax": sparsemax, "entmax15": entmax15}


class _CategoricalMarginalization(Estimator):
    """Marginalization over independent categoricals ``(B, *latent, K)``, ``p = normalize``.

    ``loss_fn`` receives one-hot ``z`` ``(N, *latent, K)``, or int64 indices ``(N, *latent)`` with
    ``one_hot=False``; several variables per example enumerate the product of their supports,
    at most ``max_support`` joint values per example.
    """

    def __init__(
        self, entropy_coeff: float = 0.0, one_hot: bool = True, max_support: int = 65536
    ) -> None:
        super().__init__(entropy_coeff)
        self._family = CategoricalLatent(one_hot)
        self.max_support = check_positive_int(max_support, "max_support")

    @property
    def one_hot(self) -> bool:
        """Whether ``loss_fn`` gets one-hot latents, else category indices."""
        return self._family.one_hot

    def normalize(self, scores: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def enumeration_probs(self, value_scores: Tensor) -> Tensor:
        """``p = normalize(s)`` from the scores ``s`` (B, N) of N enumerated values (brute force).

        The distribution this estimator marginalizes, for ``diagnostics.gradient_stats``.
        """
        return self.normalize(value_scores)

    def forward(self, scores: Tensor, loss_fn: LossFn) -> EstimatorOutput:
        """``scores`` (B, *latent, K) logits (``-inf`` allowed) -> exact surrogate over the
        support of p (the product of the variables' supports)."""
        # the values checked here, not by the mapping, whose errors name its "x" and "dim=1"
        scores = self._family.check(scores)
        p = self.normalize(scores)
        rows, idx, weights, support, entropy = product_support(p, self.max_support)
        z = self._family.latent_values(idx, scores)
        return marginalize(weights, rows, z, loss_fn, entropy, self.entropy_coeff, support)


class SoftmaxMarginalization(_CategoricalMarginalization):
    """Dense exact marginalization, ``p = softmax(scores)``: every joint value is evaluated,
    ``K^L`` loss evaluations per example for ``L`` variables (at most ``max_support``).

    The evaluated pairs do not depend on the scores' values (zero-probability categories are
    evaluated with weight 0), so a step has fixed shapes: no host-device synchronisation with
    validation off, and ``torch.compile(fullgraph=True)`` traces it.
    """

    def normalize(self, scores: Tensor) -> Tensor:
        return scores.softmax(-1)

    def forward(self, scores: Tensor, loss_fn: LossFn) -> EstimatorOutput:
        """``scores`` (B, *latent, K) logits -> exact surrogate over all ``K^L`` joint values."""
        scores = self._family.check(scores)
        b, latent, k = scores.shape[0], scores.shape[1:-1], scores.shape[-1]
        n_var = math.prod(latent)
        total = k**n_var
        if n_var > 1 and total > self.max_support:
            raise ValueError(
                f"{n_var} variables of K={k} categories have {total} joint values, above "
                f"max_support={self.max_support}; raise max_support, or use "
                "SparsemaxMarginalization (sparse supports) or an estimator whose cost does not "
                "multiply over the variables (SumAndSample, ScoreFunction, NVIL, the relaxations)"
            )
        p = self.normalize(scores).reshape(b, n_var, k)
        codes = torch.arange(total, device=scores.device)
        powers = k ** torch.arange(n_var - 1, -1, -1, device=scores.device)
        digits = torch.div(codes.unsqueeze(1), powers, rounding_mode="floor") % k  # (total, L)
        weights = p.gather(2, digits.T.unsqueeze(0).expand(b, -1, -1)).prod(1).flatten()
        rows = torch.arange(b, device=scores.device).repeat_interleave(total)
        idx = digits.repeat(b, 1).view(b * total, *latent)
        z = self._family.latent_values(idx, scores)
        entropy = self._family.entropy(scores)
        support = torch.full((b,), total, dtype=torch.long, device=scores.device)
        return marginalize(weights, rows, z, loss_fn, entropy, self.entropy_coeff, support)


class SparsemaxMarginalization(_CategoricalMarginalization):
    """Sparse exact marginalization (Correia et al. 2020, §3.1): ``p = sparsemax(scores)`` or
    ``p = entmax15(scores)``; only ``|supp p_b|`` loss evaluations per example.

    Args:
        normalizer: ``"sparsemax"`` or ``"entmax15"``.
        entropy_coeff: c, weight of the Shannon entropy ``H(p)`` of the sparse distribution.
        one_hot: ``False`` hands ``loss_fn`` int64 indices ``(N, *latent)``: the cost then
            grows with the support, not with K.
        max_support: most joint values per example over several variables.
    """

    def __init__(
        self,
        normalizer: str = "sparsemax",
        entropy_coeff: float = 0.0,
        one_hot: bool = True,
        max_support: int = 65536,
    ) -> None:
        check_choice(normalizer, "normalizer", tuple(_NORMALIZERS))
        super().__init__(entropy_coeff, one_hot, max_support)
        self.normalizer = normalizer

    def normalize(self, scores: Tensor) -> Tensor:
        return _NORMALIZERS[self.normalizer](scores, dim=-1)

    def extra_repr(self) -> str:
        return f"normalizer={self.normalizer!r}, entropy_coeff={self.entropy_coeff}"


class _StructuredMarginalization(Estimator):
    """Marginalization over a sparse distribution on structures returned by a solver."""

    def __init__(self, structure: Structure, entropy_coeff: float) -> None:
        if not isinstance(structure, Structure):
            raise TypeError(f"structure must be a Structure, got {type(structure).__name__}")
        super().__init__(entropy_coeff)
        self.structure = structure

    def solve(self, scores: Tensor) -> SparseMAPResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        k = getattr(self, "k", None)
        k_part = "" if k is None else f", k={k}"
        return f"structure={self.structure!r}{k_part}, entropy_coeff={self.entropy_coeff}"

    def forward(self, scores: Tensor, loss_fn: LossFn) -> EstimatorOutput:
        """``scores`` (B, *score_shape) -> exact surrogate over the solver's support.

        ``loss_fn`` receives 0/1 structure indicators ``(N, *score_shape)`` in the scores' dtype.
        """
        scores = check_batched(scores, "scores", self.structure)
        self.structure.check_scores(scores)
        check_no_pos_inf(scores, "scores")
        result = self.solve(scores)
        mask = result.weights > 0
        rows, idx = mask.nonzero(as_tuple=True)
        z = result.support.detach().to(scores.dtype)[rows, idx]
        entropy = masked_entropy(result.weights)
        out = marginalize(
            result.weights[rows, idx], rows, z, loss_fn, entropy, self.entropy_coeff, mask.sum(-1)
        )
        out.logs["exact_fraction"] = batch_mean(result.exact.to(scores.dtype))
        return out


class TopKSparsemaxMarginalization(_StructuredMarginalization):
    """Top-k sparsemax over structures (Correia et al. 2020, §3.2): the k best structures
    ``z_1..z_k`` with scores ``s_j = <theta, z_j>``, ``p = sparsemax(s)``; the k-best set is held
    constant in the backward. When ``|supp p| < k`` the result equals sparsemax over ALL
    structures; logs ``full_support_fraction`` (examples with ``|supp p| = k``, where it is only an
    approximation) and ``exact_fraction`` (the rest).
    """

    def __init__(self, structure: Structure, k: int, entropy_coeff: float = 0.0) -> None:
        k = check_positive_int(k, "k")
        super().__init__(check_topk_oracle(structure), entropy_coeff)
        self.k = k

    def solve(self, scores: Tensor) -> SparseMAPResult:
        return topk_sparsemax(scores, self.structure, self.k)

    def enumeration_probs(self, value_scores: Tensor) -> Tensor:
        """The target: sparsemax over ALL structures' scores ``s`` (B, N) (brute force)."""
        return sparsemax(value_scores, dim=-1)

    def forward(self, scores: Tensor, loss_fn: LossFn) -> EstimatorOutput:
        out = super().forward(scores, loss_fn)
        full = (out.support_size >= self.k).to(out.expected_loss.dtype)
        out.logs["full_support_fraction"] = batch_mean(full)
        return out


class SparseMAPMarginalization(_StructuredMarginalization):
    """SparseMAP marginalization (Niculae et al. 2018; Correia et al. 2020, §3.3): the active-set
    solution ``mu* = sum_{z in A} p_z z`` of ``argmax_{mu in conv Z} <theta, mu> - ||mu||^2 / 2``
    gives a sparse ``p`` over structures; the loss is summed over ``A+ = {p_z > 0}``.

    ``solver_kwargs`` (``max_iter``, ``tol``, ``solver``) go to ``polytope.sparsemap.sparsemap``
    and are checked here (an unknown name is a ``TypeError``, a bad value a ``ValueError``).
    Logs ``exact_fraction``: examples whose solve passed the optimality test.
    """

    SOLVER_OPTIONS = ("max_iter", "tol", "solver")

    def __init__(self, structure: Structure, entropy_coeff: float = 0.0, **solver_kwargs) -> None:
        super().__init__(structure, entropy_coeff)
        unknown = sorted(set(solver_kwargs) - set(self.SOLVER_OPTIONS))
        if unknown:
            raise TypeError(
                f"SparseMAPMarginalization got unexpected solver option(s) {unknown}; "
                f"expected any of {list(self.SOLVER_OPTIONS)}"
            )
        check_solver_options(structure, **solver_kwargs)
        self.solver_kwargs = solver_kwargs

    def solve(self, scores: Tensor) -> SparseMAPResult:
        return sparsemap(scores, self.structure, **self.solver_kwargs)

    def enumeration_probs(self, value_scores: Tensor) -> None:
        """None: the SparseMAP distribution is not unique, so there is no brute-force target."""
        return None
