"""Peak memory (RSS) and wall time of `promptrec fit` with the default ensemble on every shared triple file, at 1x
the rows and (`--scales 0.1,1,10`) at fractions (a seeded sample of each file) or synthetic multiples of them,
each in a child process with a cold cache (no encoder features or embeddings from earlier runs), side by side with
their growth ratios against the first scale. 1x: several minutes on one thread; 10x: about ten times that.

Rows past 1x are **synthetic**: each joins the first half of one shared row's texts (original and rewrite) to the
second half of another's of the same file, with the first row's prompt, so every text is new to the encoder; each
file grows by the same multiple, so `fit` still sees six sources.
Run: `PROMPTREC_THREADS=1 promptrec bench fit_memory --scales 1,10` (or `--methods constant` for a quick check).
"""

from __future__ import annotations

import argparse
import os
import resource
import runpy
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from promptrec.data import ORIGINAL, REWRITTEN, TRIPLE_COLUMNS, read_table, write_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = ("gemma_1100", "gemma_rerun_994", "dolly_gemini_500", "gpt35_1080", "llama3_456", "gemma_wiki_2977")
peak_rss_mb = runpy.run_path(str(Path(__file__).with_name("recover_memory.py")))["peak_rss_mb"]


def half_and_half(first: str, second: str) -> str:
    """The first half of `first`'s words, then the second half of `second`'s."""
    head, tail = str(first).split(), str(second).split()
    return " ".join(head[: len(head) // 2] + tail[len(tail) // 2 :])


def scaled(triples: pd.DataFrame, scale: float, seed: int = 0) -> pd.DataFrame:
    """Below 1, a seeded sample of `scale` of the rows; else the rows, then `scale - 1` synthetic copies of them
    (`half_and_half` with a random partner row)."""
    rng = np.random.default_rng(seed)
    if scale < 1:
        return triples.iloc[np.sort(rng.choice(len(triples), max(1, round(len(triples) * scale)), replace=False))]
    copies = [triples]
    for copy in range(1, int(scale)):
        partner = triples.iloc[rng.permutation(len(triples))].reset_index(drop=True)
        copies.append(triples.assign(
            id=[f"x{copy}-{i}" for i in range(len(triples))],
            **{column: [half_and_half(a, b) for a, b in zip(triples[column], partner[column])]
               for column in (ORIGINAL, REWRITTEN)}))
    return pd.concat(copies, ignore_index=True)


def measure(data: list[Path], methods: str | None, tmp: str) -> tuple[float, float, float]:
    """(peak RSS MiB, wall seconds, CPU seconds) of `fit DATA...` in a child with a fresh PROMPTREC_CACHE; the CPU
    time is the fairer figure on a shared host."""
    argv = ["fit", *map(str, data), "-o", f"{tmp}/models", "--quiet", *(["--methods", methods] if methods else [])]
    before = os.environ.get("PROMPTREC_CACHE")
    os.environ["PROMPTREC_CACHE"] = f"{tmp}/cache"
    try:
        started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        peak = peak_rss_mb(argv)
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        return peak, time.perf_counter() - started, used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    finally:
        if before is None:
            del os.environ["PROMPTREC_CACHE"]
        else:
            os.environ["PROMPTREC_CACHE"] = before


def main() -> None:
    """Fit each scale in a child process; print rows, peak RSS and wall time per scale, then the growth ratios."""
    parser = argparse.ArgumentParser(prog="promptrec bench fit_memory", description=__doc__)
    parser.add_argument("--methods", default=None, help="members as `fit --methods` takes them (default: fit's)")
    parser.add_argument("--scales", default="1", help="comma-separated fractions or multiples of the shared rows, e.g. 0.1,1,10")
    args, _ = parser.parse_known_args()  # `promptrec bench fit_memory` leaves its own words in sys.argv
    try:
        scales = [float(s) for s in args.scales.split(",")]
    except ValueError:
        scales = []
    if not scales or any(s <= 0 or (s > 1 and not s.is_integer()) for s in scales):
        parser.error(f"--scales: fractions up to 1 or whole multiples, e.g. 0.1,1,10, not {args.scales!r}")
    files = [DATA / f"{name}.csv" for name in FILES]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise SystemExit(f"fit_memory needs the shared triple files; missing: {', '.join(missing)}")
    shared = {path.name: read_table(path, TRIPLE_COLUMNS) for path in files}
    results = []
    for scale in scales:
        with tempfile.TemporaryDirectory() as tmp:
            data, rows = [Path(tmp) / name for name in shared], 0
            for path, triples in zip(data, shared.values()):
                frame = scaled(triples, scale)
                write_table(path, frame)
                rows += len(frame)
            size_mb = sum(path.stat().st_size for path in data) / 2**20
            peak, seconds, cpu = measure(data, args.methods, tmp)
        results.append((scale, rows, peak, seconds, cpu))
        label = "a sample of the six shared files" if scale < 1 else "the six shared files" if scale == 1 else "synthetic past 1x"
        print(f"fit ({args.methods or 'default ensemble'}) at {scale:g}x: {rows} rows ({label}, {size_mb:.1f} MiB): "
              f"peak RSS {peak:.0f} MiB, wall {seconds:.0f} s, CPU {cpu:.0f} s", flush=True)
    base = results[0]
    for scale, rows, peak, seconds, cpu in results[1:]:
        growth = rows / base[1]
        print(f"{scale:g}x vs {base[0]:g}x: rows x{growth:.1f}, peak RSS x{peak / base[2]:.2f}, wall x{seconds / base[3]:.2f}, "
              f"CPU x{cpu / base[4]:.2f} (linear: x{growth:.1f})")


if __name__ == "__main__":
    main()
