"""Method `fewshot`: an instruct LLM shown k worked examples (fixed or retrieved per row) names the prompt."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from promptrec.clean import parse_generation
from promptrec.data import ID, ORIGINAL, PROMPT, REWRITTEN, DataError, atomic_write, read_table, write_table
from promptrec.llm.base import Generator
from promptrec.llm.templates import head_tail
from promptrec.methods.base import (
    FALLBACK_PROMPT, UsesEmbedder, check_view, load_saved, never_blank, safe_child, save_config, text_view,
)
from promptrec.vectors import Encode, direction, most_typical, top_k, unit_rows

log = logging.getLogger(__name__)

EXAMPLES_FILE = "examples.csv"
INDEX_FILE = "index.safetensors"

# ---- templates: every string the model sees, in one place -------------------------------------------------

INSTRUCTION = (
    "Each example shows an original text, the same text after an AI rewrote it, and the instruction "
    "the AI was given. Reply with the instruction for the last example only: one short sentence."
)
# One user turn (chat) or one block (completion) per pair; the texts are flattened onto one line each.
PAIR_TEMPLATE = "Original text: {original}\nRewritten text: {rewritten}"
# Completion (base model) layout: the answer follows this label on the same line, ended by a newline.
ANSWER_LABEL = "Instruction:"
COMPLETION_EXAMPLE = PAIR_TEMPLATE + "\n" + ANSWER_LABEL + " {prompt}\n\n"
COMPLETION_QUERY = PAIR_TEMPLATE + "\n" + ANSWER_LABEL


@dataclass
class FewShotConfig:
    """Options of the few-shot method (what `fit` learns is kept on the method and saved beside them)."""
    model_fields, extra = ("model", "embedder"), "llm"  # NamesModels, NeedsExtra: what bundle carries

    model: str = "smollm2"  # short offline name (models.OFFLINE_LLMS), GGUF path, hub id or local folder
    backend: str = ""  # llamacpp, hf or vllm; "" = implied by the model (GGUF and offline names -> llamacpp)
    template: str = "auto"  # chat (model's chat template), completion (base models), auto = chat if it has one
    selection: str = "retrieved"  # retrieved: the k most similar training rows per query; fixed: the same k rows
    k: int = 4  # worked examples per prompt
    fixed_ids: list[str] = field(default_factory=list)  # ids of the fixed examples; [] = fit picks typical ones
    diff_weight: float = 0.5  # retrieval score = (1-w) cos(rewritten) + w cos(rewritten - original)
    # Token budget of each example text (head and tail kept); None: 64 retrieved (paid on every row), 128 fixed
    # (evaluated once thanks to prefix reuse; 5-fold CV: 0.066 vs 0.062 at 64).
    example_tokens: int | None = None
    query_tokens: int = 128  # token budget of each query text
    max_new_tokens: int = 32  # generated tokens per row
    temperature: float = 0.0  # 0 = greedy
    max_words: int = 40  # longer answers are text copies, not instructions: fall back
    fallback_prompt: str = FALLBACK_PROMPT  # used when the answer is empty or unusable (unless select_fallback)
    select_fallback: bool = True  # fit picks the training set's best constant prompt as the fallback instead
    embedder: str = "proxy"  # embedder of the retrieval index: proxy, official or a folder
    view: str = "raw"  # the rewrite as read in fit and predict: raw, or stripped of lead-ins, titles and refusals
    embed_words: int = 96  # texts are cut to this many words (head and tail) before embedding: a cheap index
    threads: int = 0  # llama.cpp threads (0: models.thread_count, i.e. PROMPTREC_THREADS, else all cores)
    prefix_cache: bool = True  # llama.cpp: evaluate a prompt prefix shared with the previous row once

    def __post_init__(self) -> None:
        """Reject impossible options in one line; fill the example budget implied by `selection`."""
        check_view("fewshot", self.view)
        if self.selection not in ("retrieved", "fixed"):
            raise DataError(f"fewshot: selection must be 'retrieved' or 'fixed', not '{self.selection}'")
        if self.template not in ("auto", "chat", "completion"):
            raise DataError(f"fewshot: template must be auto, chat or completion, not '{self.template}'")
        if self.k < 1:
            raise DataError(f"fewshot: k must be at least 1, not {self.k}")
        if not 0.0 <= self.diff_weight <= 1.0:
            raise DataError(f"fewshot: diff_weight must lie in [0, 1], not {self.diff_weight}")
        if self.example_tokens is None:
            self.example_tokens = 128 if self.selection == "fixed" else 64


# ---- texts and prompts --------------------------------------------------------------------------------------


def flatten(text: str) -> str:
    """Collapse all whitespace (newlines included) to single spaces, so a pair keeps its two-line layout."""
    return " ".join(str(text).split())


@dataclass
class Example:
    """A worked example: a pair and the prompt that produced it."""

    original: str
    rewritten: str
    prompt: str


def chat_messages(examples: Sequence[Example], original: str, rewritten: str) -> list[dict[str, str]]:
    """System instruction, one user/assistant turn per example, then the query as the last user turn."""
    messages = [{"role": "system", "content": INSTRUCTION}]
    for ex in examples:
        messages.append({"role": "user", "content": PAIR_TEMPLATE.format(original=ex.original, rewritten=ex.rewritten)})
        messages.append({"role": "assistant", "content": ex.prompt})
    messages.append({"role": "user", "content": PAIR_TEMPLATE.format(original=original, rewritten=rewritten)})
    return messages


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The system text moved into the first user turn, for templates that reject a system role (Mistral, Gemma)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    rest[0]["content"] = f"{system}\n\n{rest[0]['content']}" if system else rest[0]["content"]
    return rest


def completion_prompt(examples: Sequence[Example], original: str, rewritten: str) -> str:
    """Plain-text few-shot prompt for base models; the answer is the rest of the last line."""
    shots = "".join(COMPLETION_EXAMPLE.format(original=ex.original, rewritten=ex.rewritten, prompt=ex.prompt) for ex in examples)
    return f"{INSTRUCTION}\n\n{shots}{COMPLETION_QUERY.format(original=original, rewritten=rewritten)}"


def capitalize(prompt: str) -> str:
    """Upper-case the first letter, as instructions are written."""
    return prompt[:1].upper() + prompt[1:]


# ---- retrieval index ----------------------------------------------------------------------------------------


def pair_embeddings(encode: Encode, originals: Sequence[str], rewrittens: Sequence[str],
                    words: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rewritten, direction) unit embeddings of pairs, each (n, d); direction = emb(rewritten) - emb(original).

    `words` > 0 cuts each text to that many words (head and tail) first.
    """
    emb = encode([head_tail(flatten(t), words) for t in list(rewrittens) + list(originals)])  # (2n, d)
    rewritten_emb, original_emb = emb[: len(rewrittens)], emb[len(rewrittens) :]
    return unit_rows(rewritten_emb), direction(rewritten_emb, original_emb)


class ExampleIndex:
    """Training triples with their pair embeddings; finds the k most similar examples to a query pair."""

    def __init__(self, examples: pd.DataFrame, rewritten_emb: np.ndarray, diff_emb: np.ndarray):
        if not len(examples) == len(rewritten_emb) == len(diff_emb):
            raise DataError(f"example index: {len(examples)} rows but {len(rewritten_emb)}/{len(diff_emb)} embeddings")
        self.examples = examples.reset_index(drop=True)
        self.rewritten_emb = rewritten_emb  # (n, d) unit rows
        self.diff_emb = diff_emb  # (n, d) unit rows

    @classmethod
    def build(cls, triples: pd.DataFrame, encode: Encode, words: int = 0) -> "ExampleIndex":
        """Embed every training pair once (texts cut to `words` words when > 0)."""
        examples = triples[[ID, ORIGINAL, REWRITTEN, PROMPT]].astype(str).reset_index(drop=True)
        return cls(examples, *pair_embeddings(encode, examples[ORIGINAL].tolist(), examples[REWRITTEN].tolist(), words))

    def neighbours(self, rewritten_emb: np.ndarray, diff_emb: np.ndarray, k: int, diff_weight: float) -> np.ndarray:
        """(m, k) example rows, most similar first, for m query pairs given as unit embeddings."""
        sim = (1 - diff_weight) * rewritten_emb @ self.rewritten_emb.T + diff_weight * diff_emb @ self.diff_emb.T  # (m, n)
        return top_k(sim, k)

    def example(self, row: int) -> Example:
        """Row `row` as an Example (texts unflattened, untruncated)."""
        r = self.examples.iloc[int(row)]
        return Example(r[ORIGINAL], r[REWRITTEN], r[PROMPT])

    def rows_of(self, ids: Sequence[str]) -> list[int]:
        """The rows of example `ids`, in order; one-line error for an id not in the training set."""
        rows = {i: r for r, i in enumerate(self.examples[ID])}
        missing = [i for i in ids if i not in rows]
        if missing:
            raise DataError(f"fewshot: fixed example id '{missing[0]}' is not in the training set")
        return [rows[i] for i in ids]

    def save(self, folder: Path) -> None:
        """Write examples.csv (CSV: JSONL lines break on U+2028 in texts) and index.safetensors."""
        from safetensors.numpy import save

        write_table(folder / EXAMPLES_FILE, self.examples)
        with atomic_write(folder / INDEX_FILE, "wb") as handle:
            handle.write(save({"rewritten": self.rewritten_emb, "diff": self.diff_emb}))

    @classmethod
    def load(cls, folder: Path) -> "ExampleIndex":
        """Read what `save` wrote."""
        examples = read_table(safe_child(folder, EXAMPLES_FILE), (ID, ORIGINAL, REWRITTEN, PROMPT))
        path = safe_child(folder, INDEX_FILE)
        if not path.is_file():
            raise DataError(f"{folder}: no {INDEX_FILE} (the fewshot example index)")
        from safetensors.numpy import load_file

        arrays = load_file(str(path))
        return cls(examples[[ID, ORIGINAL, REWRITTEN, PROMPT]], arrays["rewritten"], arrays["diff"])


# ---- the method ---------------------------------------------------------------------------------------------


def has_chat_template(generator: Generator) -> bool:
    """True when the model renders chat messages with a template of its own (instruct models): a full Generator says
    so; a stand-in with only some of its calls (tests) is asked to render one."""
    if isinstance(generator, Generator):
        return bool(generator.has_chat_template)
    try:
        return bool(generator.render_chat([{"role": "user", "content": "x"}]).strip())
    except Exception:  # backends signal a missing template with their own error types
        return False


class FewShotMethod(UsesEmbedder):
    """Prompts an instruct LLM with k worked examples and parses the instruction it answers."""

    name = "fewshot"
    Config = FewShotConfig

    def __init__(self, config: FewShotConfig | None = None):
        self.config = config or FewShotConfig()
        self.index: ExampleIndex | None = None
        # Learned by `fit` and saved beside the config: the fixed examples' ids and the fallback prompt.
        self.fixed_ids: list[str] = list(self.config.fixed_ids)
        self.fallback_prompt: str = self.config.fallback_prompt
        self.generator = None  # loaded on first use, or set by the caller
        self.fallbacks = 0  # rows of the last predict that got the fallback prompt

    # -- pieces loaded lazily --
    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, d) unit embeddings from the retrieval `embedder` (loaded on first use, or set by the caller)."""
        return self.embedder.encode(texts)

    def load_generator(self):
        """The LLM (offline short name, path or hub id) through its backend, loaded once."""
        if self.generator is None:
            from promptrec.llm.base import default_backend, load_generator

            backend = self.config.backend or default_backend(self.config.model)
            options = {}
            if backend == "llamacpp":
                options = {"prefix_cache": self.config.prefix_cache, "n_threads": self.config.threads or None}
            self.generator = load_generator(self.config.model, backend, **options)
        return self.generator

    def uses_chat(self) -> bool:
        """Whether prompts go through the model's chat template."""
        if self.config.template == "auto":
            return has_chat_template(self.load_generator())
        return self.config.template == "chat"

    # -- fit / predict --
    def fit(self, triples: pd.DataFrame) -> None:
        """Build the example index (pair embeddings); learn the fixed examples and the fallback prompt afresh."""
        self.index = ExampleIndex.build(text_view(triples, self.config.view), self.encode, self.config.embed_words)
        prompts = self.index.examples[PROMPT].tolist()
        self.fixed_ids = []
        if self.config.selection == "fixed":
            chosen = self.config.fixed_ids or [
                self.index.examples[ID][r] for r in most_typical(prompts, self.encode, self.config.k)]
            self.index.rows_of(chosen)  # a configured id missing from the data fails here, not at predict
            self.fixed_ids = list(chosen)
        self.fallback_prompt = self.config.fallback_prompt
        typical = most_typical(prompts, self.encode) if self.config.select_fallback else []
        if typical:  # the training prompt with the best mean score against all of them
            self.fallback_prompt = prompts[typical[0]].strip()
        log.info("fewshot: %d examples indexed; fallback prompt %r", len(prompts), self.fallback_prompt)

    def shots(self, pairs: pd.DataFrame) -> list[list[Example]]:
        """The examples shown for each row, least similar first (the closest sits next to the query)."""
        index = self._require_index()
        if self.config.selection == "fixed":
            return [[index.example(r) for r in index.rows_of(self.fixed_ids)]] * len(pairs)
        rewritten_emb, diff_emb = pair_embeddings(
            self.encode, pairs[ORIGINAL].tolist(), pairs[REWRITTEN].tolist(), self.config.embed_words)
        nearest = index.neighbours(rewritten_emb, diff_emb, self.config.k, self.config.diff_weight)  # (m, k)
        return [[index.example(r) for r in row[::-1]] for row in nearest]

    def cut(self, text: str, budget: int) -> str:
        """`text` flattened and cut to `budget` of the model's own tokens (head and tail kept)."""
        generator = self.load_generator()
        return head_tail(flatten(text), budget, generator.tokenize, generator.detokenize)

    def render(self, examples: Sequence[Example], original: str, rewritten: str, chat: bool) -> str:
        """The full model input for one row: texts flattened and truncated, then the chat or completion template."""
        budget = self.config.example_tokens
        shown = [Example(self.cut(e.original, budget), self.cut(e.rewritten, budget), flatten(e.prompt)) for e in examples]
        original, rewritten = self.cut(original, self.config.query_tokens), self.cut(rewritten, self.config.query_tokens)
        if chat:
            messages = chat_messages(shown, original, rewritten)
            try:
                return self.load_generator().render_chat(messages)
            except Exception:  # jinja templates raise their own errors on a system turn
                return self.load_generator().render_chat(fold_system(messages))
        return completion_prompt(shown, original, rewritten)

    def inputs(self, pairs: pd.DataFrame) -> list[str]:
        """The model input of every row, in order."""
        chat = self.uses_chat()
        pairs = text_view(pairs, self.config.view)
        return [self.render(s, o, r, chat) for s, o, r in zip(self.shots(pairs), pairs[ORIGINAL], pairs[REWRITTEN])]

    def predict(self, pairs: pd.DataFrame) -> list[str | None]:
        """One parsed instruction per row; unusable answers get the learned fallback prompt (never None)."""
        from promptrec.llm.base import GenerationSettings

        generator = self.load_generator()
        prompts = self.inputs(pairs)
        settings = GenerationSettings(
            max_new_tokens=self.config.max_new_tokens, temperature=self.config.temperature,
            # Only the first line is kept: a base model goes on with the next example, an instruct model explains.
            stop=("\n",),
        )
        answers = [capitalize(parse_generation(t, self.config.max_words)) for t in generator.generate(prompts, settings)]
        self.fallbacks = sum(not a.strip() for a in answers)
        log.info("fewshot: %d of %d answers unusable, given the fallback prompt", self.fallbacks, len(answers))
        return never_blank(answers, self.fallback_prompt)

    def _require_index(self) -> ExampleIndex:
        if self.index is None:
            raise DataError("fewshot: no examples; fit it first (promptrec recover TEST --method fewshot --examples DATA)")
        return self.index

    # -- persistence --
    def save(self, folder: Path) -> None:
        """Write method.json (config, and the learned fixed ids and fallback prompt), examples.csv, index.safetensors."""
        folder = Path(folder)
        self._require_index().save(folder)
        save_config(folder, self.name, self.config,
                    state={"fixed_ids": self.fixed_ids, "fallback_prompt": self.fallback_prompt})

    @classmethod
    def load(cls, folder: Path) -> "FewShotMethod":
        """Read method.json and the example index."""
        config, state = load_saved(folder, cls)
        method = cls(config)
        method.fixed_ids = list(state.get("fixed_ids", method.fixed_ids))
        method.fallback_prompt = str(state.get("fallback_prompt", method.fallback_prompt))
        method.index = ExampleIndex.load(Path(folder))
        return method
