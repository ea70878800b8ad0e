"""Fixed-example few-shot on CPU: rows/s with and without reuse of the shared prompt prefix (llama.cpp KV cache).

With fixed examples every row's prompt starts with the same instruction + k examples; the llama.cpp backend
keeps that prefix in its KV cache (prefix_cache=True) so only the query pair is evaluated per row.
Run: promptrec bench fewshot   (or PYTHONPATH=src python bench/fewshot.py --rows 12 --k 4)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from promptrec.data import TRIPLE_COLUMNS, DataError, read_table
from promptrec.methods.fewshot import FewShotConfig, FewShotMethod

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gemma_1100.csv"


class ConstantEncoder:
    """Constant embeddings: fixed examples need no retrieval, so the bench skips the embedder."""

    label = "none"

    def encode(self, texts):
        import numpy as np

        return np.ones((len(texts), 1), dtype=np.float32)


def run(method: FewShotMethod, pairs) -> tuple[float, dict[str, float], list[str]]:
    """Seconds for `predict` over `pairs`, the backend's token stats and the predictions."""
    start = time.perf_counter()
    predictions = method.predict(pairs)
    return time.perf_counter() - start, dict(method.generator.last_stats), predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=12, help="query rows timed per setting")
    parser.add_argument("--k", type=int, default=4, help="fixed examples in the prompt")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--example-tokens", type=int, default=FewShotConfig.example_tokens, help="budget per example text (default: the method's, 128 with fixed examples)")
    parser.add_argument("--query-tokens", type=int, default=FewShotConfig.query_tokens, help="budget per query text")
    args, _ = parser.parse_known_args()  # `promptrec bench fewshot` leaves its own words in sys.argv
    if not DATA.is_file():
        raise DataError(f"{DATA}: the benchmark reads its rows from ../shared/data")
    frame = read_table(DATA, TRIPLE_COLUMNS)
    examples, pairs = frame.iloc[: args.k], frame.iloc[args.k : args.k + args.rows]
    warm = frame.iloc[args.k + args.rows : args.k + args.rows + 1]

    results = {}
    # off: every prompt from scratch; on: the KV cache of the previous row is kept, so the prefix it shares is reused.
    for setting in ("off", "on"):
        reuse = setting == "on"
        config = FewShotConfig(model=args.model, selection="fixed", k=args.k, fixed_ids=examples["id"].tolist(),
                               select_fallback=False, prefix_cache=reuse, threads=args.threads,
                               example_tokens=args.example_tokens, query_tokens=args.query_tokens)
        method = FewShotMethod(config)
        method.embedder = ConstantEncoder()
        method.fit(examples)
        method.load_generator()
        method.predict(warm)  # warms up and, with reuse, leaves the shared prefix in the cache
        results[setting] = run(method, pairs)
        prompt_tokens = len(method.generator.llm.tokenize(method.inputs(pairs.iloc[:1])[0].encode("utf-8"), special=True))
        print(f"prefix reuse {setting:3s}: {args.rows} rows in {results[setting][0]:.1f}s "
              f"= {args.rows / results[setting][0]:.2f} rows/s", flush=True)
        stats = results[setting][1]
        print(f"  prompt tokens evaluated {stats['prompt_tokens']} ({stats['prompt_tokens'] / args.rows:.0f}/row of "
              f"{prompt_tokens} in the first prompt), {stats['prompt_tokens'] / max(stats['prompt_ms'], 1e-9) * 1000:.0f} tok/s; "
              f"generated {stats['gen_tokens']} tokens, {stats['gen_tokens'] / max(stats['gen_ms'], 1e-9) * 1000:.0f} tok/s")
        del method
    same = sum(a == b for a, b in zip(results["off"][2], results["on"][2]))
    print(f"speed-up from prefix reuse: {results['off'][0] / results['on'][0]:.2f}x  "
          f"({args.model}, k={args.k}, {config.example_tokens}/{args.query_tokens} tokens per example/query text, "
          f"{args.threads} thread(s); identical greedy predictions: {same}/{args.rows})")


if __name__ == "__main__":
    main()
