"""Leave-one-source-out CV of the `evidence` method: coverage and score on covered rows per source [proxy].

Each group of shared triple files is held out in turn (gemma_1100 + gemma_rerun_994 together: they share texts
and prompts); `evidence` and the best constant prompt (`constant`, select=true) are fitted on the other groups.
Per held-out source: rows, coverage (share of rows the method answers), and on the covered rows the mean score of
each evidence variant, of the rules alone (unfitted: first template, no abstention), and of the best constant.
Variants: `default` (the default config: one template, the verb learned per cue word) and `choice` (fit chooses
per kind among CHOICE's templates on its training rows).
Run: `promptrec bench evidence_cv [--variants default,choice] [--out rows.csv]`.
Every embedding is cached on disk (PROMPTREC_CACHE or ~/.cache/promptrec, `evidence_cv/`): the first run took
2 min 19 s on 2 cores (one thread); a rerun reads them back (20 s).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regressor import SHARED  # noqa: E402  (the sibling benchmarks' data folder and memo embedder)
from regressor_cv import MemoEmbedder  # noqa: E402

CHOICE = ("{verb} this {core}.", "Rewrite this {core}.", "{verb} it {core}.", "{verb} this text {core}.",
          "Rewrite this text {core}.", "Rewrite the text {core}.", "{verb} this: {phrase}.")
GROUPS = (("gemma_1100.csv", "gemma_rerun_994.csv"), ("gemma_wiki_2977.csv",), ("dolly_gemini_500.csv",),
          ("gpt35_1080.csv",), ("llama3_456.csv",))


class DiskMemo(MemoEmbedder):
    """A MemoEmbedder whose texts and rows persist in FOLDER (texts.json + rows.npy) between runs."""

    def __init__(self, embedder, folder: Path):
        super().__init__(embedder)
        self.folder = folder
        texts, rows = folder / "texts.json", folder / "rows.npy"
        if texts.is_file() and rows.is_file():
            meta = json.loads(texts.read_text(encoding="utf-8"))
            if meta["embedder"] == self.label:
                self.rows = dict(zip(meta["texts"], np.load(rows, allow_pickle=False)))

    def save(self) -> None:
        """Write every embedded text and its row, atomically."""
        from promptrec.data import atomic_write

        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.folder / "rows.npy", "wb") as handle:
            np.save(handle, np.stack(list(self.rows.values())), allow_pickle=False)
        with atomic_write(self.folder / "texts.json") as handle:
            json.dump({"embedder": self.label, "texts": list(self.rows)}, handle)


def load_sources():
    """Every shared triple file, with a `source` column (the file name) and ids prefixed by it."""
    import pandas as pd

    from promptrec.data import ID, TRIPLE_COLUMNS, read_table

    frames = [read_table(SHARED / name, TRIPLE_COLUMNS).assign(source=name) for group in GROUPS for name in group]
    frame = pd.concat(frames, ignore_index=True)
    return frame.assign(**{ID: frame["source"] + ":" + frame[ID]})


def variant_options(name: str) -> dict:
    """EvidenceConfig options of a named variant."""
    if name == "default":
        return {}
    if name == "choice":
        return {"templates": list(CHOICE)}
    raise SystemExit(f"unknown variant '{name}' (known: default, choice)")


def main() -> None:
    """Run the held-out groups and print the per-source table."""
    import pandas as pd

    from promptrec.data import PROMPT
    from promptrec.models import cache_dir
    from promptrec.methods.constant import best_constant
    from promptrec.methods.evidence import EvidenceConfig, EvidenceMethod
    from promptrec.metric import load_embedder, score
    from promptrec.models import quiet_libraries, set_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="default,choice")
    parser.add_argument("--embedder", default="proxy")
    parser.add_argument("--out", help="CSV of per-row predictions and scores")
    args, _ = parser.parse_known_args()  # `promptrec bench evidence_cv` passes its own words
    set_threads()
    quiet_libraries()
    variants = args.variants.split(",")
    data = load_sources()
    embedder = DiskMemo(load_embedder(args.embedder), cache_dir() / "evidence_cv")
    print(f"{len(data)} rows in {data['source'].nunique()} files, {len(GROUPS)} held-out groups, "
          f"embedder {embedder.label}", flush=True)

    per_row = []
    for group in GROUPS:
        start = time.perf_counter()
        held = data["source"].isin(group).to_numpy()
        train, test = data[~held].reset_index(drop=True), data[held].reset_index(drop=True)
        truth = test[PROMPT].tolist()
        rows = pd.DataFrame({"id": test["id"], "source": test["source"]})
        rules = EvidenceMethod(EvidenceConfig(embedder=args.embedder))
        rules.embedder = embedder
        rows["rules"] = rules.predict(test)
        rows["constant"] = best_constant(train[PROMPT].tolist(), embedder.encode)
        for name in variants:
            method = EvidenceMethod(EvidenceConfig(embedder=args.embedder, **variant_options(name)))
            method.embedder = embedder
            method.fit(train)
            rows[name] = method.predict(test)
            chosen = ", ".join(f"{k}: {'abstain' if c.abstain else repr(c.template)} "
                               f"({c.rows} rows, {c.train_score:.3f} vs constant {c.baseline:.3f})"
                               for k, c in method.choices.items())
            verbs = ", ".join(f"{k}: {len(v)} cues" for k, v in method.verbs.items())
            print(f"held out {'+'.join(group)} | {name}: {chosen}; verbs {verbs}", flush=True)
        for column in ["rules", "constant", *variants]:
            answered = rows[column].map(lambda p: isinstance(p, str) and bool(p.strip())).to_numpy()
            scores = np.full(len(rows), np.nan)
            if answered.any():
                scores[answered] = score(rows.loc[answered, column].tolist(),
                                         [truth[i] for i in np.flatnonzero(answered)], embedder).per_row
            rows[f"{column} score"] = scores
        per_row.append(rows)
        embedder.save()
        print(f"held out {'+'.join(group)}: {len(test)} rows in {time.perf_counter() - start:.0f} s", flush=True)
    table = pd.concat(per_row, ignore_index=True)
    if args.out:
        table.to_csv(args.out, index=False)
    print(f"\nper held-out source, scores on the rows each evidence variant covers [{embedder.label}]:")
    print(summary(table, ["rules", *variants]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def summary(table, variants: list[str]):
    """One line per (source, variant): coverage, its score on covered rows, and rules / constant on those rows;
    then the pooled rows and the mean over sources."""
    import pandas as pd

    lines = []
    for source, rows in [*table.groupby("source", sort=False), ("all (pooled rows)", table)]:
        for name in variants:
            covered = rows[f"{name} score"].notna()
            lines.append({"source": source, "variant": name, "rows": len(rows), "covered": int(covered.sum()),
                          "coverage": covered.mean(), "evidence": rows.loc[covered, f"{name} score"].mean(),
                          "rules only": rows.loc[covered, "rules score"].mean(),
                          "best constant": rows.loc[covered, "constant score"].mean()})
    frame = pd.DataFrame(lines).astype({"rows": "Int64", "covered": "Int64"})
    per_source = frame[~frame["source"].str.startswith("all")]
    means = per_source.groupby("variant", sort=False)[["coverage", "evidence", "rules only", "best constant"]].mean()
    return pd.concat([frame, means.reset_index().assign(source="mean over sources")], ignore_index=True)


if __name__ == "__main__":
    main()
