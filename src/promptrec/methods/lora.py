"""Method `lora`: a causal LM fine-tuned with a LoRA adapter to write the rewrite prompt.

The model reads an instruction holding the original and the rewritten text (each cut to a token
budget, head and tail kept) and learns to emit the prompt followed by EOS; the loss covers only the
prompt tokens. This module holds the options and the method (predict, save, load); `lora_template` the
template; `lora_train` the training loop; `llm.hf` the model loading and batched generation. The defaults train
SmolLM2 offline; configs/lora_*.yaml switch to the original solution's models.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from promptrec import checkpoint
from promptrec.clean import parse_generation
from promptrec.data import ORIGINAL, PROMPT, REWRITTEN, DataError, atomic_write
from promptrec.methods.base import (
    FALLBACK_PROMPT, UsesEmbedder, check_view, load_saved, never_blank, save_config, text_view,
)
from promptrec.methods.lora_template import render_input
from promptrec.models import bf16_autocast
from promptrec.splits import held_out

ADAPTER_DIR, TOKENIZER_DIR, MERGED_DIR, HISTORY_FILE = "adapter", "tokenizer", "merged", "history.json"


@dataclass
class LoraConfig:
    """Options of the lora method. Defaults: SmolLM2-135M offline (gemma3-270m: `--set model=gemma3-270m`)."""
    model_fields, extra = ("model", "embedder"), "llm"  # NamesModels, NeedsExtra: what bundle carries

    model: str = "smollm2"  # short offline name (smollm2, gemma3-270m), hub id, HF folder or .gguf file
    r: int = 8  # LoRA rank (8 small models, 16 for phi-2 and 7B)
    alpha: int = 16  # LoRA alpha; the update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the LoRA input
    target_modules: list[str] | None = None  # None: every attention and MLP projection of the architecture
    # 48 tokens per text: as good as 128 on held-out rows (0.1348 vs 0.1325 proxy, 60 updates), at half the cost.
    text_tokens: int = 48  # token budget of each text (original, rewritten); head and tail kept; 0: whole text
    prompt_tokens: int = 64  # training prompts are cut to this many tokens
    chat_template: bool = True  # wrap the instruction in the tokenizer's chat template when it has one
    batch_size: int = 4  # training rows per step and process
    # buckets: 2.45x train tokens/s with the other speed-ups (1.78x without) but held loss +0.02 after 8-24 updates
    bucket: bool = True  # batch rows of similar length together (little padding); the batches are shuffled
    grad_accum: int = 1  # steps accumulated per optimizer update
    lr: float = 2e-4  # AdamW learning rate, linear warm-up then linear decay
    warmup_ratio: float = 0.05  # share of the updates spent warming up
    weight_decay: float = 0.0  # AdamW weight decay on the adapter
    # Training stops at whichever limit comes first. Held-out Gemma sources gained up to 300 updates of batch 4
    # (README: lora learning curve); 300 updates take about 25 minutes on 2 CPU cores.
    epochs: int = 1  # at most this many passes over the training rows
    max_steps: int = 300  # at most this many optimizer updates (0: epochs alone decide)
    val_fraction: float = 0.1  # held-out share, split by original_text (0: no validation)
    val_rows: int = 64  # at most this many held-out rows are generated and scored per evaluation
    eval_steps: int = 0  # also evaluate every N updates (0: at epoch ends only)
    patience: int = 2  # evaluations without a better score before stopping (0: never stop early)
    embedder: str = "proxy"  # embedder of the validation score and of the fallback choice
    gradient_checkpointing: bool | None = None  # None: on GPU only
    bf16: bool | None = None  # bf16 weights + autocast; None: on a bf16 GPU; autocast alone on a native-bf16 CPU
    # eager: under bf16 autocast on CPU its backward beats SDPA's (1.23-1.43x, `promptrec bench lora_train`)
    attention: str | None = None  # training attention (eager, sdpa); None: eager under CPU autocast, else the model's
    view: str = "raw"  # the rewrite as read in fit and predict: raw, or stripped of lead-ins, titles and refusals
    seed: int = 0  # seeds initialisation, shuffling, dropout and the split
    max_new_tokens: int = 48  # generation stops here, at EOS or at the end of the first line
    num_beams: int = 1  # 1: greedy decoding
    infer_bf16: bool | None = None  # generate under bf16 autocast; None: on a bf16 GPU or a CPU with native bf16
    infer_batch_size: int = 16  # rows generated together (left padded, sorted by length)
    select_fallback: bool = True  # fit picks the fallback prompt: the best constant training prompt (needs the embedder)
    merge: bool = False  # save() also writes the merged model (safetensors) to merged/; load then uses it
    checkpoint_steps: int = 50  # write a resumable checkpoint every N optimizer updates (0: none)
    checkpoint_dir: str | None = None  # checkpoint folder; None: where `resume_in` says (`train`: OUTPUT.partial)

    def __post_init__(self):
        check_view("lora", self.view)
        for name in ("r", "alpha", "prompt_tokens", "batch_size", "grad_accum", "epochs", "val_rows",
                     "max_new_tokens", "num_beams", "infer_batch_size"):
            if getattr(self, name) < 1:
                raise DataError(f"lora: {name} must be at least 1, not {getattr(self, name)}")
        for name in ("text_tokens", "max_steps", "eval_steps", "patience", "checkpoint_steps"):
            if getattr(self, name) < 0:
                raise DataError(f"lora: {name} must be 0 or more, not {getattr(self, name)}")
        for name in ("dropout", "val_fraction", "warmup_ratio"):
            if not 0 <= getattr(self, name) < 1:
                raise DataError(f"lora: {name} must be in [0, 1), not {getattr(self, name)}")
        if self.lr <= 0:
            raise DataError(f"lora: lr must be positive, not {self.lr}")


class LoraMethod(UsesEmbedder):
    """Fine-tunes a LoRA adapter on a causal LM to write the prompt; generates it greedily."""

    name = "lora"
    Config = LoraConfig

    def __init__(self, config: LoraConfig | None = None):
        self.config = config or LoraConfig()
        self.model = None  # a PeftModel after fit/load, a plain model after a merged save/load
        self.tokenizer = None
        self.history: list[dict[str, float]] = []  # one entry per evaluation
        self.fallback_prompt = FALLBACK_PROMPT  # learned by fit (select_fallback): rows that clean to nothing get it
        self.resume_dir: Path | None = None  # checkpoint folder given by `resume_in`, when config.checkpoint_dir is unset
        self.start_dir: Path | None = None  # a finished run's saved state to train further (`continue_from`)
        # Called as on_update(updates, total) after every optimizer update (progress display; tests inject crashes).
        self.on_update: Callable[[int, int], None] | None = None
        self._newlines: list[int] | None = None

    def resume_in(self, folder: Path) -> None:
        """Checkpoint in `folder` unless `checkpoint_dir` is set; a rerun continues from the newest checkpoint."""
        self.resume_dir = Path(folder)

    def continue_from(self, folder: Path) -> None:
        """Let the next fit start from the training state saved with the lora method in `folder` (its adapter,
        optimizer, schedule position and data order) and train on up to the new max_steps / epochs."""
        state = Path(folder) / checkpoint.TRAIN_STATE
        if not checkpoint.has_checkpoint(state):
            raise DataError(f"{folder}: no {checkpoint.TRAIN_STATE}/ to continue from (only `promptrec train` and `fit` with "
                            "checkpoint_steps > 0 keep it)")
        self.start_dir = state

    def checkpoint_folder(self) -> Path | None:
        """Where training checkpoints go: `checkpoint_dir`, else the `resume_in` folder (None: no checkpoints)."""
        chosen = Path(self.config.checkpoint_dir) if self.config.checkpoint_dir else self.resume_dir
        return chosen if chosen and self.config.checkpoint_steps > 0 else None

    def fit(self, triples: pd.DataFrame) -> None:
        """Train the adapter (`lora_train.train`) on triples, validating on a held-out split grouped by
        original_text; with `select_fallback`, the best constant training prompt becomes the fallback prompt."""
        from promptrec.methods import lora_train

        rows = text_view(triples[triples[PROMPT].str.strip() != ""], self.config.view)
        if rows.empty:
            raise DataError("lora: no training rows with a non-blank rewrite_prompt")
        mask = held_out(rows[ORIGINAL].tolist(), self.config.val_fraction, self.config.seed)
        if mask.all():  # too few original texts to hold any out
            mask[:] = False
        train, held = rows[~mask], rows[mask].iloc[: self.config.val_rows]
        if self.config.select_fallback:
            from promptrec.methods.constant import best_constant

            self.fallback_prompt = best_constant(train[PROMPT].tolist(), self.embedder.encode)
        lora_train.train(self, train, held)

    def generate_raw(self, pairs: pd.DataFrame) -> list[str]:
        """Uncleaned completions, one per `original_text, rewritten_text` row; each stops at its first line break."""
        from promptrec.llm import hf

        if self.model is None:
            raise DataError("lora: the method is not trained; fit it or load a saved one")
        if self._newlines is None:
            self._newlines = hf.newline_ids(self.tokenizer)
        cfg = self.config
        pairs = text_view(pairs, cfg.view)
        inputs = [render_input(self.tokenizer, o, w, cfg) for o, w in zip(pairs[ORIGINAL], pairs[REWRITTEN])]
        device = str(next(self.model.parameters()).device)
        new_ids, _ = hf.generate_ids(self.model, self.tokenizer, inputs, cfg.max_new_tokens, cfg.infer_batch_size,
                                     num_beams=cfg.num_beams, stop_ids=self._newlines,
                                     bf16=bf16_autocast(cfg.infer_bf16, device))
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in new_ids]

    def predict(self, pairs: pd.DataFrame) -> list[str]:
        """One cleaned prompt per row; rows that clean to nothing get the learned fallback prompt."""
        return never_blank([parse_generation(t) for t in self.generate_raw(pairs)], self.fallback_prompt)

    def save(self, folder: Path) -> None:
        """Write method.json (with the fallback prompt), the adapter (safetensors), the tokenizer, history.json
        and, with merge, merged/; then move the run's last checkpoint to train_state/ (for `train --from`)."""
        from accelerate import PartialState
        from peft import PeftModel

        if self.model is None:
            raise DataError("lora: nothing to save; fit the method first")
        if not PartialState().is_main_process:
            return  # under `accelerate launch` every process trains; one writes
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        adapter = isinstance(self.model, PeftModel)  # False after a merge: a plain model
        if adapter:
            self.model.save_pretrained(folder / ADAPTER_DIR, safe_serialization=True, save_embedding_layers=False)
        self.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
        if self.config.merge:
            if adapter:
                self.model = self.model.merge_and_unload()
            self.model.save_pretrained(folder / MERGED_DIR, safe_serialization=True)
        with atomic_write(folder / HISTORY_FILE) as handle:
            json.dump(self.history, handle, indent=2)
        # A checkpoint folder belongs to this run, not to the saved method.
        save_config(folder, self.name, dataclasses.replace(self.config, checkpoint_dir=None),
                    state={"fallback_prompt": self.fallback_prompt})
        used = self.checkpoint_folder()
        if used and used.is_dir():  # the run is saved: its last checkpoint stays with it, the folder goes
            checkpoint.move(used, folder / checkpoint.TRAIN_STATE)

    @classmethod
    def load(cls, folder: Path) -> "LoraMethod":
        """Rebuild from method.json: merged/ alone, or the base weights plus adapter/ (no pickle)."""
        from promptrec.llm.hf import bf16_default, load_causal_lm, load_tokenizer
        from promptrec.models import pick_device

        folder = Path(folder)
        config, state = load_saved(folder, cls)
        method = cls(config)
        method.fallback_prompt = state.get("fallback_prompt", FALLBACK_PROMPT)
        device = pick_device()
        bf16 = bf16_default(device) if config.bf16 is None else config.bf16
        if config.merge and (folder / MERGED_DIR).is_dir():
            model = load_causal_lm(str(folder / MERGED_DIR), bf16, device)
        else:
            from peft import PeftModel

            if not (folder / ADAPTER_DIR / "adapter_model.safetensors").is_file():
                raise DataError(f"{folder}: no {ADAPTER_DIR}/adapter_model.safetensors in the saved lora method")
            model = PeftModel.from_pretrained(load_causal_lm(config.model, bf16, device), str(folder / ADAPTER_DIR))
        method.model = model.eval()
        method.tokenizer = load_tokenizer(str(folder / TOKENIZER_DIR))
        history = folder / HISTORY_FILE
        method.history = json.loads(history.read_text(encoding="utf-8")) if history.is_file() else []
        return method
