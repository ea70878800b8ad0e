"""Regressor variants under leave-one-source-out CV, on the folds and scored rows of `promptrec cv --by source`.

Each variant is a set of regressor options (YAML mapping); encoder features are computed once per backbone,
length and layers (and kept in the feature cache), so a variant costs only its head training and decoding.
`--per-source N` first keeps N seeded rows of every file (train and held-out alike): the budget for a backbone
too slow to encode every text on one core. Prints each fold, then mean ± std over held-out sources per variant.
Run: `promptrec bench regressor_loso --variant 'default={}' --variant 'lists={all_lists: true}' [--limit 400]`
(`all_lists: true` decodes over every shared prompt list as well as the training prompts).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regressor import SHARED  # noqa: E402
from regressor_cv import MemoEmbedder  # noqa: E402

FILES = ("gemma_1100", "gemma_rerun_994", "dolly_gemini_500", "gpt35_1080", "llama3_456", "gemma_wiki_2977")
BANK_FILES = [str(SHARED / f"rewrite_prompts_{n}.json") for n in (1832, 8547, 9205)]


def parse_variant(text: str) -> tuple[str, dict]:
    """`label={yaml mapping}` -> (label, options); `all_lists: true` puts every shared prompt list in the bank."""
    import yaml

    label, _, body = text.partition("=")
    options = yaml.safe_load(body) or {}
    if options.pop("all_lists", False):
        options["bank_files"] = BANK_FILES
    return label, options


def per_source_sample(table, rows: int, seed: int):
    """At most `rows` seeded rows of every source, in input order."""
    import pandas as pd

    from promptrec.data import SOURCE

    keep = [group.sample(n=min(rows, len(group)), random_state=seed) for _, group in table.groupby(SOURCE, sort=False)]
    return pd.concat(keep).sort_index().reset_index(drop=True)


def main() -> None:
    """Precompute features, run every variant on every fold, print the table."""
    import pandas as pd

    from promptrec.cv import CVSettings, make_folds
    from promptrec.data import PROMPT, SOURCE, read_triples
    from promptrec.methods.base import config_from_dict
    from promptrec.methods.regressor import RegressorConfig, RegressorMethod
    from promptrec.metric import load_embedder, score
    from promptrec.models import quiet_libraries, set_threads
    from promptrec.splits import scored_rows

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, help="label={yaml options}; repeatable")
    parser.add_argument("--limit", type=int, default=400, help="held-out rows scored per fold (as `cv --limit`)")
    parser.add_argument("--per-source", type=int, default=0, help="keep N seeded rows per file first (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedder", default="proxy")
    parser.add_argument("--out", help="CSV of the per-fold scores")
    args, _ = parser.parse_known_args()  # `promptrec bench regressor_loso` passes its own words
    set_threads()
    quiet_libraries()

    table = read_triples([SHARED / f"{name}.csv" for name in FILES])
    if args.per_source:
        table = per_source_sample(table, args.per_source, args.seed)
    folds = make_folds(table, CVSettings(by="source", seed=args.seed))
    embedder = MemoEmbedder(load_embedder(args.embedder))
    variants = {}
    for text in args.variant:
        label, options = parse_variant(text)
        variants[label] = config_from_dict(RegressorConfig, {"embedder": args.embedder, **options}, label)
    print(f"{len(table)} rows, {len(folds.names)} folds by source, {args.limit or 'all'} held-out rows scored per "
          f"fold, embedder {embedder.label}", flush=True)

    caches = {}  # (backbone, max_length, layers) -> FeatureCache shared by the variants that read it

    def shared(method: RegressorMethod, max_length: int):
        key = (method.config.backbone, max_length, tuple(method.config.layers))
        if key not in caches:
            caches[key] = method._new_cache(max_length)
            start = time.perf_counter()
            texts = [str(t) for t in table["original_text"].tolist() + table["rewritten_text"].tolist()]
            caches[key].features(texts if max_length == method.config.max_length else texts[len(table) :])
            print(f"features {key}: {caches[key].encoded} texts encoded in {time.perf_counter() - start:.0f} s",
                  flush=True)
        return caches[key]

    rows = []
    for fold, name in enumerate(folds.names):
        train = table[folds.of != fold].reset_index(drop=True)
        test = table.iloc[scored_rows(folds.of, fold, args.limit, args.seed)].reset_index(drop=True)
        for label, config in variants.items():
            method = RegressorMethod(config)
            method.embedder = embedder
            method._cache = shared(method, config.max_length)
            if config.head_tokens:
                method._head_cache = shared(method, min(config.head_tokens, config.max_length))
            start = time.perf_counter()
            method.fit(train)
            result = score(method.predict(test), test[PROMPT].tolist(), embedder)
            print(f"fold {fold + 1} ({name}) {label}: {result.mean:.4f} [{embedder.label}, {len(test)} rows] "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            rows.append({"variant": label, "fold": name, "score": result.mean})
        if args.out:
            pd.DataFrame(rows).to_csv(args.out, index=False)
    frame = pd.DataFrame(rows)
    wide = frame.pivot(index="variant", columns="fold", values="score").loc[list(variants), folds.names]
    wide.insert(0, "mean ± std", [f"{r.mean():.4f} ± {r.std():.4f}" for _, r in wide.iterrows()])
    print(f"\nleave one source out [{embedder.label}], {SOURCE}s held out:")
    print(wide.to_string(float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
