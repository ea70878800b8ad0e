"""Texts/s of the proxy embedder (MiniLM, 256 tokens) on real shared texts, side by side in one run: float32
(length-sorted batches of 64), the same batches in input order, bf16 autocast, dynamic int8 quantisation of the
Linear layers; each with its mean cosine to float32 (a faster path is usable only at >= 0.999). Then what `fit`
and `recover` pay per text for the regressor's features and the embedder's vector: two float32 passes (before
issue 24) vs the one shared pass they run now (`features.FrozenEncoder`, bf16 where the CPU computes it natively).
Run: `PROMPTREC_THREADS=1 promptrec bench embed [--texts 256] [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = ("gemma_1100", "gemma_rerun_994", "dolly_gemini_500", "gpt35_1080", "llama3_456", "gemma_wiki_2977")


def shared_texts(count: int, seed: int = 0) -> list[str]:
    """`count` distinct original and rewritten texts drawn evenly from the six shared triple files (seeded)."""
    from promptrec.data import TRIPLE_COLUMNS, read_table

    texts: list[str] = []
    for name in FILES:
        frame = read_table(DATA / f"{name}.csv", TRIPLE_COLUMNS)
        texts += frame["original_text"].tolist() + frame["rewritten_text"].tolist()
    distinct = sorted({t for t in texts if t.strip()})
    rng = np.random.default_rng(seed)
    return [distinct[i] for i in rng.choice(len(distinct), size=min(count, len(distinct)), replace=False)]


def timed(paths: dict, texts: list[str], repeats: int) -> dict[str, tuple[np.ndarray, float]]:
    """Per path, its embeddings and best texts/s over `repeats` rounds; the paths take turns within each round, so
    the load of a shared host falls on all of them alike (the best run is the least disturbed)."""
    found: dict[str, tuple[np.ndarray, float]] = {}
    for _ in range(repeats):
        for name, encode in paths.items():
            start = time.perf_counter()
            emb = np.asarray(encode(texts), dtype=np.float32)
            rate = len(texts) / (time.perf_counter() - start)
            found[name] = (emb, max(rate, found.get(name, (emb, 0.0))[1]))
    return found


def main() -> None:
    """Print texts/s, the ratio to float32 and the mean/min cosine to float32 of each path."""
    parser = argparse.ArgumentParser(prog="promptrec bench embed", description=__doc__)
    parser.add_argument("--texts", type=int, default=256, help="real shared texts embedded per path")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each path runs once per round")
    parser.add_argument("--batch-size", type=int, default=64)
    args, _ = parser.parse_known_args()
    if not (DATA / f"{FILES[0]}.csv").is_file():
        raise SystemExit(f"bench embed needs the shared triple files in {DATA}")
    import torch

    from promptrec.metric import load_embedder
    from promptrec.models import set_threads

    threads = set_threads()
    texts = shared_texts(args.texts)
    model = load_embedder("proxy").model  # the SentenceTransformer itself: no memo between paths

    def st(m, autocast: bool = False):
        def encode(batch: list[str]) -> np.ndarray:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                return m.encode(batch, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        return encode

    def input_order(batch: list[str]) -> np.ndarray:  # one call per batch: no sorting across the whole list
        return np.concatenate([model.encode(batch[i : i + args.batch_size], batch_size=args.batch_size,
                                            normalize_embeddings=True, convert_to_numpy=True)
                               for i in range(0, len(batch), args.batch_size)])

    with warnings.catch_warnings():  # torch 2.13 says its quantized tensors are deprecated: this measures them anyway
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    bf16_native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    from promptrec.features import FrozenEncoder
    from promptrec.models import proxy_embedder_path

    source, length = str(proxy_embedder_path()), model.max_seq_length
    exact, shared = FrozenEncoder(source, length, amp=False), FrozenEncoder(source, length)  # batches of 16, as fit's

    def first_block(features: np.ndarray) -> np.ndarray:  # the embedder's vector: the last layer's mean, normalised
        block = features[:, : model.get_embedding_dimension()]
        return block / np.linalg.norm(block, axis=1, keepdims=True)

    paths = {"float32, length-sorted": st(model), "float32, input order": input_order,
             f"bf16 autocast{'' if bf16_native else ' (no native bf16 on this CPU)'}": st(model, autocast=True),
             "dynamic int8 Linear": st(quantized),
             "fit/recover before: 2 float32 passes": lambda batch: (exact.encode(batch), st(model)(batch))[1],
             f"fit/recover now: 1 shared pass ({shared.precision})": lambda batch: first_block(shared.encode(batch))}
    tokens = [len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]]
    print(f"{len(texts)} real shared texts (mean {np.mean(tokens):.0f} tokens, {sum(t >= model.max_seq_length for t in tokens)}"
          f" at the {model.max_seq_length}-token limit), batch {args.batch_size}, {threads} thread(s), best of "
          f"{args.repeats} interleaved rounds")
    found = timed(paths, texts, args.repeats)
    reference, base = next(iter(found.values()))
    for name, (emb, rate) in found.items():
        cosine = np.einsum("nd,nd->n", emb, reference)
        print(f"  {name:45s} {rate:7.1f} texts/s  {rate / base:5.2f}x   cosine to float32 mean {cosine.mean():.5f} "
              f"min {cosine.min():.5f}")
    (before, now) = (rate for name, (_, rate) in found.items() if name.startswith("fit/recover"))
    print(f"fit/recover encoding per text, now vs before: {now / before:.2f}x")


if __name__ == "__main__":
    main()
