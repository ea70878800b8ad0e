"""Method `rerank`: analysis by synthesis. The bank's nearest prompts to a row are rescored by how likely an offline
LM finds the rewrite after (candidate prompt + original), minus how likely it finds it after the original alone;
the candidate with the best score plus `cosine_weight` times its cosine to the bank query wins.

Score of a candidate = mean log p(rewrite tokens | prompt, original) - mean log p(rewrite tokens | original): the
rewrite request is rendered with the candidate and with an empty prompt; the tokens all of a row's requests share
(template head and original) are evaluated once per row, the K + 1 continuations in batches.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from promptrec.data import ORIGINAL, REWRITTEN, DataError
from promptrec.llm.templates import CHAT_REWRITE, FEWSHOT_REQUEST
from promptrec.methods.bank import BankConfig, BankMethod, BankOptions, PromptBank, load_banked, save_banked
from promptrec.methods.base import UsesEmbedder, answer, text_view


@dataclass
class RerankConfig(BankOptions):
    """Options of the rerank method (and of the bank it draws candidates from). Defaults: SmolLM2-135M-Instruct
    offline, 16 bank neighbours of the direction query, 64 tokens of each text (chosen under leave-one-source-out CV:
    docs/results.md)."""
    model_fields, extra = ("model", "embedder"), "llm"  # NamesModels, NeedsExtra: what bundle carries

    model: str = "smollm2"  # the scoring LM: short offline name (smollm2, gemma3-270m), hub id, HF folder or .gguf
    # 40 rows per held-out source: K = 4, 8, 16 scored 0.0733, 0.0745, 0.0794 (bank alone 0.0639); 2.07 s/row at 16
    k: int = 16  # bank neighbours scored per row
    # w = 1 won on every held-out source when chosen on the others (0.0845 at K = 16; w = 0: 0.0794)
    cosine_weight: float = 1.0  # the pick maximises score + cosine_weight * the candidate's cosine to the bank query
    text_tokens: int = 64  # token budget of the original and of the scored rewrite (head and tail kept); 0: whole
    prompt_tokens: int = 48  # candidate prompts are cut to this many tokens
    batch_size: int = 32  # continuations per forward pass
    chat_template: bool = True  # render the request with the tokenizer's chat template when it has one
    # on this AVX512-BF16 CPU, K = 16, 1 thread: 2.07 s/row under bf16 autocast, 4.56 in float32
    bf16: bool | None = None  # score under bf16 autocast; None: on a bf16 GPU or a CPU with native bf16
    query: str = "direction"  # bank query: direction (rewritten minus original) or rewritten

    def __post_init__(self):
        self.check_bank("rerank")
        for name in ("k", "prompt_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise DataError(f"rerank: {name} must be at least 1, not {getattr(self, name)}")
        for name in ("text_tokens", "cosine_weight"):
            if getattr(self, name) < 0:
                raise DataError(f"rerank: {name} must be 0 or more, not {getattr(self, name)}")


@dataclass
class Ranking:
    """The candidates of each row and their likelihood scores (usable as gate features)."""

    prompts: list[list[str]]  # per row, the distinct candidates in the order given (bank neighbours first)
    scores: np.ndarray  # (n, K) candidate score (see the module docstring); -inf past a row's last candidate
    cosines: np.ndarray  # (n, K) cosine of each candidate to the row's bank query; 0 past a row's last candidate
    baseline: np.ndarray  # (n,) mean log p(rewrite tokens | original), the normaliser
    cosine_weight: float = 0.0  # the pick's weight of the cosine (RerankConfig.cosine_weight)

    def keys(self) -> np.ndarray:
        """(n, K) what the pick maximises: score + cosine_weight * cosine."""
        return self.scores + self.cosine_weight * self.cosines

    def best(self) -> list[str]:
        """The candidate with the highest key per row (the first of equal keys)."""
        return [row[int(i)] for row, i in zip(self.prompts, self.keys().argmax(axis=1))]


def target_logprobs(model, inputs: Sequence[list[int]], target: int, batch_size: int = 16,
                    bf16: bool = False) -> np.ndarray:
    """(len(inputs),) mean log-probability of the last `target` tokens of each input.

    The tokens every input starts with are evaluated once; each batch continues from a copy of their KV cache,
    laid out as [shared prefix][left padding][rest], so the scored tokens line up at the end of every row."""
    import copy

    import torch

    from promptrec.llm.hf import shared_prefix

    device = next(model.parameters()).device
    # the prefix ends before the last target + 1 tokens of every input: each scored token's logit is in the batch
    prefix = min(shared_prefix(inputs), min(len(ids) for ids in inputs) - target - 1)
    if prefix < 0:
        raise DataError(f"rerank: an input holds fewer than the {target} + 1 tokens to score")
    means = np.zeros(len(inputs), dtype=np.float64)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    with torch.inference_mode(), autocast:
        cache = model(torch.tensor([inputs[0][:prefix]], device=device), use_cache=True).cache if prefix else None
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start : start + batch_size]
            width = max(len(ids) - prefix for ids in chunk)
            input_ids = torch.zeros((len(chunk), width), dtype=torch.long)  # (batch, width); 0 pads, masked out
            mask = torch.zeros((len(chunk), prefix + width), dtype=torch.long)  # (batch, prefix + width)
            mask[:, :prefix] = 1
            for row, ids in enumerate(chunk):
                rest = len(ids) - prefix
                input_ids[row, width - rest :] = torch.tensor(ids[prefix:])
                mask[row, prefix + width - rest :] = 1
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, prefix:]  # (batch, width)
            extra = {}
            if cache is not None:
                extra["cache"] = copy.deepcopy(cache)
                extra["cache"].batch_repeat_interleave(len(chunk))
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                           position_ids=positions.to(device), logits_to_keep=target + 1, **extra).logits
            logp = logits[:, :-1].float().log_softmax(dim=-1)  # (batch, target, vocab): predicts the target tokens
            scored = input_ids[:, width - target :].to(device)  # (batch, target)
            token_logp = logp.gather(-1, scored[:, :, None])[:, :, 0]  # (batch, target)
            means[start : start + len(chunk)] = token_logp.mean(dim=1).double().cpu().numpy()
    return means


class RerankMethod(UsesEmbedder):
    """Scores the bank's nearest prompts of each row with an offline LM and returns the one that best explains the
    rewrite (needs the `llm` extra)."""

    name = "rerank"
    Config = RerankConfig

    def __init__(self, config: RerankConfig | None = None):
        self.config = config or RerankConfig()
        self.bank: PromptBank | None = None
        self.model = None  # loaded on first use (model loads take seconds; fit needs none)
        self.tokenizer = None

    def searcher(self) -> BankMethod:
        """The bank method this one draws its candidates from, sharing its bank and embedder."""
        bank = BankMethod(BankConfig(**{f.name: getattr(self.config, f.name) for f in fields(BankOptions)}))
        bank.embedder, bank.bank = self.embedder, self.bank
        return bank

    def fit(self, triples: pd.DataFrame) -> None:
        """Embed the bank (training prompts and written prompts, if enabled, and the bank files) as the bank method does."""
        searcher = self.searcher()
        searcher.fit(triples)
        self.bank = searcher.bank

    def bank_queries(self, pairs: pd.DataFrame) -> np.ndarray:
        """(n, dim) the queries the candidates are searched with (`explain` lists the nearest prompts)."""
        return self.searcher().queries(pairs)

    def load_model(self) -> None:
        """Load the scoring LM and its tokenizer once."""
        if self.model is not None:
            return
        from promptrec.llm.hf import bf16_default, load_causal_lm, load_tokenizer
        from promptrec.models import pick_device

        device = pick_device()
        self.tokenizer = load_tokenizer(self.config.model)
        self.model = load_causal_lm(self.config.model, bf16_default(device), device)

    def request_ids(self, original: str, prompt: str) -> list[int]:
        """Token ids of the rewrite request for `prompt` (empty: the no-prompt baseline), ending where the rewrite
        starts."""
        tokenizer = self.tokenizer
        if self.config.chat_template and tokenizer.chat_template:
            request = [{"role": "user", "content": CHAT_REWRITE.format(text=original, prompt=prompt)}]
            text = tokenizer.apply_chat_template(request, tokenize=False, add_generation_prompt=True)
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        return tokenizer(FEWSHOT_REQUEST.format(text=original, prompt=prompt), add_special_tokens=True)["input_ids"]

    def rank(self, pairs: pd.DataFrame, extra: dict[str, list[str | None]] | None = None) -> Ranking:
        """Score each row's `k` nearest bank prompts and, when given, other prompts per row (`extra`: label ->
        one prompt or None per row, e.g. an ensemble's member predictions)."""
        from promptrec.methods.lora_template import truncate
        from promptrec.models import bf16_autocast

        if self.bank is None:
            raise DataError("rerank: nothing to rank; fit on triples first")
        self.load_model()
        cfg, tokenizer = self.config, self.tokenizer
        queries = self.bank_queries(pairs)  # (n, d)
        top, _ = self.bank.nearest(queries, cfg.k)  # (n, k)
        pairs = text_view(pairs, cfg.view)
        bf16 = bf16_autocast(cfg.bf16, str(next(self.model.parameters()).device))
        prompts, scores, baseline = [], [], []
        for row, (original, rewritten) in enumerate(zip(pairs[ORIGINAL], pairs[REWRITTEN])):
            found = [self.bank.prompts[i] for i in top[row]] + [column[row] for column in (extra or {}).values()]
            candidates = list(dict.fromkeys(filter(None, map(answer, found))))
            original = truncate(tokenizer, str(original), cfg.text_tokens)
            rewritten = truncate(tokenizer, str(rewritten), cfg.text_tokens)
            target = tokenizer(rewritten, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
            cut = [truncate(tokenizer, p, cfg.prompt_tokens) for p in candidates]
            inputs = [self.request_ids(original, p) + target for p in ["", *cut]]
            means = target_logprobs(self.model, inputs, len(target), cfg.batch_size, bf16)  # (1 + candidates,)
            prompts.append(candidates)
            scores.append(means[1:] - means[0])
            baseline.append(means[0])
        width = max((len(s) for s in scores), default=0)
        table, cosines = np.full((len(scores), width), -np.inf), np.zeros((len(scores), width))
        index = {prompt: i for i, prompt in enumerate(self.bank.prompts)}  # once per call, not per row
        for row, values in enumerate(scores):
            table[row, : len(values)] = values
            cosines[row, : len(values)] = self.cosines(prompts[row], queries[row], index)
        return Ranking(prompts, table, cosines, np.array(baseline, dtype=np.float64), cfg.cosine_weight)

    def cosines(self, prompts: list[str], query: np.ndarray, index: dict[str, int]) -> np.ndarray:
        """(len(prompts),) cosine of each prompt to a bank `query`; `index` maps bank prompts to their rows, prompts
        outside the bank are embedded here."""
        outside = [p for p in prompts if p not in index]
        found = dict(zip(outside, self.embedder.encode(outside))) if outside else {}
        prompt_emb = np.stack([self.bank.embeddings[index[p]] if p in index else found[p] for p in prompts])  # (c, d)
        return prompt_emb @ query / max(float(np.linalg.norm(query)), 1e-12)

    def predict(self, pairs: pd.DataFrame) -> list[str]:
        """The bank neighbour with the best score plus weighted cosine per row (never blank: it never abstains)."""
        return self.rank(pairs).best()

    def save(self, folder: Path) -> None:
        """Write method.json and the embedded bank (as the bank method does); the LM is named by the config."""
        save_banked(self, folder)

    @classmethod
    def load(cls, folder: Path) -> "RerankMethod":
        """Read method.json and the bank; the LM loads on first use."""
        return load_banked(cls, folder)
