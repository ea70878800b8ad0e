"""Nested leave-one-source-out CV of the ensemble's gate from cached member predictions [proxy].

The outer folds are `promptrec cv --by source`'s; inside each, the gate trains on its members' out-of-fold
predictions over the other sources, as `fit` does (one inner fold per source, `--gate-rows` rows each). A member
fitted without sources {S, T} serves both nestings (outer S, inner T and outer T, inner S), so 15 fits per member
replace cv's 25, and every prediction is cached in `--out`: a rerun only scores gate variants (about a minute).
Prints, per held-out source, each member and gate variant on all scored rows and on the rows where the evidence
member abstains: the plain gate, the calibrated one (`fit`'s default), form features as inputs or `form` as a
member, with `--mean-seconds` a mean prompt (optimize-prompt per outer fold) alone and appended to each member (the
ensemble's `hedge_steps`; with `--plus`, the fifth member hedged too), and the oracle (the best member per row).
`--extra LABEL=METHOD --option 'LABEL={yaml}'` adds a member with options;
`--base` names the four members the gate variants use (e.g. `best,bankw,regw,evidence`), `--plus` adds one as a
fifth (plain and calibrated), `--outer` scores a subset of held-out sources; `--shard i/n` fills only
every n-th fit, so slow members (lora) fill copies of `--out` in parallel (merge their predictions.json, then rerun).
Run: `promptrec bench gate_loso [--limit 400] [--gate-rows 400] [--extra form] [--mean-seconds 60] [--out DIR]`;
the first run fills the cache in about 5 minutes on one thread with warm feature caches (25 without).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evidence_cv import DiskMemo  # noqa: E402  (an embedder memo persisted between runs)
from regressor import SHARED  # noqa: E402  (the shared data folder)

FILES = ("gemma_1100", "gemma_rerun_994", "dolly_gemini_500", "gpt35_1080", "llama3_456", "gemma_wiki_2977")
MEMBER_AXIS = ("answered", "prompt_emb", "prompt_words")  # inputs indexed (member, row, ...)
OPTIONS = {"best": {"select": True}, "bank": {"query": "direction"}}


def fit_members(specs: list[tuple[str, str]], table, excluded: frozenset[int], rows: list[int], fold_of, memo) -> dict:
    """Fit each member on the rows outside the `excluded` folds and predict `rows`: prompts and, for a member that
    predicts embeddings, those too."""
    from promptrec.methods.base import PredictsEmbeddings, from_name

    train = table[~np.isin(fold_of, list(excluded))].reset_index(drop=True)
    pairs = table.iloc[rows].reset_index(drop=True)
    out = {}
    for label, name in specs:
        member = from_name(name, **OPTIONS.get(label, {}))
        member.embedder = memo
        start = time.perf_counter()
        member.fit(train)
        answers = member.predict(pairs)
        record = {"prompts": dict(zip(map(str, rows), answers))}
        if isinstance(member, PredictsEmbeddings):
            record["reference"] = dict(zip(map(str, rows), member.predict_embeddings(pairs).tolist()))
        out[label] = record
        print(f"  {label} without folds {sorted(excluded)}: fit+predict {time.perf_counter() - start:.0f} s "
              f"({len(train)} train rows, {len(rows)} predicted)", flush=True)
    return out


def main() -> None:
    """Fill the cache of member predictions, then print members and gate variants per held-out source."""
    parser = argparse.ArgumentParser(prog="promptrec bench gate_loso", description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=400, help="scored held-out rows per outer fold")
    parser.add_argument("--gate-rows", type=int, default=400, help="gate training rows per inner fold")
    parser.add_argument("--members", default="best=constant,bank,regressor,evidence")
    parser.add_argument("--extra", default="", help="more members, cached too (e.g. form)")
    parser.add_argument("--mean-seconds", type=float, default=0, help=">0: also a mean prompt (optimize-prompt) "
                        "per outer fold, alone and appended to each member's prompt")
    parser.add_argument("--mean-steps", type=int, default=30)
    parser.add_argument("--mean-guided", type=float, default=0.0, help="the mean prompt search's guided share")
    parser.add_argument("--option", action="append", default=[], help="label={yaml options} of a member; repeatable")
    parser.add_argument("--base", default="best,bank,regressor,evidence",
                        help="the gate's four members, in the roles of best, bank, regressor, evidence")
    parser.add_argument("--out", type=Path, default=Path("out/gate_loso"))
    parser.add_argument("--plus", default="", help="comma-separated member labels each added to the gate as a fifth "
                        "member, plain and calibrated (e.g. lora)")
    parser.add_argument("--outer", default="", help="comma-separated outer folds to score (0-based; default all)")
    parser.add_argument("--shard", default="", help="i/n: only fill the cache's fits i, i+n, ... (then stop), so n "
                        "processes fill copies of --out in parallel; merge their predictions.json before scoring")
    args = parser.parse_args()

    import yaml

    from promptrec.data import ORIGINAL, PROMPT, SOURCE, read_triples
    from promptrec.methods.base import parse_members
    from promptrec.metric import load_embedder
    from promptrec.splits import scored_rows, source_folds

    table = read_triples([SHARED / f"{name}.csv" for name in FILES])
    fold_of, names = source_folds(table[SOURCE].tolist(), table[ORIGINAL].tolist())
    memo = DiskMemo(load_embedder("proxy"), Path(args.out) / "embeddings")
    for text in args.option:
        label, _, body = text.partition("=")
        OPTIONS[label] = yaml.safe_load(body) or {}
    specs = parse_members([m for m in (args.members + "," + args.extra).split(",") if m])
    labels = [label for label, _ in specs]

    # Which rows each fit (by excluded folds) must predict: the gate's inner rows and the scored outer rows.
    wanted: dict[frozenset[int], set[int]] = {}
    plan = []  # per outer fold: (its index, scored rows, [(inner fold's global index, inner rows)])
    outer_folds = [int(f) for f in args.outer.split(",")] if args.outer else list(range(len(names)))
    for s in outer_folds:
        train_idx = np.flatnonzero(fold_of != s)
        inner_of, _ = source_folds(table[SOURCE].iloc[train_idx].tolist(), table[ORIGINAL].iloc[train_idx].tolist())
        inner = []
        for t in range(int(inner_of.max()) + 1):
            rows = train_idx[scored_rows(inner_of, t, args.gate_rows, 0)]
            t_global = int(fold_of[rows[0]])
            wanted.setdefault(frozenset({s, t_global}), set()).update(rows.tolist())
            inner.append((t_global, rows))
        outer = scored_rows(fold_of, s, args.limit, 0)
        wanted.setdefault(frozenset({s}), set()).update(outer.tolist())
        plan.append((s, outer, inner))

    cache_path = Path(args.out) / "predictions.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    shard, shards = map(int, args.shard.split("/")) if args.shard else (0, 1)
    for index, (excluded, rows) in enumerate(sorted(wanted.items(), key=lambda kv: sorted(kv[0]))):
        if index % shards != shard:
            continue
        key = ",".join(map(str, sorted(excluded)))
        todo = [(label, name) for label, name in specs if key not in cache.get(label, {})
                or not set(map(str, rows)) <= set(cache[label][key]["prompts"])]
        if todo:
            for label, record in fit_members(todo, table, excluded, sorted(rows), fold_of, memo).items():
                cache.setdefault(label, {})[key] = record
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_text(json.dumps(cache))
            memo.save()

    if args.shard:
        return
    truth_emb = memo.encode(table[PROMPT].astype(str).tolist())
    means = {}
    if args.mean_seconds > 0:
        from promptrec.optimize import OptimizeConfig, optimize_prompts

        for s in outer_folds:
            key = f"mean{args.mean_seconds:g}" + (f"s{args.mean_steps}g{args.mean_guided:g}" if args.mean_guided else "")
            if str(s) not in cache.get(key, {}):
                prompts = table[PROMPT][fold_of != s].astype(str).tolist()
                search = OptimizeConfig(steps=args.mean_steps, seconds=args.mean_seconds, guided=args.mean_guided)
                cache.setdefault(key, {})[str(s)] = optimize_prompts(prompts, memo, config=search).result.text
                cache_path.write_text(json.dumps(cache))
            means[s] = cache[key][str(s)]
            print(f"mean prompt without {names[s]}: {means[s]}", flush=True)
    base = args.base.split(",")
    plus = [label for label in args.plus.split(",") if label]
    results = evaluate(table, plan, cache, labels, memo, truth_emb, lambda every: variants(every, base, plus), means)
    memo.save()
    print_tables(results, {s: names[s] for s in outer_folds})


def member_inputs(table, rows: np.ndarray, key: str, cache: dict, labels: list[str], memo, suffix: str = "") -> dict:
    """What the gate reads of `labels` on `rows` from the fits without folds `key`: answered (m, n), prompt
    embeddings (m, n, d), prompt words (m, n), change (n,), rewrite words (n,), reference (n, d), form (n, 30)."""
    from promptrec.data import ORIGINAL, REWRITTEN
    from promptrec.methods.base import FALLBACK_PROMPT
    from promptrec.methods.form import form_matrix
    from promptrec.methods.gate import pair_change, words

    pairs = table.iloc[rows]
    columns = [[(cache[label][key]["prompts"][str(r)] or "").strip() for r in rows] for label in labels]
    if suffix:  # pseudo-members: the mean prompt alone, then each member's prompt with it appended
        columns += [[suffix] * len(rows)] + [[f"{p} {suffix}" if p else "" for p in col] for col in columns]
    original, rewritten = memo.encode(pairs[ORIGINAL].astype(str).tolist()), memo.encode(pairs[REWRITTEN].astype(str).tolist())
    reference = next((np.array([cache[label][key]["reference"][str(r)] for r in rows], dtype=np.float32)
                      for label in labels if "reference" in cache[label][key]), np.zeros((len(rows), memo.dim), np.float32))
    form = form_matrix(pairs)
    return {"answered": np.array([[bool(p) for p in col] for col in columns], dtype=bool).reshape(len(columns), len(rows)),
            "prompt_emb": np.stack([memo.encode([p or FALLBACK_PROMPT for p in col]) for col in columns]),
            "prompt_words": np.stack([words(col) for col in columns]), "change": pair_change(original, rewritten),
            "rewrite_words": words(pairs[REWRITTEN].tolist()), "reference": reference, "original": original,
            "form": np.sign(form) * np.log1p(np.abs(form))}


def features_of(inputs: dict, idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The default gate's features (m', n, F) and answered (m', n) for the members `idx` only."""
    from promptrec.methods.gate import gate_features

    answered = inputs["answered"][idx]
    return gate_features(answered, inputs["prompt_emb"][idx], inputs["prompt_words"][idx], inputs["change"],
                         inputs["rewrite_words"], inputs["reference"], inputs["original"]), answered


def with_form(features: np.ndarray, inputs: dict, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Features plus the row's standardised form features, the same for every member."""
    form = (inputs["form"] - mean) / scale
    return np.concatenate([features, np.broadcast_to(form, (features.shape[0], *form.shape))], axis=-1)


def plain_gate(labels: list[str], idx: list[int], form: bool = False, calibrate: bool = False):
    """The gate over members `idx` (positions in `labels`), optionally reading the form too; `calibrate`:
    defaults and margins per kind of row from the inner folds (the library's default)."""
    from promptrec.methods.gate import Gate

    def choose(train: dict, test: dict) -> np.ndarray:
        x_train, a_train = features_of(train, idx)
        x_test, a_test = features_of(test, idx)
        if form:
            mean, scale = train["form"].mean(axis=0), train["form"].std(axis=0) + 1e-6
            x_train, x_test = with_form(x_train, train, mean, scale), with_form(x_test, test, mean, scale)
        gate = Gate.fit([str(i) for i in idx], x_train, train["scores"][idx], a_train,
                        groups=train["group"] if calibrate else None)
        if calibrate:
            print("    calibrated over " + ", ".join(labels[i] for i in idx) + ": " + "; ".join(
                f"where {'+'.join(labels[idx[m]] for m in np.flatnonzero(kind))} answer, {labels[idx[d]]} "
                f"unless beaten by {margin:g}" for kind, d, margin in zip(gate.kinds, gate.defaults, gate.margins)))
        return np.asarray(idx)[gate.choose(x_test, a_test)]

    return choose


def evaluate(table, plan, cache: dict, labels: list[str], memo, truth_emb: np.ndarray, variants,
             means: dict[int, str]) -> dict:
    """Per method (members, then variants) and outer fold: (mean score, rows) on all rows and where evidence abstains."""
    from promptrec.metric import sharpen

    results: dict = {}
    for s, outer, inner in plan:
        suffix = means.get(s, "")
        parts = [member_inputs(table, rows, ",".join(map(str, sorted({s, t}))), cache, labels, memo, suffix)
                 for t, rows in inner]
        train = {name: np.concatenate([part[name] for part in parts], axis=1 if name in MEMBER_AXIS else 0) for name in parts[0]}
        inner_rows = np.concatenate([rows for _, rows in inner])
        train["group"] = np.concatenate([np.full(len(rows), t) for t, rows in inner])
        train["scores"] = sharpen(np.einsum("mnd,nd->mn", train["prompt_emb"], truth_emb[inner_rows]))
        test = member_inputs(table, outer, str(s), cache, labels, memo, suffix)
        every = labels + (["mean", *(f"{label}+mean" for label in labels)] if suffix else [])
        test_scores = sharpen(np.einsum("mnd,nd->mn", test["prompt_emb"], truth_emb[outer]))  # (m, n)
        print(f"outer fold {s}: gate trains on {len(inner_rows)} rows", flush=True)
        abstain = ~test["answered"][labels.index("evidence")]
        picks = {label: np.full(len(outer), m) for m, label in enumerate(every)}
        picks.update({name: variant(train, test) for name, variant in variants(every).items()})
        picks["oracle (best member per row)"] = test_scores[:len(labels)].argmax(axis=0)
        for name, choice in picks.items():
            row_scores = test_scores[choice, np.arange(len(outer))]
            results.setdefault(name, {})[s] = {"all": (float(row_scores.mean()), len(outer)),
                                               "abstain": (float(row_scores[abstain].mean()), int(abstain.sum()))}
    return results


def variants(labels: list[str], roles: list[str], plus: list[str]) -> dict:
    """Gate variants by name, over the positions of the members in `labels`; `roles`: the labels playing best,
    bank, regressor and evidence; `plus`: labels each tried as a fifth member."""
    at = {label: i for i, label in enumerate(labels)}
    base = [at[x] for x in roles]
    out = {"gate": plain_gate(labels, base), "gate calibrated (default)": plain_gate(labels, base, calibrate=True),
           "gate reading the form": plain_gate(labels, base, form=True)}
    for label in plus:
        out[f"gate +{label}"] = plain_gate(labels, base + [at[label]])
        out[f"gate calibrated +{label}"] = plain_gate(labels, base + [at[label]], calibrate=True)
    if "form" in at:
        out["gate +form member"] = plain_gate(labels, base + [at["form"]], form=True)
    if "mean" in at:
        joined = [at["mean"]] + [at[f"{x}+mean"] for x in roles]
        out["gate +mean"] = plain_gate(labels, base + [at["mean"]])
        out["gate +mean +joined"] = plain_gate(labels, base + joined)
        out["gate calibrated +mean +joined"] = plain_gate(labels, base + joined, calibrate=True)
        for label in plus:
            hedged = base + [at[label]] + joined + [at[f"{label}+mean"]]
            out[f"gate +{label} +mean +joined"] = plain_gate(labels, hedged)
    return out


def print_tables(results: dict, names: dict[int, str]) -> None:
    """Two markdown tables: all scored rows, and rows where the evidence member abstains (`names`: the outer folds)."""
    for title, key in (("all scored rows", "all"), ("rows where evidence abstains", "abstain")):
        print(f"\n{title} [proxy (all-MiniLM-L6-v2)]\n")
        print("| method | mean | " + " | ".join(n.replace(".csv", "") for n in names.values()) + " |")
        print("|---|---|" + "---|" * len(names))
        for method in results:
            values = [results[method][s][key] for s in names]
            print(f"| {method} | {np.mean([v[0] for v in values]):.4f} | "
                  + " | ".join(f"{v[0]:.4f} ({v[1]})" if key == "abstain" else f"{v[0]:.4f}" for v in values) + " |")


if __name__ == "__main__":
    main()
