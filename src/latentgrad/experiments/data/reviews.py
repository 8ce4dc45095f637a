"""Generated beer reviews: the offline substitute for the BeerAdvocate aspect task of Paulus et al.
2020 (§5.2), in the arrays of ``l2x.load_beer``. Results on it are labelled ``beer-substitute``
and are never compared with the paper's numbers.

Each review rates five aspects (0 appearance, 1 aroma, 2 palate, 3 taste, 4 overall, the order
of the BeerAdvocate files), independently: ``r_a ~ U(0, 1)`` rounded to tenths. Real aspect
ratings are strongly correlated, which is why the paper's data are the decorrelated subsets of
Lei et al. 2016; independent ratings are the decorrelated case taken to its end, so that only
the aspect's own words predict its rating. The review is one sentence per aspect in random order,
two or three clauses and a full stop:
``([filler]{0..1} head_a [filler]{0..1} sentiment [sentiment]{0..1})+ [filler]{0..1} "."``,
where ``head_a`` is one of the aspect's nouns in the first clause and one of its descriptors
(neutral aspect words, such as "citrus" for aroma) in the others, and each sentiment word comes
from the level ``round(4 r_a)`` of five levels (one level off with probability 0.1). Sentiment
words and fillers are shared by all aspects, so only the aspect word in front of a sentiment
word says which aspect it is about, and the words that explain aspect ``a``'s rating form one
contiguous phrase: the annotated ``relevant`` span of the aspect's sentence (every split carries
it; about 10 of a review's 51 tokens, at most 68 in all).

Word vectors ``(V, dim)``: id 0 pads (zeros), id 1 is ``UNK`` (unused), then every word a random
direction ``N(0, I / dim)``; sentiment words of level ``l`` add ``(l / 2 - 1) v`` for one fixed
unit vector ``v``, so the mean vector of selected words predicts a rating only when the selected
sentiment words are the aspect's own.
"""

from __future__ import annotations

import numpy as np

ASPECTS = 5
NOUNS_PER_ASPECT = 6
DESCRIPTORS_PER_ASPECT = 10
LEVELS = 5
WORDS_PER_LEVEL = 6
FILLERS = 40
SPLITS = ("train", "valid", "test")


def _vocabulary(dim: int, rng: np.random.RandomState) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Word ids by kind (``noun`` ``(ASPECTS, NOUNS)``, ``descriptor`` ``(ASPECTS,
    DESCRIPTORS)``, ``sentiment`` ``(LEVELS, WORDS)``, ``filler`` ``(FILLERS,)``, ``stop``) and
    the embedding matrix (module docstring)."""
    sizes = {
        "noun": (ASPECTS, NOUNS_PER_ASPECT),
        "descriptor": (ASPECTS, DESCRIPTORS_PER_ASPECT),
        "sentiment": (LEVELS, WORDS_PER_LEVEL),
        "filler": (FILLERS,),
        "stop": (1,),
    }
    ids, next_id = {}, 2
    for kind, shape in sizes.items():
        count = int(np.prod(shape))
        ids[kind] = np.arange(next_id, next_id + count).reshape(shape)
        next_id += count
    matrix = (rng.randn(next_id, dim) / np.sqrt(dim)).astype(np.float32)
    matrix[:2] = 0.0
    direction = rng.randn(dim)
    direction /= np.linalg.norm(direction)
    polarity = np.arange(LEVELS) / 2.0 - 1.0  # -1 .. 1
    matrix[ids["sentiment"]] += (polarity[:, None, None] * direction).astype(np.float32)
    return ids, matrix


def _sentence(
    aspect: int, rating: float, ids: dict[str, np.ndarray], rng: np.random.RandomState
) -> list[int]:
    def fillers() -> list[int]:
        return list(rng.choice(ids["filler"], size=rng.randint(2)))

    def sentiment() -> list[int]:
        level = round(rating * (LEVELS - 1))
        if rng.rand() < 0.1:
            level = int(np.clip(level + rng.choice([-1, 1]), 0, LEVELS - 1))
        return [int(rng.choice(ids["sentiment"][level]))]

    words: list[int] = []
    for clause in range(2 + rng.randint(2)):
        head = ids["noun" if clause == 0 else "descriptor"][aspect]
        words += [*fillers(), int(rng.choice(head)), *fillers(), *sentiment()]
        if rng.rand() < 0.5:
            words += sentiment()
    return [*words, *fillers(), int(ids["stop"][0])]


def _reviews(
    n: int, aspect: int, max_length: int, ids: dict[str, np.ndarray], rng: np.random.RandomState
) -> dict[str, np.ndarray]:
    ratings = np.round(rng.rand(n, ASPECTS), 1)
    tokens = np.zeros((n, max_length), dtype=np.int64)
    relevant = np.zeros((n, max_length), dtype=bool)
    lengths = np.zeros(n, dtype=np.int64)
    for row in range(n):
        position = 0
        for a in rng.permutation(ASPECTS):
            words = _sentence(int(a), float(ratings[row, a]), ids, rng)
            end = min(position + len(words), max_length)
            tokens[row, position:end] = words[: end - position]
            relevant[row, position:end] = a == aspect
            position = end
        lengths[row] = position
    return {
        "tokens": tokens,
        "lengths": lengths,
        "rating": ratings[:, aspect].astype(np.float32),
        "relevant": relevant,
    }
def generated_reviews(
    sizes: tuple[int, int, int],
    seed: int,
    aspect: int = 1,
    max_length: int = 350,
    dim: int = 200,
) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """Train/valid/test reviews (``sizes``) rated on ``aspect`` and the word vectors, from
    ``seed``: per split ``tokens`` ``(N, max_length)`` int64 (0 pads), ``lengths`` ``(N,)``,
    ``rating`` ``(N,)`` float32 in [0, 1], ``relevant`` ``(N, max_length)`` bool; embeddings
    ``(V, dim)`` float32 (module docstring). Reviews longer than ``max_length`` are cut."""
    if aspect not in (0, 1, 2):
        raise ValueError(f"aspect must be 0, 1 or 2 (the annotated aspects), got {aspect}")
    if len(sizes) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                               for s in sizes):
        raise ValueError(f"sizes must be three ints >= 1 (train, valid, test), got {sizes!r}")
    for name, value in (("max_length", max_length), ("dim", dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    rng = np.random.RandomState(seed)
    ids, matrix = _vocabulary(dim, rng)
    splits = {name: _reviews(n, aspect, max_length, ids, rng) for name, n in zip(SPLITS, sizes)}
    return splits, matrix
