"""ListOps (Nangia & Bowman 2018): nested list operations whose value is the label, with the gold
dependency tree of each expression, for unsupervised parsing with latent arborescences.

An expression is a digit ``0``-``9`` or ``[OP a_1 ... a_m ]`` with ``OP`` in ``MAX``, ``MIN``,
``MED`` (median; for an even ``m`` the mean of the two middle values truncated to an integer, as
the original generator's ``int(np.median(...))``) and, in files only, ``SM`` (sum modulo 10); the
arguments are expressions. Tokens: the operator-open tokens (``[MAX`` ...), the digits and ``]``.
Gold arborescence: the outermost operator token (always token 0) is the root; the head of every
argument (a digit, or the open token of a nested expression) and of every ``]`` is its operator's
open token.

``generate_listops`` draws expressions top-down: the root is an operator; an argument at depth
``d`` (the root's arguments have depth 2) is an operator with probability
``nest_prob * nest_decay^(d - 2)`` while ``d <= max_depth``, else a digit; operators take
``m ~ U{2..max_args}`` arguments and ``OP`` uniformly. Expressions longer than ``max_length``
tokens are rejected and redrawn (numpy ``Generator`` seeded by ``seed``; splits one after the
other). ``read_listops_tsv`` reads the original tab-separated files (``label<TAB>expression``,
parentheses of the binarised form ignored; a header line is skipped).

Arrays (``encode``): ``tokens`` ``(N, max_length)`` int64 ids of ``VOCAB`` padded with ``PAD``,
``lengths`` ``(N,)``, ``labels`` ``(N,)`` and ``heads`` ``(N, max_length)`` (the head's position
of every token; -1 for the root and the padding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from latentgrad.experiments.data.cache import cached_arrays
from latentgrad.experiments.data.files import DataError, verify_checksum

OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
GENERATED_OPERATORS = OPERATORS[:3]
CLOSE = "]"
PAD = "<pad>"
VOCAB = (PAD, *OPERATORS, *(str(d) for d in range(10)), CLOSE)
TOKEN_ID = {t: i for i, t in enumerate(VOCAB)}
SPLITS = ("train", "valid", "test")


def apply(op: str, values: list[int]) -> int:
    """The value of ``[OP values... ]``."""
    if op == "[MAX":
        return max(values)
    if op == "[MIN":
        return min(values)
    if op == "[SM":
        return sum(values) % 10
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2


def parse(tokens: list[str]) -> tuple[int, list[int]]:
    """Value and gold heads (``-1`` for the root) of a tokenised expression whose first token is
    an operator; ``ValueError`` on malformed input."""
    if not tokens or tokens[0] not in OPERATORS:
        raise ValueError(f"an expression must start with an operator, got {tokens[:1]}")
    heads = [-1] * len(tokens)
    stack: list[tuple[int, list[int]]] = []  # (open position, argument values)
    value = None
    for pos, tok in enumerate(tokens):
        if value is not None:
            raise ValueError(f"tokens after the end of the expression at position {pos}")
        if stack:
            heads[pos] = stack[-1][0]
        if tok in OPERATORS:
            stack.append((pos, []))
        elif tok == CLOSE:
            if not stack or len(stack[-1][1]) < 1:
                raise ValueError(f"unbalanced or empty ']' at position {pos}")
            open_pos, values = stack.pop()
            result = apply(tokens[open_pos], values)
            if stack:
                stack[-1][1].append(result)
            else:
                value = result
        elif tok.isdigit() and len(tok) == 1:
            if not stack:
                raise ValueError(f"digit outside an operator at position {pos}")
            stack[-1][1].append(int(tok))
        else:
            raise ValueError(f"unknown ListOps token {tok!r} at position {pos}")
    if value is None:
        raise ValueError("unterminated expression (missing ']')")
    return value, heads


def _draw(rng: np.random.Generator, depth: int, cfg: dict) -> list[str]:
    """Tokens of one operator expression at ``depth`` (module docstring)."""
    op = GENERATED_OPERATORS[rng.integers(len(GENERATED_OPERATORS))]
    out = [op]
    for _ in range(int(rng.integers(2, cfg["max_args"] + 1))):
        d = depth + 1
        p = cfg["nest_prob"] * cfg["nest_decay"] ** (d - 2)
        if d <= cfg["max_depth"] and rng.random() < p:
            out += _draw(rng, d, cfg)
        else:
            out.append(str(int(rng.integers(10))))
    out.append(CLOSE)
    return out


def generate_listops(
    num: int, rng: np.random.Generator, cfg: dict, progress: bool = False, desc: str = "ListOps"
) -> list[list[str]]:
    """``num`` tokenised expressions within ``cfg['max_length']`` tokens (module docstring)."""
    out = []
    with tqdm(total=num, desc=desc, disable=not progress, mininterval=1.0) as bar:
        while len(out) < num:
            tokens = _draw(rng, 1, cfg)
            if len(tokens) <= cfg["max_length"]:
                out.append(tokens)
                bar.update()
    return out


def encode(expressions: list[list[str]], max_length: int) -> dict[str, np.ndarray]:
    """Token ids, lengths, labels and gold heads (module docstring) of parsed expressions."""
    n = len(expressions)
    tokens = np.zeros((n, max_length), dtype=np.int64)
    heads = np.full((n, max_length), -1, dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    labels = np.zeros(n, dtype=np.int64)
    for i, expr in enumerate(expressions):
        if len(expr) > max_length:
            raise ValueError(f"expression {i} has {len(expr)} tokens, more than {max_length}")
        labels[i], h = parse(expr)
        tokens[i, : len(expr)] = [TOKEN_ID[t] for t in expr]
        heads[i, : len(expr)] = h
        lengths[i] = len(expr)
    return {"tokens": tokens, "lengths": lengths, "labels": labels, "heads": heads}


def listops_splits(
    cache_dir: str,
    sizes: tuple[int, int, int] = (90_000, 10_000, 10_000),
    max_args: int = 5,
    max_depth: int = 5,
    max_length: int = 50,
    nest_prob: float = 0.5,
    nest_decay: float = 0.7,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """Generated train/valid/test arrays, cached in ``cache_dir`` and verified on load."""
    if max_args < 2 or max_depth < 1 or max_length < 4 or min(sizes) < 1:
        raise ValueError(
            "need max_args >= 2, max_depth >= 1, max_length >= 4 and split sizes >= 1; got "
            f"max_args={max_args}, max_depth={max_depth}, max_length={max_length}, sizes={sizes}"
        )
    if not (0 <= nest_prob <= 1 and 0 <= nest_decay <= 1):
        raise ValueError(
            f"nest_prob and nest_decay must lie in [0, 1], got {nest_prob} and {nest_decay}"
        )
    cfg = {
        "max_args": max_args,
        "max_depth": max_depth,
        "max_length": max_length,
        "nest_prob": nest_prob,
        "nest_decay": nest_decay,
    }
    params = {**cfg, "sizes": list(sizes), "seed": seed}

    def generate() -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        arrays = {}
        for split, size in zip(SPLITS, sizes, strict=True):
            expressions = generate_listops(size, rng, cfg, progress, f"ListOps ({split})")
            for key, value in encode(expressions, max_length).items():
                arrays[f"{split}_{key}"] = value
        return arrays

    name = f"listops_{'_'.join(map(str, sizes))}_a{max_args}_d{max_depth}_l{max_length}_seed{seed}"
    arrays = cached_arrays(cache_dir, name, params, generate)
    keys = ("tokens", "lengths", "labels", "heads")
    return {split: {k: arrays[f"{split}_{k}"] for k in keys} for split in SPLITS}


def read_listops_tsv(path: str | Path, max_length: int) -> dict[str, np.ndarray]:
    """The original tab-separated ListOps file at ``path`` (module docstring) as arrays, checked
    against a ``SHA256SUMS`` beside it. A malformed line, or one whose stated label differs from
    its value, raises DataError naming the line; an expression longer than ``max_length`` tokens
    raises ``ValueError`` naming the line."""
    path = Path(path)
    verify_checksum(path)
    expressions = []
    try:
        content = path.read_text()
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not a text file ({err}); expected '<label>\\t<expression>' lines"
        ) from None
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        label, sep, text = line.partition("\t")
        if not sep or not label.strip().isdigit():
            if lineno == 1:
                continue  # header
            raise DataError(f"{path}:{lineno}: expected '<label>\\t<expression>', got {line!r}")
        tokens = [t for t in text.split() if t not in ("(", ")")]
        try:
            value, _ = parse(tokens)
        except ValueError as err:
            raise DataError(f"{path}:{lineno}: {err}") from None
        if value != int(label):
            raise DataError(f"{path}:{lineno}: label {label}, but the expression gives {value}")
        if len(tokens) > max_length:
            raise ValueError(
                f"{path}:{lineno}: {len(tokens)} tokens, more than max_length={max_length}"
            )
        expressions.append(tokens)
    if not expressions:
        raise DataError(f"{path}: no ListOps examples")
    return encode(expressions, max_length)
