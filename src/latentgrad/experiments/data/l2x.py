"""Data for learning to explain (Chen et al. 2018; Paulus et al. 2020, §5.2).

Synthetic sets of Chen et al. 2018 (``synthetic_l2x``): ``x ~ N(0, I_10)`` (numpy's legacy
``RandomState(seed).randn``, as the original) and soft labels ``(P(y=0), P(y=1))`` with
``P(y=1 | x) = 1 / (1 + e^{a(x)})``:

- ``xor``: ``a = x1 x2``; relevant features {1, 2}, k = 2.
- ``orange_skin``: ``a = Σ_{i<=4} x_i² - 4``; relevant {1..4}, k = 4.
- ``nonlinear_additive``: ``a = -100 sin(0.2 x1) + |x2| + x3 + e^{-x4} - 2.4``; relevant {1..4}.
- ``switch``: the first half of the rows get ``x10 += 3`` and orange-skin labels, the second half
  ``x10 -= 3`` and additive labels on features 1-4, whose features 1-4 and 5-8 are then swapped;
  rows are permuted. Relevant: {1..4, 10} on orange-skin rows, {5..8, 10} on the others; k = 5.
  The original swapped through numpy views, which copies 1-4 into 5-8 and leaves 1-4 as they
  were; ``legacy_swap=True`` reproduces that (the relevant sets stay the documented ones).

Features are numbered from 1 above; arrays index them from 0. Arrays: ``x`` ``(N, 10)`` float32,
``probs`` ``(N, 2)`` float32, ``relevant`` ``(N, 10)`` bool.

BeerAdvocate reviews in the layout of Lei et al. 2016 (``load_beer``; nothing is downloaded):
``reviews.aspect<a>.train.txt[.gz]`` and ``reviews.aspect<a>.heldout.txt[.gz]`` with one review
per line, ``r0 r1 r2 r3 r4<TAB>tokens``; ``annotations.json`` with one JSON object per line,
``{"x": tokens, "y": ratings, "0": spans, "1": spans, "2": spans}`` (aspect 0 appearance, 1
aroma, 2 palate; spans ``[start, end)`` over tokens), the annotated test set; and word vectors
``review+wiki.filtered.200.txt[.gz]`` (``word v1 ... vD`` per line). Reviews are cut to
``max_length`` tokens; words without a vector map to ``UNK`` (id 1; id 0 pads).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from latentgrad.experiments.data.files import DataError, require_file, verify_checksum

DATASETS = {"xor": 2, "orange_skin": 4, "nonlinear_additive": 4, "switch": 5}
NUM_FEATURES = 10


def _probs(a: np.ndarray) -> np.ndarray:
    """``(P(y=0), P(y=1)) = (e^a / (1 + e^a), 1 / (1 + e^a))``, computed stably."""
    p1 = 1.0 / (1.0 + np.exp(np.clip(a, -700, 700)))
    return np.stack([1.0 - p1, p1], axis=1)


def _orange(x: np.ndarray) -> np.ndarray:
    return _probs((x[:, :4] ** 2).sum(1) - 4.0)


def _additive(x: np.ndarray) -> np.ndarray:
    a = -100 * np.sin(0.2 * x[:, 0]) + np.abs(x[:, 1]) + x[:, 2] + np.exp(-x[:, 3]) - 2.4
    return _probs(a)


def synthetic_l2x(
    dataset: str, n: int, seed: int, legacy_swap: bool = False
) -> dict[str, np.ndarray]:
    """``n`` rows of a Chen et al. 2018 set (module docstring) from ``seed``."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    rng = np.random.RandomState(seed)
    x = rng.randn(n, NUM_FEATURES)
    relevant = np.zeros((n, NUM_FEATURES), dtype=bool)
    if dataset == "xor":
        probs = _probs(x[:, 0] * x[:, 1])
        relevant[:, :2] = True
    elif dataset == "orange_skin":
        probs = _orange(x)
        relevant[:, :4] = True
    elif dataset == "nonlinear_additive":
        probs = _additive(x)
        relevant[:, :4] = True
    else:
        half = n // 2
        x[:half, -1] += 3
        x[half:, -1] -= 3
        probs = np.concatenate([_orange(x[:half]), _additive(x[half:])])
        second = x[half:]
        if legacy_swap:
            second[:, 4:8] = second[:, :4]
        else:
            second[:, [0, 1, 2, 3, 4, 5, 6, 7]] = second[:, [4, 5, 6, 7, 0, 1, 2, 3]]
        relevant[:half, [0, 1, 2, 3, 9]] = True
        relevant[half:, [4, 5, 6, 7, 9]] = True
        perm = rng.permutation(n)
        x, probs, relevant = x[perm], probs[perm], relevant[perm]
    return {
        "x": x.astype(np.float32),
        "probs": probs.astype(np.float32),
        "relevant": relevant,
    }


# ----------------------------------------------------------------------------------- reviews


def _lines(file: Path) -> list[str]:
    """Non-blank lines of ``file`` (gzip if named ``*.gz``), checked against a ``SHA256SUMS``
    beside it."""
    verify_checksum(file)
    opener = gzip.open if file.suffix == ".gz" else open
    with opener(file, "rt", encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh if line.strip()]


def _find(folder: Path, name: str) -> Path:
    for candidate in (name, f"{name}.gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    return require_file(folder, name, "BeerAdvocate", "beer")


def read_embeddings(file: Path) -> tuple[dict[str, int], np.ndarray]:
    """Word vectors -> (word -> id, matrix ``(V, D)``) with id 0 the padding (zeros) and 1 ``UNK``
    (the mean vector)."""
    words, vectors = [], []
    for lineno, line in enumerate(_lines(file), start=1):
        parts = line.split(" ")
        try:
            vectors.append([float(v) for v in parts[1:]])
        except ValueError:
            raise DataError(f"{file}:{lineno}: expected 'word v1 ... vD'") from None
        words.append(parts[0])
    dims = {len(v) for v in vectors}
    if len(dims) != 1 or 0 in dims:
        raise DataError(f"{file}: every line needs the same number (>= 1) of vector entries")
    matrix = np.asarray(vectors, dtype=np.float32)
    pad = np.zeros((1, matrix.shape[1]), np.float32)
    matrix = np.concatenate([pad, matrix.mean(0, keepdims=True), matrix])
    return {w: i + 2 for i, w in enumerate(words)}, matrix


def _encode(tokens: list[str], vocab: dict[str, int], max_length: int) -> list[int]:
    return [vocab.get(t, 1) for t in tokens[:max_length]]


def _pack(rows: list[list[int]], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(rows), max_length), dtype=np.int64)
    lengths = np.zeros(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        lengths[i] = len(row)
    return ids, lengths


def _reviews(file: Path, aspect: int, vocab: dict[str, int], max_length: int) -> dict:
    rows, ratings = [], []
    for lineno, line in enumerate(_lines(file), start=1):
        head, sep, text = line.partition("\t")
        scores = head.split()
        try:
            rating = float(scores[aspect])
        except (ValueError, IndexError):
            rating = None
        if not sep or not text.split() or rating is None:
            raise DataError(f"{file}:{lineno}: expected '<ratings><TAB><tokens>' with a "
                            f"number for aspect {aspect}")
        ratings.append(rating)
        rows.append(_encode(text.split(), vocab, max_length))
    ids, lengths = _pack(rows, max_length)
    return {"tokens": ids, "lengths": lengths, "rating": np.asarray(ratings, np.float32)}


def load_beer(
    folder: str | Path, aspect: int = 1, max_length: int = 350
) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """Train/valid (held-out) reviews and the annotated test reviews of one aspect, and the
    embedding matrix (module docstring). Test reviews carry ``relevant`` ``(N, max_length)``:
    tokens inside the aspect's annotated spans."""
    if aspect not in (0, 1, 2):
        raise ValueError(f"aspect must be 0, 1 or 2 (the annotated aspects), got {aspect}")
    folder = Path(folder)
    vocab, matrix = read_embeddings(_find(folder, "review+wiki.filtered.200.txt"))
    splits = {
        split: _reviews(
            _find(folder, f"reviews.aspect{aspect}.{name}.txt"), aspect, vocab, max_length
        )
        for split, name in (("train", "train"), ("valid", "heldout"))
    }
    rows, ratings, relevant = [], [], []
    file = _find(folder, "annotations.json")
    for lineno, line in enumerate(_lines(file), start=1):
        try:
            record = json.loads(line)
            tokens, score = [str(t) for t in record["x"]], float(record["y"][aspect])
            spans = [(int(start), int(end)) for start, end in record[str(aspect)]]
        except (ValueError, KeyError, IndexError, TypeError):
            msg = f"{file}:{lineno}: expected a JSON object with x, y and the aspect's spans"
            raise DataError(msg) from None
        rows.append(_encode(tokens, vocab, max_length))
        ratings.append(score)
        mask = np.zeros(max_length, dtype=bool)
        for start, end in spans:
            mask[max(start, 0) : min(end, max_length)] = True
        relevant.append(mask)
    ids, lengths = _pack(rows, max_length)
    splits["test"] = {
        "tokens": ids,
        "lengths": lengths,
        "rating": np.asarray(ratings, np.float32),
        "relevant": np.stack(relevant),
    }
    return splits, matrix
