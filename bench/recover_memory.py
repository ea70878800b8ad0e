"""Peak memory (RSS) of `promptrec recover` on a large file vs a small one, measured in child processes."""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

SENTENCE = "The quick brown fox jumps over the lazy dog while the committee debates the annual budget. "


def peak_rss_mb(argv: list[str]) -> float:
    """Run `python -m promptrec ARGV` in a fresh child and return its peak resident memory in MiB."""
    code = (
        "import resource, runpy, sys; sys.argv = ['promptrec'] + sys.argv[1:];\n"
        "try:\n    runpy.run_module('promptrec', run_name='__main__')\n"
        "finally:\n    print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    return int(done.stderr.rsplit("PEAK", 1)[1].split()[0]) / 1024


def write_pairs(path: Path, rows: int, chars: int) -> None:
    """A synthetic pairs file: `rows` rows, texts of about `chars` characters each."""
    text = (SENTENCE * (chars // len(SENTENCE) + 1))[:chars]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "original_text", "rewritten_text"])
        writer.writerows((f"r{i}", text, text.upper()) for i in range(rows))


def main() -> None:
    """Print peak RSS for a small and a large recover side by side, and the per-row cost."""
    parser = argparse.ArgumentParser(prog="promptrec bench recover_memory")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chars", type=int, default=500, help="characters per text")
    args, _ = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "small.csv", Path(tmp) / "large.csv"
        write_pairs(small, 100, args.chars)
        write_pairs(large, args.rows, args.chars)
        base = peak_rss_mb(["recover", str(small), "-o", f"{tmp}/s.csv"])
        peak = peak_rss_mb(["recover", str(large), "-o", f"{tmp}/l.csv"])
        size_mb = large.stat().st_size / 2**20
    print(f"recover (constant) peak RSS: 100 rows {base:.0f} MiB, {args.rows} rows ({size_mb:.0f} MiB file) {peak:.0f} MiB")
    print(f"  growth {peak - base:.0f} MiB = {(peak - base) / size_mb:.1f}x the input file size")


if __name__ == "__main__":
    main()
