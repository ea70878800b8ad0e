"""Method `bank`: the bank prompt nearest to the rewritten text; `PromptBank` also decodes embeddings to text."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from promptrec import vectors
from promptrec.data import ORIGINAL, PROMPT, REWRITTEN, DataError, atomic_write, read_texts
from promptrec.methods.base import UsesEmbedder, answer, check_view, load_saved, safe_child, save_config, text_view
from promptrec.metric import load_embeddings, save_embeddings, sharpen
from promptrec.models import cache_dir
from promptrec.prompts import written_prompts

BANK_TEXTS = "bank.json"
BANK_WEIGHTS = "bank.safetensors"
QUERIES = ("rewritten", "direction")


class PromptBank:
    """Distinct prompts with their unit metric embeddings; nearest-neighbour search by cosine."""

    def __init__(self, prompts: list[str], embeddings: np.ndarray):
        if len(prompts) != len(embeddings):
            raise ValueError(f"{len(prompts)} prompts but {len(embeddings)} embeddings")
        self.prompts = list(prompts)
        self.embeddings = np.asarray(embeddings, dtype=np.float32)  # (size, dim) unit rows

    @property
    def dim(self) -> int:
        """Embedding dimension of the bank."""
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def build(cls, prompts: list[str], embedder) -> "PromptBank":
        """Embed the distinct non-blank `prompts` (first occurrence order) with the metric embedder."""
        unique = list(dict.fromkeys(filter(None, map(answer, prompts))))
        if not unique:
            raise DataError("the prompt bank is empty: give training prompts or a bank file")
        return cls(unique, embedder.encode(unique))

    @classmethod
    def from_file(cls, path: str | Path, embedder, cache: str | Path = "") -> "PromptBank":
        """A bank from a prompt list (JSON list, .txt lines or a table's rewrite_prompt), cached under `cache`
        (default: `models.cache_dir`)."""
        prompts = list(dict.fromkeys(p.strip() for p in read_texts(path, PROMPT) if p.strip()))
        if not prompts:
            raise DataError(f"{path}: no prompts in this bank file")
        return cls.cached(prompts, embedder, cache)

    @classmethod
    def cached(cls, prompts: list[str], embedder, cache: str | Path = "") -> "PromptBank":
        """A bank of distinct `prompts` whose embeddings are cached under `cache` (default: `models.cache_dir`)."""
        digest = hashlib.sha256(("\x00".join(prompts) + "\x01" + embedder.label).encode("utf-8")).hexdigest()[:24]
        npy = cache_dir(cache) / "bank" / f"{digest}.npy"
        emb = load_embeddings(npy, prompts, embedder)
        if emb is None:
            emb = save_embeddings(npy, prompts, embedder)
        return cls(prompts, emb)

    @classmethod
    def concat(cls, banks: list["PromptBank"]) -> "PromptBank":
        """One bank holding every distinct prompt of `banks` (first occurrence kept)."""
        if len({b.dim for b in banks}) > 1:
            raise DataError(f"prompt banks of different embedding sizes: {sorted({b.dim for b in banks})}")
        prompts = [p for b in banks for p in b.prompts]
        first_index: dict[str, int] = {}
        for index, prompt in enumerate(prompts):
            first_index.setdefault(prompt, index)
        first = list(first_index.values())
        return cls([prompts[i] for i in first], np.concatenate([b.embeddings for b in banks])[first])

    def nearest(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Indices and cosines of the `k` most similar bank prompts per query row, best first."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.dim:
            raise DataError(f"queries have {queries.shape[1]} dimensions but the prompt bank has {self.dim}")
        cos = vectors.unit_rows(queries) @ self.embeddings.T  # (n, size)
        top = vectors.top_k(cos, k)  # (n, min(k, size))
        return top, np.take_along_axis(cos, top, axis=1)

    def decode(self, queries: np.ndarray, top_k: int = 1) -> list[str]:
        """The nearest prompt per row, or the `top_k` nearest joined by spaces."""
        top, _ = self.nearest(queries, top_k)
        return [" ".join(self.prompts[i] for i in row) for row in top]

    def oracle(self, truth: np.ndarray) -> np.ndarray:
        """Per row, the best cos**3 any single bank prompt reaches against the true embedding."""
        _, cos = self.nearest(truth, 1)
        return sharpen(cos[:, 0])

    def save(self, folder: Path) -> None:
        """Write bank.json (prompts) and bank.safetensors (embeddings)."""
        from safetensors.numpy import save

        with atomic_write(folder / BANK_TEXTS) as handle:
            json.dump(self.prompts, handle, ensure_ascii=False)
        with atomic_write(folder / BANK_WEIGHTS, "wb") as handle:
            handle.write(save({"embeddings": self.embeddings}))

    @classmethod
    def load(cls, folder: Path) -> "PromptBank":
        """Read a bank written by `save`."""
        from safetensors.numpy import load_file

        texts, weights = safe_child(folder, BANK_TEXTS), safe_child(folder, BANK_WEIGHTS)
        if not (texts.is_file() and weights.is_file()):
            raise DataError(f"{folder}: no saved prompt bank ({BANK_TEXTS}, {BANK_WEIGHTS})")
        prompts = read_texts(texts, PROMPT)
        emb = load_file(str(weights)).get("embeddings")
        if emb is None or emb.ndim != 2 or len(emb) != len(prompts):
            raise DataError(f"{weights}: expected 'embeddings' of shape ({len(prompts)}, dim)")
        return cls(prompts, emb)


def build_bank(embedder, prompts: list[str], files: list[str], cache: str = "", written: bool = False) -> PromptBank:
    """The bank of `prompts` plus every prompt in `files` and, if `written`, the prompts this project wrote
    (`promptrec.prompts`; those two cached under `cache`), by `embedder`."""
    banks = [PromptBank.build(prompts, embedder)] if any(p.strip() for p in prompts) else []
    banks += [PromptBank.from_file(f, embedder, cache) for f in files]
    banks += [PromptBank.cached(list(written_prompts()), embedder, cache)] if written else []
    if not banks:
        raise DataError("the prompt bank is empty: give training prompts or a bank file")
    return PromptBank.concat(banks)


def check_dim(bank: PromptBank, embedder, source: str) -> None:
    """One-line error when the embedder's dimension differs from the saved embeddings'."""
    if embedder.dim != bank.dim:
        raise DataError(f"{source}: saved for {bank.dim}-dim embeddings but embedder '{embedder.label}' gives {embedder.dim}")


@dataclass
class BankOptions:
    """What a bank holds and how a row queries it: the options of `bank` that `rerank` shares."""
    model_fields = ("embedder",)  # NamesModels: the fields naming a model, which bundle carries

    embedder: str = "proxy"  # metric embedder: official, proxy or a folder
    bank_files: list[str] = field(default_factory=list)  # prompt lists added to the bank (JSON list, .txt, table)
    training_prompts: bool = True  # put the training prompts in the bank too
    written: bool = True  # put the prompts this project wrote (promptrec.prompts) in the bank too
    query: str = "rewritten"  # rewritten: nearest to the rewritten text; direction: to rewritten minus original
    cache_dir: str = ""  # bank-file embedding cache ("" = PROMPTREC_CACHE or ~/.cache/promptrec)
    view: str = "raw"  # the rewrite as read in fit and predict: raw, or stripped of lead-ins, titles and refusals

    def check_bank(self, method: str) -> None:
        """One-line errors for an unknown view or query, naming `method`."""
        check_view(method, self.view)
        if self.query not in QUERIES:
            raise DataError(f"{method}: query must be one of {', '.join(QUERIES)}, not '{self.query}'")


@dataclass
class BankConfig(BankOptions):
    """Options of the bank method."""

    top_k: int = 1  # 1: the nearest prompt; k > 1: the k nearest joined by spaces

    def __post_init__(self):
        self.check_bank("bank")
        if self.top_k < 1:
            raise DataError(f"bank: top_k must be at least 1, not {self.top_k}")


class BankMethod(UsesEmbedder):
    """Zero training: embed the rewritten text (or its shift from the original) and return the nearest bank prompt."""

    name = "bank"
    Config = BankConfig

    def __init__(self, config: BankConfig | None = None):
        self.config = config or BankConfig()
        self.bank: PromptBank | None = None

    def fit(self, triples: pd.DataFrame) -> None:
        """Embed the bank: training prompts (if enabled) plus the bank files."""
        prompts = triples[PROMPT].tolist() if self.config.training_prompts else []
        self.bank = build_bank(self.embedder, prompts, self.config.bank_files, self.config.cache_dir, self.config.written)

    def queries(self, pairs: pd.DataFrame) -> np.ndarray:
        """(n, dim) query embeddings: the rewritten text, or the direction from original to rewritten."""
        pairs = text_view(pairs, self.config.view)
        rewritten = self.embedder.encode_texts(pairs[REWRITTEN].tolist())
        if self.config.query == "rewritten":
            return rewritten
        return vectors.direction(rewritten, self.embedder.encode_texts(pairs[ORIGINAL].tolist()))

    def bank_queries(self, pairs: pd.DataFrame) -> np.ndarray:
        """(n, dim) what `predict` searches the bank with (`explain` lists the nearest prompts)."""
        return self.queries(pairs)

    def predict(self, pairs: pd.DataFrame) -> list[str]:
        """The nearest bank prompt(s) per row (bank prompts are never blank, so the method never abstains)."""
        if self.bank is None:
            if not (self.config.bank_files or self.config.written):
                raise DataError("bank: nothing to search; fit on triples, give bank_files or set written")
            self.bank = build_bank(self.embedder, [], self.config.bank_files, self.config.cache_dir, self.config.written)
        return self.bank.decode(self.queries(pairs), self.config.top_k)

    def save(self, folder: Path) -> None:
        """Write method.json and the embedded bank."""
        save_banked(self, folder)

    @classmethod
    def load(cls, folder: Path) -> "BankMethod":
        """Read method.json and the bank; a bank of another embedding size than the embedder is an error."""
        return load_banked(cls, folder)


def save_banked(method, folder: Path) -> None:
    """Write a method's method.json and, once fitted, its embedded `bank` (bank and rerank save alike)."""
    folder = Path(folder)
    save_config(folder, method.name, method.config)
    if method.bank is not None:
        method.bank.save(folder)


def load_banked(cls, folder: Path):
    """A `cls` from what `save_banked` wrote; a bank of another embedding size than its embedder is an error."""
    folder = Path(folder)
    method = cls(load_saved(folder, cls)[0])
    if (folder / BANK_TEXTS).is_file():
        method.bank = PromptBank.load(folder)
        check_dim(method.bank, method.embedder, str(folder))
    return method
