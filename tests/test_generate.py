"""Triple generation: sampling, truncation, cleaning and drop counts, journal resume, a real kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from promptrec.data import TRIPLE_COLUMNS, DataError, read_table
from promptrec.generate import (
    GenerateConfig, cut_at_sentence, generate_triples, load_sources, pair_stream, trim_unfinished,
)
from promptrec.llm.base import GenerationSettings

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["The shop opens at nine.", "  The shop opens at nine.  ", "Rain is expected tomorrow.", "", "Cats sleep a lot."]
PROMPTS = ["Make it formal.", "Write it as a poem.", "copy it", "refuse this", "Shout it."]


class FakeRewriter:
    """Applies prompts predictably: 'refuse' -> a refusal, 'copy' -> the text back, else a tagged rewrite."""

    name = "fake"

    def __init__(self, interrupt_on_call: int | None = None) -> None:
        self.calls, self.interrupt_on_call, self.seeds = 0, interrupt_on_call, []

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return messages[0]["content"]

    def generate(self, prompts, settings: GenerationSettings) -> list[str]:
        self.calls += 1
        if self.calls == self.interrupt_on_call:
            raise KeyboardInterrupt
        self.seeds.append(settings.seed)
        outputs = []
        for request in prompts:
            text = request.split("Text:\n", 1)[1].split("\n\nRewrite the text above.", 1)[0]
            prompt = request.rsplit("Instruction: ", 1)[1]
            if "refuse" in prompt:
                outputs.append("I'm sorry, but I cannot help with that.")
            elif "copy" in prompt:
                outputs.append(f"  {text}\n")  # only whitespace differs: still identical
            else:
                outputs.append(f"Sure, here is the rewritten text:\n{prompt.upper()} {text}")
        return outputs


@pytest.fixture()
def sources(tmp_path) -> tuple[Path, Path]:
    texts = tmp_path / "texts.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(texts, index=False)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS), encoding="utf-8")
    return texts, prompts


def _expected(n: int, seed: int = 0) -> tuple[list[tuple[str, str]], int, int, int]:
    """Replay the pair stream against the fake rewriter's rules: kept pairs and attempt/drop counts."""
    texts, prompts = list(dict.fromkeys(t.strip() for t in TEXTS if t.strip())), PROMPTS
    kept, attempts, empty, identical = [], 0, 0, 0
    for t, p in pair_stream(len(texts), len(prompts), seed):
        if len(kept) == n:
            break
        attempts += 1
        if "refuse" in prompts[p]:
            empty += 1
        elif "copy" in prompts[p]:
            identical += 1
        else:
            kept.append((texts[t], prompts[p]))
    return kept, attempts, empty, identical


def test_cut_at_sentence_boundary():
    text = "One two. Three four five! Six seven eight nine? Ten."
    assert cut_at_sentence(text, 100, len) == text
    assert cut_at_sentence(text, 30, len) == "One two. Three four five!"
    assert cut_at_sentence(text, 10, len) == "One two."
    assert cut_at_sentence("A very long first sentence without end", 12, len) == "A very long"
    assert cut_at_sentence("Paragraph one\n\nParagraph two is here", 20, len) == "Paragraph one"


def test_trim_unfinished_last_sentence():
    assert trim_unfinished("First one. Second one. And then the thi") == "First one. Second one."
    assert trim_unfinished("Complete. Also complete!") == "Complete. Also complete!"
    assert trim_unfinished("Short. A much longer unfinished sentence that goes on and on") == (
        "Short. A much longer unfinished sentence that goes on and on"  # would lose more than half
    )
    assert trim_unfinished("no sentence end at all") == "no sentence end at all"


def test_pair_stream_samples_without_replacement_and_is_seeded():
    pairs = list(pair_stream(4, 3, seed=5))
    assert len(pairs) == 12 and len(set(pairs)) == 12
    assert {t for t, _ in pairs} == set(range(4)) and {p for _, p in pairs} == set(range(3))
    assert pairs == list(pair_stream(4, 3, seed=5))
    assert pairs != list(pair_stream(4, 3, seed=6))


def test_load_sources_dedupes_and_reads_folders(tmp_path, sources):
    assert load_sources(sources[0], "text") == ["The shop opens at nine.", "Rain is expected tomorrow.", "Cats sleep a lot."]
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "b.txt").write_text("Second text.\n", encoding="utf-8")
    (folder / "a.txt").write_text("First text.\nStill first.", encoding="utf-8")
    assert load_sources(folder, "text") == ["First text.\nStill first.", "Second text."]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: folder has no .txt files"):
        load_sources(tmp_path / "empty", "text")
    with pytest.raises(DataError, match="absent.csv: no such file or folder"):
        load_sources(tmp_path / "absent.csv", "text")


def test_generate_cleans_drops_and_counts(tmp_path, sources):
    out = tmp_path / "triples.csv"
    config = GenerateConfig(n=6, batch=1, seed=0)
    summary = generate_triples(*sources, out, config, generator=FakeRewriter())
    kept, attempts, empty, identical = _expected(6)
    assert (summary.kept, summary.attempted, summary.empty, summary.identical) == (6, attempts, empty, identical)
    assert (summary.texts, summary.prompts) == (3, 5)
    frame = read_table(out, TRIPLE_COLUMNS)
    assert list(frame.columns) == ["id", "original_text", "rewrite_prompt", "rewritten_text", "rewriter", "generation"]
    assert list(zip(frame.original_text, frame.rewrite_prompt)) == kept
    assert list(frame.rewritten_text) == [f"{p.upper()} {t}" for t, p in kept]  # chatter cleaned off
    assert set(frame.rewriter) == {"fake"}
    assert json.loads(frame.generation[0]) == {
        "max_input_tokens": 256, "max_new_tokens": 192, "temperature": 0.7, "top_p": 0.9, "seed": 0,
        "template": "chat", "backend": "auto",
    }
    assert frame.id.is_unique and not (tmp_path / "triples.csv.partial").exists()
    assert f"dropped empty or refused: {empty}" in "\n".join(summary.lines())


def test_rows_that_hit_the_token_limit_are_counted(tmp_path, sources):
    summary = generate_triples(*sources, tmp_path / "o.csv", GenerateConfig(n=2, max_new_tokens=5), generator=FakeRewriter())
    assert summary.kept == 2 and summary.cut_off == 2  # ~4 characters a token: every fake rewrite hits 5 tokens
    assert "kept rows that hit --max-new-tokens: 2" in "\n".join(summary.lines())


def test_generate_stops_when_pairs_run_out(tmp_path, sources):
    summary = generate_triples(*sources, tmp_path / "all.jsonl", GenerateConfig(n=100), generator=FakeRewriter())
    assert summary.exhausted and summary.attempted == 15 and summary.kept == 9
    assert len(read_table(tmp_path / "all.jsonl", TRIPLE_COLUMNS)) == 9


def test_interrupted_run_resumes_to_the_same_output(tmp_path, sources):
    reference = tmp_path / "reference.csv"
    generate_triples(*sources, reference, GenerateConfig(n=7, batch=2), generator=FakeRewriter())
    out = tmp_path / "out.csv"
    with pytest.raises(KeyboardInterrupt):
        generate_triples(*sources, out, GenerateConfig(n=7, batch=2), generator=FakeRewriter(interrupt_on_call=3))
    journal = tmp_path / "out.csv.partial" / "journal.jsonl"
    assert len(journal.read_text(encoding="utf-8").splitlines()) == 4 and not out.exists()
    lines = journal.read_bytes().split(b"\n")
    with open(journal, "ab") as handle:  # a kill in the middle of a write leaves a torn line
        handle.write(lines[3].replace(b'"attempt": 3', b'"attempt": 4'))  # whole JSON, newline missing
    with pytest.raises(DataError, match=r"out.csv.partial: an unfinished run with other arguments \(seed: 0, now 1\)"):
        generate_triples(*sources, out, GenerateConfig(n=7, batch=2, seed=1), generator=FakeRewriter())
    resumed = FakeRewriter()
    summary = generate_triples(*sources, out, GenerateConfig(n=7, batch=2), generator=resumed)
    assert summary.resumed == 4
    assert resumed.seeds[0] == 4  # per-row seeds continue the stream: first attempt of this run is #4
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(reference))


class NulRewriter(FakeRewriter):
    """Tiny random models emit byte tokens such as NUL; a CSV holding one cannot be read back."""

    def generate(self, prompts, settings: GenerationSettings) -> list[str]:
        return [text.replace(" ", "\x00 \x07", 1) for text in super().generate(prompts, settings)]


def test_control_characters_from_the_rewriter_never_reach_the_output(tmp_path, sources):
    out = tmp_path / "o.csv"
    summary = generate_triples(*sources, out, GenerateConfig(n=3), generator=NulRewriter())
    kept, attempts, _, identical = _expected(3)
    assert (summary.kept, summary.attempted, summary.identical) == (3, attempts, identical)
    assert list(read_table(out, TRIPLE_COLUMNS).rewritten_text) == [f"{p.upper()} {t}" for t, p in kept]


def test_bad_n_is_one_line(tmp_path, sources):
    with pytest.raises(DataError, match="--n must be at least 1"):
        generate_triples(*sources, tmp_path / "o.csv", GenerateConfig(n=0), generator=FakeRewriter())


def test_a_rewriter_that_does_not_load_leaves_no_journal(tmp_path, sources):
    out = tmp_path / "o.csv"
    with pytest.raises(DataError, match="no such GGUF file"):
        generate_triples(*sources, out, GenerateConfig(n=2, rewriter=str(tmp_path / "absent.gguf")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.json", "texts.csv"]  # no o.csv.partial


# --- the real thing: a CLI run stopped by Ctrl-C, then by kill -9, then finished ---------------------

N_ROWS = 40


def _journal_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _start(command: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # Ctrl-C works even from a background job
    )


def _wait_for_lines(journal: Path, at_least: int, process: subprocess.Popen, timeout: float = 150) -> None:
    deadline = time.monotonic() + timeout
    while _journal_lines(journal) < at_least:
        assert process.poll() is None, f"generation ended early: {process.communicate()}"
        assert time.monotonic() < deadline, "generation made no progress"
        time.sleep(0.02)


@pytest.mark.slow
def test_cli_run_survives_ctrl_c_and_kill_9(tmp_path, tiny_llama_dir):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"Text number {i} says the meeting moved. It is on day {i}." for i in range(12)), encoding="utf-8")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"Rewrite it in style {i}." for i in range(8)), encoding="utf-8")
    out = tmp_path / "triples.csv"
    journal = tmp_path / "triples.csv.partial" / "journal.jsonl"
    command = [
        sys.executable, "-m", "promptrec", "generate", "--texts", str(texts), "--prompts", str(prompts), "-o", str(out),
        "--rewriter", str(tiny_llama_dir), "--backend", "hf", "--n", str(N_ROWS), "--batch", "1",
        "--max-new-tokens", "6", "--max-input-tokens", "32",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PROMPTREC_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    first = _start(command, env)
    _wait_for_lines(journal, 3, first)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 130 and "interrupted" in stderr and "re-run the same command" in stderr
    stopped_at = _journal_lines(journal)
    assert 3 <= stopped_at < N_ROWS and not out.exists()

    second = _start(command, env)
    _wait_for_lines(journal, stopped_at + 3, second)
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=60)
    assert second.returncode == -signal.SIGKILL and not out.exists()

    third = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert f"wrote {N_ROWS} triples" in third.stdout
    frame = read_table(out, TRIPLE_COLUMNS)
    assert len(frame) == N_ROWS and frame.id.is_unique
    assert not (tmp_path / "triples.csv.partial").exists()
    # every row is the pair its attempt number names in the seeded stream: nothing lost, nothing repeated
    text_list, prompt_list = load_sources(texts, "text"), load_sources(prompts, "rewrite_prompt")
    stream = list(pair_stream(len(text_list), len(prompt_list), 0))
    attempts = [int(i.rsplit("-", 1)[1]) for i in frame.id]
    assert attempts == sorted(set(attempts))
    for attempt, original, prompt in zip(attempts, frame.original_text, frame.rewrite_prompt):
        t, p = stream[attempt]
        assert prompt == prompt_list[p] and text_list[t].startswith(original)
