"""Frozen-encoder features of texts, computed once per text and process (and kept on disk): the regressor's input,
and the embedder's vectors of long texts (originals, rewrites) when both read the same weights.

One forward pass gives both: the regressor mean-pools the last two hidden layers; a SentenceTransformer that is
exactly a transformer, mean pooling and normalisation (the packaged MiniLM) is the first of them, normalised.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from promptrec.data import ORIGINAL, REWRITTEN, DataError, atomic_write
from promptrec.models import bf16_autocast, cache_dir, load_pretrained, resolve_model
from promptrec.progress import Steps

DEFAULT_LAYERS = (-1, -2)
SHARD_TEXTS = 512  # texts encoded between two cache writes
# Batches padded to a multiple of 32 tokens: a handful of shapes instead of one per batch, so oneDNN's per-shape
# primitive cache stops growing (bf16 on 1,536 shared texts: peak RSS 1,093 -> 867 MiB, no creep).
PAD_TO = 32
MEMORY_TEXTS = 200_000  # texts whose features a cache keeps in memory (~600 MiB at 2 x 384 floats)


def _text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


@lru_cache(maxsize=4)
def _pretrained(source: str, device: str, weights: tuple[str, ...]):
    """(tokenizer, model) of `source` on `device`, loaded once per process and version of its `weights` (their
    `_weight_stamps`): the regressor's full-text and head-token blocks share one encoder."""
    from transformers import AutoModel, AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source), load_pretrained(AutoModel, source).to(device).eval()
    except OSError as err:
        raise DataError(f"cannot load encoder '{source}' ({str(err).splitlines()[0]})") from None


def _weight_stamps(source: str) -> tuple[str, ...]:
    """`name:size:mtime` of each weight file when `source` is a folder (a rewritten file is another model)."""
    folder = Path(source)
    if not folder.is_dir():
        return ()
    files = sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")])
    return tuple(f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in files)


class FrozenEncoder:
    """A pretrained encoder read-only: per text, mean-pooled hidden layers side by side (len(layers) * H)."""

    def __init__(self, backbone: str, max_length: int, device: str = "cpu", batch_size: int = 16, amp: bool = True,
                 layers: Iterable[int] = DEFAULT_LAYERS):
        self.source = resolve_model(backbone)
        self.max_length = max_length
        self.layers = tuple(layers)
        self.device = device
        self.batch_size = batch_size
        self.amp = amp
        self._model = None
        self._tokenizer = None

    @property
    def precision(self) -> str:
        """fp16 (autocast on a GPU), bf16 (autocast on a CPU that computes bf16 natively) or fp32; `amp` allows both."""
        if not self.amp:
            return "fp32"
        if self.device.startswith("cuda"):
            return "fp16"
        return "bf16" if bf16_autocast(None, self.device) else "fp32"

    @property
    def identity(self) -> str:
        """What the features depend on: model source, its config and weight files, max_length, precision and layers."""
        parts = [self.source, f"max_length={self.max_length}"]
        if self.precision != "fp32":  # float32 adds nothing, so caches written before precisions were named stay valid
            parts.append(f"precision={self.precision}")
        if self.layers != DEFAULT_LAYERS:  # the default adds nothing, so caches of the last two layers stay valid
            parts.append(f"layers={list(self.layers)}")
        folder = Path(self.source)
        if folder.is_dir():
            config = folder / "config.json"
            parts.append(config.read_text(encoding="utf-8") if config.is_file() else "")
            parts.extend(_weight_stamps(self.source))
        return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()

    def initializer_range(self) -> float:
        """The backbone config's initializer_range (0.02 when it has none)."""
        from transformers import AutoConfig

        return float(getattr(AutoConfig.from_pretrained(self.source), "initializer_range", 0.02))

    def _load(self) -> None:
        self._tokenizer, self._model = _pretrained(self.source, self.device, _weight_stamps(self.source))

    def encode(self, texts: list[str], on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """(n, len(layers) * H) float32: masked means of the chosen hidden layers, side by side; `on_batch(size)` is
        called after each batch (progress)."""
        import torch

        if self._model is None:
            self._load()
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths share a batch
        rows: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        pad_to = PAD_TO if self.max_length % PAD_TO == 0 else None  # the tokenizer refuses other budgets
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = self._tokenizer([texts[i] for i in chunk], padding=True, truncation=True,
                                    max_length=self.max_length, pad_to_multiple_of=pad_to, return_tensors="pt").to(self.device)
            with torch.inference_mode(), torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
                hidden = self._model(**batch, output_hidden_states=True).hidden_states
            mask = batch["attention_mask"].unsqueeze(-1).float()  # (b, t, 1)
            pooled = [(hidden[k].float() * mask).sum(1) / mask.sum(1).clamp(min=1) for k in self.layers]
            features = torch.cat(pooled, dim=1).cpu().numpy()  # (b, len(layers) * H)
            for i, row in zip(chunk, features):
                rows[i] = row
            if on_batch:
                on_batch(len(chunk))
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), dtype=np.float32)


def pair_texts(pairs: pd.DataFrame) -> list[str]:
    """The original texts, then the rewritten texts, of every row."""
    return [str(t) for t in pairs[ORIGINAL].tolist() + pairs[REWRITTEN].tolist()]


class FeatureCache:
    """Encoder features per distinct text, in memory (at most `memory_texts`, oldest out first) and (optionally) as
    safetensors shards on disk."""

    def __init__(self, encoder: FrozenEncoder, folder: Path | None, memory_texts: int = MEMORY_TEXTS):
        self.encoder = encoder
        self.identity = encoder.identity
        self.folder = folder / "features" / self.identity[:32] if folder else None
        self.store: dict[bytes, np.ndarray] = {}
        self.memory_texts = memory_texts
        self.encoded = 0  # texts run through the encoder by this cache (for tests and benchmarks)
        if self.folder and self.folder.is_dir():
            self._read_shards()
            self._forget()

    def _read_shards(self) -> None:
        from safetensors import safe_open

        for shard in sorted(self.folder.glob("*.safetensors")):
            with safe_open(str(shard), framework="numpy") as handle:
                if (handle.metadata() or {}).get("identity") != self.identity:
                    continue  # a shard of other settings (prefix clash): never trust it
                keys, features = handle.get_tensor("keys"), handle.get_tensor("features")
            self.store.update(zip(map(bytes, keys), features))

    def _write_shard(self, keys: list[bytes], features: np.ndarray) -> None:
        from safetensors.numpy import save

        name = hashlib.sha256(b"".join(keys)).hexdigest()[:24]
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)
        with atomic_write(self.folder / f"{name}.safetensors", "wb") as handle:
            handle.write(save({"keys": key_array, "features": features}, metadata={"identity": self.identity}))

    def cached(self, texts: list[str]) -> int:
        """How many distinct texts of `texts` already have features (in memory or from the shards on disk)."""
        return sum(_text_key(t) in self.store for t in set(texts))

    def features(self, texts: list[str]) -> np.ndarray:
        """(n, F) features of `texts`; only texts never seen with this backbone, length and layers are encoded."""
        keys = [_text_key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self.store))
        text_of = dict(zip(keys, texts))
        steps = Steps("encode", len(missing), f"encoder features ({self.encoder.max_length} tokens)")
        for start in range(0, len(missing), SHARD_TEXTS):  # one shard per chunk: an interrupted run resumes
            chunk = missing[start : start + SHARD_TEXTS]
            fresh = self.encoder.encode([text_of[k] for k in chunk], steps.advance)  # (chunk, F)
            self.store.update(zip(chunk, fresh))
            self.encoded += len(chunk)
            if self.folder:
                self._write_shard(chunk, fresh)
        rows = np.stack([self.store[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)
        self._forget()
        return rows

    def _forget(self) -> None:
        """Drop the oldest texts past `memory_texts` (dicts keep insertion order); a later call encodes them again."""
        for key in list(itertools.islice(self.store, max(0, len(self.store) - self.memory_texts))):
            del self.store[key]

    def pair_features(self, pairs: pd.DataFrame) -> np.ndarray:
        """(n, 2F): original-text features then rewritten-text features, per row."""
        per_text = self.features(pair_texts(pairs))  # (2n, F)
        return np.concatenate([per_text[: len(pairs)], per_text[len(pairs) :]], axis=1)


# One cache per encoder identity, device and cache folder in a process: the gate's inner folds, the final fit and
# cv's folds build fresh regressors over the same texts, which would otherwise load the encoder and read every
# shard again (or, with the disk cache off, encode every text again) each time.
_SHARED_CACHES: dict[tuple[str, str, str], FeatureCache] = {}


def shared_cache(encoder: FrozenEncoder, folder: Path | None) -> FeatureCache:
    """The process's `FeatureCache` for `encoder`'s features under `folder` (None: in memory only), built on first use."""
    key = (encoder.identity, encoder.device, str(folder or ""))
    if key not in _SHARED_CACHES:
        _SHARED_CACHES[key] = FeatureCache(encoder, folder)
    return _SHARED_CACHES[key]


def sentence_features(model, folder: Path, device: str = "cpu") -> FeatureCache | None:
    """The process's `FeatureCache` that serves the SentenceTransformer `model` loaded from `folder` (its vectors are
    the normalised first block), when it is exactly a transformer stored at the folder's root, mean pooling and
    normalisation (the packaged MiniLM is); else None. Features go to the default cache folder, as the regressor's."""
    modules = folder / "modules.json"
    if [type(module).__name__ for module in model] != ["Transformer", "Pooling", "Normalize"] or not modules.is_file():
        return None
    at_root = json.loads(modules.read_text(encoding="utf-8"))[0].get("path", "") == ""
    transformer, pooling = model[0], model[1]
    if not at_root or pooling.pooling_mode != "mean" or getattr(transformer, "do_lower_case", False):
        return None
    encoder = FrozenEncoder(str(folder), int(transformer.max_seq_length), device, layers=DEFAULT_LAYERS)
    return shared_cache(encoder, cache_dir())
