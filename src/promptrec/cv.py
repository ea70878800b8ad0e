"""Cross-validation: leak-free folds grouped by original text, every method trained per fold, a report folder.

The report folder holds report.md (tables), oof.csv (out-of-fold predictions and scores), PNG plots
and parts/ (one JSON per method and fold, reused when the same run is repeated).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from promptrec import checkpoint
from promptrec.data import (
    ID, ORIGINAL, PROMPT, REWRITTEN, TRIPLE_COLUMNS, DataError, atomic_write, ensure_writable, read_table, write_table,
)
from promptrec.methods.base import checkpoint_beside, config_from_dict, from_name, method_class, never_blank
from promptrec.methods.ensemble import EnsembleMethod, parse_members

SOURCE, FOLD, METHOD, PREDICTION, SCORE = "source", "fold", "method", "prediction", "score"
LENGTH_BINS = [0, 5, 10, 20, 40, np.inf]  # true-prompt word counts for the score-by-length plot


@dataclass
class CVSettings:
    """How folds are made and how much of each is scored."""

    folds: int = 5  # K: folds grouped by original_text
    seed: int = 0  # seeds the fold assignment and the --limit subsample
    limit: int = 0  # >0: predict and score at most this many held-out rows per fold (the same rows for every method)


@dataclass
class Spec:
    """One method under test: a label (unique in the run), a registered name and its options."""

    label: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identity of the trained model: name plus options (JSON, sorted)."""
        return json.dumps([self.name, self.options], sort_keys=True, default=str)


@dataclass
class CVResult:
    """Out-of-fold rows of every method, per-fold timings, and where the report went."""

    oof: pd.DataFrame  # source, id, fold, method, prediction, rewrite_prompt, score, prompt_words
    timings: pd.DataFrame  # method, fold, rows, fit_seconds, predict_seconds, cached
    label: str  # embedder label of every score
    folder: Path


def parse_specs(methods: list[str], options: dict[str, dict[str, Any]]) -> list[Spec]:
    """`["constant", "best=constant"]` plus options by label -> specs; options for an unknown label are an error."""
    pairs = parse_members(methods)
    labels = {label for label, _ in pairs}
    unknown = sorted(set(options) - labels)
    if unknown:
        raise DataError(f"options for '{unknown[0]}', which is not among the methods ({', '.join(sorted(labels))})")
    specs = [Spec(label, name, dict(options.get(label, {}))) for label, name in pairs]
    for spec in specs:  # bad options fail now, not after hours of other folds
        _check_options(spec.name, spec.options, f"method '{spec.label}'")
    return specs


def _check_options(name: str, options: dict[str, Any], source: str) -> None:
    """Build the config of `name` (and of an ensemble's members) to reject unknown options early."""
    config = config_from_dict(method_class(name).Config, dict(options), source)
    if name == EnsembleMethod.name:
        for label, member in parse_members(config.members):
            _check_options(member, config.member_config.get(label, {}), f"{source}, member '{label}'")


def read_sources(paths: list[str | Path]) -> pd.DataFrame:
    """Concatenate triple files, adding a `source` column (the file name) to tell rewriters apart."""
    names = [Path(p).name for p in paths]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise DataError(f"{duplicate}: given twice (file names label the per-source results)")
    frames = [read_table(path, TRIPLE_COLUMNS).assign(**{SOURCE: name}) for path, name in zip(paths, names)]
    return pd.concat(frames, ignore_index=True)


def group_folds(originals: list[str], folds: int, seed: int) -> np.ndarray:
    """Fold index per row; rows with the same original text (stripped) always share a fold.

    Groups are shuffled with `seed`, then the largest go first, each to the currently smallest fold.
    """
    keys = [str(text).strip() for text in originals]
    groups: dict[str, list[int]] = {}
    for row, key in enumerate(keys):
        groups.setdefault(key, []).append(row)
    if folds < 2 or folds > len(groups):
        raise DataError(f"--folds {folds}: need 2 to {len(groups)} (the number of distinct original texts)")
    order = list(groups)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda k: -len(groups[k]))  # stable: equal sizes keep the shuffled order
    sizes = [0] * folds
    fold_of = np.empty(len(keys), dtype=np.int64)
    for key in order:
        target = int(np.argmin(sizes))
        fold_of[groups[key]] = target
        sizes[target] += len(groups[key])
    return fold_of


def scored_rows(fold_of: np.ndarray, fold: int, limit: int, seed: int) -> np.ndarray:
    """Row indices of `fold` to predict: all of them, or a seeded subsample of `limit`."""
    rows = np.flatnonzero(fold_of == fold)
    if limit and len(rows) > limit:
        rows = np.sort(np.random.default_rng([seed, fold]).choice(rows, size=limit, replace=False))
    return rows


def _digest(data: pd.DataFrame) -> str:
    from promptrec.metric import text_digest

    return text_digest([str(v) for col in (SOURCE, *TRIPLE_COLUMNS) for v in data[col]])


class _Memo:
    """A fitted method whose predictions are remembered, so an ensemble reuses a member scored alone."""

    def __init__(self, method):
        self.method = method
        self.memory: dict[str, list[str]] = {}

    def __getattr__(self, attr: str):
        return getattr(self.method, attr)

    def predict(self, pairs: pd.DataFrame) -> list[str]:
        from promptrec.metric import text_digest

        key = text_digest([str(v) for col in (ID, ORIGINAL, REWRITTEN) for v in pairs[col]])
        if key not in self.memory:
            self.memory[key] = self.method.predict(pairs)
        return self.memory[key]


def _ensemble_config(spec: Spec):
    """The ensemble config a spec describes (defaults filled in)."""
    return config_from_dict(EnsembleMethod.Config, dict(spec.options), f"method '{spec.label}'")


def _member_keys(config) -> dict[str, str]:
    """Member label -> model key, as a standalone spec with the same name and options would have it."""
    return {label: Spec(label, name, dict(config.member_config.get(label, {}))).key
            for label, name in parse_members(config.members)}


def _build(spec: Spec, fitted: dict[str, Any]):
    """A fresh method for `spec`; an ensemble takes the members already fitted on this fold."""
    if spec.name != EnsembleMethod.name:
        return from_name(spec.name, **spec.options)
    config = _ensemble_config(spec)
    return EnsembleMethod(config, {label: fitted[key] for label, key in _member_keys(config).items() if key in fitted})


def run_cv(data: list[str | Path], methods: list[str], output: str | Path,
           options: dict[str, dict[str, Any]] | None = None, settings: CVSettings | None = None,
           embedder: Any = "proxy", log: Callable[[str], None] | None = None) -> CVResult:
    """Cross-validate `methods` ("name" or "label=name") on triple files and write the report folder `output`.

    Example: `run_cv(["train.csv"], ["constant", "best=constant"], "cv", {"best": {"select": True}})`.
    """
    from promptrec.metric import load_embedder, score

    settings = settings or CVSettings()
    specs = parse_specs(methods, options or {})
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise DataError(f"{output}: exists and is not a folder (the report is a folder)")
    table = read_sources(data)  # bad input fails before the report folder is made
    ensure_writable(output / "parts" / "report.md")
    fold_of = group_folds(table[ORIGINAL].tolist(), settings.folds, settings.seed)
    embedder = load_embedder(embedder) if isinstance(embedder, str) else embedder
    digest = _digest(table)
    # Members used by an ensemble are fitted once per fold and kept for it; ensembles run last.
    wanted = {key for spec in specs if spec.name == EnsembleMethod.name
              for key in _member_keys(_ensemble_config(spec)).values()}
    ordered = sorted(specs, key=lambda s: s.name == EnsembleMethod.name)
    oof, timings = [], []
    for fold in range(settings.folds):
        train = table[fold_of != fold].reset_index(drop=True)
        rows = scored_rows(fold_of, fold, settings.limit, settings.seed)
        test = table.iloc[rows].reset_index(drop=True)
        pairs = test[[ID, ORIGINAL, REWRITTEN]]
        fitted: dict[str, Any] = {}
        for spec in ordered:
            ident = json.dumps([spec.key, fold, settings.folds, settings.seed, settings.limit, digest, embedder.label])
            part = output / "parts" / f"{spec.label}-fold{fold}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}.json"
            cached = part.is_file()
            if cached:
                record = json.loads(part.read_text(encoding="utf-8"))
            else:
                method = _build(spec, fitted)
                work = part.with_suffix("")  # checkpoints of a method killed mid-fit; a rerun continues from them
                checkpoint_beside(method, work)
                start = time.perf_counter()
                method.fit(train)
                fit_seconds = time.perf_counter() - start
                if spec.key in wanted:
                    method = fitted[spec.key] = _Memo(method)
                start = time.perf_counter()
                predictions = never_blank(method.predict(pairs))  # as `recover` would submit them
                predict_seconds = time.perf_counter() - start
                result = score(predictions, test[PROMPT].tolist(), embedder)
                record = {"label": spec.label, "method": spec.name, "options": spec.options, "fold": fold,
                          "rows": rows.tolist(), "predictions": predictions, "scores": result.per_row.tolist(),
                          "embedder": embedder.label, "fit_seconds": fit_seconds, "predict_seconds": predict_seconds}
                with atomic_write(part) as handle:
                    json.dump(record, handle, default=str)
                for folder in (work, work.with_name(f"{work.name}.partial")):
                    checkpoint.remove(folder)
            oof.append(test[[SOURCE, ID, PROMPT]].assign(**{
                FOLD: fold, METHOD: spec.label, PREDICTION: record["predictions"], SCORE: record["scores"]}))
            timings.append({METHOD: spec.label, FOLD: fold, "rows": len(rows), "fit_seconds": record["fit_seconds"],
                            "predict_seconds": record["predict_seconds"], "cached": cached})
            if log:
                log(f"fold {fold + 1}/{settings.folds} {spec.label}: {np.mean(record['scores']):.4f} "
                    f"[{embedder.label}, {len(rows)} rows] fit {record['fit_seconds']:.1f} s, "
                    f"predict {record['predict_seconds']:.1f} s{' (cached)' if cached else ''}")
    order = [spec.label for spec in specs]
    frame = pd.concat(oof, ignore_index=True)
    frame[METHOD] = pd.Categorical(frame[METHOD], categories=order, ordered=True)
    frame = frame.sort_values([METHOD, FOLD], kind="stable").reset_index(drop=True)
    frame[METHOD] = frame[METHOD].astype(str)
    frame["prompt_words"] = frame[PROMPT].str.split().str.len()
    result = CVResult(frame, pd.DataFrame(timings), embedder.label, output)
    write_report(result, specs, table, fold_of, settings)
    return result


def summary(result: CVResult) -> pd.DataFrame:
    """Per method: mean and std over folds of the fold means, pooled mean, rows, fit and predict seconds."""
    per_fold = result.oof.groupby([METHOD, FOLD], sort=False)[SCORE].mean().unstack(FOLD)
    times = result.timings.groupby(METHOD, sort=False)[["fit_seconds", "predict_seconds"]].sum()
    out = pd.DataFrame({
        "mean": per_fold.mean(axis=1), "std": per_fold.std(axis=1, ddof=1),
        "pooled": result.oof.groupby(METHOD, sort=False)[SCORE].mean(),
        "rows": result.oof.groupby(METHOD, sort=False)[SCORE].size(),
    }).join(times)
    return out


def _markdown(frame: pd.DataFrame) -> str:
    """A plain pipe table (no tabulate dependency)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def write_report(result: CVResult, specs: list[Spec], table: pd.DataFrame, fold_of: np.ndarray,
                 settings: CVSettings) -> None:
    """Write oof.csv, the plots and report.md (last) into the result's folder, each file atomically."""
    folder, label = result.folder, result.label
    write_table(folder / "oof.csv", result.oof)
    plots = write_plots(result)
    stats = summary(result)
    best = stats["mean"].idxmax()
    main = pd.DataFrame({
        "method": stats.index,
        "name": [next(s.name for s in specs if s.label == m) for m in stats.index],
        f"score [{label}] mean ± std over folds": [f"{m:.4f} ± {s:.4f}" for m, s in zip(stats["mean"], stats["std"])],
        "pooled": [f"{v:.4f}" for v in stats["pooled"]],
        "rows": stats["rows"].to_numpy(),
        "fit s": [f"{v:.1f}" for v in stats["fit_seconds"]],
        "predict s": [f"{v:.1f}" for v in stats["predict_seconds"]],
    })
    per_fold = result.oof.groupby([METHOD, FOLD], sort=False)[SCORE].mean().unstack(FOLD)
    folds = pd.DataFrame({"method": per_fold.index, **{f"fold {k + 1}": [f"{v:.4f}" for v in per_fold[k]]
                                                        for k in per_fold.columns}})
    sources = table[SOURCE].unique().tolist()
    scored = int(result.timings.groupby(FOLD)["rows"].first().sum())
    lines = [
        "# Cross-validation report", "",
        f"Every score is the mean sharpened cosine similarity (cos**3) under the embedder **{label}**.", "",
        f"- data: {', '.join(f'{s} ({int((table[SOURCE] == s).sum())} rows)' for s in sources)}; "
        f"{len(table)} rows, {table[ORIGINAL].str.strip().nunique()} distinct original texts",
        f"- {settings.folds} folds grouped by original_text (seed {settings.seed}); no original text is in two folds; "
        f"fold sizes {', '.join(str(int((fold_of == k).sum())) for k in range(settings.folds))}",
        f"- scored rows: {scored} of {len(table)}" + (f" (limit {settings.limit} held-out rows per fold, seeded subsample)"
                                                      if settings.limit else " (all held-out rows)"),
        "- options: " + ("; ".join(f"{s.label} = {s.name} {json.dumps(s.options, default=str)}" for s in specs)),
        f"- best by mean over folds: **{best}** ({stats.loc[best, 'mean']:.4f} [{label}])",
        *(["- an ensemble reuses members that ran alone in the same fold and invocation (same name and options); "
           "its fit/predict seconds then exclude those members"] if any(s.name == EnsembleMethod.name for s in specs) else []),
        "",
        f"## Scores [{label}]", "", _markdown(main), "",
        f"## Per fold [{label}]", "", _markdown(folds), "",
    ]
    if len(sources) > 1:
        per_source = result.oof.groupby([METHOD, SOURCE], sort=False)[SCORE].mean().unstack(SOURCE)[sources]
        lines += [f"## Per source file (pooled over folds) [{label}]", "",
                  _markdown(pd.DataFrame({"method": per_source.index,
                                          **{s: [f"{v:.4f}" for v in per_source[s]] for s in sources}})), ""]
    lines += ["## Files", "", "- oof.csv: out-of-fold prediction and score per method and row",
              *[f"- {name}: {what}" for name, what in plots], "- parts/: per method and fold, reused by an identical rerun", ""]
    with atomic_write(folder / "report.md") as handle:
        handle.write("\n".join(lines))


def write_plots(result: CVResult) -> list[tuple[str, str]]:
    """Score distribution per method, per-row scatter of the first two methods, score by prompt length (PNG)."""
    from promptrec.models import require

    require("matplotlib", "pip install -e '.[report]'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    oof, label = result.oof, result.label
    methods = list(dict.fromkeys(oof[METHOD]))
    made = []

    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(methods)))
    ax.boxplot([oof.loc[oof[METHOD] == m, SCORE] for m in methods], orientation="horizontal", showmeans=True)
    ax.set_yticks(range(1, len(methods) + 1), methods)
    ax.set_xlabel(f"per-row score (cos**3) [{label}]")
    ax.set_title("Score distribution per method")
    made.append(_save(fig, result.folder / "score_distribution.png", "score distribution per method (box plot, mean marked)"))

    if len(methods) >= 2:
        first, second = methods[:2]
        wide = oof.pivot_table(index=[SOURCE, ID], columns=METHOD, values=SCORE, observed=True)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(wide[first], wide[second], s=6, alpha=0.4)
        low, high = float(np.nanmin(wide[[first, second]].to_numpy())), float(np.nanmax(wide[[first, second]].to_numpy()))
        ax.plot([low, high], [low, high], color="grey", linewidth=1)
        ax.set_xlabel(f"{first} [{label}]")
        ax.set_ylabel(f"{second} [{label}]")
        ax.set_title(f"Per-row score: {first} vs {second}")
        made.append(_save(fig, result.folder / "scatter.png", f"per-row scores of {first} vs {second}"))

    bins = pd.cut(oof["prompt_words"], LENGTH_BINS, right=True)
    by_length = oof.assign(bin=bins).groupby([METHOD, "bin"], observed=False, sort=False)[SCORE].mean().unstack("bin")
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [f"{int(b.left) + 1}-{int(b.right)}" if np.isfinite(b.right) else f">{int(b.left)}" for b in by_length.columns]
    for method in methods:
        ax.plot(names, by_length.loc[method].to_numpy(), marker="o", label=method)
    ax.set_xlabel("true prompt length (words)")
    ax.set_ylabel(f"mean score [{label}]")
    ax.set_title("Score by prompt length")
    ax.legend()
    made.append(_save(fig, result.folder / "score_by_length.png", "mean score by true prompt length per method"))
    return made


def _save(fig, path: Path, what: str) -> tuple[str, str]:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return path.name, what
