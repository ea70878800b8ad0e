"""The cross-validation report: summary tables, report.md, oof.csv and PNG plots of a `cv.CVResult`.

`cv` calls this module, so it takes the result as it comes and imports nothing from `cv`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from promptrec.data import ID, ORIGINAL, SOURCE, atomic_write, write_table

# Columns of the out-of-fold table (oof.csv) besides the triples' own.
# answered: False where the method abstained and the fallback prompt was scored instead.
FOLD, METHOD, PREDICTION, SCORE, ANSWERED = "fold", "method", "prediction", "score", "answered"
LENGTH_BINS = [0, 5, 10, 20, 40, np.inf]  # true-prompt word counts for the score-by-length plot


def summary(result) -> pd.DataFrame:
    """Per method: mean and std over folds of the fold means, pooled mean, rows, fit and predict seconds."""
    per_fold = result.oof.groupby([METHOD, FOLD], sort=False)[SCORE].mean().unstack(FOLD)
    times = result.timings.groupby(METHOD, sort=False)[["fit_seconds", "predict_seconds"]].sum()
    out = pd.DataFrame({
        "mean": per_fold.mean(axis=1), "std": per_fold.std(axis=1, ddof=1),
        "pooled": result.oof.groupby(METHOD, sort=False)[SCORE].mean(),
        "rows": result.oof.groupby(METHOD, sort=False)[SCORE].size(),
    }).join(times)
    return out


def abstention_tables(result) -> dict[str, pd.DataFrame]:
    """Per method that abstains on some scored rows: every method's mean score per fold on those same rows (rows in
    brackets), e.g. the gate against each of its members where the evidence member found nothing."""
    oof, names = result.oof, result.folds.names
    tables = {}
    for method in dict.fromkeys(oof[METHOD]):
        own = oof[oof[METHOD] == method]
        if own[ANSWERED].all() or oof[METHOD].nunique() < 2:
            continue
        skipped = own.loc[~own[ANSWERED]]
        abstained = set(zip(skipped[FOLD], skipped[SOURCE], skipped[ID]))
        rows = oof[[key in abstained for key in zip(oof[FOLD], oof[SOURCE], oof[ID])]]
        means = rows.groupby([METHOD, FOLD], sort=False)[SCORE].mean().unstack(FOLD)
        counts = skipped.groupby(FOLD).size()
        tables[method] = pd.DataFrame({
            "method": means.index, "mean over folds": [f"{v:.4f}" for v in means.mean(axis=1)],
            **{f"{names[k]} ({counts.get(k, 0)})": [f"{v:.4f}" for v in means[k]] for k in means.columns}})
    return tables


def _markdown(frame: pd.DataFrame) -> str:
    """A plain pipe table (no tabulate dependency)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def write_report(result) -> None:
    """Write oof.csv, the plots and report.md (last) into the result's folder, each file atomically."""
    folder, label, table, folds, settings = result.folder, result.label, result.data, result.folds, result.settings
    write_table(folder / "oof.csv", result.oof)
    plots = write_plots(result)
    stats = summary(result)
    best = stats["mean"].idxmax()
    main = pd.DataFrame({
        "method": stats.index,
        "name": [next(s.name for s in result.specs if s.label == m) for m in stats.index],
        f"score [{label}] mean ± std over {folds.unit}": [f"{m:.4f} ± {s:.4f}"
                                                          for m, s in zip(stats["mean"], stats["std"])],
        "pooled": [f"{v:.4f}" for v in stats["pooled"]],
        "rows": stats["rows"].to_numpy(),
        "fit s": [f"{v:.1f}" for v in stats["fit_seconds"]],
        "predict s": [f"{v:.1f}" for v in stats["predict_seconds"]],
    })
    per_fold = result.oof.groupby([METHOD, FOLD], sort=False)[SCORE].mean().unstack(FOLD)
    per_fold_table = pd.DataFrame({"method": per_fold.index, **{folds.names[k]: [f"{v:.4f}" for v in per_fold[k]]
                                                                for k in per_fold.columns}})
    sources = table[SOURCE].unique().tolist()
    scored = int(result.timings.groupby(FOLD)["rows"].first().sum())
    sizes = [int((folds.of == k).sum()) for k in range(len(folds.names))]
    if folds.by == "source":
        scheme = (f"- leave one source out: {len(folds.names)} folds, each holding out one file (files that share an "
                  "original text together) and training on the rest; no original text is on both sides; held out: "
                  + ", ".join(f"{name} ({size} rows)" for name, size in zip(folds.names, sizes)))
        headline = ["- headline: mean ± std over held-out sources (each source weighs the same); "
                    "pooled: mean over every scored row"]
    else:
        scheme = (f"- {len(folds.names)} folds grouped by original_text (seed {settings.seed}); no original text is in "
                  f"two folds; fold sizes {', '.join(map(str, sizes))}")
        headline = []
    lines = [
        "# Cross-validation report", "",
        f"Every score is the mean sharpened cosine similarity (cos**3) under the embedder **{label}**.", "",
        f"- data: {', '.join(f'{s} ({int((table[SOURCE] == s).sum())} rows)' for s in sources)}; "
        f"{len(table)} rows, {table[ORIGINAL].str.strip().nunique()} distinct original texts",
        scheme,
        f"- scored rows: {scored} of {len(table)}" + (f" (limit {settings.limit} held-out rows per fold, seeded subsample)"
                                                      if settings.limit else " (all held-out rows)"),
        "- options: " + ("; ".join(f"{s.label} = {s.name} {json.dumps(s.options, default=str)}" for s in result.specs)),
        *headline,
        f"- best by mean over {folds.unit}: **{best}** ({stats.loc[best, 'mean']:.4f} [{label}])",
        *(["- an ensemble reuses members that ran alone in the same fold and invocation (same name and options); "
           "its fit/predict seconds then exclude those members"] if any(s.members for s in result.specs) else []),
        "",
        f"## Scores [{label}]", "", _markdown(main), "",
        f"## Per {'held-out source' if folds.by == 'source' else 'fold'} [{label}]", "", _markdown(per_fold_table), "",
    ]
    if len(sources) > 1:
        per_source = result.oof.groupby([METHOD, SOURCE], sort=False)[SCORE].mean().unstack(SOURCE)[sources]
        lines += [f"## Per source file (pooled over folds) [{label}]", "",
                  _markdown(pd.DataFrame({"method": per_source.index,
                                          **{s: [f"{v:.4f}" for v in per_source[s]] for s in sources}})), ""]
    for method, frame in abstention_tables(result).items():
        lines += [f"## On the rows where {method} abstains [{label}]", "",
                  f"Each method on the same rows (their count per fold in brackets): where {method} answers nothing, "
                  "the rest must carry the row.", "", _markdown(frame), ""]
    lines += ["## Files", "", "- oof.csv: out-of-fold prediction and score per method and row",
              *[f"- {name}: {what}" for name, what in plots], "- parts/: per method and fold, reused by an identical rerun", ""]
    with atomic_write(folder / "report.md") as handle:
        handle.write("\n".join(lines))


def write_plots(result) -> list[tuple[str, str]]:
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
