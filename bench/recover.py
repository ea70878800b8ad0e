"""Rows per second of `recover` with a fitted ensemble, and of each of its members, side by side in one run."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from promptrec.data import PAIR_COLUMNS, read_table, write_table
from promptrec.methods.base import Composite, load_method
from promptrec.pipeline import recover


def main() -> None:
    """Time the whole `recover` (lazy model loads included), then each member's predict on the same rows."""
    parser = argparse.ArgumentParser(prog="promptrec bench recover")
    parser.add_argument("--model", default="out/demo/models", help="a folder saved by `promptrec fit` (make demo writes one)")
    parser.add_argument("--data", default="examples/test.csv", help="pairs to recover")
    parser.add_argument("--rows", type=int, default=200, help="at most this many rows of --data")
    args, _ = parser.parse_known_args()
    pairs = read_table(args.data, PAIR_COLUMNS).head(args.rows)
    method = load_method(args.model)
    print(f"recover on {len(pairs)} rows of {args.data} with {args.model} ({method.name})")
    with tempfile.TemporaryDirectory() as tmp:
        write_table(Path(tmp) / "pairs.csv", pairs)
        start = time.perf_counter()
        recover(Path(tmp) / "pairs.csv", Path(tmp) / "submission.csv", method)
        seconds = time.perf_counter() - start
    print(f"  whole recover      {len(pairs) / seconds:8.2f} rows/s  ({seconds:.1f} s, first call: loads models)")
    members = method.members if isinstance(method, Composite) else {}
    for label, member in members.items():
        start = time.perf_counter()
        member.predict(pairs)
        seconds = time.perf_counter() - start
        print(f"  member {label:<12}{len(pairs) / seconds:10.2f} rows/s  ({seconds:.2f} s, warm: models loaded, "
              "texts already embedded)")


if __name__ == "__main__":
    main()
