"""Generated reviews (the offline BeerAdvocate substitute): the documented layout, one annotated
phrase per review that names the aspect and carries its rating, deterministic from the seed."""

from __future__ import annotations

import numpy as np
import pytest

from latentgrad.experiments.data import reviews
from latentgrad.experiments.data.reviews import generated_reviews


def _vocab(dim: int = 16):
    return reviews._vocabulary(dim, np.random.RandomState(0))[0]


def test_layout_sizes_and_determinism() -> None:
    splits, emb = generated_reviews((30, 5, 7), seed=3, aspect=1, max_length=60, dim=16)
    assert [len(splits[s]["rating"]) for s in ("train", "valid", "test")] == [30, 5, 7]
    test = splits["test"]
    assert test["tokens"].shape == (7, 60) and test["relevant"].shape == (7, 60)
    assert test["tokens"].dtype == np.int64 and test["relevant"].dtype == bool
    assert emb.shape[1] == 16 and (emb[0] == 0).all()
    assert ((test["rating"] >= 0) & (test["rating"] <= 1)).all()
    for split in splits.values():
        pad = np.arange(60) >= split["lengths"][:, None]
        assert (split["tokens"][pad] == 0).all() and (split["tokens"][~pad] >= 2).all()
    again, emb2 = generated_reviews((30, 5, 7), seed=3, aspect=1, max_length=60, dim=16)
    assert np.array_equal(emb, emb2)
    assert all(np.array_equal(again["train"][k], splits["train"][k]) for k in again["train"])
    other, _ = generated_reviews((30, 5, 7), seed=4, aspect=1, max_length=60, dim=16)
    assert not np.array_equal(other["train"]["tokens"], splits["train"]["tokens"])


@pytest.mark.parametrize("aspect", [0, 1, 2])
def test_the_relevant_phrase_is_the_aspects_sentence_and_carries_its_rating(aspect: int) -> None:
    splits, _ = generated_reviews((200, 1, 1), seed=0, aspect=aspect, max_length=80, dim=16)
    ids = _vocab()  # the same ids for any seed and dim
    train = splits["train"]
    levels = []
    for tokens, relevant, rating in zip(train["tokens"], train["relevant"], train["rating"]):
        span = np.flatnonzero(relevant)
        assert span.size and (np.diff(span) == 1).all()  # one contiguous phrase
        words = tokens[span]
        assert np.isin(words, ids["noun"][aspect]).sum() == 1
        assert not np.isin(tokens[~relevant], ids["noun"][aspect]).any()
        assert words[-1] == ids["stop"][0]
        level_of = {int(w): lvl for lvl, row in enumerate(ids["sentiment"]) for w in row}
        sentiment = [level_of[int(w)] for w in words if int(w) in level_of]
        assert 1 <= len(sentiment) <= 2
        levels.append((sentiment[0], round(4 * float(rating))))
    got, want = np.array(levels).T
    assert (np.abs(got - want) <= 1).all() and (got == want).mean() > 0.8


def test_ratings_are_correlated_across_aspects_and_sentiment_is_linear_in_the_vectors() -> None:
    a, _ = generated_reviews((2000, 1, 1), seed=0, aspect=0, max_length=80, dim=16)
    b, _ = generated_reviews((2000, 1, 1), seed=0, aspect=2, max_length=80, dim=16)
    r = np.corrcoef(a["train"]["rating"], b["train"]["rating"])[0, 1]
    assert 0.5 < r < 0.95  # related aspects, but the other aspect's words do not tell it exactly
    ids, emb = reviews._vocabulary(64, np.random.RandomState(0))
    means = emb[ids["sentiment"]].mean(1)  # (levels, dim)
    projected = means @ (means[-1] - means[0])
    assert (np.diff(projected) > 0).all()  # one direction orders the five levels


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="aspect"):
        generated_reviews((2, 2, 2), 0, aspect=3)
    with pytest.raises(ValueError, match="sizes"):
        generated_reviews((2, 0, 2), 0)
    with pytest.raises(ValueError, match="max_length"):
        generated_reviews((2, 2, 2), 0, max_length=0)
