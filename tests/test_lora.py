"""Method lora on a tiny random Llama with a word-level tokenizer: training, resuming after a crash and a
real kill -9, saving; slow tests on the packaged SmolLM2 and Gemma 3."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import kill_when, run_cli
from typer.testing import CliRunner

from promptrec import checkpoint
from promptrec.clean import parse_generation
from promptrec.data import ID, ORIGINAL, PROMPT, REWRITTEN, TRIPLE_COLUMNS, read_table
from promptrec.llm import hf
from promptrec.llm.templates import ELLIPSIS
from promptrec.methods import lora, lora_template, lora_train
from promptrec.methods.base import FALLBACK_PROMPT, from_name, load_config_file, load_method
from promptrec.models import bf16_autocast

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

    text = " ".join([lora_template.INSTRUCTION, lora_template.PLAIN_SUFFIX, ELLIPSIS, *TRIPLES[ORIGINAL], *TRIPLES[PROMPT],
                     *TRIPLES[REWRITTEN], "extra words for the budget"])
    words = sorted(set(text.split()))
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(2)  # an init whose 1-epoch model writes text for every row (the padding test needs some)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=False)
    root = tmp_path_factory.mktemp("tiny_lm")
    LlamaForCausalLM(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def _settings(model_dir, **extra) -> lora.LoraConfig:
    # float32 training (bf16=False): the tiny model's overfitting at lr 2e-2 is tuned to it, and the results must
    # not depend on whether the CPU computes bf16 natively (test_training_autocasts_... covers that default)
    values = dict(model=str(model_dir), r=8, alpha=16, text_tokens=16, batch_size=2, lr=2e-2, bf16=False,
                  warmup_ratio=0.0, dropout=0.0, epochs=60, val_fraction=0.0, select_fallback=False, max_new_tokens=8)
    values.update(extra)
    return lora.LoraConfig(**values)


@pytest.fixture
def messages(caplog):
    """The messages lora logs (INFO and up), in order."""
    caplog.set_level(logging.INFO, logger="promptrec")
    return lambda: [r.getMessage() for r in caplog.records if r.name.startswith("promptrec.methods.lora")]


@pytest.fixture(scope="module")
def trained(tiny_lm_dir):
    """The lora method overfitted on the two rows of TRIPLES."""
    method = lora.LoraMethod(_settings(tiny_lm_dir))
    method.fit(TRIPLES)
    return method


def test_label_mask_covers_exactly_the_prompt_and_eos(tiny_lm_dir):
    tokenizer = hf.load_tokenizer(str(tiny_lm_dir))
    settings = _settings(tiny_lm_dir)
    ids, labels = lora_template.encode_example(tokenizer, "the cat sat", "a cat sat", "make  it\nrhyme", settings)
    prompt_ids = tokenizer("make it rhyme", add_special_tokens=False)["input_ids"]
    context = lora_template.render_input(tokenizer, "the cat sat", "a cat sat", settings)
    assert ids == context + prompt_ids + [tokenizer.eos_token_id]
    assert labels == [-100] * len(context) + prompt_ids + [tokenizer.eos_token_id]
    assert tokenizer.decode([t for t in labels if t != -100]) == "make it rhyme <eos>"


def test_truncate_keeps_head_and_tail(tiny_lm_dir):
    tokenizer = hf.load_tokenizer(str(tiny_lm_dir))
    text = "the cat sat on the mat all day"
    assert lora_template.truncate(tokenizer, text, 4) == "the cat [...] all day"  # templates.head_tail's joiner
    assert lora_template.truncate(tokenizer, text, 8) == text


def test_clean_generation_strips_labels_and_quotes():
    assert parse_generation('Prompt: "Make it rhyme."\nmore') == "Make it rhyme."
    assert parse_generation("**Instruction:** 'Be brief'") == "Be brief"
    assert parse_generation('""') == ""
    assert parse_generation("   \n  ") == ""


def test_config_file_values_give_way_to_set_options_only_where_set():
    original = load_config_file(Path(__file__).parents[1] / "configs" / "lora_original.yaml")
    config = from_name("lora", **{**original, "r": 4}).config  # --config lora_original.yaml --set r=4
    assert (config.model, config.r, config.alpha) == ("microsoft/phi-2", 4, 32)
    assert from_name("lora", lr="3e-4", r="4").config.lr == 3e-4  # YAML reads 3e-4 as text
    with pytest.raises(ValueError, match="option 'epochs' must be a number"):
        from_name("lora", epochs="many")
    with pytest.raises(ValueError, match="^lora: r must be at least 1, not 0$"):
        lora.LoraConfig(r=0)
    with pytest.raises(ValueError, match=r"^lora: val_fraction must be in \[0, 1\), not 1.5$"):
        from_name("lora", val_fraction=1.5)
    shipped = from_name("lora", **original)
    assert (shipped.config.model, shipped.config.r, shipped.config.text_tokens) == ("microsoft/phi-2", 16, 256)
    offline = lora.LoraConfig()  # the offline defaults: SmolLM2 from its packaged GGUF
    assert (offline.model, offline.r, offline.alpha, offline.text_tokens, offline.batch_size) == ("smollm2", 8, 16, 48, 4)


def test_overfit_one_example_is_generated_back_verbatim(trained):
    assert trained.predict(TRIPLES.iloc[:1]) == ["make it rhyme"]


def test_blank_generation_falls_back(trained):
    assert trained.generate_raw(TRIPLES.iloc[1:]) == ['""']
    assert trained.predict(TRIPLES) == ["make it rhyme", FALLBACK_PROMPT]


def test_shared_prefix_leaves_one_token_of_each_input():
    assert hf.shared_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert hf.shared_prefix([[1, 2, 3], [1, 2, 3]]) == 2
    assert hf.shared_prefix([[7, 1], [8, 1]]) == 0


def test_prefix_cache_and_padding_layout_change_no_generation(tiny_lm_dir, monkeypatch):
    method = lora.LoraMethod(_settings(tiny_lm_dir, epochs=1, infer_bf16=False))
    method.fit(TRIPLES)
    rows = pd.concat([TRIPLES, TRIPLES.assign(**{ORIGINAL: TRIPLES[ORIGINAL] + " extra words"})], ignore_index=True)
    inputs = [lora_template.render_input(method.tokenizer, o, w, method.config) for o, w in zip(rows[ORIGINAL], rows[REWRITTEN])]
    assert hf.shared_prefix(inputs) > 10 and len({len(ids) for ids in inputs}) > 1  # padding sits after the prefix
    batched = method.generate_raw(rows)
    method.config.infer_batch_size = 1
    single = method.generate_raw(rows)
    monkeypatch.setattr(hf, "shared_prefix", lambda inputs: 0)
    assert method.generate_raw(rows) == single == batched
    assert all(len(text.split()) > 0 for text in batched)


def test_bf16_inference_is_on_by_default_only_where_it_is_native(monkeypatch):
    import torch

    assert bf16_autocast(False, "cpu") is False  # lora's infer_bf16 option, when set
    assert bf16_autocast(True, "cpu") is True
    for native in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
        assert bf16_autocast(lora.LoraConfig().infer_bf16, "cpu") is native


def test_batch_loss_scores_only_from_the_first_label_on_and_equals_the_models_loss(tiny_lm_dir):
    import torch

    tokenizer, settings = hf.load_tokenizer(str(tiny_lm_dir)), _settings(tiny_lm_dir)
    model = hf.load_causal_lm(str(tiny_lm_dir))
    rows = [lora_template.encode_example(tokenizer, o, w, p, settings)
            for o, w, p in zip(TRIPLES[ORIGINAL], TRIPLES[REWRITTEN], TRIPLES[PROMPT])]
    batch = lora_train.collate(rows, tokenizer.pad_token_id)
    first_labels = [labels.index(next(x for x in labels if x != lora_template.IGNORE)) for _, labels in rows]
    assert len({len(ids) for ids, _ in rows}) == 2 and len(set(first_labels)) == 2  # right padding in one row
    widths = []
    model.lm_head.register_forward_hook(lambda module, args, out: widths.append(args[0].shape[1]))
    with torch.no_grad():
        assert float(lora_train.batch_loss(model, batch)) == pytest.approx(float(model(**batch).loss), abs=1e-6)
    assert widths == [batch["input_ids"].shape[1] - min(first_labels) + 1, batch["input_ids"].shape[1]]


def test_length_buckets_batch_similar_lengths_in_an_order_fixed_by_seed_and_epoch():
    lengths = [5, 3, 9, 1, 1, 7, 3, 2, 8, 6]
    order = lora_train.EpochOrder(10, seed=0, lengths=lengths, batch_size=3)
    first = list(order)
    assert first == [4, 3, 7, 9, 5, 8, 6, 1, 0, 2]  # batches (1, 1, 2), (6, 7, 8), (3, 3, 5), then the short one (9)
    assert list(order) == first  # a pure function of seed and epoch: a resumed run sees the same batches
    order.epoch = 1
    assert list(order) == [3, 4, 7, 9, 5, 8, 1, 6, 0, 2]  # the tied lengths 1 and 3 come in another order
    assert sorted(list(order)) == list(range(10))
    assert list(lora_train.EpochOrder(10, seed=0)) == [4, 6, 2, 7, 3, 5, 9, 0, 8, 1]  # bucket=False: a plain shuffle


def test_training_autocasts_to_bf16_by_default_only_on_a_cpu_with_native_bf16(tiny_lm_dir, monkeypatch, one_thread):
    import torch

    seen = []
    loss = lora_train.batch_loss
    monkeypatch.setattr(lora_train, "batch_loss", lambda model, batch: seen.append(
        (torch.is_autocast_enabled("cpu"), model.config._attn_implementation)) or loss(model, batch))
    for native in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
        method = lora.LoraMethod(_settings(tiny_lm_dir, bf16=None, epochs=1))
        method.fit(TRIPLES)
        assert {p.dtype for n, p in method.model.named_parameters()} == {torch.float32}  # float32 weights on CPU
        assert method.model.config._attn_implementation == "sdpa"  # generation goes back to the loaded kernel
    assert seen == [(True, "eager"), (False, "sdpa")]  # one batch of 2 rows per fit; eager attention under autocast


def test_save_load_round_trip_gives_identical_generations(trained, tmp_path):
    trained.save(tmp_path)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    saved = json.loads((tmp_path / "method.json").read_text())
    assert saved["method"] == "lora" and saved["state"] == {"fallback_prompt": FALLBACK_PROMPT}
    assert "fallback_prompt" not in saved["config"]  # learned state lives beside the config
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    loaded = load_method(tmp_path)
    assert loaded.generate_raw(TRIPLES) == trained.generate_raw(TRIPLES)
    assert loaded.predict(TRIPLES) == ["make it rhyme", FALLBACK_PROMPT]


def test_merged_save_loads_without_the_adapter(tiny_lm_dir, tmp_path):
    method = lora.LoraMethod(_settings(tiny_lm_dir, epochs=2, merge=True))
    method.fit(TRIPLES)
    before = method.generate_raw(TRIPLES)
    method.save(tmp_path)
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    loaded = load_method(tmp_path)
    assert not hasattr(loaded.model, "peft_config")
    assert loaded.generate_raw(TRIPLES) == before


def test_validation_prints_loss_and_score_and_stops_early(tiny_lm_dir, tiny_t5_embedder_dir, messages):
    rows = pd.concat([TRIPLES.assign(**{ORIGINAL: TRIPLES[ORIGINAL] + f" {i}"}) for i in ("a", "b", "c", "d")])
    settings = _settings(tiny_lm_dir, epochs=10, val_fraction=0.25, lr=1e-6, patience=1,
                         embedder=str(tiny_t5_embedder_dir), select_fallback=True)
    method = from_name("lora", **{k: v for k, v in vars(settings).items()})
    method.fit(rows)
    epochs = [line for line in messages() if "val loss" in line]
    assert 2 <= len(epochs) < 10  # a tiny learning rate cannot improve the score every epoch: early stop
    assert "val score" in epochs[0] and "rows]" in epochs[0]
    assert method.history[0]["embedder"].startswith("official") or method.history[0]["embedder"].startswith("local")
    assert method.fallback_prompt in set(rows[PROMPT])


@pytest.mark.slow
def test_packaged_smollm2_trains_one_step_and_generates(tmp_path):
    rows = TRIPLES.assign(**{PROMPT: ["Make it rhyme.", "Describe the weather."]})
    method = lora.LoraMethod(lora.LoraConfig(max_steps=1, batch_size=2, val_fraction=0.0, select_fallback=False,
                                             max_new_tokens=6))
    method.fit(rows)
    prompts = method.predict(rows)
    assert len(prompts) == 2 and all(p.strip() for p in prompts)
    method.save(tmp_path)
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()


@pytest.mark.slow
def test_packaged_gemma3_base_trains_with_the_plain_template_and_round_trips(tmp_path):
    rows = TRIPLES.assign(**{PROMPT: ["Make it rhyme.", "Describe the weather."]})
    method = lora.LoraMethod(lora.LoraConfig(model="gemma3-270m", max_steps=1, batch_size=2, text_tokens=16,
                                             val_fraction=0.0, select_fallback=False, max_new_tokens=6))
    method.fit(rows)
    assert not method.tokenizer.chat_template  # a base model: the instruction ends with PLAIN_SUFFIX
    ids = lora_template.render_input(method.tokenizer, "a", "b", method.config)
    assert method.tokenizer.decode(ids).endswith(lora_template.PLAIN_SUFFIX)
    assert {"q_proj", "down_proj"} <= set(method.model.peft_config["default"].target_modules)
    method.save(tmp_path)
    assert load_method(tmp_path).generate_raw(rows) == method.generate_raw(rows)


# --- resumable training: checkpoints, a simulated crash and a real kill -9 -----------------------------
ROWS = pd.concat([TRIPLES.assign(**{ID: TRIPLES[ID] + str(i), ORIGINAL: TRIPLES[ORIGINAL] + f" {w}"})
                  for i, w in enumerate(["on", "the", "mat"])], ignore_index=True)  # 6 rows: 3 batches of 2


class _Crash(Exception):
    """Raised from the `on_update` hook to stop a fit at a chosen update, as a crash would."""


def test_training_stops_at_the_first_of_max_steps_and_epochs(tiny_lm_dir, one_thread):
    # ROWS: 3 updates of batch 2 per epoch; the defaults (1 epoch, 300 updates) stop at the epoch's end
    for options, updates in (({"epochs": 1}, 3), ({"epochs": 2, "max_steps": 4}, 4), ({"epochs": 3, "max_steps": 0}, 9)):
        method = lora.LoraMethod(_settings(tiny_lm_dir, eval_steps=1, checkpoint_steps=0, **options))
        method.fit(ROWS)
        assert [h["step"] for h in method.history] == list(range(1, updates + 1)), options
    assert lora.LoraConfig().max_steps == 300 and lora.LoraConfig().epochs == 1


def _crash_at(step: int):
    def on_update(updates: int, total: int) -> None:
        if updates == step:
            raise _Crash(f"update {updates} of {total}")
    return on_update


def _method(config: lora.LoraConfig, on_update=None) -> lora.LoraMethod:
    method = lora.LoraMethod(config)
    method.on_update = on_update
    return method


def _lora_weights(method) -> dict:
    return {n: p.detach().clone() for n, p in method.model.named_parameters() if "lora_" in n}


def test_resumed_training_takes_exactly_the_steps_of_an_uninterrupted_one(tiny_lm_dir, tmp_path, one_thread,
                                                                          messages, caplog):
    # dropout on and two batches per update: the RNG, the accumulation and mid-epoch data positions all matter
    settings = lambda **extra: _settings(tiny_lm_dir, epochs=4, batch_size=1, grad_accum=2, dropout=0.1, eval_steps=1,
                                         warmup_ratio=0.2, checkpoint_steps=4, **extra)
    straight = lora.LoraMethod(settings())
    straight.fit(ROWS)
    assert [h["step"] for h in straight.history] == list(range(1, 13))  # 6 batches / 2 per update x 4 epochs

    folder = tmp_path / "run.partial"
    with pytest.raises(_Crash):
        _method(settings(checkpoint_dir=str(folder)), on_update=_crash_at(10)).fit(ROWS)
    assert [p.name for p in sorted(folder.iterdir())] == ["checkpoint-000001", "manifest.json"]  # steps 4, 8

    caplog.clear()
    resumed = lora.LoraMethod(settings(checkpoint_dir=str(folder)))
    resumed.fit(ROWS)
    assert messages()[1] == f"lora: resuming from {folder} at update 8 of 12"
    assert [h["step"] for h in resumed.history] == list(range(1, 13))  # every step once, none lost or repeated
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    before, after = _lora_weights(straight), _lora_weights(resumed)
    assert before.keys() == after.keys() and all(bool((before[k] == after[k]).all()) for k in before)

    resumed.save(tmp_path / "run")
    assert not folder.exists()  # the saved run needs no checkpoint folder: its last checkpoint moved into the save
    assert sorted(p.name for p in (tmp_path / "run" / checkpoint.TRAIN_STATE).iterdir()) == ["checkpoint-000002",
                                                                                     "manifest.json"]
    assert json.loads((tmp_path / "run" / "method.json").read_text())["config"]["checkpoint_dir"] is None


def test_a_checkpoint_of_other_options_or_data_is_refused_in_one_line(tiny_lm_dir, tmp_path, one_thread, messages,
                                                                      caplog):
    folder = tmp_path / "run.partial"
    settings = lambda **extra: _settings(tiny_lm_dir, **{"epochs": 2, "checkpoint_steps": 1, "checkpoint_dir": str(folder),
                                                         **extra})
    lora.LoraMethod(settings()).fit(ROWS)
    with pytest.raises(ValueError, match=r"run.partial: an unfinished training run with other arguments "
                                         r"\(lr: 0.02, now 0.01\); re-run .* or delete the folder"):
        lora.LoraMethod(settings(lr=1e-2)).fit(ROWS)
    with pytest.raises(ValueError, match=r"other arguments \(data: '[0-9a-f]{16}', now '[0-9a-f]{16}'\)"):
        lora.LoraMethod(settings()).fit(ROWS.iloc[:4])
    caplog.clear()
    lora.LoraMethod(settings(checkpoint_steps=3, merge=True)).fit(ROWS)  # run-only options may change
    assert messages()[1] == f"lora: resuming from {folder} at update 6 of 6"


@pytest.mark.slow
def test_cli_training_killed_with_sigkill_resumes_from_its_checkpoint(tiny_lm_dir, tmp_path, one_thread, messages):
    from promptrec.cli import app

    data, out, total = tmp_path / "triples.csv", tmp_path / "model", 120
    ROWS.to_csv(data, index=False)
    options = dict(model=str(tiny_lm_dir), r=8, alpha=16, text_tokens=16, batch_size=2, lr=2e-2,
                   warmup_ratio=0.1, dropout=0.1, max_steps=total, epochs=total, val_fraction=0.0, select_fallback=False,
                   eval_steps=1, checkpoint_steps=10)
    config = tmp_path / "lora.json"
    config.write_text(json.dumps(options), encoding="utf-8")
    arguments = ["--threads", "1", "train", "lora", str(data), "-o", str(out), "--config", str(config)]
    partial, log = tmp_path / "model.partial", tmp_path / "first.log"
    # killed once its second checkpoint (update 20) is on disk and the first one removed, wherever the run is then
    ready = lambda: (partial / "checkpoint-000001").is_dir() and not (partial / "checkpoint-000000").exists()
    kill_when([sys.executable, "-m", "promptrec", *arguments], log, ready)
    assert not (out / "method.json").exists()
    [newest] = [p for p in partial.iterdir() if p.name.startswith("checkpoint-") and not p.name.endswith(".tmp")]
    stopped_at = json.loads((newest / "state.json").read_text())["progress"]["updates"]
    assert 20 <= stopped_at < total

    second = CliRunner().invoke(app, arguments)  # the rerun, in this process: its log records are read directly
    assert second.exit_code == 0, second.output
    assert f"lora: resuming from {partial} at update {stopped_at} of {total}" in messages()
    logged = [int(m) for line in messages() for m in re.findall(r"^lora epoch \d+ step (\d+):", line)]
    assert logged == list(range(stopped_at + 1, total + 1))  # the rerun trains each remaining step once
    assert not partial.exists()
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, total + 1))  # none lost, none repeated

    straight = lora.LoraMethod(lora.LoraConfig(**options))  # the run never killed
    straight.fit(read_table(data, TRIPLE_COLUMNS))
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in straight.history], abs=1e-4)
    before, after = _lora_weights(straight), _lora_weights(load_method(out))
    assert before.keys() == after.keys()
    assert max(float((before[k] - after[k]).abs().max()) for k in before) < 1e-5


def _cli(capsys, *argv) -> tuple[int, str]:
    """Run the CLI as a user does: (exit code, stderr joined into one line)."""
    code, _, err = run_cli(capsys, *argv)
    return code, " ".join(err.split())


def test_cli_trains_a_finished_fit_further_on_the_same_data_order(tiny_lm_dir, tmp_path, one_thread, messages,
                                                                  capsys):
    data, config = tmp_path / "triples.csv", tmp_path / "lora.json"
    ROWS.to_csv(data, index=False)
    config.write_text(json.dumps(dict(model=str(tiny_lm_dir), r=8, alpha=16, text_tokens=16, batch_size=2, lr=2e-2,
                                      epochs=4, val_fraction=0.0, select_fallback=False, eval_steps=1, checkpoint_steps=2)))
    train = lambda out, *extra: _cli(capsys, "--threads", "1", "train", "lora", data, "-o", tmp_path / out,
                                     "--config", config, *extra)
    progress = lambda out: json.loads(next((tmp_path / out / checkpoint.TRAIN_STATE).glob("checkpoint-*/state.json"))
                                      .read_text())["progress"]
    assert train("first", "--set", "max_steps=4")[0] == 0
    assert train("straight", "--set", "max_steps=8")[0] == 0
    assert train("more", "--from", tmp_path / "first", "--set", "max_steps=8")[0] == 0
    assert f"lora: continuing from {tmp_path / 'first' / checkpoint.TRAIN_STATE} at update 4 of 8" in messages()
    history = json.loads((tmp_path / "more" / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, 9))  # the first fit's 4 updates, then 4 more
    assert json.loads((tmp_path / "more" / "method.json").read_text())["config"]["max_steps"] == 8
    # the same place in the data as a run planned for 8 updates from the start
    assert (progress("more")["updates"], progress("more")["epoch"], progress("more")["batch"]) == \
        (progress("straight")["updates"], progress("straight")["epoch"], progress("straight")["batch"]) == (8, 2, 2)
    first, more = _lora_weights(load_method(tmp_path / "first")), _lora_weights(load_method(tmp_path / "more"))
    assert any(not bool((first[k] == more[k]).all()) for k in first)

    ROWS.iloc[:4].to_csv(data, index=False)  # other data: refused in one line, nothing written
    code, err = train("other", "--from", tmp_path / "first", "--set", "max_steps=8")
    assert code == 2 and not (tmp_path / "other" / "method.json").exists() and not (tmp_path / "other.partial").exists()
    assert re.fullmatch(r"error: \S+/first/train_state: a finished training run with other arguments \(data: "
                        r"'[0-9a-f]{16}', now '[0-9a-f]{16}'\); continue it on the same data with the same options "
                        r"\(only max_steps, epochs, patience may change\)", err)


def test_continuing_needs_a_saved_lora_fit_with_its_train_state(tiny_lm_dir, tmp_path, one_thread, capsys):
    data = tmp_path / "triples.csv"
    ROWS.to_csv(data, index=False)
    method = lora.LoraMethod(_settings(tiny_lm_dir, epochs=1))
    method.fit(ROWS)
    method.save(tmp_path / "bare")  # saved outside `train`: no checkpoints, so nothing to continue from
    capsys.readouterr()
    invoke = lambda *words: _cli(capsys, "train", *words, data, "-o", tmp_path / "x")
    assert invoke("lora", "--from", tmp_path / "bare") == (2, f"error: {tmp_path / 'bare'}: no train_state/ to "
                                                           "continue from (only `promptrec train` and `fit` with "
                                                           "checkpoint_steps > 0 keep it)")
    assert invoke("constant", "--from", tmp_path / "bare") == (
        2, f"error: --from {tmp_path / 'bare'}: holds a saved 'lora' method, not 'constant'")
    assert not (tmp_path / "x" / "method.json").exists() and not (tmp_path / "x.partial").exists()
    assert _cli(capsys, "train", "constant", data, "-o", tmp_path / "const")[0] == 0
    assert invoke("constant", "--from", tmp_path / "const") == (
        2, f"error: --from {tmp_path / 'const'}: method 'constant' cannot train a finished fit further")
