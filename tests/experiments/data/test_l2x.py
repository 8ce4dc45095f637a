"""L2X data: the Chen et al. 2018 synthetic sets have the documented labels and relevant
features; the BeerAdvocate loader reads the Lei et al. 2016 layout."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from latentgrad.experiments.data.files import DataError
from latentgrad.experiments.data.l2x import DATASETS, load_beer, synthetic_l2x


def _p1(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(a))


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_shapes_soft_labels_determinism_and_k(dataset: str) -> None:
    d = synthetic_l2x(dataset, 400, seed=0)
    assert d["x"].shape == (400, 10) and d["probs"].shape == (400, 2)
    np.testing.assert_allclose(d["probs"].sum(1), 1.0, atol=1e-6)
    assert (d["relevant"].sum(1) == DATASETS[dataset]).all()
    again = synthetic_l2x(dataset, 400, seed=0)
    assert all(np.array_equal(d[k], again[k]) for k in d)
    assert not np.array_equal(d["x"], synthetic_l2x(dataset, 400, seed=1)["x"])


def test_labels_follow_the_documented_formulas_on_the_relevant_features() -> None:
    x = np.random.RandomState(0).randn(300, 10)  # the original's stream: legacy randn
    d = synthetic_l2x("xor", 300, seed=0)
    np.testing.assert_allclose(d["x"], x.astype(np.float32))
    np.testing.assert_allclose(d["probs"][:, 1], _p1(x[:, 0] * x[:, 1]), rtol=1e-5, atol=1e-7)
    d = synthetic_l2x("orange_skin", 300, seed=0)
    want = _p1((x[:, :4] ** 2).sum(1) - 4)
    np.testing.assert_allclose(d["probs"][:, 1], want, rtol=1e-5, atol=1e-7)
    d = synthetic_l2x("nonlinear_additive", 300, seed=0)
    a = -100 * np.sin(0.2 * x[:, 0]) + np.abs(x[:, 1]) + x[:, 2] + np.exp(-x[:, 3]) - 2.4
    np.testing.assert_allclose(d["probs"][:, 1], _p1(a), rtol=1e-5, atol=1e-7)
    assert set(np.flatnonzero(d["relevant"][0])) == {0, 1, 2, 3}


def test_switch_labels_depend_only_on_each_rows_relevant_features() -> None:
    d = synthetic_l2x("switch", 2000, seed=3)
    x, p1, rel = d["x"].astype(np.float64), d["probs"][:, 1], d["relevant"]
    orange = rel[:, 0]
    assert orange.sum() == 1000 and (rel[:, 9]).all()
    assert (x[orange, 9].mean() > 2) and (x[~orange, 9].mean() < -2)  # the mixture's shift
    want = _p1((x[orange, :4] ** 2).sum(1) - 4)
    np.testing.assert_allclose(p1[orange], want, rtol=1e-4, atol=1e-6)
    xa = x[~orange][:, 4:8]  # additive rows: their key features now sit in 5-8
    a = -100 * np.sin(0.2 * xa[:, 0]) + np.abs(xa[:, 1]) + xa[:, 2] + np.exp(-xa[:, 3]) - 2.4
    np.testing.assert_allclose(p1[~orange], _p1(a), rtol=1e-4, atol=1e-6)
    assert not np.allclose(x[~orange][:, :4], xa)  # a real swap, not a duplicate


def test_legacy_swap_duplicates_features_one_to_four() -> None:
    d = synthetic_l2x("switch", 200, seed=0, legacy_swap=True)
    add = ~d["relevant"][:, 0]
    np.testing.assert_array_equal(d["x"][add][:, :4], d["x"][add][:, 4:8])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dataset must be one of"):
        synthetic_l2x("moons", 10, 0)
    with pytest.raises(ValueError, match="n must be"):
        synthetic_l2x("xor", 1, 0)


def _write_beer(folder: Path) -> None:
    folder.mkdir()
    with gzip.open(folder / "review+wiki.filtered.200.txt.gz", "wt") as fh:
        fh.write("great 1 0 0\nsmell 0 1 0\nhoppy 0 0 1\n")
    train = "0.6 0.8 0.2 0.4 0.5\tgreat hoppy smell\n0.1 0.3 0.5 0.7 0.9\tmeh smell\n"
    (folder / "reviews.aspect1.train.txt").write_text(train)
    (folder / "reviews.aspect1.heldout.txt").write_text("0.5 0.5 0.5 0.5 0.5\tsmell\n")
    record = {"x": ["great", "smell", "hoppy", "meh"], "y": [0.2, 0.9, 0.4], "0": [[0, 1]],
              "1": [[1, 3]], "2": []}
    (folder / "annotations.json").write_text(json.dumps(record) + "\n")


def test_beer_loader_reads_the_lei_et_al_layout(tmp_path: Path) -> None:
    _write_beer(tmp_path / "beer")
    splits, emb = load_beer(tmp_path / "beer", aspect=1, max_length=3)
    assert emb.shape == (5, 3)  # pad, UNK, three words
    np.testing.assert_allclose(emb[1], [1 / 3, 1 / 3, 1 / 3])
    train = splits["train"]
    assert train["tokens"].tolist() == [[2, 4, 3], [1, 3, 0]]
    assert train["lengths"].tolist() == [3, 2]
    np.testing.assert_allclose(train["rating"], [0.8, 0.3])
    test = splits["test"]
    assert test["relevant"].tolist() == [[False, True, True]]  # span [1, 3) of aspect 1
    np.testing.assert_allclose(test["rating"], [0.9])
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        load_beer(tmp_path / "missing")
    with pytest.raises(ValueError, match="aspect"):
        load_beer(tmp_path / "beer", aspect=4)


@pytest.mark.parametrize(("name", "line", "expected"), [
    ("reviews.aspect1.heldout.txt", "0.5\tsmell", "heldout.txt:1: expected '<ratings><TAB>"),
    ("reviews.aspect1.heldout.txt", "0.5 high 0.5\tsmell", "heldout.txt:1: expected '<ratings>"),
    ("reviews.aspect1.train.txt", "0.5 0.5 0.5 smell", "train.txt:1: expected '<ratings><TAB>"),
    ("annotations.json", '{"x": ["a"], "y": [1, 2, 3], "1": [[0]]}', "annotations.json:1: "),
    ("annotations.json", '{"x": ["a"], "y": [1, "?", 3], "1": []}', "annotations.json:1: "),
    ("annotations.json", "[1, 2]", "annotations.json:1: expected a JSON object"),
])
def test_beer_format_errors_name_the_file_and_line(tmp_path: Path, name: str, line: str,
                                                   expected: str) -> None:
    folder = tmp_path / "beer"
    _write_beer(folder)
    (folder / name).write_text(line + "\n")
    with pytest.raises(DataError, match=re.escape(expected)):
        load_beer(folder, aspect=1, max_length=3)


def test_beer_embedding_format_errors_are_data_errors(tmp_path: Path) -> None:
    folder = tmp_path / "beer"
    _write_beer(folder)
    file = folder / "review+wiki.filtered.200.txt.gz"
    for text, expected in (("great 1 x 0\n", f"{file}:1: expected 'word v1 ... vD'"),
                           ("great 1 0\nsmell 0\n", f"{file}: every line needs the same")):
        with gzip.open(file, "wt") as fh:
            fh.write(text)
        with pytest.raises(DataError, match=re.escape(expected)):
            load_beer(folder, aspect=1, max_length=3)


@pytest.mark.parametrize(
    "name", ["review+wiki.filtered.200.txt.gz", "reviews.aspect1.heldout.txt", "annotations.json"]
)
def test_beer_files_are_checked_against_sha256sums(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "beer"
    _write_beer(folder)
    (folder / "SHA256SUMS").write_text(f"{'0' * 64}  {name}\n")
    with pytest.raises(DataError, match=re.escape(f"checksum mismatch for {folder / name}")):
        load_beer(folder, aspect=1, max_length=3)
