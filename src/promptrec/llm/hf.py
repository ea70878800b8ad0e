"""Causal LMs through transformers: the one loader (hub id, folder or GGUF file; safetensors only) and the one
batched generator (shared-prefix KV cache, bf16 autocast, stop at a line break), used by the `hf` backend and by
method lora."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from promptrec.data import DataError
from promptrec.llm.base import GenerationSettings, cut_at_stop
from promptrec.models import bf16_autocast, pick_device, resolve_model


def location(source: str) -> tuple[str, dict[str, Any]]:
    """(folder or hub id, from_pretrained kwargs) of a short offline name, hub id, folder or .gguf file."""
    path = resolve_model(source)
    if path.endswith(".gguf"):
        return str(Path(path).parent), {"gguf_file": Path(path).name}
    return path, {}


def load_causal_lm(source: str, bf16: bool = False, device: str = "cpu", trust_remote_code: bool = False):
    """A causal LM in eval mode on `device` (bf16 weights or float32), dequantised when it is a GGUF file.

    Weights load from safetensors only, never pickles; on CUDA they go straight to the GPU (no CPU copy)."""
    import torch
    from transformers import AutoModelForCausalLM

    where, extra = location(source)
    if "gguf_file" not in extra:
        extra["use_safetensors"] = True
    placement = {"device_map": device} if device.startswith("cuda") else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.bfloat16 if bf16 else torch.float32,
                                                     trust_remote_code=trust_remote_code, **extra, **placement)
    except OSError as err:
        raise DataError(f"{source}: cannot load a causal LM ({str(err).splitlines()[0]})") from None
    if getattr(model, "hf_quantizer", None) is not None:
        # A GGUF model is dequantised on load; without its quantizer, save_pretrained and merging work.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if not placement:
        model.to(device)
    return model.eval()


def load_tokenizer(source: str, trust_remote_code: bool = False):
    """The tokenizer of a short offline name, hub id, folder or .gguf file; left padding, pad = EOS if unset."""
    from transformers import AutoTokenizer

    where, extra = location(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code, **extra)
    except OSError as err:
        raise DataError(f"{source}: cannot load a causal LM's tokenizer ({str(err).splitlines()[0]})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # new tokens follow every prompt directly
    return tokenizer


def bf16_default(device: str) -> bool:
    """bf16 weights for training and loading: on a CUDA GPU that supports it."""
    import torch

    return device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def newline_ids(tokenizer) -> list[int]:
    """Vocabulary ids whose text contains a line break (generation can stop after one)."""
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return [i for i, piece in enumerate(pieces) if "\n" in piece]


def shared_prefix(inputs: Sequence[list[int]]) -> int:
    """Tokens every input starts with, leaving at least one token of each input after them."""
    shortest = min(len(ids) for ids in inputs)
    length = 0
    while length < shortest - 1 and all(ids[length] == inputs[0][length] for ids in inputs):
        length += 1
    return length


def generate_ids(model, tokenizer, inputs: Sequence[list[int]], max_new_tokens: int, batch_size: int = 16,
                 sampling: dict[str, Any] | None = None, num_beams: int = 1, stop_ids: Sequence[int] = (),
                 bf16: bool = False) -> tuple[list[list[int]], int]:
    """New token ids per input, in order, and the prompt tokens evaluated; batches of similar length.

    The tokens all inputs share (a template's head) are evaluated once; each batch starts from a copy of their
    KV cache, so rows are laid out as [shared prefix][left padding][rest of the row]. `sampling`: extra
    `generate` arguments (default greedy); `stop_ids`: a row stops after writing one of these tokens.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _StopAfter(StoppingCriteria):
        def __init__(self, ids: torch.Tensor):
            self.ids = ids

        def __call__(self, input_ids, scores, **kwargs):  # -> (batch,) bool: the row just wrote a stop token
            return torch.isin(input_ids[:, -1], self.ids)

    outputs: list[list[int]] = [[] for _ in inputs]
    if not inputs:
        return outputs, 0
    device = next(model.parameters()).device
    stops = StoppingCriteriaList([_StopAfter(torch.tensor(list(stop_ids), device=device))]) if stop_ids else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    order = np.argsort([len(ids) for ids in inputs], kind="stable")
    prefix = shared_prefix(inputs) if num_beams == 1 else 0
    evaluated = prefix + sum(len(ids) - prefix for ids in inputs)
    pad_id = tokenizer.pad_token_id
    model.eval()
    with torch.inference_mode(), autocast:
        prefix_cache = model(torch.tensor([inputs[0][:prefix]], device=device), use_cache=True).cache if prefix else None
        for start in range(0, len(order), max(1, batch_size)):
            chunk = order[start : start + max(1, batch_size)]
            width = prefix + max(len(inputs[i]) - prefix for i in chunk)
            input_ids = torch.full((len(chunk), width), pad_id)  # (batch, width)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)  # (batch, width)
            input_ids[:, :prefix] = torch.tensor(inputs[chunk[0]][:prefix])
            mask[:, :prefix] = 1
            for row, i in enumerate(chunk):
                input_ids[row, width - len(inputs[i]) + prefix :] = torch.tensor(inputs[i][prefix:])
                mask[row, width - len(inputs[i]) + prefix :] = 1
            extra = {}
            if prefix_cache is not None:
                extra["cache"] = copy.deepcopy(prefix_cache)
                extra["cache"].batch_repeat_interleave(len(chunk))
            generated = model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                num_beams=num_beams, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id,
                stopping_criteria=stops, **(sampling or {"do_sample": False}), **extra,
            )  # (batch, width + new)
            for row, i in enumerate(chunk):
                outputs[i] = generated[row, width:].tolist()
    return outputs, evaluated


class HFGenerator:
    """A transformers causal LM behind the Generator protocol; prompts are generated `batch_size` at a time."""

    def __init__(
        self,
        model: str,
        batch_size: int = 8,
        device: str | None = None,
        gguf_file: str | None = None,
        trust_remote_code: bool = False,
        bf16: bool | None = None,
    ) -> None:
        """Load `model` (hub id, local folder, or a .gguf path / folder plus `gguf_file`).

        device: "cuda", "cpu"... (default: CUDA when available, in bfloat16; else CPU float32).
        trust_remote_code: allow the model's own Python code (off unless you trust the repository).
        bf16: generate under bf16 autocast (None: on a bf16 GPU or a CPU that computes bf16 natively).
        """
        source = str(Path(model) / gguf_file) if gguf_file else model
        self.name = model
        self.batch_size = max(1, batch_size)
        self.device = pick_device(device or "auto")
        self.tokenizer = load_tokenizer(source, trust_remote_code)
        self.model = load_causal_lm(source, bf16_default(self.device), self.device, trust_remote_code)
        self.autocast = bf16_autocast(bf16, self.device)
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

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def detokenize(self, ids: list[int]) -> str:
        """The text of token ids, special tokens dropped."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` takes (no special tokens), for truncating inputs."""
        return len(self.tokenize(text))

    def _encode(self, prompt: str) -> list[int]:
        # A rendered chat template already starts with BOS; do not add a second one.
        bos = self.tokenizer.bos_token
        return self.tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))["input_ids"]

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        """One completion per prompt, in order; sets `last_stats` (tokens in and out, milliseconds)."""
        import torch

        start = time.perf_counter()
        torch.manual_seed(settings.seed)
        sampling = (
            {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0}
            if settings.temperature > 0 else {"do_sample": False}
        )
        new_ids, prompt_tokens = generate_ids(self.model, self.tokenizer, [self._encode(p) for p in prompts],
                                              settings.max_new_tokens, self.batch_size, sampling, bf16=self.autocast)
        specials = set(self.tokenizer.all_special_ids)
        self.last_stats = {
            "total_ms": (time.perf_counter() - start) * 1000, "prompt_tokens": prompt_tokens,
            "gen_tokens": sum(sum(i not in specials for i in ids) for ids in new_ids),
        }
        return [cut_at_stop(self.detokenize(ids), settings.stop) for ids in new_ids]
