"""Method `evidence`: read the instruction a rewriter left in its own output and turn it into a prompt.

Real rewrites often say what they were asked to do: a lead-in ("Sure, here's the text rewritten as a gamer's
guide:"), a title on the first line ("## Time Travel Agency Billboard Ads"), a closing note ("I have rewritten
the text in the style of a pirate."), or a refusal that restates the task ("I am unable to convert the text into
a manifesto ..."). `find_evidence` extracts that phrase by rules; `fit` learns, per kind of evidence, which
phrase -> prompt template (and whether to swap in the nearest bank prompt) scores best on training rows, and
abstains on kinds that do not beat the best constant prompt. Rows without evidence get None.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from promptrec.data import PROMPT, REWRITTEN, DataError, atomic_write
from promptrec.methods.base import config_from_dict, read_config, safe_child, save_config

log = logging.getLogger(__name__)

KINDS = ("lead_in", "heading", "closing", "refusal")
MODES = ("template", "nearest", "joined")  # the filled template, the bank prompt nearest to it, or both
CHOICES_FILE = "evidence.json"

# Words that say "the text, changed" and nothing about how: stripped from the front of an extracted phrase.
_GENERIC = set(
    "the a an your my this that our text texts passage paragraph paragraphs sentence sentences content version "
    "rewrite rewritten revised converted transformed adapted rephrased reworded translated framed presented "
    "described explained recast changed modified edited updated reimagined restyled crafted written completed "
    "requested original source given provided above following new possible updated final same piece "
    # nouns for the act of rewriting itself: "the explanation as if it were a magic trick"
    "explanation description translation framing rephrasing adaptation transformation conversion revision "
    "reformulation rendition interpretation recasting".split()
)
# Words that open an instruction clause: "as a poem", "in the style of", "into a riddle", "without jargon".
_RELATIONS = set(
    "as in into to with using without from for like through after that so where while by on about "
    "emphasizing focusing".split()
)
_CLAUSE_STARTS = {"as", "in", "into", "with", "using", "without"}
_INPUT_NOUNS = set("text passage paragraph sentence article segment content original source input".split())
# Refusals name what they will not do with words that carry no instruction: those phrases are not evidence.
_REFUSAL_GENERIC = set(
    "assistance help that this it request content information responses response a an the with any such "
    "your my these those text".split()
)

_LEAD_IN = re.compile(
    r"^[\s*#_>]*(?:(?:sure|certainly|okay|ok|of course|absolutely|alright|great|no problem)\b[^\n:]{0,80}?)?"
    r"\bhere(?:'s|’s| is| are)\s+(?P<phrase>[^\n:.!?]*[^\s\n:.!?*])",
    re.IGNORECASE,
)
_HEADING = re.compile(  # matched against one whole line
    r"[ \t]*(?:#{1,6}[ \t]+(?P<hash>[^\n]+?)|\*\*(?P<bold>[^*\n]+?)\*\*[ \t]*:?|"
    r"(?:title|subject|headline)[ \t]*:[ \t]*(?P<title>[^\n]+?))[ \t]*",
    re.IGNORECASE,
)
_CLOSING = re.compile(
    r"(?:^|\n)[\s*]*(?:note:?[\s*]*)?(?:i have|i've|i)\s+(?:rewritten|converted|transformed|adapted|rephrased|"
    r"revised|changed|modified|recast|reworded|translated|written)\s+(?:the (?:original |source |given )?"
    r"(?:text|passage|paragraph|sentence)|it|this)?\s*(?P<phrase>[^\n.!?]*[^\s\n.!?*])",
    re.IGNORECASE,
)
_REFUSAL = re.compile(  # at the start, or after "..., therefore" as Gemma writes it
    r"(?:^\W*|\b(?:therefore|thus|so),?\s+)(?:(?:i'm|i am) sorry,?\s*(?:but\s*)?|i apologize,?\s*(?:but\s*)?|unfortunately,?\s*)?"
    r"(?:(?:i am|i'm)\s+(?:unable|not able)\s+to|i\s+(?:cannot|can't|can not|won't))\s+"
    r"(?P<verb>[a-z]+)\s+(?P<phrase>[^\n.!?,;]*?[^\s\n.!?,;])"
    r"(?=\s*(?:[.!?,;\n]|$|\s+(?:as|because|since|based on|due to|for the text|for this text|from the text|"
    r"from the given|from the provided|with the (?:given|provided) (?:text|context|information))\b))",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Evidence:
    """The instruction evidence of one rewrite: its kind, the phrase as written, where it sits, and the
    instruction clause made from it ("as a gamer's guide")."""

    kind: str  # one of KINDS
    phrase: str  # exactly rewrite[span[0]:span[1]]
    span: tuple[int, int]  # character offsets in the raw rewritten text
    core: str  # the phrase reduced to an instruction clause, e.g. "in the style of a pirate"


def _strip_generic(words: list[str], generic: set[str]) -> list[str]:
    """`words` without its leading generic words."""
    while words and words[0].lower().strip(",") in generic:
        words = words[1:]
    return words


def instruction_clause(phrase: str, generic: set[str] = _GENERIC) -> str:
    """The instruction clause of an extracted phrase: generic leading words ("the rewritten text") and trailing
    asides ("you requested") go; a bare noun phrase becomes "as a <noun phrase>". Empty when nothing is left."""
    words = _strip_generic(phrase.replace("**", "").split(), generic)
    if words and words[0].lower() == "of":
        # "(a rewritten version) of the source text in the style of X": the of-part names the input; without
        # an input noun ("(a description) of the plan as an extreme sport") the instruction starts at "as".
        nouns = [i for i, w in enumerate(words[:5]) if w.lower().strip(",") in _INPUT_NOUNS]
        later = [i for i, w in enumerate(words) if w.lower() in _CLAUSE_STARTS]
        cut = nouns[0] + 1 if nouns else later[0] if later else 1
        words = _strip_generic(words[cut:], generic)
    text = re.sub(r"\s*,?\s*(?:that )?(?:you(?:'ve| have)? (?:requested|asked for|provided|described)|as requested|"
                  r"for you|(?:from|of|based on|for) the (?:given |provided |original |source )?(?:text|passage|context))$",
                  "", " ".join(words), flags=re.IGNORECASE).strip(" ,;-–")
    if not text or all(w.lower() in generic for w in text.split()):
        return ""
    first = text.split()[0]
    if first.lower() in _RELATIONS:
        return text
    return f"as {'an' if first[0].lower() in 'aeiou' else 'a'} {text}"


def _lead_in(text: str) -> Evidence | None:
    """A "Sure, here's <phrase>:" opening whose phrase names more than "the text"."""
    match = _LEAD_IN.match(text[:600])
    if match is None:
        return None
    core = instruction_clause(match["phrase"])
    return Evidence("lead_in", match["phrase"], match.span("phrase"), core) if core else None


def _lead_in_end(text: str) -> int:
    """Where the text after a lead-in line starts (0 when there is no lead-in)."""
    match = _LEAD_IN.match(text[:600])
    if match is None:
        return 0
    newline = text.find("\n", match.end())
    return len(text) if newline < 0 else newline + 1


def _heading(text: str) -> Evidence | None:
    """A title on the first non-empty line (after any lead-in): `## X`, `**X**` or `Title: X`."""
    line = re.compile(r"[^\n]*\S[^\n]*").search(text, _lead_in_end(text))
    match = _HEADING.fullmatch(text, *line.span()) if line else None
    if match is None:
        return None
    group = next(g for g in ("hash", "bold", "title") if match[g] is not None)
    # Trim markup and a trailing colon inside the group, so the span covers exactly the phrase.
    inner = re.compile(r"[^\s*#:_]([^\n]*[^\s*#:_])?").search(text, *match.span(group))
    if inner is None:
        return None
    phrase = inner[0]
    if "[" in phrase or phrase.endswith(",") or len(phrase.split()) > 15 or _LEAD_IN.match(phrase):
        return None  # placeholders ("[Your Name]"), salutations ("Dear Sir,"), sentences, bold lead-ins
    return Evidence("heading", phrase, inner.span(), instruction_clause(phrase))


def _closing(text: str) -> Evidence | None:
    """A closing note in the last paragraph: "I have rewritten the text in the style of a pirate."."""
    tail_start = max(text.rstrip().rfind("\n"), 0)
    match = _CLOSING.search(text, tail_start)
    if match is None:
        return None
    core = instruction_clause(match["phrase"])
    return Evidence("closing", match["phrase"], match.span("phrase"), core) if core else None


def _refusal(text: str) -> Evidence | None:
    """A refusal restating the task: "I cannot provide a haiku based on ..." -> "a haiku"."""
    match = _REFUSAL.search(text[:300])
    if match is None:
        return None
    words = [w.lower() for w in match["phrase"].split()]
    if all(w in _REFUSAL_GENERIC for w in words) or (len(words) > 1 and words[1] in ("that", "which")):
        return None  # "assistance with that request", "content that is biased": a policy, not the task
    core = instruction_clause(match["phrase"], _GENERIC | _REFUSAL_GENERIC)
    return Evidence("refusal", match["phrase"], match.span("phrase"), core) if core else None


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


def render(template: str, found: Evidence) -> str:
    """Fill `template` ({core} and/or {phrase}) with one row's evidence."""
    return template.format(core=found.core, phrase=found.phrase).strip()


@dataclass
class KindChoice:
    """What fit learned for one kind of evidence: the template and mode to use, or to abstain."""

    template: str
    mode: str  # one of MODES
    train_score: float  # mean score of this choice on the training rows of this kind
    baseline: float  # the best constant prompt's mean score on the same rows
    rows: int
    abstain: bool  # true when the choice did not beat the baseline by min_gain


@dataclass
class EvidenceConfig:
    """Options of the evidence method."""

    embedder: str = "proxy"  # metric embedder used by fit (template choice) and the nearest-prompt modes
    kinds: list[str] = field(default_factory=lambda: list(KINDS))  # evidence read, in this order of preference
    # Candidate phrase -> prompt templates ({core}: "as a gamer's guide"; {phrase}: the words as written);
    # fit keeps the best per kind. Unfitted, the first one is used for every kind.
    templates: list[str] = field(default_factory=lambda: [
        "Rewrite this text {core}.", "Rewrite the text {core}.", "Rewrite this {core}.",
        "Transform this text {core}.", "Convert this text {core}.", "Rewrite this text: {phrase}.",
    ])
    modes: list[str] = field(default_factory=lambda: list(MODES))  # modes fit may choose among
    bank_files: list[str] = field(default_factory=list)  # prompt lists searched by the nearest modes
    training_prompts: bool = True  # the training prompts join the bank too
    min_gain: float = 0.0  # keep a kind only when it beats the best constant prompt by this on training rows
    cache_dir: str = ""  # bank-file embedding cache ("" = PROMPTREC_CACHE or ~/.cache/promptrec)

    def __post_init__(self):
        for kind in self.kinds:
            if kind not in KINDS:
                raise DataError(f"evidence: unknown kind '{kind}' (known: {', '.join(KINDS)})")
        for mode in self.modes:
            if mode not in MODES:
                raise DataError(f"evidence: unknown mode '{mode}' (known: {', '.join(MODES)})")
        if not self.templates or "template" not in self.modes:
            raise DataError("evidence: needs at least one template and the mode 'template'")
        for template in self.templates:
            if "{core}" not in template and "{phrase}" not in template:
                raise DataError(f"evidence: template '{template}' has neither {{core}} nor {{phrase}}")


class EvidenceMethod:
    """Prompts from the instruction evidence in the raw rewrite; abstains (None) on rows without it."""

    name = "evidence"
    Config = EvidenceConfig

    def __init__(self, config: EvidenceConfig | None = None):
        self.config = config or EvidenceConfig()
        self.choices: dict[str, KindChoice] = {}
        self.bank = None  # PromptBank, built by fit when a nearest mode is kept
        self._embedder = None

    @property
    def embedder(self):
        """The metric embedder, loaded on first use."""
        if self._embedder is None:
            from promptrec.metric import load_embedder

            self._embedder = load_embedder(self.config.embedder)
        return self._embedder

    def fit(self, triples: pd.DataFrame) -> None:
        """Per kind of evidence, choose the template and mode with the best mean score on its training rows."""
        from promptrec.methods.bank import build_bank
        from promptrec.methods.constant import best_constant
        from promptrec.metric import sharpened_cosine

        found = evidence_table(triples, self.config.kinds)
        truths = triples[PROMPT].astype(str).tolist()
        prompts = truths if self.config.training_prompts else []
        nearest_modes = set(self.config.modes) - {"template"}
        self.bank = build_bank(self.embedder, prompts, self.config.bank_files, self.config.cache_dir) \
            if nearest_modes and (prompts or self.config.bank_files) else None
        constant = best_constant(truths, self.embedder.encode)
        self.choices = {}
        for kind in self.config.kinds:
            rows = [i for i, f in enumerate(found) if f is not None and f.kind == kind]
            if not rows:
                continue
            true_emb = self.embedder.encode([truths[i] for i in rows])  # (rows, dim)
            baseline = float(sharpened_cosine(self.embedder.encode([constant]).repeat(len(rows), 0), true_emb).mean())
            best: tuple[float, str, str] | None = None
            for template in self.config.templates:
                candidates = self._candidates(template, [found[i] for i in rows], [truths[i] for i in rows])
                for mode, texts in candidates.items():
                    mean = float(sharpened_cosine(self.embedder.encode(texts), true_emb).mean())
                    if best is None or mean > best[0]:
                        best = (mean, template, mode)
            score, template, mode = best
            self.choices[kind] = KindChoice(template, mode, score, baseline, len(rows),
                                            abstain=score <= baseline + self.config.min_gain)
            log.info("evidence %s: %d rows, %s / %s scores %.4f vs constant %.4f%s", kind, len(rows), template, mode,
                     score, baseline, " -> abstain" if self.choices[kind].abstain else "")
        if self.bank is not None and not any(c.mode != "template" and not c.abstain for c in self.choices.values()):
            self.bank = None  # no kept choice searches it: nothing to save

    def _candidates(self, template: str, found: list[Evidence], own: list[str] | None = None) -> dict[str, list[str]]:
        """The prompts each mode gives these rows with `template`; `own` (fit) are the rows' true prompts, which
        the nearest search skips, as a test row's prompt is not in the bank."""
        filled = [render(template, f) for f in found]
        out = {"template": filled}
        if self.bank is None or set(self.config.modes) == {"template"}:
            return out
        nearest = self._nearest(filled, own)
        if "nearest" in self.config.modes:
            out["nearest"] = nearest
        if "joined" in self.config.modes:
            out["joined"] = [f"{a} {b}" for a, b in zip(filled, nearest)]
        return out

    def _nearest(self, texts: list[str], own: list[str] | None = None) -> list[str]:
        """The bank prompt nearest to each text other than its row's `own` prompt, in chunks so the (rows, bank)
        cosine matrix stays small."""
        emb = self.embedder.encode(texts)
        top = np.concatenate([self.bank.nearest(emb[start : start + 1024], 2)[0] for start in range(0, len(texts), 1024)])
        first = [self.bank.prompts[i] for i in top[:, 0]]
        if own is None:
            return first
        return [self.bank.prompts[row[1]] if p == o.strip() and len(row) > 1 else p for p, o, row in zip(first, own, top)]

    def predict(self, pairs: pd.DataFrame) -> list[str | None]:
        """One prompt per row with evidence of a kept kind, None elsewhere. Unfitted: the first template."""
        found = evidence_table(pairs, self.config.kinds)
        default = KindChoice(self.config.templates[0], "template", 0.0, 0.0, 0, abstain=False)
        out: list[str | None] = [None] * len(found)
        for kind in self.config.kinds:
            choice = self.choices.get(kind, default)  # a kind fit never saw: the rule's first template
            rows = [i for i, f in enumerate(found) if f is not None and f.kind == kind]
            if choice.abstain or not rows:
                continue
            texts = self._candidates(choice.template, [found[i] for i in rows]).get(choice.mode)
            if texts is None:
                raise DataError(f"evidence: mode '{choice.mode}' needs the prompt bank saved by fit")
            for i, text in zip(rows, texts):
                out[i] = text
        return out

    def save(self, folder: Path) -> None:
        """Write method.json, the learned choices (evidence.json) and the bank when a choice searches it."""
        folder = Path(folder)
        save_config(folder, self.name, self.config)
        with atomic_write(folder / CHOICES_FILE) as handle:
            json.dump({kind: vars(choice) for kind, choice in self.choices.items()}, handle, indent=2)
        if self.bank is not None:
            self.bank.save(folder)

    @classmethod
    def load(cls, folder: Path) -> "EvidenceMethod":
        """Read method.json, evidence.json and the bank if saved."""
        from promptrec.methods.bank import BANK_TEXTS, PromptBank, check_dim

        folder = Path(folder)
        method = cls(config_from_dict(EvidenceConfig, read_config(folder)[1], str(folder)))
        path = safe_child(folder, CHOICES_FILE)
        if path.is_file():
            try:
                method.choices = {k: KindChoice(**v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
            except (json.JSONDecodeError, TypeError, AttributeError):
                raise DataError(f"{path}: not a valid evidence choice file") from None
        if (folder / BANK_TEXTS).is_file():
            method.bank = PromptBank.load(folder)
            check_dim(method.bank, method.embedder, str(folder))
        return method


def coverage(predictions: Sequence[str | None], truths: Sequence[str], embedder,
             sources: Sequence[str] | None = None) -> pd.DataFrame:
    """Per source (and 'all'): rows, covered rows (a non-blank prediction), coverage, and the mean score of the
    covered rows' predictions, labelled with the embedder."""
    from promptrec.metric import score

    covered = np.array([isinstance(p, str) and bool(p.strip()) for p in predictions])
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
