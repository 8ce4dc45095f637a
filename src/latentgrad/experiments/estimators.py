"""Estimator registry: config name -> factory, so task files never hard-code estimator classes.

Each entry builds an ``Estimator`` for a categorical latent with ``num_classes`` categories from
an ``EstimatorConfig`` and says which mapping the model's q(y|x) uses (``softmax`` or
``sparsemax``; the task uses it for evaluation and for the labelled loss). ``features_dim`` is the
size of the encoder input, for estimators with an input-dependent baseline (NVIL): those are
called as ``est(scores, loss_fn, baseline_input=x)`` (``needs_baseline_input``). ``args`` lists
the ``EstimatorConfig`` fields the factory reads: a user setting any other ``estimator_args`` key
for this estimator is refused (it would be silently ignored); ``None`` leaves the keys unchecked.
Estimator modules are imported only when an entry is built. ``indices``: the factory takes
``one_hot=False``, with which ``loss_fn`` receives category indices ``(N,)`` int64 instead of
one-hot rows ``(N, K)`` (cheaper when the decoder only looks up the category).

Bit vectors (the bit-vector VAE): the categorical entries that also handle independent bits
(``sfe``, ``sfe_plus``, ``nvil``, ``sum_and_sample``, ``gumbel``, ``st_gumbel``,
``gaussian_sparsemax``) build them when the task passes ``structure=BitVector(D)`` (``num_classes``
is then D); ``topk_sparsemax``, ``sparsemap``, ``sparsemap_budget``, ``binary_concrete`` and
``hard_concrete`` (``latent="bits"``) need it. ``gaussian``, ``dirichlet`` and
``mixed_dirichlet`` (``latent="simplex"``) are the continuous and mixed latents of the simplex VAE.

Structured latents (the stochastic-softmax-tricks tasks): an entry's ``latent`` names the latent
family it is built for (``edges``: one binary variable per edge, scores ``(B, E, 2)``; ``subset``
and ``tree``: the task's ``Structure``, passed as ``structure=``) and ``posterior`` how its sample
relates to the scores, which decides the KL term of an ELBO: ``perturbed`` (a function of
utilities ``U = θ + Gumbel``, KL between utility distributions), ``gibbs`` (an exact sample of
``p(z) ∝ exp <θ, z>``, KL between Gibbs distributions) or ``sparse`` (a sparse distribution over
structures, marginalized exactly).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

from torch import nn

from latentgrad.estimators.base import Estimator
from latentgrad.experiments.schema import EstimatorConfig

if TYPE_CHECKING:
    from torch.distributions import Distribution

    from latentgrad.distributions.mixed_dirichlet import MixedDirichlet
    from latentgrad.structures.base import Structure

# The tasks read the mode themselves; in eval mode the estimators draw as in training, so their
# output is the task's "sample" reading.
SAMPLE_READING = "sample"


@dataclass(frozen=True)
class EstimatorSpec:
    """How to build one named estimator and what distribution its q(y|x) is."""

    factory: Callable[[EstimatorConfig, int, int], Estimator]
    mapping: str = "softmax"
    description: str = ""
    needs_baseline_input: bool = False
    exact: bool = False
    args: tuple[str, ...] | None = None
    latent: str = "categorical"
    posterior: str = "categorical"
    indices: bool = False


def _softmax(cfg: EstimatorConfig, num_classes: int, features_dim: int,
             one_hot: bool = True) -> Estimator:
    from latentgrad.estimators.marginalization import SoftmaxMarginalization

    return SoftmaxMarginalization(entropy_coeff=cfg.entropy_coeff, one_hot=one_hot)


def _sparsemax(cfg: EstimatorConfig, num_classes: int, features_dim: int,
               one_hot: bool = True) -> Estimator:
    from latentgrad.estimators.marginalization import SparsemaxMarginalization

    return SparsemaxMarginalization(entropy_coeff=cfg.entropy_coeff, one_hot=one_hot)


def _sfe(cfg: EstimatorConfig, num_classes: int, features_dim: int,
         structure: Structure | None = None, one_hot: bool = True) -> Estimator:
    from latentgrad.estimators.score_function import ScoreFunction

    return ScoreFunction(
        baseline=cfg.baseline, entropy_coeff=cfg.entropy_coeff, structure=structure,
        one_hot=one_hot, eval_mode=SAMPLE_READING,
    )


def _sfe_plus(cfg: EstimatorConfig, num_classes: int, features_dim: int,
              structure: Structure | None = None, one_hot: bool = True) -> Estimator:
    from latentgrad.estimators.score_function import ScoreFunction

    return ScoreFunction(
        baseline="self_critic", entropy_coeff=cfg.entropy_coeff, structure=structure,
        one_hot=one_hot, eval_mode=SAMPLE_READING,
    )


def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """ReLU MLP through the widths ``sizes`` (no activation after the last layer), with dropout
    of rate ``dropout`` before each linear layer when it is positive."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairwise(sizes)):
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _at_most_latent_values(name: str, k: int, num_classes: int,
                           structure: Structure | None) -> int:
    """``k`` (``estimator_args.<name>``), checked against the number of values of the latent: the
    ``num_classes`` categories, or the structures of ``structure``; ValueError beyond it (the
    runner reports it before training)."""
    total = num_classes if structure is None else getattr(structure, "num_structures", None)
    if total is not None and k > total:
        raise ValueError(f"estimator_args.{name} ({k}) exceeds the {total} values of the latent")
    return k


def _nvil(cfg: EstimatorConfig, num_classes: int, features_dim: int,
          structure: Structure | None = None, one_hot: bool = True) -> Estimator:
    from latentgrad.estimators.score_function import NVIL

    return NVIL(
        baseline_net=mlp([features_dim, *cfg.nvil_hidden, 1]),
        entropy_coeff=cfg.entropy_coeff,
        structure=structure,
        one_hot=one_hot,
        eval_mode=SAMPLE_READING,
    )


def _sum_and_sample(cfg: EstimatorConfig, num_classes: int, features_dim: int,
                    structure: Structure | None = None, one_hot: bool = True) -> Estimator:
    from latentgrad.estimators.score_function import SumAndSample

    return SumAndSample(
        k=_at_most_latent_values("k_ss", cfg.k_ss, num_classes, structure),
        baseline=cfg.baseline,
        entropy_coeff=cfg.entropy_coeff,
        structure=structure,
        one_hot=one_hot,
        eval_mode=SAMPLE_READING,
    )


def _gumbel(straight_through: bool, kl: str = "categorical",
            simplex_stretch: bool = False) -> Callable[..., Estimator]:
    def factory(cfg: EstimatorConfig, num_classes: int, features_dim: int,
                structure: Structure | None = None) -> Estimator:
        from latentgrad.estimators.relaxed import GumbelSoftmax
        from latentgrad.estimators.schedules import ExponentialDecay

        schedule = ExponentialDecay(
            tau0=cfg.temperature,
            rate=cfg.anneal_rate,
            every=cfg.anneal_every,
            floor=cfg.temperature_min,
        )
        return GumbelSoftmax(
            temperature=schedule,
            straight_through=straight_through,
            entropy_coeff=0.0 if simplex_stretch else cfg.entropy_coeff,  # K-D: no entropy
            kl=kl,
            structure=structure,
            eval_mode=SAMPLE_READING,
            stretch=cfg.simplex_stretch if simplex_stretch else None,
        )

    return factory


def _gumbel_concrete(cfg: EstimatorConfig, num_classes: int, features_dim: int) -> Estimator:
    from latentgrad.estimators.relaxed import GumbelSoftmax

    return GumbelSoftmax(
        temperature=cfg.temperature,
        kl="relaxed",
        prior="uniform",
        prior_temperature=cfg.prior_temperature,
        entropy_coeff=cfg.entropy_coeff,
        eval_mode=SAMPLE_READING,
    )


_IGR_ARGS = {
    "I": ("temperature", "igr_kl", "igr_stl", "entropy_coeff"),
    "SB": ("temperature", "igr_kl", "igr_stl", "igr_threshold", "igr_quantile", "entropy_coeff"),
    "planar": ("temperature", "igr_stl", "num_flows", "entropy_coeff"),
}


def _igr(variant: str) -> Callable[..., Estimator]:
    def factory(
        cfg: EstimatorConfig,
        num_classes: int,
        features_dim: int,
        prior: object = None,
        latent_shape: tuple[int, ...] = (),
    ) -> Estimator:
        """``prior``: None (no KL term), ``"uniform"`` (IGR-I, IGR-Planar) or a ``(loc, scale)``
        pair;
        ``latent_shape``: the latent variables of an example (the planar flows' shape)."""
        from latentgrad.estimators.relaxed import IGREstimator

        kwargs: dict = {"kl": "sampled"}
        if variant != "planar":
            kwargs["kl"] = cfg.igr_kl
        if variant == "SB":
            kwargs.update(eps=1.0 - cfg.igr_threshold, quantile=cfg.igr_quantile)
        if variant == "planar":
            kwargs.update(
                num_categories=num_classes,
                latent_shape=tuple(latent_shape),
                num_flows=cfg.num_flows,
            )
        return IGREstimator(
            variant=variant,
            temperature=cfg.temperature,
            prior=prior,
            entropy_coeff=cfg.entropy_coeff,
            stl=cfg.igr_stl,
            eval_mode=SAMPLE_READING,
            **kwargs,
        )

    return factory


def _gaussian_sparsemax(cfg: EstimatorConfig, num_classes: int, features_dim: int,
                        structure: Structure | None = None,
                        prior: Distribution | None = None) -> Estimator:
    """Categorical: y = sparsemax(μ + σε) on the simplex (with a ``prior``: plus its Monte Carlo
    KL, weight 1); bits: y = clip(μ + σε, 0, 1)."""
    from latentgrad.estimators.mixed import BinaryMixedEstimator, GaussianSparsemaxEstimator

    if structure is not None:
        return BinaryMixedEstimator(
            "gaussian_sparsemax", scale=cfg.scale, entropy_coeff=cfg.entropy_coeff,
            eval_mode=SAMPLE_READING,
        )
    return GaussianSparsemaxEstimator(
        scale=cfg.scale, entropy_coeff=cfg.entropy_coeff, prior=prior, eval_mode=SAMPLE_READING
    )


_GUMBEL_ARGS = ("temperature", "temperature_min", "anneal_rate", "anneal_every", "entropy_coeff")

ESTIMATORS: dict[str, EstimatorSpec] = {
    "softmax": EstimatorSpec(
        _softmax,
        "softmax",
        "exact marginalization, p = softmax (K decoder calls)",
        exact=True,
        args=("entropy_coeff",),
        indices=True,
    ),
    "sparsemax": EstimatorSpec(
        _sparsemax,
        "sparsemax",
        "exact marginalization over supp sparsemax",
        exact=True,
        args=("entropy_coeff",),
        indices=True,
    ),
    "sfe": EstimatorSpec(
        _sfe,
        "softmax",
        "score function, running-mean baseline",
        args=("baseline", "entropy_coeff"),
        indices=True,
    ),
    "sfe_plus": EstimatorSpec(
        _sfe_plus,
        "softmax",
        "score function, self-critic baseline (+1 sample)",
        args=("entropy_coeff",),
        indices=True,
    ),
    "sfe_01": EstimatorSpec(
        _sfe,
        "softmax",
        "score function, running-mean baseline; the task uses a 0/1 reward",
        args=("baseline", "entropy_coeff"),
        indices=True,
    ),
    "nvil": EstimatorSpec(
        _nvil,
        "softmax",
        "score function, learned input-dependent baseline (MLP)",
        True,
        args=("nvil_hidden", "entropy_coeff"),
        indices=True,
    ),
    "sum_and_sample": EstimatorSpec(
        _sum_and_sample,
        "softmax",
        "Rao-Blackwellised: top-k_ss summed + 1 sample",
        args=("k_ss", "baseline", "entropy_coeff"),
        indices=True,
    ),
    "gumbel": EstimatorSpec(
        _gumbel(False),
        "softmax",
        "Gumbel-Softmax relaxation, annealed temperature",
        args=_GUMBEL_ARGS,
    ),
    "st_gumbel": EstimatorSpec(
        _gumbel(True), "softmax", "straight-through Gumbel, annealed temperature", args=_GUMBEL_ARGS
    ),
    "kd_hard_concrete": EstimatorSpec(
        _gumbel(False, simplex_stretch=True),
        "softmax",
        "K-D Hard Concrete: sparsemax(λ · Concrete draw), annealed temperature (no entropy term)",
        args=("temperature", "temperature_min", "anneal_rate", "anneal_every", "simplex_stretch"),
    ),
    "gumbel_concrete": EstimatorSpec(
        _gumbel_concrete,
        "softmax",
        "Gumbel-Softmax, fixed temperature, ExpConcrete KL to a uniform Concrete prior",
        args=("temperature", "prior_temperature", "entropy_coeff"),
    ),
    "igr_i": EstimatorSpec(
        _igr("I"), "softmax", "IGR-I: softmax++ of a Gaussian, fixed τ", args=_IGR_ARGS["I"]
    ),
    "igr_sb": EstimatorSpec(
        _igr("SB"),
        "softmax",
        "IGR-SB: stick-breaking, adaptively truncated, fixed τ",
        args=_IGR_ARGS["SB"],
    ),
    "igr_planar": EstimatorSpec(
        _igr("planar"),
        "softmax",
        "IGR-Planar: planar flows before softmax++, fixed τ, sampled KL",
        args=_IGR_ARGS["planar"],
    ),
    "gaussian_sparsemax": EstimatorSpec(
        _gaussian_sparsemax,
        "sparsemax",
        "mixed sample: sparsemax(scores + sigma N(0, I)); bits: clip(scores + sigma N, 0, 1)",
        args=("scale", "entropy_coeff"),
    ),
}


# --------------------------------------------------------------- bit vectors and the simplex VAE


def _bits_only(structure: Structure | None, name: str) -> Structure:
    from latentgrad.structures.bitvector import BitVector

    if not isinstance(structure, BitVector):
        raise ValueError(f"{name} needs a BitVector latent (structure=BitVector(D)), got "
                         f"{structure!r}")
    return structure


def _binary_concrete(cfg: EstimatorConfig, num_classes: int, features_dim: int,
                     structure: Structure | None = None) -> Estimator:
    """Binary Concrete bits on (0, 1): the relaxed density's entropy (Lebesgue measure)."""
    structure = _bits_only(structure, "binary_concrete")
    return _gumbel(False, kl="relaxed")(cfg, num_classes, features_dim, structure)


def _hard_concrete(cfg: EstimatorConfig, num_classes: int, features_dim: int,
                   structure: Structure | None = None) -> Estimator:
    """Hard Concrete bits (Louizos et al. 2018), β annealed from ``cfg.temperature`` as the
    Gumbel estimators' τ (fixed where ``cfg.anneal_rate`` is 0)."""
    from latentgrad.estimators.mixed import BinaryMixedEstimator
    from latentgrad.estimators.schedules import ExponentialDecay

    _bits_only(structure, "hard_concrete")
    beta = cfg.temperature if cfg.anneal_rate == 0 else ExponentialDecay(
        tau0=cfg.temperature, rate=cfg.anneal_rate, every=cfg.anneal_every,
        floor=cfg.temperature_min)
    return BinaryMixedEstimator(
        "hard_concrete",
        temperature=beta,
        stretch=tuple(cfg.stretch),
        entropy_coeff=cfg.entropy_coeff,
        eval_mode=SAMPLE_READING,
    )


def _topk_sparsemax(cfg: EstimatorConfig, num_classes: int, features_dim: int,
                    structure: Structure | None = None) -> Estimator:
    from latentgrad.estimators.marginalization import TopKSparsemaxMarginalization

    structure = _bits_only(structure, "topk_sparsemax")
    k = _at_most_latent_values("topk", cfg.topk, num_classes, structure)
    return TopKSparsemaxMarginalization(structure, k=k, entropy_coeff=cfg.entropy_coeff)


def _bit_sparsemap(budgeted: bool) -> Callable[..., Estimator]:
    def factory(cfg: EstimatorConfig, num_classes: int, features_dim: int,
                structure: Structure | None = None) -> Estimator:
        from latentgrad.estimators.marginalization import SparseMAPMarginalization
        from latentgrad.structures.bitvector import BitVector

        structure = _bits_only(structure, "sparsemap_budget" if budgeted else "sparsemap")
        if budgeted:
            budget = structure.d // 2 if cfg.budget is None else cfg.budget
            if budget > structure.d:
                raise ValueError(
                    f"estimator_args.budget ({budget}) exceeds the {structure.d} bits"
                )
            structure = BitVector(structure.d, budget=budget)
        return SparseMAPMarginalization(structure, entropy_coeff=cfg.entropy_coeff)

    return factory


def _reparameterized(family: str) -> Callable[..., Estimator]:
    def factory(cfg: EstimatorConfig, num_classes: int, features_dim: int,
                structure: Structure | None = None) -> Estimator:
        from latentgrad.experiments.reparam import Reparameterized

        return Reparameterized(family, kl_coeff=1.0, entropy_coeff=cfg.entropy_coeff)

    return factory


def mixed_dirichlet_prior(k: int, form: str) -> MixedDirichlet:
    """The Mixed Dirichlet VAE prior: max-entropy faces (``form``) and Dir(1) on each face, in
    float64 on the CPU (the estimators holding it move it to their scores, rounding it once to
    their dtype)."""
    import torch

    from latentgrad.distributions.faces import MaxEntropyFaces
    from latentgrad.distributions.mixed_dirichlet import MixedDirichlet

    return MixedDirichlet(MaxEntropyFaces(k, form=form, dtype=torch.float64),
                          torch.ones(k, dtype=torch.float64))


def _mixed_dirichlet(cfg: EstimatorConfig, num_classes: int, features_dim: int,
                     structure: Structure | None = None) -> Estimator:
    from latentgrad.estimators.mixed import MixedDirichletEstimator

    return MixedDirichletEstimator(
        baseline="self_critic",
        prior=mixed_dirichlet_prior(num_classes, cfg.face_prior),
        kl_coeff=1.0,
        entropy_coeff=cfg.entropy_coeff,
        eval_mode=SAMPLE_READING,
    )


ESTIMATORS.update(
    {
        "topk_sparsemax": EstimatorSpec(
            _topk_sparsemax,
            "sparsemax",
            "sparsemax over the k best bit vectors (estimator_args.topk), exact over its support",
            exact=True,
            args=("topk", "entropy_coeff"),
            latent="bits",
            posterior="sparse",
        ),
        "sparsemap": EstimatorSpec(
            _bit_sparsemap(False),
            "sparsemax",
            "SparseMAP over bit vectors: exact over its sparse support",
            exact=True,
            args=("entropy_coeff",),
            latent="bits",
            posterior="sparse",
        ),
        "sparsemap_budget": EstimatorSpec(
            _bit_sparsemap(True),
            "sparsemax",
            "SparseMAP over bit vectors with at most estimator_args.budget ones (null: D/2)",
            exact=True,
            args=("budget", "entropy_coeff"),
            latent="bits",
            posterior="sparse",
        ),
        "binary_concrete": EstimatorSpec(
            _binary_concrete,
            "softmax",
            "Binary Concrete bits on (0, 1), annealed temperature",
            args=_GUMBEL_ARGS,
            latent="bits",
        ),
        "hard_concrete": EstimatorSpec(
            _hard_concrete,
            "softmax",
            "Hard Concrete mixed bits on [0, 1], pathwise, annealed β",
            args=("temperature", "temperature_min", "anneal_rate", "anneal_every", "stretch",
                  "entropy_coeff"),
            latent="bits",
        ),
        "gaussian": EstimatorSpec(
            _reparameterized("gaussian"),
            "softmax",
            "diagonal Gaussian on R^K, reparameterised, closed-form KL to N(0, I)",
            args=("entropy_coeff",),
            latent="simplex",
        ),
        "dirichlet": EstimatorSpec(
            _reparameterized("dirichlet"),
            "softmax",
            "Dirichlet on the simplex, implicit reparameterisation, closed-form KL to Dir(1)",
            args=("entropy_coeff",),
            latent="simplex",
        ),
        "mixed_dirichlet": EstimatorSpec(
            _mixed_dirichlet,
            "softmax",
            "Mixed Dirichlet: faces by score function (self-critic), Dirichlet pathwise",
            args=("face_prior", "entropy_coeff"),
            latent="simplex",
        ),
    }
)


# ---------------------------------------------------------------------------- structured latents

_SCHEDULE_ARGS = ("temperature", "anneal_rate", "anneal_every", "temperature_min")


def _default_structure(structure, latent: str, size: int):
    """The task's structure, or (when none is given) a spanning tree on ``size`` nodes
    (``tree``) or a 1-subset of ``size`` items (``subset``)."""
    if structure is not None:
        return structure
    from latentgrad.structures import KSubset, SpanningTree

    return SpanningTree(size) if latent == "tree" else KSubset(size, 1)


def _schedule(cfg: EstimatorConfig):
    """The configured temperature: constant when ``anneal_rate`` is 0, else exponential decay."""
    from latentgrad.estimators.schedules import Constant, ExponentialDecay

    if cfg.anneal_rate == 0:
        return Constant(cfg.temperature)
    return ExponentialDecay(
        tau0=cfg.temperature,
        rate=cfg.anneal_rate,
        every=cfg.anneal_every,
        floor=cfg.temperature_min,
    )


def _edges(straight_through: bool) -> Callable[..., Estimator]:
    def factory(cfg: EstimatorConfig, num_classes: int, features_dim: int, **_) -> Estimator:
        from latentgrad.estimators.relaxed import GumbelSoftmax

        return GumbelSoftmax(
            temperature=_schedule(cfg),
            straight_through=straight_through,
            entropy_coeff=cfg.entropy_coeff,
            eval_mode=SAMPLE_READING,
        )

    return factory


def _sst(straight_through: bool, latent: str) -> Callable[..., Estimator]:
    def factory(
        cfg: EstimatorConfig, num_classes: int, features_dim: int, structure=None, **_
    ) -> Estimator:
        from latentgrad.estimators.sst import SSTEstimator

        return SSTEstimator(
            _default_structure(structure, latent, num_classes),
            temperature=_schedule(cfg),
            straight_through=straight_through,
            entropy_coeff=cfg.entropy_coeff,
            eval_mode=SAMPLE_READING,
        )

    return factory


def _perturbed_sfe(baseline: str, multi: bool) -> Callable[..., Estimator]:
    def factory(
        cfg: EstimatorConfig, num_classes: int, features_dim: int, structure=None, **_
    ) -> Estimator:
        from latentgrad.estimators.perturbation import PerturbationScoreFunction

        return PerturbationScoreFunction(
            _default_structure(structure, "tree", num_classes),
            baseline=baseline,
            n_samples=cfg.n_samples if multi else 1,
            entropy_coeff=cfg.entropy_coeff,
            decay=cfg.decay,
            eval_mode=SAMPLE_READING,
        )

    return factory


def _structured_nvil(
    cfg: EstimatorConfig, num_classes: int, features_dim: int, structure=None, **_
) -> Estimator:
    from latentgrad.estimators.score_function import NVIL

    return NVIL(
        baseline_net=mlp([features_dim, *cfg.nvil_hidden, 1]),
        entropy_coeff=cfg.entropy_coeff,
        structure=_default_structure(structure, "tree", num_classes),
        centering="ema",
        decay=cfg.decay,
        eval_mode=SAMPLE_READING,
    )


def _sparsemap(
    cfg: EstimatorConfig, num_classes: int, features_dim: int, structure=None, **_
) -> Estimator:
    from latentgrad.estimators.marginalization import SparseMAPMarginalization

    return SparseMAPMarginalization(
        _default_structure(structure, "tree", num_classes), entropy_coeff=cfg.entropy_coeff
    )


def _structured(latent: str) -> dict[str, EstimatorSpec]:
    """The SST-paper estimators over the ``subset`` or ``tree`` latent of a task."""
    what = {"subset": "k-subsets", "tree": "trees"}[latent]
    specs = {
        f"{latent}_sst": EstimatorSpec(
            _sst(False, latent),
            description=f"SST over {what}: exp.-family-entropy relaxation of Gumbel utilities",
            latent=latent,
            posterior="perturbed",
            args=(*_SCHEDULE_ARGS, "entropy_coeff"),
        ),
        f"{latent}_st": EstimatorSpec(
            _sst(True, latent),
            description=f"straight-through SST over {what}: hard SMT forward, relaxed backward",
            latent=latent,
            posterior="perturbed",
            args=(*_SCHEDULE_ARGS, "entropy_coeff"),
        ),
    }
    if latent == "tree":
        for name, baseline, multi, text in (
            ("sfe_ema", "ema", False, "EMA (0.99) baseline"),
            ("sfe_batch", "batch_loo", False, "mean of the other examples of the batch"),
            ("sfe_multi", "leave_one_out", True, "leave-one-out over n_samples samples"),
        ):
            specs[f"tree_{name}"] = EstimatorSpec(
                _perturbed_sfe(baseline, multi),
                description=f"score function on the utilities of the SMT, {text}",
                latent=latent,
                posterior="perturbed",
                args=("entropy_coeff", "decay", *(("n_samples",) if multi else ())),
            )
        specs["tree_nvil"] = EstimatorSpec(
            _structured_nvil,
            description="NVIL on exact Gibbs samples of trees (EMA centring + learned baseline)",
            needs_baseline_input=True,
            latent=latent,
            posterior="gibbs",
            args=("nvil_hidden", "entropy_coeff", "decay"),
        )
        specs["tree_sparsemap"] = EstimatorSpec(
            _sparsemap,
            description="SparseMAP over trees: exact marginalization over a sparse support",
            latent=latent,
            posterior="sparse",
            args=("entropy_coeff",),
        )
    return specs


def _subset_relaxation(kind: str, straight_through: bool) -> Callable[..., Estimator]:
    def factory(
        cfg: EstimatorConfig, num_classes: int, features_dim: int, structure=None, **_
    ) -> Estimator:
        from latentgrad.estimators import subsets

        k = _default_structure(structure, "subset", num_classes).k
        if kind == "corr":
            return subsets.CorrelatedSSTEstimator(
                k, _schedule(cfg), rank=cfg.rank, straight_through=straight_through
            )
        cls = subsets.L2XEstimator if kind == "l2x" else subsets.SoftSubEstimator
        return cls(k, _schedule(cfg), straight_through=straight_through)

    return factory


def _subset_relaxations() -> dict[str, EstimatorSpec]:
    """Relaxed k-subsets of the learning-to-explain baselines (``estimators.subsets``)."""
    kinds = {
        "l2x": "L2X: elementwise max of k Concrete draws",
        "softsub": "SoftSub: k successive softmaxes of Gumbel-perturbed scores",
        "corr_subset": "k-subset SST at correlated low-rank Gaussian utilities",
    }
    specs = {}
    for name, text in kinds.items():
        kind = name.split("_")[0]
        args = (*_SCHEDULE_ARGS, *(("rank",) if kind == "corr" else ()))
        specs[f"{name}_sst" if kind == "corr" else name] = EstimatorSpec(
            _subset_relaxation(kind, False), description=text, latent="subset", args=args
        )
        specs[f"{name}_st"] = EstimatorSpec(
            _subset_relaxation(kind, True),
            description=f"straight-through {text}",
            latent="subset",
            args=args,
        )
    return specs


ESTIMATORS.update(
    {
        **_subset_relaxations(),
        "edges_sst": EstimatorSpec(
            _edges(False),
            description="independent edges: Gumbel-Softmax per edge",
            latent="edges",
            posterior="perturbed",
            args=(*_SCHEDULE_ARGS, "entropy_coeff"),
        ),
        "edges_st": EstimatorSpec(
            _edges(True),
            description="independent edges: straight-through Gumbel-Softmax per edge",
            latent="edges",
            posterior="perturbed",
            args=(*_SCHEDULE_ARGS, "entropy_coeff"),
        ),
        **_structured("subset"),
        **_structured("tree"),
    }
)


def estimator_spec(name: str) -> EstimatorSpec:
    """The registry entry for ``name``; ValueError listing the known names otherwise."""
    if name not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {name!r}")
    return ESTIMATORS[name]
