"""Row-vector helpers shared by every method: unit rows, top-k search, mean-score medoids, the direction query."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from promptrec.metric import sharpen

Encode = Callable[[list[str]], np.ndarray]  # texts -> (n, d) unit rows


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float32))
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def top_k(similarity: np.ndarray, k: int) -> np.ndarray:
    """(n, k) column indices of the k largest values per row of `similarity` (n, m), best first, ties by column."""
    k = min(k, similarity.shape[1])
    top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]  # (n, k) unordered
    order = np.argsort(-np.take_along_axis(similarity, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def mean_scores(emb: np.ndarray, weights: np.ndarray | None = None, block: int = 2048) -> np.ndarray:
    """(n,) mean sharpened cosine (cos**3) of each unit row against all rows, weighted by `weights` if given; `block`
    rows at a time, so memory grows with n, not n**2 (time still grows with n**2)."""
    weights = np.ones(len(emb)) if weights is None else np.asarray(weights, dtype=np.float64)
    scores = [sharpen(emb[start : start + block] @ emb.T) @ weights for start in range(0, len(emb), block)]  # (b,) each
    return np.concatenate(scores) / weights.sum() if scores else np.zeros(0)


def most_typical(texts: Sequence[str], encode: Encode, k: int = 1) -> list[int]:
    """Rows of the k distinct (stripped) non-blank texts with the best mean cos**3 against all of them, best first."""
    first: dict[str, int] = {}
    counts: dict[str, int] = {}
    for row, text in enumerate(texts):
        key = str(text).strip()
        if key:
            first.setdefault(key, row)
            counts[key] = counts.get(key, 0) + 1
    unique = list(first)
    scores = mean_scores(encode(unique), np.array([counts[u] for u in unique], dtype=np.float64))  # (u,)
    return [first[unique[i]] for i in np.argsort(-scores, kind="stable")[:k]]


def direction(rewritten_emb: np.ndarray, original_emb: np.ndarray) -> np.ndarray:
    """(n, d) unit `emb(rewritten) - emb(original)`: where the rewrite moved the text (zero when they match)."""
    return unit_rows(np.asarray(rewritten_emb, dtype=np.float32) - np.asarray(original_emb, dtype=np.float32))
