"""The training loop of method lora: accelerate (CPU, one GPU or several: `accelerate launch -m promptrec train
lora ...`), evaluation with early stopping, and checkpoints from which a killed run continues exactly.

`method` below is the `lora.LoraMethod` being fitted; `lora` imports this module, never the other way round."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from promptrec import checkpoint
from promptrec.data import ORIGINAL, PROMPT, REWRITTEN
from promptrec.llm.hf import bf16_default, load_causal_lm, load_tokenizer
from promptrec.methods.lora_template import IGNORE, encode_example
from promptrec.metric import text_digest
from promptrec.progress import Steps

log = logging.getLogger(__name__)

# options a resumed run may change: they do not alter what is trained (attention: only which kernel computes it)
RUN_ONLY = ("checkpoint_dir", "checkpoint_steps", "merge", "attention")
# Options that say how long to train, not how: a resumed or continued run may change them (a longer run re-plans the
# learning-rate schedule for its new total from where the saved one stopped).
LENGTH = ("max_steps", "epochs", "patience")
# Options added after runs were first saved, with the value that trains as those runs did (they batched in order).
ADDED = {"bucket": False, "view": "raw"}

# LoRA targets by config.model_type: every attention and MLP projection; unknown types get peft's "all-linear".
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGET_MODULES: dict[str, list[str]] = {
    "llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "gemma": _LLAMA_LIKE, "gemma3_text": _LLAMA_LIKE,
    "gemma3": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE, "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
}


@dataclass
class Progress:
    """Where training stands; every checkpoint holds it, so a rerun continues from there."""

    epoch: int = 0  # current epoch, from 0
    batch: int = 0  # batches of the current epoch already trained on (per process)
    updates: int = 0  # optimizer updates done
    stopped: bool = False  # early stopping ran out of patience
    best: float = -math.inf  # best validation score so far
    waited: int = 0  # evaluations since the best score
    loss: float = 0.0  # training loss summed since the last evaluation
    batches: int = 0  # batches summed into `loss`
    at: int = -1  # update of the last evaluation
    tokens: int = 0  # training tokens seen (tokens/s counts training time only, not evaluations)
    seconds: float = 0.0  # training time


class EpochOrder:
    """Row order of each epoch, a pure function of the seed and `epoch`, so a resumed run sees the same batches.

    With `lengths`, each run of `batch_size` rows holds rows of similar length (little padding): the shuffled rows
    are sorted by length (ties stay shuffled), cut into batches and the batches shuffled; a short batch comes last."""

    def __init__(self, rows: int, seed: int, lengths: list[int] | None = None, batch_size: int = 1):
        self.rows, self.seed, self.epoch = rows, seed, 0
        self.lengths, self.batch_size = None if lengths is None else np.asarray(lengths), batch_size

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.rows)
        if self.lengths is None:
            return iter(order.tolist())
        order = order[np.argsort(self.lengths[order], kind="stable")]
        whole = len(order) // self.batch_size
        batches = order[: whole * self.batch_size].reshape(whole, self.batch_size)[rng.permutation(whole)]
        return iter(batches.ravel().tolist() + order[whole * self.batch_size :].tolist())

    def __len__(self) -> int:
        return self.rows


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch of (input_ids, labels) into tensors."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id)  # (batch, width)
    labels = torch.full((len(rows), width), IGNORE)  # (batch, width)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (batch, width)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def batch_loss(model, batch: dict[str, Any]):
    """Mean cross-entropy of the label tokens, as `model(**batch).loss`. Logits are computed from the earliest
    label position on only: the vocabulary projection of the instruction, most of each row, is never scored."""
    import torch.nn.functional as F

    labels = batch["labels"]  # (batch, width)
    start = int((labels != IGNORE).int().argmax(1).min()) - 1  # the position that predicts the earliest label
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=labels.shape[1] - start).logits  # (batch, width - start, vocab)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, start + 1 :].flatten(), ignore_index=IGNORE)


def adamw(params: list, config) -> Any:
    """AdamW over the adapter; fused: one kernel for all of its ~400 small tensors, not a loop over them."""
    import torch

    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)


def manifest(config, rows: pd.DataFrame, processes: int) -> dict[str, Any]:
    """What a checkpoint must agree on to be continued: the training options, the data, the process count."""
    options = {k: v for k, v in dataclasses.asdict(config).items() if k not in RUN_ONLY + LENGTH}
    data = text_digest([f"{o}\x01{w}\x01{p}" for o, w, p in zip(rows[ORIGINAL], rows[REWRITTEN], rows[PROMPT])])[:16]
    return {"data": data, "processes": processes, **options}


def train(method, train_rows: pd.DataFrame, held: pd.DataFrame) -> None:
    """Train `method`'s adapter on `train_rows`, evaluating on `held` (may be empty); keep the best adapter.

    Sets method.model, .tokenizer and .history. With a checkpoint folder (`method.checkpoint_folder()`), a
    checkpoint is written every `checkpoint_steps` updates and a rerun with the same options and data continues
    from the newest one, taking exactly the steps an uninterrupted run would have taken."""
    from promptrec.models import bf16_autocast, pick_device, require

    require("peft")
    require("accelerate")
    import torch
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list, set_seed
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import get_linear_schedule_with_warmup

    cfg = method.config
    set_seed(cfg.seed)
    device = pick_device()
    bf16 = bf16_default(device) if cfg.bf16 is None else cfg.bf16  # bf16 weights: on a bf16 GPU
    # bf16 autocast also on a CPU that computes bf16 natively (float32 weights there: as fast, more precise).
    # It is entered in the loop, not through accelerate's mixed_precision, which is fixed once per process.
    autocast = bf16_autocast(cfg.bf16, device)
    accelerator = Accelerator(mixed_precision="no", gradient_accumulation_steps=cfg.grad_accum)
    folder = method.checkpoint_folder()
    run = manifest(cfg, pd.concat([train_rows, held]), accelerator.num_processes)
    # continuing a finished fit (unless this run was killed and resumes): its saved run had the same data and options
    start = method.start_dir if method.start_dir and not (folder and checkpoint.has_checkpoint(folder)) else None
    if start:
        checkpoint.check_run(start, run, "a finished training run", f"continue it on the same data with the same "
                             f"options (only {', '.join(LENGTH)} may change)", ADDED)
    if folder:
        checkpoint.open_run(folder, run, added=ADDED)
    base, tokenizer = load_causal_lm(cfg.model, bf16), load_tokenizer(cfg.model)
    encode = lambda f: [encode_example(tokenizer, o, w, p, cfg) for o, w, p in zip(f[ORIGINAL], f[REWRITTEN], f[PROMPT])]
    train_encoded, held_encoded = encode(train_rows), encode(held)

    loaded_attention = base.config._attn_implementation  # generation after training goes back to it
    base.set_attn_implementation(cfg.attention or ("eager" if autocast and device == "cpu" else loaded_attention))
    checkpointing = device == "cuda" if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing
    if checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    targets = cfg.target_modules or TARGET_MODULES.get(base.config.model_type, "all-linear")
    model = get_peft_model(base, PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                target_modules=targets, task_type="CAUSAL_LM"))
    lengths = [len(ids) for ids, _ in train_encoded] if cfg.bucket else None
    order = EpochOrder(len(train_encoded), cfg.seed, lengths, cfg.batch_size)
    # The loader's own generator: starting an epoch must not draw from the global one that dropout uses.
    loader = torch.utils.data.DataLoader(train_encoded, batch_size=cfg.batch_size, sampler=order,
                                         generator=torch.Generator().manual_seed(cfg.seed),
                                         collate_fn=lambda b: collate(b, tokenizer.pad_token_id))
    updates_per_epoch = math.ceil(len(loader) / max(1, accelerator.num_processes) / cfg.grad_accum)
    total = min(cfg.max_steps or math.inf, cfg.epochs * updates_per_epoch)  # whichever limit comes first
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, cfg)
    schedule = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    model, optimizer, loader, schedule = accelerator.prepare(model, optimizer, loader, schedule)
    method.tokenizer, method.history = tokenizer, []
    trainable = [(n, p) for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad]
    progress, best = Progress(), None  # best: the adapter of the best validation score so far
    if accelerator.is_main_process:
        log.info(f"lora: {cfg.model} r={cfg.r} alpha={cfg.alpha} on {accelerator.device} x{accelerator.num_processes}"
                 f" | train {len(train_encoded)} rows, held-out {len(held_encoded)} | {total} updates")
    found = checkpoint.latest(start or folder) if start or folder else None
    if found:
        progress, best = _restore(method, found, trainable, optimizer, schedule)
        progress.stopped = progress.stopped and 0 < cfg.patience <= progress.waited
        if accelerator.is_main_process:
            log.info(f"lora: {'continuing' if start else 'resuming'} from {start or folder} at update "
                     f"{progress.updates} of {total}")
    updates = Steps("train", total)
    updates.advance(progress.updates, "lora updates")

    def save_checkpoint() -> None:
        """Write the full training state (main process only; the others hold the same)."""
        if not accelerator.is_main_process:
            return
        optimizer_tensors, optimizer_parts = checkpoint.optimizer_parts(optimizer)
        tensors = {**{f"adapter/{n}": p for n, p in trainable}, **optimizer_tensors, **checkpoint.rng_tensors(),
                   **{f"best/{k}": v for k, v in (best or {}).items()}}
        state = {"progress": dataclasses.asdict(progress), "optimizer": optimizer_parts,
                 "schedule": schedule.state_dict(), "history": method.history}
        checkpoint.write(folder, tensors, state)

    def evaluate() -> bool:
        """Evaluate, keep the best adapter; True when patience ran out (agreed by every process)."""
        nonlocal best
        when = f"epoch {progress.epoch + 1} step {progress.updates}"
        score = _evaluate(method, accelerator, model, held_encoded, held, when, progress, autocast)
        progress.loss, progress.batches, progress.at = 0.0, 0, progress.updates
        stop = False
        if score is not None and score > progress.best:
            state = get_peft_model_state_dict(accelerator.unwrap_model(model), save_embedding_layers=False)
            best = {k: v.detach().cpu().clone() for k, v in state.items()}
            progress.best, progress.waited = score, 0
        elif score is not None:
            progress.waited += 1
            stop = bool(cfg.patience) and progress.waited >= cfg.patience
        model.train()
        return broadcast_object_list([stop])[0]

    while not progress.stopped and progress.updates < total and progress.epoch < cfg.epochs:
        order.epoch = progress.epoch
        model.train()
        batches = accelerator.skip_first_batches(loader, progress.batch) if progress.batch else loader
        for batch in batches:
            started = time.perf_counter()
            with accelerator.accumulate(model):
                with torch.autocast(accelerator.device.type, torch.bfloat16, enabled=autocast):
                    loss = batch_loss(model, batch)
                accelerator.backward(loss)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
            progress.loss += loss.item()
            progress.batches += 1
            progress.batch += 1
            progress.tokens += int(batch["attention_mask"].sum())
            progress.seconds += time.perf_counter() - started
            if not accelerator.sync_gradients:
                continue
            progress.updates += 1
            if method.on_update:
                method.on_update(progress.updates, total)
            updates.advance(1, "lora updates")
            if progress.updates >= total:
                break
            if cfg.eval_steps and progress.updates % cfg.eval_steps == 0 and evaluate():
                progress.stopped = True
                break
            if folder and progress.updates % cfg.checkpoint_steps == 0:
                save_checkpoint()
        else:  # the epoch ran to its end; evaluated unless `eval_steps` just did
            progress.stopped = progress.at != progress.updates and evaluate()
            progress.epoch, progress.batch = progress.epoch + 1, 0
            continue
        break
    if progress.at != progress.updates:
        evaluate()
    if folder:
        save_checkpoint()  # the finished state: a kill while saving the method re-trains nothing
    unwrapped = accelerator.unwrap_model(model)
    base.set_attn_implementation(loaded_attention)
    if best is not None:
        set_peft_model_state_dict(unwrapped, best)
    method.model = unwrapped.eval()
    accelerator.wait_for_everyone()


def _restore(method, found, trainable, optimizer, schedule) -> tuple[Progress, dict[str, Any] | None]:
    """Put a checkpoint's weights, optimizer, schedule, RNG and history back; its progress and best adapter."""
    import torch

    tensors, state = found
    with torch.no_grad():
        for name, param in trainable:
            param.copy_(tensors[f"adapter/{name}"])
    checkpoint.load_optimizer(optimizer, tensors, state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    checkpoint.restore_rng(tensors)
    method.history = state["history"]
    best = {k[len("best/"):]: v for k, v in tensors.items() if k.startswith("best/")}
    return Progress(**state["progress"]), best or None


def _evaluate(method, accelerator, model, held_encoded, held: pd.DataFrame, when: str,
              progress: Progress, autocast: bool) -> float | None:
    """Held-out loss and score, logged and added to method.history; the score (None without a held-out split)."""
    import torch

    train_loss = progress.loss / max(progress.batches, 1)
    tokens_per_s = progress.tokens / max(progress.seconds, 1e-9)
    entry = {"when": when, "step": progress.updates, "train_loss": round(train_loss, 4),
             "train_tokens_per_s": round(tokens_per_s, 1)}
    score = None
    if held_encoded and accelerator.is_main_process:
        inner = accelerator.unwrap_model(model).eval()
        batch_size = method.config.batch_size
        losses = []
        with torch.inference_mode():
            for start in range(0, len(held_encoded), batch_size):
                batch = collate(held_encoded[start : start + batch_size], method.tokenizer.pad_token_id)
                with torch.autocast(accelerator.device.type, torch.bfloat16, enabled=autocast):
                    losses.append(batch_loss(inner, {k: v.to(accelerator.device) for k, v in batch.items()}).item())
        method.model = inner
        preds = method.predict(held)
        from promptrec.metric import score as scs

        result = scs(preds, held[PROMPT].tolist(), method.embedder)
        score = result.mean
        entry.update(val_loss=round(float(np.mean(losses)), 4), val_score=round(score, 4), embedder=result.label)
        log.info(f"lora {when}: train loss {train_loss:.4f}  val loss {entry['val_loss']:.4f}  "
                 f"val score {score:.4f} [{result.label}, {len(preds)} rows]  {tokens_per_s:.0f} train tokens/s")
    elif accelerator.is_main_process:
        log.info(f"lora {when}: train loss {train_loss:.4f}  {tokens_per_s:.0f} train tokens/s")
    method.history.append(entry)
    return score
