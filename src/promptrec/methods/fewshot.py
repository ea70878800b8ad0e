"""Method `fewshot`: an instruct LLM shown k worked examples (fixed or retrieved per row) names the prompt."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from promptrec.clean import parse_generation
from promptrec.data import ID, ORIGINAL, PROMPT, REWRITTEN, DataError, atomic_write, read_table, write_table
from promptrec.methods.base import FALLBACK_PROMPT, config_from_dict, never_blank, read_config, safe_child, save_config

# Presets by name: model and backend of the original solution (hub access and a GPU needed).
PRESETS = {"original": ("mistralai/Mistral-7B-Instruct-v0.2", "hf")}

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
ELLIPSIS = " [...] "


@dataclass
class FewShotConfig:
    """Options of the few-shot method."""

    model: str = "smollm2"  # short offline name (smollm2, gemma3-270m), GGUF path, hub id, or preset "original"
    backend: str = ""  # llamacpp, hf or vllm; "" = implied by the model (GGUF -> llamacpp)
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
    fallback_prompt: str = FALLBACK_PROMPT  # used when the answer is empty or unusable
    select_fallback: bool = True  # fit replaces fallback_prompt by the training set's best constant prompt
    embedder: str = "proxy"  # embedder of the retrieval index: proxy, official or a folder
    embed_words: int = 96  # texts are cut to this many words (head and tail) before embedding: a cheap index
    threads: int = 0  # llama.cpp threads (0: the backend's default, PROMPTREC_THREADS or 1)
    prefix_cache: bool = True  # llama.cpp: evaluate a prompt prefix shared with the previous row once


# ---- texts and prompts --------------------------------------------------------------------------------------

Encode = Callable[[str], list]
Decode = Callable[[list], str]


def flatten(text: str) -> str:
    """Collapse all whitespace (newlines included) to single spaces, so a pair keeps its two-line layout."""
    return " ".join(str(text).split())


def truncate(text: str, budget: int, encode: Encode = str.split, decode: Decode = " ".join) -> str:
    """`text` cut to `budget` tokens, keeping the head and the tail (the tail often shows the requested form)."""
    tokens = encode(text)
    if budget <= 0 or len(tokens) <= budget:
        return text
    head = (budget + 1) // 2
    return decode(tokens[:head]).rstrip() + ELLIPSIS + decode(tokens[len(tokens) - (budget - head) :]).lstrip()


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


def _unit(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def pair_embeddings(encode: Callable[[list[str]], np.ndarray], originals: Sequence[str],
                    rewrittens: Sequence[str], words: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rewritten, difference) unit embeddings of pairs, each (n, d); difference = emb(rewritten) - emb(original).

    `words` > 0 cuts each text to that many words (head and tail) first.
    """
    emb = encode([truncate(flatten(t), words) for t in list(rewrittens) + list(originals)])  # (2n, d)
    rewritten_emb, original_emb = emb[: len(rewrittens)], emb[len(rewrittens) :]
    return _unit(rewritten_emb).astype(np.float32), _unit(rewritten_emb - original_emb).astype(np.float32)


class ExampleIndex:
    """Training triples with their pair embeddings; finds the k most similar examples to a query pair."""

    def __init__(self, examples: pd.DataFrame, rewritten_emb: np.ndarray, diff_emb: np.ndarray):
        if not len(examples) == len(rewritten_emb) == len(diff_emb):
            raise DataError(f"example index: {len(examples)} rows but {len(rewritten_emb)}/{len(diff_emb)} embeddings")
        self.examples = examples.reset_index(drop=True)
        self.rewritten_emb = rewritten_emb  # (n, d) unit rows
        self.diff_emb = diff_emb  # (n, d) unit rows

    @classmethod
    def build(cls, triples: pd.DataFrame, encode: Callable[[list[str]], np.ndarray], words: int = 0) -> "ExampleIndex":
        """Embed every training pair once (texts cut to `words` words when > 0)."""
        examples = triples[[ID, ORIGINAL, REWRITTEN, PROMPT]].astype(str).reset_index(drop=True)
        return cls(examples, *pair_embeddings(encode, examples[ORIGINAL].tolist(), examples[REWRITTEN].tolist(), words))

    def neighbours(self, rewritten_emb: np.ndarray, diff_emb: np.ndarray, k: int, diff_weight: float) -> np.ndarray:
        """(m, k) example rows, most similar first, for m query pairs given as unit embeddings."""
        sim = (1 - diff_weight) * rewritten_emb @ self.rewritten_emb.T + diff_weight * diff_emb @ self.diff_emb.T  # (m, n)
        k = min(k, sim.shape[1])
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # (m, k) unordered
        order = np.argsort(-np.take_along_axis(sim, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1)

    def example(self, row: int) -> Example:
        """Row `row` as an Example (texts unflattened, untruncated)."""
        r = self.examples.iloc[int(row)]
        return Example(r[ORIGINAL], r[REWRITTEN], r[PROMPT])

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


def typical_rows(prompts: Sequence[str], encode: Callable[[list[str]], np.ndarray], k: int) -> list[int]:
    """Rows of the k distinct prompts with the highest mean cos**3 against all prompts (fixed examples)."""
    emb = encode(list(prompts))  # (n, d) unit rows
    mean_scs = ((emb @ emb.T) ** 3).mean(axis=1)  # (n,)
    chosen, seen = [], set()
    for row in np.argsort(-mean_scs, kind="stable"):
        if prompts[row].strip().lower() not in seen:
            chosen.append(int(row))
            seen.add(prompts[row].strip().lower())
        if len(chosen) == k:
            break
    return chosen


# ---- the method ---------------------------------------------------------------------------------------------


def has_chat_template(generator) -> bool:
    """True when the model renders chat messages with a template of its own (instruct models)."""
    flag = getattr(generator, "has_chat_template", None)  # the packaged backends say so directly
    if flag is not None:
        return bool(flag)
    try:
        return bool(generator.render_chat([{"role": "user", "content": "x"}]).strip())
    except Exception:  # backends signal a missing template with their own error types
        return False


class FewShotMethod:
    """Prompts an instruct LLM with k worked examples and parses the instruction it answers."""

    name = "fewshot"
    Config = FewShotConfig

    def __init__(self, config: FewShotConfig | None = None):
        self.config = config or FewShotConfig()
        if self.config.selection not in ("retrieved", "fixed"):
            raise DataError(f"fewshot: selection must be 'retrieved' or 'fixed', not '{self.config.selection}'")
        if self.config.template not in ("auto", "chat", "completion"):
            raise DataError(f"fewshot: template must be auto, chat or completion, not '{self.config.template}'")
        if self.config.example_tokens is None:
            self.config.example_tokens = 128 if self.config.selection == "fixed" else 64
        self.index: ExampleIndex | None = None
        self.generator = None  # loaded on first predict, or set by the caller
        self.embedder = None  # retrieval embedder (anything with .encode), loaded on first use or set by the caller
        self.fallbacks = 0  # rows of the last predict that got the fallback prompt

    # -- pieces loaded lazily --
    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, d) unit embeddings from the retrieval embedder, loaded once."""
        if self.embedder is None:
            from promptrec.metric import load_embedder

            self.embedder = load_embedder(self.config.embedder)
        return self.embedder.encode(texts)

    def load_generator(self):
        """The LLM (preset, short name, path or hub id), loaded once."""
        if self.generator is None:
            from promptrec.llm.base import load_generator

            model, backend = PRESETS.get(self.config.model, (self.config.model, ""))
            backend = self.config.backend or backend
            options = {}
            if (backend or "llamacpp") == "llamacpp" and (model.endswith(".gguf") or model in ("smollm2", "gemma3-270m")):
                options = {"prefix_cache": self.config.prefix_cache, "n_threads": self.config.threads or None}
            self.generator = load_generator(model, backend or None, **options)
        return self.generator

    def uses_chat(self) -> bool:
        """Whether prompts go through the model's chat template."""
        if self.config.template == "auto":
            return has_chat_template(self.load_generator())
        return self.config.template == "chat"

    # -- fit / predict --
    def fit(self, triples: pd.DataFrame) -> None:
        """Build the example index (pair embeddings) and pick fixed examples and the fallback prompt."""
        encode = self.encode
        self.index = ExampleIndex.build(triples, encode, self.config.embed_words)
        prompts = self.index.examples[PROMPT].tolist()
        if self.config.selection == "fixed" and not self.config.fixed_ids:
            self.config.fixed_ids = [self.index.examples[ID][r] for r in typical_rows(prompts, encode, self.config.k)]
        if self.config.select_fallback:
            from promptrec.methods.constant import best_constant

            self.config.fallback_prompt = best_constant(prompts, encode)

    def shots(self, pairs: pd.DataFrame) -> list[list[Example]]:
        """The examples shown for each row, least similar first (the closest sits next to the query)."""
        index = self._require_index()
        if self.config.selection == "fixed":
            rows = {i: r for r, i in enumerate(index.examples[ID])}
            missing = [i for i in self.config.fixed_ids if i not in rows]
            if missing:
                raise DataError(f"fewshot: fixed example id '{missing[0]}' is not in the training set")
            fixed = [index.example(rows[i]) for i in self.config.fixed_ids]
            return [fixed] * len(pairs)
        rewritten_emb, diff_emb = pair_embeddings(
            self.encode, pairs[ORIGINAL].tolist(), pairs[REWRITTEN].tolist(), self.config.embed_words)
        nearest = index.neighbours(rewritten_emb, diff_emb, self.config.k, self.config.diff_weight)  # (m, k)
        return [[index.example(r) for r in row[::-1]] for row in nearest]

    def codec(self) -> tuple[Encode, Decode]:
        """Token encode/decode for truncation: the model's own tokenizer where the backend holds one, else words."""
        llm = getattr(self.generator, "llm", None)  # llama.cpp backend
        if llm is not None and hasattr(llm, "detokenize"):
            return (lambda text: llm.tokenize(text.encode("utf-8"), add_bos=False, special=False),
                    lambda ids: llm.detokenize(ids).decode("utf-8", errors="ignore"))
        tokenizer = getattr(self.generator, "tokenizer", None)  # transformers / vLLM backends
        if tokenizer is not None and hasattr(tokenizer, "decode"):
            return (lambda text: tokenizer.encode(text, add_special_tokens=False),
                    lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        return str.split, " ".join

    def render(self, examples: Sequence[Example], original: str, rewritten: str, chat: bool) -> str:
        """The full model input for one row: texts flattened and truncated, then the chat or completion template."""
        encode, decode = self.codec()

        def cut(text: str, budget: int) -> str:
            return truncate(flatten(text), budget, encode, decode)

        shown = [Example(cut(e.original, self.config.example_tokens), cut(e.rewritten, self.config.example_tokens),
                         flatten(e.prompt)) for e in examples]
        original, rewritten = cut(original, self.config.query_tokens), cut(rewritten, self.config.query_tokens)
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
        return [self.render(s, o, r, chat) for s, o, r in zip(self.shots(pairs), pairs[ORIGINAL], pairs[REWRITTEN])]

    def predict(self, pairs: pd.DataFrame) -> list[str]:
        """One parsed instruction per row; unusable answers get the fallback prompt."""
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
        predictions = never_blank(answers, self.config.fallback_prompt)
        return predictions

    def _require_index(self) -> ExampleIndex:
        if self.index is None:
            raise DataError("fewshot: no examples; fit it first (promptrec recover TEST --method fewshot --examples DATA)")
        return self.index

    # -- persistence --
    def save(self, folder: Path) -> None:
        """Write method.json, examples.csv and index.safetensors."""
        folder = Path(folder)
        self._require_index().save(folder)
        save_config(folder, self.name, self.config)

    @classmethod
    def load(cls, folder: Path) -> "FewShotMethod":
        """Read method.json and the example index."""
        folder = Path(folder)
        method = cls(config_from_dict(FewShotConfig, read_config(folder)[1], str(folder)))
        method.index = ExampleIndex.load(folder)
        return method
