"""The text-generation interface shared by data generation and the LLM-based methods."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from promptrec.data import DataError
from promptrec.models import OFFLINE_LLMS


@dataclass
class GenerationSettings:
    """How to sample: the same fields for every backend."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


@runtime_checkable
class Generator(Protocol):
    """A loaded LLM that completes prompts; `name` is recorded as provenance."""

    name: str
    has_chat_template: bool  # the model carries a chat template (instruct models); base models use a completion one

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        """One completion per prompt (the new text only), in order."""

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The model's own chat template applied to `messages`, ready for `generate`."""

    def tokenize(self, text: str) -> list[int]:
        """The model's token ids of `text`, without special tokens (BOS/EOS), for budgets and truncation."""

    def detokenize(self, ids: list[int]) -> str:
        """The text of token `ids`, special tokens left out; a sequence cut mid-character loses that character."""


# backend name -> "module:Class"; imported only when chosen.
BACKENDS: dict[str, str] = {
    "llamacpp": "promptrec.llm.llamacpp:LlamaCppGenerator",  # GGUF on CPU: the offline default
    "hf": "promptrec.llm.hf:HFGenerator",  # transformers: hub ids, local folders; batched, GPU when present
    "vllm": "promptrec.llm.vllm:VLLMGenerator",  # GPU throughput; optional install
}


def default_backend(model: str) -> str:
    """The backend a model name implies: llama.cpp for GGUF files and the offline short names, else transformers;
    transformers too, after one warning line, where the llama.cpp probe finds the installed build cannot run here."""
    if model.endswith(".gguf") or model in OFFLINE_LLMS:
        from promptrec.llm.probe import llamacpp_or_fallback

        return llamacpp_or_fallback()
    return "hf"


def load_generator(model: str, backend: str | None = None, **options) -> Generator:
    """Load `model` (short offline name, hub id or path) with `backend`, or the one its path implies."""
    name = backend or default_backend(model)
    if name not in BACKENDS:
        raise DataError(f"unknown LLM backend '{name}' (known: {', '.join(sorted(BACKENDS)) or 'none'})")
    module, cls = BACKENDS[name].split(":")
    generator = getattr(importlib.import_module(module), cls)
    try:
        inspect.signature(generator).bind(model, **options)
    except TypeError as error:
        raise DataError(f"backend '{name}': {error} (options: {', '.join(options) or 'none'})") from None
    return generator(model, **options)
