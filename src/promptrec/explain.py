"""`promptrec explain`: audit one case of a saved method: the evidence in the rewrite, what each member proposed and
how far it agrees with the others, the gate's choice and features, the nearest bank prompts, a rerank member's
likelihood scores, and, given the truth, every candidate's score. `explain` returns it as data; `render` draws it
with Rich; a method opened with `open_model` writes nothing to disk."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from rich.console import Group, RenderableType
from rich.rule import Rule
from rich.text import Text

from promptrec.data import ID, ORIGINAL, PAIR_COLUMNS, PROMPT, REWRITTEN, DataError, read_table
from promptrec.methods.base import (
    CachesFeatures, Composite, CompositeConfig, Gated, Method, RanksCandidates, SearchesBank, UsesEmbedder, load_method,
    answer, never_blank,
)
from promptrec.methods.evidence import Evidence, find_evidence
from promptrec.methods.form import form_features
from promptrec.methods.gate import FEATURES, OWN_FEATURES, ROW_FEATURES, member_agreement
from promptrec.metric import Embedder, load_embedder, score
from promptrec.prompts import written_prompts

GIVEN_ID = "given"  # the id of a case given as --original/--rewritten texts


@dataclass(frozen=True)
class Case:
    """One row to explain: its two texts and, when known, the true prompt."""

    id: str
    original: str
    rewritten: str
    truth: str | None = None

    def pairs(self) -> pd.DataFrame:
        """The case as a one-row pairs table."""
        return pd.DataFrame({ID: [self.id], ORIGINAL: [self.original], REWRITTEN: [self.rewritten]})


@dataclass
class Candidate:
    """What one member (or a lone method) proposed for the case."""

    label: str  # member label (the method name for a method that is not an ensemble)
    method: str
    prompt: str | None  # None: it abstained
    agreement: float | None  # mean cosine to the other answering choices of the gate (members, hedged ones) or members
    truth_score: float | None  # cos**3 against the truth on `Explanation.embedder` (None: no truth, or abstained)


@dataclass
class GateView:
    """The gate's pick for the case and what it saw."""

    choice: str | None  # the member picked; None when every member abstained
    row_features: dict[str, float]  # shared by every member
    member_features: dict[str, dict[str, float]]  # member -> its own features
    predicted_scores: dict[str, float | None]  # member -> the score the gate predicts (None: abstained)
    default: str | None = None  # kept on rows where these members answered unless another's prediction beats it by...
    margin: float | None = None  # ...this much (None with a default: always kept)
    hedge: str | None = None  # the mean prompt the gate may pick alone or after a member's prompt (`mean`, `label+mean`)


@dataclass
class Neighbour:
    """A bank prompt near a member's query."""

    prompt: str
    cosine: float
    written: bool = False  # one of the prompts this project wrote (promptrec.prompts), not only a training prompt


@dataclass
class Reranked:
    """A candidate prompt a rerank member scored, and the members that proposed it."""

    prompt: str
    score: float  # mean log p(rewrite | prompt, original) - mean log p(rewrite | original)
    cosine: float  # to the rerank member's bank query; the member picks the best score + cosine_weight * cosine
    members: list[str]  # the other members whose prompt it is (empty: one of the rerank member's bank neighbours)


@dataclass
class RerankView:
    """A rerank member's likelihood scores for the case."""

    baseline: float  # mean log p(rewrite tokens | original): the no-prompt normaliser
    cosine_weight: float
    candidates: list[Reranked]  # best first (highest score + cosine_weight * cosine)


@dataclass
class Explanation:
    """Everything `explain` found for one case; every cosine and score is on the embedder named by `embedder`."""

    id: str
    method: str
    mode: str | None  # the ensemble's mode (concat, select, gate); None for another method
    original_text: str
    rewritten_text: str
    evidence: Evidence | None  # found in the raw rewrite
    form: dict[str, float]  # the form reader's features of the rewrite and its change (methods/form.py)
    candidates: list[Candidate]
    gate: GateView | None
    neighbours: dict[str, list[Neighbour]]  # member label -> its nearest bank prompts, best first
    rerank: dict[str, RerankView]  # rerank member label -> its scores of its candidates and the other members' prompts
    final_prompt: str  # what `recover` writes for the case
    fallback: bool  # the method (every member of an ensemble) abstained: `final_prompt` came from the fallback
    truth: str | None
    final_score: float | None
    embedder: str

    def to_json(self) -> str:
        """One JSON document of every field."""
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, indent=2, allow_nan=False)


def read_case(data: Path | None = None, row: str | None = None, original: str | None = None,
              rewritten: str | None = None, truth: str | None = None) -> Case:
    """Row `row` of table `data` (its rewrite_prompt, if any, is the truth), or the two texts given; `truth`
    overrides the table's. Example: `read_case(Path("test.csv"), "ex00")`."""
    by_row, by_text = data is not None or row is not None, original is not None or rewritten is not None
    if by_row == by_text:
        raise DataError("explain: give --row ID with --data FILE, or --original TEXT with --rewritten TEXT"
                        + (" (not both)" if by_row else ""))
    if truth is not None and not truth.strip():
        raise DataError("explain: --truth is empty")
    if by_text:
        for option, text in (("--original", original), ("--rewritten", rewritten)):
            if text is None or not text.strip():
                raise DataError(f"explain: {option} is {'missing' if text is None else 'empty'}")
        return Case(GIVEN_ID, original, rewritten, truth)
    if data is None or row is None:
        raise DataError("explain: --row needs --data FILE" if data is None else f"{data}: give --row ID to explain")
    frame = read_table(data, PAIR_COLUMNS)
    hits = np.flatnonzero(frame[ID].to_numpy() == str(row))
    if not len(hits):
        raise DataError(f"{data}, column '{ID}': no row with id '{row}'")
    index = int(hits[0])
    record = frame.iloc[index]
    for column in (ORIGINAL, REWRITTEN):
        if not record[column].strip():
            raise DataError(f"{data}, row {index + 1}, column '{column}': empty text (id '{row}')")
    return Case(str(row), record[ORIGINAL], record[REWRITTEN], truth or answer(record.get(PROMPT)))


def open_model(folder: str | Path) -> Method:
    """The method saved in `folder` (one line naming it when it does not exist), its parts' on-disk feature caches
    off: one case's texts are encoded in memory, where reading the whole cache costs more and adding writes."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such model folder")
    method = load_method(folder)
    for part in _parts(method):
        if isinstance(part.config, CachesFeatures):
            part.config.feature_cache = False  # read when its cache is first built, on the first predict
    return method


def _parts(method: Method) -> Iterator[Method]:
    """The method and, for a composite, every member at any depth."""
    yield method
    if isinstance(method, Composite):
        for member in method.members.values():
            yield from _parts(member)


def metric_embedder(method: Method) -> Embedder:
    """The method's own metric embedder (its `config.embedder`); proxy for a method that names none."""
    return method.embedder if isinstance(method, UsesEmbedder) else load_embedder("proxy")


def check_top_k(top_k: int) -> None:
    """Refuse a `top_k` below 1 in one line (the CLI asks before it loads any model)."""
    if top_k < 1:
        raise DataError(f"explain: --top-k must be at least 1, not {top_k}")


def explain(method: Method, case: Case, top_k: int = 5) -> Explanation:
    """Predict the case with `method` and collect why it chose its prompt (see `Explanation`).

    Example: `print(explain(open_model("models"), read_case(Path("test.csv"), "ex00")).final_prompt)`.
    """
    check_top_k(top_k)
    pairs = case.pairs()
    embedder = metric_embedder(method)
    members = method.members if isinstance(method, Composite) else {method.name: method}
    predictions = {label: list(member.predict(pairs)) for label, member in members.items()}
    raw = method.combine(pairs, predictions) if isinstance(method, Composite) else predictions[method.name]
    final = never_blank(raw)[0]
    gated = isinstance(method, Gated) and method.gate is not None
    # the gate's choices (members, then any hedged ones): its agreement feature spans all of them
    offered = {label: answer(column[0]) for label, column in (method.hedged(predictions) if gated else predictions).items()}
    prompts = {label: offered[label] for label in predictions}
    agreement = _agreement(offered, embedder)
    scored = [p for p in prompts.values() if p] + [final]
    per_row = score(scored, [case.truth] * len(scored), embedder).per_row if case.truth else [None] * len(scored)
    truth_of = {text: None if s is None else float(s) for text, s in zip(scored, per_row)}
    candidates = [Candidate(label, member.name, prompts[label], agreement[label], truth_of.get(prompts[label]))
                  for label, member in members.items()]
    # concat and select fill a row where every member abstained with the fallback prompt themselves; gate leaves
    # it blank for never_blank: either way the final prompt came from the fallback.
    fallback = not answer(raw[0]) or not any(prompts.values())
    return Explanation(
        id=case.id, method=method.name, mode=method.config.mode if isinstance(method.config, CompositeConfig) else None,
        original_text=case.original, rewritten_text=case.rewritten, evidence=find_evidence(case.rewritten),
        form=form_features(case.original, case.rewritten), candidates=candidates,
        gate=_gate_view(method, pairs, predictions) if gated else None, neighbours=_neighbours(members, pairs, top_k),
        rerank=_reranked(members, pairs, prompts), final_prompt=final, fallback=fallback,
        truth=case.truth, final_score=truth_of[final], embedder=embedder.label,
    )


def _agreement(prompts: dict[str, str | None], embedder: Embedder) -> dict[str, float | None]:
    """Per member, the mean cosine of its prompt to the other answering members' prompts (as the gate's feature)."""
    answered = [label for label, prompt in prompts.items() if prompt]
    if len(answered) < 2:
        return dict.fromkeys(prompts)
    prompt_emb = embedder.encode([prompts[label] for label in answered])[:, None, :]  # (a, 1, d) unit rows
    mean = member_agreement(np.ones((len(answered), 1), dtype=bool), prompt_emb)[:, 0]  # (a,)
    found = {label: float(value) for label, value in zip(answered, mean)}
    return {label: found.get(label) for label in prompts}


def _gate_view(ensemble: Gated, pairs: pd.DataFrame, predictions: dict[str, list[str | None]]) -> GateView:
    """The gate's features, predicted scores and choice for the one-row `pairs`."""
    features, answered = ensemble.row_features(pairs, predictions)  # (m, 1, F), (m, 1)
    predicted = ensemble.gate.predicted_scores(features, answered)[:, 0]  # (m,)
    choice = int(ensemble.gate.choose(features, answered)[0])
    labels = ensemble.choices()
    rule = ensemble.gate.rule(answered[:, 0])  # (default member, margin) of this kind of row, if fit saw one
    return GateView(
        choice=labels[choice] if choice >= 0 else None,
        row_features={name: float(features[0, 0, FEATURES.index(name)]) for name in ROW_FEATURES},
        member_features={label: {name: float(features[m, 0, FEATURES.index(name)]) for name in OWN_FEATURES}
                         for m, label in enumerate(labels)},
        predicted_scores={label: float(p) if np.isfinite(p) else None for label, p in zip(labels, predicted)},
        default=labels[rule[0]] if rule else None, margin=rule[1] if rule and np.isfinite(rule[1]) else None,
        hedge=ensemble.hedge,
    )


def _neighbours(members: dict[str, Method], pairs: pd.DataFrame, top_k: int) -> dict[str, list[Neighbour]]:
    """Per member that searches a bank, the `top_k` bank prompts nearest its query, best first."""
    found, written = {}, frozenset(written_prompts())
    for label, member in members.items():
        if isinstance(member, SearchesBank) and member.bank is not None:
            top, cosine = member.bank.nearest(member.bank_queries(pairs), top_k)  # (1, k) each
            found[label] = [Neighbour(member.bank.prompts[i], float(c), member.bank.prompts[i] in written)
                            for i, c in zip(top[0], cosine[0])]
    return found


def _reranked(members: dict[str, Method], pairs: pd.DataFrame, prompts: dict[str, str | None]) -> dict[str, RerankView]:
    """Per rerank member, its likelihood scores of its own candidates and of the other members' prompts, best first."""
    found = {}
    for label, member in members.items():
        if isinstance(member, RanksCandidates):
            others = {other: prompt for other, prompt in prompts.items() if other != label}
            ranking = member.rank(pairs, {other: [prompt] for other, prompt in others.items()})
            order = np.argsort(-ranking.keys()[0], kind="stable")[: len(ranking.prompts[0])]
            found[label] = RerankView(float(ranking.baseline[0]), ranking.cosine_weight, [
                Reranked(ranking.prompts[0][i], float(ranking.scores[0, i]), float(ranking.cosines[0, i]),
                         [other for other, p in others.items() if p and p.strip() == ranking.prompts[0][i]])
                for i in order])
    return found


# --- the Rich view: one unwrapped line per prompt, so a prompt is never split across lines --------------------------
HIGHLIGHT = "bold black on yellow"


def highlighted_rewrite(found: Explanation) -> Text:
    """The raw rewrite with the evidence span highlighted."""
    text = Text(found.rewritten_text)
    if found.evidence is not None:
        text.stylize(HIGHLIGHT, *found.evidence.span)
    return text


def _number(value: float | None, width: int = 9) -> str:
    """`value` to 4 decimals right-aligned in `width` characters; '-' when there is none."""
    return f"{value:{width}.4f}" if value is not None else f"{'-':>{width}}"


def _evidence_line(evidence: Evidence | None) -> Text:
    """The evidence found: its kind, the phrase highlighted, where it stands and the core it yields."""
    if evidence is None:
        return Text.assemble(("evidence ", "bold"), "none found in the rewrite")
    cue = f", cue '{evidence.cue}'" if evidence.cue else ""
    return Text.assemble(("evidence ", "bold"), f"{evidence.kind}: ", (evidence.phrase, HIGHLIGHT),
                         f" (characters {evidence.span[0]}-{evidence.span[1]}) -> '{evidence.core}'{cue}")


def _form_line(form: dict[str, float]) -> Text:
    """The form reader's non-zero features, by name (`to_json` has all of them)."""
    shown = ", ".join(f"{name} {value:g}" for name, value in form.items() if value)
    return Text.assemble(("form ", "bold"), shown or "(every feature zero)")


def _candidate_lines(found: Explanation) -> list[Text]:
    """A header, then one line per member: the gate's pick (or the member it appended the hedge to) marked '>', its
    numbers, its prompt last and whole."""
    chosen = found.gate.choice.removesuffix("+mean") if found.gate and found.gate.choice else None
    width = max(len("member"), *(len(c.label) for c in found.candidates))
    method_width = max(len("method"), *(len(c.method) for c in found.candidates))
    head = f"  {'member':<{width}}  {'method':<{method_width}}  {'agreement':>9}"
    head += f"  {'gate pred':>9}" if found.gate else ""
    head += f"  {'vs truth':>9}" if found.truth else ""
    lines = [Text(head + "  prompt", style="dim")]
    for c in found.candidates:
        mark = ">" if c.label == chosen else " "
        line = f"{mark} {c.label:<{width}}  {c.method:<{method_width}}  {_number(c.agreement)}"
        line += f"  {_number(found.gate.predicted_scores[c.label])}" if found.gate else ""
        line += f"  {_number(c.truth_score)}" if found.truth else ""
        lines.append(Text(line + "  ").append(c.prompt or "(abstained)", style="bold" if c.prompt else "dim"))
    return lines


def _gate_lines(gate: GateView) -> list[Text]:
    """The gate's choice and row features, then each member's own features and predicted score."""
    row = " · ".join(f"{name} {value:.4f}" for name, value in gate.row_features.items())
    kept = ""
    if gate.default:
        kept = f" (keeps {gate.default} " + ("always" if gate.margin is None else f"unless beaten by {gate.margin:g}") + ")"
    lines = [Text.assemble(("gate ", "bold"), f"chose {gate.choice or '(every member abstained)'}{kept}; row: {row}")]
    if gate.hedge:
        lines.append(Text(f"  hedge (mean): {gate.hedge}"))
    width = max(map(len, gate.member_features))
    for label, own in gate.member_features.items():
        values = " · ".join(f"{name} {value:.4f}" for name, value in own.items())
        lines.append(Text(f"  {label:<{width}}  {values} -> predicted {_number(gate.predicted_scores[label], 0)}"))
    return lines


def render(found: Explanation) -> Group:
    """The Rich view of an explanation."""
    members = ", ".join(c.label for c in found.candidates)
    how = f"{found.method} ({found.mode} over {members})" if found.mode else found.method
    parts: list[RenderableType] = [Text.assemble(("case ", "bold"), found.id, ("  method ", "bold"), how,
                                 ("  cosines and scores ", "bold"), f"[{found.embedder}]"),
                   Rule("rewritten text"), highlighted_rewrite(found), _evidence_line(found.evidence),
                   _form_line(found.form), Rule("candidates"), *_candidate_lines(found)]
    if found.gate:
        parts += _gate_lines(found.gate)
    if found.neighbours:
        parts.append(Rule("nearest bank prompts (cosine to each member's query)"))
        for label, near in found.neighbours.items():
            parts.append(Text(label, style="bold"))
            parts += [Text(f"  {rank:>2}  {n.cosine:.4f}  {n.prompt}")
                      .append("  [written]" if n.written else "", style="dim") for rank, n in enumerate(near, 1)]
    for label, view in found.rerank.items():
        parts.append(Rule(f"{label}: mean log p of the rewrite after each prompt, minus {view.baseline:.4f} (none)"))
        parts.append(Text(f"  {'':>2}  {'score':>7}  {'cosine':>7}  ranked by score + {view.cosine_weight:g} x cosine",
                          style="dim"))
        for rank, c in enumerate(view.candidates, 1):
            proposed = f"  [{', '.join(c.members)}]" if c.members else ""
            line = Text(f"  {rank:>2}  {c.score:+.4f}  {c.cosine:7.4f}  {c.prompt}")
            parts.append(line.append(proposed, style="dim"))
    parts += [Rule("final"), Text.assemble(("final prompt ", "bold"), (found.final_prompt, "bold green"),
                                           " (fallback: the method abstained)" if found.fallback else "")]
    if found.truth:
        parts += [Text.assemble(("truth        ", "bold"), found.truth),
                  Text.assemble(("score        ", "bold"), f"{found.final_score:.4f} [{found.embedder}]")]
    return Group(*parts)
