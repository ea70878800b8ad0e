"""Orchestration behind the CLI: train one method, fit an ensemble over members, recover a submission.

Each call checks that its output can be written before any expensive work, logs input warnings
(empty texts) through `logging`, and writes atomically; the CLI only parses arguments and prints results.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from promptrec.data import ID, DataError, ensure_writable, iter_table, read_triples, write_submission_chunks
from promptrec.methods.base import CONFIG_FILE, Continuable, Method, checkpoint_beside, config_from_dict, never_blank
from promptrec.methods.ensemble import EnsembleConfig, EnsembleMethod
from promptrec.progress import Steps, active

log = logging.getLogger(__name__)
Paths = str | Path | Sequence[str | Path]


def train(method: Method, data: Paths, output: str | Path, start: str | Path | None = None) -> int:
    """Fit `method` on the triples in `data`, save it to `output`, and return the number of training rows.

    A resumable method (or member of a composite) checkpoints beside `output`, so rerunning continues a killed
    training; `start`, a folder where this method was saved by an earlier `train`, trains that fit further.
    Example: `train(from_name("constant", select=True), "train.csv", "models/constant")`.
    """
    output = Path(output)
    ensure_writable(output / CONFIG_FILE)
    checkpoint_beside(method, output)
    if start is not None:
        if not isinstance(method, Continuable):
            raise DataError(f"--from {start}: method '{method.name}' cannot train a finished fit further")
        method.continue_from(Path(start))
    triples = read_triples(data)
    method.fit(triples)
    method.save(output)
    return len(triples)


# The offline default ensemble: the evidence a rewriter left, a regressor, a bank search and the best constant,
# picked per row by a gate learned on out-of-fold predictions, which may also pick a 100-step mean prompt alone or
# appended to a member's prompt (plain argmax: 0.2100 vs 0.1944 calibrated without it; README: leave-one-source-out).
# The gate learns from 400 rows per inner fold, so no large source outweighs the others (all rows: see README).
DEFAULT_MEMBERS = ["best=constant", "bank", "regressor", "evidence"]
DEFAULT_OPTIONS = {"best": {"select": True}, "bank": {"query": "direction"},
                   EnsembleMethod.name: {"mode": "gate", "hedge_steps": 100, "gate_calibrate": False, "gate_rows": 400}}


def ensemble_config(members: list[str] | None = None, options: dict[str, dict[str, Any]] | None = None) -> EnsembleConfig:
    """The ensemble over `members`, else over the members `options["ensemble"]` names (a recipe such as
    configs/fit_quality.yaml), else DEFAULT_MEMBERS with DEFAULT_OPTIONS under `options`; `options` maps a member
    label, or "ensemble" for the ensemble itself, to its options."""
    options = {label: dict(values) for label, values in (options or {}).items()}
    own = options.pop(EnsembleMethod.name, {})
    recipe = own.pop("members", None)
    members = members or recipe  # members given as arguments win over a file's
    if not members:
        defaults = {label: dict(values) for label, values in DEFAULT_OPTIONS.items()}
        own = {**defaults.pop(EnsembleMethod.name), **own}
        options = {label: {**defaults.get(label, {}), **options.get(label, {})} for label in {**defaults, **options}}
    # the config checks its members and that `options` names only them (`base.check_options`)
    return config_from_dict(EnsembleConfig, {**own, "members": list(members or DEFAULT_MEMBERS), "member_config": options},
                            "ensemble")


def fit_ensemble(data: Paths, output: str | Path, members: list[str] | None = None,
                 options: dict[str, dict[str, Any]] | None = None) -> EnsembleMethod:
    """Train every member and the ensemble over them (default: the offline default ensemble) on the triples in
    `data`; save all of it in `output`.

    Example: `fit_ensemble(["train.csv"], "models", ["constant", "bank"], {"ensemble": {"mode": "select"}})`.
    """
    ensemble = EnsembleMethod(ensemble_config(members, options))
    train(ensemble, data, output)
    return ensemble


def recover(test_path: str | Path, out_path: str | Path, method: Method, examples: Paths | None = None,
            chunk_rows: int = 10_000, predict_rows: int = 256) -> int:
    """Predict one prompt per row of `test_path`, streamed in chunks, into `id,rewrite_prompt` at `out_path`.

    `examples` (triples) fit the method first. Rows the method abstains on get `never_blank`'s fallback prompt.
    Each chunk is predicted `predict_rows` at a time, so progress (rows) moves every few seconds.
    Returns the number of rows written. Example: `recover("test.csv", "sub.csv", from_name("constant"))`.
    """
    ensure_writable(out_path)
    if examples is not None:
        method.fit(read_triples(examples))
    warnings: list[str] = []
    # the total only for a progress display: one more pass over the file, seconds against minutes of encoding
    steps = Steps("recover", sum(len(c) for c in iter_table(test_path, chunk_rows=chunk_rows)) if active() else None)

    def predicted():
        for chunk in iter_table(test_path, chunk_rows=chunk_rows, warnings=warnings):
            for start in range(0, len(chunk), predict_rows):
                pairs = chunk.iloc[start : start + predict_rows].reset_index(drop=True)
                yield pairs[ID].tolist(), never_blank(method.predict(pairs))
                steps.advance(len(pairs))

    rows = write_submission_chunks(out_path, predicted())
    for line in warnings:
        log.warning(line)
    return rows
