"""Recover prompts for a file of (original, rewritten) pairs with one method, and write a submission."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from promptrec.data import ID, ensure_writable, read_table, write_submission
from promptrec.methods.base import Method, never_blank


def recover(test_path: str | Path, out_path: str | Path, method: Method,
            warn: Callable[[str], None] | None = None) -> list[str]:
    """Predict one prompt per row of `test_path` and write `id,rewrite_prompt` atomically to `out_path`.

    Example: `recover("test.csv", "submission.csv", from_name("constant"))`.
    """
    ensure_writable(out_path)
    pairs = read_table(test_path)
    for line in pairs.attrs["warnings"] if warn else []:
        warn(line)
    prompts = never_blank(method.predict(pairs))
    write_submission(out_path, pairs[ID].tolist(), prompts)
    return prompts
