"""Method `evidence`: read the instruction a rewriter left in its own output and turn it into a prompt.

Real rewrites often say what they were asked to do: a lead-in ("Sure, here's the text rewritten as a gamer's
guide:") or an offer ("I'd be happy to help you rewrite the text without jargon!"), a title on the first line
("## Time Travel Agency Billboard Ads"), a closing note ("I have rewritten the text in the style of a pirate."), or
a refusal that restates the task ("I am unable to convert the text into a manifesto ..."). `find_evidence` extracts
that phrase by rules; `fit` learns from training triples which verb the prompts used for each cue word ("converted"
-> "Convert"), which phrase -> prompt template scores best per kind of evidence, and abstains on kinds that do not
beat the best constant prompt. Rows without evidence get None.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from promptrec.clean import CLOSING, HEADING, LEAD_IN, OFFER, OFFER_WINDOW, REFUSAL, REFUSAL_WINDOW
from promptrec.data import PROMPT, REWRITTEN, DataError, atomic_write
from promptrec.methods.base import UsesEmbedder, answer, load_saved, safe_child, save_config

log = logging.getLogger(__name__)

KINDS = ("lead_in", "heading", "closing", "refusal")
CHOICES_FILE = "evidence.json"
DEFAULT_VERB = "Rewrite"

# Words naming the act of rewriting: stripped from a phrase's front, and kept as its cue for the prompt's verb.
_ACTS = set(
    "rewrite rewritten revised converted transformed adapted rephrased reworded translated framed presented "
    "described explained recast changed modified edited updated reimagined restyled crafted written "
    "explanation description translation framing rephrasing adaptation transformation conversion revision "
    "reformulation rendition interpretation recasting".split()
)
# Words that say "the text, changed" and nothing about how: stripped from the front of an extracted phrase.
_GENERIC = _ACTS | set(
    "the a an your my this that our text texts passage paragraph paragraphs sentence sentences content version "
    "completed requested original source given provided above following new possible final same piece attempt try "
    "draft suggestion".split()
)
# Words that open an instruction clause: "as a poem", "in the style of", "into a riddle", "without jargon".
_RELATIONS = set(
    "as in into to with using without from for like through after that so where while by on about "
    "emphasizing focusing".split()
)
_CLAUSE_STARTS = {"as", "in", "into", "with", "using", "without"}
# Words by which a rewrite names its instruction without saying it ("using the given prompt"): no evidence.
_SELF = {"prompt", "prompts", "instruction", "instructions", "request"}
_INPUT_NOUNS = set("text passage paragraph sentence article segment content original source input".split())
# Refusals name what they will not do with words that carry no instruction: those phrases are not evidence.
_REFUSAL_GENERIC = set(
    "assistance help that this it request content information responses response a an the with any such "
    "your my these those text".split()
)

@dataclass(frozen=True)
class Evidence:
    """The instruction evidence of one rewrite: its kind, the phrase as written, where it sits, the instruction
    clause made from it ("as a gamer's guide") and the word naming the act ("converted"; "" if none)."""

    kind: str  # one of KINDS
    phrase: str  # exactly rewrite[span[0]:span[1]]
    span: tuple[int, int]  # character offsets in the raw rewritten text
    core: str  # the phrase reduced to an instruction clause, e.g. "in the style of a pirate"
    cue: str = ""  # lowercase act word: a participle of the phrase ("converted") or a refusal's verb ("turn")


def _strip_generic(words: list[str], generic: set[str]) -> list[str]:
    """`words` without its leading generic words."""
    while words and words[0].lower().strip(",") in generic:
        words = words[1:]
    return words


def act_cue(phrase: str) -> str:
    """The first act word among the phrase's leading generic words ("the text converted into ..." -> "converted")."""
    for word in phrase.replace("**", "").lower().split():
        word = word.strip(",")
        if word in _ACTS:
            return word
        if word not in _GENERIC:
            return ""
    return ""


def instruction_clause(phrase: str, generic: set[str] = _GENERIC) -> str:
    """The instruction clause of an extracted phrase: generic leading words ("the rewritten text") and trailing
    asides ("you requested") go; a bare noun phrase becomes "as a <noun phrase>", a relative clause after generic
    words ("the text that is shorter") "so that it is shorter". Empty when nothing is left, or nothing but a
    reference to the prompt itself ("using the given prompt")."""
    words = phrase.replace("**", "").split()
    kept = _strip_generic(words, generic)
    if kept and kept[0].lower() == "of":
        # "(a rewritten version) of the source text in the style of X": the of-part names the input; without
        # an input noun ("(a description) of the plan as an extreme sport") the instruction starts at "as".
        nouns = [i for i, w in enumerate(kept[:5]) if w.lower().strip(",") in _INPUT_NOUNS]
        later = [i for i, w in enumerate(kept) if w.lower() in _CLAUSE_STARTS]
        cut = nouns[0] + 1 if nouns else later[0] if later else 1
        kept = _strip_generic(kept[cut:], generic)
    relative = len(kept) < len(words) and words[len(words) - len(kept) - 1].lower() in ("that", "which")
    text = re.sub(r"\s*,?\s*(?:that )?(?:you(?:'ve| have)? (?:requested|asked for|provided|described)|as requested|"
                  r"for you|(?:from|of|based on|for) the (?:(?:given|provided|original|source) )*"
                  r"(?:text|passage|context))$",
                  "", " ".join(kept), flags=re.IGNORECASE).strip(" ,;-–")
    empty = generic | _RELATIONS | _SELF  # a text of only these words names no instruction
    if not text or all(w.lower() in empty for w in text.split()):
        return ""
    first = text.split()[0]
    if relative:
        return f"so that it {text}"
    if first.lower() in _RELATIONS:
        return text
    return f"as {'an' if first[0].lower() in 'aeiou' else 'a'} {text}"


def _lead_in(text: str) -> Evidence | None:
    """A "Sure, here's <phrase>:" opening whose phrase names more than "the text", else an offer naming the act
    early on ("I'd be happy to help you rewrite the text for a child!")."""
    match = LEAD_IN.match(text[:600])
    core = instruction_clause(match["phrase"]) if match else ""
    if core:
        return Evidence("lead_in", match["phrase"], match.span("phrase"), core, act_cue(match["phrase"]))
    match = OFFER.search(text[:OFFER_WINDOW])
    core = instruction_clause(match["phrase"], _GENERIC | {"it"}) if match else ""  # "I can revise it for you"
    return Evidence("lead_in", match["phrase"], match.span("phrase"), core, match["verb"].lower()) if core else None


def _lead_in_end(text: str) -> int:
    """Where the text after a lead-in line starts (0 when there is no lead-in)."""
    match = LEAD_IN.match(text[:600])
    if match is None:
        return 0
    newline = text.find("\n", match.end())
    return len(text) if newline < 0 else newline + 1


def _heading(text: str) -> Evidence | None:
    """A title on the first non-empty line (after any lead-in): `## X`, `**X**` or `Title: X`."""
    line = re.compile(r"[^\n]*\S[^\n]*").search(text, _lead_in_end(text))
    match = HEADING.fullmatch(text, *line.span()) if line else None
    if match is None:
        return None
    group = next(g for g in ("hash", "bold", "title") if match[g] is not None)
    # Trim markup and a trailing colon inside the group, so the span covers exactly the phrase.
    inner = re.compile(r"[^\s*#:_]([^\n]*[^\s*#:_])?").search(text, *match.span(group))
    if inner is None:
        return None
    phrase = inner[0]
    if "[" in phrase or phrase.endswith(",") or len(phrase.split()) > 15 or LEAD_IN.match(phrase):
        return None  # placeholders ("[Your Name]"), salutations ("Dear Sir,"), sentences, bold lead-ins
    core = instruction_clause(phrase)
    return Evidence("heading", phrase, inner.span(), core) if core else None


def _closing(text: str) -> Evidence | None:
    """A closing note in the last paragraph: "I have rewritten the text in the style of a pirate."."""
    tail_start = max(text.rstrip().rfind("\n"), 0)
    match = CLOSING.search(text, tail_start)
    if match is None:
        return None
    core = instruction_clause(match["phrase"])
    return Evidence("closing", match["phrase"], match.span("phrase"), core, match["verb"].lower()) if core else None


# "I cannot rephrase this text| as a love letter, as ...": REFUSAL stops its phrase before any "as" (the start of a
# reason as often as of the task); after an object that names no task the "as a/an/if ..." clause is the task.
_AS_CLAUSE = re.compile(r"\s+(?P<clause>as (?:a|an|if|though)\s[^\n.!?,;]*[^\s\n.!?,;])", re.IGNORECASE)


# Gemma's other refusal: "The text does not describe a perfume advertisement, therefore I cannot ..." names the task
# as what the text lacks (an "information about" in front is dropped; a phrase starting with it is no task).
_LACKS = re.compile(
    r"^\W*(?:the|this) (?:provided |given |original |source )?(?:text|passage)(?: you(?: have)? provided)? does not "
    r"(?P<verb>describe|contain|"
    r"provide|mention|include|discuss)\s+(?:any\s+)?(?:(?:information|details|data)\s+(?:about|on|regarding)\s+)?"
    r"(?P<phrase>[^\n.!?,;]*?[^\s\n.!?,;])(?=\s*(?:[.!?,;\n]|$|\s+(?:therefore|thus|so|that)\b))",
    re.IGNORECASE,
)
_LACKS_GENERIC = {"information", "details", "data", "evidence", "content", "elements", "mention", "reference"}


def _lacks(text: str) -> Evidence | None:
    """"The text does not describe an inventor's blueprint, therefore ..." -> "as an inventor's blueprint"."""
    match = _LACKS.match(text[:REFUSAL_WINDOW])
    words = [w for w in match["phrase"].lower().split() if w not in ("a", "an", "the", "any")] if match else []
    if not words or words[0] in _LACKS_GENERIC | _REFUSAL_GENERIC:
        return None
    core = instruction_clause(match["phrase"], _GENERIC | _REFUSAL_GENERIC)
    return Evidence("refusal", match["phrase"], match.span("phrase"), core, match["verb"].lower()) if core else None


def _restated(text: str) -> Evidence | None:
    """A refusal restating the task: "I cannot provide a haiku based on ..." -> "a haiku"; "I cannot express this
    as a reality show confession." -> "as a reality show confession"."""
    match = REFUSAL.search(text[:REFUSAL_WINDOW])
    if match is None:
        return None
    phrase, span = match["phrase"], match.span("phrase")
    words = [w.lower() for w in phrase.split()]
    clause = _AS_CLAUSE.match(text, span[1], REFUSAL_WINDOW)
    if clause is not None and not instruction_clause(phrase, _GENERIC | _REFUSAL_GENERIC):
        # "this text", "a description of this text": the object names no task; the clause after it does
        phrase, span, words = clause["clause"], clause.span("clause"), clause["clause"].lower().split()
    if all(w in _REFUSAL_GENERIC for w in words) or (len(words) > 1 and words[1] in ("that", "which")):
        return None  # "assistance with that request", "content that is biased": a policy, not the task
    core = instruction_clause(phrase, _GENERIC | _REFUSAL_GENERIC)
    return Evidence("refusal", phrase, span, core, match["verb"].lower()) if core else None


def _refusal(text: str) -> Evidence | None:
    """A refusal's evidence: the task it restates, else what it says the text "does not describe"."""
    return _restated(text) or _lacks(text)


_FINDERS = {"lead_in": _lead_in, "heading": _heading, "closing": _closing, "refusal": _refusal}


def find_evidence(rewrite: str, kinds: Sequence[str] = KINDS) -> Evidence | None:
    """The first evidence found in `rewrite`, trying `kinds` in order; None when it has none.

    >>> find_evidence("Sure, here's the text rewritten as a gamer's guide:\\n\\nLevel 1 ...").core
    "as a gamer's guide"
    """
    if not isinstance(rewrite, str) or not rewrite.strip():
        return None
    for kind in kinds:
        found = _FINDERS[kind](rewrite)
        if found is not None:
            return found
    return None


def evidence_table(pairs: pd.DataFrame, kinds: Sequence[str] = KINDS) -> list[Evidence | None]:
    """The evidence of every row's raw rewritten text, in order."""
    return [find_evidence(text, kinds) for text in pairs[REWRITTEN].tolist()]


def first_word(prompt: str) -> str:
    """The capitalised first word of a prompt: its verb in nearly every rewrite prompt ("Convert", "Make")."""
    match = re.search(r"[A-Za-z]+", prompt)
    return match[0].capitalize() if match else DEFAULT_VERB


def learn_verbs(found: Sequence[Evidence | None], prompts: Sequence[str], min_rows: int) -> dict[str, dict[str, str]]:
    """Per kind, the most common first word of the true prompts for each cue seen on `min_rows` rows or more.

    Only cues get a verb: the rewriter echoes the prompt's verb ("converted" for "Convert"), which carries over to
    new sources, while a kind's most common verb is the style of its training sources (leave-one-source-out:
    it lowered cue-less rows from 0.278 to 0.266 [proxy])."""
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for evidence, prompt in zip(found, prompts):
        if evidence is not None and evidence.cue:
            counts[evidence.kind, evidence.cue][first_word(prompt)] += 1
    verbs: dict[str, dict[str, str]] = defaultdict(dict)
    for (kind, cue), seen in sorted(counts.items()):
        if seen.total() >= min_rows:
            verbs[kind][cue] = seen.most_common(1)[0][0]
    return dict(verbs)


def render(template: str, found: Evidence, verbs: dict[str, dict[str, str]]) -> str:
    """Fill `template` ({verb}, {core}, {phrase}) with one row's evidence; the verb is the one learned for its cue."""
    verb = verbs.get(found.kind, {}).get(found.cue, DEFAULT_VERB)
    return template.format(verb=verb, core=found.core, phrase=found.phrase).strip()


@dataclass
class KindChoice:
    """What fit learned for one kind of evidence: the template to use, or to abstain."""

    template: str
    train_score: float  # mean score of this template on the training rows of this kind
    baseline: float  # the best constant prompt's mean score on the same rows
    rows: int
    abstain: bool  # true when the template did not beat the baseline by min_gain


@dataclass
class EvidenceConfig:
    """Options of the evidence method."""
    model_fields = ("embedder",)  # NamesModels: the fields naming a model, which bundle carries

    embedder: str = "proxy"  # metric embedder used by fit to score the candidate templates
    kinds: list[str] = field(default_factory=lambda: list(KINDS))  # evidence read, in this order of preference
    # Phrase -> prompt templates ({verb}: learned for the cue, else "Rewrite"; {core}: "as a gamer's guide";
    # {phrase}: the words as written). With several, fit keeps the best per kind on its training rows; unfitted,
    # the first is used. One by default: under leave-one-source-out CV (bench/evidence_cv.py) this template beat
    # the choice fit made among seven ("it" / "this text" / "the text" / ":" {phrase} variants), which follows the
    # training sources' wording.
    templates: list[str] = field(default_factory=lambda: ["{verb} this {core}."])
    min_verb_rows: int = 3  # a cue gets its own learned verb when seen on this many training rows
    min_gain: float = 0.0  # keep a kind only when it beats the best constant prompt by this on training rows

    def __post_init__(self):
        for kind in self.kinds:
            if kind not in KINDS:
                raise DataError(f"evidence: unknown kind '{kind}' (known: {', '.join(KINDS)})")
        if not self.templates:
            raise DataError("evidence: needs at least one template")
        for template in self.templates:
            if "{core}" not in template and "{phrase}" not in template:
                raise DataError(f"evidence: template '{template}' has neither {{core}} nor {{phrase}}")


class EvidenceMethod(UsesEmbedder):
    """Prompts from the instruction evidence in the raw rewrite; abstains (None) on rows without it."""

    name = "evidence"
    Config = EvidenceConfig

    def __init__(self, config: EvidenceConfig | None = None):
        self.config = config or EvidenceConfig()
        self.choices: dict[str, KindChoice] = {}
        self.verbs: dict[str, dict[str, str]] = {}

    def fit(self, triples: pd.DataFrame) -> None:
        """Learn the verb per cue, then per kind the template with the best mean score on its training rows."""
        from promptrec.methods.constant import best_constant
        from promptrec.metric import sharpened_cosine

        found = evidence_table(triples, self.config.kinds)
        truths = triples[PROMPT].astype(str).tolist()
        self.verbs = learn_verbs(found, truths, self.config.min_verb_rows)
        constant_emb = self.embedder.encode([best_constant(truths, self.embedder.encode)])  # (1, dim)
        self.choices = {}
        for kind in self.config.kinds:
            rows = [i for i, f in enumerate(found) if f is not None and f.kind == kind]
            if not rows:
                continue
            true_emb = self.embedder.encode([truths[i] for i in rows])  # (rows, dim)
            baseline = float(sharpened_cosine(constant_emb.repeat(len(rows), 0), true_emb).mean())
            scores = {template: float(sharpened_cosine(self.embedder.encode(
                [render(template, found[i], self.verbs) for i in rows]), true_emb).mean())
                for template in self.config.templates}
            template = max(scores, key=scores.get)  # the first of equal scores
            self.choices[kind] = KindChoice(template, scores[template], baseline, len(rows),
                                            abstain=scores[template] <= baseline + self.config.min_gain)
            log.info("evidence %s: %d rows, %r scores %.4f vs constant %.4f%s", kind, len(rows), template,
                     scores[template], baseline, " -> abstain" if self.choices[kind].abstain else "")

    def predict(self, pairs: pd.DataFrame) -> list[str | None]:
        """One prompt per row with evidence of a kept kind, None elsewhere. Unfitted: the first template."""
        first = KindChoice(self.config.templates[0], 0.0, 0.0, 0, abstain=False)
        out: list[str | None] = []
        for found in evidence_table(pairs, self.config.kinds):
            choice = self.choices.get(found.kind, first) if found is not None else None  # unseen kind: the rule
            out.append(render(choice.template, found, self.verbs) if choice and not choice.abstain else None)
        return out

    def save(self, folder: Path) -> None:
        """Write method.json and the learned verbs and choices (evidence.json)."""
        folder = Path(folder)
        save_config(folder, self.name, self.config)
        with atomic_write(folder / CHOICES_FILE) as handle:
            json.dump({"verbs": self.verbs, "choices": {k: asdict(c) for k, c in self.choices.items()}}, handle, indent=2)

    @classmethod
    def load(cls, folder: Path) -> "EvidenceMethod":
        """Read method.json and, when fitted, evidence.json."""
        folder = Path(folder)
        method = cls(load_saved(folder, cls)[0])
        path = safe_child(folder, CHOICES_FILE)
        if path.is_file():
            try:
                learned = json.loads(path.read_text(encoding="utf-8"))
                method.verbs = {kind: dict(cues) for kind, cues in learned["verbs"].items()}
                method.choices = {kind: KindChoice(**c) for kind, c in learned["choices"].items()}
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
                raise DataError(f"{path}: not a valid evidence file") from None
        return method


def coverage(predictions: Sequence[str | None], truths: Sequence[str], embedder,
             sources: Sequence[str] | None = None) -> pd.DataFrame:
    """Per source (and 'all'): rows, covered rows (a non-blank prediction), coverage, and the mean score of the
    covered rows' predictions, labelled with the embedder."""
    from promptrec.metric import score

    covered = np.array([answer(p) is not None for p in predictions])
    per_row = np.full(len(covered), np.nan)
    if covered.any():
        kept = np.flatnonzero(covered)
        per_row[kept] = score([predictions[i] for i in kept], [truths[i] for i in kept], embedder).per_row
    groups = np.asarray(sources if sources is not None else ["all"] * len(covered), dtype=object)
    names = list(dict.fromkeys(groups.tolist())) + (["all"] if sources is not None else [])
    rows = []
    for name in names:
        mask = np.ones(len(groups), bool) if name == "all" and sources is not None else groups == name
        hit = mask & covered
        rows.append({"source": name, "rows": int(mask.sum()), "covered": int(hit.sum()),
                     "coverage": float(hit.sum() / max(mask.sum(), 1)),
                     "score": float(per_row[hit].mean()) if hit.any() else float("nan"), "embedder": embedder.label})
    return pd.DataFrame(rows)
