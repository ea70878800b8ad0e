"""Benchmark of method lora on the default offline model (SmolLM2-135M from its GGUF).

Prints training tokens/s (non-pad tokens through forward + backward) and inference rows/s with
batched greedy decoding next to one row at a time, as a ratio, in float32 and under bf16 autocast (the
default on CPUs that compute bf16 natively), all measured in this run. On CPU the prompt's prefill is
compute-bound: bf16 speeds it up, batching saves the per-token decoding overhead.
Run: `promptrec bench lora` or `python bench/lora.py --steps 8 --rows 32 --text-tokens 128`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from promptrec.data import ID, ORIGINAL, PROMPT, REWRITTEN, TRIPLE_COLUMNS, read_table
from promptrec.models import bf16_autocast
from promptrec.methods.lora import LoraConfig, LoraMethod
from promptrec.models import quiet_libraries, set_threads

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gemma_1100.csv"


def _rows(count: int) -> pd.DataFrame:
    """The first `count` triples of the shared data, or a repeated built-in row when it is absent."""
    if DATA.is_file():
        return read_table(DATA, TRIPLE_COLUMNS).head(count).reset_index(drop=True)
    row = {ID: "x", ORIGINAL: "The meeting moved to Thursday because the projector broke. " * 6,
           PROMPT: "Rewrite this as a pirate would say it.",
           REWRITTEN: "Arr, the meetin' be moved to Thursday, for the projector be broken! " * 6}
    return pd.DataFrame([{**row, ID: str(i)} for i in range(count)])


def main() -> None:
    """Train a few steps, then time batched against one-at-a-time generation."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3, help="LoRA updates timed (batch 4)")
    parser.add_argument("--rows", type=int, default=16, help="rows generated in each inference mode")
    parser.add_argument("--text-tokens", type=int, default=LoraConfig.text_tokens, help="token budget per text")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PROMPTREC_THREADS or all cores)")
    args, _ = parser.parse_known_args()  # `promptrec bench lora` leaves its own words in sys.argv
    quiet_libraries()
    threads = set_threads(args.threads or None)
    method = LoraMethod(LoraConfig(max_steps=args.steps, text_tokens=args.text_tokens, val_fraction=0.0,
                                   select_fallback=False))
    train = _rows(args.steps * method.config.batch_size)
    method.fit(train)
    tokens_per_s = method.history[-1]["train_tokens_per_s"]
    print(f"lora bench: {method.config.model} r={method.config.r}, text budget {method.config.text_tokens} tokens, "
          f"{threads} thread(s), CPU")
    print(f"train: {args.steps} updates x batch {method.config.batch_size}: {tokens_per_s:.0f} tokens/s")

    pairs = _rows(args.rows)
    default_bf16 = bf16_autocast(None, "cpu")
    results = {}
    for bf16 in (False, True):
        method.config.infer_bf16 = bf16
        method.generate_raw(pairs.head(2))  # warm-up: newline table, first-call allocations
        for mode, batch in (("single", 1), ("batched", args.rows)):
            method.config.infer_batch_size = batch
            started = time.perf_counter()
            outputs = method.generate_raw(pairs)
            results[bf16, mode] = (args.rows / (time.perf_counter() - started), outputs)
    for bf16 in (False, True):
        single, batched = results[bf16, "single"][0], results[bf16, "batched"][0]
        dtype = "bf16 autocast" if bf16 else "float32"
        default = "  <- default here" if bf16 == default_bf16 else ""
        print(f"infer {dtype:>13}: one row at a time {single:5.2f} rows/s, batched ({args.rows} rows) {batched:5.2f} rows/s"
              f" = {batched / single:.2f}x{default}")
    same = sum(a == b for a, b in zip(results[False, "batched"][1], results[True, "batched"][1]))
    print(f"batched bf16 / float32: {results[True, 'batched'][0] / results[False, 'batched'][0]:.2f}x; identical greedy "
          f"outputs {same}/{args.rows}  (max_new_tokens {method.config.max_new_tokens}, shared template prefix "
          f"evaluated once per call)")

if __name__ == "__main__":
    main()
