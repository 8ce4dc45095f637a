"""ListOps generator and loader: bounds, labels, gold arborescences, determinism and the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from latentgrad.experiments.data.files import DataError
from latentgrad.experiments.data.listops import (
    VOCAB,
    apply,
    encode,
    generate_listops,
    listops_splits,
    parse,
    read_listops_tsv,
)

CFG = {"max_args": 4, "max_depth": 4, "max_length": 40, "nest_prob": 0.6, "nest_decay": 0.8}


def _nested(tokens: list[str]):
    """Independent reference: tokens -> nested (op, args) tuples, then the value by recursion."""

    def expr(i: int):
        op, args, i = tokens[i], [], i + 1
        while tokens[i] != "]":
            if tokens[i].startswith("["):
                sub, i = expr(i)
                args.append(sub)
            else:
                args.append(int(tokens[i]))
                i += 1
        return (op, args), i + 1

    tree, end = expr(0)
    assert end == len(tokens)
    return tree


def _value(tree) -> int:
    if isinstance(tree, int):
        return tree
    op, args = tree
    vals = [_value(a) for a in args]
    if op == "[MED":
        return int(np.median(vals))  # the original generator's rule
    return {"[MAX": max, "[MIN": min, "[SM": lambda v: sum(v) % 10}[op](vals)


def _depth_and_arity(tree) -> tuple[int, int]:
    if isinstance(tree, int):
        return 0, 0
    sub = [_depth_and_arity(a) for a in tree[1]]
    return 1 + max(d for d, _ in sub), max([len(tree[1])] + [a for _, a in sub])


def test_generated_expressions_respect_the_bounds_and_have_correct_labels() -> None:
    exprs = generate_listops(300, np.random.default_rng(0), CFG)
    depths = []
    for tokens in exprs:
        assert len(tokens) <= CFG["max_length"]
        tree = _nested(tokens)
        depth, arity = _depth_and_arity(tree)
        assert depth <= CFG["max_depth"] and 2 <= arity <= CFG["max_args"]
        assert parse(tokens)[0] == _value(tree)
        depths.append(depth)
    assert max(depths) >= 3 and min(depths) == 1  # nesting happens, and not always


def test_gold_heads_form_the_documented_arborescence() -> None:
    tokens = "[MAX 3 [MIN 4 1 ] [MED 2 7 5 9 ] ]".split()
    value, heads = parse(tokens)
    assert value == 6  # MIN(4, 1) = 1, MED(2, 7, 5, 9) = (5 + 7) // 2 = 6, MAX(3, 1, 6) = 6
    assert heads == [-1, 0, 0, 2, 2, 2, 0, 6, 6, 6, 6, 6, 0]


def test_heads_of_generated_data_are_trees_rooted_at_the_first_token() -> None:
    arrays = encode(generate_listops(100, np.random.default_rng(1), CFG), CFG["max_length"])
    for tok, n, h in zip(arrays["tokens"], arrays["lengths"], arrays["heads"], strict=True):
        assert h[0] == -1 and (h[n:] == -1).all() and (tok[n:] == 0).all()
        assert all(0 <= h[j] < j for j in range(1, n))  # heads come earlier: no cycle, root 0
        assert all(VOCAB[tok[h[j]]].startswith("[") for j in range(1, n))


def test_median_of_an_even_count_truncates_the_mean_of_the_middle_pair() -> None:
    assert apply("[MED", [1, 2, 5, 8]) == 3 == int(np.median([1, 2, 5, 8]))
    assert apply("[MED", [9, 0, 4]) == 4
    assert apply("[SM", [9, 8]) == 7


def test_generation_is_deterministic_and_cached(tmp_path: Path) -> None:
    kwargs = dict(sizes=(20, 5, 5), max_args=3, max_depth=3, max_length=30, seed=3)
    first = listops_splits(str(tmp_path), progress=False, **kwargs)
    assert first["train"]["tokens"].shape == (20, 30) and first["test"]["labels"].shape == (5,)
    again = listops_splits(str(tmp_path), progress=False, **kwargs)
    fresh = listops_splits(str(tmp_path / "other"), progress=False, **kwargs)
    for split in first:
        for key in first[split]:
            assert np.array_equal(first[split][key], again[split][key])
            assert np.array_equal(first[split][key], fresh[split][key])
    other_seed = listops_splits(str(tmp_path), progress=False, **{**kwargs, "seed": 4})
    assert not np.array_equal(other_seed["train"]["tokens"], first["train"]["tokens"])


def test_tsv_loader_reads_the_original_binarised_layout(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text(
        "Target\tSource\n"
        "6\t( ( ( ( [MAX 3 ) ( ( [MIN 4 ) 1 ) ] ) ) ( ( ( ( [MED 2 ) 7 ) 5 ) 9 ) ] ) ) ]\n"
        "7\t( ( [SM 9 ) 8 ) ]\n"
    )
    arrays = read_listops_tsv(path, 20)
    assert arrays["labels"].tolist() == [6, 7]
    assert arrays["lengths"].tolist() == [13, 4]
    path.write_text("5\t( ( [SM 9 ) 8 ) ]\n")
    with pytest.raises(ValueError, match=":1: label 5, but"):
        read_listops_tsv(path, 20)


@pytest.mark.parametrize(
    ("tokens", "match"),
    [
        ("3".split(), "start with an operator"),
        ("[MAX 3 4".split(), "unterminated"),
        ("[MAX ] ]".split(), "empty"),
        ("[MAX 3 ] 4".split(), "after the end"),
        ("[MAX 3 x ]".split(), "unknown"),
    ],
)
def test_malformed_expressions_raise(tokens: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse(tokens)


def test_tsv_loader_checks_sha256sums_and_names_format_errors(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text("7\t( ( [SM 9 ) 8 ) ]\n")
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  train.tsv\n")
    with pytest.raises(DataError, match=f"checksum mismatch for {path}"):
        read_listops_tsv(path, 20)
    (tmp_path / "SHA256SUMS").unlink()
    for content, match in [
        ("7\t[SM 9 8 ]\n5\t( ( [SM 9 ) 8 ) ]\n", ":2: label 5, but"),
        ("7\t[SM 9 8 ]\nseven\t[SM 9 8 ]\n", ":2: expected '<label>"),
        ("7\t[SM 9 8\n", ":1: "),
        ("Target\tSource\n", ": no ListOps examples"),
    ]:
        path.write_text(content)
        with pytest.raises(DataError, match=f"{path}{match}"):
            read_listops_tsv(path, 20)
    path.write_text("7\t[SM 9 8 ]\n")
    with pytest.raises(ValueError, match=f"{path}:1: 4 tokens, more than max_length=3"):
        read_listops_tsv(path, 3)
