"""Method `regressor`: a frozen encoder's features -> BatchNorm MLP head -> the metric embedding, decoded by a prompt bank."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from promptrec.data import ORIGINAL, PROMPT, REWRITTEN, DataError, atomic_write
from promptrec.features import DEFAULT_LAYERS, FeatureCache, FrozenEncoder, pair_texts, shared_cache
from promptrec.methods.bank import BANK_TEXTS, PromptBank, build_bank, check_dim
from promptrec.methods.base import UsesEmbedder, check_view, load_saved, safe_child, save_config, text_view
from promptrec.models import cache_dir, pick_device
from promptrec.vectors import direction, unit_rows

log = logging.getLogger(__name__)

HEAD_WEIGHTS = "head.safetensors"
LOSSES = ("cosine", "score")
PAIRS = ("concat", "interact")


# The defaults are the offline CPU setup; configs/regressor_original.yaml holds the original solution's
# (deberta-v3-large on a GPU with m = 42, lr 5e-6, batch 4 for 10 epochs, decoding nothing: on one CPU core a
# 16k-wide head (42 x 384) at batch 4 takes minutes per epoch). Offline we train from cached MiniLM features
# with a narrow head (m = 2), lr 1e-3, batch 16 and 3 epochs: on the ~2,500 training rows of a CV fold the
# head overfits after 2-3 epochs whatever its width (fold-0 embedding-space cos**3, proxy: m=8 at 30 epochs
# 0.104, m=2 at 3 epochs 0.168), and an epoch takes about a second. Decoding adds the `bank` method's
# direction query with weight 2 (fold 0 / fold 1 decoded cos**3, proxy, training-prompt bank: w=0 0.120 /
# -, w=1 0.177 / 0.186, w=2 0.192 / 0.195, w=3 - / 0.187); the original decoded nothing (w=0).
# Under leave-one-source-out CV (six shared files, 400 held-out rows per fold, proxy; `bench/regressor_loso.py`),
# the rewrite's first 32 tokens as their own block (lead-ins and titles, diluted in the full text's mean) win on
# 5 of 5 held-out sources, 0.0804 -> 0.0870 (64 tokens: 0.0847; with all three prompt lists in the bank:
# 0.0953 -> 0.1029, 64 tokens 0.1002). Beside the 64-token block, pair=interact (+0.0001), m=4 (+0.0014) and
# w=1 or 3 (-0.002) did not earn a default, nor did all-mpnet-base-v2 as the backbone (80 rows per file: +0.003
# without the head block, -0.001 with it, at 5x MiniLM's encoding time).
@dataclass
class RegressorConfig:
    """Options of the regressor; the defaults are the offline CPU setup (configs/ holds the original's)."""
    model_fields = ("backbone", "embedder")  # NamesModels: the fields naming a model, which bundle carries

    backbone: str = "minilm"  # frozen encoder (AutoModel): offline short name, hub id or folder
    embedder: str = "proxy"  # metric embedder whose normalised prompt embedding is the target
    max_length: int = 256  # tokens read per text (MiniLM was trained on 256)
    layers: list[int] = field(default_factory=lambda: list(DEFAULT_LAYERS))  # hidden layers mean-pooled per text
    pair: str = "concat"  # concat: (original, rewritten); interact: also rewritten - original and their product
    head_tokens: int = 32  # >0: the rewrite's first N tokens (at most max_length) as one more feature block
    multiplier: int = 2  # m: head width is m * D (D = embedder dim); the original used 42
    loss: str = "score"  # score: -mean(cos**3), the metric itself (5-fold CV preferred it); cosine: mean(1 - cos)
    lr: float = 1e-3  # AdamW learning rate
    betas: list[float] = field(default_factory=lambda: [0.85, 0.999])  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 0.005  # AdamW weight decay
    epochs: int = 3  # passes over the training rows
    batch_size: int = 16  # rows per optimiser step
    grad_clip: float = 250000.0  # max gradient norm (the original's value: effectively only guards overflow)
    seed: int = 42  # head initialisation and shuffling
    amp: bool = True  # encoder under float16 autocast on a GPU, bf16 on a CPU that computes bf16 natively; head: GPU only
    device: str = "auto"  # auto (cuda if present), cpu, cuda, cuda:1...
    encode_batch_size: int = 16  # texts per encoder forward pass
    feature_cache: bool = True  # keep encoder features on disk, keyed by text hash + backbone + max_length
    cache_dir: str = ""  # feature and bank cache ("" = PROMPTREC_CACHE or ~/.cache/promptrec)
    bank_files: list[str] = field(default_factory=list)  # prompt lists added to the decoding bank
    training_prompts: bool = True  # put the training prompts in the decoding bank
    # the written prompts won on 5 of 5 held-out sources, 0.0864 -> 0.1000 (`bench regressor_loso`, docs/results.md)
    written: bool = True  # put the prompts this project wrote (promptrec.prompts) in the decoding bank
    top_k: int = 1  # decode to the nearest bank prompt, or the k nearest joined by spaces
    view: str = "raw"  # the rewrite as read in fit and predict: raw, or stripped of lead-ins, titles and refusals
    direction_weight: float = 2.0  # decode query = prediction + w * unit(emb(rewritten) - emb(original)), metric embedder

    def __post_init__(self):
        check_view("regressor", self.view)
        if self.loss not in LOSSES:
            raise DataError(f"regressor: loss must be one of {', '.join(LOSSES)}, not '{self.loss}'")
        if self.pair not in PAIRS:
            raise DataError(f"regressor: pair must be one of {', '.join(PAIRS)}, not '{self.pair}'")
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise DataError(f"regressor: layers must be distinct hidden-layer indices, not {self.layers}")
        if self.head_tokens < 0:
            raise DataError(f"regressor: head_tokens must be 0 (off) or more, not {self.head_tokens}")
        for name in ("max_length", "multiplier", "epochs", "batch_size", "top_k", "encode_batch_size"):
            if getattr(self, name) < 1:
                raise DataError(f"regressor: {name} must be at least 1, not {getattr(self, name)}")


def pair_block(concat: np.ndarray, pair: str) -> np.ndarray:
    """(n, 2F) `[original, rewritten]` as is (concat), or (n, 4F) `[o, r, r - o, o * r]` (interact): the difference
    and product spell out what changed, which a narrow head would otherwise have to learn from the two halves."""
    if pair == "concat":
        return concat
    original, rewritten = np.split(concat, 2, axis=1)
    return np.concatenate([original, rewritten, rewritten - original, original * rewritten], axis=1)


def build_head(feature_dim: int, target_dim: int, multiplier: int, init_std: float):
    """`Linear(F, m*D) -> BatchNorm1d(m*D) -> ReLU -> Linear(m*D, D)`, weights normal(0, init_std), zero biases."""
    from torch import nn

    width = multiplier * target_dim
    head = nn.Sequential(nn.Linear(feature_dim, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, target_dim))
    for layer in (head[0], head[3]):
        nn.init.normal_(layer.weight, mean=0.0, std=init_std)
        nn.init.zeros_(layer.bias)
    return head


def head_loss(pred, target, kind: str):
    """cosine: mean(1 - cos); score: -mean(cos**3)."""
    import torch.nn.functional as F

    cos = F.cosine_similarity(pred.float(), target.float(), dim=-1)  # (batch,)
    return (1 - cos).mean() if kind == "cosine" else -(cos**3).mean()


def make_optimizer(head, config: RegressorConfig):
    """AdamW with the config's lr, betas, eps and weight decay; fused: one kernel per step instead of six passes over
    the head's 2M weights (an epoch on 2,000 rows: 2.41 -> 0.82 s CPU, weights equal to 1e-6; it was most of a
    warm-cache `fit`)."""
    import torch

    return torch.optim.AdamW(head.parameters(), lr=config.lr, betas=tuple(config.betas), eps=config.eps,
                             weight_decay=config.weight_decay, fused=True)


def train_epoch(head, optimizer, batches: Iterable, config: RegressorConfig, device: str, scaler=None) -> float:
    """One pass over `(features, targets)` batches; returns the mean loss. Batches of one row are skipped (BatchNorm)."""
    import torch

    head.train()
    total, count = 0.0, 0
    autocast = config.amp and device.startswith("cuda")
    for features, targets in batches:
        if len(features) < 2:
            continue
        features, targets = features.to(device), targets.to(device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
            loss = head_loss(head(features), targets, config.loss)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), config.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        total += loss.item() * len(features)
        count += len(features)
    return total / max(count, 1)


def shuffled_batches(features, targets, batch_size: int, generator) -> Iterator:
    """`(features, targets)` tensor batches in a fresh random order."""
    import torch

    order = torch.randperm(len(features), generator=generator)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield features[index], targets[index]


def train_head(features: np.ndarray, targets: np.ndarray, config: RegressorConfig, init_std: float = 0.02,
               device: str = "cpu"):
    """Fit a fresh head on cached (n, F) features to (n, D) targets; returns (head, loss per epoch)."""
    import torch

    torch.manual_seed(config.seed)
    head = build_head(features.shape[1], targets.shape[1], config.multiplier, init_std).to(device)
    optimizer = make_optimizer(head, config)
    scaler = torch.amp.GradScaler("cuda") if config.amp and device.startswith("cuda") else None
    generator = torch.Generator().manual_seed(config.seed)
    x, y = torch.from_numpy(features), torch.from_numpy(targets)
    losses = [train_epoch(head, optimizer, shuffled_batches(x, y, config.batch_size, generator), config, device, scaler)
              for _ in range(config.epochs)]
    return head.eval(), losses


def head_predict(head, features: np.ndarray, device: str = "cpu", batch_size: int = 256) -> np.ndarray:
    """(n, D) unit-normalised predicted embeddings."""
    import torch

    head.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            chunks.append(head(torch.from_numpy(features[start : start + batch_size]).to(device)).float().cpu().numpy())
    return unit_rows(np.concatenate(chunks) if chunks else np.zeros((0, head[3].out_features), dtype=np.float32))


@dataclass
class RegressorReport:
    """What decoding costs: embedding-space score, decoded score and the bank's best possible score."""

    embedding_score: float  # mean cos**3 of predicted vs true embedding
    decoded_score: float  # mean cos**3 of the decoded prompt's embedding vs the true one
    bank_oracle: float  # mean over rows of the best cos**3 any single bank prompt reaches
    rows: int
    bank_size: int
    label: str  # embedder that made every number

    def lines(self) -> list[str]:
        """Human-readable lines, each naming the embedder."""
        return [
            f"embedding-space score {self.embedding_score:.4f}  [{self.label}, {self.rows} rows]",
            f"decoded score         {self.decoded_score:.4f}  [{self.label}, {self.rows} rows]",
            f"bank oracle           {self.bank_oracle:.4f}  [{self.label}, {self.bank_size} prompts]",
        ]


class RegressorMethod(UsesEmbedder):
    """Predicts the metric embedding of the hidden prompt from frozen-encoder features, then decodes it with a bank."""

    name = "regressor"
    Config = RegressorConfig

    def __init__(self, config: RegressorConfig | None = None):
        self.config = config or RegressorConfig()
        self.head = None
        self.bank: PromptBank | None = None
        self.losses: list[float] = []
        self._cache: FeatureCache | None = None
        self._head_cache: FeatureCache | None = None

    @property
    def device(self) -> str:
        """The torch device the encoder and head run on."""
        return pick_device(self.config.device)

    def _new_cache(self, max_length: int) -> FeatureCache:
        encoder = FrozenEncoder(self.config.backbone, max_length, self.device, self.config.encode_batch_size,
                                self.config.amp, self.config.layers)
        return shared_cache(encoder, cache_dir(self.config.cache_dir) if self.config.feature_cache else None)

    @property
    def cache(self) -> FeatureCache:
        """The feature cache of this backbone, max_length and layers."""
        if self._cache is None:
            self._cache = self._new_cache(self.config.max_length)
        return self._cache

    @property
    def head_cache(self) -> FeatureCache:
        """The feature cache of the rewrites' first `head_tokens` tokens (at most max_length)."""
        if self._head_cache is None:
            self._head_cache = self._new_cache(min(self.config.head_tokens, self.config.max_length))
        return self._head_cache

    def features(self, pairs: pd.DataFrame) -> np.ndarray:
        """(n, F) head input: `pair_block` of both texts' features, then (head_tokens > 0) the rewrite's head."""
        blocks = [pair_block(self.cache.pair_features(pairs), self.config.pair)]
        if self.config.head_tokens:
            blocks.append(self.head_cache.features([str(t) for t in pairs[REWRITTEN]]))
        return np.concatenate(blocks, axis=1)

    def fit(self, triples: pd.DataFrame) -> None:
        """Train the head on (features, prompt embedding) pairs and embed the decoding bank."""
        triples = text_view(triples, self.config.view)
        prompts = [str(p) for p in triples[PROMPT].tolist()]
        texts = pair_texts(triples)
        distinct, cached = len(set(texts)), self.cache.cached(texts)
        # shards written by an interrupted run are read back here, so a rerun only encodes the rest
        log.info("regressor: features for %d texts: %d from cache, %d to encode", distinct, cached, distinct - cached)
        features = self.features(triples)  # (n, F)
        targets = self.embedder.encode(prompts)  # (n, D) unit rows
        self.head, self.losses = train_head(features, targets, self.config, self.cache.encoder.initializer_range(),
                                            self.device)
        self.bank = build_bank(self.embedder, prompts if self.config.training_prompts else [],
                               self.config.bank_files, self.config.cache_dir, self.config.written)

    def head_embeddings(self, pairs: pd.DataFrame) -> np.ndarray:
        """(n, D) unit prompt embeddings as the head predicts them."""
        if self.head is None:
            raise DataError("regressor: not trained; run `promptrec train regressor DATA -o DIR` first")
        features = self.features(text_view(pairs, self.config.view))
        expected = self.head[0].in_features
        if features.shape[1] != expected:
            raise DataError(f"regressor: backbone '{self.config.backbone}' with these feature options gives "
                            f"{features.shape[1]} features per pair but the head expects {expected}")
        return head_predict(self.head, features, self.device)

    def decode_queries(self, pairs: pd.DataFrame, pred: np.ndarray) -> np.ndarray:
        """(n, D) bank queries: the prediction, plus `direction_weight` times the `bank` method's direction query."""
        if not self.config.direction_weight:
            return pred
        pairs = text_view(pairs, self.config.view)
        shift = direction(self.embedder.encode_texts([str(t) for t in pairs[REWRITTEN]]),
                          self.embedder.encode_texts([str(t) for t in pairs[ORIGINAL]]))  # (n, D)
        return pred + self.config.direction_weight * shift

    def predict_embeddings(self, pairs: pd.DataFrame) -> np.ndarray:
        """(n, D) unit embeddings that decoding searches with: the head's, blended with the direction query.

        The ensemble's `select` mode uses them as its per-row reference.
        """
        return unit_rows(self.decode_queries(pairs, self.head_embeddings(pairs)))

    def bank_queries(self, pairs: pd.DataFrame) -> np.ndarray:
        """(n, D) what `predict` searches the bank with (`explain` lists the nearest prompts)."""
        return self.predict_embeddings(pairs)

    def predict(self, pairs: pd.DataFrame) -> list[str]:
        """The bank prompt(s) nearest to each (blended) predicted embedding (bank prompts are never blank)."""
        return self.bank.decode(self.predict_embeddings(pairs), self.config.top_k)

    def report(self, triples: pd.DataFrame) -> RegressorReport:
        """Score predictions on labelled triples in embedding space, decoded, and against the bank oracle."""
        from promptrec.metric import score, sharpened_cosine

        pred = self.head_embeddings(triples)
        truth = self.embedder.encode([str(p) for p in triples[PROMPT].tolist()])
        decoded = self.predict(triples)
        return RegressorReport(
            embedding_score=float(sharpened_cosine(pred, truth).mean()),
            decoded_score=score(decoded, triples[PROMPT].tolist(), self.embedder).mean,
            bank_oracle=float(self.bank.oracle(truth).mean()),
            rows=len(triples), bank_size=len(self.bank), label=self.embedder.label,
        )

    def save(self, folder: Path) -> None:
        """Write method.json, head.safetensors (weights + BatchNorm statistics) and the embedded bank."""
        from safetensors.torch import save

        if self.head is None:
            raise DataError("regressor: nothing to save; fit it first")
        folder = Path(folder)
        save_config(folder, self.name, self.config)
        state = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        meta = {"feature_dim": str(self.head[0].in_features), "target_dim": str(self.head[3].out_features),
                "encoder": self.cache.identity}
        with atomic_write(folder / HEAD_WEIGHTS, "wb") as handle:
            handle.write(save(state, metadata=meta))
        self.bank.save(folder)

    @classmethod
    def load(cls, folder: Path) -> "RegressorMethod":
        """Rebuild head and bank from safetensors; an embedder of another dimension is a one-line error."""
        from safetensors import safe_open

        folder = Path(folder)
        method = cls(load_saved(folder, cls)[0])
        weights = safe_child(folder, HEAD_WEIGHTS)
        if not weights.is_file() or not (folder / BANK_TEXTS).is_file():
            raise DataError(f"{folder}: incomplete regressor (needs {HEAD_WEIGHTS} and {BANK_TEXTS})")
        with safe_open(str(weights), framework="pt") as handle:
            meta = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        feature_dim, target_dim = int(meta.get("feature_dim", 0)), int(meta.get("target_dim", 0))
        first = state.get("0.weight")
        if first is None or not target_dim or tuple(first.shape) != (target_dim * method.config.multiplier, feature_dim):
            raise DataError(f"{weights}: head shapes do not match method.json (multiplier {method.config.multiplier})")
        method.bank = PromptBank.load(folder)
        if method.bank.dim != target_dim:
            raise DataError(f"{folder}: head predicts {target_dim}-dim embeddings but the bank has {method.bank.dim}")
        check_dim(method.bank, method.embedder, str(folder))
        method.head = build_head(feature_dim, target_dim, method.config.multiplier, 0.02)
        method.head.load_state_dict(state)
        method.head.to(method.device).eval()
        return method

