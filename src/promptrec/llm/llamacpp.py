"""GGUF models through llama-cpp-python: the offline default backend (SmolLM2, Gemma 3 270M)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

from promptrec.data import DataError
from promptrec.llm.base import GenerationSettings
from promptrec.models import require, resolve_model

_INSTALL = "pip install llama-cpp-python==0.3.36"


class LlamaCppGenerator:
    """A GGUF model run by llama.cpp on the CPU; one request at a time."""

    def __init__(
        self,
        model: str,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        seed: int = 0,
        prefix_cache: bool = True,
    ) -> None:
        """Load `model` (a .gguf path or short offline name).

        prefix_cache: keep the KV cache of the previous request (and a RAM cache of states) so a shared
        prompt prefix is evaluated once; False evaluates every prompt from scratch.
        """
        require("llama_cpp", _INSTALL)
        import llama_cpp

        path = Path(resolve_model(model))
        if not path.is_file():
            raise DataError(f"{path}: no such GGUF file")
        self.name = model if model in ("smollm2", "gemma3-270m") else path.name
        self.prefix_cache = prefix_cache
        threads = n_threads or int(os.environ.get("PROMPTREC_THREADS", "0")) or 1
        self.llm = llama_cpp.Llama(
            str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
            n_batch=n_batch, seed=seed, verbose=False,
        )
        if prefix_cache:
            self.llm.set_cache(llama_cpp.LlamaRAMCache(capacity_bytes=256 << 20))
        self.n_ctx = n_ctx
        self.last_stats: dict[str, float] = {}
        template = self.llm.metadata.get("tokenizer.chat_template")
        self._chat = None
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            vocab = self.llm._model
            self._chat = Jinja2ChatFormatter(
                template, eos_token=vocab.token_get_text(self.llm.token_eos()),
                bos_token=vocab.token_get_text(self.llm.token_bos()),
            )

    @property
    def has_chat_template(self) -> bool:
        """Whether the GGUF carries a chat template (instruct models do; base models use a completion template)."""
        return self._chat is not None

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The GGUF's own chat template applied to `messages`, with the assistant turn opened."""
        if self._chat is None:
            raise DataError(
                f"{self.name}: no chat template in the GGUF (a base model); "
                "use a completion template such as promptrec.llm.templates.fewshot_prompt"
            )
        return self._chat(messages=messages).prompt

    def _perf(self) -> tuple[float, int, float, int]:
        import llama_cpp

        data = llama_cpp.llama_perf_context(self.llm._ctx.ctx)
        return data.t_p_eval_ms, data.n_p_eval, data.t_eval_ms, data.n_eval

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        """One completion per prompt, in order; prompt i samples with seed `settings.seed + i`.

        Sets `last_stats`: prompt/generation tokens evaluated and milliseconds of this call.
        """
        start, before = time.perf_counter(), self._perf()
        outputs = [self._one(prompt, settings, settings.seed + i) for i, prompt in enumerate(prompts)]
        after = self._perf()
        self.last_stats = {
            "total_ms": (time.perf_counter() - start) * 1000, "prompt_ms": after[0] - before[0], "prompt_tokens": after[1] - before[1],
            "gen_ms": after[2] - before[2], "gen_tokens": after[3] - before[3],
        }
        return outputs

    def _one(self, prompt: str, settings: GenerationSettings, seed: int) -> str:
        if not self.prefix_cache:
            self.llm.reset()  # forget the previous request's KV so nothing is reused
        result = self.llm.create_completion(
            prompt, max_tokens=settings.max_new_tokens, temperature=settings.temperature,
            top_p=settings.top_p, top_k=0, min_p=0.0, repeat_penalty=1.0,
            stop=list(settings.stop) or None, seed=seed,
        )
        return result["choices"][0]["text"]
