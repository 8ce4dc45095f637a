"""Bad inputs at every public entry point: each call either raises a ``ValueError``/``TypeError``
that names the offending argument, or returns a correct answer — never NaN from finite input and
never an error from inside torch.

Every entry point is an ``Entry``: a call on named tensor inputs (batch of 3) built by ``make``.
The deterministic tests corrupt one input at a time (NaN, ±inf, integer/bool/complex dtypes, a
0-dim tensor, a batch that does not broadcast, non-positive parameters) or all of them (an empty
batch, non-contiguous views); the hypothesis tests draw finite inputs of every floating dtype at
magnitudes up to the dtype's maximum (temperatures and scales down to 1e-8 and the dtype's
smallest normal number) and compare with the float64 call on the same values, within a tolerance
derived from the dtype's epsilon and, for extensive outputs (log-partitions, log-densities,
entropies, KLs), the magnitude of the inputs.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.distributions import kl_divergence

import latentgrad as lg
from latentgrad import distributions as dist
from latentgrad import estimators as est
from latentgrad import structures as sts
from latentgrad.estimators import subsets

B, K = 3, 4
HALF = (torch.float16, torch.bfloat16)
Inputs = dict[str, Tensor]


@dataclasses.dataclass(frozen=True)
class Entry:
    """A public entry point called on named tensor inputs.

    make(gen, dtype) -> valid inputs, batch ``B``; call(**inputs) -> the output (tensor, tuple,
    dataclass of tensors); event: trailing event dims per input; positive: inputs that must be
    > 0; excluded_ok: ``-inf`` entries allowed in the first input (structure scores);
    random: the output is a draw (checked for finiteness, not against float64); extensive: the
    output scales with the inputs (its tolerance includes their magnitude).
    """

    name: str
    make: Callable[[torch.Generator, torch.dtype], Inputs]
    call: Callable[..., Any]
    event: dict[str, int]
    positive: tuple[str, ...] = ()
    excluded_ok: bool = False
    random: bool = False
    extensive: bool = False
    max_scale: float | None = None  # largest magnitude of the first input with a defined answer
    broadcasts: bool = False  # a 0-dim first input is a valid (broadcast) argument
    aliases: tuple[str, ...] = ()  # other names an error may use for the first input (reported)
    range_error: str | None = None  # the ValueError that refuses inputs whose answer (an
    # entropy, a KL) lies beyond the dtype, instead of an inf: accepted for finite inputs

    def __repr__(self) -> str:
        return self.name


def randn(gen, dtype, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def positive(gen, dtype, *shape, low=0.5, high=2.0):
    return (low + (high - low) * torch.rand(*shape, generator=gen, dtype=torch.float64)).to(dtype)


def scores_of(structure):
    def make(gen, dtype):
        s = randn(gen, dtype, B, *structure.score_shape)
        if isinstance(structure, sts.SpanningTree):
            s = ((s + s.mT) / 2).to(dtype)
        return {"scores": s}

    return make


# ---------------------------------------------------------------------------- entry points

STRUCTURES = {
    "categorical": sts.Categorical(K),
    "bits": sts.BitVector(K),
    "bits_budget": sts.BitVector(K, budget=2),
    "ksubset": sts.KSubset(K, 2),
    "tree": sts.SpanningTree(K),
    "arborescence": sts.Arborescence(K),
    "arborescence_root": sts.Arborescence(K, root=0),
}
KBEST = ("categorical", "bits", "bits_budget", "ksubset")


def structure_entries() -> list[Entry]:
    out = []
    for name, s in STRUCTURES.items():
        ev = {"scores": s.event_dim}
        make = scores_of(s)
        ok = {"excluded_ok": name in KBEST}  # trees need finite scores
        out += [
            Entry(f"{name}.argmax", make, s.argmax, ev, **ok),
            Entry(f"{name}.log_partition", make, s.log_partition, ev, extensive=True, **ok),
            Entry(f"{name}.marginals", make, s.marginals, ev, **ok),
            Entry(f"{name}.entropy", make, s.entropy, ev, extensive=True, **ok),
            Entry(f"{name}.log_prob", make,
                  lambda scores, s=s: s.log_prob(scores, s.argmax(scores)), ev, extensive=True,
                  **ok),
            Entry(f"{name}.sample", make, lambda scores, s=s: s.sample(scores, (2,)), ev,
                  random=True, **ok),
            Entry(f"sparsemap[{name}]", make, lambda scores, s=s: lg.sparsemap(scores, s), ev,
                  extensive=False),
        ]
        if name in KBEST:
            out += [
                Entry(f"{name}.topk", make, lambda scores, s=s: s.topk(scores, 3), ev, **ok),
                Entry(f"topk_sparsemax[{name}]", make,
                      lambda scores, s=s: lg.topk_sparsemax(scores, s, 3), ev, **ok),
            ]
    return out


def mapping_entries() -> list[Entry]:
    def x(gen, dtype):
        return {"x": randn(gen, dtype, B, K)}

    ev = {"x": 1}
    return [
        Entry("sparsemax", x, lambda x: lg.sparsemax(x), ev, excluded_ok=True),
        Entry("sparsemax_threshold", x, lambda x: lg.mappings.sparsemax_threshold(x), ev,
              excluded_ok=True),
        Entry("entmax15", x, lambda x: lg.entmax15(x), ev, excluded_ok=True),
        Entry("entmax_bisect", x, lambda x: lg.entmax_bisect(x, 1.5), ev, excluded_ok=True),
        Entry("softmax_pp", lambda g, d: {**x(g, d), "tau": positive(g, d, B)},
              lambda x, tau: lg.softmax_pp(x, tau), {"x": 1, "tau": 0}, positive=("tau",)),
        Entry("stick_breaking", lambda g, d: {"eta": torch.rand(B, K, generator=g).to(d)},
              lambda eta: lg.stick_breaking(eta), {"eta": 1}, max_scale=1.0),
    ]


def _loc_scale_tau(k1):
    def make(gen, dtype):
        return {"loc": randn(gen, dtype, B, k1), "scale": positive(gen, dtype, B, k1),
                "temperature": positive(gen, dtype, B)}

    return make


LST = {"loc": 1, "scale": 1, "temperature": 0}


def _draw_and_density(d):
    x = d.rsample((2,))
    return x, d.log_prob(x)


def distribution_entries() -> list[Entry]:
    def igr(loc, scale, temperature):
        return dist.IGR(loc, scale, temperature)

    def sb(loc, scale, temperature):
        return dist.IGRStickBreaking(loc, scale, temperature, eps=0.1)


    def planar(loc, scale, temperature):
        torch.manual_seed(0)
        dtype = loc.dtype if loc.is_floating_point() else torch.float64
        flows = [dist.PlanarFlow(K - 1).to(dtype) for _ in range(2)]
        return dist.IGRPlanar(loc, scale, temperature, flows)

    out = []
    pos = ("scale", "temperature")
    for name, family in (("IGR", igr), ("IGRStickBreaking", sb), ("IGRPlanar", planar)):
        make = _loc_scale_tau(K - 1)
        out += [
            Entry(f"{name}.rsample+log_prob", make,  # log_prob of its own draws
                  lambda f=family, **a: _draw_and_density(f(**a)), LST, positive=pos, random=True),
            Entry(f"{name}.entropy_mc", make,
                  lambda f=family, **a: (f(**a).rsample(), f(**a).entropy_mc(2)), LST,
                  positive=pos, random=True),
        ]
    out.append(Entry("kl(IGR, IGR)", _loc_scale_tau(K - 1),
                     lambda **a: kl_divergence(igr(**a), igr(a["loc"].flip(0), a["scale"],
                                                             a["temperature"])),
                     LST, positive=pos, extensive=True))

    def loc_scale(k):
        def make(gen, dtype):
            shape = (B, k) if k else (B,)
            return {"loc": randn(gen, dtype, *shape), "scale": positive(gen, dtype, *shape)}

        return make

    for name, cls, ev in (("GaussianSparsemax", dist.GaussianSparsemax, 1),
                          ("BinaryGaussianSparsemax", dist.BinaryGaussianSparsemax, 0)):
        make = loc_scale(K if ev else 0)
        evs = {"loc": ev, "scale": ev}
        out += [
            Entry(f"{name}.rsample+log_prob", make, lambda c=cls, **a: _draw_and_density(c(**a)),
                  evs, positive=("scale",), random=True),
        ]
    out += [
        Entry("GaussianSparsemax.vertex_log_prob", loc_scale(K),
              lambda **a: dist.GaussianSparsemax(**a).vertex_log_prob(),
              {"loc": 1, "scale": 1}, positive=("scale",), extensive=True),
        Entry("BinaryGaussianSparsemax.entropy+kl", loc_scale(0),
              lambda **a: (dist.BinaryGaussianSparsemax(**a).entropy(),
                           kl_divergence(dist.BinaryGaussianSparsemax(**a),
                                         dist.BinaryGaussianSparsemax(a["loc"].flip(0), 1.0))),
              {"loc": 0, "scale": 0}, positive=("scale",), extensive=True),
    ]

    def hard_concrete(gen, dtype):
        return {"log_alpha": randn(gen, dtype, B), "temperature": positive(gen, dtype, B)}

    hc_ev = {"log_alpha": 0, "temperature": 0}
    out += [
        Entry("HardConcrete.rsample+log_prob", hard_concrete,
              lambda **a: _draw_and_density(dist.HardConcrete(**a)), hc_ev,
              positive=("temperature",), random=True),
        Entry("HardConcrete.entropy+kl", hard_concrete,
              lambda **a: (dist.HardConcrete(**a).entropy(),
                           kl_divergence(dist.HardConcrete(**a),
                                         dist.HardConcrete(a["log_alpha"].flip(0), 0.5))),
              hc_ev, positive=("temperature",), extensive=True),
    ]

    def faces(gen, dtype):
        return {"scores": randn(gen, dtype, B, K)}

    def faces_all(scores):
        p, q = dist.NonEmptyFaces(scores), dist.NonEmptyFaces(scores.flip(0))
        prior = dist.MaxEntropyFaces(K, dtype=scores.dtype)
        return (p.entropy(), kl_divergence(p, q), kl_divergence(p, prior),
                kl_divergence(prior.expand(p.batch_shape), p), p.log_prob(p.mode), p.marginals())

    out += [
        Entry("NonEmptyFaces.closed_forms", faces, faces_all, {"scores": 1}, extensive=True),
        Entry("NonEmptyFaces.sample", faces, lambda scores: dist.NonEmptyFaces(scores).sample((2,)),
              {"scores": 1}, random=True),
    ]

    def mixed_dirichlet(gen, dtype):
        return {"faces": randn(gen, dtype, B, K), "concentration": positive(gen, dtype, B, K)}

    md_ev = {"faces": 1, "concentration": 1}

    def md_all(faces, concentration):
        p = dist.MixedDirichlet(faces, concentration)
        q = dist.MixedDirichlet(faces.flip(0), concentration.flip(0))
        return p.entropy(), kl_divergence(p, q), p.mean

    out += [
        Entry("MixedDirichlet.rsample+log_prob", mixed_dirichlet,
              lambda **a: _draw_and_density(dist.MixedDirichlet(**a)), md_ev,
              positive=("concentration",), random=True),
        Entry("MixedDirichlet.closed_forms", mixed_dirichlet, md_all, md_ev,
              positive=("concentration",), extensive=True),
    ]

    def continuous_categorical(gen, dtype):
        return {"logits": randn(gen, dtype, B, K)}

    def cc_draw(logits):
        d = dist.ContinuousCategorical(logits)
        x = d.sample((2,))
        return x, d.log_prob(x)

    def cc_all(logits):
        p = dist.ContinuousCategorical(logits)
        q = dist.ContinuousCategorical(logits.flip(0))
        return p.entropy(), kl_divergence(p, q), p.mean, p.log_prob(p.mean)

    out += [
        Entry("ContinuousCategorical.sample+log_prob", continuous_categorical, cc_draw,
              {"logits": 1}, random=True),
        Entry("ContinuousCategorical.closed_forms", continuous_categorical, cc_all,
              {"logits": 1}, extensive=True),
    ]

    def perturbed(gen, dtype):
        return {"logits": randn(gen, dtype, B, K), "temperature": positive(gen, dtype, B)}

    def concrete(gen, dtype):
        logits, temperature = perturbed(gen, dtype).values()
        y = torch.softmax(randn(gen, torch.float64, B, K), -1).to(dtype)
        return {"logits": logits, "y": y, "temperature": temperature}

    out += [
        Entry("StochasticSoftmax.rsample", perturbed,
              lambda logits, temperature: dist.StochasticSoftmax(
                  sts.KSubset(K, 2), logits, temperature).rsample((2,)),
              {"logits": 1, "temperature": 0}, positive=("temperature",), excluded_ok=True,
              random=True),
        Entry("StochasticArgmax.sample", lambda g, d: {"logits": randn(g, d, B, K)},
              lambda logits: dist.StochasticArgmax(sts.BitVector(K), logits).sample(),
              {"logits": 1}, excluded_ok=True, random=True),
        Entry("concrete_log_prob", concrete,  # y renormalised in its dtype (float64 checks it)
              lambda logits, y, temperature: dist.concrete_log_prob(
                  y / y.sum(-1, keepdim=True) if y.is_floating_point() else y, logits, temperature),
              {"logits": 1, "y": 1, "temperature": 0}, positive=("temperature",), extensive=True,
              excluded_ok=True, broadcasts=True),
    ]
    return out


def _quadratic_loss(z, rows):
    target = torch.linspace(-1, 1, math.prod(z.shape[1:]), dtype=z.dtype).view(z.shape[1:])
    return ((z - target) ** 2).flatten(1).sum(-1)


ESTIMATORS = {
    "softmax": lambda: est.SoftmaxMarginalization(),
    "sparsemax": lambda: est.SparsemaxMarginalization(),
    "entmax15": lambda: est.SparsemaxMarginalization("entmax15"),
    "topk_sparsemax": lambda: est.TopKSparsemaxMarginalization(sts.Categorical(K), k=3),
    "sparsemap": lambda: est.SparseMAPMarginalization(sts.Categorical(K)),
    "sfe": lambda: est.ScoreFunction(baseline="batch_loo", n_samples=2),
    "nvil": lambda: est.NVIL(),
    "sum_and_sample": lambda: est.SumAndSample(k=2),
    "perturbation_sfe": lambda: est.PerturbationScoreFunction(None),
    "gumbel": lambda: est.GumbelSoftmax(0.5),
    "igr": lambda: est.IGREstimator("I", 0.5),
    "sst": lambda: est.SSTEstimator(None, 0.5),
    "gaussian_sparsemax": lambda: est.GaussianSparsemaxEstimator(),
    "binary_mixed": lambda: est.BinaryMixedEstimator(),
    "mixed_dirichlet": lambda: est.MixedDirichletEstimator(),
    "l2x": lambda: subsets.L2XEstimator(2, 0.5),
    "softsub": lambda: subsets.SoftSubEstimator(2, 0.5),
    "correlated_sst": lambda: subsets.CorrelatedSSTEstimator(2, 0.5),
}
DETERMINISTIC_ESTIMATORS = ("softmax", "sparsemax", "entmax15", "topk_sparsemax", "sparsemap")
# scores that parameterise continuous or mixed distributions: every entry must be finite
CONTINUOUS_ESTIMATORS = ("igr", "gaussian_sparsemax", "binary_mixed", "mixed_dirichlet", "l2x",
                         "softsub", "correlated_sst")


# IGR's entropy and KL grow like the scores' exponentials: beyond the dtype they are refused
IGR_RANGE = r"^scores: "


def estimator_entries() -> list[Entry]:
    out = []
    for name, factory in ESTIMATORS.items():
        shape = factory().score_shape((K,))

        def make(gen, dtype, shape=shape):
            return {"scores": randn(gen, dtype, B, *shape)}

        def call(scores, factory=factory):  # the per-example readings (the evaluated pairs
            torch.manual_seed(0)  # may differ in number between dtypes)
            out = factory()(scores, _quadratic_loss)
            return out.loss, out.expected_loss, out.entropy, out.support_size

        # the sparse-mapping estimators validate through the mapping, whose argument is x
        aliases = ("x",) if name in ("sparsemax", "entmax15") else ()
        out.append(Entry(f"estimator[{name}]", make, call, {"scores": len(shape)},
                         random=name not in DETERMINISTIC_ESTIMATORS, extensive=True,
                         excluded_ok=name not in CONTINUOUS_ESTIMATORS, aliases=aliases,
                         range_error=IGR_RANGE if name == "igr" else None))

    def igr_kl(scores):  # the closed-form KL to the uniform prior: deterministic in the scores
        return est.IGREstimator("I", 0.5, prior="uniform")(scores, _quadratic_loss).logs["kl"]

    out.append(Entry("estimator[igr].kl", lambda g, d: {"scores": randn(g, d, B, 2, K - 1)},
                     igr_kl, {"scores": 2}, extensive=True, range_error=IGR_RANGE))
    return out


ENTRIES = structure_entries() + mapping_entries() + distribution_entries() + estimator_entries()
BY_INPUT = [(e, name) for e in ENTRIES for name in e.event]


# ---------------------------------------------------------------------------- helpers

def tensors(out: Any) -> list[Tensor]:
    """Every tensor in an output (tensor, tuple/list, dataclass, dict)."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in tensors(item)]
    if dataclasses.is_dataclass(out):
        return tensors([getattr(out, f.name) for f in dataclasses.fields(out)])
    if isinstance(out, dict):
        return tensors(list(out.values()))
    return []


def valid(entry: Entry, dtype=torch.float64, seed=0) -> Inputs:
    return entry.make(torch.Generator().manual_seed(seed), dtype)


def refused(entry: Entry, inputs: Inputs, name: str, kinds=(ValueError, TypeError)) -> None:
    """The call raises one of ``kinds`` and its message names the input."""
    with pytest.raises(kinds) as info:
        entry.call(**inputs)
    names = (name, *entry.aliases) if name == next(iter(entry.event)) else (name,)
    assert any(n in str(info.value) for n in names), f"{entry}: {info.value!r} names no {names}"


def refused_or_no_nan(entry: Entry, inputs: Inputs, name: str) -> None:
    """Either a ``ValueError``/``TypeError`` naming the input, or an output without NaN."""
    try:
        out = entry.call(**inputs)
    except (ValueError, TypeError) as err:
        names = (name, *entry.aliases)
        assert any(n in str(err) for n in names), f"{entry}: {err!r} names no {names}"
        return
    assert_no_nan(entry, out)


def assert_no_nan(entry: Entry, out: Any) -> list[Tensor]:
    found = [t for t in tensors(out) if t.is_floating_point()]
    assert all(not torch.isnan(t).any() for t in found), f"{entry}: NaN from finite input"
    return found


# ---------------------------------------------------------------------------- deterministic

@pytest.mark.parametrize("entry,name", BY_INPUT, ids=[f"{e}-{n}" for e, n in BY_INPUT])
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_entries_are_refused_by_name(entry, name, bad):
    inputs = valid(entry)
    x = inputs[name].clone()
    x.view(-1)[0] = float(bad)
    inputs[name] = x
    first = name == next(iter(entry.event))
    if bad == "-inf" and first and entry.excluded_ok:  # an excluded item: allowed, or refused
        refused_or_no_nan(entry, inputs, name)
    else:
        refused(entry, inputs, name)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.excluded_ok], ids=str)
def test_an_all_minus_inf_row_is_refused_or_has_a_valid_answer(entry):
    inputs = valid(entry)
    name = next(iter(entry.event))
    x = inputs[name].clone()
    x[0] = float("-inf")
    inputs[name] = x
    refused_or_no_nan(entry, inputs, name)


@pytest.mark.parametrize("entry,name", BY_INPUT, ids=[f"{e}-{n}" for e, n in BY_INPUT])
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_non_floating_dtypes_are_refused_by_name(entry, name, dtype):
    inputs = valid(entry)
    inputs[name] = inputs[name].to(dtype) if dtype != torch.bool else inputs[name] > 0
    refused(entry, inputs, name)


@pytest.mark.parametrize("entry,name", BY_INPUT, ids=[f"{e}-{n}" for e, n in BY_INPUT])
def test_wrong_shapes_are_refused_by_name(entry, name):
    inputs = valid(entry)
    first = name == next(iter(entry.event))
    if entry.event[name] and first and not entry.broadcasts:  # a 0-dim tensor lacks the event
        refused(entry, {**inputs, name: inputs[name].reshape(-1)[0]}, name)  # (others broadcast)
    if len(entry.event) > 1:  # a batch of 2 against a batch of 3: the message names either side
        with pytest.raises((ValueError, TypeError)) as info:
            entry.call(**{**inputs, name: inputs[name][:2]})
        assert any(n in str(info.value) for n in entry.event), f"{entry}: {info.value!r}"


@pytest.mark.parametrize("entry", ENTRIES, ids=str)
def test_an_empty_batch_gives_empty_results(entry):
    inputs = {n: x[:0] for n, x in valid(entry).items()}
    out = entry.call(**inputs)
    for t in tensors(out):
        if t.dim():
            assert t.numel() == 0, f"{entry}: output of shape {tuple(t.shape)}"
        elif t.is_floating_point():  # a scalar summarises a batch (an estimator's loss)
            assert t.item() == 0.0, f"{entry}: summary {t.item()} of an empty batch, not 0"


@pytest.mark.parametrize("entry", ENTRIES, ids=str)
def test_non_contiguous_inputs_give_the_contiguous_answer(entry):
    inputs = valid(entry)
    strided = {}
    for n, x in inputs.items():  # same values, transposed storage
        y = x.t().contiguous().t() if x.dim() == 2 else torch.stack([x, x], -1)[..., 0]
        assert not y.is_contiguous() or x.dim() == 0
        strided[n] = y
    torch.manual_seed(1)
    want = entry.call(**inputs)
    torch.manual_seed(1)
    got = entry.call(**strided)
    for a, b in zip(tensors(got), tensors(want), strict=True):
        torch.testing.assert_close(a, b, equal_nan=False)


@pytest.mark.parametrize("entry,name", [(e, n) for e in ENTRIES for n in e.positive],
                         ids=[f"{e}-{n}" for e in ENTRIES for n in e.positive])
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_non_positive_parameters_are_refused_by_name(entry, name, value):
    inputs = valid(entry)
    x = inputs[name].clone()
    x.view(-1)[0] = value
    refused(entry, {**inputs, name: x}, name)


# ---------------------------------------------------------------------------- finite inputs

def _log_uniform(draw, low, high):
    return 10.0 ** draw(st.floats(math.log10(low), math.log10(high)))


@st.composite
def finite_case(draw, entries=ENTRIES):
    """An entry, a dtype and finite inputs: the first input scaled to a magnitude up to the
    dtype's maximum (or shifted by a large offset), positive inputs spread over [tiny, max]."""
    entry = draw(st.sampled_from(entries))
    dtype = draw(st.sampled_from([torch.float32, *HALF, torch.float64]))
    info = torch.finfo(dtype)
    inputs = valid(entry, torch.float64, seed=draw(st.integers(0, 2**16)))
    first = next(iter(entry.event))
    top = min(info.max / 8, entry.max_scale or math.inf)
    kind = draw(st.sampled_from(["scale", "offset", "moderate"]))
    x = inputs[first]
    if first not in entry.positive and entry.max_scale is None:
        if kind == "scale":
            x = x * _log_uniform(draw, 1e-3, top)
        elif kind == "offset":
            x = x + draw(st.sampled_from([-1.0, 1.0])) * _log_uniform(draw, 1.0, min(top, 1e6))
    inputs[first] = x
    for name in entry.positive:
        if draw(st.booleans()):
            inputs[name] = inputs[name] * _log_uniform(draw, max(info.tiny, 1e-8) * 4, 1e4)
    return entry, dtype, {n: t.to(dtype) for n, t in inputs.items()}


def _tolerance(entry: Entry, dtype: torch.dtype, inputs: Inputs, ref: Tensor) -> Tensor:
    eps = torch.finfo(dtype).eps
    tol = 64 * eps * (1 + ref.abs())
    if entry.extensive:
        scale = max(float(t.double().abs().max()) for t in inputs.values() if t.numel())
        tol = tol + 64 * eps * K * K * scale
    return tol





@settings(max_examples=120)
@given(finite_case())
def test_finite_inputs_give_no_nan_and_the_float64_answer(case):
    entry, dtype, inputs = case
    torch.manual_seed(0)
    if entry.range_error is None:
        out = entry.call(**inputs)
    else:
        try:
            out = entry.call(**inputs)
        except ValueError as error:  # refused by name: the answer is beyond the dtype
            assert re.search(entry.range_error, str(error)), f"{entry}: {error}"
            return
    got = assert_no_nan(entry, out)
    for t in got:
        assert t.dtype == dtype, f"{entry}: returned {t.dtype} for {dtype} inputs"
    if entry.random:  # the draw (the first output) is finite; densities may overflow
        assert torch.isfinite(got[0]).all(), f"{entry}: non-finite draw"
        return
    ref = [t for t in tensors(entry.call(**{n: x.double() for n, x in inputs.items()}))
           if t.is_floating_point()]
    limit = torch.finfo(dtype).max
    for a, r in zip(got, ref, strict=True):
        a = a.double()
        representable = torch.isfinite(r) & (r.abs() < limit / 2)
        assert torch.isfinite(a)[representable].all(), f"{entry}: overflow of a finite answer"
        close = (a - r).abs() <= _tolerance(entry, dtype, inputs, r)
        assert close[representable].all(), (
            f"{entry}: {dtype} differs from float64 by "
            f"{(a - r).abs()[representable].max().item():.3g}"
        )


# ---------------------------------------------------------------------------- integer arguments

@pytest.mark.parametrize(("call", "message"), [
    (lambda: sts.BitVector(K, budget=K + 1), rf"^budget must be in \[0, {K}\], got {K + 1}$"),
    (lambda: sts.KSubset(K, K + 1), rf"^k must be in \[0, {K}\], got {K + 1}$"),
    (lambda: sts.KSubset(K, 2).topk(torch.zeros(B, K), 7), r"^k must be in \[1, 6\], got 7$"),
    (lambda: sts.Categorical(K).topk(torch.zeros(B, K), 0), rf"^k must be in \[1, {K}\], got 0$"),
    (lambda: lg.topk_sparsemax(torch.zeros(B, K), sts.BitVector(K), 0), r"^k must be >= 1, got 0$"),
    (lambda: lg.topk_sparsemax(torch.zeros(B, K), sts.BitVector(K), True),
     r"^k must be an int, got bool$"),
    (lambda: sts.Categorical(K).sample(torch.zeros(B, K), (-1,)),
     r"^sample_shape must have non-negative sizes, got \(-1,\)$"),
    (lambda: dist.IGR(torch.zeros(B, K), 1.0, 1.0).rsample((2, -1)),
     r"^sample_shape must have non-negative sizes, got \(2, -1\)$"),
    (lambda: dist.NonEmptyFaces(torch.zeros(B, K)).sample((-3,)),
     r"^sample_shape must have non-negative sizes, got \(-3,\)$"),
    (lambda: dist.MixedDirichlet(torch.zeros(B, K), torch.ones(B, K)).rsample((-1,)),
     r"^sample_shape must have non-negative sizes, got \(-1,\)$"),
    (lambda: dist.GaussianSparsemax(torch.zeros(B, K)).rsample(-1),
     r"^sample_shape must be a torch.Size or a tuple of non-negative ints, got -1$"),
])
def test_out_of_range_integer_arguments_are_refused(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("bad", ["shape", "nan", "int", "float"])
def test_bad_loss_fn_outputs_are_refused(name, bad):
    def loss_fn(z, rows):
        out = _quadratic_loss(z, rows)
        return {"shape": out[:-1], "nan": out * math.nan, "int": out.long(),
                "float": float(out.sum())}[bad]

    estimator = ESTIMATORS[name]()
    scores = torch.randn(B, *estimator.score_shape((K,)), dtype=torch.float64)
    with pytest.raises((ValueError, TypeError), match="loss_fn"):
        estimator(scores, loss_fn)


def _k1_cases():
    one = torch.tensor([[0.7], [-3.0]], dtype=torch.float64)
    ones = torch.ones(2, 1, dtype=torch.float64)
    zeros = torch.zeros(2, dtype=torch.float64)
    return {  # a one-point (or two-point, for a bit) space: the exact answers
        "sparsemax": (lambda: lg.sparsemax(one), ones),
        "entmax15": (lambda: lg.entmax15(one), ones),
        "entmax_bisect": (lambda: lg.entmax_bisect(one), ones),
        "categorical.marginals": (lambda: sts.Categorical(1).marginals(one), ones),
        "categorical.entropy": (lambda: sts.Categorical(1).entropy(one), zeros),
        "bits.marginals": (lambda: sts.BitVector(1).marginals(one), torch.sigmoid(one)),
        "ksubset.marginals": (lambda: sts.KSubset(1, 1).marginals(one), ones),
        "ksubset.entropy": (lambda: sts.KSubset(1, 1).entropy(one), zeros),
        "topk_sparsemax": (lambda: lg.topk_sparsemax(one, sts.Categorical(1), 1).marginals, ones),
        "sparsemap": (lambda: lg.sparsemap(one, sts.Categorical(1)).marginals, ones),
        "GaussianSparsemax.log_prob": (lambda: dist.GaussianSparsemax(one).log_prob(ones), zeros),
        "NonEmptyFaces.entropy": (lambda: dist.NonEmptyFaces(one).entropy(), zeros),
        "NonEmptyFaces.log_prob": (lambda: dist.NonEmptyFaces(one).log_prob(ones), zeros),
        "MixedDirichlet.entropy": (lambda: dist.MixedDirichlet(one, ones).entropy(), zeros),
        "MixedDirichlet.rsample": (lambda: dist.MixedDirichlet(one, ones).rsample(), ones),
    }


@pytest.mark.parametrize("name", list(_k1_cases()))
def test_one_category_gives_the_exact_answer(name):
    call, want = _k1_cases()[name]
    torch.testing.assert_close(call().double(), want, atol=0, rtol=0)


def test_igr_needs_two_categories():
    with pytest.raises(ValueError, match="loc"):
        dist.IGR(torch.zeros(2, 0), 1.0, 1.0)
