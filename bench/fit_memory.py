"""Peak memory (RSS) and wall time of `promptrec fit` with the default ensemble on every shared triple file,
measured in a child process (`recover_memory.peak_rss_mb`). Several minutes on one thread.
Run: `PROMPTREC_THREADS=1 promptrec bench fit_memory` (or `--methods constant` for a quick check).
"""

from __future__ import annotations

import argparse
import runpy
import tempfile
import time
from pathlib import Path

from promptrec.data import TRIPLE_COLUMNS, read_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = ("gemma_1100", "gemma_rerun_994", "dolly_gemini_500", "gpt35_1080", "llama3_456", "gemma_wiki_2977")
peak_rss_mb = runpy.run_path(str(Path(__file__).with_name("recover_memory.py")))["peak_rss_mb"]


def main() -> None:
    """Fit into a temporary folder in a child process; print its peak RSS, wall time and the input size."""
    parser = argparse.ArgumentParser(prog="promptrec bench fit_memory", description=__doc__)
    parser.add_argument("--methods", default=None, help="members as `fit --methods` takes them (default: fit's)")
    args, _ = parser.parse_known_args()  # `promptrec bench fit_memory` leaves its own words in sys.argv
    files = [DATA / f"{name}.csv" for name in FILES]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise SystemExit(f"fit_memory needs the shared triple files; missing: {', '.join(missing)}")
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["fit", *map(str, files), "-o", f"{tmp}/models", *(["--methods", args.methods] if args.methods else [])]
        started = time.perf_counter()
        peak = peak_rss_mb(argv)
        seconds = time.perf_counter() - started
    rows = sum(len(read_table(path, TRIPLE_COLUMNS)) for path in files)
    size_mb = sum(path.stat().st_size for path in files) / 2**20
    print(f"fit ({args.methods or 'default ensemble'}) on {len(files)} shared files ({size_mb:.1f} MiB, "
          f"{rows} rows): peak RSS {peak:.0f} MiB, wall {seconds:.0f} s")


if __name__ == "__main__":
    main()
