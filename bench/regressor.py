"""Regressor head training: epoch time from the feature cache vs re-encoding every epoch (the original way).

Also prints the peak memory (max RSS) of training the default regressor on all shared triples.
Run: `promptrec bench regressor` or `python bench/regressor.py [--rows 96] [--epochs 3] [--skip-full]`.
The full-data step reads features from the default cache (PROMPTREC_CACHE or ~/.cache/promptrec): the
first, cold run encodes ~6,000 texts (several minutes on one core); later runs take seconds.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SRC = str(Path(__file__).resolve().parents[1] / "src")  # the child imports this checkout's promptrec
TRIPLE_FILES = ("gemma_1100.csv", "dolly_gemini_500.csv", "gpt35_1080.csv", "llama3_456.csv")


def load_shared():
    """All shared triple files pooled, ids prefixed by file."""
    import pandas as pd

    from promptrec.data import ID, TRIPLE_COLUMNS, read_table

    frames = []
    for name in TRIPLE_FILES:
        frame = read_table(SHARED / name, TRIPLE_COLUMNS)
        frames.append(frame.assign(**{ID: name.split("_")[0] + ":" + frame[ID], "source": name}))
    return pd.concat(frames, ignore_index=True)


def epoch_times(rows: int, epochs: int) -> None:
    """Time one head epoch with cached features vs one where every batch is encoded again."""
    import numpy as np
    import torch

    from promptrec.data import ORIGINAL, PROMPT, REWRITTEN
    from promptrec.methods.regressor import (
        FeatureCache, FrozenEncoder, RegressorConfig, build_head, make_optimizer, shuffled_batches, train_epoch,
    )
    from promptrec.metric import load_embedder

    triples = load_shared().sample(n=rows, random_state=0).reset_index(drop=True)
    config = RegressorConfig()
    embedder = load_embedder(config.embedder)
    targets = torch.from_numpy(embedder.encode(triples[PROMPT].tolist()))  # (rows, D)
    encoder = FrozenEncoder(config.backbone, config.max_length, "cpu", config.encode_batch_size)
    init_std = encoder.initializer_range()

    with tempfile.TemporaryDirectory() as folder:
        cache = FeatureCache(encoder, Path(folder))
        start = time.perf_counter()
        features = torch.from_numpy(cache.pair_features(triples))  # (rows, 4H), each text encoded once
        fill = time.perf_counter() - start

    def fresh_head():
        torch.manual_seed(config.seed)
        head = build_head(features.shape[1], targets.shape[1], config.multiplier, init_std)
        return head, make_optimizer(head, config)

    def encoded_batches(generator):
        # the original way: the frozen encoder reads both texts of every batch, every epoch
        for index in torch.randperm(rows, generator=generator).split(config.batch_size):
            part = triples.iloc[index.numpy()]
            pair = np.concatenate([encoder.encode(part[ORIGINAL].tolist()), encoder.encode(part[REWRITTEN].tolist())], 1)
            yield torch.from_numpy(pair), targets[index]

    head, optimizer = fresh_head()
    start = time.perf_counter()
    train_epoch(head, optimizer, encoded_batches(torch.Generator().manual_seed(0)), config, "cpu")
    reencode = time.perf_counter() - start

    head, optimizer = fresh_head()
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(epochs):
        train_epoch(head, optimizer, shuffled_batches(features, targets, config.batch_size, generator), config, "cpu")
    cached = (time.perf_counter() - start) / epochs

    print(f"backbone {config.backbone} (max_length {config.max_length}), head m={config.multiplier}, "
          f"batch {config.batch_size}, {rows} rows, {torch.get_num_threads()} torch thread(s)")
    print(f"  epoch, re-encoding every batch (original way): {reencode:8.2f} s")
    print(f"  epoch, from the feature cache:                 {cached:8.3f} s  (mean of {epochs})")
    print(f"  one-time cache fill ({cache.encoded} texts):           {fill:8.2f} s")
    print(f"  speed-up per epoch: {reencode / cached:.0f}x   "
          f"({config.epochs} epochs: {config.epochs * reencode:.0f} s vs {fill + config.epochs * cached:.1f} s with the fill)")


def train_all() -> None:
    """Child process: train the default regressor on all shared triples and report its loss curve ends."""
    from promptrec.methods.regressor import RegressorMethod

    triples = load_shared()
    method = RegressorMethod()
    start = time.perf_counter()
    method.fit(triples)
    print(f"  trained on {len(triples)} rows in {time.perf_counter() - start:.1f} s "
          f"(encoded {method.cache.encoded} new texts; loss {method.losses[0]:.4f} -> {method.losses[-1]:.4f})")


def peak_memory() -> None:
    """Peak RSS of a fresh process that trains the default regressor on all shared triples."""
    print("full data, default regressor (features from the default cache):", flush=True)
    child = subprocess.run([sys.executable, __file__, "--train-all-child"], env={**os.environ, "PYTHONPATH": SRC})
    if child.returncode != 0:
        sys.exit(f"training child failed with exit code {child.returncode}")
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux reports KiB
    print(f"  peak memory (max RSS of the training process): {peak_mib:.0f} MiB")


def main() -> None:
    """Parse options (unknown ones, like the CLI's own words, are ignored) and run both measurements."""
    from promptrec.models import quiet_libraries, set_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=96, help="rows for the epoch-time comparison")
    parser.add_argument("--epochs", type=int, default=3, help="cached epochs averaged")
    parser.add_argument("--skip-full", action="store_true", help="skip the full-data memory measurement")
    parser.add_argument("--train-all-child", action="store_true", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if not (SHARED / TRIPLE_FILES[0]).is_file():
        sys.exit(f"shared data {SHARED} is absent; this benchmark needs ../shared/data beside the checkout")
    set_threads()
    quiet_libraries()
    if args.train_all_child:
        train_all()
        return
    epoch_times(args.rows, args.epochs)
    if not args.skip_full:
        peak_memory()


if __name__ == "__main__":
    main()
