"""Longer fuzzing run of the reader and cleaner than CI's bounded one: `promptrec bench fuzz --examples N`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest


def main() -> None:
    """Run tests/test_fuzz.py with N examples per target and print the outcome."""
    parser = argparse.ArgumentParser(prog="promptrec bench fuzz")
    parser.add_argument("--examples", type=int, default=20000, help="inputs per fuzz target")
    args, _ = parser.parse_known_args()
    os.environ["PROMPTREC_FUZZ_EXAMPLES"] = str(args.examples)
    tests = Path(__file__).resolve().parents[1] / "tests" / "test_fuzz.py"
    code = pytest.main(["-q", "-p", "no:cacheprovider", str(tests)])
    print(f"fuzzed reader and cleaner with {args.examples} inputs each: {'no crash' if code == 0 else 'FAILURES'}")
    sys.exit(int(code))


if __name__ == "__main__":
    main()
