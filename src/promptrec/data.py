"""The competition's table schema: read and validate pairs/triples, write submissions atomically."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pandas as pd

ID, ORIGINAL, REWRITTEN, PROMPT = "id", "original_text", "rewritten_text", "rewrite_prompt"
PAIR_COLUMNS = (ID, ORIGINAL, REWRITTEN)
TRIPLE_COLUMNS = (ID, ORIGINAL, PROMPT, REWRITTEN)
SOURCE = "source"  # the training file a row came from: rewriters differ, so folds and gates can hold files out
SUBMISSION_COLUMNS = (ID, PROMPT)
TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl")
MIN_FREE_BYTES = 16 * 2**20  # refuse to start a write with less free disk than this

log = logging.getLogger(__name__)


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


def _csv_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    with open(path, "rb") as handle:
        if b"\x00" in handle.read(65536):
            raise DataError(f"{path}: contains NUL bytes; not a text CSV file")
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            yield from pd.read_csv(handle, dtype=str, keep_default_na=False, chunksize=chunk_rows)
    except UnicodeDecodeError:
        _decode(path, path.read_bytes())  # raises a DataError naming the row and column
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: malformed CSV ({str(err).strip().splitlines()[-1]})") from None


def _jsonl_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    records: list[dict] = []
    try:
        with open(path, encoding="utf-8-sig") as handle:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{_where(path, line_no)}: invalid JSON ({err.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{_where(path, line_no)}: expected a JSON object per line")
                records.append(record)
                if len(records) == chunk_rows:
                    yield pd.DataFrame.from_records(records)
                    records = []
    except UnicodeDecodeError:
        _decode(path, path.read_bytes())
        raise
    if records:
        yield pd.DataFrame.from_records(records)


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=chunk_rows)
        for batch in batches:
            yield batch.to_pandas()
    except Exception as err:  # pyarrow raises many types for corrupt files
        raise DataError(f"{path}: not a readable Parquet file ({type(err).__name__})") from None


class _Validator:
    """Checks chunks of one table in order: columns, ids unique across chunks, text cells."""

    def __init__(self, path: Path, columns: Sequence[str], warnings: list[str]):
        self.path, self.columns, self.warnings = path, list(columns), warnings
        self.offset = 0  # rows seen in earlier chunks
        self.first_row: dict[str, int] = {}  # id -> row where it first appeared
        self.empty: dict[str, int] = {}  # column -> empty cells so far

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        path = self.path
        if self.offset == 0:
            absent = [c for c in self.columns if c not in frame.columns]
            if absent:
                found = ", ".join(map(str, frame.columns[:6]))
                hint = ""
                if len(frame.columns) == 1 and any(d in str(frame.columns[0]) for d in ";\t|"):
                    hint = " (the delimiter looks wrong: use commas)"
                raise DataError(f"{_where(path, 0)}: missing column '{absent[0]}' (found: {found}){hint}")
            if ID in frame.columns and ID not in self.columns:
                self.columns.append(ID)
        out = frame.reset_index(drop=True).copy()  # extra columns ride along untouched
        for col in self.columns:
            out[col] = self._ids(frame[col].reset_index(drop=True)) if col == ID else self._text(out[col], col)
        self.offset += len(frame)
        return out

    def _row(self, mask: pd.Series) -> int:
        return self.offset + int(mask.to_numpy().argmax()) + 1

    def _ids(self, ids: pd.Series) -> pd.Series:
        nested = ids.map(lambda v: isinstance(v, (list, dict, bytes)))
        if nested.any():
            raise DataError(f"{_where(self.path, self._row(nested), ID)}: expected a scalar id")
        blank = ids.isna() | (ids.astype(str).str.strip() == "")
        if blank.any():
            raise DataError(f"{_where(self.path, self._row(blank), ID)}: empty id")
        ids = ids.astype(str)
        for local, value in enumerate(ids):
            first = self.first_row.setdefault(value, self.offset + local + 1)
            if first != self.offset + local + 1:
                row = self.offset + local + 1
                raise DataError(f"{_where(self.path, row, ID)}: duplicate id '{value}' (first at row {first})")
        return ids

    def _text(self, series: pd.Series, col: str) -> pd.Series:
        if series.dtype != object and not pd.api.types.is_string_dtype(series):
            raise DataError(f"{_where(self.path, column=col)}: has type {series.dtype}, expected text")
        wrong = ~series.map(lambda v: isinstance(v, str) or v is None or (isinstance(v, float) and v != v))
        if wrong.any():
            row = self._row(wrong)
            kind = type(series.iloc[row - self.offset - 1]).__name__
            raise DataError(f"{_where(self.path, row, col)}: expected text, got {kind}")
        missing = series.isna() | (series.astype(str).str.strip() == "")
        for local in missing.to_numpy().nonzero()[0]:
            count = self.empty[col] = self.empty.get(col, 0) + 1
            if count <= 5:
                where = _where(self.path, self.offset + int(local) + 1, col)
                self.warnings.append(f"{where}: empty text (the row still gets a prediction)")
        return series.where(~series.isna(), "").astype(str)

    def finish(self) -> None:
        """Fail on a table without rows; summarise empty cells beyond the first few."""
        if self.offset == 0:
            raise DataError(f"{self.path}: header only, no data rows")
        for col, count in self.empty.items():
            if count > 5:
                self.warnings.append(f"{self.path}: {count} empty '{col}' cells in all")


def iter_table(path: str | Path, columns: Sequence[str] = PAIR_COLUMNS, chunk_rows: int = 10_000,
               warnings: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """Read a CSV/Parquet/JSONL table in validated chunks, for files larger than memory.

    Ids are checked unique across chunks; warnings (empty texts) are appended to `warnings`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (use {', '.join(TABLE_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    chunks = {".csv": _csv_chunks, ".jsonl": _jsonl_chunks, ".parquet": _parquet_chunks}[suffix]
    validate = _Validator(path, columns, warnings if warnings is not None else [])
    for frame in chunks(path, chunk_rows):
        if len(frame):
            yield validate(frame)
    validate.finish()


def read_table(path: str | Path, columns: Sequence[str] = PAIR_COLUMNS) -> pd.DataFrame:
    """Read a CSV/Parquet/JSONL table in file order, checking `columns` and returning them as strings.

    Empty or NaN texts are kept as "" and listed in `frame.attrs["warnings"]`.
    Example: `read_table("test.csv")[["id", "rewritten_text"]]`.
    """
    warnings: list[str] = []
    frame = pd.concat(list(iter_table(path, columns, warnings=warnings)), ignore_index=True)
    frame.attrs["warnings"] = warnings
    frame.attrs["path"] = str(path)
    return frame


def read_triples(paths: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """The `id, original_text, rewrite_prompt, rewritten_text` rows of one file or several, concatenated, with a
    `source` column naming each row's file: cv's per-source results and the ensemble gate's held-out files tell
    rewriters apart by it, so two files of the same name are refused. Empty texts are logged as warnings."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise DataError("no training files given")
    names = [Path(p).name for p in paths]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise DataError(f"{duplicate}: given twice (file names label the per-source results)")
    frames = []
    for path, name in zip(paths, names):
        frame = read_table(path, TRIPLE_COLUMNS).assign(**{SOURCE: name})
        for line in frame.attrs.get("warnings", []):
            log.warning(line)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


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
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file path")
    writable_parent(path)
    return path


def writable_parent(path: str | Path) -> Path:
    """The folder `path` goes in, created if missing; one line naming `path` if it cannot be created or written,
    or its disk is full."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{path}: cannot create folder {folder} ({err.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise DataError(f"{path}: folder {folder} is not writable")
    if shutil.disk_usage(folder).free < MIN_FREE_BYTES:
        raise DataError(f"{path}: the disk holding {folder} is full")
    return folder


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
    write_submission_chunks(path, [(ids, prompts)])


def write_submission_chunks(path: str | Path, chunks: Iterable[tuple[Sequence[str], Sequence[str]]]) -> int:
    """Stream (ids, prompts) chunks into one submission, atomically; returns the rows written."""
    rows = 0
    with atomic_write(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(SUBMISSION_COLUMNS)
        for ids, prompts in chunks:
            if len(ids) != len(prompts):
                raise ValueError(f"{len(ids)} ids but {len(prompts)} prompts")
            for offset, prompt in enumerate(prompts):
                if not isinstance(prompt, str) or not prompt.strip():
                    row = rows + offset + 1
                    raise ValueError(f"row {row} (id {ids[offset]}): blank prompt; a method must never return one")
            writer.writerows(zip(ids, prompts))
            rows += len(ids)
    return rows

