"""vLLM for GPU throughput: imported only when chosen (`--backend vllm`), never a hard dependency.

Install on a CUDA machine with `pip install vllm` (it pins its own torch; use a separate environment
if that clashes with this project's torch==2.13.0). Options are passed to `vllm.LLM`, e.g.
`gpu_memory_utilization=0.8`, `max_model_len=2048`, `dtype="bfloat16"`.
"""

from __future__ import annotations

import time
from typing import Sequence

from promptrec.data import DataError
from promptrec.llm.base import GenerationSettings
from promptrec.models import require, resolve_model

INSTALL = "pip install vllm  (needs a CUDA GPU)"


class VLLMGenerator:
    """A vLLM engine; all prompts of one call are scheduled together with continuous batching."""

    def __init__(self, model: str, trust_remote_code: bool = False, **engine_options) -> None:
        """Start a vLLM engine for `model` (hub id or local folder); `engine_options` go to `vllm.LLM`."""
        require("vllm", INSTALL)
        import vllm

        self.name = model
        self.llm = vllm.LLM(model=resolve_model(model), trust_remote_code=trust_remote_code, **engine_options)
        self.tokenizer = self.llm.get_tokenizer()
        self.last_stats: dict[str, float] = {}

    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer carries a chat template."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The tokenizer's chat template applied to `messages`, with the assistant turn opened."""
        if not self.has_chat_template:
            raise DataError(f"{self.name}: the tokenizer has no chat template (a base model); use a completion template")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def detokenize(self, ids: list[int]) -> str:
        """The text of `ids`, special tokens skipped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        """One completion per prompt, in order; prompt i samples with seed `settings.seed + i`."""
        import vllm

        start = time.perf_counter()
        params = [
            vllm.SamplingParams(
                temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_new_tokens,
                stop=list(settings.stop) or None, seed=settings.seed + i,
            )
            for i in range(len(prompts))
        ]
        results = self.llm.generate(list(prompts), params, use_tqdm=False)
        self.last_stats = {
            "total_ms": (time.perf_counter() - start) * 1000,
            "prompt_tokens": sum(len(r.prompt_token_ids) for r in results),
            "gen_tokens": sum(len(r.outputs[0].token_ids) for r in results),
        }
        return [r.outputs[0].text for r in results]
