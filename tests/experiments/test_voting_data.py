"""Voting data: the synthetic Mixed Dirichlet set, the reference split and the xlsx loader."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from latentgrad.experiments.data.files import DataError
from latentgrad.experiments.data.voting import (
    FEATURES,
    load_election_xlsx,
    split_and_standardise,
    synthetic_voting,
)


def test_synthetic_set_has_the_shape_of_the_election_table() -> None:
    d = synthetic_voting()
    assert d.x.shape == (650, len(FEATURES)) and d.y.shape == (650, 5)
    assert torch.allclose(d.y.sum(-1), torch.ones(650, dtype=torch.float64), atol=1e-12)
    assert bool((d.y >= 0).all())
    zeros = float((d.y == 0).double().mean())
    assert 0.20 <= zeros <= 0.27  # about 23% exact zeros, as in the 2019 table
    counts = d.x[:, 3:].sum(0).tolist()  # Northern Ireland, Scotland, Wales dummies
    assert counts == [18.0, 59.0, 40.0]


def test_synthetic_zeros_follow_the_regional_structure() -> None:
    d = synthetic_voting()
    scotland = d.x[:, FEATURES.index("Scotland")] == 1
    ni = d.x[:, FEATURES.index("Northern Ireland")] == 1
    # the regional party stands (almost) only in Scotland, national parties not in N. Ireland
    assert float((d.y[~scotland, 3] == 0).double().mean()) > 0.99
    assert float((d.y[scotland, 3] > 0).double().mean()) > 0.9
    assert bool((d.y[ni, :3] == 0).all())
    assert float((d.y[:, 4] > 0).double().mean()) > 0.99  # the remainder is always there


def test_synthetic_set_is_reproducible_and_seeded() -> None:
    a, b = synthetic_voting(seed=0), synthetic_voting(seed=0)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    c = synthetic_voting(seed=0, data_seed=1)
    assert torch.equal(a.truth["conc_weight"], c.truth["conc_weight"])
    assert not torch.equal(a.y, c.y)
    state = torch.get_rng_state()
    synthetic_voting()
    assert torch.equal(state, torch.get_rng_state())  # the global generator is left alone


def test_split_is_the_reference_bernoulli_draw_and_standardises_on_training_rows() -> None:
    d = synthetic_voting()
    s = split_and_standardise(d)
    np.random.seed(0)  # noqa: NPY002 - the reference's exact calls
    expected = np.random.binomial(1, 0.2, 650) == 1  # noqa: NPY002
    assert s.mask.tolist() == expected.tolist()
    assert s.x_train.shape[0] == int(expected.sum())
    mean, std = s.x_train[:, :2].mean(0), s.x_train[:, :2].std(0, unbiased=False)
    assert torch.allclose(mean, torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(std, torch.ones(2, dtype=torch.float64), atol=1e-12)
    assert torch.equal(s.x_val[:, 2:], d.x[~s.mask, 2:])  # dummies untouched


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="p_train"):
        split_and_standardise(synthetic_voting(), p_train=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        synthetic_voting(num_classes=4)


def _write_workbook(path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    full = wb.active
    full.title = "voting-full"
    full.append(["constituency_name", "party_name", "share", "votes"])
    rows = [
        ("Bravo", "Con", 0.5), ("Bravo", "Lab", 0.3), ("Bravo", "LD", 0.1), ("Bravo", "Grn", 0.1),
        ("Alpha", "Con", 0.2), ("Alpha", "Lab", 0.6), ("Alpha", "SNP", 0.2),
        ("Charlie", "Lab", 0.7), ("Charlie", "Ind", 0.3),
    ]
    for name, party, share in rows:
        full.append([name, party, share, 1])
    summary = wb.create_sheet("voting-summary")
    summary.append(["constituency_name", "country_name", "constituency_type", "electorate",
                    "turnout_2017"])
    summary.append(["Bravo", "England", "County", 70000, 0.7])
    summary.append(["Alpha", "Scotland", "Borough", 60000, 0.6])
    summary.append(["Charlie", "Wales", "Borough", 50000, 0.65])
    wb.save(path)


def test_election_loader_reads_both_sheets(tmp_path: Path) -> None:
    file = tmp_path / "general-election-results-2019.xlsx"
    _write_workbook(file)
    d = load_election_xlsx(tmp_path, num_classes=3)  # a folder holding the file
    assert d.classes == ("Lab", "Con", "remainder")  # summed shares 1.6, 0.7
    assert d.features == FEATURES
    expected_y = [[0.6, 0.2, 0.2], [0.3, 0.5, 0.2], [0.7, 0.0, 0.3]]  # rows sorted by name
    assert torch.allclose(d.y, torch.tensor(expected_y, dtype=torch.float64))
    expected_x = [
        [60000, 0.6, 1, 0, 1, 0],
        [70000, 0.7, 0, 0, 0, 0],
        [50000, 0.65, 1, 0, 0, 1],
    ]
    assert torch.allclose(d.x, torch.tensor(expected_x, dtype=torch.float64))
    assert torch.equal(load_election_xlsx(file, num_classes=3).y, d.y)


def test_election_loader_names_missing_things(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape("general-election-results-2019.xlsx")):
        load_election_xlsx(tmp_path)
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    wb.active.title = "voting-full"
    wb.active.append(["constituency_name", "party_name"])
    wb.create_sheet("voting-summary")
    file = tmp_path / "t.xlsx"
    wb.save(file)
    with pytest.raises(DataError, match=re.escape(f"{file}: sheet 'voting-full' lacks the "
                                                  "column(s) ['share']")):
        load_election_xlsx(file)


@pytest.mark.parametrize(("sheet", "row", "column", "value", "expected"), [
    ("voting-full", 2, 3, "half", "a cell holds no usable value"),
    ("voting-summary", 3, 2, "Atlantis", "unknown country_name 'Atlantis'"),
    ("voting-full", 2, 1, "Zulu", "constituency 'Zulu' of 'voting-full' is not in"),
])
def test_election_format_errors_name_the_file(tmp_path: Path, sheet: str, row: int, column: int,
                                               value: str, expected: str) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    file = tmp_path / "general-election-results-2019.xlsx"
    _write_workbook(file)
    wb = openpyxl.load_workbook(file)
    wb[sheet].cell(row=row, column=column, value=value)
    wb.save(file)
    with pytest.raises(DataError, match=re.escape(f"{file}: ") + ".*" + re.escape(expected)):
        load_election_xlsx(file)


def test_election_file_is_checked_against_sha256sums(tmp_path: Path) -> None:
    file = tmp_path / "general-election-results-2019.xlsx"
    _write_workbook(file)
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  {file.name}\n")
    for path in (tmp_path, file):
        with pytest.raises(DataError, match=f"checksum mismatch for {file}"):
            load_election_xlsx(path)
