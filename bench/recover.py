"""Rows per second of `recover` with a fitted ensemble at two sizes, and each member's warm cost, in one run."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from promptrec.data import PAIR_COLUMNS, read_table, write_table
from promptrec.methods.base import Composite, load_method
from promptrec.pipeline import recover


def timed_recover(pairs, method, folder: Path) -> float:
    """Seconds of the whole `recover` (read, predict, write) of `pairs` with the loaded `method`."""
    write_table(folder / "pairs.csv", pairs)
    start = time.perf_counter()
    recover(folder / "pairs.csv", folder / "submission.csv", method)
    return time.perf_counter() - start


def sizes(text: str) -> list[int]:
    """`300,2000` -> [300, 2000]: positive row counts (argparse turns a ValueError into one usage line)."""
    counts = [int(part) for part in text.split(",")]
    if any(count < 1 for count in counts):
        raise ValueError(text)
    return counts


def main() -> None:
    """Warm the models on a few rows, time `recover` on each size (disjoint rows, so nothing is embedded twice),
    then each member's predict on the largest set again (warm: its texts already embedded)."""
    parser = argparse.ArgumentParser(prog="promptrec bench recover")
    parser.add_argument("--model", default="out/demo/models", help="a folder saved by `promptrec fit` (make demo writes one)")
    parser.add_argument("--data", default="examples/test.csv", help="pairs to recover")
    parser.add_argument("--rows", type=sizes, default="300,2000", help="sizes to time, comma-separated (capped by --data)")
    parser.add_argument("--warmup", type=int, default=8, help="rows recovered first to load the models (not timed)")
    args, _ = parser.parse_known_args()
    pairs = read_table(args.data, PAIR_COLUMNS)
    method = load_method(args.model)
    print(f"recover with {args.model} ({method.name}) on rows of {args.data} ({len(pairs)} rows)")
    with tempfile.TemporaryDirectory() as tmp:
        timed_recover(pairs.head(args.warmup), method, Path(tmp))
        start, rates, last = args.warmup, [], pairs.head(0)
        for size in args.rows:
            chosen = pairs.iloc[start : start + size]
            if chosen.empty:
                print(f"  {size:>6} rows: none left in {args.data}")
                continue
            start, last = start + len(chosen), chosen
            seconds = timed_recover(last, method, Path(tmp))
            rates.append(len(last) / seconds)
            print(f"  whole recover, {len(last):>6} new rows {rates[-1]:8.2f} rows/s  ({seconds:.1f} s, models loaded)")
    if len(rates) > 1:
        print(f"  rows/s at the largest size / the smallest: {rates[-1] / rates[0]:.2f}")
    members = method.members if isinstance(method, Composite) else {}
    for label, member in members.items():
        start = time.perf_counter()
        member.predict(last)
        milliseconds = (time.perf_counter() - start) * 1000
        print(f"  member {label:<12}{milliseconds * 1000 / max(len(last), 1):10.2f} ms per 1,000 rows "
              "(warm: models loaded, texts already embedded)")


if __name__ == "__main__":
    main()
