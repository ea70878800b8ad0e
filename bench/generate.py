"""Rewrites per second of the default GGUF rewriter (SmolLM2-135M-Instruct): naive loop vs batched.

All settings rewrite the same (text, prompt) requests in one run:
  naive      one request at a time, every prompt evaluated from scratch (parallel=1, no prefix cache)
  batched    continuous batching of --parallel sequences, shared chat prefix evaluated once
  + q4_0     both again with the weights re-quantized to --quant (faster CPU kernels than the packaged Q4_1)
Run: `promptrec bench generate`, or `python bench/generate.py [--n 16] [--parallel 8] [--max-new-tokens 96] [--device]`.
--device adds the transformers backend (batched, GPU when present) on the same requests.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from promptrec.generate import cut_at_sentence, load_sources
from promptrec.llm.base import GenerationSettings, load_generator
from promptrec.llm.templates import chat_messages
from promptrec.models import thread_count

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FALLBACK = [
    ("The meeting has been moved to Thursday because the projector is broken. Please bring your notes.",
     "Rewrite this as a pirate would say it."),
    ("Our bakery opens at seven and sells bread, cakes and coffee until the afternoon.", "Turn this into a short poem."),
]


def requests(n: int) -> list[tuple[str, str]]:
    """`n` (text, prompt) pairs from ../shared/data when present, else a built-in pair list repeated."""
    if (SHARED / "texts_3000.csv").is_file():
        texts = load_sources(SHARED / "texts_3000.csv", "text")
        prompts = load_sources(SHARED / "rewrite_prompts_1832.json", "rewrite_prompt")
        return [(texts[i * 37 % len(texts)], prompts[i * 53 % len(prompts)]) for i in range(n)]
    return [FALLBACK[i % len(FALLBACK)] for i in range(n)]


def run(label: str, generator, pairs: list[tuple[str, str]], settings: GenerationSettings) -> dict:
    """Rewrite all pairs in one call and return throughput numbers."""
    count = getattr(generator, "count_tokens", lambda t: len(t) // 4)
    rendered = [generator.render_chat(chat_messages(cut_at_sentence(t, 128, count), p)) for t, p in pairs]
    start = time.perf_counter()
    generator.generate(rendered, settings)
    seconds = time.perf_counter() - start
    stats = generator.last_stats
    rate = lambda tokens, ms: f"{tokens / ms * 1000:7.0f}" if ms else "      -"  # noqa: E731
    return {
        "label": label, "rewrites/s": len(pairs) / seconds, "seconds": seconds,
        "prompt_tokens": stats["prompt_tokens"], "pp": rate(stats["prompt_tokens"], stats.get("prompt_ms", 0)),
        "gen_tokens": stats["gen_tokens"], "tg": rate(stats["gen_tokens"], stats.get("gen_ms", 0)),
    }


def main() -> None:
    """Run every setting on the same requests and print a side-by-side table with ratios to the naive loop."""
    parser = argparse.ArgumentParser(prog="promptrec bench generate")
    parser.add_argument("--n", type=int, default=16, help="rewrites per setting")
    parser.add_argument("--parallel", type=int, default=8, help="sequences decoded together")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--quant", default="q4_0", help="re-quantization for the third setting ('' to skip)")
    parser.add_argument("--device", action="store_true", help="also run the transformers backend")
    argv = sys.argv[sys.argv.index("generate") + 1 :] if "generate" in sys.argv else sys.argv[1:]
    args = parser.parse_args(argv)
    threads = thread_count()
    pairs = requests(args.n)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=0.9, seed=0)
    setups = [
        ("naive (1 at a time)", "llamacpp", {"parallel": 1, "prefix_cache": False}),
        (f"batched (parallel={args.parallel})", "llamacpp", {"parallel": args.parallel}),
    ]
    if args.quant:
        setups.append((f"naive + {args.quant}", "llamacpp", {"parallel": 1, "prefix_cache": False, "quant": args.quant}))
        setups.append((f"batched + {args.quant}", "llamacpp", {"parallel": args.parallel, "quant": args.quant}))
    if args.device:
        setups.append((f"transformers (batch={args.parallel})", "hf", {"batch_size": args.parallel}))
    print(f"SmolLM2-135M-Instruct, {args.n} rewrites per setting, <= {args.max_new_tokens} new tokens, "
          f"{threads} llama.cpp thread(s), temperature 0.7")
    rows = []
    for label, backend, options in setups:
        generator = load_generator("smollm2", backend=backend, **options)
        rows.append(run(label, generator, pairs, settings))
        del generator
    base = rows[0]["rewrites/s"]
    print(f"{'setting':28} {'rewrites/s':>10} {'x naive':>8} {'seconds':>8} {'prompt tok':>10} {'pp tok/s':>8} "
          f"{'gen tok':>8} {'tg tok/s':>8}")
    for row in rows:
        print(f"{row['label']:28} {row['rewrites/s']:10.2f} {row['rewrites/s'] / base:8.2f} {row['seconds']:8.1f} "
              f"{row['prompt_tokens']:10d} {row['pp']:>8} {row['gen_tokens']:8d} {row['tg']:>8}")
    print("pp/tg: prompt-processing / generation tokens per second (batched: steps that also seat a prompt count as pp)")


if __name__ == "__main__":
    main()
