"""Mean-prompt optimiser: one text maximising the mean score against many prompts (beam search, then pruning)."""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from promptrec.data import DataError, atomic_write
from promptrec.methods.base import answer
from promptrec.metric import sharpen
from promptrec.splits import held_out
from promptrec.vectors import Encode, most_typical

# Scores a batch of candidate texts: higher is better, one float per text.
Objective = Callable[[list[str]], np.ndarray]
# Rates each vocabulary word for one text: higher, the more putting that word in is expected to raise the objective.
Guide = Callable[[str], np.ndarray]
_WORD = re.compile(r"\S+")


@dataclass
class OptimizeConfig:
    """Budget and shape of the search."""

    steps: int = 30  # beam-search steps at most
    seconds: float = 120.0  # wall-clock budget for the search (pruning runs after it, always to the end)
    beam: int = 4  # texts kept after each step
    edits: int = 48  # random edits (insertion or substitution) tried per beam text per step
    vocab_size: int = 400  # most frequent words of the training prompts used as the vocabulary
    max_words: int = 40  # edits never grow a text beyond this many words
    seed: int = 0  # seeds the edit sampler; with a step budget (not time) runs are reproducible
    # share of edits whose word is drawn from the `guide_top` words the guide rates best for the text (0: uniform);
    # 0.75 fits the training prompts faster but generalised worse to new prompt pools (docs/results.md: A mean prompt)
    guided: float = 0.0
    guide_top: int = 50

    def __post_init__(self) -> None:
        for name in ("beam", "edits", "vocab_size", "max_words", "guide_top"):
            if getattr(self, name) < 1:
                raise DataError(f"optimiser: {name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.guided <= 1.0:
            raise DataError(f"optimiser: guided must be a share in [0, 1], got {self.guided}")
        if self.steps < 0 or self.seconds < 0:
            raise DataError(f"optimiser: steps and seconds must not be negative, got {self.steps} and {self.seconds}")


@dataclass
class Step:
    """The best text after one step of the search."""

    step: int
    score: float
    text: str


@dataclass
class OptimizeResult:
    """The best text, its objective value, and how it got there (steps then pruning)."""

    text: str
    score: float
    trajectory: list[Step] = field(default_factory=list)
    evaluated: int = 0  # distinct texts scored


def words_of(text: str) -> list[str]:
    """Whitespace words, punctuation kept attached (so 'text.' stays one word)."""
    return _WORD.findall(text)


def vocabulary(prompts: Sequence[str], size: int) -> list[str]:
    """The `size` most frequent words of `prompts` (ties broken by first appearance)."""
    counts = Counter(word for prompt in prompts for word in words_of(prompt))
    return [word for word, _ in counts.most_common(size)]


class _Scorer:
    """Memoises the objective per text, so each distinct text is scored once."""

    def __init__(self, objective: Objective):
        self.objective = objective
        self.seen: dict[str, float] = {}

    def __call__(self, texts: list[str]) -> list[float]:
        fresh = list(dict.fromkeys(t for t in texts if t not in self.seen))
        if fresh:
            values = np.asarray(self.objective(fresh), dtype=np.float64).reshape(-1)
            self.seen.update(zip(fresh, values.tolist()))
        return [self.seen[t] for t in texts]


def _edits(words: list[str], vocab: list[str], count: int, max_words: int, rng: random.Random,
           favoured: list[str] | None = None, share: float = 0.0) -> list[str]:
    """`count` random single-word insertions or substitutions of `words`, as texts; a `share` of the new words come
    from `favoured`, the rest from `vocab`."""

    def word() -> str:
        return rng.choice(favoured) if favoured and share and rng.random() < share else rng.choice(vocab)

    out = []
    for _ in range(count):
        new = list(words)
        if new and (len(new) >= max_words or rng.random() < 0.5):
            new[rng.randrange(len(new))] = word()
        else:
            new.insert(rng.randrange(len(new) + 1), word())
        out.append(" ".join(new))
    return out


def prune(text: str, score: float, scorer: Callable[[list[str]], list[float]]) -> tuple[str, float]:
    """Delete words one at a time while some deletion does not lower the score (best deletion first)."""
    words = words_of(text)
    while len(words) > 1:
        options = [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
        values = scorer(options)
        best = int(np.argmax(values))
        if values[best] < score:
            break
        words, score = words_of(options[best]), values[best]
    return " ".join(words), score


def beam_search(start: str, vocab: Sequence[str], objective: Objective, config: OptimizeConfig,
                on_step: Callable[[Step], None] | None = None, guide: Guide | None = None) -> OptimizeResult:
    """Improve `start` by beam search over word insertions/substitutions (words the `guide` rates best for each beam
    text favoured, `config.guided`), then prune; the best score never drops."""
    if not vocab:
        raise DataError("optimiser: empty vocabulary (no words in the training prompts)")
    rng = random.Random(config.seed)
    scorer = _Scorer(objective)
    start = " ".join(words_of(start)) or vocab[0]
    beam = [(scorer([start])[0], start)]
    trajectory = [Step(0, beam[0][0], start)]
    if on_step:
        on_step(trajectory[0])
    deadline = time.monotonic() + config.seconds
    for step in range(1, config.steps + 1):
        if time.monotonic() >= deadline:
            break
        texts = [t for _, text in beam for t in _edits(words_of(text), list(vocab), config.edits, config.max_words, rng,
                                                       _favoured(text, vocab, guide, config), config.guided)]
        pool = dict((text, value) for value, text in beam)
        pool.update(zip(texts, scorer(texts)))
        # Sorting by (-score, text) keeps ties deterministic; old beam texts stay eligible, so the best never drops.
        beam = sorted(((v, t) for t, v in pool.items()), key=lambda item: (-item[0], item[1]))[: config.beam]
        trajectory.append(Step(step, beam[0][0], beam[0][1]))
        if on_step:
            on_step(trajectory[-1])
    text, value = prune(beam[0][1], beam[0][0], scorer)
    trajectory.append(Step(trajectory[-1].step + 1, value, text))
    if on_step:
        on_step(trajectory[-1])
    return OptimizeResult(text, value, trajectory, len(scorer.seen))


def _favoured(text: str, vocab: Sequence[str], guide: Guide | None, config: OptimizeConfig) -> list[str] | None:
    """The `config.guide_top` words of `vocab` the guide rates best for `text` (None: no guide, or unguided)."""
    if guide is None or config.guided <= 0:
        return None
    return [vocab[i] for i in np.argsort(-guide(text), kind="stable")[: config.guide_top]]


def _weighted_targets(targets: Sequence[str], encode: Encode) -> tuple[np.ndarray, np.ndarray]:
    """The distinct targets' embeddings (u, d) and their weights (u,), each target's share of `targets`."""
    unique, counts = np.unique(np.asarray(list(targets), dtype=object).astype(str), return_counts=True)
    return encode(list(unique)), counts / counts.sum()


def mean_scs_objective(targets: Sequence[str], encode: Encode) -> Objective:
    """Objective: mean cos**3 of a candidate's embedding against the (deduplicated, weighted) target prompts."""
    target_emb, weights = _weighted_targets(targets, encode)  # (u, d) unit rows, (u,)

    def objective(texts: list[str]) -> np.ndarray:
        cand_emb = encode(texts)  # (m, d) unit rows
        return sharpen(cand_emb @ target_emb.T) @ weights  # (m,)

    return objective


def mean_scs_guide(targets: Sequence[str], encode: Encode, vocab: Sequence[str]) -> Guide:
    """Guide for `mean_scs_objective`: each vocabulary word's own embedding against the objective's gradient at a
    text (a first-order guess: mean pooling moves a text's embedding toward a word put in it)."""
    target_emb, weights = _weighted_targets(targets, encode)  # (u, d), (u,)
    word_emb = encode(list(vocab))  # (v, d)

    def guide(text: str) -> np.ndarray:
        here = encode([text])[0]  # (d,) unit
        cosine = target_emb @ here  # (u,)
        gradient = (weights * 3 * cosine**2) @ (target_emb - cosine[:, None] * here[None, :])  # on the unit sphere
        return word_emb @ gradient  # (v,)

    return guide


@dataclass
class PromptReport:
    """Optimiser run on prompts: the result and held-out scores of the start and final texts."""

    result: OptimizeResult
    start: str
    label: str  # embedder label every score here was measured with
    train_rows: int
    holdout_rows: int
    train_start: float
    holdout_start: float | None  # None when nothing was held out
    holdout_final: float | None


def split_holdout(prompts: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of `prompts` by distinct text into (train, held-out); a text never lands in both."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"--holdout {fraction}: expected a fraction in [0, 1)")
    mask = held_out(prompts, fraction, seed)
    return [p for p, out in zip(prompts, mask) if not out], [p for p, out in zip(prompts, mask) if out]


def optimize_prompts(prompts: Sequence[str], embedder, start: str | None = None,
                     config: OptimizeConfig | None = None, holdout: float = 0.0,
                     on_step: Callable[[Step], None] | None = None) -> PromptReport:
    """Find one text maximising the mean score against `prompts` under `embedder`.

    The start defaults to the best training prompt; `holdout` keeps that fraction of distinct prompts aside.
    """
    config = config or OptimizeConfig()
    prompts = list(filter(None, map(answer, prompts)))
    train, held = split_holdout(prompts, holdout, config.seed)
    if not train:
        raise DataError("optimiser: no non-empty training prompts")
    start = " ".join(words_of(start)) if start and start.strip() else train[most_typical(train, embedder.encode)[0]]
    objective, vocab = mean_scs_objective(train, embedder.encode), vocabulary(train, config.vocab_size)
    guide = mean_scs_guide(train, embedder.encode, vocab) if config.guided > 0 else None  # unguided: no vocab pass
    result = beam_search(start, vocab, objective, config, on_step, guide)
    held_start, held_final = (mean_scs_objective(held, embedder.encode)([start, result.text]).tolist()
                              if held else (None, None))
    return PromptReport(result, start, embedder.label, len(train), len(held),
                        float(objective([start])[0]), held_start, held_final)


def save_report(path: str | Path, report: PromptReport) -> None:
    """Write the optimiser's result, held-out scores and trajectory as JSON (atomically)."""
    payload = {**{k: v for k, v in asdict(report).items() if k != "result"},
               "text": report.result.text, "score": report.result.score, "evaluated": report.result.evaluated,
               "trajectory": [asdict(step) for step in report.result.trajectory]}
    with atomic_write(path) as handle:
        json.dump(payload, handle, indent=2)
