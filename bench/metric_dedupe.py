"""Metric throughput (rows/s) with and without embedding dedupe, on prompts that repeat as in real data."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from promptrec.metric import load_embedder, score, sharpened_cosine

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "test.csv"


def main() -> None:
    """Score the same predictions twice, deduped and not, and print both rates and their ratio."""
    parser = argparse.ArgumentParser(prog="promptrec bench metric_dedupe")
    parser.add_argument("--rows", type=int, default=1000, help="rows to score")
    parser.add_argument("--embedder", default="proxy")
    args, _ = parser.parse_known_args()
    truth = pd.read_csv(EXAMPLES)["rewrite_prompt"].tolist()
    truths = [truth[i % len(truth)] for i in range(args.rows)]  # 20 distinct prompts, as a tuned constant faces
    predictions = ["Rewrite this text in a different style."] * args.rows
    embedder = load_embedder(args.embedder)
    embedder.encode(["warm up"])

    start = time.perf_counter()
    deduped = score(predictions, truths, embedder)
    t_dedupe = time.perf_counter() - start

    start = time.perf_counter()
    emb = embedder.model.encode(predictions + truths, batch_size=embedder.batch_size, normalize_embeddings=True)
    naive = sharpened_cosine(emb[: args.rows], emb[args.rows :]).mean()
    t_naive = time.perf_counter() - start

    assert np.isclose(naive, deduped.mean, atol=1e-5), (naive, deduped.mean)
    print(f"metric throughput [{embedder.label}], {args.rows} rows, {len(set(truths)) + 1} distinct texts")
    print(f"  without dedupe: {args.rows / t_naive:10.1f} rows/s")
    print(f"  with dedupe:    {args.rows / t_dedupe:10.1f} rows/s")
    print(f"  ratio: {t_naive / t_dedupe:.1f}x  (same mean score {deduped.mean:.4f})")


if __name__ == "__main__":
    main()
