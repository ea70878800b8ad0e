"""The ensemble's learned gate: per row, predict each member's score from what the row and the members' prompts
show, then pick the member with the best predicted score.

Trained on out-of-fold member predictions (the ensemble's inner folds), so it learns how far to trust each
member on rows it did not train on: e.g. the evidence method when it found a lead-in, the regressor when its
prompt agrees with the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from promptrec.data import DataError, atomic_write
from promptrec.vectors import unit_rows

GATE_FILE = "gate.safetensors"
ROW_FEATURES = ("change", "rewrite_words", "answered_share")  # shared by every member's row
OWN_FEATURES = ("answered", "prompt_words", "agreement", "reference")  # of the member's own prompt
FEATURES = ("bias", *ROW_FEATURES, *OWN_FEATURES)  # the first F - m features in order; then one answered flag per member


def words(texts: list[str]) -> np.ndarray:
    """(n,) log(1 + word count) of each text."""
    return np.log1p(np.array([len(str(t).split()) for t in texts], dtype=np.float32))


def member_agreement(answered: np.ndarray, prompt_emb: np.ndarray) -> np.ndarray:
    """(m, n) mean cosine of each member's prompt (m, n, d) to the other answering members' prompts (0: none)."""
    mask = answered.astype(np.float32)  # (m, n)
    cosine = np.einsum("and,bnd->abn", prompt_emb, prompt_emb)  # (m, m, n) between members' prompts
    others = mask[None, :, :] * (1 - np.eye(len(mask), dtype=np.float32))[:, :, None]  # (m, m, n): b answered, b != a
    return (cosine * others).sum(axis=1) / np.maximum(others.sum(axis=1), 1)


def gate_features(answered: np.ndarray, prompt_emb: np.ndarray, prompt_words: np.ndarray, change: np.ndarray,
                  rewrite_words: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """(members, n, F) features of each member's prompt on each row.

    answered (m, n) bool; prompt_emb (m, n, d) unit rows (any value where a member abstained); prompt_words
    (m, n); change (n,) cosine between the original and rewritten texts; rewrite_words (n,); reference (n, d)
    unit rows a member predicted for the true prompt, if one does. F = 1 + 3 + 4 + m (a bias, the row
    features, the member's own features, and which members answered).
    """
    members, rows = answered.shape
    mask = answered.astype(np.float32)  # (m, n)
    agreement = member_agreement(answered, prompt_emb)  # (m, n)
    ref = np.einsum("mnd,nd->mn", prompt_emb, reference) if reference is not None else np.zeros_like(mask)
    share = np.broadcast_to(mask.mean(axis=0), (members, rows))
    parts = [np.ones_like(mask), np.broadcast_to(change, (members, rows)), np.broadcast_to(rewrite_words, (members, rows)),
             share, mask, prompt_words * mask, agreement * mask, ref * mask]
    flags = np.broadcast_to(mask[None, :, :], (members, members, rows))  # (m, m, n): which members answered
    return np.concatenate([np.stack(parts, axis=-1), flags.transpose(0, 2, 1)], axis=-1).astype(np.float32)


@dataclass
class Gate:
    """One ridge regression per member: features of the row and the member's prompt -> the member's score."""

    members: list[str]
    weights: np.ndarray  # (members, F)

    @classmethod
    def fit(cls, members: list[str], features: np.ndarray, scores: np.ndarray, answered: np.ndarray,
            ridge: float = 1.0) -> "Gate":
        """Fit each member's model on the rows where it answered (features (m, n, F), scores (m, n))."""
        weights = np.zeros(features.shape[::2], dtype=np.float32)  # (m, F)
        for m in range(len(members)):
            rows = answered[m].astype(bool)
            if rows.any():
                x, y = features[m, rows].astype(np.float64), scores[m, rows].astype(np.float64)
                penalty = ridge * np.eye(x.shape[1])
                penalty[0, 0] = 0.0  # the bias is not shrunk
                weights[m] = np.linalg.solve(x.T @ x + penalty, x.T @ y)
        return cls(list(members), weights)

    def predicted_scores(self, features: np.ndarray, answered: np.ndarray) -> np.ndarray:
        """(m, n) predicted score of each member's prompt; -inf where it abstained."""
        if features.shape[0] != len(self.members) or features.shape[2] != self.weights.shape[1]:
            raise DataError(f"gate: features of shape {features.shape} do not fit a gate over {len(self.members)} "
                            f"members with {self.weights.shape[1]} features")
        scores = np.einsum("mnf,mf->mn", features, self.weights)
        return np.where(answered.astype(bool), scores, -np.inf)

    def choose(self, features: np.ndarray, answered: np.ndarray) -> np.ndarray:
        """(n,) index of the member picked per row; -1 where every member abstained."""
        scores = self.predicted_scores(features, answered)
        return np.where(np.isfinite(scores).any(axis=0), scores.argmax(axis=0), -1)

    def save(self, folder: Path) -> None:
        """Write the weights (safetensors); the member order is saved by the ensemble's state."""
        from safetensors.numpy import save

        with atomic_write(Path(folder) / GATE_FILE, "wb") as handle:
            handle.write(save({"weights": np.ascontiguousarray(self.weights)}))

    @classmethod
    def load(cls, folder: Path, members: list[str]) -> "Gate":
        """Read what `save` wrote."""
        from safetensors.numpy import load_file

        path = Path(folder) / GATE_FILE
        if not path.is_file():
            raise DataError(f"{folder}: no {GATE_FILE} (the ensemble's gate)")
        weights = load_file(str(path))["weights"]
        if weights.ndim != 2 or weights.shape[0] != len(members):
            raise DataError(f"{path}: weights of shape {weights.shape} for {len(members)} members")
        return cls(list(members), weights)


def pair_change(original_emb: np.ndarray, rewritten_emb: np.ndarray) -> np.ndarray:
    """(n,) cosine between each original and its rewrite: near 1 when the rewrite barely changed the text."""
    return np.einsum("nd,nd->n", unit_rows(original_emb), unit_rows(rewritten_emb))
