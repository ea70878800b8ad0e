"""`promptrec explain` on a small default ensemble fitted here: every member's prompt, the evidence span, the gate,
the nearest bank prompts, scores against the truth, JSON that matches `recover`, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import EXAMPLES
from conftest import run_cli as run
from rich.console import Console

from promptrec.data import DataError
from promptrec.explain import (
    GIVEN_ID, HIGHLIGHT, Candidate, Case, Explanation, Neighbour, explain, highlighted_rewrite, open_model, read_case,
    render,
)
from promptrec.methods.base import FALLBACK_PROMPT, from_name, load_method, never_blank
from promptrec.methods.form import form_features
from promptrec.methods.gate import FEATURES, Gate
from promptrec.metric import load_embedder, score
from promptrec.pipeline import fit_ensemble
from promptrec.prompts import written_prompts

PIRATE = "Rewrite this as a pirate's tale."
LEAD_IN = "Sure, here's the text rewritten as a pirate's tale:\n\nArr, the gatherin' be moved to Thursday, matey!"
PHRASE = "the text rewritten as a pirate's tale"  # what find_evidence reads in LEAD_IN, at characters 13-50
PLAIN = "Fresh bread at dawn, warm and sweet; on Sundays we close at noon."
KEYS = ["id", "method", "mode", "original_text", "rewritten_text", "evidence", "form", "candidates", "gate", "neighbours",
        "rerank", "final_prompt", "fallback", "truth", "final_score", "embedder"]
MEMBERS = ["best", "bank", "regressor", "evidence"]
CHOICES = [*MEMBERS, "mean", *(f"{label}+mean" for label in MEMBERS)]  # the default gate's hedge: mean, label+mean
PROXY = "proxy (all-MiniLM-L6-v2)"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """The default gated ensemble (best constant, bank, regressor, evidence) fitted on the 20 example triples."""
    root = tmp_path_factory.mktemp("explain")
    cache = str(root / "cache")  # the regressor's feature cache stays in the test's folder
    fit_ensemble([EXAMPLES / "test.csv"], root / "models",
                 options={"regressor": {"cache_dir": cache}, "ensemble": {"hedge_steps": 3}})  # a short hedge
    return root / "models"


@pytest.fixture
def cases(tmp_path) -> Path:
    """Two rows to explain, with their true prompts: one whose rewrite opens with a lead-in, one without evidence."""
    path = tmp_path / "cases.csv"
    pd.DataFrame({"id": ["lead", "plain"], "original_text": ["The meeting moved to Thursday.", "Bread daily."],
                  "rewrite_prompt": [PIRATE, "Turn this into a short poem."],
                  "rewritten_text": [LEAD_IN, PLAIN]}).to_csv(path, index=False)
    return path


def _view(found: Explanation) -> list[str]:
    """The Rich view of `found` as plain lines."""
    console = Console(width=60, record=True, soft_wrap=True)
    console.print(render(found))
    return console.export_text().splitlines()


def _json(capsys, *argv) -> dict:
    """`promptrec explain ARGV --json`, parsed; it must succeed."""
    code, out, err = run(capsys, "explain", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.slow
def test_json_matches_recover_members_and_the_metric(capsys, models, cases, tmp_path):
    doc = _json(capsys, "--model", models, "--row", "lead", "--data", cases, "--top-k", 3)
    assert list(doc) == KEYS
    assert (doc["id"], doc["method"], doc["mode"], doc["embedder"]) == ("lead", "ensemble", "gate", PROXY)
    assert (doc["rewritten_text"], doc["truth"], doc["fallback"]) == (LEAD_IN, PIRATE, False)
    assert doc["evidence"] == {"kind": "lead_in", "phrase": PHRASE, "span": [13, 50], "core": "as a pirate's tale",
                               "cue": "rewritten"}
    # the final prompt is the one `recover` writes for this row
    assert run(capsys, "recover", cases, "--model", models, "-o", tmp_path / "sub.csv")[0] == 0
    submitted = pd.read_csv(tmp_path / "sub.csv", dtype=str).set_index("id")["rewrite_prompt"]
    assert doc["final_prompt"] == submitted["lead"]
    # each candidate is its member's own prediction, scored by promptrec.metric against the truth
    ensemble = load_method(models)
    pairs = pd.read_csv(cases, dtype=str).iloc[:1]
    assert [c["label"] for c in doc["candidates"]] == MEMBERS
    assert [c["method"] for c in doc["candidates"]] == ["constant", "bank", "regressor", "evidence"]
    assert [c["prompt"] for c in doc["candidates"]] == [m.predict(pairs)[0] for m in ensemble.members.values()]
    assert doc["candidates"][3]["prompt"] == PIRATE  # the evidence member's rule: "{verb} this {core}."
    embedder = load_embedder("proxy")
    for candidate in doc["candidates"]:
        assert candidate["truth_score"] == score([candidate["prompt"]], [PIRATE], embedder).per_row[0]
    assert doc["final_score"] == score([doc["final_prompt"]], [PIRATE], embedder).mean
    # the gate: its choice gives the final prompt; agreement is the gate's own feature
    gate = doc["gate"]
    assert gate["choice"] in CHOICES and list(gate["predicted_scores"]) == list(gate["member_features"]) == CHOICES
    assert gate["hedge"] and gate["hedge"] == ensemble.hedge  # the mean prompt fit learned (3 steps here)
    prompts = {c["label"]: c["prompt"] for c in doc["candidates"]} | {"mean": gate["hedge"]}
    member, _, hedged = gate["choice"].partition("+")
    assert doc["final_prompt"] == (f"{prompts[member]} {gate['hedge']}" if hedged else prompts[member])
    # the highest predicted score (plain argmax: the default gate keeps no member by margin)
    assert gate["default"] is None and gate["margin"] is None
    rated = {label: p for label, p in gate["predicted_scores"].items() if p is not None}
    assert gate["choice"] == max(rated, key=rated.get)
    assert list(gate["row_features"]) == ["change", "rewrite_words", "answered_share"]
    assert gate["row_features"]["answered_share"] == 1.0
    for candidate in doc["candidates"]:
        own = gate["member_features"][candidate["label"]]
        assert list(own) == ["answered", "prompt_words", "agreement", "reference", "original"] and own["answered"] == 1.0
        assert candidate["agreement"] == pytest.approx(own["agreement"], abs=1e-5)
    # bank and regressor search their saved banks; their prediction is their nearest bank prompt
    assert list(doc["neighbours"]) == ["bank", "regressor"]
    for label in ("bank", "regressor"):
        near = doc["neighbours"][label]
        member = next(c for c in doc["candidates"] if c["label"] == label)
        assert len(near) == 3 and near[0]["prompt"] == member["prompt"]
        assert [n["cosine"] for n in near] == sorted((n["cosine"] for n in near), reverse=True)
        written = set(written_prompts())  # the banks hold the training prompts and the written ones
        assert {n["prompt"] for n in near} <= set(pd.read_csv(EXAMPLES / "test.csv")["rewrite_prompt"]) | written
        assert [n["written"] for n in near] == [n["prompt"] in written for n in near]
    assert any(n["written"] for near in doc["neighbours"].values() for n in near)


@pytest.mark.slow
def test_rich_view_shows_every_member_prompt_and_the_evidence_span(capsys, models, cases):
    doc = _json(capsys, "--model", models, "--row", "lead", "--data", cases)
    code, out, _ = run(capsys, "explain", "--model", models, "--row", "lead", "--data", cases)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == ("case lead  method ensemble (gate over best, bank, regressor, evidence)  "
                        f"cosines and scores [{PROXY}]")
    for candidate in doc["candidates"]:  # one line per member ending with its prompt; the gate's pick marked
        row = next(line for line in lines if line[2:].startswith(candidate["label"] + " "))
        assert row.endswith(f"  {candidate['prompt']}")
        assert row[0] == (">" if candidate["label"] == doc["gate"]["choice"].removesuffix("+mean") else " ")
        assert f"{candidate['truth_score']:9.4f}" in row
    assert f"evidence lead_in: {PHRASE} (characters 13-50) -> 'as a pirate's tale', cue 'rewritten'" in lines
    assert doc["form"] == form_features("The meeting moved to Thursday.", LEAD_IN)  # the form reader, all features
    assert (doc["form"]["pirate"], doc["form"]["exclamations"], doc["form"]["verse_lines"], doc["form"]["emojis"]) == (2, 1, 2, 0)
    form_line = next(line for line in lines if line.startswith("form "))
    assert form_line.startswith("form lines 2, verse_lines 2, words 17, length_ratio") and "pirate 2" in form_line
    assert "emojis" not in form_line  # zero features are left out of the view
    assert f"final prompt {doc['final_prompt']}" in lines and f"truth        {PIRATE}" in lines
    assert f"score        {doc['final_score']:.4f} [{PROXY}]" in lines
    nearest = doc["neighbours"]["bank"][0]
    assert lines[lines.index("bank") + 1] == (f"   1  {nearest['cosine']:.4f}  {nearest['prompt']}"
                                              + ("  [written]" if nearest["written"] else ""))
    found = explain(open_model(models), read_case(cases, "lead"))
    assert [(s.start, s.end, s.style) for s in highlighted_rewrite(found).spans] == [(13, 50, HIGHLIGHT)]
    assert LEAD_IN[13:50] == PHRASE


@pytest.mark.slow
def test_a_row_without_evidence_and_texts_given_on_the_command_line(capsys, models, cases):
    doc = _json(capsys, "--model", models, "--original", "Bread daily.", "--rewritten", PLAIN)
    assert (doc["id"], doc["evidence"], doc["truth"], doc["final_score"]) == (GIVEN_ID, None, None, None)
    assert doc["candidates"][3] == {"label": "evidence", "method": "evidence", "prompt": None, "agreement": None,
                                    "truth_score": None}
    assert doc["gate"]["predicted_scores"]["evidence"] is None and doc["gate"]["predicted_scores"]["evidence+mean"] is None
    assert doc["gate"]["row_features"]["answered_share"] == pytest.approx(7 / 9)  # 9 choices; evidence (+mean) abstain
    assert doc["final_prompt"] == never_blank(load_method(models).predict(read_case(cases, "plain").pairs()))[0]
    code, out, _ = run(capsys, "explain", "--model", models, "--row", "plain", "--data", cases)
    assert code == 0 and "evidence none found in the rewrite" in out.splitlines()
    assert next(line for line in out.splitlines() if line[2:].startswith("evidence ")).endswith("  (abstained)")
    found = explain(open_model(models), read_case(cases, "plain"))
    assert found.evidence is None and highlighted_rewrite(found).spans == []


@pytest.mark.slow
def test_truth_option_overrides_the_table_and_is_scored(capsys, models, cases):
    truth = "Make it rhyme."
    doc = _json(capsys, "--model", models, "--row", "plain", "--data", cases, "--truth", truth)
    embedder = load_embedder("proxy")
    assert doc["truth"] == truth
    answered = [c for c in doc["candidates"] if c["prompt"]]
    expected = score([c["prompt"] for c in answered], [truth] * len(answered), embedder).per_row
    np.testing.assert_array_equal([c["truth_score"] for c in answered], expected)


@pytest.mark.slow
def test_a_single_method_shows_what_it_has(capsys, models, cases):
    bank = _json(capsys, "--model", models / "bank", "--row", "plain", "--data", cases, "--top-k", 2)
    assert (bank["method"], bank["mode"], bank["gate"]) == ("bank", None, None)
    assert [(c["label"], c["agreement"]) for c in bank["candidates"]] == [("bank", None)]
    assert list(bank["neighbours"]) == ["bank"] and len(bank["neighbours"]["bank"]) == 2
    assert bank["final_prompt"] == bank["candidates"][0]["prompt"] == bank["neighbours"]["bank"][0]["prompt"]
    constant = _json(capsys, "--model", models / "best", "--row", "plain", "--data", cases)
    assert (constant["neighbours"], constant["gate"], constant["evidence"]) == ({}, None, None)
    assert constant["final_prompt"] == load_method(models / "best").selected
    code, out, _ = run(capsys, "explain", "--model", models / "best", "--row", "plain", "--data", cases)
    assert code == 0 and out.splitlines()[0] == f"case plain  method constant  cosines and scores [{PROXY}]"
    assert "nearest bank prompts" not in out and "gate " not in out


def _snapshot(*folders: Path) -> dict[Path, int]:
    """Every path under `folders` with its modification time."""
    return {p: p.stat().st_mtime_ns for folder in folders for p in folder.rglob("*")}


@pytest.mark.slow
def test_explain_writes_nothing(capsys, models, cases):
    before = _snapshot(models, cases.parent)
    assert run(capsys, "explain", "--model", models, "--row", "lead", "--data", cases)[0] == 0
    assert _snapshot(models, cases.parent) == before


@pytest.mark.slow
def test_explain_leaves_the_regressor_feature_cache_alone(capsys, models):
    """Texts the regressor never saw would add a shard to its on-disk feature cache; explain encodes them in memory."""
    root = models.parent  # the models and the feature cache the fixture's regressor was fitted with
    assert list((root / "cache").rglob("*.safetensors"))  # fit wrote the cache there: it is the one in use
    before = _snapshot(root)
    texts = ["--original", "Tea at four, biscuits on the side.", "--rewritten", "Arr, tea at four bells, matey!"]
    doc = _json(capsys, "--model", models, *texts)
    assert doc["candidates"][2]["label"] == "regressor" and doc["candidates"][2]["prompt"]
    assert _snapshot(root) == before


@pytest.mark.parametrize("argv, message", [
    (["--row", "nope", "--data", "{cases}"], "{cases}, column 'id': no row with id 'nope'"),
    (["--row", "lead"], "explain: --row needs --data FILE"),
    (["--data", "{cases}"], "{cases}: give --row ID to explain"),
    ([], "explain: give --row ID with --data FILE, or --original TEXT with --rewritten TEXT"),
    (["--row", "lead", "--data", "{cases}", "--original", "a", "--rewritten", "b"],
     "explain: give --row ID with --data FILE, or --original TEXT with --rewritten TEXT (not both)"),
    (["--original", "a"], "explain: --rewritten is missing"),
    (["--original", " ", "--rewritten", "b"], "explain: --original is empty"),
    (["--original", "a", "--rewritten", "b", "--truth", ""], "explain: --truth is empty"),
    (["--row", "blank", "--data", "{cases}"], "{cases}, row 3, column 'rewritten_text': empty text (id 'blank')"),
    (["--row", "lead", "--data", "{missing}"], "{missing}: no such file"),
])
def test_bad_input_is_one_line_naming_what_is_wrong(capsys, cases, tmp_path, argv, message):
    pd.concat([pd.read_csv(cases), pd.DataFrame({"id": ["blank"], "original_text": ["x"], "rewritten_text": [""]})]
              ).to_csv(cases, index=False)
    names = {"cases": cases, "missing": tmp_path / "missing.csv"}
    code, out, err = run(capsys, "explain", "--model", tmp_path / "models", *[a.format(**names) for a in argv])
    assert (code, out, err) == (2, "", f"error: {message.format(**names)}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.csv"]


def test_missing_model_folder_and_bad_top_k(capsys, cases, tmp_path):
    code, _, err = run(capsys, "explain", "--model", tmp_path / "nowhere", "--row", "lead", "--data", cases)
    assert (code, err) == (2, f"error: {tmp_path / 'nowhere'}: no such model folder\n")
    code, _, err = run(capsys, "explain", "--model", tmp_path, "--row", "lead", "--data", cases)
    assert (code, err) == (2, f"error: {tmp_path}: not a saved method (no method.json)\n")
    with pytest.raises(DataError, match=r"^explain: --top-k must be at least 1, not 0$"):
        explain(None, read_case(cases, "lead"), top_k=0)
    # refused before any model folder is read: the missing folder is not what it names
    code, _, err = run(capsys, "explain", "--model", tmp_path / "nowhere", "--row", "lead", "--data", cases,
                       "--top-k", "0")
    assert (code, err) == (2, "error: explain: --top-k must be at least 1, not 0\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.csv"]


def test_render_draws_a_view_without_a_gate_or_truth():
    found = Explanation(id="r1", method="bank", mode=None, original_text="a", rewritten_text="b", evidence=None,
                        form={"words": 1.0, "emojis": 0.0}, candidates=[Candidate("bank", "bank", "Make it a poem.", None, None)], gate=None,
                        neighbours={"bank": [Neighbour("Make it a poem.", 0.5)]}, rerank={},
                        final_prompt="Make it a poem.", fallback=False, truth=None, final_score=None, embedder="toy")
    lines = _view(found)
    assert lines[0] == "case r1  method bank  cosines and scores [toy]"
    assert lines[4] == "form words 1"  # non-zero form features only
    assert lines[6:8] == ["  member  method  agreement  prompt", "  bank    bank            -  Make it a poem."]
    assert lines[-1] == "final prompt Make it a poem." and "   1  0.5000  Make it a poem." in lines


def test_an_ensemble_without_a_gate_shows_each_member_agreement_and_score(word_embedder):
    prompts = {"pirate": "Make it a pirate tale.", "formal": "Make it formal.", "poem": "Make it a pirate poem."}
    ensemble = from_name("ensemble", members=[f"{label}=constant" for label in prompts] + ["evidence"], mode="select",
                         member_config={label: {"prompt": prompt} for label, prompt in prompts.items()})
    ensemble.embedder = word_embedder  # axes pirate, formal, poem, short
    found = explain(ensemble, Case("r1", "Bread daily.", PLAIN, truth="Write it as a pirate poem."))
    assert [(c.label, c.method, c.prompt) for c in found.candidates] == [
        ("pirate", "constant", prompts["pirate"]), ("formal", "constant", prompts["formal"]),
        ("poem", "constant", prompts["poem"]), ("evidence", "evidence", None)]
    # pirate . pirate-poem = 1/sqrt(2), formal is orthogonal to both; each answering member has two others
    agreement = [c.agreement for c in found.candidates]
    assert agreement[:3] == pytest.approx([0.5**0.5 / 2, 0.0, 0.5**0.5 / 2]) and agreement[3] is None
    assert [c.truth_score for c in found.candidates][:3] == pytest.approx([0.5**1.5, 0.0, 1.0], abs=1e-6)
    assert found.candidates[3].truth_score is None
    # select: the candidate nearest the members' centroid (the abstaining evidence filled by `pirate`)
    assert (found.mode, found.gate, found.neighbours, found.final_prompt) == ("select", None, {}, prompts["pirate"])
    assert (found.fallback, found.final_score, found.embedder) == (False, pytest.approx(0.5**1.5), word_embedder.label)
    lines = _view(found)
    assert lines[0] == "case r1  method ensemble (select over pirate, formal, poem, evidence)  cosines and scores " \
                       "[fixture (4 words)]"
    assert "  formal    constant     0.0000     0.0000  Make it formal." in lines


def test_a_rerank_member_shows_its_scores_of_its_candidates_and_the_other_members_prompts(word_embedder, tiny_llama_dir,
                                                                                         one_thread):
    pirate = "Make it a pirate tale."
    ensemble = from_name("ensemble", members=["pirate=constant", "rerank"], mode="select",
                         member_config={"pirate": {"prompt": pirate}, "rerank": {"model": str(tiny_llama_dir), "k": 2}})
    ensemble.embedder = ensemble.members["rerank"].embedder = word_embedder
    prompts = ["Make it formal.", "Turn it into a poem.", "Make it short.", pirate]
    ensemble.fit(pd.DataFrame({"id": list("abcd"), "original_text": ["Bread daily."] * 4, "rewrite_prompt": prompts,
                               "rewritten_text": [PLAIN] * 4}))
    case = Case("r1", "Bread daily.", PLAIN)
    found = explain(ensemble, case)
    ranking = ensemble.members["rerank"].rank(case.pairs(), {"pirate": [pirate]})
    view = found.rerank["rerank"]
    assert list(found.rerank) == ["rerank"] and view.baseline == pytest.approx(ranking.baseline[0])
    expected = sorted(zip(ranking.prompts[0], ranking.scores[0], ranking.cosines[0]), key=lambda c: -(c[1] + c[2]))
    assert [(c.prompt, c.score, c.cosine) for c in view.candidates] == [
        (p, pytest.approx(s), pytest.approx(c)) for p, s, c in expected]
    assert view.cosine_weight == 1.0  # the default: ranked by score + cosine
    assert len(view.candidates) == 3 and pirate in ranking.prompts[0][2:]  # 2 bank neighbours, then the member's
    assert [c.members for c in view.candidates if c.prompt == pirate] == [["pirate"]]
    own = [c for c in view.candidates if c.prompt in ranking.prompts[0][:2]]
    assert found.candidates[1].prompt == own[0].prompt and all(c.members == [] for c in own)
    lines = _view(found)
    top = view.candidates[0]
    assert f"   1  {top.score:+.4f}  {top.cosine:7.4f}  {top.prompt}" in "\n".join(lines)


def test_a_method_that_abstains_gets_the_fallback_prompt(word_embedder):
    evidence = from_name("evidence")
    evidence.embedder = word_embedder
    found = explain(evidence, Case("r2", "Bread daily.", PLAIN, truth="Make it short."))
    assert [(c.label, c.prompt, c.agreement, c.truth_score) for c in found.candidates] == [
        ("evidence", None, None, None)]
    assert (found.final_prompt, found.fallback, found.gate, found.mode) == (FALLBACK_PROMPT, True, None, None)
    assert found.final_score == pytest.approx(0.5**3)  # no known word: (1,1,1,1)/2 against the 'short' axis
    lines = _view(found)
    assert f"final prompt {FALLBACK_PROMPT} (fallback: the method abstained)" in lines
    assert "  evidence  evidence          -          -  (abstained)" in lines
    assert "score        0.1250 [fixture (4 words)]" in lines


@pytest.mark.parametrize("mode", ["concat", "select", "gate"])
def test_an_ensemble_whose_members_all_abstain_reports_the_fallback(word_embedder, mode):
    """Every member abstains on a rewrite without evidence: the final prompt is the fallback, in every mode."""
    ensemble = from_name("ensemble", members=["a=evidence", "b=evidence"], mode=mode)
    ensemble.embedder = word_embedder
    if mode == "gate":  # a gate over the two members (F = 1 + 3 + 4 + 2 features); it picks nobody here
        ensemble.gate = Gate(["a", "b"], np.ones((2, len(FEATURES) + 2), dtype=np.float32))
    found = explain(ensemble, Case("r3", "Bread daily.", PLAIN))
    assert [c.prompt for c in found.candidates] == [None, None]
    assert (found.mode, found.final_prompt, found.fallback) == (mode, FALLBACK_PROMPT, True)
    assert f"final prompt {FALLBACK_PROMPT} (fallback: the method abstained)" in _view(found)
    # one member answering is no fallback, whatever the mode
    answering = from_name("ensemble", members=["a=evidence", "b=constant"], mode=mode,
                          member_config={"b": {"prompt": "Make it a pirate tale."}})
    answering.embedder = word_embedder
    answering.gate = ensemble.gate
    found = explain(answering, Case("r3", "Bread daily.", PLAIN))
    assert (found.final_prompt, found.fallback) == ("Make it a pirate tale.", False)
