"""Cleaning rules for rewritten texts: drop refusals, cut LLM chatter; each rule named and counted."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

# ---- what a rewriter says about its instruction ------------------------------------------------------------
# methods/evidence.py reads these (the phrase groups); the EVIDENCE_RULES below cut them for the "stripped" view.

_GREETING = r"(?:sure|certainly|okay|ok|of course|absolutely|alright|great|no problem)"
_HERE_IS = r"here(?:'s|’s| is| are)"
# "Sure, here's the text rewritten as a gamer's guide:" (the phrase stops at the first : . ! or ?)
LEAD_IN = re.compile(
    rf"^[\s*#_>]*(?:{_GREETING}\b[^\n:]{{0,80}}?)?\b{_HERE_IS}\s+(?P<phrase>[^\n:.!?]*[^\s\n:.!?*])",
    re.IGNORECASE,
)
# "I'd be happy to help you rewrite the text without scientific terms!" (an offer naming the act, early in the text)
OFFER = re.compile(
    r"\b(?:help(?:ing)? you(?: to)?|(?:happy|glad) to|i can|i will|i'll|let me)\s+(?P<verb>rewrite|rephrase|revise|"
    r"reword|convert|transform|translate|adapt|recast|reframe|simplify|turn|modify|change|edit|put|present)\s+"
    r"(?P<phrase>[^\n:.!?]*[^\s\n:.!?*])",
    re.IGNORECASE,
)
OFFER_WINDOW = 300  # an offer is read in the first characters only
HEADING = re.compile(  # matched against one whole line: "## X", "**X**" or "Title: X"
    r"[ \t]*(?:#{1,6}[ \t]+(?P<hash>[^\n]+?)|\*\*(?P<bold>[^*\n]+?)\*\*[ \t]*:?|"
    r"(?:title|subject|headline)[ \t]*:[ \t]*(?P<title>[^\n]+?))[ \t]*",
    re.IGNORECASE,
)
# "I have rewritten the text in the style of a pirate." in the last paragraph
CLOSING = re.compile(
    r"(?:^|\n)[\s*]*(?:note:?[\s*]*)?(?:i have|i've|i)\s+(?P<verb>rewritten|converted|transformed|adapted|rephrased|"
    r"revised|changed|modified|recast|reworded|translated|written)\s+(?:the (?:original |source |given )?"
    r"(?:text|passage|paragraph|sentence)|it|this)?\s*(?P<phrase>[^\n.!?]*[^\s\n.!?*])",
    re.IGNORECASE,
)
REFUSAL = re.compile(  # a refusal restating the task, at the start or after "..., therefore" as Gemma writes it
    r"(?:^\W*|\b(?:therefore|thus|so),?\s+)(?:(?:i'm|i am) sorry,?\s*(?:but\s*)?|i apologize,?\s*(?:but\s*)?|"
    r"unfortunately,?\s*)?(?:(?:i am|i'm)\s+(?:unable|not able)\s+to|i\s+(?:cannot|can't|can not|won't))\s+"
    r"(?P<verb>[a-z]+)\s+(?P<phrase>[^\n.!?,;]*?[^\s\n.!?,;])"
    r"(?=\s*(?:[.!?,;\n]|$|\s+(?:as|because|since|based on|due to|for the text|for this text|from the text|"
    r"from the given|from the provided|with the (?:given|provided) (?:text|context|information))\b))",
    re.IGNORECASE,
)
REFUSAL_WINDOW = 300  # a refusal restating the task is read in the first characters only

# A refusal, once leading chatter and markup are gone: the whole row becomes empty.
_REFUSAL_START = re.compile(
    r"^(?:I cannot|I can not|I can't|I am unable to|I'm unable to|I am not able to|I'm sorry|"
    r"I apologi[sz]e|As (?:an AI(?: language model| assistant)?|a virtual assistant),? I (?:cannot|can't|can not|"
    r"am unable|am not able|do not|don't|won't))",
    re.IGNORECASE,
)
_REFUSAL_ANYWHERE = re.compile(
    r"(?:\b(?:therefore|so),?\s+I cannot\b|\bam unable to rewrite\b|\bcannot fulfill (?:this|your) request\b)",
    re.IGNORECASE,
)
_USER_PREFIX = re.compile(r"^(?:\s*user\s*\n|\s*\*\*\s*\n\s*\n)", re.IGNORECASE)
# "Sure, here is the rewritten text:" / "Certainly! Here's ...:" / "**Sure, here's the response:**"
_CHATTER = re.compile(
    rf"^\s*\**\s*(?:{_GREETING}\b[,.!]?\s*)?(?:{_HERE_IS}\b|(?:sure|certainly)\b)[^\n]{{0,200}}?:\s*\**\s*(?:\n|$)",
    re.IGNORECASE,
)
_SUMMARY_HEADER = re.compile(r"^\s*summary of [^\n]{0,200}\n\s*\n", re.IGNORECASE)
# A leading title line "**Title**" or "## Title": markup removed, the words kept.
_HEADING = re.compile(r"^\s*(?:#{1,6}\s+([^\n]+)|\*\*([^\n*]+?)\*\*:?)[ \t]*(?=\n|$)")
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
# Control characters but tab and newlines: byte tokens of small models emit them, and a CSV holding NUL is unreadable.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _refusal(text: str) -> str | None:
    refused = _REFUSAL_START.match(text) or _REFUSAL_ANYWHERE.search(text) or REFUSAL.search(text[:REFUSAL_WINDOW])
    return "" if refused else None


def _sub_once(pattern: re.Pattern[str], repl: str = "") -> Callable[[str], str | None]:
    def rule(text: str) -> str | None:
        new = pattern.sub(repl, text, count=1)
        return new.lstrip() if new != text else None

    return rule


def _heading(text: str) -> str | None:
    m = _HEADING.match(text)
    if not m:
        return None
    return (m.group(1) or m.group(2)).strip() + text[m.end() :]


def _blank_lines(text: str) -> str | None:
    new = _BLANK_LINES.sub("\n\n", text)
    return new if new != text else None


def _control(text: str) -> str | None:
    new = _CONTROL.sub("", text)
    return new if new != text else None


def _strip(text: str) -> str | None:
    new = text.strip()
    return new if new != text else None


# Order matters: prefixes and chatter go first so that a refusal behind "Sure, here is:" is found.
RULES: dict[str, Callable[[str], str | None]] = {
    "control_chars": _control,
    "strip_whitespace": _strip,
    "user_prefix": _sub_once(_USER_PREFIX),
    "chatter": _sub_once(_CHATTER),
    "summary_header": _sub_once(_SUMMARY_HEADER),
    "heading_markup": _heading,
    "refusal": _refusal,
    "blank_lines": _blank_lines,
}


# Rules that delete what a rewriter said about its instruction (lead-ins, titles, refusals): methods such as
# `evidence` read exactly that at prediction time, so training data keeps it unless asked otherwise.
EVIDENCE_RULES = ("chatter", "summary_header", "heading_markup", "refusal")


@dataclass
class CleanReport:
    """How many rows each rule changed, out of how many rows."""

    rows: int = 0
    empty: int = 0
    hits: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        """One 'rule: count' line per rule, in rule order."""
        return [f"{name}: {self.hits.get(name, 0)}" for name in RULES]


def clean_text(text: str | None, keep_evidence: bool = True) -> tuple[str, list[str]]:
    """Clean one rewritten text; returns the cleaned text and the names of the rules that fired.

    With `keep_evidence` (the default) the EVIDENCE_RULES do not run, so fit sees what recover will see."""
    fired: list[str] = []
    text = text or ""
    for name, rule in RULES.items():
        if keep_evidence and name in EVIDENCE_RULES:
            continue
        new = rule(text)
        if new is not None:
            fired.append(name)
            text = new
            if not text:
                break
    return text.strip(), fired


def clean_texts(texts: Iterable[str | None], keep_evidence: bool = True) -> tuple[list[str], CleanReport]:
    """Clean many texts (`clean_text`) and count the rows each rule hit."""
    report = CleanReport()
    cleaned = []
    for text in texts:
        new, fired = clean_text(text, keep_evidence)
        cleaned.append(new)
        report.rows += 1
        report.empty += not new
        report.hits.update(fired)
    return cleaned, report


def clean_frame(src: str | Path, dst: str | Path, drop_empty: bool = False,
                keep_evidence: bool = True) -> tuple[CleanReport, int]:
    """Clean the rewritten_text column of table `src` into `dst` (`clean_text`); returns the report and rows dropped."""
    from promptrec.data import REWRITTEN, read_table, write_table

    frame = read_table(src, columns=(REWRITTEN,))
    frame[REWRITTEN], report = clean_texts(frame[REWRITTEN], keep_evidence)
    kept = frame[frame[REWRITTEN] != ""] if drop_empty else frame
    write_table(dst, kept)
    return report, len(frame) - len(kept)


# ---- prompts generated by the LLM methods (lora, fewshot) ----------------------------------------------------

_SPECIAL = re.compile(r"<\|?/?(?:im_end|im_start|end_of_turn|start_of_turn|eos|endoftext|s)\|?>.*", re.S)
_LABEL = re.compile(
    r"^(?:(?:the|a|an)\s+)?(?:(?:rewrite|rewriting|original|likely|possible)\s+)?"
    r"(?:prompt|instruction|instructions|answer|output|response|assistant)(?:\s+(?:was|is|used))?\s*[:\-\u2013]\s*",
    re.I,
)
# The model echoing a field of the template is copying a text, not naming an instruction.
_ECHO = re.compile(r"^(?:the\s+)?(?:original|rewritten)\s+text\s*:", re.I)
_BULLET = re.compile(r"^(?:[-*\u2022>#]+|\d+[.)])\s+")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019*_ "


def parse_generation(text: str, max_words: int = 40) -> str:
    """The instruction in a raw generation: first non-empty line, special tokens, labels, bullets and
    quotes stripped; "" when nothing usable (the caller falls back)."""
    text = _SPECIAL.sub("", text or "")
    line = next((ln.strip() for ln in text.splitlines() if ln.strip(_QUOTES + ":")), "")
    if _ECHO.match(line.strip(_QUOTES)):
        return ""
    previous = None
    while previous != line:  # labels and quotes nest in any order ("**Prompt:** \"...\"")
        previous = line
        line = _BULLET.sub("", line)
        line = line.strip(_QUOTES)
        line = _LABEL.sub("", line)
    line = " ".join(line.split())
    if not re.search(r"[A-Za-z]", line) or len(line.split()) > max_words:
        return ""
    return line
