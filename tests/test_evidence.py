"""Method `evidence`: extraction rules on hand-written and real rewrites, abstention, learned choices, round trip."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import shared_file

from promptrec.data import TRIPLE_COLUMNS, read_table
from promptrec.methods.base import from_name, load_method
from promptrec.methods.evidence import (
    CHOICES_FILE, Evidence, EvidenceConfig, EvidenceMethod, coverage, evidence_table, find_evidence,
    instruction_clause, learn_verbs,
)


class BagOfWords:
    """Toy metric embedder: unit bag-of-words vectors, so identical word sets score exactly 1."""

    label, dim = "bag of words", 64

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def encode(self, texts) -> np.ndarray:
        """(n, 64) unit rows."""
        emb = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z']+", str(text).lower()):
                emb[row, self.vocab.setdefault(word, len(self.vocab) % self.dim)] += 1.0
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    encode_texts = encode  # long texts take the same path here


HAND_WRITTEN = [  # rewrite -> (kind, phrase, span, core, cue)
    ("Sure, here's the text rewritten as a gamer's guide:\n\nLevel 1: the forest.",
     ("lead_in", "the text rewritten as a gamer's guide", (13, 50), "as a gamer's guide", "rewritten")),
    ("Sure, here is the rewritten text in the style of a pirate:\nArr.",
     ("lead_in", "the rewritten text in the style of a pirate", (14, 57), "in the style of a pirate", "rewritten")),
    ("Certainly! Here's a version of the text for a five-year-old:\n\nOnce upon a time.",
     ("lead_in", "a version of the text for a five-year-old", (18, 59), "for a five-year-old")),
    ("**Sure, here's your online dating profile:**\n\nI like long walks.",
     ("lead_in", "your online dating profile", (15, 41), "as an online dating profile")),
    ("## Time Travel Agency Billboard Ads\n\nTravel back to 1850!",
     ("heading", "Time Travel Agency Billboard Ads", (3, 35), "as a Time Travel Agency Billboard Ads")),
    ("Sure, here's the rewritten text:\n\n**Event Planner Checklist**\n\n- Book the hall.",
     ("heading", "Event Planner Checklist", (36, 59), "as an Event Planner Checklist")),
    ("Arr, the ship sailed.\n\nI have rewritten the text in the style of a pirate.",
     ("closing", "in the style of a pirate", (49, 73), "in the style of a pirate", "rewritten")),
    ("I'm sorry, but I cannot turn this into a limerick because it is too sad.",
     ("refusal", "this into a limerick", (29, 49), "into a limerick", "turn")),
    # the "as" after a bare object starts the task, not a reason
    ("I'm sorry, but I cannot express this as a reality show confession. My purpose is to inform.",
     ("refusal", "as a reality show confession", (37, 65), "as a reality show confession", "express")),
    # Gemma's other refusal names the task as what the text lacks
    ("The text does not describe a perfume advertisement, therefore I cannot provide the requested description.",
     ("refusal", "a perfume advertisement", (27, 50), "as a perfume advertisement", "describe")),
    ("I am unable to provide a description of this text as an inventor's blueprint, as it is not one.",
     ("refusal", "as an inventor's blueprint", (50, 76), "as an inventor's blueprint", "provide")),
    ("The text you provided does not describe a love letter, therefore I cannot complete the request.",
     ("refusal", "a love letter", (40, 53), "as a love letter", "describe")),
    ("The text does not contain any information about a road trip itinerary, therefore I cannot complete it.",
     ("refusal", "a road trip itinerary", (48, 69), "as a road trip itinerary", "contain")),
    # an offer naming the act, when the lead-in names nothing ("the rewritten text", "an attempt")
    ("Sure, I'd be happy to help you rewrite the source text without using scientific terms! Here is the "
     "rewritten text:\nPlants eat light.",
     ("lead_in", "the source text without using scientific terms", (39, 85), "without using scientific terms",
      "rewrite")),
    ("Sure, I'd be happy to help you rewrite the given source text for a child audience! Here's an attempt:\nHi!",
     ("lead_in", "the given source text for a child audience", (39, 81), "for a child audience", "rewrite")),
    ("As an AI, I can help you revise the disclosure to be more casual. Here's a suggestion:\n\nHey folks,",
     ("lead_in", "the disclosure to be more casual", (32, 64), "as a disclosure to be more casual", "revise")),
    # a relative clause after the generic words keeps its verb
    ("Sure, here's a modified version of the text that focuses on problem-solving aspects: - Hi",
     ("lead_in", "a modified version of the text that focuses on problem-solving aspects", (13, 83),
      "so that it focuses on problem-solving aspects", "modified")),
]
NO_EVIDENCE = [
    "The meeting moved to Thursday because the projector broke.",
    "Sure, here's the revised text:\n\nThe meeting moved to Thursday.",  # the lead-in names no instruction
    "**[Your Name]**\n\n**[Your Address]**",  # placeholders are not titles
    "I'm sorry, I can't provide assistance with that request.",  # a refusal that restates no task
    "I cannot rewrite it as requested.",  # "as" opens no task here
    "I cannot provide the requested content as I do not hold opinions.",  # nor here: a reason
    "The text does not contain any information that would allow me to do this, therefore I cannot.",  # no task named
    "I am unable to provide a framed version of the text you provided as I do not have the ability.",  # a reason
    "Sure, here is a rewritten version of the source text using the given prompt:\nNavigate the",  # names the prompt
    "Convert this into the requested content.",  # Gemma echoing its instruction names nothing
    "## Instructions\n\n1. Mix the flour.",  # a title that names only the instruction
    "I'd be happy to help you find academic articles on the topic.",  # an offer of something else
    "",
]


@pytest.mark.parametrize(("rewrite", "expected"), HAND_WRITTEN)
def test_rules_on_hand_written_rewrites(rewrite, expected):
    found = find_evidence(rewrite)
    assert found == Evidence(*expected)
    assert rewrite[found.span[0] : found.span[1]] == found.phrase


@pytest.mark.parametrize("rewrite", NO_EVIDENCE)
def test_no_evidence_found(rewrite):
    assert find_evidence(rewrite) is None


def test_instruction_clause():
    assert instruction_clause("a rewritten version of the source text in the style of Lee Child") == "in the style of Lee Child"
    assert instruction_clause("the mindfulness exercise you requested") == "as a mindfulness exercise"
    assert instruction_clause("a description of the space exploration plan as an extreme sport") == "as an extreme sport"
    assert instruction_clause("the rewritten text") == ""
    assert instruction_clause("a rewritten version of the source text that is shorter") == "so that it is shorter"
    assert instruction_clause("a message that adheres to the standards") == "as a message that adheres to the standards"
    assert instruction_clause("the rewritten text using the given prompt") == ""
    assert instruction_clause("a plan for a moon colony based on the given source text") == "as a plan for a moon colony"


REAL_ROWS = [  # (file, id) -> (kind, phrase, span, core, cue), read from the raw rewritten_text
    ("gemma_wiki_2977.csv", "gw01042",
     ("lead_in", "the text converted into a dramatic monologue", (13, 57), "into a dramatic monologue", "converted")),
    ("gemma_wiki_2977.csv", "gw02746", ("heading", "Product Recall Notice", (2, 23), "as a Product Recall Notice")),
    ("gemma_wiki_2977.csv", "gw00443",
     ("refusal", "the text into a manifesto for a utopian society", (23, 70), "into a manifesto for a utopian society", "convert")),
    ("gemma_rerun_994.csv", "gr00017",
     ("lead_in", "the text rewritten as a buddy cop show", (14, 52), "as a buddy cop show", "rewritten")),
    ("gemma_1100.csv", "gm0536", ("heading", "Architect's Dream", (2, 19), "as an Architect's Dream")),
    ("gemma_rerun_994.csv", "gr00035",
     ("refusal", "as a love letter", (34, 50), "as a love letter", "rephrase")),
    ("gemma_1100.csv", "gm0728",
     ("refusal", "a late-night TV monologue joke", (18, 48), "as a late-night TV monologue joke", "provide")),
    ("llama3_456.csv", "ll0201",
     ("lead_in", "a rewritten version of the source text in the style of Lee Child", (8, 72), "in the style of Lee Child", "rewritten")),
]
REAL_WITHOUT = [("gemma_wiki_2977.csv", "gw02509"), ("gemma_1100.csv", "gm0611"), ("llama3_456.csv", "ll0017"),
                ("dolly_gemini_500.csv", "dg0000"), ("gpt35_1080.csv", "gp0490")]


def _real_rewrite(name: str, row_id: str) -> str:
    """The raw rewritten text of one shared row (the test skips where ../shared/data is absent)."""
    table = read_table(shared_file(name), TRIPLE_COLUMNS)
    return table.loc[table["id"] == row_id, "rewritten_text"].item()


@pytest.mark.parametrize(("name", "row_id", "expected"), REAL_ROWS)
def test_rules_on_real_rows(name, row_id, expected):
    rewrite = _real_rewrite(name, row_id)
    found = find_evidence(rewrite)
    assert found == Evidence(*expected)
    assert rewrite[found.span[0] : found.span[1]] == found.phrase


@pytest.mark.parametrize(("name", "row_id"), REAL_WITHOUT)
def test_real_rows_without_evidence(name, row_id):
    assert find_evidence(_real_rewrite(name, row_id)) is None


def test_real_coverage_counts():
    # The rules find evidence in 70% of the raw Gemma rewrites of Wikipedia openings and none of Dolly's lead-ins.
    table = read_table(shared_file("gemma_wiki_2977.csv"), TRIPLE_COLUMNS)
    kinds = pd.Series([f.kind if f else "none" for f in evidence_table(table)]).value_counts().to_dict()
    assert kinds == {"heading": 1039, "lead_in": 946, "none": 853, "refusal": 139}


def _triples(rewrites: list[str], prompts: list[str]) -> pd.DataFrame:
    n = len(rewrites)
    return pd.DataFrame({"id": [str(i) for i in range(n)], "original_text": ["x"] * n,
                         "rewrite_prompt": prompts, "rewritten_text": rewrites})


LEARN = _triples(
    ["Sure, here's the text converted into a poem:\n\nRoses.", "Sure, here's the text converted into a song:\n\nLa.",
     "Sure, here's the text converted into a letter:\n\nDear.", "Sure, here's the text as a riddle:\n\nWhat?",
     "## Cats\n\nMeow.", "## Dogs\n\nWoof.", "## Birds\n\nTweet.", "No evidence here."],
    ["Convert the text into a poem.", "Convert the text into a song.", "Convert the text into a letter.",
     "Rewrite the text as a riddle.", "Summarize it briefly.", "Summarize it briefly.", "Summarize it briefly.",
     "Summarize it briefly."],
)


def test_learn_verbs_per_cue_and_kind():
    found = evidence_table(LEARN)
    # "converted" is seen on 3 rows, each under "Convert"; headings and "the text as a riddle" have no cue.
    assert [f.cue for f in found[:5]] == ["converted", "converted", "converted", "", ""]
    assert learn_verbs(found, LEARN["rewrite_prompt"].tolist(), min_rows=3) == {"lead_in": {"converted": "Convert"}}
    assert learn_verbs(found, LEARN["rewrite_prompt"].tolist(), min_rows=4) == {}


def test_fit_learns_the_template_and_abstains_where_rules_lose():
    method = EvidenceMethod(EvidenceConfig(templates=["Make it {core}.", "{verb} the text {core}."]))
    method.embedder = BagOfWords()
    method.fit(LEARN)
    lead_in, heading = method.choices["lead_in"], method.choices["heading"]
    # The second template with the learned verb reproduces 3 of the 4 lead-in prompts word for word.
    assert (lead_in.template, lead_in.rows, lead_in.abstain) == ("{verb} the text {core}.", 4, False)
    # Headings name no instruction here: the constant "Summarize it briefly." scores 1 on them, any template less.
    assert (heading.rows, heading.baseline, heading.abstain) == (3, pytest.approx(1.0), True)
    assert set(method.choices) == {"lead_in", "heading"}
    pairs = _triples(["Sure, here's the text converted into a haiku:\n\nOld pond.", "## Fish\n\nBlub.", "Nothing."],
                     ["?"] * 3)
    assert method.predict(pairs) == ["Convert the text into a haiku.", None, None]


def test_unfitted_predict_uses_the_first_template_and_abstains_without_evidence():
    method = from_name("evidence", templates=["{verb} this text {core}."])
    pairs = _triples([HAND_WRITTEN[0][0], "Plain text.", HAND_WRITTEN[4][0]], ["?"] * 3)
    assert method.predict(pairs) == ["Rewrite this text as a gamer's guide.", None,
                                     "Rewrite this text as a Time Travel Agency Billboard Ads."]


def test_fit_predict_save_load_round_trip(tmp_path):
    method = EvidenceMethod()
    method.embedder = BagOfWords()
    method.fit(LEARN)
    before = method.predict(LEARN)
    assert before[:4] == ["Convert this into a poem.", "Convert this into a song.", "Convert this into a letter.",
                          "Rewrite this as a riddle."]  # the learned verb for "converted", else Rewrite
    assert before[4:] == [None] * 4  # headings abstain, the last row has no evidence
    method.save(tmp_path / "m")
    learned = json.loads((tmp_path / "m" / CHOICES_FILE).read_text(encoding="utf-8"))
    assert learned["verbs"] == {"lead_in": {"converted": "Convert"}}
    assert set(learned["choices"]) == {"lead_in", "heading"}
    assert set(json.loads((tmp_path / "m" / "method.json").read_text(encoding="utf-8"))["config"]) == {
        "embedder", "kinds", "templates", "min_verb_rows", "min_gain"}
    loaded = load_method(tmp_path / "m")
    assert isinstance(loaded, EvidenceMethod)
    assert (loaded.choices, loaded.verbs) == (method.choices, method.verbs) and loaded.predict(LEARN) == before


def test_coverage_per_source():
    embedder = BagOfWords()
    table = coverage(["Rewrite the text as a poem.", None, "Make it a song.", ""],
                     ["Rewrite the text as a poem.", "x", "Rewrite the text as a song.", "y"], embedder,
                     sources=["a", "a", "b", "b"])
    assert table["source"].tolist() == ["a", "b", "all"]
    assert table["rows"].tolist() == [2, 2, 4] and table["covered"].tolist() == [1, 1, 2]
    assert table["coverage"].tolist() == [0.5, 0.5, 0.5]
    # "make it a song" vs "rewrite the text as a song": 2 shared words of 4 and 6 -> cos 2/sqrt(24).
    assert table["score"].tolist() == pytest.approx([1.0, (2 / 24**0.5) ** 3, (1 + (2 / 24**0.5) ** 3) / 2], abs=1e-6)
    assert set(table["embedder"]) == {"bag of words"}
