"""Tiny models built once per session: a random sentence-t5-architecture embedder, shared-data paths."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

_CORPUS = [
    "Rewrite this text as a pirate would say it.", "Make the text more formal.",
    "Turn this into a poem about the sea.", "Summarize the text in one sentence.",
    "Explain it to a child.", "Convert the text into a list of bullet points.",
    "The meeting was moved to Thursday because the projector broke.",
    "Please remember to lock the door and turn off the lights.",
    "Tags like <b>, a/b paths, and x > y comparisons.",
] * 20


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test with a clear message when that folder is absent."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"shared data {path} is absent (the real-data tests need ../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def tiny_t5_embedder_dir(tmp_path_factory) -> Path:
    """A randomly initialised model with sentence-t5-base's architecture, saved like the hub copy.

    T5 encoder -> mean pooling -> Dense(768, no bias, identity) -> Normalize, with a sentencepiece
    tokenizer trained here on a toy corpus.
    """
    import sentencepiece as spm
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    root = tmp_path_factory.mktemp("st5")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(_CORPUS), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(root / "spiece"), vocab_size=80, hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )
    tokenizer = T5Tokenizer.from_pretrained(str(root), vocab_file=str(root / "spiece.model"), extra_ids=0, legacy=False)
    assert len(tokenizer) >= 60, "tokenizer lost its vocabulary"
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    hf_dir = root / "t5"
    T5EncoderModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    encoder = models.Transformer(str(hf_dir), max_seq_length=64)
    pooling = models.Pooling(32, pooling_mode="mean")
    dense = models.Dense(32, 768, bias=False, activation_function=torch.nn.Identity())
    model = SentenceTransformer(modules=[encoder, pooling, dense, models.Normalize()], device="cpu")
    out = root / "sentence-t5-base"
    model.save(str(out))
    shutil.copy(root / "spiece.model", out / "spiece.model")  # the hub's sentence-t5-base ships it too
    return out


# --- cv / ensemble / optimiser fixtures -------------------------------------------------------------
class WordEmbedder:
    """Deterministic toy metric embedder: a text is the normalised sum of its known words' axes."""

    AXES = ("pirate", "formal", "poem", "short")
    label = "fixture (4 words)"
    dim = len(AXES)

    def encode(self, texts):
        import numpy as np

        rows = np.zeros((len(texts), self.dim), dtype=np.float32)  # (n, 4)
        for i, text in enumerate(texts):
            for word in str(text).lower().split():
                if word.strip(".,") in self.AXES:
                    rows[i, self.AXES.index(word.strip(".,"))] += 1.0
            if not rows[i].any():
                rows[i] = 0.1  # texts without a known word share one direction
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def word_embedder() -> WordEmbedder:
    """The toy 4-word embedder (label 'fixture (4 words)')."""
    return WordEmbedder()


# --- generate / LLM backends (issue 3): a tiny random causal LM saved like a hub model ---------------

_LM_CORPUS = [
    "Rewrite this text as a pirate would say it.", "The meeting was moved to Thursday because the projector broke.",
    "Make the text more formal, please!", "Turn this into a poem about the sea.", "Summarize the text in one sentence.",
] * 4
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer LlamaForCausalLM with a byte-level BPE tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tinyllama")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_LM_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


# --- shared by the kill-and-resume tests (lora, regressor) -------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
CLI_ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PROMPTREC_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def kill_when(command: list[str], log: Path, ready: Callable[[], bool], poll: float = 0.01) -> None:
    """Run the CLI `command` (output to `log`) and SIGKILL it once `ready()`; fail if it exits first or stalls 120 s."""
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=ROOT, env=CLI_ENV, stdout=handle, stderr=handle)
        deadline = time.monotonic() + 120
        while not ready():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"no progress: {log.read_text()[-500:]}"
            time.sleep(poll)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


@pytest.fixture
def one_thread():
    """torch on one thread, as the CLI runs with --threads 1: in-process runs then match it bit for bit, and a
    busy 2-core host does not make small batches crawl."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
