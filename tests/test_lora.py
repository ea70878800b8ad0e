"""Method lora on a tiny random Llama with a word-level tokenizer; one slow test on the packaged SmolLM2."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from promptrec.clean import parse_generation

from promptrec.data import ID, ORIGINAL, PROMPT, REWRITTEN
from promptrec.methods import lora
from promptrec.methods.base import FALLBACK_PROMPT, from_name, load_method

TRIPLES = pd.DataFrame({
    ID: ["a", "b"],
    ORIGINAL: ["the cat sat on the mat", "rain fell on the town all day"],
    PROMPT: ["make it rhyme", '""'],  # the second cleans to nothing: its row must get the fallback
    REWRITTEN: ["the cat sat on a hat , that is that", "all day the town was wet"],
})


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    """A random 2-layer Llama (hidden 32) and a word-level tokenizer covering the template and the rows."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    text = " ".join([lora.INSTRUCTION, lora.PLAIN_SUFFIX, lora.ELLIPSIS, *TRIPLES[ORIGINAL], *TRIPLES[PROMPT],
                     *TRIPLES[REWRITTEN], "extra words for the budget"])
    words = sorted(set(text.split()))
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=False)
    root = tmp_path_factory.mktemp("tiny_lm")
    LlamaForCausalLM(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def _settings(model_dir, **extra) -> lora.LoraSettings:
    values = dict(model=str(model_dir), r=8, alpha=16, text_tokens=16, batch_size=2, learning_rate=2e-2,
                  warmup_ratio=0.0, dropout=0.0, epochs=60, val_fraction=0.0, select_fallback=False, max_new_tokens=8)
    values.update(extra)
    return lora.LoraSettings(**values)


@pytest.fixture(scope="module")
def trained(tiny_lm_dir):
    """The lora method overfitted on the two rows of TRIPLES."""
    method = lora.LoraMethod(_settings(tiny_lm_dir), log=lambda line: None)
    method.fit(TRIPLES)
    return method


def test_label_mask_covers_exactly_the_prompt_and_eos(tiny_lm_dir):
    tokenizer = lora.load_tokenizer(str(tiny_lm_dir))
    settings = lora.resolve_settings(_settings(tiny_lm_dir))
    ids, labels = lora.encode_example(tokenizer, "the cat sat", "a cat sat", "make  it\nrhyme", settings)
    prompt_ids = tokenizer("make it rhyme", add_special_tokens=False)["input_ids"]
    context = lora.render_input(tokenizer, "the cat sat", "a cat sat", settings)
    assert ids == context + prompt_ids + [tokenizer.eos_token_id]
    assert labels == [-100] * len(context) + prompt_ids + [tokenizer.eos_token_id]
    assert tokenizer.decode([t for t in labels if t != -100]) == "make it rhyme <eos>"


def test_truncate_keeps_head_and_tail(tiny_lm_dir):
    tokenizer = lora.load_tokenizer(str(tiny_lm_dir))
    text = "the cat sat on the mat all day"
    assert lora.truncate(tokenizer, text, 4) == "the cat ... all day"
    assert lora.truncate(tokenizer, text, 8) == text


def test_clean_generation_strips_labels_and_quotes():
    assert parse_generation('Prompt: "Make it rhyme."\nmore') == "Make it rhyme."
    assert parse_generation("**Instruction:** 'Be brief'") == "Be brief"
    assert parse_generation('""') == ""
    assert parse_generation("   \n  ") == ""


def test_presets_fill_unset_fields_only():
    settings = lora.resolve_settings(lora.LoraSettings(preset="phi-2", r=4))
    assert (settings.model, settings.r, settings.alpha) == ("microsoft/phi-2", 4, 32)
    assert from_name("lora", learning_rate="3e-4", r="4").config.learning_rate == 3e-4  # YAML reads 3e-4 as text
    with pytest.raises(ValueError, match="option 'epochs' must be a number"):
        from_name("lora", epochs="many")
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        lora.LoraMethod(lora.LoraSettings(preset="nope"))


def test_grouped_split_keeps_each_original_on_one_side():
    frame = pd.DataFrame({ORIGINAL: list("aabbccddee"), PROMPT: list("0123456789")})
    train, held = lora.grouped_split(frame, 0.4, seed=1)
    assert len(held) == 4 and set(train[ORIGINAL]).isdisjoint(held[ORIGINAL])
    assert len(train) + len(held) == 10


def test_overfit_one_example_is_generated_back_verbatim(trained):
    assert trained.predict(TRIPLES.iloc[:1]) == ["make it rhyme"]


def test_blank_generation_falls_back(trained):
    assert trained.generate_raw(TRIPLES.iloc[1:]) == ['""']
    assert trained.predict(TRIPLES) == ["make it rhyme", FALLBACK_PROMPT]


def test_save_load_round_trip_gives_identical_generations(trained, tmp_path):
    trained.save(tmp_path)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "method.json").read_text())["method"] == "lora"
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    loaded = load_method(tmp_path)
    assert loaded.generate_raw(TRIPLES) == trained.generate_raw(TRIPLES)


def test_merged_save_loads_without_the_adapter(tiny_lm_dir, tmp_path):
    method = lora.LoraMethod(_settings(tiny_lm_dir, epochs=2, merge=True), log=lambda line: None)
    method.fit(TRIPLES)
    before = method.generate_raw(TRIPLES)
    method.save(tmp_path)
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    loaded = load_method(tmp_path)
    assert not hasattr(loaded.model, "peft_config")
    assert loaded.generate_raw(TRIPLES) == before


def test_validation_prints_loss_and_score_and_stops_early(tiny_lm_dir, tiny_t5_embedder_dir):
    lines = []
    rows = pd.concat([TRIPLES.assign(**{ORIGINAL: TRIPLES[ORIGINAL] + f" {i}"}) for i in ("a", "b", "c", "d")])
    settings = _settings(tiny_lm_dir, epochs=10, val_fraction=0.25, learning_rate=1e-6, patience=1,
                         embedder=str(tiny_t5_embedder_dir), select_fallback=True)
    method = from_name("lora", **{k: v for k, v in vars(settings).items()})
    method.log = lines.append
    method.fit(rows)
    epochs = [line for line in lines if "val loss" in line]
    assert 2 <= len(epochs) < 10  # a tiny learning rate cannot improve the score every epoch: early stop
    assert "val score" in epochs[0] and "rows]" in epochs[0]
    assert method.history[0]["embedder"].startswith("official") or method.history[0]["embedder"].startswith("local")
    assert method.config.fallback in set(rows[PROMPT])


@pytest.mark.slow
def test_packaged_smollm2_trains_one_step_and_generates(tmp_path):
    rows = TRIPLES.assign(**{PROMPT: ["Make it rhyme.", "Describe the weather."]})
    method = lora.LoraMethod(lora.LoraSettings(max_steps=1, batch_size=2, val_fraction=0.0, select_fallback=False,
                                               max_new_tokens=6), log=lambda line: None)
    method.fit(rows)
    prompts = method.predict(rows)
    assert len(prompts) == 2 and all(p.strip() for p in prompts)
    method.save(tmp_path)
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()
