"""The CLI: verb list, help, one-line errors on every bad input, and the foundation's end-to-end runs."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from conftest import EXAMPLES, shared_file
from conftest import run_cli as run
from promptrec.cli import app
from promptrec.generate import GenerateConfig
from promptrec.optimize import OptimizeConfig

BAD = sorted(p for p in (Path(__file__).parent / "data" / "bad").iterdir() if not p.name.startswith("ok_"))
VERBS = ["clean", "embed", "score", "recover", "explain", "train", "methods", "bench", "cv", "optimize-prompt", "fit",
         "bundle", "generate", "regressor-report"]


def test_verbs_and_help(capsys):
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert names == VERBS
    code, out, _ = run(capsys, "--help")
    commands = out[out.index("Commands"):]
    listed = {m.group(1): m.group(2) for m in re.finditer(r"^│ ([a-z][a-z-]*) +(\S.*?)\s*│$", commands, re.M)}
    assert code == 0 and set(listed) == set(VERBS)
    assert listed["train"].startswith("Train ONE method") and listed["fit"].startswith("Train EVERY member")


@pytest.mark.parametrize("verb, config, skipped", [
    ("generate", GenerateConfig, {"backend", "backend_options"}),  # backend: None (implied); backend_options: --set
    ("optimize-prompt", OptimizeConfig, {"max_words", "guide_top"}),  # no option
])
def test_option_defaults_are_the_config_dataclass_defaults(capsys, monkeypatch, verb, config, skipped):
    monkeypatch.setenv("COLUMNS", "300")  # one line per option, so each default sits beside its option
    code, out, _ = run(capsys, verb, "--help")
    assert code == 0
    shown = {m.group(1): m.group(2) for m in re.finditer(  # option -> its default as shown (None: none shown)
        r"^│[ *]+(--[a-z-]+)\b.*?(?:\[default: ([^\]]*)\])?\s*│$", out, re.M)}
    fields = {f.name: f.default for f in dataclasses.fields(config) if f.name not in skipped}
    assert fields and all(f"--{name.replace('_', '-')}" in shown for name in fields)
    assert {name: shown[f"--{name.replace('_', '-')}"] for name in fields} == {
        name: str(value) for name, value in fields.items()}
    assert shown["--backend" if verb == "generate" else "--start"] is None  # None: no default shown


def test_fit_with_a_hedge_names_the_mean_prompt_it_saved(capsys, tmp_path, one_thread):
    data = tmp_path / "train.csv"
    pd.DataFrame({"id": [str(i) for i in range(9)], "original_text": [f"text {i}" for i in range(9)],
                  "rewrite_prompt": ["Make it a poem."] * 9, "rewritten_text": [f"poem {i}" for i in range(9)]}).to_csv(data, index=False)
    code, out, _ = run(capsys, "fit", data, "-m", "constant,shout=constant", "-o", tmp_path / "m", "--set",
                       "ensemble.mode=gate", "--set", "ensemble.hedge_steps=2", "--set", "ensemble.suffix_seconds=5")
    hedge = json.loads((tmp_path / "m" / "method.json").read_text())["state"]["hedge"]
    assert code == 0 and hedge and out == f"saved ensemble (gate; members constant, shout; hedge '{hedge}') -> {tmp_path / 'm'}\n"


def test_fit_logs_each_member_on_stderr_and_warns_in_one_line(capsys, tmp_path):
    data = tmp_path / "train.csv"
    pd.DataFrame({"id": ["1", "2"], "original_text": ["a", ""], "rewrite_prompt": ["p", "q"],
                  "rewritten_text": ["A", "B"]}).to_csv(data, index=False)
    code, out, err = run(capsys, "fit", data, "-m", "constant,shout=constant", "-o", tmp_path / "m")
    assert code == 0 and out == f"saved ensemble (concat; members constant, shout) -> {tmp_path / 'm'}\n"
    lines = err.splitlines()
    assert lines[0] == f"warning: {data}, row 2, column 'original_text': empty text (the row still gets a prediction)"
    assert [line.split(" in ")[0] for line in lines[1:]] == ["fitted constant", "fitted shout"]


@pytest.mark.parametrize("bad", BAD, ids=lambda p: p.name)
@pytest.mark.parametrize("verb", ["recover", "explain", "score", "clean", "train", "embed", "cv", "fit",
                                  "optimize-prompt", "generate", "regressor-report"])
def test_every_reading_verb_fails_in_one_line_and_writes_nothing(capsys, tmp_path, verb, bad):
    work = tmp_path / verb  # this verb's own folder: what it leaves there is all it wrote
    work.mkdir()
    out_file = work / "out.csv"
    argv = {
        "recover": ["recover", bad, "-o", out_file],
        "explain": ["explain", "--model", work / "saved", "--row", "1", "--data", bad],
        "score": ["score", bad, EXAMPLES / "test.csv"],
        "clean": ["clean", bad, out_file],
        "train": ["train", "constant", bad, "-o", work / "trained"],
        "embed": ["embed", bad, "-o", work / "e.npy"],
        "cv": ["cv", bad, "-m", "constant", "-o", work / "report"],
        "fit": ["fit", bad, "-m", "constant", "-o", work / "fitted"],
        "optimize-prompt": ["optimize-prompt", bad, "-o", out_file],
        "generate": ["generate", "--texts", bad, "--prompts", EXAMPLES / "prompts.txt", "-o", out_file],
        "regressor-report": ["regressor-report", work, bad],
    }[verb]
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0].replace("\n", "")
    assert "Traceback" not in err
    # train and fit check that their output folder is writable (creating it) before they read the data: that empty
    # folder is all they leave; every other verb leaves nothing.
    left = {"train": ["trained"], "fit": ["fitted"]}.get(verb, [])
    assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == left
    assert sorted(p.name for p in tmp_path.iterdir()) == [verb]


def test_recover_never_blank_same_ids_same_order(capsys, tmp_path):
    code, out, _ = run(capsys, "recover", EXAMPLES / "test.csv", "-o", tmp_path / "sub.csv",
                       "--set", "prompt=Rewrite this as a poem.")
    assert code == 0 and "wrote 20 prompts" in out
    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str, keep_default_na=False)
    truth = pd.read_csv(EXAMPLES / "test.csv", dtype=str)
    assert sub.columns.tolist() == ["id", "rewrite_prompt"]
    assert sub["id"].tolist() == truth["id"].tolist()
    assert (sub["rewrite_prompt"] == "Rewrite this as a poem.").all()


def test_recover_unknown_method_and_option(capsys, tmp_path):
    code, _, err = run(capsys, "recover", EXAMPLES / "test.csv", "-o", tmp_path / "s.csv", "--method", "nope")
    assert code == 2 and "unknown method 'nope'" in err
    code, _, err = run(capsys, "recover", EXAMPLES / "test.csv", "-o", tmp_path / "s.csv", "--set", "colour=red")
    assert code == 2 and "unknown option 'colour'" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_score_real_file_against_itself_and_a_constant(capsys, tmp_path):
    data = shared_file("dolly_gemini_500.csv")
    code, out, _ = run(capsys, "score", data, data, "--per-row", tmp_path / "rows.csv")
    assert code == 0 and out.strip() == "score 1.0000  [proxy (all-MiniLM-L6-v2), 500 rows]"
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert len(rows) == 500 and rows["score"].min() > 0.9999 and set(rows["embedder"]) == {"proxy (all-MiniLM-L6-v2)"}
    code, out, _ = run(capsys, "recover", data, "-o", tmp_path / "sub.csv")
    assert code == 0 and "wrote 500 prompts" in out
    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str, keep_default_na=False)
    assert len(sub) == 500 and (sub["rewrite_prompt"].str.strip() != "").all()
    assert sub["id"].tolist() == pd.read_csv(data, dtype=str)["id"].tolist()
    code, out, _ = run(capsys, "score", tmp_path / "sub.csv", data)
    mean = float(out.split()[1])
    assert code == 0 and 0.0 < mean < 0.5 and "[proxy (all-MiniLM-L6-v2), 500 rows]" in out


@pytest.mark.slow
def test_train_constant_select_then_recover_and_embed(capsys, tmp_path):
    code, out, _ = run(capsys, "train", "constant", EXAMPLES / "test.csv", "-o", tmp_path / "m", "--set", "select=true")
    assert code == 0
    code, _, _ = run(capsys, "recover", EXAMPLES / "test.csv", "-o", tmp_path / "sub.csv", "--model", tmp_path / "m")
    prompts = set(pd.read_csv(tmp_path / "sub.csv")["rewrite_prompt"])
    assert code == 0 and len(prompts) == 1 and prompts <= set(pd.read_csv(EXAMPLES / "test.csv")["rewrite_prompt"])
    code, out, _ = run(capsys, "embed", EXAMPLES / "test.csv", "-o", tmp_path / "p.npy")
    assert code == 0 and "shape (20, 384) [proxy (all-MiniLM-L6-v2)]" in out


def test_a_ten_megabyte_text_is_accepted(capsys, tmp_path):
    src = tmp_path / "big.csv"
    pd.DataFrame({"id": ["big", "small"], "original_text": ["word " * 2_000_000, "x"],
                  "rewritten_text": ["WORD " * 2_000_000, "X"]}).to_csv(src, index=False)
    assert src.stat().st_size > 20_000_000
    code, out, _ = run(capsys, "recover", src, "-o", tmp_path / "sub.csv")
    assert code == 0 and "wrote 2 prompts" in out
    code, out, _ = run(capsys, "clean", src, tmp_path / "clean.csv")
    assert code == 0 and "cleaned 2 rows" in out


def test_bench_unknown_name_lists_the_known_ones(capsys):
    code, _, err = run(capsys, "bench", "nope", "--rows", "3")
    assert code == 2 and "unknown benchmark 'nope' (known: " in err and "metric_dedupe" in err


@pytest.mark.slow
def test_bench_forwards_its_options(capsys):
    code, out, _ = run(capsys, "bench", "metric_dedupe", "--rows", "40")
    assert code == 0 and "[proxy (all-MiniLM-L6-v2)], 40 rows, 21 distinct texts" in out and "ratio: " in out


def _run_child(argv: list, terminal: bool) -> tuple[int, str]:
    """Exit code and everything the CLI printed, run in a child process on a pseudo-terminal (stdout and stderr
    both) or with both piped."""
    import os
    import pty
    import subprocess
    import sys

    from conftest import CLI_ENV, ROOT

    command = [sys.executable, "-m", "promptrec", *map(str, argv)]
    env = {**CLI_ENV, "TERM": "xterm", "COLUMNS": "140"}
    if not terminal:
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        return done.returncode, done.stdout + done.stderr
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return process.wait(timeout=300), b"".join(chunks).decode("utf-8", "replace")


BAR = "━"  # what Rich draws a progress bar with


def test_fit_and_recover_show_progress_bars_on_a_terminal_only(tmp_path):
    """Issue 24: bars with ETA on a (pseudo-)terminal; none when piped or with --quiet; the summary line is kept."""
    data = tmp_path / "train.csv"
    pd.DataFrame({"id": ["1", "2", "3"], "original_text": ["a", "b", "c"], "rewrite_prompt": ["p", "q", "r"],
                  "rewritten_text": ["A", "B", "C"]}).to_csv(data, index=False)
    fit = ["fit", data, "-m", "constant,shout=constant", "-o", tmp_path / "m"]
    recover = ["recover", EXAMPLES / "test.csv", "--model", tmp_path / "m", "-o", tmp_path / "sub.csv"]
    code, shown = _run_child(fit, terminal=True)
    assert code == 0 and BAR in shown and "fit" in shown and "2/2" in shown and "ETA" in shown, shown
    assert f"saved ensemble (concat; members constant, shout) -> {tmp_path / 'm'}" in shown
    code, shown = _run_child(recover, terminal=True)
    assert code == 0 and BAR in shown and "recover" in shown and "20/20" in shown and "ETA" in shown, shown
    assert f"wrote 20 prompts -> {tmp_path / 'sub.csv'} (method ensemble)" in shown
    for argv, terminal in ((fit, False), (recover, False), ([*fit, "--quiet"], True), ([*recover, "-q"], True)):
        code, shown = _run_child(argv, terminal)
        assert code == 0 and BAR not in shown and "ETA" not in shown, (argv, terminal, shown)
