"""Grouped CV of method `fewshot` on ../shared/data: fixed vs retrieved examples vs the best constant prompt.

Folds group rows by original_text; each fold fits on the other folds and predicts a random subsample of
its held-out rows (the LLM is the slow part on CPU). Scores use the proxy embedder and say so.
Run: PYTHONPATH=src python bench/fewshot_cv.py --rows-per-fold 40
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from promptrec.data import ORIGINAL, PROMPT, TRIPLE_COLUMNS, read_table
from promptrec.metric import load_embedder, score
from promptrec.methods.constant import best_constant
from promptrec.methods.fewshot import FewShotConfig, FewShotMethod

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FILES = ("gemma_1100.csv", "dolly_gemini_500.csv", "gpt35_1080.csv", "llama3_456.csv")


class CachedEncoder:
    """Embeds each distinct text once across all folds (the index is rebuilt per fold)."""

    def __init__(self, embedder):
        self.embedder, self.label, self.rows = embedder, embedder.label, {}

    def encode(self, texts: list[str]) -> np.ndarray:
        new = sorted(set(texts) - set(self.rows))
        if new:
            self.rows.update(zip(new, self.embedder.encode(new)))
        return np.stack([self.rows[t] for t in texts])  # (n, d) unit rows


def folds_by_original(frame: pd.DataFrame, n_folds: int, seed: int) -> np.ndarray:
    """Fold number per row; rows sharing an original text share a fold."""
    originals = frame[ORIGINAL].unique()
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(originals[rng.permutation(len(originals))], np.arange(len(originals)) % n_folds))
    return frame[ORIGINAL].map(fold_of).to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rows-per-fold", type=int, default=40, help="held-out rows predicted per fold")
    parser.add_argument("--selections", default="fixed,retrieved")
    parser.add_argument("--set", action="append", default=[], help="fewshot option key=value (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write per-row predictions and scores here (CSV)")
    parser.add_argument("--pool", type=int, default=0, help="use only this many original_text groups (0: all)")
    args = parser.parse_args()

    frame = pd.concat([read_table(DATA / f, TRIPLE_COLUMNS) for f in FILES], ignore_index=True)
    if args.pool:
        # Whole groups, so the pool keeps the grouping; embedding every text is the slow part on a shared CPU.
        originals = frame[ORIGINAL].unique()
        keep = set(originals[np.random.default_rng(args.seed).permutation(len(originals))[: args.pool]])
        frame = frame[frame[ORIGINAL].isin(keep)].reset_index(drop=True)
    fold = folds_by_original(frame, args.folds, args.seed)
    embedder = load_embedder("proxy")
    cache = CachedEncoder(embedder)
    print(f"{len(frame)} rows, {args.folds} folds grouped by original_text, {args.rows_per_fold} held-out rows/fold")
    options = {key: yaml.safe_load(value) for key, _, value in (pair.partition("=") for pair in args.set)}
    selections = args.selections.split(",")
    generator, records = None, []
    for k in range(args.folds):
        train = frame[fold != k]
        held = frame[fold == k]
        sample = held.iloc[np.random.default_rng(args.seed + k).permutation(len(held))[: args.rows_per_fold]]
        truths = sample[PROMPT].tolist()
        constant = best_constant(train[PROMPT].tolist(), cache.encode)
        result = {"constant": score([constant] * len(sample), truths, embedder)}
        predictions = {"constant": [constant] * len(sample)}
        for selection in selections:
            method = FewShotMethod(FewShotConfig(selection=selection, **options))
            method.embedder, method.generator = cache, generator
            method.fit(train)
            tick = time.perf_counter()
            predictions[selection] = method.predict(sample)
            seconds = time.perf_counter() - tick
            generator = method.generator
            result[selection] = score(predictions[selection], truths, embedder)
            result[selection + "_fallbacks"] = method.fallbacks
            result[selection + "_rows_s"] = len(sample) / seconds
        line = "  ".join(
            f"{name} {result[name].mean:.4f}" + (f" (fallback {result[name + '_fallbacks']}, {result[name + '_rows_s']:.2f} rows/s)" if name != "constant" else "")
            for name in ["constant", *selections]
        )
        print(f"fold {k}: {len(sample)} rows  {line}  [{embedder.label}]", flush=True)
        for i, (_, row) in enumerate(sample.iterrows()):
            records.append({"fold": k, "id": row["id"], "truth": row[PROMPT],
                            **{f"{n}_pred": predictions[n][i] for n in predictions},
                            **{f"{n}_score": float(result[n].per_row[i]) for n in predictions}})
    table = pd.DataFrame(records)
    print(f"mean over {len(table)} held-out rows [{embedder.label}]:")
    for name in ["constant", *selections]:
        print(f"  {name:10s} {table[name + '_score'].mean():.4f}")
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
