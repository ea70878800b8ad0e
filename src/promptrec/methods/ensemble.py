"""Method `ensemble`: combine any registered methods by joining their prompts or picking one per row
(nearest a reference, or by a gate learned on out-of-fold member predictions)."""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from promptrec.data import ORIGINAL, PROMPT, REWRITTEN, SOURCE, DataError
from promptrec.methods.base import (
    FALLBACK_PROMPT, Method, PredictsEmbeddings, UsesEmbedder, answer, check_options, from_name, load_saved, method_class,
    never_blank, parse_members, safe_child, save_config,
)
from promptrec.methods.gate import FEATURES, GATE_FILE, Gate, gate_features, pair_change, words
from promptrec.metric import sharpen
from promptrec.progress import Steps
from promptrec.splits import group_folds, scored_rows, source_folds
from promptrec.vectors import unit_rows

log = logging.getLogger(__name__)

MODES = ("concat", "select", "gate")
REFERENCES = ("auto", "centroid")


@dataclass
class EnsembleConfig:
    """Options of the ensemble method."""
    model_fields = ("embedder",)  # NamesModels: the fields naming a model, which bundle carries

    members: list[str] = field(default_factory=lambda: ["constant"])  # "name" or "label=name"; labels let a method appear twice
    member_config: dict[str, dict[str, Any]] = field(default_factory=dict)  # options per member label
    mode: str = "concat"  # concat: all members' prompts joined; select: the candidate nearest a reference; gate: learned pick
    max_subset: int = 1  # select: candidates also join up to this many members (in member order)
    reference: str = "auto"  # select: auto = a member's predicted embedding if one offers it, else the centroid
    suffix: str = ""  # text appended to every prediction; with suffix_steps > 0 fit learns one instead
    suffix_steps: int = 0  # >0: fit optimises a mean prompt on the training prompts for this many steps as the suffix
    suffix_seconds: float = 0.0  # >0: also a time limit on that optimisation and hedge_steps' (0: steps alone, reproducible)
    # gate: >0 also offers a mean prompt (optimised on the training prompts for this many steps) alone and appended to
    # each member's prompt, as the competition hedged; the default fit's 100 steps: +0.012 (docs/results.md)
    hedge_steps: int = 0
    separator: str = " "  # joins members' prompts and the suffix
    embedder: str = "proxy"  # metric embedder for select and suffix optimisation: official, proxy or a folder
    seed: int = 0  # seeds the suffix optimiser and the gate's inner folds
    gate_folds: int = 3  # gate: inner folds for out-of-fold member predictions (one per source when rows name >1 source)
    gate_rows: int = 0  # gate: >0 predicts at most this many held-out rows per inner fold (LLM members are slow)
    gate_ridge: float = 1.0  # gate: L2 penalty of each member's score model
    gate_calibrate: bool = True  # gate: per kind of row, a default member and margin chosen on the inner folds

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DataError(f"ensemble: mode '{self.mode}' (known: {', '.join(MODES)})")
        if self.reference not in REFERENCES:
            raise DataError(f"ensemble: reference '{self.reference}' (known: {', '.join(REFERENCES)})")
        check_options(self.member_config, self.specs(), "ensemble: ")
        if self.hedge_steps < 0 or (self.hedge_steps and self.mode != "gate"):
            raise DataError(f"ensemble: hedge_steps must be 0, or more in gate mode (got {self.hedge_steps}, "
                            f"mode {self.mode})")
        if self.suffix_seconds < 0:
            raise DataError(f"ensemble: suffix_seconds must be 0 (no time limit) or more, got {self.suffix_seconds}")

    def specs(self) -> list[tuple[str, str]]:
        """The members as (label, method name) pairs, in order."""
        return parse_members(self.members)


def candidate_subsets(count: int, max_subset: int) -> list[tuple[int, ...]]:
    """Member index subsets tried by select: singles first, then pairs, ... up to `max_subset`, in member order."""
    return [s for size in range(1, max(1, min(max_subset, count)) + 1) for s in itertools.combinations(range(count), size)]


def fill_abstentions(columns: list[list[str | None]]) -> list[list[str]]:
    """Members' prompts by column; a blank or None cell takes the first non-blank cell of its row (else the fallback)."""
    rows = [[answer(p) or "" for p in row] for row in zip(*columns)]
    filled = [[p or next((q for q in row if q), FALLBACK_PROMPT) for p in row] for row in rows]
    return [list(col) for col in zip(*filled)] if filled else [[] for _ in columns]


def join_prompts(prompts: list[str], separator: str) -> str:
    """Join prompts, dropping blanks and exact repeats (a repeated sentence only adds length)."""
    return separator.join(dict.fromkeys(p.strip() for p in prompts if p.strip()))


class EnsembleMethod(UsesEmbedder):
    """Fits every member, then joins their prompts (concat) or picks the candidate nearest a reference (select)."""

    name = "ensemble"
    Config = EnsembleConfig

    def __init__(self, config: EnsembleConfig | None = None, members: dict[str, Method] | None = None):
        self.config = config or EnsembleConfig()
        # Prefit members (e.g. from a cross-validation fold) are used as given; the rest are built here.
        members = members or {}
        self.members: dict[str, Method] = {
            label: members[label] if label in members else from_name(name, **self.config.member_config.get(label, {}))
            for label, name in self.config.specs()
        }
        self.prefit = set(members) & set(self.members)  # labels that fit leaves as they are
        self.learned_suffix: str | None = None  # optimised by fit when suffix_steps > 0; saved as state
        self.hedge: str | None = None  # the gate's mean prompt, optimised by fit when hedge_steps > 0; saved as state
        self.gate: Gate | None = None  # learned by fit in gate mode; saved beside method.json
        self.fit_seconds: dict[str, float] = {}

    @property
    def suffix(self) -> str:
        """The text appended to every prediction: the learned one, else the configured one."""
        return self.config.suffix if self.learned_suffix is None else self.learned_suffix

    def choices(self) -> list[str]:
        """What the gate picks from, in order: the members, then (hedge_steps > 0) `mean` and each `label+mean`."""
        labels = list(self.members)
        return labels + (["mean", *(f"{label}+mean" for label in labels)] if self.config.hedge_steps else [])

    def hedged(self, predictions: dict[str, list[str | None]]) -> dict[str, list[str | None]]:
        """The members' `predictions` plus, with a hedge, the mean prompt alone and appended to each answer (an
        abstention stays one), keyed as `choices`."""
        if not self.config.hedge_steps:
            return predictions
        if not self.hedge:
            raise DataError("ensemble: hedge_steps > 0 needs the mean prompt that fit learns; run `promptrec fit` first")
        rows = len(next(iter(predictions.values()), []))
        out = dict(predictions, mean=[self.hedge] * rows)
        for label in self.members:
            out[f"{label}+mean"] = [join_prompts([p, self.hedge], self.config.separator) if answer(p) else None
                                    for p in predictions[label]]
        return out

    def _mean_prompt(self, prompts: list[str], steps: int) -> str:
        """A mean prompt of `prompts` (optimize-prompt, `steps` steps, within suffix_seconds if > 0; seeded)."""
        from promptrec.optimize import OptimizeConfig, optimize_prompts

        search = OptimizeConfig(steps=steps, seconds=self.config.suffix_seconds or math.inf, seed=self.config.seed)
        return optimize_prompts(prompts, self.embedder, config=search).result.text

    def fit(self, triples: pd.DataFrame) -> None:
        """Fit every member not given prefit (timed); learn the hedge and the gate (gate mode) and the suffix if asked."""
        steps = Steps("fit", sum(label not in self.prefit for label in self.members))  # the gate adds its folds
        prompts = triples[PROMPT].astype(str).tolist()
        self.hedge = self._mean_prompt(prompts, self.config.hedge_steps) if self.config.hedge_steps else None
        self.gate = self.fit_gate(triples, steps) if self.config.mode == "gate" else None
        for label, member in self.members.items():
            if label in self.prefit:
                continue
            steps.advance(0, label)
            start = time.perf_counter()
            member.fit(triples)
            self.fit_seconds[label] = time.perf_counter() - start
            log.info("fitted %s in %.1f s", label, self.fit_seconds[label])
            steps.advance(1, label)
        self.learned_suffix = self._mean_prompt(prompts, self.config.suffix_steps) if self.config.suffix_steps > 0 else None

    def fit_gate(self, triples: pd.DataFrame, steps: Steps | None = None) -> Gate:
        """The gate, trained on members' out-of-fold predictions: fresh members fitted on inner folds (one per source
        when `triples` has a `source` column naming several, else grouped by original text) predict the rest.
        `steps` counts one step per member and inner fold."""
        triples = triples.reset_index(drop=True)
        if SOURCE in triples and triples[SOURCE].nunique() > 1:
            fold_of, _ = source_folds(triples[SOURCE].tolist(), triples[ORIGINAL].tolist())
        else:
            fold_of = group_folds(triples[ORIGINAL].tolist(), self.config.gate_folds, self.config.seed)
        held, predictions, references = [], {label: [] for label in self.members}, []
        steps = steps or Steps("fit", 0)
        steps.total = (steps.total or 0) + len(self.members) * (int(fold_of.max()) + 1)
        for fold in range(int(fold_of.max()) + 1):
            rows = scored_rows(fold_of, fold, self.config.gate_rows, self.config.seed)
            train, pairs = triples[fold_of != fold], triples.iloc[rows].reset_index(drop=True)
            members = {label: from_name(name, **self.config.member_config.get(label, {})) for label, name in self.config.specs()}
            for label, member in members.items():
                where = f"gate fold {fold + 1}/{int(fold_of.max()) + 1} {label}"
                steps.advance(0, where)
                member.fit(train)
                predictions[label] += list(member.predict(pairs))
                steps.advance(1, where)
            references.append(self._reference(members, pairs))
            held.append(rows)
            log.info("gate: inner fold %d of %d predicted (%d rows)", fold + 1, int(fold_of.max()) + 1, len(rows))
        pairs = triples.iloc[np.concatenate(held)].reset_index(drop=True)
        reference = None if any(r is None for r in references) else np.concatenate(references)
        predictions = self.hedged(predictions)  # the hedge is learned on all training prompts, as the bench measured
        features, answered, prompt_emb = self.gate_inputs(pairs, predictions, reference)
        truth = self.embedder.encode(pairs[PROMPT].astype(str).tolist())  # (n, d)
        scores = sharpen(np.einsum("mnd,nd->mn", prompt_emb, truth))  # (members, n)
        for label, count in zip(predictions, answered.sum(axis=1)):
            if count == 0:  # e.g. evidence on rewrites without lead-ins or titles (the demo's generated rows)
                log.warning("gate: member %s answered none of the %d out-of-fold rows; the gate cannot rate it and "
                            "will never pick it (train on rows where it answers)", label, len(pairs))
        groups = fold_of[np.concatenate(held)] if self.config.gate_calibrate else None
        return Gate.fit(list(predictions), features, scores, answered, self.config.gate_ridge, groups)

    def _reference(self, members: dict[str, Method], pairs: pd.DataFrame) -> np.ndarray | None:
        """(n, d) the first member's predicted embeddings, if a member predicts embeddings."""
        for member in members.values():
            if isinstance(member, PredictsEmbeddings):
                return unit_rows(member.predict_embeddings(pairs))
        return None

    def gate_inputs(self, pairs: pd.DataFrame, predictions: dict[str, list[str | None]],
                    reference: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The gate's features (m, n, F), which of `predictions`' columns answered (m, n), and their prompt embeddings
        (m, n, d)."""
        embedder = self.embedder
        columns = [[answer(p) or "" for p in column] for column in predictions.values()]
        answered = np.array([[bool(p) for p in col] for col in columns], dtype=bool).reshape(len(columns), len(pairs))
        prompt_emb = np.stack([embedder.encode([p or FALLBACK_PROMPT for p in col]) for col in columns])  # (m, n, d)
        texts = embedder.encode_texts([str(t) for t in pairs[ORIGINAL]] + [str(t) for t in pairs[REWRITTEN]])  # (2n, d)
        change = pair_change(texts[: len(pairs)], texts[len(pairs):])
        if reference is not None and reference.shape[1] != prompt_emb.shape[2]:
            reference = None  # a member predicting in another embedder's space gives no reference here
        features = gate_features(answered, prompt_emb, np.stack([words(col) for col in columns]), change,
                                 words(pairs[REWRITTEN].tolist()), reference, unit_rows(texts[: len(pairs)]))
        return features, answered, prompt_emb

    def adopt(self, label: str, member: Method) -> None:
        """Use `member`, already fitted, as member `label`: `fit` will not refit it."""
        if label not in self.members:
            raise DataError(f"ensemble: no member labelled '{label}'")
        self.members[label] = member
        self.prefit.add(label)

    def candidates(self, pairs: pd.DataFrame) -> dict[str, list[str | None]]:
        """Each member's prompts for the pairs (None where it abstains), by member label."""
        return {label: member.predict(pairs) for label, member in self.members.items()}

    def predict(self, pairs: pd.DataFrame) -> list[str | None]:
        """One prompt per row: the joined members (concat) or the selected candidate (select), plus the suffix."""
        return self.combine(pairs, self.candidates(pairs))

    def combine(self, pairs: pd.DataFrame, predictions: dict[str, list[str | None]]) -> list[str | None]:
        """Prompts from the members' `predictions` (by label); where a member abstains, the first member (in member
        order) that answered stands in for it."""
        if self.config.mode == "gate":
            return self.gated(pairs, predictions)
        columns = fill_abstentions([predictions[label] for label in self.members])
        if self.config.mode == "concat":
            chosen = [join_prompts(list(row), self.config.separator) for row in zip(*columns)]
        else:
            chosen = self.select(columns, self.reference_embeddings(pairs, columns))
        if self.suffix.strip():
            chosen = [join_prompts([p, self.suffix], self.config.separator) for p in chosen]
        return never_blank(chosen)

    def gated(self, pairs: pd.DataFrame, predictions: dict[str, list[str | None]]) -> list[str | None]:
        """Per row, the answering member with the best score the gate predicts (None where every member abstained)."""
        if self.gate is None:
            raise DataError("ensemble: gate mode needs a fitted gate; run `promptrec fit` first")
        hedged = self.hedged(predictions)
        features, answered, _ = self.gate_inputs(pairs, hedged, self._reference(self.members, pairs))
        choice = self.gate.choose(features, answered)
        columns = list(hedged.values())
        chosen = [columns[m][row] if m >= 0 else None for row, m in enumerate(choice)]
        if self.suffix.strip():
            chosen = [join_prompts([p, self.suffix], self.config.separator) if p else None for p in chosen]
        return chosen

    def row_features(self, pairs: pd.DataFrame,
                     predictions: dict[str, list[str | None]]) -> tuple[np.ndarray, np.ndarray]:
        """The gate's features (m, n, F) of the members' `predictions` (hedged, as `choices`) and which answered
        (m, n), as the gate sees them when predicting (`explain` shows them)."""
        features, answered, _ = self.gate_inputs(pairs, self.hedged(predictions), self._reference(self.members, pairs))
        return features, answered

    def reference_embeddings(self, pairs: pd.DataFrame, columns: list[list[str]]) -> np.ndarray:
        """(n, d) per-row targets: a member's predicted embeddings (auto, if offered), else the members' centroid."""
        embedder = self.embedder
        if self.config.reference == "auto":
            for label, member in self.members.items():
                if isinstance(member, PredictsEmbeddings):
                    emb = np.asarray(member.predict_embeddings(pairs), dtype=np.float32)  # (n, d)
                    if emb.shape != (len(pairs), embedder.dim):
                        raise DataError(f"ensemble: member '{label}' predicted embeddings of shape {emb.shape}, "
                                        f"expected ({len(pairs)}, {embedder.dim}) for {embedder.label}")
                    return emb
        member_emb = np.stack([embedder.encode(col) for col in columns])  # (members, n, d)
        return member_emb.mean(axis=0)  # (n, d); only directions matter below

    def select(self, columns: list[list[str]], reference: np.ndarray) -> list[str]:
        """Per row, the candidate (a member's prompt or a join of several) with the highest cosine to the reference."""
        subsets = candidate_subsets(len(columns), self.config.max_subset)
        rows = list(zip(*columns))
        texts = [[join_prompts([row[i] for i in subset], self.config.separator) for subset in subsets] for row in rows]
        cand_emb = self.embedder.encode([t for row in texts for t in row]).reshape(len(rows), len(subsets), -1)  # (n, c, d)
        cosine = np.einsum("ncd,nd->nc", cand_emb, unit_rows(reference))  # (n, c)
        # argmax takes the first of equal scores, so ties go to single members, then earlier members.
        return [row[int(i)] for row, i in zip(texts, cosine.argmax(axis=1))]

    def save(self, folder: Path) -> None:
        """Write method.json (the learned suffix as state) and each member into a subfolder named by its label."""
        folder = Path(folder)
        for label, member in self.members.items():
            member.save(safe_child(folder, label))
        save_config(folder, self.name, self.config, state={"suffix": self.learned_suffix, "hedge": self.hedge})
        if self.gate is not None:
            self.gate.save(folder)

    @classmethod
    def load(cls, folder: Path) -> "EnsembleMethod":
        """Read method.json and load each member from its subfolder."""
        folder = Path(folder)
        config, state = load_saved(folder, cls)
        # Each member folder must hold the method its spec names (load_saved refuses another one in one line).
        method = cls(config, {label: method_class(name).load(safe_child(folder, label)) for label, name in config.specs()})
        method.prefit = set()  # a loaded ensemble refits all its members if fit is called again
        method.learned_suffix, method.hedge = state.get("suffix"), state.get("hedge")
        method.gate = Gate.load(folder, method.choices()) if config.mode == "gate" else None
        if method.gate is not None and method.gate.weights.shape[1] != len(FEATURES) + len(method.choices()):
            raise DataError(f"{folder / GATE_FILE}: a gate over {method.gate.weights.shape[1]} features; this version "
                            f"computes {len(FEATURES) + len(method.choices())} (an older promptrec saved it): refit "
                            "with `promptrec fit`")
        return method
