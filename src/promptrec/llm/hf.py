"""Causal LMs through transformers: hub ids, local folders or GGUF files; batched, on the GPU when present."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from promptrec.data import DataError
from promptrec.llm.base import GenerationSettings
from promptrec.models import resolve_model


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


class HFGenerator:
    """A transformers causal LM; prompts are generated `batch_size` at a time with left padding."""

    def __init__(
        self,
        model: str,
        batch_size: int = 8,
        device: str | None = None,
        gguf_file: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        """Load `model` (hub id, local folder, or a .gguf path / folder plus `gguf_file`).

        device: "cuda", "cpu"... (default: CUDA when available, in bfloat16; else CPU float32).
        trust_remote_code: allow the model's own Python code (off unless you trust the repository).
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = resolve_model(model)
        if source.endswith(".gguf") and gguf_file is None:
            source, gguf_file = str(Path(source).parent), Path(source).name
        self.name = model
        self.batch_size = max(1, batch_size)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **extra)
            self.model = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, trust_remote_code=trust_remote_code, **extra
            ).to(self.device)
        except OSError as error:
            raise DataError(f"{model}: cannot load a causal LM ({str(error).splitlines()[0]})") from None
        self.model.eval()
        self.tokenizer.padding_side = "left"  # new tokens follow every prompt directly
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.last_stats: dict[str, float] = {}

    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer carries a chat template."""
        return bool(self.tokenizer.chat_template)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The tokenizer's chat template applied to `messages`, with the assistant turn opened."""
        if not self.has_chat_template:
            raise DataError(
                f"{self.name}: the tokenizer has no chat template (a base model); "
                "use a completion template such as promptrec.llm.templates.fewshot_prompt"
            )
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _encode(self, prompt: str) -> list[int]:
        # A rendered chat template already starts with BOS; do not add a second one.
        bos = self.tokenizer.bos_token
        return self.tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))["input_ids"]

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        """One completion per prompt, in order; sets `last_stats` (tokens in and out, milliseconds)."""
        import torch

        start, prompt_tokens, gen_tokens = time.perf_counter(), 0, 0
        torch.manual_seed(settings.seed)
        outputs: list[str] = []
        sampling = (
            {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0}
            if settings.temperature > 0 else {"do_sample": False}
        )
        for begin in range(0, len(prompts), self.batch_size):
            encoded = [{"input_ids": self._encode(p)} for p in prompts[begin : begin + self.batch_size]]
            batch = self.tokenizer.pad(encoded, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                sequences = self.model.generate(
                    **batch, max_new_tokens=settings.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                    **sampling,
                )  # (batch, prompt_len + new_len)
            new_ids = sequences[:, batch["input_ids"].shape[1] :]  # (batch, new_len)
            prompt_tokens += int(batch["attention_mask"].sum())
            gen_tokens += int((new_ids != self.tokenizer.pad_token_id).sum())
            texts = self.tokenizer.batch_decode(new_ids, skip_special_tokens=True)
            outputs.extend(cut_at_stop(t, settings.stop) for t in texts)
        self.last_stats = {
            "total_ms": (time.perf_counter() - start) * 1000, "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
        }
        return outputs
