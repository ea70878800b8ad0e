"""Cleaning rules for rewritten texts: drop refusals, cut LLM chatter; each rule named and counted."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

# A refusal, once leading chatter and markup are gone: the whole row becomes empty.
_REFUSAL_START = re.compile(
    r"^(?:I cannot|I can not|I can't|I am unable to|I'm unable to|I am not able to|I'm sorry|"
    r"I apologi[sz]e|As an AI\b|As a virtual assistant, I (?:cannot|can't|do not|don't))",
    re.IGNORECASE,
)
_REFUSAL_ANYWHERE = re.compile(
    r"(?:\b(?:therefore|so),?\s+I cannot\b|\bam unable to rewrite\b|\bcannot fulfill (?:this|your) request\b)",
    re.IGNORECASE,
)
_USER_PREFIX = re.compile(r"^(?:\s*user\s*\n|\s*\*\*\s*\n\s*\n)", re.IGNORECASE)
# "Sure, here is the rewritten text:" / "Certainly! Here's ...:" / "**Sure, here's the response:**"
_CHATTER = re.compile(
    r"^\s*\**\s*(?:(?:sure|certainly|okay|ok|of course|absolutely)\b[,.!]?\s*)?"
    r"(?:here(?:'s|’s| is| are)\b|(?:sure|certainly)\b)[^\n]{0,200}?:\s*\**\s*(?:\n|$)",
    re.IGNORECASE,
)
_SUMMARY_HEADER = re.compile(r"^\s*summary of [^\n]{0,200}\n\s*\n", re.IGNORECASE)
# A leading title line "**Title**" or "## Title": markup removed, the words kept.
_HEADING = re.compile(r"^\s*(?:#{1,6}\s+([^\n]+)|\*\*([^\n*]+?)\*\*:?)[ \t]*(?=\n|$)")
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


def _refusal(text: str) -> str | None:
    return "" if _REFUSAL_START.match(text) or _REFUSAL_ANYWHERE.search(text) else None


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


def _strip(text: str) -> str | None:
    new = text.strip()
    return new if new != text else None


# Order matters: prefixes and chatter go first so that a refusal behind "Sure, here is:" is found.
RULES: dict[str, Callable[[str], str | None]] = {
    "strip_whitespace": _strip,
    "user_prefix": _sub_once(_USER_PREFIX),
    "chatter": _sub_once(_CHATTER),
    "summary_header": _sub_once(_SUMMARY_HEADER),
    "heading_markup": _heading,
    "refusal": _refusal,
    "blank_lines": _blank_lines,
}


@dataclass
class CleanReport:
    """How many rows each rule changed, out of how many rows."""

    rows: int = 0
    empty: int = 0
    hits: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        """One 'rule: count' line per rule, in rule order."""
        return [f"{name}: {self.hits.get(name, 0)}" for name in RULES]


def clean_text(text: str | None) -> tuple[str, list[str]]:
    """Clean one rewritten text; returns the cleaned text and the names of the rules that fired."""
    fired: list[str] = []
    text = text or ""
    for name, rule in RULES.items():
        new = rule(text)
        if new is not None:
            fired.append(name)
            text = new
            if not text:
                break
    return text.strip(), fired


def clean_texts(texts: Iterable[str | None]) -> tuple[list[str], CleanReport]:
    """Clean many texts and count the rows each rule hit."""
    report = CleanReport()
    cleaned = []
    for text in texts:
        new, fired = clean_text(text)
        cleaned.append(new)
        report.rows += 1
        report.empty += not new
        report.hits.update(fired)
    return cleaned, report


def clean_frame(src: str | Path, dst: str | Path, drop_empty: bool = False) -> tuple[CleanReport, int]:
    """Clean the rewritten_text column of table `src` into `dst`; returns the report and rows dropped."""
    from promptrec.data import REWRITTEN, read_table, write_table

    frame = read_table(src, columns=(REWRITTEN,))
    frame[REWRITTEN], report = clean_texts(frame[REWRITTEN])
    kept = frame[frame[REWRITTEN] != ""] if drop_empty else frame
    write_table(dst, kept)
    return report, len(frame) - len(kept)
