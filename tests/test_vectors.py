"""Row-vector helpers (promptrec.vectors)."""

import numpy as np

from promptrec.metric import sharpen
from promptrec.vectors import mean_scores, most_typical, unit_rows


def test_mean_scores_in_blocks_equal_the_whole_matrix_weighted_or_not():
    emb = unit_rows(np.random.default_rng(0).normal(size=(7, 5)))
    weights = np.array([1, 2, 1, 5, 1, 1, 3], dtype=np.float64)
    whole = sharpen(emb @ emb.T)  # (7, 7)
    for block in (1, 3, 7, 100):
        assert np.allclose(mean_scores(emb, block=block), whole.mean(axis=1), atol=1e-6)
        assert np.allclose(mean_scores(emb, weights, block=block), whole @ weights / weights.sum(), atol=1e-6)
    assert mean_scores(np.zeros((0, 5), dtype=np.float32)).shape == (0,)


def test_most_typical_counts_repeats_and_skips_blanks():
    axes = {"a": [1.0, 0.0], "b": [0.0, 1.0], "ab": [0.7071, 0.7071]}
    encode = lambda texts: unit_rows(np.array([axes[t] for t in texts]))  # noqa: E731
    assert most_typical(["a", "b", "ab", " "], encode) == [2]  # the middle one is nearest to both
    assert most_typical(["a", "a", "a", "b", "ab"], encode, k=2) == [0, 4]  # "a" three times outweighs the middle
