"""Cross-validation: leak-free folds (grouped by original text, or one source file held out at a time), every
method trained per fold.

The run writes parts/ (one JSON per method and fold, reused when the same run is repeated) into the report
folder; `promptrec.report` writes the rest (report.md, oof.csv, plots).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from promptrec import checkpoint
from promptrec.data import (
    ID, ORIGINAL, PROMPT, REWRITTEN, SOURCE, TRIPLE_COLUMNS, DataError, atomic_write, ensure_writable, read_triples,
)
from promptrec.methods.base import (
    Composite, Method, answer, check_options, checkpoint_beside, config_from_dict, method_class, never_blank, parse_members,
)
from promptrec.progress import Steps
from promptrec.report import ANSWERED, FOLD, METHOD, PREDICTION, SCORE, write_report
from promptrec.splits import group_folds, scored_rows, source_folds

SCHEMES = ("text", "source")


@dataclass
class CVSettings:
    """How folds are made and how much of each is scored."""

    folds: int = 5  # K: folds grouped by original_text (by="text" only)
    seed: int = 0  # seeds the fold assignment and the --limit subsample
    limit: int = 0  # >0: predict and score at most this many held-out rows per fold (the same rows for every method)
    by: str = "text"  # text: K pooled folds grouped by original_text; source: each input file held out in turn


@dataclass
class Folds:
    """The held-out fold of every row and what the report calls each fold."""

    of: np.ndarray  # (rows,) fold index per row
    names: list[str]  # per fold: "fold 1", or the held-out files "a.csv + b.csv"
    by: str  # the scheme: "text" or "source"

    @property
    def unit(self) -> str:
        """What the headline mean is taken over."""
        return "held-out sources" if self.by == "source" else "folds"


@dataclass
class Spec:
    """One method under test: a label (unique in the run), a registered name, its options, and model keys."""

    label: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    key: str = ""  # identity of the trained model: `model_key` of a freshly built method
    members: dict[str, str] = field(default_factory=dict)  # a composite's member label -> member `model_key`


@dataclass
class CVResult:
    """Out-of-fold rows of every method, per-fold timings, the run's inputs and where the report went."""

    oof: pd.DataFrame  # source, id, fold, method, prediction, rewrite_prompt, score, answered, prompt_words
    timings: pd.DataFrame  # method, fold, rows, fit_seconds, predict_seconds, cached
    label: str  # embedder label of every score
    folder: Path
    specs: list[Spec]
    data: pd.DataFrame  # every input row, with its source column
    folds: Folds
    settings: CVSettings


def parse_specs(methods: list[str], options: dict[str, dict[str, Any]]) -> list[Spec]:
    """`["constant", "best=constant"]` plus options by label -> specs; options for an unknown label are an error."""
    pairs = parse_members(methods)
    check_options(options, pairs)
    specs = []
    for label, name in pairs:  # building each method once makes bad options fail now, not after hours of folds
        spec = Spec(label, name, dict(options.get(label, {})))
        method = build(spec)
        spec.key = model_key(method)
        if isinstance(method, Composite):
            spec.members = {member_label: model_key(member) for member_label, member in method.members.items()}
        specs.append(spec)
    return specs


def build(spec: Spec) -> Method:
    """A fresh, unfitted method for `spec`; bad options fail in one line naming the spec's label."""
    cls = method_class(spec.name)
    config = config_from_dict(cls.Config, dict(spec.options), f"method '{spec.label}'")
    try:
        return cls(config)
    except DataError as err:  # checks made when building (e.g. a composite's members' options)
        raise DataError(f"method '{spec.label}': {err}") from None


def model_key(method: Method) -> str:
    """Identity of a model before training: its method name and every config field (JSON, sorted). A standalone
    method and a composite's member with the same key are the same model."""
    return json.dumps([method.name, dataclasses.asdict(method.config)], sort_keys=True, default=str)


def make_folds(data: pd.DataFrame, settings: CVSettings) -> Folds:
    """The folds `settings.by` asks for over `data` (triples with a source column)."""
    if settings.by == "text":
        fold_of = group_folds(data[ORIGINAL].tolist(), settings.folds, settings.seed)
        return Folds(fold_of, [f"fold {k + 1}" for k in range(settings.folds)], "text")
    if settings.by == "source":
        fold_of, names = source_folds(data[SOURCE].tolist(), data[ORIGINAL].tolist())
        return Folds(fold_of, names, "source")
    raise DataError(f"--by {settings.by}: expected one of {', '.join(SCHEMES)}")


def _digest(data: pd.DataFrame) -> str:
    from promptrec.metric import text_digest

    return text_digest([str(v) for col in (SOURCE, *TRIPLE_COLUMNS) for v in data[col]])


@dataclass
class Fitted:
    """A method fitted on one fold and its answers (None where it abstains) for the fold's held-out pairs."""

    method: Method
    answers: list[str | None]


def fit_and_predict(spec: Spec, train: pd.DataFrame, pairs: pd.DataFrame, fitted: dict[str, Fitted],
                    work: Path) -> tuple[Fitted, float, float]:
    """Fit a fresh method for `spec` on `train` (checkpoints beside `work`) and answer `pairs`; a composite adopts
    the members already in `fitted` (same model key) and reuses their answers. Also returns fit and predict seconds."""
    method = build(spec)
    reused = {label: fitted[key] for label, key in spec.members.items() if key in fitted}
    for label, member in reused.items():
        method.adopt(label, member.method)
    checkpoint_beside(method, work)
    start = time.perf_counter()
    method.fit(train)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    if isinstance(method, Composite):
        answers = method.combine(pairs, {label: reused[label].answers if label in reused else member.predict(pairs)
                                         for label, member in method.members.items()})
    else:
        answers = method.predict(pairs)
    return Fitted(method, answers), fit_seconds, time.perf_counter() - start


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
    table = read_triples(data)  # bad input fails before the report folder is made
    folds = make_folds(table, settings)
    ensure_writable(output / "parts" / "report.md")
    embedder = load_embedder(embedder) if isinstance(embedder, str) else embedder
    digest = _digest(table)
    # Models a composite also uses are fitted once per fold and kept for it; composites run last.
    wanted = {key for spec in specs for key in spec.members.values()}
    ordered = sorted(specs, key=lambda s: bool(s.members))
    oof, timings = [], []
    steps = Steps("cv", len(folds.names) * len(ordered))
    for fold, fold_name in enumerate(folds.names):
        train = table[folds.of != fold].reset_index(drop=True)
        rows = scored_rows(folds.of, fold, settings.limit, settings.seed)
        test = table.iloc[rows].reset_index(drop=True)
        pairs = test[[ID, ORIGINAL, REWRITTEN]]
        fitted: dict[str, Fitted] = {}  # model key -> fitted on this fold, for composites
        for spec in ordered:
            scheme = [folds.by, len(folds.names), settings.seed, settings.limit]
            ident = json.dumps([spec.key, fold, *scheme, digest, embedder.label])
            part = output / "parts" / f"{spec.label}-fold{fold}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}.json"
            cached = part.is_file()
            steps.advance(0, f"fold {fold + 1}/{len(folds.names)} {spec.label}")
            if cached:
                record = json.loads(part.read_text(encoding="utf-8"))
            else:
                work = part.with_suffix("")  # checkpoints of a method killed mid-fit; a rerun continues from them
                done, fit_seconds, predict_seconds = fit_and_predict(spec, train, pairs, fitted, work)
                if spec.key in wanted:
                    fitted[spec.key] = done
                predictions = never_blank(done.answers)  # abstentions filled, as `recover` would submit them
                result = score(predictions, test[PROMPT].tolist(), embedder)
                record = {"label": spec.label, "method": spec.name, "options": spec.options, "fold": fold,
                          "rows": rows.tolist(), "predictions": predictions, "scores": result.per_row.tolist(),
                          "answered": [answer(a) is not None for a in done.answers],
                          "embedder": embedder.label, "fit_seconds": fit_seconds, "predict_seconds": predict_seconds}
                with atomic_write(part) as handle:
                    json.dump(record, handle, default=str)
                for folder in (work, work.with_name(f"{work.name}.partial")):
                    checkpoint.remove(folder)
            oof.append(test[[SOURCE, ID, PROMPT]].assign(**{
                FOLD: fold, METHOD: spec.label, PREDICTION: record["predictions"], SCORE: record["scores"],
                ANSWERED: record.get("answered", True)}))  # parts written before abstentions were recorded: True
            timings.append({METHOD: spec.label, FOLD: fold, "rows": len(rows), "fit_seconds": record["fit_seconds"],
                            "predict_seconds": record["predict_seconds"], "cached": cached})
            if log:
                held = f" (held out: {fold_name})" if folds.by == "source" else ""
                log(f"fold {fold + 1}/{len(folds.names)}{held} {spec.label}: {np.mean(record['scores']):.4f} "
                    f"[{embedder.label}, {len(rows)} rows] fit {record['fit_seconds']:.1f} s, "
                    f"predict {record['predict_seconds']:.1f} s{' (cached)' if cached else ''}")
            steps.advance(1, f"fold {fold + 1}/{len(folds.names)} {spec.label}")
    order = [spec.label for spec in specs]
    frame = pd.concat(oof, ignore_index=True)
    frame[METHOD] = pd.Categorical(frame[METHOD], categories=order, ordered=True)
    frame = frame.sort_values([METHOD, FOLD], kind="stable").reset_index(drop=True)
    frame[METHOD] = frame[METHOD].astype(str)
    frame["prompt_words"] = frame[PROMPT].str.split().str.len()
    result = CVResult(frame, pd.DataFrame(timings), embedder.label, output, specs, table, folds, settings)
    write_report(result)
    return result
