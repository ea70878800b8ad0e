"""The competition's table schema: read and validate pairs/triples, write submissions atomically."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

ID, ORIGINAL, REWRITTEN, PROMPT = "id", "original_text", "rewritten_text", "rewrite_prompt"
PAIR_COLUMNS = (ID, ORIGINAL, REWRITTEN)
TRIPLE_COLUMNS = (ID, ORIGINAL, PROMPT, REWRITTEN)
SUBMISSION_COLUMNS = (ID, PROMPT)
TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl")
MIN_FREE_BYTES = 16 * 2**20  # refuse to start a write with less free disk than this


class DataError(ValueError):
    """Bad input: the message is one line naming the file, and the row and column where known."""


def _where(path: Path, row: int | None = None, column: str | None = None) -> str:
    parts = [str(path)]
    if row is not None:
        parts.append(f"row {row}" if row else "header")
    if column is not None:
        parts.append(f"column '{column}'")
    return ", ".join(parts)


def _decode(path: Path, raw: bytes) -> str:
    """Decode UTF-8 (a BOM is allowed); bad bytes raise a DataError naming their row and column."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        bad = raw[err.start : err.start + 1].hex()
        text = raw.decode("utf-8-sig", errors="replace")
        try:
            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
            for col in frame.columns:
                hit = frame[col].str.contains("\ufffd", regex=False)
                if hit.any():
                    row = int(hit.to_numpy().argmax()) + 1
                    raise DataError(f"{_where(path, row, col)}: byte 0x{bad} is not valid UTF-8") from None
        except (pd.errors.ParserError, ValueError) as inner:
            if isinstance(inner, DataError):
                raise
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: byte 0x{bad} is not valid UTF-8") from None


def _read_frame(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as err:  # pyarrow raises many types for corrupt files
            raise DataError(f"{path}: not a readable Parquet file ({type(err).__name__})") from None
    raw = path.read_bytes()
    text = _decode(path, raw)
    if suffix == ".jsonl":
        records = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{_where(path, line_no)}: invalid JSON ({err.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{_where(path, line_no)}: expected a JSON object per line")
                records.append(record)
        return pd.DataFrame.from_records(records)
    if "\x00" in text:
        raise DataError(f"{path}: contains NUL bytes; not a text CSV file")
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: malformed CSV ({str(err).strip().splitlines()[-1]})") from None


def _text_column(path: Path, frame: pd.DataFrame, col: str, warnings: list[str]) -> pd.Series:
    series = frame[col]
    if series.dtype != object and not pd.api.types.is_string_dtype(series):
        raise DataError(f"{_where(path, column=col)}: has type {series.dtype}, expected text")
    wrong = ~series.map(lambda v: isinstance(v, str) or v is None or (isinstance(v, float) and v != v))
    if wrong.any():
        row = int(wrong.to_numpy().argmax()) + 1
        raise DataError(f"{_where(path, row, col)}: expected text, got {type(series.iloc[row - 1]).__name__}")
    missing = series.isna() | (series.astype(str).str.strip() == "")
    for row in (missing.to_numpy().nonzero()[0] + 1)[:5]:
        warnings.append(f"{_where(path, int(row), col)}: empty text (the row still gets a prediction)")
    if missing.sum() > 5:
        warnings.append(f"{path}: {int(missing.sum())} empty '{col}' cells in all")
    return series.where(~series.isna(), "").astype(str)


def read_table(path: str | Path, columns: Sequence[str] = PAIR_COLUMNS) -> pd.DataFrame:
    """Read a CSV/Parquet/JSONL table in file order, checking `columns` and returning them as strings.

    Empty or NaN texts are kept as "" and listed in `frame.attrs["warnings"]`.
    Example: `read_table("test.csv")[["id", "rewritten_text"]]`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (use {', '.join(TABLE_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    frame = _read_frame(path)
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        found = ", ".join(map(str, frame.columns[:6]))
        hint = ""
        if len(frame.columns) == 1 and any(d in str(frame.columns[0]) for d in ";\t|"):
            hint = " (the delimiter looks wrong: use commas)"
        raise DataError(f"{_where(path, 0)}: missing column '{absent[0]}' (found: {found}){hint}")
    if len(frame) == 0:
        raise DataError(f"{path}: header only, no data rows")
    warnings: list[str] = []
    frame = frame.reset_index(drop=True)
    out = frame.copy()  # extra columns ride along untouched
    checked = list(columns) + ([ID] if ID in frame.columns and ID not in columns else [])
    for col in checked:
        if col == ID:
            ids = frame[ID]
            nested = ids.map(lambda v: isinstance(v, (list, dict, bytes)))
            if nested.any():
                raise DataError(f"{_where(path, int(nested.to_numpy().argmax()) + 1, ID)}: expected a scalar id")
            if ids.isna().any() or (ids.astype(str).str.strip() == "").any():
                row = int((ids.isna() | (ids.astype(str).str.strip() == "")).to_numpy().argmax()) + 1
                raise DataError(f"{_where(path, row, ID)}: empty id")
            ids = ids.astype(str)
            dup = ids.duplicated()
            if dup.any():
                row = int(dup.to_numpy().argmax())
                first = int((ids == ids[row]).to_numpy().argmax()) + 1
                raise DataError(f"{_where(path, row + 1, ID)}: duplicate id '{ids[row]}' (first at row {first})")
            out[ID] = ids
        else:
            out[col] = _text_column(path, frame, col, warnings)
    out.attrs["warnings"] = warnings
    out.attrs["path"] = str(path)
    return out


def read_texts(path: str | Path, column: str) -> list[str]:
    """Read one text column of a CSV/Parquet/JSONL table, a JSON list, or a .txt file (one per line)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            items = json.loads(_decode(path, path.read_bytes()))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise DataError(f"{path}: expected a JSON list of strings")
        return items
    if path.suffix.lower() == ".txt":
        return [line for line in _decode(path, path.read_bytes()).splitlines() if line.strip()]
    return read_table(path, columns=(column,))[column].tolist()


def ensure_writable(path: str | Path) -> Path:
    """Fail early, in one line, if `path` cannot be written (missing or read-only folder)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{path}: cannot create folder {folder} ({err.strerror})") from None
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file path")
    if not os.access(folder, os.W_OK):
        raise DataError(f"{path}: folder {folder} is not writable")
    if shutil.disk_usage(folder).free < MIN_FREE_BYTES:
        raise DataError(f"{path}: the disk holding {folder} is full")
    return path


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[io.IOBase]:
    """Write to a temp file beside `path` and rename it into place only if the block succeeds."""
    path = ensure_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_table(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a table atomically as CSV, Parquet or JSONL, chosen by the suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path}: unsupported output type '{path.suffix}' (use {', '.join(TABLE_SUFFIXES)})")
    with atomic_write(path, "wb" if suffix == ".parquet" else "w") as handle:
        if suffix == ".parquet":
            frame.to_parquet(handle, index=False)
        elif suffix == ".jsonl":
            frame.to_json(handle, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_csv(handle, index=False, lineterminator="\n")


def write_submission(path: str | Path, ids: Sequence[str], prompts: Sequence[str]) -> None:
    """Write `id,rewrite_prompt` in input order; refuses blank prompts (the competition errors on them)."""
    if len(ids) != len(prompts):
        raise ValueError(f"{len(ids)} ids but {len(prompts)} prompts")
    for row, prompt in enumerate(prompts, 1):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"row {row} (id {ids[row - 1]}): blank prompt; a method must never return one")
    with atomic_write(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(SUBMISSION_COLUMNS)
        writer.writerows(zip(ids, prompts))
