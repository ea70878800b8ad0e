"""Leak-free splits: the group key rows are split by, folds by original text or by source file, held-out masks,
and the rows of a fold that get scored. cv's folds, the ensemble gate's inner folds, lora's validation split and
the optimiser's held-out prompts all come from here."""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from promptrec.data import DataError


def group_key(text: str) -> str:
    """The key rows are grouped by in every leak-free split: the text without surrounding whitespace."""
    return str(text).strip()


def key_groups(keys: Sequence[str]) -> dict[str, list[int]]:
    """Grouped-split units: `group_key` -> its row indices, keys in order of first appearance.

    The one grouping behind cv's folds, lora's validation split and the optimiser's held-out prompts.
    """
    groups: dict[str, list[int]] = {}
    for row, key in enumerate(keys):
        groups.setdefault(group_key(key), []).append(row)
    return groups


def held_out(keys: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """(n,) bool mask of the rows whose key is among a seeded `fraction` of the distinct keys: a key is never
    on both sides (lora's validation split by original text, the optimiser's by prompt)."""
    groups = key_groups(keys)
    unique = sorted(groups)  # sorted first: the draw depends on the keys, not on row order
    random.Random(seed).shuffle(unique)
    mask = np.zeros(len(keys), dtype=bool)
    for key in unique[: int(round(fraction * len(unique)))]:
        mask[groups[key]] = True
    return mask


def group_folds(originals: list[str], folds: int, seed: int) -> np.ndarray:
    """Fold index per row; rows with the same original text (`group_key`) always share a fold.

    Groups are shuffled with `seed`, then the largest go first, each to the currently smallest fold.
    """
    groups = key_groups(originals)
    if folds < 2 or folds > len(groups):
        raise DataError(f"--folds {folds}: need 2 to {len(groups)} (the number of distinct original texts)")
    order = list(groups)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda k: -len(groups[k]))  # stable: equal sizes keep the shuffled order
    sizes = [0] * folds
    fold_of = np.empty(len(originals), dtype=np.int64)
    for key in order:
        target = int(np.argmin(sizes))
        fold_of[groups[key]] = target
        sizes[target] += len(groups[key])
    return fold_of


def source_folds(sources: list[str], originals: list[str]) -> tuple[np.ndarray, list[str]]:
    """Fold index per row holding out one source at a time, and each fold's name ("a.csv + b.csv").

    Files that share an original text (`group_key`, blanks aside) are linked, and each connected set of files
    is one fold, so no text is on both sides; folds follow the files' input order.
    """
    files = list(dict.fromkeys(sources))
    parent = {name: name for name in files}  # union-find over files

    def root(name: str) -> str:
        while parent[name] != name:
            name = parent[name]
        return name

    for key, rows in key_groups(originals).items():
        if key:  # a blank original is no shared text: it must not tie two files together
            first = root(sources[rows[0]])
            for row in rows[1:]:
                parent[root(sources[row])] = first
    roots = list(dict.fromkeys(root(name) for name in files))
    names = [" + ".join(name for name in files if root(name) == r) for r in roots]
    if len(roots) < 2:
        raise DataError(f"--by source: needs two or more files that share no original text (got: {names[0]})")
    fold_of_file = {name: roots.index(root(name)) for name in files}
    return np.array([fold_of_file[name] for name in sources], dtype=np.int64), names


def scored_rows(fold_of: np.ndarray, fold: int, limit: int, seed: int) -> np.ndarray:
    """Row indices of `fold` to predict: all of them, or a seeded subsample of `limit`."""
    rows = np.flatnonzero(fold_of == fold)
    if limit and len(rows) > limit:
        rows = np.sort(np.random.default_rng([seed, fold]).choice(rows, size=limit, replace=False))
    return rows
