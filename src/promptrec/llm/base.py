"""The text-generation interface shared by data generation and the LLM-based methods."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from promptrec.data import DataError


@dataclass
class GenerationSettings:
    """How to sample: the same fields for every backend."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)


@runtime_checkable
class Generator(Protocol):
    """A loaded LLM that completes prompts; `name` is recorded as provenance."""

    name: str

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        """One completion per prompt (the new text only), in order."""

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The model's own chat template applied to `messages`, ready for `generate`."""


# backend name -> "module:Class"; imported only when chosen.
BACKENDS: dict[str, str] = {
    "llamacpp": "promptrec.llm.llamacpp:LlamaCppGenerator",  # GGUF on CPU: the offline default
    "hf": "promptrec.llm.hf:HFGenerator",  # transformers: hub ids, local folders; batched, GPU when present
    "vllm": "promptrec.llm.vllm:VLLMGenerator",  # GPU throughput; optional install
}


def load_generator(model: str, backend: str | None = None, **options) -> Generator:
    """Load `model` (short offline name, hub id or path) with `backend`, or the one its path implies."""
    name = backend or ("llamacpp" if model.endswith(".gguf") or model in ("smollm2", "gemma3-270m") else "hf")
    if name not in BACKENDS:
        raise DataError(f"unknown LLM backend '{name}' (known: {', '.join(sorted(BACKENDS)) or 'none'})")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(model, **options)
