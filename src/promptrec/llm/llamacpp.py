"""GGUF models through llama-cpp-python: the offline default backend (SmolLM2, Gemma 3 270M)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

from promptrec.data import DataError
from promptrec.llm.base import GenerationSettings, cut_at_stop
from promptrec.llm.probe import require_llamacpp
from promptrec.models import OFFLINE_LLMS, cache_dir, require, resolve_model, thread_count

_INSTALL = "make setup (it builds llama-cpp-python for this CPU: src/promptrec/llm/native.py)"
_QUANT_TYPES = {"q4_0": 2, "q8_0": 7}  # llama.cpp LLAMA_FTYPE_MOSTLY_* values


def requantize(path: Path, quant: str) -> Path:
    """A copy of GGUF `path` re-quantized to `quant`, made once under `models.cache_dir()/gguf`."""
    import ctypes

    import llama_cpp
    from llama_cpp._logger import set_verbose

    if quant not in _QUANT_TYPES:
        raise DataError(f"quant '{quant}': choose one of {', '.join(_QUANT_TYPES)}")
    cache = cache_dir() / "gguf"
    target = cache / f"{path.stem}.{quant}.gguf"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    set_verbose(False)  # the quantizer logs every tensor otherwise
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = _QUANT_TYPES[quant], True, thread_count()
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    if llama_cpp.llama_model_quantize(str(path).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
        partial.unlink(missing_ok=True)
        raise DataError(f"{path}: llama.cpp could not re-quantize it to {quant}")
    os.replace(partial, target)
    return target


class LlamaCppGenerator:
    """A GGUF model run by llama.cpp on the CPU: one request at a time, or `parallel` decoded together."""

    def __init__(
        self,
        model: str,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        seed: int = 0,
        prefix_cache: bool = True,
        parallel: int = 1,
        quant: str | None = None,
    ) -> None:
        """Load `model` (a .gguf path or short offline name).

        n_ctx: tokens per request (prompt + completion). n_threads: `models.thread_count` (PROMPTREC_THREADS,
        else all cores, as for torch).
        prefix_cache: keep the previous request's KV cache, so the tokens a prompt shares with the previous
        prompt are not evaluated again (no RAM cache of states: its per-request state copy cost more than
        it saved in `promptrec bench fewshot`); False evaluates every prompt from scratch.
        parallel: prompts decoded together as sequences of one llama.cpp batch (1: one request at a time).
        quant: re-quantize the weights once (cached) to "q4_0" or "q8_0", whose CPU kernels are faster
        than the packaged SmolLM2's Q4_1; q4_0 loses a little precision, q8_0 next to none.
        """
        require("llama_cpp", _INSTALL)
        require_llamacpp()  # a build that traps here stops in one line instead of killing the process
        import llama_cpp

        path = Path(resolve_model(model))
        if not path.is_file():
            raise DataError(f"{path}: no such GGUF file")
        self.name = model if model in OFFLINE_LLMS else path.name
        if quant:
            path = requantize(path, quant)
            self.name += f"@{quant}"
        self.prefix_cache = prefix_cache
        self.parallel = max(1, parallel)
        threads = thread_count(n_threads)
        self.llm = llama_cpp.Llama(
            str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=n_batch, seed=seed,
            verbose=False,
        )
        self._batched = _BatchedDecoder(self.llm, n_ctx, self.parallel) if self.parallel > 1 else None
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

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, no BOS, special-token text read as plain text."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def detokenize(self, ids: list[int]) -> str:
        """The text of `ids`; bytes of a character cut in half are dropped."""
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="ignore")

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` takes (no BOS), for truncating inputs."""
        return len(self.tokenize(text))

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        """One completion per prompt, in order; prompt i samples with seed `settings.seed + i`.

        Sets `last_stats`: prompt and generated tokens evaluated, and milliseconds, of this call
        (batched: a step that also evaluates prompt tokens counts as prompt processing).
        """
        import llama_cpp

        start = time.perf_counter()
        if self._batched and len(prompts) > 1:
            outputs = self._batched.run(prompts, settings, settings.seed, self.prefix_cache)
            self.last_stats = dict(self._batched.stats)
        else:
            llama_cpp.llama_perf_context_reset(self.llm._ctx.ctx)
            outputs = [self._one(prompt, settings, settings.seed + i) for i, prompt in enumerate(prompts)]
            perf = llama_cpp.llama_perf_context(self.llm._ctx.ctx)
            self.last_stats = {
                "prompt_ms": perf.t_p_eval_ms, "prompt_tokens": perf.n_p_eval,
                "gen_ms": perf.t_eval_ms, "gen_tokens": perf.n_eval,
            }
        self.last_stats["total_ms"] = (time.perf_counter() - start) * 1000
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


class _BatchedDecoder:
    """Continuous batching: up to `parallel` prompts decode together, one KV stream each.

    The prompts' common token prefix is evaluated once into an extra stream and copied into a
    slot's stream whenever a new prompt takes the slot; every step decodes one new token of each
    busy slot plus the prompt tails of newly seated prompts in a single llama.cpp batch.
    """

    def __init__(self, llm, n_ctx: int, parallel: int) -> None:
        import llama_cpp
        from llama_cpp import _internals

        params = llama_cpp.llama_context_default_params()
        for name in ("n_batch", "n_ubatch", "n_threads", "n_threads_batch"):
            setattr(params, name, getattr(llm.context_params, name))
        self.prefix_seq = parallel  # the extra stream that holds the shared prefix
        n_ctx = -(-n_ctx // 256) * 256  # llama.cpp pads contexts to 256 cells; keep streams equal
        params.n_seq_max = parallel + 1
        params.n_ctx = n_ctx * params.n_seq_max
        params.kv_unified = False  # one stream per sequence: attention spans only its own cells
        params.no_perf = False
        self.llm, self.parallel, self.n_ctx, self.n_batch = llm, parallel, n_ctx, params.n_batch
        self.ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=False)
        self.vocab = llm._model.vocab
        self.stats: dict[str, float] = {}

    def _sampler(self, settings: GenerationSettings, seed: int):
        from llama_cpp import _internals

        sampler = _internals.LlamaSampler()
        if settings.temperature > 0:
            sampler.add_top_p(settings.top_p, 1)
            sampler.add_temp(settings.temperature)
            sampler.add_dist(seed)
        else:
            sampler.add_greedy()
        return sampler

    def _decode(self, entries: list[tuple[int, int, int, bool]], phase: str) -> dict[int, int]:
        """Decode (token, position, sequence, wants_logits) entries in n_batch chunks cut from the end.

        Returns sequence -> batch index of its logits; callers put logit entries last so all land in
        the final chunk. The time is added to `stats[phase + "_ms"]`.
        """
        began = time.perf_counter()
        rows: dict[int, int] = {}
        first = len(entries) % self.n_batch or self.n_batch  # a short chunk first keeps the last chunk full
        for begin in [0, *range(first, len(entries), self.n_batch)]:
            chunk = entries[begin : first if begin == 0 else begin + self.n_batch]
            raw = self.batch.batch
            raw.n_tokens = len(chunk)
            rows = {}
            for i, (token, pos, seq, logits) in enumerate(chunk):
                raw.token[i], raw.pos[i], raw.n_seq_id[i], raw.logits[i] = token, pos, 1, logits
                raw.seq_id[i][0] = seq
                if logits:
                    rows[seq] = i
            self.ctx.decode(self.batch)
        self.stats[f"{phase}_ms"] += (time.perf_counter() - began) * 1000
        return rows

    def run(self, prompts: Sequence[str], settings: GenerationSettings, seed: int, share_prefix: bool) -> list[str]:
        """Complete all `prompts`, `parallel` at a time; prompt i samples with seed `seed + i`."""
        import llama_cpp

        tokens = [self.llm.tokenize(p.encode("utf-8"), special=True) for p in prompts]
        longest = max(map(len, tokens))
        if longest + settings.max_new_tokens > self.n_ctx:
            raise DataError(
                f"a prompt of {longest} tokens plus {settings.max_new_tokens} new tokens exceeds n_ctx={self.n_ctx}"
            )
        shared = 0
        if share_prefix:
            shortest = min(map(len, tokens)) - 1  # every prompt keeps one own token to produce its logits
            while shared < shortest and all(t[shared] == tokens[0][shared] for t in tokens):
                shared += 1
        self.stats = {"prompt_ms": 0.0, "prompt_tokens": shared, "gen_ms": 0.0, "gen_tokens": 0}
        self.ctx.kv_cache_clear()
        if shared:
            self._decode([(tok, pos, self.prefix_seq, False) for pos, tok in enumerate(tokens[0][:shared])], "prompt")
        waiting = list(range(len(tokens)))[::-1]  # prompt indices, next one last
        seated: dict[int, int] = {}  # slot -> prompt index
        samplers: dict[int, object] = {}
        new: list[list[int]] = [[] for _ in tokens]
        rows: dict[int, int] = {}
        while waiting or seated:
            tails, step = [], []
            for slot in range(self.parallel):
                if slot in seated:
                    index = seated[slot]
                    token = samplers[slot].sample(self.ctx, rows[slot])  # also accepts the token
                    done = llama_cpp.llama_vocab_is_eog(self.vocab, token)
                    if not done:
                        new[index].append(token)
                        self.stats["gen_tokens"] += 1
                        text = self.llm.detokenize(new[index]).decode("utf-8", errors="ignore")
                        done = len(new[index]) >= settings.max_new_tokens or any(s in text for s in settings.stop)
                    if not done:
                        step.append((token, len(tokens[index]) + len(new[index]) - 1, slot, True))
                        continue
                    del seated[slot]
                if waiting:  # seat the next prompt: shared prefix copied in, its own tokens queued
                    index = seated[slot] = waiting.pop()
                    samplers[slot] = self._sampler(settings, seed + index)
                    self.ctx.kv_cache_seq_rm(slot, -1, -1)
                    if shared:
                        self.ctx.kv_cache_seq_cp(self.prefix_seq, slot, -1, -1)  # whole streams only
                    own = tokens[index]
                    self.stats["prompt_tokens"] += len(own) - shared
                    tails += [(tok, pos, slot, False) for pos, tok in enumerate(own[shared:-1], shared)]
                    step.append((own[-1], len(own) - 1, slot, True))
            if step:
                seating = bool(tails) or any(pos == len(tokens[seated[slot]]) - 1 for _, pos, slot, _ in step)
                rows = self._decode(tails + step, "prompt" if seating else "gen")
        texts = [self.llm.detokenize(t).decode("utf-8", errors="ignore") for t in new]
        return [cut_at_stop(t, settings.stop) for t in texts]
