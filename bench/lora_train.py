"""Training throughput of method lora at the offline default (SmolLM2-135M, batch 4, 48-token texts): today's
loop against the new one in one run, on the same real rows with the same seed, then each lever alone.

Old loop: shuffled batches, float32, logits at every position, AdamW looping over its tensors, SDPA attention.
New loop: length buckets, bf16 autocast on a CPU that computes bf16 natively, logits from the first label on,
fused AdamW, eager attention under CPU autocast.
Train tokens/s is the loop's own counter (non-pad tokens through forward, backward and update); with one thread
it runs on the process's CPU clock, so other jobs on a shared host do not count, with two on the wall clock.
Updates/s: updates 2..N over the same clock. Held loss: float32 cross-entropy of the prompt tokens of held
rows never trained on, after N updates; a second seed of the new loop shows the seed-to-seed noise.
Run: `promptrec bench lora_train` or `python bench/lora_train.py --updates 24 --lever-updates 4`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import pandas as pd

from promptrec.data import ID, ORIGINAL, PROMPT, REWRITTEN, TRIPLE_COLUMNS, read_table
from promptrec.models import bf16_autocast
from promptrec.methods import lora_train
from promptrec.methods.lora import LoraConfig, LoraMethod
from promptrec.methods.lora_template import encode_example
from promptrec.models import quiet_libraries, set_threads

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = ("gemma_1100", "gemma_rerun_994", "dolly_gemini_500", "gpt35_1080", "llama3_456", "gemma_wiki_2977")


def _rows(train: int, held: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`train` then `held` rows from each shared triple file, or a repeated built-in row when they are absent."""
    found = [DATA / f"{name}.csv" for name in FILES if (DATA / f"{name}.csv").is_file()]
    if found:
        tables = [read_table(path, TRIPLE_COLUMNS) for path in found]
        return (pd.concat([t.iloc[:train] for t in tables], ignore_index=True),
                pd.concat([t.iloc[train : train + held] for t in tables], ignore_index=True))
    row = {ID: "x", ORIGINAL: "The meeting moved to Thursday because the projector broke. " * 6,
           PROMPT: "Rewrite this as a pirate would say it.",
           REWRITTEN: "Arr, the meetin' be moved to Thursday, for the projector be broken! " * 6}
    table = pd.DataFrame([{**row, ID: str(i)} for i in range(6 * (train + held))])
    return table.iloc[: 6 * train].reset_index(drop=True), table.iloc[6 * train :].reset_index(drop=True)


def _full_logits_loss(model, batch):
    """Today's loss: the model's own, with logits at every position."""
    return model(**batch).loss


def _looped_adamw(params: list, config: LoraConfig):
    """Today's optimizer: AdamW with torch's default, a loop over the tensors on CPU."""
    import torch

    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _cached(load: Callable) -> Callable:
    """`load_causal_lm` that dequantises each model once per bench and hands out copies (fits change them)."""
    models: dict[tuple, object] = {}

    def loader(*args, **kwargs):
        key = (*args, *sorted(kwargs.items()))
        if key not in models:
            models[key] = load(*args, **kwargs)
        return copy.deepcopy(models[key])
    return loader


@contextlib.contextmanager
def _patched(values: dict[str, object]) -> Iterator[None]:
    """Replace attributes of `lora_train` for one fit."""
    saved = {name: getattr(lora_train, name) for name in values}
    for name, value in values.items():
        setattr(lora_train, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(lora_train, name, value)


@dataclass
class Run:
    """One measured fit."""

    label: str
    updates: int
    tokens_s: float
    updates_s: float
    train_loss: float
    held_loss: float
    clock: str


def _held_loss(method: LoraMethod, held: pd.DataFrame) -> float:
    """Mean float32 loss of the prompt tokens of `held`, batches of the training size."""
    import torch

    cfg = method.config
    encoded = [encode_example(method.tokenizer, o, w, p, cfg)
               for o, w, p in zip(held[ORIGINAL], held[REWRITTEN], held[PROMPT])]
    losses = []
    with torch.inference_mode():
        for start in range(0, len(encoded), cfg.batch_size):
            batch = lora_train.collate(encoded[start : start + cfg.batch_size], method.tokenizer.pad_token_id)
            losses.append(float(method.model.eval()(**batch).loss))
    return sum(losses) / len(losses)


def _fit(label: str, train: pd.DataFrame, held: pd.DataFrame | None, updates: int, threads: int, wall: bool,
         options: dict[str, object], patches: dict[str, object]) -> Run:
    """Train `updates` updates with `options` and `lora_train` `patches`; measure as the module docstring says
    (the held loss only with `held`)."""
    set_threads(threads)
    clock = time.perf_counter if wall else time.process_time
    stamps: list[float] = []
    method = LoraMethod(LoraConfig(max_steps=updates, val_fraction=0.0, select_fallback=False, **options))
    method.on_update = lambda done, total: stamps.append(clock())
    with _patched({"time": SimpleNamespace(perf_counter=clock), **patches}):
        method.fit(train)
    last = method.history[-1]
    updates_s = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    held_loss = _held_loss(method, held) if held is not None else float("nan")
    return Run(label, updates, last["train_tokens_per_s"], updates_s, last["train_loss"], held_loss,
               "wall" if wall else "cpu")


def _tokenising(train: pd.DataFrame, cfg: LoraConfig) -> float:
    """Seconds to encode `train` once, as the loop does before its first epoch."""
    from promptrec.llm.hf import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    started = time.perf_counter()
    [encode_example(tokenizer, o, w, p, cfg) for o, w, p in zip(train[ORIGINAL], train[REWRITTEN], train[PROMPT])]
    return time.perf_counter() - started


def _print(run: Run, base: Run | None = None) -> None:
    """One table row; with `base`, the tokens/s ratio to it."""
    ratio = f"{run.tokens_s / base.tokens_s:6.2f}x" if base else "       "
    print(f"  {run.label:<44} {run.updates:>3} {run.tokens_s:9.1f} {run.updates_s:9.3f} {run.train_loss:10.4f} "
          f"{run.held_loss:9.4f}  {run.clock:<4} {ratio}")


def main() -> None:
    """Old loop vs new loop, then each lever alone on the old loop and the thread, attention and checkpointing
    settings on the new one."""
    parser = argparse.ArgumentParser(prog="promptrec bench lora_train", description=__doc__)
    parser.add_argument("--updates", type=int, default=12, help="updates of the old and the new loop (batch 4)")
    parser.add_argument("--lever-updates", type=int, default=2, help="updates of each lever's fit (0: skip them)")
    parser.add_argument("--rows", type=int, default=100, help="training rows taken from each shared triple file")
    parser.add_argument("--held", type=int, default=4, help="held-out rows taken from each file, after those")
    parser.add_argument("--seed", type=int, default=0)
    args, _ = parser.parse_known_args()  # `promptrec bench lora_train` leaves its own words in sys.argv
    quiet_libraries()
    logging.getLogger("promptrec.methods.lora_train").setLevel(logging.WARNING)  # the table says it all
    lora_train.load_causal_lm = _cached(lora_train.load_causal_lm)  # model loading is not what is timed
    train, held = _rows(args.rows, args.held)
    native = bf16_autocast(None, "cpu")
    old = dict(options=dict(bucket=False, bf16=False, attention="sdpa", seed=args.seed),
               patches=dict(batch_loss=_full_logits_loss, adamw=_looped_adamw))
    new = dict(options=dict(seed=args.seed), patches={})
    cfg = LoraConfig()
    print(f"lora train bench: {cfg.model} r={cfg.r}, batch {cfg.batch_size}, {cfg.text_tokens}-token texts, "
          f"{len(train)} training rows, {len(held)} held; CPU bf16: "
          f"{'native' if native else 'not native (no avx512_bf16/amx): autocast lever skipped'}")
    print(f"gradient checkpointing by default: {'on' if cfg.gradient_checkpointing else 'off on CPU (GPU only)'}")
    encode = _tokenising(train, cfg)
    print(f"tokenising: {len(train)} rows in {encode:.2f} s, once per fit (the ids are reused every epoch)")
    header = f"  {'loop':<44} {'upd':>3} {'tokens/s':>9} {'updates/s':>9} {'train loss':>10} {'held loss':>9}  clock"

    print(header)
    base = _fit("old (today's loop)", train, held, args.updates, 1, False, **old)
    _print(base)
    best = _fit("new", train, held, args.updates, 1, False, **new)
    _print(best, base)
    noise = _fit("new, seed + 1", train, held, args.updates, 1, False,
                 options={"seed": args.seed + 1}, patches={})
    _print(noise, base)
    print(f"=> new / old: {best.tokens_s / base.tokens_s:.2f}x train tokens/s, {best.updates_s / base.updates_s:.2f}x "
          f"updates/s; held loss after {args.updates} updates {best.held_loss:.4f} vs {base.held_loss:.4f} "
          f"(seed to seed: {abs(noise.held_loss - best.held_loss):.4f})")
    if not args.lever_updates:
        return

    n = args.lever_updates
    print(f"\neach lever alone on the old loop ({n} updates each; ratio to the old loop):")
    print(header)
    lever_base = _fit("old loop", train, None, n, 1, False, **old)
    _print(lever_base)
    levers = {
        "+ length buckets": ({"bucket": True}, {}),
        "+ logits from the first label on": ({}, {"batch_loss": lora_train.batch_loss}),
        "+ fused AdamW": ({}, {"adamw": lora_train.adamw}),
        "+ eager attention": ({"attention": "eager"}, {}),
    }
    if native:
        levers["+ bf16 autocast (float32 weights)"] = ({"bf16": None}, {})
        levers["+ bf16 autocast, bf16 weights"] = ({"bf16": True}, {})
    for label, (options, patches) in levers.items():
        _print(_fit(label, train, None, n, 1, False, options={**old["options"], **options},
                    patches={**old["patches"], **patches}), lever_base)

    print(f"\nsettings on the new loop ({n} updates each; ratio to the new loop on the same clock):")
    print(header)
    one = _fit("new loop", train, None, n, 1, False, **new)
    _print(one)
    checkpointing = _fit("gradient checkpointing on", train, None, n, 1, False,
                         options={**new["options"], "gradient_checkpointing": True}, patches={})
    _print(checkpointing, one)
    sdpa = _fit("SDPA attention instead of eager", train, None, n, 1, False,
                options={**new["options"], "attention": "sdpa"}, patches={})
    _print(sdpa, one)
    one_wall = _fit("new loop, 1 thread", train, None, n, 1, True, **new)
    _print(one_wall)
    two = _fit("new loop, 2 threads (shared host: see load)", train, None, n, 2, True, **new)
    _print(two, one_wall)
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
