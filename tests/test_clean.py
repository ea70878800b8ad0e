"""Cleaning rules: each rule on hand-made texts, and the counts on the real Gemma rows."""

from __future__ import annotations

import pytest

from conftest import shared_file
from promptrec.clean import EVIDENCE_RULES, RULES, clean_frame, clean_text, clean_texts
from promptrec.data import read_table

CASES = [
    ("Sure, here is the rewritten text:\n\nThe cat sat.", "The cat sat.", ["chatter"]),
    ("Certainly! Here's a poem about it:\nRoses are red.", "Roses are red.", ["chatter"]),
    ("**Sure, here's the response:**\n\nHello there.", "Hello there.", ["chatter"]),
    ("Summary of the article\n\nPrices rose.", "Prices rose.", ["summary_header"]),
    ("user\nWrite it down.", "Write it down.", ["user_prefix"]),
    ("**\n\nA stray prefix.", "A stray prefix.", ["user_prefix"]),
    ("I am unable to rewrite this text.", "", ["refusal"]),
    ("I'm sorry, but I cannot do that.", "", ["refusal"]),
    ("The context is missing, therefore, I cannot answer it.", "", ["refusal"]),
    ("Sure, here is the answer:\n\nI cannot generate that content.", "", ["chatter", "refusal"]),
    ("As an AI language model, I cannot write that.", "", ["refusal"]),
    ("As an AI, I can help you make it casual.\nHey folks!", "As an AI, I can help you make it casual.\nHey folks!", []),
    ("## The Title\n\nBody text.", "The Title\n\nBody text.", ["heading_markup"]),
    ("**Bold Title**\n\nBody.", "Bold Title\n\nBody.", ["heading_markup"]),
    ("One.\n\n\n\nTwo.", "One.\n\nTwo.", ["blank_lines"]),
    ("  padded  ", "padded", ["strip_whitespace"]),
    ("A\x00 b\x07c\x1b\x7f.\r\n\tD", "A bc.\r\n\tD", ["control_chars"]),
    ("A plain rewrite that mentions here is: a colon later.", "A plain rewrite that mentions here is: a colon later.", []),
    (None, "", []),
]


@pytest.mark.parametrize("text,expected,fired", CASES)
def test_rules(text, expected, fired):
    assert clean_text(text, keep_evidence=False) == (expected, fired)


@pytest.mark.parametrize("text,expected,fired", CASES)
def test_default_keeps_the_evidence_recover_will_see(text, expected, fired):
    kept = [name for name in fired if name not in EVIDENCE_RULES]
    if kept == fired:
        assert clean_text(text) == (expected, fired)
    else:  # lead-ins, titles and refusals stay; only noise rules run
        assert clean_text(text)[1] == kept and clean_text(text)[0] == clean_text(text)[0].strip()
        assert clean_text(text)[0] != expected


def test_default_keeps_lead_in_heading_and_refusal_exactly():
    assert clean_text("Sure, here is the text as a poem:\n\n\n\n## Ode\nRoses.  ") == (
        "Sure, here is the text as a poem:\n\n## Ode\nRoses.", ["strip_whitespace", "blank_lines"])
    assert clean_text("I am unable to rewrite this text.") == ("I am unable to rewrite this text.", [])


def test_report_counts_rows_per_rule_in_rule_order():
    cleaned, report = clean_texts(["Sure, here it is:\nA", "I cannot help.", "plain"], keep_evidence=False)
    assert cleaned == ["A", "", "plain"]
    assert report.rows == 3 and report.empty == 1
    assert report.lines() == [f"{name}: {dict(chatter=1, refusal=1).get(name, 0)}" for name in RULES]


def test_clean_frame_writes_atomically_and_can_drop_empty_rows(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,rewritten_text,other\na,\"Sure, here you go:\nHi\",x\nb,I am unable to do it.,y\n", encoding="utf-8")
    report, dropped = clean_frame(src, tmp_path / "out.csv", drop_empty=True, keep_evidence=False)
    assert dropped == 1 and report.hits["chatter"] == 1 and report.hits["refusal"] == 1
    out = read_table(tmp_path / "out.csv", columns=("id", "rewritten_text", "other"))
    assert out.to_dict("list") == {"id": ["a"], "rewritten_text": ["Hi"], "other": ["x"]}


def test_real_gemma_rows():
    frame = read_table(shared_file("gemma_1100.csv"), columns=("rewritten_text",))
    texts = frame["rewritten_text"].tolist()
    starts_sure = sum(t.lstrip().lower().startswith("sure") for t in texts)
    cleaned, report = clean_texts(texts, keep_evidence=False)
    assert report.rows == 1100
    assert 180 <= starts_sure <= 210 and report.hits["chatter"] >= 180  # ~180 "Sure, here's..." openers
    assert 550 <= report.hits["heading_markup"] <= 700  # ~560 "**Title**"/"##" headings
    assert 20 <= report.hits["refusal"] <= 60  # a few dozen refusals
    assert report.empty == report.hits["refusal"]
    assert not any(c.lower().startswith(("sure,", "sure!", "certainly")) for c in cleaned)
    assert not any(c.startswith(("##", "**\n")) for c in cleaned)


def test_cli_keeps_evidence_unless_asked_to_strip_it(tmp_path):
    from typer.testing import CliRunner

    from promptrec.cli import app

    src = tmp_path / "in.csv"
    src.write_text("id,rewritten_text\na,\"Sure, here it is as a poem:\nHi\"\n", encoding="utf-8")
    for flag, expected in (([], "Sure, here it is as a poem:\nHi"), (["--strip-evidence"], "Hi")):
        result = CliRunner().invoke(app, ["clean", str(src), str(tmp_path / "out.csv"), *flag])
        assert result.exit_code == 0, result.output
        assert read_table(tmp_path / "out.csv", columns=("rewritten_text",))["rewritten_text"].tolist() == [expected]
        assert f"chatter: {0 if not flag else 1}" in result.output
