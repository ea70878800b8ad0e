"""Learning curve of method lora under leave-one-source-out CV: score on held-out sources vs optimizer updates.

Each group of shared triple files is held out in turn (files sharing original texts together, as `promptrec cv
--by source` does); lora trains on all rows of the other files and is scored [proxy] on a seeded sample of the
held-out rows (`splits.scored_rows`, the rows `promptrec cv --limit N` scores). Each budget continues the previous
one's saved fit (`continue_from`, what `promptrec train lora --from MODEL --set max_steps=N` does), so the curve
costs the largest budget's updates, not their sum; every budget's learning-rate schedule is re-planned for its new
total where the previous one stopped. Budgets run breadth-first (every fold at 100 before any at 300) and each
result is appended to OUT/results.jsonl as it lands: a rerun skips what is there and continues the rest.
Run: `promptrec bench lora_curve --budgets 100,300,1000 --rows 80 -o out/lora_curve`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regressor import SHARED  # noqa: E402  (the sibling benchmarks' data folder)

FILES = ("gemma_1100.csv", "gemma_rerun_994.csv", "dolly_gemini_500.csv", "gpt35_1080.csv", "llama3_456.csv",
         "gemma_wiki_2977.csv")


def main() -> None:
    """Train each fold to each budget in turn, score it on the held-out sample, print the table."""
    parser = argparse.ArgumentParser(prog="promptrec bench lora_curve")
    parser.add_argument("--budgets", default="100,300,1000", help="optimizer updates (batch 4), ascending")
    parser.add_argument("--rows", type=int, default=80, help="held-out rows scored per fold")
    parser.add_argument("--folds", default="", help="only the folds whose name holds one of these (comma-separated)")
    parser.add_argument("--set", dest="settings", action="append", default=[], help="lora option key=value")
    parser.add_argument("-o", "--output", default="out/lora_curve", help="results.jsonl and the fitted models")
    args, _ = parser.parse_known_args()
    import yaml

    from promptrec.data import ORIGINAL, PROMPT, SOURCE, read_triples
    from promptrec.methods.lora import LoraConfig, LoraMethod
    from promptrec.metric import load_embedder, score
    from promptrec.models import quiet_libraries, set_threads
    from promptrec.splits import scored_rows, source_folds

    quiet_libraries()
    set_threads(None)  # PROMPTREC_THREADS, else every core
    missing = [name for name in FILES if not (SHARED / name).is_file()]
    if missing:
        sys.exit(f"lora_curve: skipped, {SHARED} lacks {', '.join(missing)} (see ../shared/data/README.md)")
    budgets = [int(b) for b in args.budgets.split(",")]
    options = {"val_fraction": 0.0, **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.settings)}}
    data = read_triples([SHARED / name for name in FILES])
    fold_of, names = source_folds(data[SOURCE].tolist(), data[ORIGINAL].tolist())
    wanted = [k for k, name in enumerate(names) if not args.folds or any(w in name for w in args.folds.split(","))]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = {(r["fold"], r["updates"]): r for r in map(json.loads, results.read_text().splitlines())} \
        if results.is_file() else {}
    embedder = load_embedder("proxy")
    for step, updates in enumerate(budgets):
        for fold in wanted:
            name = names[fold]
            if (name, updates) in done:
                continue
            train = data[fold_of != fold]
            held = data.iloc[scored_rows(fold_of, fold, args.rows, 0)]
            model = out / "models" / f"fold{fold}" / f"u{updates}"
            method = LoraMethod(LoraConfig(**{**options, "max_steps": updates}))
            method.resume_in(model.parent / f"u{updates}.partial")
            if step:
                method.continue_from(out / "models" / f"fold{fold}" / f"u{budgets[step - 1]}")
            started = time.perf_counter()
            method.fit(train)
            method.save(model)
            trained = time.perf_counter() - started
            started = time.perf_counter()
            result = score(method.predict(held), held[PROMPT].tolist(), embedder)
            row = {"fold": name, "updates": updates, "score": round(result.mean, 4), "rows": len(held),
                   "train_rows": len(train), "train_s": round(trained, 1),
                   "predict_s": round(time.perf_counter() - started, 1), "embedder": result.label}
            done[(name, updates)] = row
            with open(results, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print(f"\nlora learning curve, leave one source out, {args.rows} held-out rows per fold [{embedder.label}]")
    print(f"{'held-out source':<40}" + "".join(f"{u:>10}" for u in budgets))
    names = [names[k] for k in wanted]
    for name in names:
        print(f"{name:<40}" + "".join(f"{done[(name, u)]['score']:>10.4f}" for u in budgets))
    for label, reduce in (("mean over sources", np.mean), ("std over sources", np.std)):
        print(f"{label:<40}" + "".join(f"{reduce([done[(n, u)]['score'] for n in names]):>10.4f}" for u in budgets))


if __name__ == "__main__":
    main()
