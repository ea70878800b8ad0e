"""Method rerank under leave-one-source-out CV, on the folds and scored rows of `promptrec cv --by source --limit N`.

Each fold's rows are ranked once with the largest K; every smaller K, the bank alone (K = 1), the best candidate
(oracle) and a mix of the LM score with the bank cosine (`score + w * cosine`, w chosen on the other folds) are
read from that one ranking. Prints each fold, then mean ± std over held-out sources, and seconds per row.
Run: `PROMPTREC_THREADS=1 promptrec bench rerank_loso --k 16 --limit 40 [--set model=gemma3-270m] [--out rows.csv]`
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regressor import SHARED  # noqa: E402
from regressor_loso import FILES  # noqa: E402

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)  # candidate bank-cosine weights of the mix


def main() -> None:
    """Rank every fold's scored rows once, then print the table of variants read from the rankings."""
    import pandas as pd
    import yaml

    from promptrec.cv import CVSettings, make_folds
    from promptrec.data import PROMPT, read_triples
    from promptrec.methods.base import from_name
    from promptrec.metric import load_embedder, sharpen
    from promptrec.models import quiet_libraries, set_threads
    from promptrec.splits import scored_rows

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=16, help="bank neighbours ranked per row (the largest K read)")
    parser.add_argument("--limit", type=int, default=40, help="held-out rows scored per fold (as `cv --limit`)")
    parser.add_argument("--set", action="append", default=[], help="key=value rerank option; repeatable")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="CSV of every ranked candidate")
    args, _ = parser.parse_known_args()  # `promptrec bench rerank_loso` passes its own words
    set_threads()
    quiet_libraries()
    options = {key: yaml.safe_load(value) for key, _, value in (s.partition("=") for s in args.set)}

    table = read_triples([SHARED / f"{name}.csv" for name in FILES])
    folds = make_folds(table, CVSettings(by="source", seed=args.seed))
    embedder = load_embedder("proxy")
    print(f"{len(table)} rows, {len(folds.names)} folds by source, {args.limit} held-out rows per fold, K = {args.k}, "
          f"embedder {embedder.label}", flush=True)
    records, model, seconds, ranked = [], None, 0.0, 0
    for fold, name in enumerate(folds.names):
        train = table[folds.of != fold].reset_index(drop=True)
        test = table.iloc[scored_rows(folds.of, fold, args.limit, args.seed)].reset_index(drop=True)
        method = from_name("rerank", **{**options, "k": args.k})
        method.embedder = embedder
        method.fit(train)
        if model is None:
            start = time.perf_counter()
            method.load_model()
            model = (method.model, method.tokenizer)
            print(f"LM loaded in {time.perf_counter() - start:.1f} s", flush=True)
        method.model, method.tokenizer = model  # one load for every fold
        start = time.perf_counter()
        ranking = method.rank(test)
        seconds, ranked = seconds + time.perf_counter() - start, ranked + len(test)
        truth = embedder.encode(test[PROMPT].tolist())  # (n, d)
        for row, prompts in enumerate(ranking.prompts):
            metric = sharpen(embedder.encode(prompts) @ truth[row])  # (K,)
            for rank, prompt in enumerate(prompts):
                records.append({"fold": name, "row": row, "rank": rank, "prompt": prompt, "score": float(metric[rank]),
                                "lm": float(ranking.scores[row, rank]), "cosine": float(ranking.cosines[row, rank])})
        print(f"fold {fold + 1} ({name}): ranked {len(test)} rows", flush=True)
    frame = pd.DataFrame(records)
    if args.out:
        frame.to_csv(args.out, index=False)

    def picked(rows: pd.DataFrame, k: int, weight: float | None) -> float:
        """Mean metric score of the candidate picked per row among the first k (weight None: the oracle)."""
        top = rows[rows["rank"] < k]
        key = top["score"] if weight is None else top["lm"] + weight * top["cosine"]
        return float(top.loc[key.groupby([top["fold"], top["row"]]).idxmax(), "score"].mean())

    variants = {"bank (K=1)": (1, 0.0)}
    for k in sorted({4, 8, args.k}):
        if k <= args.k:
            variants[f"rerank K={k}"] = (k, 0.0)
    variants[f"oracle K={args.k}"] = (args.k, None)
    result = {label: [picked(frame[frame["fold"] == name], k, w) for name in folds.names]
              for label, (k, w) in variants.items()}
    # the mix: on each held-out source, the weight that scored best on the other sources
    mixed = []
    for name in folds.names:
        others = frame[frame["fold"] != name]
        best = max(WEIGHTS, key=lambda w: np.mean([picked(others[others["fold"] == o], args.k, w)
                                                   for o in folds.names if o != name]))
        mixed.append(picked(frame[frame["fold"] == name], args.k, best))
        print(f"mix weight for {name}: {best}")
    result[f"rerank K={args.k} + w * bank cosine"] = mixed
    wide = pd.DataFrame(result, index=folds.names).T
    wide.insert(0, "mean ± std", [f"{r.mean():.4f} ± {r.std():.4f}" for _, r in wide.iterrows()])
    print(f"\nleave one source out [{embedder.label}], {args.limit} rows per held-out source:")
    print(wide.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"ranking: {seconds / ranked:.2f} s per row at K = {args.k} ({ranked} rows, LM load excluded)")


if __name__ == "__main__":
    main()
