"""Recover prompts for a file of (original, rewritten) pairs with one method, and write a submission."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from promptrec.data import ID, ensure_writable, iter_table, write_submission_chunks
from promptrec.methods.base import Method, never_blank


def recover(test_path: str | Path, out_path: str | Path, method: Method,
            warn: Callable[[str], None] | None = None, chunk_rows: int = 10_000) -> int:
    """Predict one prompt per row of `test_path`, streamed in chunks, into `id,rewrite_prompt` at `out_path`.

    Returns the number of rows written. Example: `recover("test.csv", "sub.csv", from_name("constant"))`.
    """
    ensure_writable(out_path)
    warnings: list[str] = []

    def predicted():
        for pairs in iter_table(test_path, chunk_rows=chunk_rows, warnings=warnings):
            yield pairs[ID].tolist(), never_blank(method.predict(pairs))

    rows = write_submission_chunks(out_path, predicted())
    for line in warnings if warn else []:
        warn(line)
    return rows
