"""Generated reviews (the offline BeerAdvocate substitute): the documented layout, one annotated
phrase per review that names the aspect and alone carries its rating (decorrelated aspects),
deterministic from the seed."""

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


def _levels(dim: int = 16) -> dict[int, int]:
    return {int(w): lvl for lvl, row in enumerate(_vocab(dim)["sentiment"]) for w in row}


@pytest.mark.parametrize("aspect", [0, 1, 2])
def test_the_relevant_phrase_is_the_aspects_sentence_and_carries_its_rating(aspect: int) -> None:
    splits, _ = generated_reviews((200, 1, 1), seed=0, aspect=aspect, max_length=80, dim=16)
    ids, level_of = _vocab(), _levels()  # the same ids for any seed and dim
    train = splits["train"]
    assert train["lengths"].max() <= 68  # never cut at max_length 80
    levels = []
    for tokens, relevant, rating in zip(train["tokens"], train["relevant"], train["rating"]):
        span = np.flatnonzero(relevant)
        assert span.size and (np.diff(span) == 1).all()  # one contiguous phrase
        words = tokens[span]
        assert np.isin(words, ids["noun"][aspect]).sum() == 1
        assert 1 <= np.isin(words, ids["descriptor"][aspect]).sum() <= 2  # 2 or 3 clauses
        aspect_words = np.r_[ids["noun"][aspect], ids["descriptor"][aspect]]
        assert not np.isin(tokens[~relevant], aspect_words).any()
        assert words[-1] == ids["stop"][0]
        sentiment = [level_of[int(w)] for w in words if int(w) in level_of]
        assert 2 <= len(sentiment) <= 6
        levels += [(lvl, round(4 * float(rating))) for lvl in sentiment]
    got, want = np.array(levels).T
    assert (np.abs(got - want) <= 1).all() and 0.85 < (got == want).mean() < 0.95  # 10% off


def _sentiment_mean(tokens: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Per review, the mean level of the sentiment words at ``where`` ``(N, L)``."""
    level_of = _levels()
    level = np.vectorize(lambda w: level_of.get(int(w), -1))(tokens)
    use = where & (level >= 0)
    return (level * use).sum(1) / use.sum(1)


def _explained_share(feature: np.ndarray, target: np.ndarray) -> float:
    """R² of the least-squares line through (feature, target)."""
    design = np.c_[feature, np.ones_like(feature)]
    residual = target - design @ np.linalg.lstsq(design, target, rcond=None)[0]
    return 1 - residual.var() / target.var()


def test_the_rating_is_predicted_by_its_aspects_sentence_alone() -> None:
    splits, _ = generated_reviews((2000, 1, 1), seed=0, aspect=1, max_length=80, dim=16)
    train = splits["train"]
    tokens, relevant, rating = train["tokens"], train["relevant"], train["rating"]
    own = _sentiment_mean(tokens, relevant)
    others = _sentiment_mean(tokens, ~relevant & (tokens > 0))
    # The aroma sentence's sentiment explains nearly all of the rating, the other four aspects'
    # none of it (independent ratings: with 2,000 reviews an R^2 above 0.01 has p < 1e-4).
    assert _explained_share(own, rating) > 0.9
    assert _explained_share(others, rating) < 0.01


def test_ratings_are_decorrelated_across_aspects_and_sentiment_is_linear_in_the_vectors() -> None:
    a, _ = generated_reviews((1500, 1, 1), seed=0, aspect=0, max_length=80, dim=16)
    b, _ = generated_reviews((1500, 1, 1), seed=0, aspect=2, max_length=80, dim=16)
    r = np.corrcoef(a["train"]["rating"], b["train"]["rating"])[0, 1]
    assert abs(r) < 0.12  # independent: the sample correlation's sd is 1/sqrt(1500) ~ 0.026
    ratings = a["train"]["rating"]
    assert set(np.round(10 * ratings).astype(int)) == set(range(11))  # tenths, 0 to 1
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
