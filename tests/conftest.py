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


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Run the CLI as a user does (`main`, so errors become one line and an exit code): (code, stdout, stderr)."""
    from promptrec.cli import main

    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as stop:
        code = stop.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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

    encode_texts = encode  # long texts take the same path here


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


# --- tiny random stand-ins for the hub models of configs/ (issue 12): same architecture, local folder ---------
# Byte-level BPE tokenizers with the real models' special tokens and chat templates; 2 layers, hidden 32.
_MISTRAL_TEMPLATE = (  # Mistral-7B-Instruct-v0.2's template: user/assistant only, no system turn
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
_GEMMA_TEMPLATE = (  # gemma-7b-it's template: no system turn, the answer opens with <start_of_turn>model
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


def tiny_causal_lm(root: Path, config, specials: dict[str, str], extra_specials: tuple[str, ...] = (),
                   chat_template: str | None = None, add_bos: bool = False) -> Path:
    """Save a randomly initialised causal LM of `config`'s architecture with a byte-level BPE tokenizer whose
    special tokens (`specials`: role -> token, in id order) match the real model's; returns `root`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    tokens = list(dict.fromkeys([*specials.values(), *extra_specials]))
    bpe = Tokenizer(models.BPE(unk_token=specials.get("unk_token")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_LM_CORPUS + _CORPUS, trainer)
    if add_bos:  # like the Llama/Gemma tokenizers: BOS in front of every encoded text
        bos = specials["bos_token"]
        bpe.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bpe.token_to_id(bos))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, additional_special_tokens=list(extra_specials), **specials)
    tokenizer.chat_template = chat_template
    ids = {f"{role[:-6]}_token_id": tokenizer.convert_tokens_to_ids(tok) for role, tok in specials.items()
           if role in ("bos_token", "eos_token", "pad_token")}
    for name, value in {"vocab_size": len(tokenizer), **ids}.items():
        setattr(config, name, value)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def tiny_phi_dir(tmp_path_factory) -> Path:
    """A random PhiForCausalLM (microsoft/phi-2's architecture) with phi-2's single special token, no chat template."""
    from transformers import PhiConfig

    config = PhiConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=2048, partial_rotary_factor=0.5, tie_word_embeddings=False)
    eot = "<|endoftext|>"
    return tiny_causal_lm(tmp_path_factory.mktemp("phi"), config, {"bos_token": eot, "eos_token": eot, "unk_token": eot})


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory) -> Path:
    """A random MistralForCausalLM (Mistral-7B-Instruct-v0.2's architecture, GQA) with its chat template."""
    from transformers import MistralConfig

    config = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=2048, sliding_window=None)
    specials = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    return tiny_causal_lm(tmp_path_factory.mktemp("mistral"), config, specials, chat_template=_MISTRAL_TEMPLATE,
                          add_bos=True)


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory) -> Path:
    """A random GemmaForCausalLM (gemma-7b-it's architecture) with its turn tokens and chat template."""
    from transformers import GemmaConfig

    config = GemmaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, head_dim=8, max_position_embeddings=2048)
    specials = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"}
    return tiny_causal_lm(tmp_path_factory.mktemp("gemma"), config, specials, ("<start_of_turn>", "<end_of_turn>"),
                          chat_template=_GEMMA_TEMPLATE, add_bos=True)


@pytest.fixture(scope="session")
def tiny_deberta_dir(tmp_path_factory) -> Path:
    """A random DebertaV2Model (deberta-v3-large's architecture: relative attention, no absolute positions) with a
    sentencepiece tokenizer trained here, saved like the hub copy."""
    import sentencepiece as spm
    import torch
    from transformers import DebertaV2Config, DebertaV2Model, DebertaV2Tokenizer

    root = tmp_path_factory.mktemp("deberta")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(_CORPUS), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(root / "spm"), vocab_size=80, hard_vocab_limit=False, pad_id=0,
        bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]",
        user_defined_symbols=["[MASK]"], minloglevel=2,
    )
    tokenizer = DebertaV2Tokenizer(vocab_file=str(root / "spm.model"))
    torch.manual_seed(0)
    config = DebertaV2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=512, relative_attention=True,
                             position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
                             pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
                             pad_token_id=0)
    out = root / "deberta-v3-large"
    DebertaV2Model(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
