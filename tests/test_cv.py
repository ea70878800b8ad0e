"""Cross-validation: folds never leak an original text (pooled or one source held out at a time), report files and
tables, reruns reuse parts, CLI verbs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_file
from hypothesis import given, settings, strategies as st

from promptrec.cv import CVSettings, make_folds, parse_specs, run_cv
from promptrec.data import DataError, read_triples
from promptrec.methods.base import FALLBACK_PROMPT, METHODS, save_config
from promptrec.splits import group_folds, held_out, scored_rows, source_folds

SEEN: dict[str, list] = {"fits": [], "predicts": [], "checkpoints": []}


@dataclass
class LeakConfig:
    """Options of the in-test leak-checking method."""

    answer: str = "pirate"  # the prompt predicted for every row
    abstain: bool = False  # answer None on every other row (the 2nd, 4th, ...), as a method without evidence would
    checkpoint_dir: str | None = None  # set by cv; fit leaves a folder there, as a method killed mid-fit would


class LeakCheckMethod:
    """Remembers its training originals and fails if a held-out pair shares one; counts fits and predicts."""

    name = "leakcheck"
    Config = LeakConfig

    def __init__(self, config: LeakConfig | None = None):
        self.config = config or LeakConfig()
        self.originals: set[str] = set()

    def resume_in(self, folder: Path) -> None:
        if self.config.checkpoint_dir is None:
            self.config.checkpoint_dir = str(folder)

    def fit(self, triples: pd.DataFrame) -> None:
        SEEN["fits"].append(self.config.answer)
        if self.config.checkpoint_dir:
            SEEN["checkpoints"].append(Path(self.config.checkpoint_dir))
            Path(self.config.checkpoint_dir).mkdir(parents=True)
        self.originals = set(triples["original_text"].str.strip())

    def predict(self, pairs: pd.DataFrame) -> list[str]:
        SEEN["predicts"].append(self.config.answer)
        leaked = self.originals & set(pairs["original_text"].str.strip())
        assert not leaked, f"original text in train and test: {sorted(leaked)[:1]}"
        return [None if self.config.abstain and i % 2 else self.config.answer for i in range(len(pairs))]

    def save(self, folder: Path) -> None:
        save_config(Path(folder), self.name, self.config)

    @classmethod
    def load(cls, folder: Path):
        raise NotImplementedError("not saved in these tests")


@pytest.fixture(autouse=True)
def _register(monkeypatch):
    monkeypatch.setitem(METHODS, "leakcheck", f"{__name__}:LeakCheckMethod")
    for seen in SEEN.values():
        seen.clear()


def _triples(path: Path, prefix: str, rows: int, prompts: list[str], topic: str = "text") -> Path:
    """A triple file whose originals repeat (every 3 rows share one) to exercise grouping; files with the same
    `topic` share original texts."""
    pd.DataFrame({
        "id": [f"{prefix}{i}" for i in range(rows)],
        "original_text": [f"{topic} number {i // 3}" + (" " if i % 2 else "") for i in range(rows)],
        "rewrite_prompt": [prompts[i % len(prompts)] for i in range(rows)],
        "rewritten_text": [f"rewritten {i}" for i in range(rows)],
    }).to_csv(path, index=False)
    return path


@given(st.lists(st.integers(0, 12), min_size=6, max_size=60), st.integers(2, 5), st.integers(0, 3))
@settings(max_examples=60, deadline=None)
def test_group_folds_never_split_an_original(groups, folds, seed):
    originals = [f"t{g}" for g in groups]
    if folds > len(set(originals)):
        with pytest.raises(DataError, match="--folds"):
            group_folds(originals, folds, seed)
        return
    fold_of = group_folds(originals, folds, seed)
    for text in set(originals):
        assert len({fold_of[i] for i, o in enumerate(originals) if o == text}) == 1
    assert set(fold_of.tolist()) == set(range(folds))  # no fold is empty
    assert np.array_equal(fold_of, group_folds(originals, folds, seed))


def test_group_folds_strips_and_balances():
    fold_of = group_folds(["a", "a ", " b", "b", "c", "d"], 2, seed=0)
    assert fold_of[0] == fold_of[1] and fold_of[2] == fold_of[3]
    assert sorted(np.bincount(fold_of).tolist()) == [3, 3]


def test_one_grouping_serves_cv_folds_and_held_out():
    keys = ["a", "a ", " b", "b", "\tc", "c"]  # the same three texts, spaced differently
    fold_of = group_folds(keys, 3, seed=0)
    assert fold_of[0] == fold_of[1] and fold_of[2] == fold_of[3] and fold_of[4] == fold_of[5]
    for seed in range(5):
        mask = held_out(keys, 1 / 3, seed)
        assert mask.sum() == 2 and mask[0::2].tolist() == mask[1::2].tolist()


def test_source_folds_hold_out_files_sharing_texts_together():
    sources = ["a", "a", "b", "b", "c", "c", "d", "d", "e"]
    originals = ["x", "y", "z", "", "y ", "w", "v", "", " v"]  # a-c share "y", d-e share "v"; blanks tie nothing
    fold_of, names = source_folds(sources, originals)
    assert names == ["a + c", "b", "d + e"]
    assert fold_of.tolist() == [0, 0, 1, 1, 0, 0, 2, 2, 2]
    with pytest.raises(DataError, match=r"--by source: needs two or more files that share no .* \(got: a \+ b\)"):
        source_folds(["a", "b"], ["x", " x"])


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 9)), min_size=2, max_size=60))
@settings(max_examples=60, deadline=None)
def test_source_folds_hold_out_every_file_once_and_never_leak(rows):
    sources, originals = [f"f{s}.csv" for s, _ in rows], [f"t{t}" for _, t in rows]
    files = list(dict.fromkeys(sources))
    try:
        fold_of, names = source_folds(sources, originals)
    except DataError:
        return  # every file is tied to every other: nothing to hold out
    held = [name.split(" + ") for name in names]
    assert sorted(f for group in held for f in group) == sorted(files)  # each file held out exactly once
    for fold, group in enumerate(held):
        assert {s for s, k in zip(sources, fold_of) if k == fold} == set(group)
        inside = {o for o, k in zip(originals, fold_of) if k == fold}
        assert inside.isdisjoint(o for o, k in zip(originals, fold_of) if k != fold)


def test_real_gemma_samplings_are_held_out_together():
    names = ["gemma_1100.csv", "gemma_rerun_994.csv", "dolly_gemini_500.csv", "gpt35_1080.csv", "llama3_456.csv",
             "gemma_wiki_2977.csv"]
    table = read_triples([shared_file(name) for name in names])
    folds = make_folds(table, CVSettings(by="source"))
    assert folds.names == ["gemma_1100.csv + gemma_rerun_994.csv", "dolly_gemini_500.csv", "gpt35_1080.csv",
                           "llama3_456.csv", "gemma_wiki_2977.csv"]
    assert np.bincount(folds.of).tolist() == [1100 + 994, 500, 1080, 456, 2977]
    with pytest.raises(DataError, match="--by pooled: expected one of text, source"):
        make_folds(table, CVSettings(by="pooled"))


def test_scored_rows_limit_is_a_seeded_subset():
    fold_of = np.array([0, 1] * 10)
    assert scored_rows(fold_of, 1, 0, 0).tolist() == list(range(1, 20, 2))
    picked = scored_rows(fold_of, 1, 4, 0)
    assert len(picked) == 4 and set(picked) <= set(range(1, 20, 2))
    assert picked.tolist() == scored_rows(fold_of, 1, 4, 0).tolist() == sorted(picked.tolist())


def test_specs_and_sources_are_checked(tmp_path):
    specs = parse_specs(["constant", "b=constant"], {"b": {"prompt": "x"}})
    assert [(s.label, s.name, s.options) for s in specs] == [("constant", "constant", {}), ("b", "constant", {"prompt": "x"})]
    with pytest.raises(DataError, match="not among the methods"):
        parse_specs(["constant"], {"zzz": {}})
    # building the ensemble checks its members' options; the ensemble words the member's part of the message
    with pytest.raises(DataError, match=r"^method 'e': .*unknown option 'colour'"):
        parse_specs(["e=ensemble"], {"e": {"members": ["x=constant"], "member_config": {"x": {"colour": 1}}}})
    one = _triples(tmp_path / "a.csv", "a", 6, ["p"])
    (tmp_path / "sub").mkdir()
    two = _triples(tmp_path / "sub" / "a.csv", "b", 6, ["p"])
    with pytest.raises(DataError, match="given twice"):
        read_triples([one, two])


def test_run_cv_writes_the_report(tmp_path, word_embedder):
    first = _triples(tmp_path / "gen_a.csv", "a", 30, ["pirate", "formal poem"])
    second = _triples(tmp_path / "gen_b.csv", "b", 24, ["short"])
    methods = ["pirate=leakcheck", "short=leakcheck", "ens=ensemble"]
    options = {"short": {"answer": "short"},
               "ens": {"members": ["pirate=leakcheck", "short=leakcheck"], "member_config": {"short": {"answer": "short"}},
                       "mode": "concat"}}
    result = run_cv([first, second], methods, tmp_path / "report", options, CVSettings(folds=3), word_embedder)
    # each member is fitted once per fold: the ensemble reuses the fitted members and their predictions
    assert sorted(SEEN["fits"]) == ["pirate"] * 3 + ["short"] * 3 and len(SEEN["predicts"]) == 6
    folder = tmp_path / "report"
    assert {p.name for p in folder.iterdir()} == {"report.md", "oof.csv", "score_distribution.png", "scatter.png",
                                                  "score_by_length.png", "parts"}
    assert all((folder / n).read_bytes()[:4] == b"\x89PNG" for n in ("scatter.png", "score_distribution.png"))
    oof = pd.read_csv(folder / "oof.csv")
    assert len(oof) == 3 * 54 and list(oof.columns) == ["source", "id", "rewrite_prompt", "fold", "method",
                                                        "prediction", "score", "answered", "prompt_words"]
    pirate = oof[oof.method == "pirate"]
    assert pirate.loc[pirate.rewrite_prompt == "pirate", "score"].eq(1.0).all()
    assert pirate.loc[pirate.rewrite_prompt == "short", "score"].eq(0.0).all()
    assert set(oof.loc[oof.method == "ens", "prediction"]) == {"pirate short"}
    report = (folder / "report.md").read_text()
    header = "| method | name | score [fixture (4 words)] mean ± std over folds | pooled | rows | fit s | predict s |"
    assert header in report
    rows = [line for line in report.splitlines() if line.startswith("| pirate | leakcheck |")]
    expected = pirate.score.mean()
    assert len(rows) == 1 and f"| {expected:.4f} |" in rows[0] and rows[0].split(" | ")[4] == "54"
    assert "| method | gen_a.csv | gen_b.csv |" in report
    assert "| short | 0.0000 | 1.0000 |" in report
    assert "fixture (4 words)" in report.splitlines()[2]
    assert result.label == "fixture (4 words)"


def test_composites_reuse_members_by_model_key_and_fill_abstentions(tmp_path, word_embedder):
    data = _triples(tmp_path / "d.csv", "d", 12, ["pirate", "short"])
    options = {"quiet": {"abstain": True}, "short": {"answer": "short"},
               "ens": {"members": ["q=leakcheck", "s=leakcheck"], "mode": "concat",
                       "member_config": {"q": {"abstain": True}, "s": {"answer": "short"}}}}
    result = run_cv([data], ["quiet=leakcheck", "short=leakcheck", "ens=ensemble"], tmp_path / "r", options,
                    CVSettings(folds=2), word_embedder)
    # members match the standalone runs by name and config, not by label: fitted and asked once per fold
    assert sorted(SEEN["fits"]) == sorted(SEEN["predicts"]) == ["pirate", "pirate", "short", "short"]
    by_method = result.oof.groupby("method", sort=False)["prediction"].apply(list).to_dict()
    assert by_method["quiet"] == ["pirate", FALLBACK_PROMPT] * 6  # an abstention is filled as recover would
    # where q abstains, the ensemble's first answering member (s) stands in, and the join drops the repeat
    assert by_method["ens"] == ["pirate short", "short"] * 6
    # the report compares every method on the rows where quiet abstained (3 of each fold's 6): it leaves them to the rest
    assert result.oof.loc[result.oof["method"] == "quiet", "answered"].tolist() == [True, False] * 6
    report = (tmp_path / "r" / "report.md").read_text()
    assert "\n".join(["## On the rows where quiet abstains [fixture (4 words)]", "",
                      "Each method on the same rows (their count per fold in brackets): where quiet answers nothing, "
                      "the rest must carry the row.", "",
                      "| method | mean over folds | fold 1 (3) | fold 2 (3) |", "|---|---|---|---|",
                      "| quiet | 0.1250 | 0.1250 | 0.1250 |", "| short | 0.5000 | 0.0000 | 1.0000 |",
                      "| ens | 0.5000 | 0.0000 | 1.0000 |"]) in report
    assert "where short abstains" not in report and "where ens abstains" not in report


def test_rerun_reuses_parts_and_limit_subsamples(tmp_path, word_embedder):
    data = _triples(tmp_path / "d.csv", "d", 30, ["pirate", "poem"])
    run = lambda **kw: run_cv([data], ["leakcheck"], tmp_path / "r", {}, CVSettings(folds=2, **kw), word_embedder)
    run()
    assert len(SEEN["fits"]) == 2 and len(list((tmp_path / "r" / "parts").glob("*.json"))) == 2
    again = run()
    assert len(SEEN["fits"]) == 2 and again.timings["cached"].all()
    limited = run(limit=4)
    assert len(SEEN["fits"]) == 4 and len(limited.oof) == 8
    assert "limit 4 held-out rows per fold" in (tmp_path / "r" / "report.md").read_text()
    part = json.loads(next((tmp_path / "r" / "parts").glob("*.json")).read_text())
    assert part["embedder"] == "fixture (4 words)" and len(part["predictions"]) == len(part["scores"])


def test_run_cv_by_source_reports_each_held_out_source(tmp_path, word_embedder):
    files = [_triples(tmp_path / "a.csv", "a", 12, ["pirate", "poem", "poem"], topic="alpha"),
             _triples(tmp_path / "b.csv", "b", 6, ["short"], topic="alpha"),  # shares texts with a.csv
             _triples(tmp_path / "c.csv", "c", 9, ["pirate", "short", "short"], topic="gamma")]
    options = {"pirate": {"prompt": "pirate"}, "short": {"prompt": "short"}}
    result = run_cv(files, ["pirate=constant", "short=constant"], tmp_path / "r", options, CVSettings(by="source"),
                    word_embedder)
    assert result.folds.names == ["a.csv + b.csv", "c.csv"] and result.folds.unit == "held-out sources"
    folds = result.oof.groupby("method")["fold"].apply(list).to_dict()
    assert folds == {"pirate": [0] * 18 + [1] * 9, "short": [0] * 18 + [1] * 9}
    report = (tmp_path / "r" / "report.md").read_text()
    # pirate: 4 of 18 rows right when a+b are held out, 3 of 9 for c; short: 6 of 18, 6 of 9
    for table in (
        ["## Scores [fixture (4 words)]", "",
         "| method | name | score [fixture (4 words)] mean ± std over held-out sources | pooled | rows | fit s "
         "| predict s |",
         "|---|---|---|---|---|---|---|"],
        ["## Per held-out source [fixture (4 words)]", "", "| method | a.csv + b.csv | c.csv |", "|---|---|---|",
         "| pirate | 0.2222 | 0.3333 |", "| short | 0.3333 | 0.6667 |"],
        ["## Per source file (pooled over folds) [fixture (4 words)]", "", "| method | a.csv | b.csv | c.csv |",
         "|---|---|---|---|", "| pirate | 0.3333 | 0.0000 | 0.3333 |", "| short | 0.0000 | 1.0000 | 0.6667 |"],
    ):
        assert "\n".join(table) in report
    assert "| pirate | constant | 0.2778 ± 0.0786 | 0.2593 | 27 |" in report
    assert "| short | constant | 0.5000 ± 0.2357 | 0.4444 | 27 |" in report
    assert "held out: a.csv + b.csv (18 rows), c.csv (9 rows)" in report
    assert "- best by mean over held-out sources: **short** (0.5000 [fixture (4 words)])" in report


def test_fold_scheme_is_part_of_each_part_identity(tmp_path, word_embedder):
    files = [_triples(tmp_path / "a.csv", "a", 12, ["pirate"], topic="alpha"),
             _triples(tmp_path / "b.csv", "b", 6, ["poem"], topic="alpha"),
             _triples(tmp_path / "c.csv", "c", 9, ["short"], topic="gamma")]
    run = lambda **kw: run_cv(files, ["leakcheck"], tmp_path / "r", {}, CVSettings(**kw), word_embedder)
    run(by="source")  # leakcheck fails if a.csv and b.csv land on different sides
    assert len(SEEN["fits"]) == 2 and run(by="source").timings["cached"].all() and len(SEEN["fits"]) == 2
    limited = run(by="source", limit=4)
    assert len(SEEN["fits"]) == 4 and len(limited.oof) == 8
    pooled = run(by="text", folds=2)
    assert len(SEEN["fits"]) == 6 and not pooled.timings["cached"].any()
    assert len(list((tmp_path / "r" / "parts").glob("*.json"))) == 6


def test_fits_checkpoint_beside_their_part_which_clears_them(tmp_path, word_embedder):
    data = _triples(tmp_path / "d.csv", "d", 30, ["pirate", "poem"])
    options = {"ens": {"members": ["inner=leakcheck"], "member_config": {"inner": {"answer": "inner"}}}}
    run_cv([data], ["leakcheck", "ens=ensemble"], tmp_path / "r", options, CVSettings(folds=2), word_embedder)
    parts = tmp_path / "r" / "parts"
    stems = {p.stem for p in parts.glob("*.json")}
    plain = [p for p in SEEN["checkpoints"] if p.parent == parts]
    inner = [p for p in SEEN["checkpoints"] if p.name == "inner.partial"]
    assert len(plain) == len(inner) == 2 and len(SEEN["checkpoints"]) == 4
    assert {p.name.removesuffix(".partial") for p in plain} | {p.parent.name for p in inner} == stems
    assert all(p.parent.parent == parts for p in inner)
    assert [p for p in parts.iterdir() if p.is_dir()] == []  # removed once each part is written


def test_cli_fold_scheme_errors_in_one_line(capsys, tmp_path):
    from promptrec.cli import main

    data = _triples(tmp_path / "t.csv", "t", 6, ["p"])
    for by, message in (("pooled", "--by pooled: expected one of text, source"),
                        ("source", "--by source: needs two or more files that share no original text (got: t.csv)")):
        with pytest.raises(SystemExit) as stop:
            main(["cv", str(data), "--by", by, "-m", "constant", "-o", str(tmp_path / "r")])
        assert stop.value.code == 2 and capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_cli_cv_fit_recover_and_optimize(tmp_path):
    from typer.testing import CliRunner

    from promptrec.cli import app

    data = _triples(tmp_path / "t.csv", "t", 24, ["Make it a pirate story.", "Rewrite it formally.", "Turn it into a poem."])
    runner = CliRunner()
    done = runner.invoke(app, ["--threads", "1", "cv", str(data), "-m", "constant,best=constant", "--folds", "2",
                               "--set", "best.select=true", "-o", str(tmp_path / "cv")])
    assert done.exit_code == 0, done.output
    assert "best: " in done.output and "[proxy (all-MiniLM-L6-v2), 24 rows]" in done.output
    other = _triples(tmp_path / "u.csv", "u", 9, ["Write it as a poem."], topic="other")
    done = runner.invoke(app, ["--threads", "1", "cv", str(data), str(other), "--by", "source",
                               "-o", str(tmp_path / "s")])
    assert done.exit_code == 0, done.output
    assert "over 2 held-out sources [proxy (all-MiniLM-L6-v2), 33 rows]" in done.output
    assert "fold 2/2 (held out: u.csv) constant: " in done.output
    (tmp_path / "opts.yaml").write_text("best: {select: true}\nensemble:\n  mode: concat\n")
    done = runner.invoke(app, ["fit", str(data), "-o", str(tmp_path / "models"), "-m", "constant,best=constant",
                               "--config", str(tmp_path / "opts.yaml")])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "models" / "best" / "method.json").is_file()
    (tmp_path / "recipe.yaml").write_text("ensemble: {members: [constant, best=constant], mode: concat}\n"
                                          "best: {select: true}\n")  # a recipe such as configs/fit_quality.yaml
    done = runner.invoke(app, ["fit", str(data), "-o", str(tmp_path / "recipe"), "--config", str(tmp_path / "recipe.yaml")])
    assert done.exit_code == 0, done.output
    assert "saved ensemble (concat; members constant, best)" in done.output
    done = runner.invoke(app, ["recover", str(data), "--model", str(tmp_path / "models"), "-o", str(tmp_path / "sub.csv")])
    assert done.exit_code == 0, done.output
    prompts = pd.read_csv(tmp_path / "sub.csv")["rewrite_prompt"]
    assert prompts.str.startswith("Rewrite this text in a different style. ").all() and prompts.nunique() == 1
    done = runner.invoke(app, ["optimize-prompt", str(data), "--steps", "3", "--edits", "8", "--holdout", "0.34",
                               "--start", "Rewrite it.", "-o", str(tmp_path / "opt.json")])
    assert done.exit_code == 0, done.output
    saved = json.loads((tmp_path / "opt.json").read_text())
    assert saved["label"] == "proxy (all-MiniLM-L6-v2)" and saved["holdout_rows"] == 8 and saved["start"] == "Rewrite it."
    assert [s["step"] for s in saved["trajectory"]] == [0, 1, 2, 3, 4] and "held out (8 prompts)" in done.output
    bad = runner.invoke(app, ["cv", str(data), "--set", "nodot=1", "-o", str(tmp_path / "x")])
    assert bad.exit_code != 0
