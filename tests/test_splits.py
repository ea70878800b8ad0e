"""Splits on tiny inputs: exact folds, masks and scored rows (the same ones cv, the gate, lora and optimize use)."""

from __future__ import annotations

import numpy as np
import pytest

from promptrec.data import DataError
from promptrec.splits import group_folds, group_key, held_out, key_groups, scored_rows, source_folds

ORIGINALS = ["a", "a ", "b", "c", "d", "e", "f", "b"]


def test_group_key_and_key_groups_strip_surrounding_space_and_keep_first_appearance_order():
    assert group_key("  two words \n") == "two words"
    assert key_groups(["a", " a", "b", "", "c ", "  "]) == {"a": [0, 1], "b": [2], "": [3, 5], "c": [4]}


def test_held_out_draws_whole_keys_exactly():
    keys = ["a", "a ", "b", "c", "d", "e", "f", "g"]  # 7 distinct keys: 0.5 of them rounds to 4
    assert held_out(keys, 0.5, seed=0).astype(int).tolist() == [1, 1, 1, 1, 0, 1, 0, 0]
    assert held_out(list(reversed(keys)), 0.5, seed=0).astype(int).tolist() == [0, 0, 1, 0, 1, 1, 1, 1]  # same keys


def test_group_folds_are_exact_balanced_and_seeded():
    assert group_folds(ORIGINALS, 3, seed=0).tolist() == [1, 1, 0, 2, 1, 2, 0, 0]
    assert group_folds(ORIGINALS, 3, seed=1).tolist() == [0, 0, 1, 2, 2, 1, 0, 1]
    assert sorted(np.bincount(group_folds(ORIGINALS, 3, seed=0)).tolist()) == [2, 3, 3]
    with pytest.raises(DataError, match=r"--folds 7: need 2 to 6"):
        group_folds(ORIGINALS, 7, seed=0)


def test_source_folds_link_files_through_shared_texts_but_not_blanks():
    sources = ["x.csv", "x.csv", "y.csv", "z.csv", "z.csv", "w.csv"]
    originals = ["t1", "t2", "t2 ", "t3", "", " "]  # x and y share t2; z and w share only blanks
    fold_of, names = source_folds(sources, originals)
    assert fold_of.tolist() == [0, 0, 0, 1, 1, 2]
    assert names == ["x.csv + y.csv", "z.csv", "w.csv"]
    with pytest.raises(DataError, match=r"--by source: .*\(got: x.csv \+ y.csv\)"):
        source_folds(["x.csv", "y.csv"], ["t", "t"])


def test_scored_rows_take_all_or_a_seeded_sorted_subsample():
    fold_of = np.array([0, 1] * 5)
    assert scored_rows(fold_of, 1, 0, 0).tolist() == [1, 3, 5, 7, 9]
    assert scored_rows(fold_of, 1, 3, 0).tolist() == [3, 7, 9]
    assert scored_rows(fold_of, 0, 3, 5).tolist() == [0, 4, 6]
    assert scored_rows(fold_of, 1, 10, 0).tolist() == [1, 3, 5, 7, 9]  # a limit above the fold size: every row
