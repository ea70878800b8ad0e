"""The ensemble's learned gate: per row, predict each member's score from what the row and the members' prompts
show, then pick the member with the best predicted score.

Trained on out-of-fold member predictions (the ensemble's inner folds), so it learns how far to trust each
member on rows it did not train on: e.g. the evidence method when it found a lead-in, the regressor when its
prompt agrees with the others. Per kind of row (which members answered) it also keeps a default member unless
another's predicted score beats it by a margin; both are chosen with the inner folds held out in turn, to lose
least to the best member of the worst fold: where a source's rewrites state nothing, a linear guess that paid on
some training sources must not cost the regressor's score on a new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from promptrec.data import DataError, atomic_write
from promptrec.vectors import unit_rows

GATE_FILE = "gate.safetensors"
ROW_FEATURES = ("change", "rewrite_words", "answered_share")  # shared by every member's row
# of the member's own prompt; "original": its cosine to the original text (+0.002 leave one source out, docs/results.md)
OWN_FEATURES = ("answered", "prompt_words", "agreement", "reference", "original")
FEATURES = ("bias", *ROW_FEATURES, *OWN_FEATURES)  # the first F - m features in order; then one answered flag per member
MARGINS = (np.inf, 0.12, 0.08, 0.05, 0.03, 0.02, 0.01, 0.005, 0.0)  # tried for each kind, widest first (wins ties)


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
                  rewrite_words: np.ndarray, reference: np.ndarray | None = None,
                  original: np.ndarray | None = None) -> np.ndarray:
    """(members, n, F) features of each member's prompt on each row.

    answered (m, n) bool; prompt_emb (m, n, d) unit rows (any value where a member abstained); prompt_words
    (m, n); change (n,) cosine between the original and rewritten texts; rewrite_words (n,); reference (n, d)
    unit rows a member predicted for the true prompt, if one does; original (n, d) the original texts' unit
    embeddings. F = 1 + 3 + 5 + m (a bias, the row features, the member's own features, which members answered).
    """
    members, rows = answered.shape
    mask = answered.astype(np.float32)  # (m, n)
    agreement = member_agreement(answered, prompt_emb)  # (m, n)
    ref = np.einsum("mnd,nd->mn", prompt_emb, reference) if reference is not None else np.zeros_like(mask)
    near_original = np.einsum("mnd,nd->mn", prompt_emb, original) if original is not None else np.zeros_like(mask)
    share = np.broadcast_to(mask.mean(axis=0), (members, rows))
    parts = [np.ones_like(mask), np.broadcast_to(change, (members, rows)), np.broadcast_to(rewrite_words, (members, rows)),
             share, mask, prompt_words * mask, agreement * mask, ref * mask, near_original * mask]
    flags = np.broadcast_to(mask[None, :, :], (members, members, rows))  # (m, m, n): which members answered
    return np.concatenate([np.stack(parts, axis=-1), flags.transpose(0, 2, 1)], axis=-1).astype(np.float32)


def ridge_weights(features: np.ndarray, scores: np.ndarray, answered: np.ndarray, ridge: float) -> np.ndarray:
    """(m, F) one ridge regression per member on the rows where it answered (features (m, n, F), scores (m, n))."""
    weights = np.zeros(features.shape[::2], dtype=np.float32)  # (m, F)
    for m in range(len(weights)):
        rows = answered[m].astype(bool)
        if rows.any():
            x, y = features[m, rows].astype(np.float64), scores[m, rows].astype(np.float64)
            penalty = ridge * np.eye(x.shape[1])
            penalty[0, 0] = 0.0  # the bias is not shrunk
            weights[m] = np.linalg.solve(x.T @ x + penalty, x.T @ y)
    return weights


def predict(weights: np.ndarray, features: np.ndarray, answered: np.ndarray) -> np.ndarray:
    """(m, n) predicted score of each member's prompt; -inf where it abstained."""
    return np.where(answered.astype(bool), np.einsum("mnf,mf->mn", features, weights), -np.inf)


def favoured(predicted: np.ndarray, default: int, margin: float) -> np.ndarray:
    """(n,) argmax of the predicted scores (m, n) after adding `margin` to the default member's."""
    bonus = np.zeros((len(predicted), 1))
    bonus[default] = margin
    return (predicted + bonus).argmax(axis=0)


def calibrate(predicted: np.ndarray, scores: np.ndarray, answered: np.ndarray,
              groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per kind of row (which members answered): the default member (one that answered) and the margin from
    MARGINS that lose least to the best member in the worst group (to 4 decimals; ties: the earlier member, then the
    wider margin, so the gate leaves a member only for a gain on every group). `predicted` (m, n) out of fold: each
    group's rows by a gate fitted on the others. Returns kinds (k, m), defaults (k,), margins (k,)."""
    seen, of_row = np.unique(answered.T, axis=0, return_inverse=True)  # (k', m), (n,)
    kinds, defaults, margins = [], [], []
    for k, kind in enumerate(seen):
        rows = np.flatnonzero(of_row.ravel() == k)
        full = [m for m in range(len(scores)) if kind[m]]
        if not full:
            continue  # every member abstained on these rows: nothing to choose
        masks = [groups[rows] == g for g in np.unique(groups[rows])]  # over `rows`: one per inner fold
        best = [max(scores[m, rows[mask]].mean() for m in full) for mask in masks]
        options = []
        for default in full:
            for margin in MARGINS:
                picked = scores[favoured(predicted[:, rows], default, margin), rows]
                means = [picked[mask].mean() for mask in masks]
                options.append((round(max(b - v for b, v in zip(best, means)), 4), default, margin))
        _, default, margin = min(options, key=lambda option: option[0])  # ties: the earlier member, the wider margin
        kinds.append(kind)
        defaults.append(default)
        margins.append(margin)
    return (np.array(kinds, dtype=bool).reshape(-1, len(scores)), np.array(defaults, dtype=np.int64),
            np.array(margins, dtype=np.float32))


@dataclass
class Gate:
    """One ridge regression per member (features of the row and the member's prompt -> the member's score), and per
    kind of row a default member kept unless another's predicted score beats it by the kind's margin."""

    members: list[str]
    weights: np.ndarray  # (members, F)
    kinds: np.ndarray | None = None  # (k, members) bool: which members answered, one row per kind seen in fit
    defaults: np.ndarray | None = None  # (k,) the default member of each kind
    margins: np.ndarray | None = None  # (k,) its margin (inf: always the default; 0: plain argmax)

    @classmethod
    def fit(cls, members: list[str], features: np.ndarray, scores: np.ndarray, answered: np.ndarray,
            ridge: float = 1.0, groups: np.ndarray | None = None) -> "Gate":
        """Fit each member's model on the rows where it answered (features (m, n, F), scores (m, n)); with `groups`
        (n,) naming two or more inner folds, also each kind's default and margin (`calibrate`)."""
        weights = ridge_weights(features, scores, answered, ridge)
        if groups is None or len(np.unique(groups)) < 2:
            return cls(list(members), weights)
        predicted = np.zeros(scores.shape)  # (m, n) out of fold
        for group in np.unique(groups):
            held = groups == group
            fold_weights = ridge_weights(features[:, ~held], scores[:, ~held], answered[:, ~held], ridge)
            predicted[:, held] = predict(fold_weights, features[:, held], answered[:, held])
        return cls(list(members), weights, *calibrate(predicted, scores, answered, groups))

    def predicted_scores(self, features: np.ndarray, answered: np.ndarray) -> np.ndarray:
        """(m, n) predicted score of each member's prompt; -inf where it abstained."""
        if features.shape[0] != len(self.members) or features.shape[2] != self.weights.shape[1]:
            raise DataError(f"gate: features of shape {features.shape} do not fit a gate over {len(self.members)} "
                            f"members with {self.weights.shape[1]} features")
        return predict(self.weights, features, answered)

    def rule(self, answered: np.ndarray) -> tuple[int, float] | None:
        """The default member and margin for a row whose members answered as `answered` (m,); None: a plain argmax."""
        if self.kinds is not None:
            for kind, default, margin in zip(self.kinds, self.defaults, self.margins):
                if (kind == answered.astype(bool)).all():
                    return int(default), float(margin)
        return None

    def choose(self, features: np.ndarray, answered: np.ndarray) -> np.ndarray:
        """(n,) index of the member picked per row; -1 where every member abstained."""
        scores = self.predicted_scores(features, answered)
        choice = scores.argmax(axis=0)
        if self.kinds is not None:
            for kind, default, margin in zip(self.kinds, self.defaults, self.margins):
                rows = (answered.T.astype(bool) == kind).all(axis=1)
                choice[rows] = favoured(scores[:, rows], int(default), float(margin))
        return np.where(np.isfinite(scores).any(axis=0), choice, -1)

    def save(self, folder: Path) -> None:
        """Write the weights and each kind's default and margin (safetensors); the member order is saved by the
        ensemble's state."""
        from safetensors.numpy import save

        tensors = {"weights": self.weights}
        if self.kinds is not None:
            tensors |= {"kinds": self.kinds.astype(np.uint8), "defaults": self.defaults, "margins": self.margins}
        with atomic_write(Path(folder) / GATE_FILE, "wb") as handle:
            handle.write(save({name: np.ascontiguousarray(value) for name, value in tensors.items()}))

    @classmethod
    def load(cls, folder: Path, members: list[str]) -> "Gate":
        """Read what `save` wrote."""
        from safetensors.numpy import load_file

        path = Path(folder) / GATE_FILE
        if not path.is_file():
            raise DataError(f"{folder}: no {GATE_FILE} (the ensemble's gate)")
        tensors = load_file(str(path))
        weights = tensors["weights"]
        if weights.ndim != 2 or weights.shape[0] != len(members):
            raise DataError(f"{path}: weights of shape {weights.shape} for {len(members)} members")
        if "kinds" not in tensors:  # saved before the gate learned defaults and margins
            return cls(list(members), weights)
        kinds, defaults, margins = tensors["kinds"].astype(bool), tensors["defaults"], tensors["margins"]
        if kinds.ndim != 2 or kinds.shape[1] != len(members) or {defaults.shape, margins.shape} != {(len(kinds),)} \
                or not ((0 <= defaults) & (defaults < len(members))).all():
            raise DataError(f"{path}: kinds {kinds.shape}, defaults {defaults.shape}, margins {margins.shape} do not "
                            f"fit {len(members)} members")
        return cls(list(members), weights, kinds, defaults, margins)


def pair_change(original_emb: np.ndarray, rewritten_emb: np.ndarray) -> np.ndarray:
    """(n,) cosine between each original and its rewrite: near 1 when the rewrite barely changed the text."""
    return np.einsum("nd,nd->n", unit_rows(original_emb), unit_rows(rewritten_emb))
