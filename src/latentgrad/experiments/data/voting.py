"""Vote proportions per constituency with exact zeros (Farinhas et al. 2022, §5; after
Gordon-Rodriguez et al. 2020): the UK 2019 general-election table, or a synthetic stand-in.

A data set is a ``VotingData``: covariates ``x`` (N, P) and shares ``y`` (N, K) on the simplex
(rows sum to 1, exact zeros where a party did not stand), K = the ``num_classes − 1`` parties
with the largest share summed over constituencies plus a remainder (all other candidates).

Sources:

- ``load_election_xlsx``: the House of Commons Library spreadsheet
  ``general-election-results-2019.xlsx`` (user file; reading it needs ``openpyxl``, in the
  ``experiments`` extra). Sheet ``voting-full``: one row per candidate with the columns
  ``constituency_name``, ``party_name`` and ``share`` (the candidate's vote share). Sheet
  ``voting-summary``: one row per constituency with ``constituency_name``, ``country_name``
  (England, Northern Ireland, Scotland, Wales), ``constituency_type`` (Borough, County),
  ``electorate`` and ``turnout_2017``. Shares are renormalised per constituency (so shares given
  in percent work too). Covariates, in this order: electorate, turnout_2017, Borough,
  Northern Ireland, Scotland, Wales (County and England are the baselines).
- ``synthetic_voting``: 650 rows drawn from a known Mixed Dirichlet GLM (see its docstring), so
  a fit can be checked against the true parameters.

``split_and_standardise`` applies the reference protocol to either: a Bernoulli(0.2) draw per
row (numpy legacy seed 0) marks the training rows (~20%), the rest is validation; the continuous
columns are standardised with the training mean and (population) standard deviation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latentgrad.experiments.data.files import (
    DataError,
    dataset_dir,
    require_file,
    verify_checksum,
)

ELECTION_FILE = "general-election-results-2019.xlsx"
FULL_SHEET, SUMMARY_SHEET = "voting-full", "voting-summary"
CONTINUOUS = ("electorate", "turnout_2017")
COUNTRIES = ("England", "Northern Ireland", "Scotland", "Wales")  # England: baseline
FEATURES = (*CONTINUOUS, "Borough", *COUNTRIES[1:])
# rows per country of the synthetic set, as in 2019
SYNTHETIC_COUNTRY_ROWS = {"England": 533, "Scotland": 59, "Wales": 40, "Northern Ireland": 18}


@dataclass
class VotingData:
    """Covariates ``x`` (N, P) float64, shares ``y`` (N, K) float64 (rows on the simplex) and
    names; ``truth`` holds the generating parameters of synthetic data (else empty)."""

    x: Tensor
    y: Tensor
    features: tuple[str, ...]
    classes: tuple[str, ...]
    continuous: tuple[int, ...]
    truth: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class VotingSplit:
    """Standardised training and validation rows of a ``VotingData`` (``mask``: training rows)."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    mask: Tensor


def split_and_standardise(data: VotingData, p_train: float = 0.2, seed: int = 0) -> VotingSplit:
    """Rows with ``RandomState(seed).binomial(1, p_train, N) == 1`` train (the reference's
    ``np.random.seed(0); np.random.binomial(1, 0.2, n)``), the rest validate; the continuous
    columns are centred and scaled by the training mean and std (ddof 0)."""
    if not 0 < p_train < 1:
        raise ValueError(f"p_train must be in (0, 1), got {p_train}")
    n = data.x.shape[0]
    mask = torch.as_tensor(np.random.RandomState(seed).binomial(1, p_train, n) == 1)
    if int(mask.sum()) < 2 or int((~mask).sum()) < 1:
        raise ValueError(f"the split of {n} rows left too few training or validation rows")
    x = data.x.clone()
    for j in data.continuous:
        col = x[mask, j]
        std = col.std(unbiased=False)
        x[:, j] = (x[:, j] - col.mean()) / torch.where(std > 0, std, torch.ones_like(std))
    return VotingSplit(x[mask], data.y[mask], x[~mask], data.y[~mask], mask)


def synthetic_truth(num_features: int, num_classes: int, seed: int = 0) -> dict[str, Tensor]:
    """Coefficients of the synthetic Mixed Dirichlet GLM, drawn once from ``seed``.

    Face scores ``s = x W_s + b_s`` (covariates in ``FEATURES`` order), with the structure of the
    real data: the second-to-last class (a regional party) strongly negative (s = −6) outside
    Scotland, the first three classes strongly negative in Northern Ireland, the last
    class (remainder) always positive; the third class moderately positive (a few random
    zeros). Concentrations ``α = exp(x W_a + b_a)``: moderate random slopes around a common level.
    """
    if num_classes != 5 or num_features != len(FEATURES):
        raise ValueError(
            f"the synthetic voting model has K = 5 classes and {len(FEATURES)} covariates, got "
            f"num_classes={num_classes}, num_features={num_features}"
        )
    gen = torch.Generator().manual_seed(seed)
    k = num_classes
    w_s = 0.3 * torch.randn(num_features, k, generator=gen, dtype=torch.float64)
    b_s = torch.tensor([2.5, 2.5, 0.8, -6.0, 4.0], dtype=torch.float64)
    w_s[3:, :] = 0.0  # country effects only where the structure puts them
    w_s[FEATURES.index("Scotland"), 3] = 12.0  # regional party stands only in the second country
    w_s[FEATURES.index("Northern Ireland"), :3] = -9.0  # national parties absent in the fourth
    w_a = 0.3 * torch.randn(num_features, k, generator=gen, dtype=torch.float64)
    b_a = 1.5 + 0.5 * torch.randn(k, generator=gen, dtype=torch.float64)
    return {"face_weight": w_s, "face_bias": b_s, "conc_weight": w_a, "conc_bias": b_a}


def synthetic_voting(
    n: int = 650, num_classes: int = 5, seed: int = 0, data_seed: int | None = None
) -> VotingData:
    """Synthetic shares from a known Mixed Dirichlet GLM (``synthetic_truth(seed)``).

    Covariates (``FEATURES`` order): two independent N(0, 1) columns (standing for electorate
    and turnout), a borough indicator ~ Bernoulli(0.4), and a country with 533/59/40/18 rows for
    England/Scotland/Wales/Northern Ireland (scaled to ``n``; England the baseline). Targets:
    per row a face ``f ~ NonEmptyFaces(s)`` then ``y_f ~ Dir(α_f)``, so every exact zero is a
    genuine face.
    About 23% of the entries are zero. ``data_seed`` (default ``seed``) seeds the covariates and
    the draws.
    """
    from latentgrad.distributions import MixedDirichlet

    if n < 4:
        raise ValueError(f"n must be >= 4, got {n}")
    truth = synthetic_truth(len(FEATURES), num_classes, seed)
    gen = torch.Generator().manual_seed(seed if data_seed is None else data_seed)
    total = sum(SYNTHETIC_COUNTRY_ROWS.values())
    counts = [round(n * c / total) for c in list(SYNTHETIC_COUNTRY_ROWS.values())[1:]]
    counts = [n - sum(counts), *counts]
    country = torch.repeat_interleave(torch.arange(4), torch.tensor(counts))
    country = country[torch.randperm(n, generator=gen)]
    x = torch.zeros(n, len(FEATURES), dtype=torch.float64)
    x[:, :2] = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    x[:, 2] = torch.bernoulli(torch.full((n,), 0.4, dtype=torch.float64), generator=gen)
    for c, name in enumerate(list(SYNTHETIC_COUNTRY_ROWS)[1:], start=1):
        x[:, FEATURES.index(name)] = (country == c).to(torch.float64)
    scores = x @ truth["face_weight"] + truth["face_bias"]
    alpha = torch.exp(x @ truth["conc_weight"] + truth["conc_bias"])
    state = torch.get_rng_state()
    try:  # the library samplers use the global generator: seed it, then restore it
        torch.manual_seed(int(torch.randint(2**62, (), generator=gen)))
        y = MixedDirichlet(scores, alpha).sample()
    finally:
        torch.set_rng_state(state)
    classes = (*(f"party{i + 1}" for i in range(num_classes - 1)), "remainder")
    return VotingData(x, y, FEATURES, classes, (0, 1), truth)


def _sheet_rows(workbook: Any, sheet: str, columns: tuple[str, ...], file: Path) -> list[tuple]:
    """The values of ``columns`` in every data row of ``sheet`` (header: first non-empty row)."""
    if sheet not in workbook.sheetnames:
        raise DataError(f"{file}: no sheet {sheet!r} (found {workbook.sheetnames})")
    rows = workbook[sheet].iter_rows(values_only=True)
    header = next((r for r in rows if any(v is not None for v in r)), None)
    names = [str(v).strip() if v is not None else "" for v in (header or ())]
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{file}: sheet {sheet!r} lacks the column(s) {missing}; found {names}")
    idx = [names.index(c) for c in columns]
    return [tuple(r[i] for i in idx) for r in rows if r[idx[0]] is not None]


def load_election_xlsx(
    path: str | os.PathLike[str] | None = None, num_classes: int = 5
) -> VotingData:
    """The 2019 results table (module docstring), rows sorted by constituency name.

    ``path``: the ``.xlsx`` file, or a folder holding ``general-election-results-2019.xlsx``
    (default: ``$LATENTGRAD_DATA/election/``). Classes: the ``num_classes − 1`` parties
    with the largest summed share, then ``remainder``.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    file = Path(path) if path is not None else dataset_dir("election")
    if file.suffix != ".xlsx":
        file = require_file(file, ELECTION_FILE, "election", "election")
    elif not file.is_file():
        raise FileNotFoundError(f"election: no file {file.resolve()}")
    verify_checksum(file)
    try:
        import openpyxl
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading the election spreadsheet needs openpyxl "
            "(pip install 'latentgrad[experiments]')"
        ) from err
    workbook = openpyxl.load_workbook(file, read_only=True, data_only=True)
    try:
        full = _sheet_rows(workbook, FULL_SHEET, ("constituency_name", "party_name", "share"), file)
        summary = _sheet_rows(
            workbook,
            SUMMARY_SHEET,
            ("constituency_name", "country_name", "constituency_type", *CONTINUOUS),
            file,
        )
    finally:
        workbook.close()
    try:
        return _election_data(full, summary, num_classes, file)
    except DataError:
        raise
    except (ValueError, TypeError) as err:  # a cell that is not a number
        raise DataError(f"{file}: a cell holds no usable value ({err})") from None


def _election_data(full: list[tuple], summary: list[tuple], num_classes: int,
                   file: Path) -> VotingData:
    """``VotingData`` from the rows of the two sheets (``load_election_xlsx``)."""
    names = sorted({str(r[0]) for r in summary})
    row_of = {c: i for i, c in enumerate(names)}
    totals: dict[str, float] = {}
    for _, party, share in full:
        totals[str(party)] = totals.get(str(party), 0.0) + float(share or 0.0)
    parties = sorted(totals, key=lambda p: -totals[p])[: num_classes - 1]
    col_of = {p: j for j, p in enumerate(parties)}
    y = torch.zeros(len(names), num_classes, dtype=torch.float64)
    for constituency, party, share in full:
        if str(constituency) not in row_of:
            raise DataError(
                f"{file}: constituency {constituency!r} of {FULL_SHEET!r} is not in "
                f"{SUMMARY_SHEET!r}"
            )
        y[row_of[str(constituency)], col_of.get(str(party), num_classes - 1)] += float(share or 0)
    sums = y.sum(-1, keepdim=True)
    if bool((sums <= 0).any()):
        raise DataError(f"{file}: some constituencies have no positive vote share")
    x = torch.zeros(len(names), len(FEATURES), dtype=torch.float64)
    seen = set()
    for constituency, country, kind, electorate, turnout in summary:
        i = row_of[str(constituency)]
        if i in seen:
            continue
        seen.add(i)
        if country not in COUNTRIES:
            raise DataError(f"{file}: unknown country_name {country!r}; expected {COUNTRIES}")
        x[i, 0], x[i, 1] = float(electorate), float(turnout)
        x[i, 2] = float(str(kind).strip().lower() == "borough")
        if country != COUNTRIES[0]:
            x[i, FEATURES.index(str(country))] = 1.0
    return VotingData(x, y / sums, FEATURES, (*parties, "remainder"), (0, 1))
