"""Build training triples: pair source texts with rewrite prompts and let a rewriter LLM apply them.

Every attempted pair is appended to a journal (JSON lines, fsynced per batch) in `OUT.partial/`
next to a manifest of the arguments, so a run killed at any point and started again with the
same arguments continues where it stopped: the pair stream is a pure function of the inputs
and the seed, and the journal says how far along it the run got. OUT is written atomically at
the end and the work folder removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from promptrec.checkpoint import open_run
from promptrec.clean import clean_text
from promptrec.data import (
    ID, ORIGINAL, PROMPT, REWRITTEN, DataError, ensure_writable, read_texts, write_table,
)
from promptrec.metric import text_digest
from promptrec.llm.base import GenerationSettings, Generator, default_backend, load_generator
from promptrec.llm.templates import FEWSHOT_STOP, chat_messages, fewshot_prompt

REWRITER, GENERATION = "rewriter", "generation"  # provenance columns


@dataclass
class GenerateConfig:
    """What to generate and how; everything but `n` must match when a run is resumed."""

    rewriter: str = "smollm2"  # short offline name (models.OFFLINE_LLMS), GGUF path, hub id or folder
    backend: str | None = None  # llamacpp / hf / vllm; None: implied by the rewriter
    n: int = 100  # triples to keep (dropped rows are replaced by further pairs)
    seed: int = 0  # pair sampling and per-row sampling seeds
    max_input_tokens: int = 256  # texts are cut at a sentence boundary to fit this many tokens
    max_new_tokens: int = 192  # longest rewrite
    temperature: float = 0.7  # sampling; greedy small models mostly copy the text back
    top_p: float = 0.9
    batch: int = 32  # prompts per LLM call and per journal flush (at most this much work is redone after a kill)
    parallel: int = 8  # sequences decoded together (llama.cpp) or the batch size (transformers)
    text_column: str = "text"  # column of TEXTS when it is a table
    prompt_column: str = "rewrite_prompt"  # column of PROMPTS when it is a table
    backend_options: dict = field(default_factory=dict)  # extra options for the backend (n_threads, device...)


@dataclass
class GenerateSummary:
    """Counts of a generation run."""

    out: str
    kept: int = 0
    attempted: int = 0
    empty: int = 0  # rewrite empty after cleaning (refusals included)
    identical: int = 0  # rewrite equal to the original text
    cut_off: int = 0  # kept rewrites that hit max_new_tokens (an unfinished last sentence is trimmed)
    resumed: int = 0  # attempts found in the journal at start
    exhausted: bool = False  # every (text, prompt) pair was tried before reaching n
    seconds: float = 0.0
    texts: int = 0  # distinct texts
    prompts: int = 0  # distinct prompts

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        rate = (self.attempted - self.resumed) / self.seconds if self.seconds else 0.0
        lines = [
            f"wrote {self.kept} triples -> {self.out}",
            f"  pairs tried: {self.attempted} ({self.resumed} from an earlier run) of {self.texts} texts x {self.prompts} prompts",
            f"  dropped empty or refused: {self.empty}",
            f"  dropped identical to the original: {self.identical}",
            f"  kept rows that hit --max-new-tokens: {self.cut_off} (unfinished last sentence trimmed)",
            f"  time: {self.seconds:.1f} s ({rate:.2f} rewrites/s this run)",
        ]
        if self.exhausted:
            lines.append("  every pair was tried: fewer triples than asked for")
        return lines


def load_sources(path: str | Path, column: str) -> list[str]:
    """Distinct non-empty texts (stripped, first occurrence kept) from a table column, JSON list, .txt lines
    or a folder of .txt files (one text per file)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise DataError(f"{path}: folder has no .txt files")
        items = [f.read_text(encoding="utf-8") for f in files]
    elif not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    else:
        items = read_texts(path, column)
    unique = list(dict.fromkeys(t.strip() for t in items if t and t.strip()))
    if not unique:
        raise DataError(f"{path}: no non-empty texts")
    return unique


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")


def cut_at_sentence(text: str, max_tokens: int, count: Callable[[str], int]) -> str:
    """The longest head of `text` that ends at a sentence boundary and fits `max_tokens` (`count` measures):
    the rewriter's input stays whole sentences (unlike `templates.head_tail`, which keeps head and tail);
    a first sentence that is already too long is cut at a word boundary."""
    if count(text) <= max_tokens:
        return text
    ends = [m.start() for m in _SENTENCE_END.finditer(text)]
    best = ""
    for end in ends:
        if count(text[:end]) > max_tokens:
            break
        best = text[:end]
    if best.strip():
        return best.strip()
    words = text.split()
    low, high = 1, len(words)
    while low < high:  # longest word prefix that fits
        mid = (low + high + 1) // 2
        low, high = (mid, high) if count(" ".join(words[:mid])) <= max_tokens else (low, mid - 1)
    return " ".join(words[:low])


def pair_stream(n_texts: int, n_prompts: int, seed: int) -> Iterator[tuple[int, int]]:
    """(text, prompt) index pairs drawn uniformly without replacement, a pure function of the arguments."""
    rng = np.random.default_rng(seed)
    total, seen = n_texts * n_prompts, set()
    while len(seen) < total:
        flat = int(rng.integers(total))
        if flat not in seen:
            seen.add(flat)
            yield divmod(flat, n_prompts)


def trim_unfinished(text: str) -> str:
    """Drop a last sentence that the token limit cut off, when complete sentences make up at least half."""
    ends = [m.start() for m in _SENTENCE_END.finditer(text + " ")]
    if not ends or ends[-1] >= len(text.rstrip()) or ends[-1] < len(text) / 2:
        return text
    return text[: ends[-1]].rstrip()


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def _token_counter(generator: Generator) -> Callable[[str], int]:
    """The rewriter's own token count (`Generator.tokenize`); about 4 characters per token for a stand-in with only
    some of a Generator's calls (test doubles)."""
    if isinstance(generator, Generator):
        return lambda text: len(generator.tokenize(text))
    return lambda text: (len(text) + 3) // 4


class _Journal:
    """Attempts of one run, appended as JSON lines and fsynced per batch."""

    def __init__(self, folder: Path, manifest: dict) -> None:
        """Open the journal in `folder`, created with `manifest` or checked against the unfinished run's."""
        self.folder, self.path = folder, folder / "journal.jsonl"
        open_run(folder, manifest, kind="run")
        self.records = self._read()
        self.handle = open(self.path, "a", encoding="utf-8")

    def _read(self) -> list[dict]:
        """Complete records in order; a torn last line (a kill mid-write) is cut off the file."""
        if not self.path.is_file():
            return []
        raw = self.path.read_bytes()
        records, good = [], 0
        for line in raw.split(b"\n")[:-1]:  # only newline-terminated lines were written whole
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            if record.get("attempt") != len(records):
                break
            records.append(record)
            good += len(line) + 1
        if good < len(raw):
            with open(self.path, "r+b") as handle:
                handle.truncate(good)
        return records

    def append(self, records: list[dict]) -> None:
        """Add records and make them durable before returning."""
        self.handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.records += records

    def close(self) -> None:
        """Close the journal file."""
        self.handle.close()


def _requests(generator: Generator, pairs: list[tuple[str, str]]) -> tuple[list[str], tuple[str, ...], str]:
    """Rendered requests, stop strings and template name: the model's chat template, else few-shot."""
    try:
        return [generator.render_chat(chat_messages(t, p)) for t, p in pairs], (), "chat"
    except DataError:
        return [fewshot_prompt(t, p) for t, p in pairs], FEWSHOT_STOP, "fewshot"


def generate_triples(
    texts_path: str | Path,
    prompts_path: str | Path,
    out: str | Path,
    config: GenerateConfig,
    on_progress: Callable[[int, int], None] | None = None,
    generator: Generator | None = None,
) -> GenerateSummary:
    """Generate `config.n` triples into `out` (CSV/Parquet/JSONL), resuming an interrupted run with the
    same arguments. `on_progress(kept, n)` is called after every batch; `generator` overrides loading."""
    start = time.perf_counter()
    out = ensure_writable(out)
    if config.n < 1:
        raise DataError(f"--n must be at least 1 (got {config.n})")
    texts = load_sources(texts_path, config.text_column)
    prompts = load_sources(prompts_path, config.prompt_column)
    identity = {k: v for k, v in asdict(config).items() if k != "n"}
    manifest = {"texts": text_digest(texts)[:16], "prompts": text_digest(prompts)[:16], **identity}
    journal = _Journal(out.parent / f"{out.name}.partial", manifest)
    summary = GenerateSummary(out=str(out), texts=len(texts), prompts=len(prompts), resumed=len(journal.records))
    try:
        kept = sum(r["status"] == "kept" for r in journal.records)
        stream = pair_stream(len(texts), len(prompts), config.seed)
        for _ in range(len(journal.records)):
            next(stream)
        if on_progress:
            on_progress(kept, config.n)
        if kept < config.n:
            generator = generator or _load(config)
            count = _token_counter(generator)
            while kept < config.n:
                size = min(config.batch, config.n - kept)  # no rewrites beyond what is still missing
                chosen = [pair for _, pair in zip(range(size), stream)]
                if not chosen:
                    summary.exhausted = True
                    break
                records = _rewrite(generator, chosen, texts, prompts, config, count, len(journal.records))
                journal.append(records)
                kept += sum(r["status"] == "kept" for r in records)
                if on_progress:
                    on_progress(min(kept, config.n), config.n)
        _finish(journal, out, config, generator, summary)
    except BaseException:
        journal.close()
        if not journal.records:  # failed before any attempt (e.g. the rewriter did not load): nothing to resume
            shutil.rmtree(journal.folder, ignore_errors=True)
        raise
    journal.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _load(config: GenerateConfig) -> Generator:
    """The rewriter with `config.parallel` sequences at a time, in its backend's terms."""
    options = dict(config.backend_options)
    backend = config.backend or default_backend(config.rewriter)
    if backend == "llamacpp":
        options.setdefault("parallel", config.parallel)
        options.setdefault("n_ctx", config.max_input_tokens + config.max_new_tokens + 512)  # + template and prompt
    elif backend == "hf":
        options.setdefault("batch_size", config.parallel)
    return load_generator(config.rewriter, backend, **options)


def _rewrite(
    generator: Generator, chosen: list[tuple[int, int]], texts: list[str], prompts: list[str],
    config: GenerateConfig, count: Callable[[str], int], first: int,
) -> list[dict]:
    """Rewrite one batch of (text, prompt) index pairs into journal records numbered from `first`."""
    pairs = [(cut_at_sentence(texts[t], config.max_input_tokens, count), prompts[p]) for t, p in chosen]
    requests, stop, template = _requests(generator, pairs)
    settings = GenerationSettings(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
        seed=config.seed * 1_000_003 + first, stop=stop,
    )
    outputs = generator.generate(requests, settings)
    records = []
    for offset, ((t, p), (text, prompt), raw) in enumerate(zip(chosen, pairs, outputs)):
        # A small rewriter's chatter and refusals are its own, not the instruction: drop them (full clean).
        cleaned, _ = clean_text(raw, keep_evidence=False)
        cut_off = count(raw) >= config.max_new_tokens - 1  # the limit, not the model, ended it
        if cut_off:
            cleaned = trim_unfinished(cleaned)
        status = "empty" if not cleaned else "identical" if _same_text(cleaned, text) else "kept"
        records.append({
            "attempt": first + offset, "text": t, "prompt": p, "original": text, "rewrite_prompt": prompt,
            "rewritten": cleaned, "raw": raw, "status": status, "template": template, "cut_off": cut_off,
        })
    return records


def _finish(
    journal: _Journal, out: Path, config: GenerateConfig, generator: Generator | None, summary: GenerateSummary
) -> None:
    """Write the first `n` kept rows to `out` atomically, fill the counts, remove the work folder."""
    records = journal.records
    summary.attempted = len(records)
    summary.empty = sum(r["status"] == "empty" for r in records)
    summary.identical = sum(r["status"] == "identical" for r in records)
    kept = [r for r in records if r["status"] == "kept"][: config.n]
    summary.kept = len(kept)
    summary.cut_off = sum(r["cut_off"] for r in kept)
    name = (generator.name if generator is not None else "") or config.rewriter
    settings = {k: getattr(config, k) for k in ("max_input_tokens", "max_new_tokens", "temperature", "top_p", "seed")}
    frame = pd.DataFrame({
        ID: [f"gen-{config.seed}-{r['attempt']:06d}" for r in kept],
        ORIGINAL: [r["original"] for r in kept],
        PROMPT: [r["rewrite_prompt"] for r in kept],
        REWRITTEN: [r["rewritten"] for r in kept],
        REWRITER: name,
        GENERATION: [json.dumps({**settings, "template": r["template"], "backend": config.backend or "auto"}) for r in kept],
    }, columns=[ID, ORIGINAL, PROMPT, REWRITTEN, REWRITER, GENERATION])
    write_table(out, frame)
    journal.close()
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(journal.folder)
