"""Grouped k-fold CV on the shared triples: regressor vs best constant prompt vs the `bank` baseline.

Folds group rows by original_text. Prints per fold and the mean: the regressor's embedding-space score,
decoded score and bank oracle, next to the best-constant and bank scores, all on one embedder (proxy default).
Run: `python bench/regressor_cv.py [--folds 5] [--max-folds N] [--losses cosine,score] [--set key=value ...]`.
Encoder features and bank-file embeddings come from the default cache (PROMPTREC_CACHE or ~/.cache/promptrec).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regressor import SHARED, load_shared  # noqa: E402  (the sibling benchmark's data loader)

BANK_FILES = [str(SHARED / "rewrite_prompts_1832.json"), str(SHARED / "rewrite_prompts_9205.json")]


def grouped_folds(groups: list[str], folds: int, seed: int = 0) -> np.ndarray:
    """A fold number per row; rows sharing a group (original text) share a fold; groups shuffled by `seed`."""
    unique = np.unique(np.asarray(groups, dtype=object).astype(str))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[i]: rank % folds for rank, i in enumerate(order)}
    return np.array([fold_of[str(g)] for g in groups])


class MemoEmbedder:
    """Wraps an embedder so each distinct text is embedded once per run (folds re-read the same texts)."""

    def __init__(self, embedder):
        self.embedder, self.label, self.dim = embedder, embedder.label, embedder.dim
        self.rows: dict[str, np.ndarray] = {}

    def encode(self, texts) -> np.ndarray:
        """(n, dim) unit rows, from memory where seen before."""
        texts = [str(t) for t in texts]
        fresh = list(dict.fromkeys(t for t in texts if t not in self.rows))
        if fresh:
            self.rows.update(zip(fresh, self.embedder.encode(fresh)))
        return np.stack([self.rows[t] for t in texts]) if texts else np.zeros((0, self.dim), dtype=np.float32)

    def encode_texts(self, texts) -> np.ndarray:
        """Long texts through the wrapped embedder's own path (it keeps them once per process)."""
        return self.embedder.encode_texts(texts)


def main() -> None:
    """Run the folds and print one line per method and fold, then the means."""
    import pandas as pd

    from promptrec.data import ORIGINAL, PROMPT
    from promptrec.methods.bank import BankConfig, BankMethod
    from promptrec.methods.base import config_from_dict
    from promptrec.methods.constant import best_constant
    from promptrec.methods.regressor import RegressorConfig, RegressorMethod
    from promptrec.metric import load_embedder, score
    from promptrec.models import quiet_libraries, set_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-folds", type=int, default=0, help="run only the first N folds (0: all)")
    parser.add_argument("--losses", default="cosine,score", help="regressor losses to compare")
    parser.add_argument("--weights", default="0", help="regressor direction_weight values to compare")
    parser.add_argument("--embedder", default="proxy")
    parser.add_argument("--no-bank-files", action="store_true", help="decode with training prompts only")
    parser.add_argument("--set", action="append", default=[], help="regressor option key=value")
    parser.add_argument("--out", help="CSV of per-row scores")
    args, _ = parser.parse_known_args()  # `promptrec bench regressor_cv` passes its own words
    set_threads()
    quiet_libraries()
    import yaml

    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    bank_files = [] if args.no_bank_files else BANK_FILES
    triples = load_shared()
    fold_ids = grouped_folds(triples[ORIGINAL].tolist(), args.folds)
    embedder = MemoEmbedder(load_embedder(args.embedder))
    print(f"{len(triples)} rows, {args.folds} folds grouped by original_text, embedder {embedder.label}, "
          f"bank files: {', '.join(Path(f).name for f in bank_files) or 'none'}", flush=True)

    regressors = {}
    for loss in args.losses.split(","):
        for weight in map(float, args.weights.split(",")):
            config = config_from_dict(RegressorConfig, {**overrides, "loss": loss, "bank_files": bank_files,
                                                        "embedder": args.embedder, "direction_weight": weight}, "--set")
            regressors[f"regressor[{loss}, w={weight:g}]"] = RegressorMethod(config)
    shared_cache = next(iter(regressors.values())).cache
    start = time.perf_counter()
    shared_cache.pair_features(triples)  # every text once; later folds only read memory
    print(f"features ready in {time.perf_counter() - start:.0f} s ({shared_cache.encoded} texts encoded)", flush=True)

    rows = []
    for fold in range(args.max_folds or args.folds):
        train, test = triples[fold_ids != fold], triples[fold_ids == fold]
        truth = test[PROMPT].tolist()
        constant = best_constant(train[PROMPT].tolist(), embedder.encode)
        results = {"best constant": score([constant] * len(test), truth, embedder)}
        for query in ("rewritten", "direction"):
            bank = BankMethod(BankConfig(embedder=args.embedder, bank_files=bank_files, query=query))
            bank.embedder = embedder
            bank.fit(train)
            results[f"bank[{query}]"] = score(bank.predict(test), truth, embedder)
        for name, method in regressors.items():
            method.embedder, method._cache = embedder, shared_cache
            start = time.perf_counter()
            method.fit(train)
            report = method.report(test)
            results[name] = score(method.predict(test), truth, embedder)
            print(f"fold {fold} {name}: embedding-space {report.embedding_score:.4f}  decoded {report.decoded_score:.4f}  "
                  f"bank oracle {report.bank_oracle:.4f} ({report.bank_size} prompts)  "
                  f"[{report.label}]  fit {time.perf_counter() - start:.0f} s", flush=True)
            rows.append({"fold": fold, "method": name + " (embedding-space)", "score": report.embedding_score})
            rows.append({"fold": fold, "method": "bank oracle", "score": report.bank_oracle})
        for name, result in results.items():
            print(f"fold {fold} {name}: {result}", flush=True)
            rows.append({"fold": fold, "method": name, "score": result.mean})
            for source in sorted(test["source"].unique()):
                mask = (test["source"] == source).to_numpy()
                rows.append({"fold": fold, "method": f"{name} | {source}", "score": float(result.per_row[mask].mean())})
        if args.out:  # after every fold, so a stopped run keeps what it finished
            pd.DataFrame(rows).drop_duplicates(["fold", "method"]).to_csv(args.out, index=False)
    table = pd.DataFrame(rows).drop_duplicates(["fold", "method"])
    summary = table.groupby("method", sort=False)["score"].agg(["mean", "std", "count"])
    print(f"\nmean over folds [{embedder.label}]:")
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
