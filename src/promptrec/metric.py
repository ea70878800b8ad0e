"""The competition metric: sentence embeddings, sharpened cosine similarity (cos**3), mean over rows."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from promptrec.data import DataError, atomic_write
from promptrec.models import OFFICIAL_EMBEDDER, OFFICIAL_LABEL, PROXY_LABEL, proxy_embedder_path

EXPONENT = 3


def sharpen(cos: np.ndarray) -> np.ndarray:
    """The metric's cos**3 of cosines of any shape, clipped to [-1, 1] first (rounding can pass 1); the odd power
    keeps the sign. Every score in the package is taken through here."""
    return np.clip(cos, -1.0, 1.0) ** EXPONENT


def sharpened_cosine(pred_emb: np.ndarray, true_emb: np.ndarray) -> np.ndarray:
    """Row-wise cos**3 of two (n, d) arrays (`sharpen` of their row-wise cosines)."""
    pred_emb, true_emb = np.atleast_2d(pred_emb), np.atleast_2d(true_emb)
    norms = np.linalg.norm(pred_emb, axis=1) * np.linalg.norm(true_emb, axis=1)
    return sharpen(np.einsum("nd,nd->n", pred_emb, true_emb) / np.maximum(norms, 1e-12))


def distinct_texts(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct texts, sorted, and each input's index into them (what `np.unique` returns), found by hashing:
    `np.unique` on a text array copies every text at the longest one's width (14k texts with one of 26k
    characters: 1.4 GB per copy, 5.5 GB at its peak)."""
    strings = [str(t) for t in texts]
    unique = sorted(set(strings))
    index = {text: i for i, text in enumerate(unique)}
    return unique, np.fromiter((index[t] for t in strings), dtype=np.intp, count=len(strings))


def _sentencepiece_of(model):
    """The sentencepiece processor of a T5-style model folder (spiece.model), else None."""
    folder = Path(getattr(model.tokenizer, "name_or_path", "") or ".")
    if not (folder / "spiece.model").is_file():
        return None
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(folder / "spiece.model"))


class Embedder:
    """A SentenceTransformer that returns L2-normalised rows and names itself in every score."""

    def __init__(self, model, label: str, batch_size: int = 64, memo_size: int = 200_000, text_features=None):
        self.model = model
        self.label = label
        self.batch_size = batch_size
        # `features.sentence_features` of this model, when it has one: long texts go through the encoder pass the
        # regressor shares (and its precision); prompts and scores never do.
        self.text_features = text_features
        # Texts embedded before, kept in memory: cv, the gate's inner folds and several members embed the same
        # originals, rewrites and prompts again and again. Oldest entries go first once `memo_size` is reached.
        self.memo: dict[str, np.ndarray] = {}
        self.memo_size = memo_size
        # The competition's TF scorer read "</s>" or "[SEP]" in a prediction as plain characters.
        model.tokenizer.split_special_tokens = True
        # Hugging Face's unigram port still matches "</s>" from text; sentencepiece itself never does.
        self.sentencepiece = _sentencepiece_of(model)

    @property
    def dim(self) -> int:
        """Embedding dimension (768 official, 384 proxy)."""
        return int(self.model.get_embedding_dimension())

    @property
    def is_official(self) -> bool:
        """True only for the competition's sentence-t5-base."""
        return self.label == OFFICIAL_LABEL

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """(n, dim) float32 unit rows; each distinct text is embedded once (and remembered, see `memo`)."""
        unique, inverse = distinct_texts(texts)
        if len(unique) > self.memo_size:  # more than the memo holds: no point keeping any of it
            return self.encode_uncached(unique, progress)[inverse]
        new = [text for text in unique if text not in self.memo]
        if new:
            for text, row in zip(new, self.encode_uncached(new, progress)):
                self.memo[text] = row
            wanted = set(unique)
            excess = len(self.memo) - self.memo_size
            for text in [t for t in self.memo if t not in wanted][: max(0, excess)]:
                del self.memo[text]  # oldest first, never a text this call returns
        rows = np.stack([self.memo[text] for text in unique]) if len(unique) else np.zeros((0, self.dim), np.float32)
        return rows[inverse]

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) unit rows of long texts (originals, rewrites) read as features: through the pass the regressor
        shares when the model allows it (bf16 on a CPU that computes it natively: cosine to float32 ~0.99998),
        else `encode`. Scores never come from here."""
        if self.text_features is None:
            return self.encode(texts)
        features = self.text_features.features([str(t) for t in texts])[:, : self.dim]  # (n, H): the last layer's mean
        return (features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def encode_uncached(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """(n, dim) float32 unit rows of `texts`, computed now."""
        if self.sentencepiece is not None:
            return np.asarray(self._encode_sentencepiece(texts), dtype=np.float32)
        return np.asarray(self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                            convert_to_numpy=True, show_progress_bar=progress), dtype=np.float32)

    def _encode_sentencepiece(self, texts: list[str]) -> np.ndarray:
        """Tokenize with sentencepiece (as TF sentence-t5 did: pieces + EOS), then run the modules."""
        import torch

        sp, limit = self.sentencepiece, self.model.max_seq_length
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            ids = [sp.encode(text)[: limit - 1] + [sp.eos_id()] for text in texts[start : start + self.batch_size]]
            width = max(map(len, ids))
            input_ids = torch.tensor([row + [sp.pad_id()] * (width - len(row)) for row in ids])
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
            with torch.inference_mode():
                features = self.model({"input_ids": input_ids.to(self.model.device), "attention_mask": mask.to(self.model.device)})
            chunks.append(torch.nn.functional.normalize(features["sentence_embedding"].float(), dim=-1).cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), dtype=np.float32)


def load_embedder(spec: str = "proxy", device: str | None = None) -> Embedder:
    """`official` (sentence-t5-base from the hub), `proxy` (packaged MiniLM) or a local model folder; loaded once per
    process and shared, with its memo of embedded texts, by every method and fold that names it."""
    return _shared_embedder(spec, OFFICIAL_EMBEDDER if spec == "official" else spec, device)


@lru_cache(maxsize=8)
def _shared_embedder(spec: str, source: str, device: str | None) -> Embedder:
    from sentence_transformers import SentenceTransformer

    from promptrec.features import sentence_features

    if spec == "proxy":
        folder = proxy_embedder_path()
        model = SentenceTransformer(str(folder), device=device or "cpu")
        return Embedder(model, PROXY_LABEL, text_features=sentence_features(model, folder, device or "cpu"))
    if spec == "official":
        try:
            model = SentenceTransformer(source, device=device)
        except Exception as err:  # hub errors come in many types
            raise DataError(
                f"cannot load the official embedder {source} ({type(err).__name__}); "
                "offline, use --embedder proxy (packaged MiniLM) or --embedder PATH to a local copy"
            ) from None
        return Embedder(model, OFFICIAL_LABEL)
    path = Path(spec)
    if not (path / "modules.json").is_file():
        raise DataError(f"{path}: not a SentenceTransformer folder (no modules.json); use official, proxy or a folder")
    label = OFFICIAL_LABEL if path.name == "sentence-t5-base" else f"local ({path})"
    model = SentenceTransformer(str(path), device=device or "cpu")
    return Embedder(model, label, text_features=sentence_features(model, path, device or "cpu"))


def _encode(embedder: Embedder, texts: list[str], progress: bool) -> np.ndarray:
    """`embedder.encode`, asking for a progress bar only when wanted: plain `encode(texts)` is the interface."""
    return embedder.encode(texts, progress=True) if progress else embedder.encode(texts)


@dataclass
class ScoreResult:
    """Mean sharpened cosine similarity, per-row scores, and the embedder that made them."""

    mean: float
    per_row: np.ndarray
    label: str

    def __str__(self) -> str:
        return f"score {self.mean:.4f}  [{self.label}, {len(self.per_row)} rows]"


def score(predictions: Sequence[str], truths: Sequence[str], embedder: Embedder,
          progress: bool = False) -> ScoreResult:
    """Score predicted prompts against true ones, as the competition did."""
    if len(predictions) != len(truths):
        raise DataError(f"{len(predictions)} predictions but {len(truths)} true prompts")
    emb = _encode(embedder, list(predictions) + list(truths), progress)
    per_row = sharpened_cosine(emb[: len(predictions)], emb[len(predictions) :])
    return ScoreResult(float(per_row.mean()), per_row, embedder.label)


def score_files(pred_path: str | Path, truth_path: str | Path, embedder: Embedder,
                per_row_path: str | Path | None = None, progress: bool = False) -> ScoreResult:
    """Score a submission against a truth file, matching rows by id; optionally write per-row scores."""
    from promptrec.data import ID, PROMPT, read_table, write_table

    pred = read_table(pred_path, columns=(ID, PROMPT))
    truth = read_table(truth_path, columns=(ID, PROMPT))
    blank = (pred[PROMPT].str.strip() == "").to_numpy()
    if blank.any():
        raise DataError(f"{pred_path}, row {int(blank.argmax()) + 1}, column '{PROMPT}': blank prediction (an error in the competition)")
    missing = sorted(set(truth[ID]) - set(pred[ID]))
    if missing:
        raise DataError(f"{pred_path}: column '{ID}': no prediction for id '{missing[0]}' ({len(missing)} missing)")
    predicted = dict(zip(pred[ID], pred[PROMPT]))
    result = score([predicted[i] for i in truth[ID]], truth[PROMPT].tolist(), embedder, progress)
    if per_row_path:
        import pandas as pd

        write_table(per_row_path, pd.DataFrame({ID: truth[ID], "score": result.per_row, "embedder": result.label}))
    return result


def text_digest(texts: Sequence[str]) -> str:
    """A SHA-256 over the texts, to check that a cache belongs to them."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\x00")
    return digest.hexdigest()


def save_embeddings(path: str | Path, texts: Sequence[str], embedder: Embedder, progress: bool = False) -> np.ndarray:
    """Embed `texts` and cache them as PATH (.npy) plus PATH.json naming embedder and texts."""
    path = Path(path)
    if path.suffix != ".npy":
        raise DataError(f"{path}: the embedding cache must end in .npy")
    emb = _encode(embedder, list(texts), progress)
    with atomic_write(path, "wb") as handle:
        np.save(handle, emb, allow_pickle=False)
    with atomic_write(path.with_suffix(".json")) as handle:
        json.dump({"embedder": embedder.label, "rows": len(texts), "sha256": text_digest(texts)}, handle)
    return emb


def load_embeddings(path: str | Path, texts: Sequence[str], embedder: Embedder) -> np.ndarray | None:
    """The cached embeddings if they match these texts and this embedder, else None."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("embedder") != embedder.label or meta.get("sha256") != text_digest(texts):
        return None
    return np.load(path, allow_pickle=False)
