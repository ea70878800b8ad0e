"""Regressor: frozen-encoder features, the feature cache, the BatchNorm head, training, save/load, CLI."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CLI_ENV, ROOT, kill_when

from promptrec.data import TRIPLE_COLUMNS, DataError, read_table
from promptrec.methods.base import PredictsEmbeddings, config_from_dict, from_name, load_config_file, load_method
from promptrec.features import SHARD_TEXTS, FeatureCache, FrozenEncoder
from promptrec.methods.regressor import (
    RegressorConfig, RegressorMethod, build_head, head_predict, pair_block, train_head,
)

WORDS = ("rewrite this text as a pirate poem make it formal shorter the meeting was moved to thursday "
         "please lock door sea child list").split()


def _tiny_bert(folder: Path, seed: int) -> Path:
    """A random 2-layer BERT (hidden 32) with a word-level vocabulary written here."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]), encoding="utf-8")
    BertTokenizer(str(vocab)).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return _tiny_bert(tmp_path_factory.mktemp("bert") / "a", seed=0)


@pytest.fixture(scope="module")
def tiny_bert_embedder(tiny_bert, tmp_path_factory) -> Path:
    """A 32-dim SentenceTransformer over the tiny BERT (mean pooling, normalised)."""
    from sentence_transformers import SentenceTransformer, models

    out = tmp_path_factory.mktemp("st") / "tiny-bert-st"
    modules = [models.Transformer(str(tiny_bert), max_seq_length=32), models.Pooling(32, pooling_mode="mean"),
               models.Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


def _pairs(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    text = lambda k: " ".join(rng.choice(WORDS, size=k))  # noqa: E731
    prompts = ["make it formal", "rewrite as a pirate", "a sea poem", "shorter list"]
    return pd.DataFrame({
        "id": [str(i) for i in range(n)],
        "original_text": [text(6 + i % 5) for i in range(n)],
        "rewrite_prompt": [prompts[i % 4] for i in range(n)],
        "rewritten_text": [text(3 + i % 7) for i in range(n)],
    })


# --- features and cache ---------------------------------------------------------------------------

def test_features_are_masked_means_of_last_two_layers(tiny_bert):
    import torch
    from transformers import AutoModel, AutoTokenizer

    encoder = FrozenEncoder(str(tiny_bert), max_length=32, amp=False)  # float32 everywhere
    texts = ["make it formal", "the meeting was moved to thursday please lock the door", ""]
    features = encoder.encode(texts)
    assert features.shape == (3, 64) and features.dtype == np.float32
    alone = encoder.encode([texts[0]])  # no padding: padding in a batch must not change the result
    assert np.allclose(features[0], alone[0], atol=1e-5)
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        hidden = model(**tokenizer(texts[0], return_tensors="pt"), output_hidden_states=True).hidden_states
    expected = torch.cat([hidden[-1][0].mean(0), hidden[-2][0].mean(0)]).numpy()
    assert np.allclose(features[0], expected, atol=1e-5)


def test_encoder_weights_load_from_safetensors_only(tiny_bert, tmp_path):
    """A backbone whose weights are only a pickled pytorch_model.bin is refused in one line, never unpickled."""
    import torch
    from transformers import BertModel

    pickled = tmp_path / "pickled"  # the same model and tokenizer, its weights as a pickle (transformers loads it)
    pickled.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_bert / name).is_file():
            (pickled / name).write_bytes((tiny_bert / name).read_bytes())
    torch.save(BertModel.from_pretrained(tiny_bert).state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(DataError, match=r"^cannot load encoder '.*pickled' \("):
        FrozenEncoder(str(pickled), max_length=32).encode(["a pirate"])
    assert FrozenEncoder(str(tiny_bert), max_length=32).encode(["a pirate"]).shape == (1, 64)


def test_cache_encodes_each_text_once_and_reads_back_from_disk(tiny_bert, tmp_path):
    pairs = _pairs(6)
    cache = FeatureCache(FrozenEncoder(str(tiny_bert), 32), tmp_path)
    first = cache.pair_features(pairs)
    assert first.shape == (6, 128)
    distinct = len(set(pairs.original_text) | set(pairs.rewritten_text))
    assert cache.encoded == distinct
    cache.pair_features(pairs)
    assert cache.encoded == distinct  # nothing new
    reopened = FeatureCache(FrozenEncoder(str(tiny_bert), 32), tmp_path)
    assert np.array_equal(reopened.pair_features(pairs), first)
    assert reopened.encoded == 0


def test_cache_invalidates_on_new_length_or_backbone(tiny_bert, tmp_path):
    texts = ["make it formal " * 6, "a sea poem"]
    base = FeatureCache(FrozenEncoder(str(tiny_bert), 32), tmp_path).features(texts)
    shorter = FeatureCache(FrozenEncoder(str(tiny_bert), 4), tmp_path)
    assert not np.allclose(shorter.features(texts)[0], base[0]) and shorter.encoded == 2
    other = _tiny_bert(tmp_path / "other", seed=1)
    swapped = FeatureCache(FrozenEncoder(str(other), 32), tmp_path)
    assert not np.allclose(swapped.features(texts), base) and swapped.encoded == 2
    # new weights saved over the same folder: same path, different features, so a recompute
    _tiny_bert(other, seed=2)
    os.utime(other / "model.safetensors", ns=(1, 1))
    rewritten = FeatureCache(FrozenEncoder(str(other), 32), tmp_path)
    assert rewritten.encoded == 0 and rewritten.features(texts).shape == (2, 64) and rewritten.encoded == 2


def test_cache_ignores_shards_of_other_settings(tiny_bert, tmp_path):
    cache = FeatureCache(FrozenEncoder(str(tiny_bert), 32), tmp_path)
    cache.features(["a sea poem"])
    shard = next(cache.folder.glob("*.safetensors"))
    stranger = FeatureCache(FrozenEncoder(str(tiny_bert), 16), tmp_path)
    stranger.folder.mkdir(parents=True)
    shard.rename(stranger.folder / shard.name)  # a shard whose metadata names other settings
    reread = FeatureCache(FrozenEncoder(str(tiny_bert), 16), tmp_path)
    assert reread.store == {}


def test_features_of_chosen_layers_and_their_cache_key(tiny_bert):
    import torch
    from transformers import AutoModel, AutoTokenizer

    text = "the meeting was moved to thursday"
    chosen = FrozenEncoder(str(tiny_bert), max_length=32, amp=False, layers=(-1, 0, 1))
    features = chosen.encode([text])
    assert features.shape == (1, 96)
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        hidden = model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True).hidden_states
    assert len(hidden) == 3  # embeddings + 2 layers: -1 is layer 2, 0 the embedding output
    expected = torch.cat([hidden[2][0].mean(0), hidden[0][0].mean(0), hidden[1][0].mean(0)]).numpy()
    assert np.allclose(features[0], expected, atol=1e-5)
    default = FrozenEncoder(str(tiny_bert), max_length=32, amp=False)
    assert default.layers == (-1, -2)
    assert FrozenEncoder(str(tiny_bert), max_length=32, amp=False, layers=[-1, -2]).identity == default.identity
    assert chosen.identity != default.identity != FrozenEncoder(str(tiny_bert), max_length=32, amp=False,
                                                                  layers=(-2, -1)).identity


def test_bf16_features_only_on_a_native_cpu_named_in_the_cache_key_and_close_to_float32(tiny_bert, monkeypatch):
    """Issue 24: the encoder runs under bf16 autocast where the CPU computes bf16 natively (`amp`, the default);
    its features are another cache identity, and stay within cosine 0.999 of float32's."""
    import torch

    texts = ["the meeting was moved to thursday please lock the door", "make it formal", "a sea poem"]
    exact = FrozenEncoder(str(tiny_bert), max_length=32, amp=False)
    for native in (False, True):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        fast = FrozenEncoder(str(tiny_bert), max_length=32)
        assert fast.precision == ("bf16" if native else "fp32")
        assert (fast.identity == exact.identity) is not native  # float32's key is the one caches always had
    fast_rows, exact_rows = fast.encode(texts), exact.encode(texts)
    assert not np.array_equal(fast_rows, exact_rows)  # bf16 really ran
    cosine = (fast_rows * exact_rows).sum(1) / np.linalg.norm(fast_rows, axis=1) / np.linalg.norm(exact_rows, axis=1)
    assert cosine.min() > 0.999


def test_pair_block_concat_and_interact():
    concat = np.array([[1.0, 2.0, 3.0, -4.0], [0.5, 0.0, 2.0, 1.0]], dtype=np.float32)  # (2, 2F) with F = 2
    assert pair_block(concat, "concat") is concat
    interact = pair_block(concat, "interact")
    assert interact.shape == (2, 8) and interact.dtype == np.float32
    assert interact.tolist() == [[1.0, 2.0, 3.0, -4.0, 2.0, -6.0, 3.0, -8.0],
                                 [0.5, 0.0, 2.0, 1.0, 1.5, 1.0, 1.0, 0.0]]


# --- head and training ------------------------------------------------------------------------------

def test_head_layout_and_initialisation():
    from torch import nn

    head = build_head(feature_dim=128, target_dim=16, multiplier=42, init_std=0.02)
    assert [type(layer) for layer in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert tuple(head[0].weight.shape) == (42 * 16, 128) and tuple(head[3].weight.shape) == (16, 42 * 16)
    assert float(head[0].bias.abs().max()) == 0.0 and float(head[3].bias.abs().max()) == 0.0
    assert float(head[0].weight.std()) == pytest.approx(0.02, rel=0.05)
    assert head_predict(head, np.random.default_rng(0).normal(size=(5, 128)).astype(np.float32)).shape == (5, 16)


@pytest.mark.parametrize("loss", ["cosine", "score"])
def test_training_lowers_the_loss_on_a_learnable_target(loss):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, 24)).astype(np.float32)
    mixing = rng.normal(size=(24, 8)).astype(np.float32)
    targets = features @ mixing
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    config = RegressorConfig(multiplier=4, epochs=30, batch_size=16, lr=3e-3, loss=loss)
    head, losses = train_head(features, targets, config)
    assert len(losses) == 30
    assert losses[-1] < losses[0] - 0.3
    pred = head_predict(head, features)
    assert float(np.mean(np.sum(pred * targets, axis=1))) > 0.8


def test_training_is_reproducible_with_the_seed():
    """The same seed gives the same head and losses; another seed another head, so the seed is really used."""
    rng = np.random.default_rng(1)
    features, targets = rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=(40, 4)).astype(np.float32)
    config = RegressorConfig(multiplier=2, epochs=3, batch_size=8)
    (head, losses), (again, losses_again) = (train_head(features, targets, config) for _ in range(2))
    other, other_losses = train_head(features, targets, dataclasses.replace(config, seed=config.seed + 1))
    weights, weights_again, other_weights = ({k: v.numpy() for k, v in h.state_dict().items()}
                                             for h in (head, again, other))
    assert list(weights) == list(other_weights) and losses == losses_again and losses != other_losses
    for name, value in weights.items():
        np.testing.assert_array_equal(value, weights_again[name])
    assert not np.array_equal(weights["0.weight"], other_weights["0.weight"])  # the initialisation follows the seed


# --- method, save/load, bad input ---------------------------------------------------------------------

def _method(tiny_bert, embedder: Path, tmp_path: Path, **extra):
    options = dict(backbone=str(tiny_bert), embedder=str(embedder), max_length=32, multiplier=1, epochs=3,
                   batch_size=8, cache_dir=str(tmp_path / "cache"), written=False)
    return from_name("regressor", **{**options, **extra})


def test_the_decoding_bank_holds_the_written_prompts_by_default(tiny_bert, tiny_bert_embedder, tmp_path):
    from promptrec.prompts import written_prompts

    pairs = _pairs(12)
    method = _method(tiny_bert, tiny_bert_embedder, tmp_path, written=True)
    method.fit(pairs)
    assert method.bank.prompts == list(dict.fromkeys(pairs.rewrite_prompt)) + list(written_prompts())
    assert RegressorConfig().written  # the default


def test_fit_predict_save_load_round_trip(tiny_bert, tiny_bert_embedder, tmp_path, caplog):
    pairs = _pairs(20)
    pairs.loc[0, "original_text"] = ""
    pairs.loc[1, "rewritten_text"] = ""  # empty texts are encoded like any other text
    method = _method(tiny_bert, tiny_bert_embedder, tmp_path)
    assert isinstance(method, PredictsEmbeddings)  # the ensemble's select mode relies on it
    with caplog.at_level(logging.INFO, logger="promptrec.methods.regressor"):
        method.fit(pairs)
    distinct = len(set(pairs.original_text) | set(pairs.rewritten_text))
    assert caplog.messages == [f"regressor: features for {distinct} texts: 0 from cache, {distinct} to encode"]
    emb = method.predict_embeddings(pairs)
    assert emb.shape == (20, 32)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    prompts = method.predict(pairs)
    assert len(prompts) == 20 and set(prompts) <= set(pairs.rewrite_prompt)
    method.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "bank.json", "bank.safetensors", "head.safetensors", "method.json"]
    loaded = load_method(tmp_path / "model")
    assert np.array_equal(loaded.predict_embeddings(pairs), emb)
    assert loaded.predict(pairs) == prompts
    report = loaded.report(pairs)
    assert report.rows == 20 and report.bank_size == 4 and report.label.startswith("local (")
    assert report.bank_oracle == pytest.approx(1.0, abs=1e-5)  # every true prompt is in the bank
    assert -1 <= report.decoded_score <= report.bank_oracle + 1e-6
    assert all(report.label in line for line in report.lines())


def test_interact_and_head_tokens_features_round_trip(tiny_bert, tiny_bert_embedder, tmp_path):
    pairs = _pairs(12)
    default = _method(tiny_bert, tiny_bert_embedder, tmp_path, max_length=16)  # head_tokens 32, capped at 16
    config = default.config
    assert (config.head_tokens, default.head_cache.encoder.max_length, config.pair) == (32, 16, "concat")
    assert default.features(pairs).shape == (12, 2 * 64 + 64)  # [o, r] of the last two layers, then the head
    method = _method(tiny_bert, tiny_bert_embedder, tmp_path, pair="interact", head_tokens=4, layers=[-1])
    features = method.features(pairs)
    assert features.shape == (12, 4 * 32 + 32)  # [o, r, r - o, o * r] of the last layer, then the rewrite's head
    texts = pairs.original_text.tolist() + pairs.rewritten_text.tolist()
    whole = FrozenEncoder(str(tiny_bert), 32, layers=(-1,)).encode(texts)
    original, rewritten = whole[:12], whole[12:]
    assert np.allclose(features[:, :128], np.concatenate(
        [original, rewritten, rewritten - original, original * rewritten], axis=1), atol=1e-5)
    # 4 tokens: [CLS], the first two words, [SEP]
    head = FrozenEncoder(str(tiny_bert), 4, layers=(-1,)).encode(pairs.rewritten_text.tolist())
    assert np.allclose(features[:, 128:], head, atol=1e-5)
    assert not np.allclose(head, rewritten, atol=1e-3)  # rewrites here are longer than two words
    method.fit(pairs)
    assert method.head[0].in_features == 160
    method.save(tmp_path / "model")
    loaded = load_method(tmp_path / "model")
    assert (loaded.config.pair, loaded.config.head_tokens, loaded.config.layers) == ("interact", 4, [-1])
    assert np.array_equal(loaded.predict_embeddings(pairs), method.predict_embeddings(pairs))
    assert loaded.predict(pairs) == method.predict(pairs)
    loaded.config.head_tokens = 0  # features no longer match the saved head: one line naming both sizes
    loaded._head_cache = None
    with pytest.raises(DataError, match="gives 128 features per pair but the head expects 160"):
        loaded.predict(pairs)


def test_top_k_decoding_joins_the_nearest_prompts(tiny_bert, tiny_bert_embedder, tmp_path):
    method = _method(tiny_bert, tiny_bert_embedder, tmp_path, top_k=2)
    method.fit(_pairs(12))
    pair = _pairs(1, seed=5)
    first, second = method.bank.nearest(method.predict_embeddings(pair), 2)[0][0]
    assert method.predict(pair) == [f"{method.bank.prompts[first]} {method.bank.prompts[second]}"]


def test_direction_weight_blends_the_bank_query(tiny_bert, tiny_bert_embedder, tmp_path):
    pairs = _pairs(12)
    method = _method(tiny_bert, tiny_bert_embedder, tmp_path, direction_weight=2.0)
    method.fit(pairs)
    pred = method.head_embeddings(pairs)
    shift = (method.embedder.encode_texts(pairs.rewritten_text.tolist())
             - method.embedder.encode_texts(pairs.original_text.tolist()))  # the texts go through the shared pass
    expected = pred + 2.0 * shift / np.linalg.norm(shift, axis=1, keepdims=True)
    assert np.allclose(method.decode_queries(pairs, pred), expected, atol=1e-6)
    assert method.predict(pairs) == method.bank.decode(expected)
    assert np.allclose(method.predict_embeddings(pairs), expected / np.linalg.norm(expected, axis=1, keepdims=True))
    method.config.direction_weight = 0.0
    assert np.array_equal(method.decode_queries(pairs, pred), pred)


@pytest.mark.slow
def test_embedder_dimension_mismatch_at_load_is_one_line(tiny_bert, tiny_bert_embedder, tiny_t5_embedder_dir, tmp_path):
    method = _method(tiny_bert, tiny_bert_embedder, tmp_path)
    method.fit(_pairs(10))
    method.save(tmp_path / "model")
    config_path = tmp_path / "model" / "method.json"
    payload = json.loads(config_path.read_text())
    payload["config"]["embedder"] = str(tiny_t5_embedder_dir)  # 768-dim where the head predicts 32
    config_path.write_text(json.dumps(payload))
    with pytest.raises(DataError, match=r"saved for 32-dim embeddings but embedder .* gives 768") as err:
        load_method(tmp_path / "model")
    assert "\n" not in str(err.value)


def test_head_of_other_width_than_config_is_rejected(tiny_bert, tiny_bert_embedder, tmp_path):
    method = _method(tiny_bert, tiny_bert_embedder, tmp_path)
    method.fit(_pairs(10))
    method.save(tmp_path / "model")
    config_path = tmp_path / "model" / "method.json"
    payload = json.loads(config_path.read_text())
    payload["config"]["multiplier"] = 3
    config_path.write_text(json.dumps(payload))
    with pytest.raises(DataError, match="head shapes do not match method.json"):
        load_method(tmp_path / "model")


def test_config_validation_and_the_shipped_original_config():
    with pytest.raises(DataError, match="loss must be one of cosine, score"):
        from_name("regressor", loss="mse")
    with pytest.raises(DataError, match="unknown option 'width'"):
        from_name("regressor", width=3)
    with pytest.raises(DataError, match="pair must be one of concat, interact, not 'sum'"):
        from_name("regressor", pair="sum")
    with pytest.raises(DataError, match=r"layers must be distinct hidden-layer indices, not \[-1, -1\]"):
        from_name("regressor", layers=[-1, -1])
    with pytest.raises(DataError, match="head_tokens must be 0 \\(off\\) or more, not -1"):
        from_name("regressor", head_tokens=-1)
    path = ROOT / "configs" / "regressor_original.yaml"
    shipped = load_config_file(path)
    original = config_from_dict(RegressorConfig, shipped, str(path))
    assert (original.backbone, original.embedder, original.multiplier, original.lr, original.batch_size,
            original.epochs, original.max_length, original.betas, original.direction_weight) == (
        "microsoft/deberta-v3-large", "official", 42, 5e-6, 4, 10, 384, [0.85, 0.999], 0.0)
    # an override (as `--set` gives) replaces one field and leaves the file's values alone
    assert config_from_dict(RegressorConfig, {**shipped, "epochs": 2}, str(path)).epochs == 2 and shipped["epochs"] == 10
    defaults = dataclasses.asdict(RegressorConfig())
    assert {**defaults, **shipped} == dataclasses.asdict(original)
    assert dataclasses.asdict(RegressorMethod().config) == defaults  # no config: the offline defaults


@pytest.mark.slow
def test_cli_train_then_recover(tiny_bert, tiny_bert_embedder, tmp_path):
    from typer.testing import CliRunner

    from promptrec.cli import app

    data, test = tmp_path / "train.csv", tmp_path / "test.csv"
    _pairs(16).to_csv(data, index=False)
    _pairs(5, seed=3).drop(columns="rewrite_prompt").to_csv(test, index=False)
    options = [f"backbone={tiny_bert}", f"embedder={tiny_bert_embedder}", "max_length=32", "multiplier=1",
               "epochs=2", f"cache_dir={tmp_path / 'cache'}"]
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "regressor", str(data), "-o", str(tmp_path / "m"),
                                  *[arg for o in options for arg in ("--set", o)]])
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "sub.csv"
    recovered = runner.invoke(app, ["recover", str(test), "--model", str(tmp_path / "m"), "-o", str(out)])
    assert recovered.exit_code == 0, recovered.output
    submission = pd.read_csv(out)
    assert submission.id.tolist() == list(range(5)) and submission.rewrite_prompt.str.strip().ne("").all()
    reported = runner.invoke(app, ["regressor-report", str(tmp_path / "m"), str(data)])
    assert reported.exit_code == 0, reported.output
    assert "embedding-space score" in reported.output and "bank oracle" in reported.output
    assert "local (" in reported.output


# --- resuming after kill -9: feature shards written before the kill are reused --------------------------

def _shard_texts(folder: Path) -> dict[str, int]:
    """Texts per finished feature shard under a cache folder, by file name."""
    from safetensors import safe_open

    counts = {}
    for shard in folder.glob("features/*/*.safetensors"):
        with safe_open(str(shard), framework="numpy") as handle:
            counts[shard.name] = handle.get_slice("keys").get_shape()[0]
    return counts


@pytest.mark.slow
def test_cli_training_killed_with_sigkill_reuses_its_feature_shards(tiny_bert, tiny_bert_embedder, tmp_path,
                                                                      one_thread):
    data, out, cache = tmp_path / "train.csv", tmp_path / "model", tmp_path / "cache"
    _pairs(1500).to_csv(data, index=False)  # 3,000 distinct texts: 6 shards, encoded one text per forward pass
    options = dict(backbone=str(tiny_bert), embedder=str(tiny_bert_embedder), max_length=32, multiplier=1, epochs=2,
                   batch_size=64, encode_batch_size=1, head_tokens=0)  # the full texts' shards only, counted below
    command = [sys.executable, "-m", "promptrec", "--threads", "1", "train", "regressor", str(data), "-o", str(out),
               *[arg for k, v in {**options, "cache_dir": cache}.items() for arg in ("--set", f"{k}={v}")]]

    kill_when(command, tmp_path / "first.log", lambda: bool(_shard_texts(cache)), poll=0.005)
    assert not (out / "method.json").exists()
    assert "regressor: features for 3000 texts: 0 from cache, 3000 to encode" in (tmp_path / "first.log").read_text()
    before = _shard_texts(cache)
    saved = sum(before.values())
    assert 0 < saved < 3000 and saved % SHARD_TEXTS == 0

    second = subprocess.run(command, cwd=ROOT, env=CLI_ENV, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    [(total, reused, encoding)] = re.findall(r"regressor: features for (\d+) texts: (\d+) from cache, (\d+) to encode",
                                             second.stderr)
    assert (int(total), int(reused), int(encoding)) == (3000, saved, 3000 - saved)
    after = _shard_texts(cache)
    assert before.items() <= after.items()  # the shards of the killed run are kept as they were
    # the rerun encodes exactly the texts no shard held: with the one chunk in flight at the kill, the two
    # runs encode at most 3,000 + SHARD_TEXTS texts
    assert sum(after[name] for name in after.keys() - before.keys()) == 3000 - saved
    assert sum(after.values()) == 3000 and not list(cache.glob("features/*/.*.tmp"))

    straight = from_name("regressor", **options, cache_dir=str(tmp_path / "fresh"))  # the run never killed
    triples = read_table(data, TRIPLE_COLUMNS)
    straight.fit(triples)
    resumed = load_method(out)
    straight_state, resumed_state = straight.head.state_dict(), resumed.head.state_dict()
    assert all(np.array_equal(straight_state[k].numpy(), resumed_state[k].numpy()) for k in straight_state)
    assert resumed.predict(triples) == straight.predict(triples)


@pytest.mark.parametrize("disk_cache", [True, False])
def test_gate_inner_folds_encode_each_text_once_per_process(tiny_bert, tiny_bert_embedder, tmp_path, monkeypatch,
                                                            disk_cache):
    """Issue 24: the gate's inner folds and the final fit share the encoders' features and the metric embeddings, so
    every text reaches each encoder once per process (and each encoder loads once), with or without the disk cache."""
    from collections import Counter

    from promptrec import features, metric
    from promptrec.methods.ensemble import EnsembleMethod
    from promptrec.pipeline import ensemble_config

    monkeypatch.setenv("PROMPTREC_CACHE", str(tmp_path / "default-cache"))  # the embedder's text pass keeps its own
    monkeypatch.setattr(features, "_SHARED_CACHES", {})
    metric._shared_embedder.cache_clear()  # a fresh metric embedder: its memo starts empty
    features._pretrained.cache_clear()
    encoded, embedded, loads = [], [], []
    encode, encode_uncached, load = (features.FrozenEncoder.encode, metric.Embedder.encode_uncached,
                                     features.FrozenEncoder._load)
    monkeypatch.setattr(features.FrozenEncoder, "encode", lambda self, texts, on_batch=None: encoded.extend(
        (self.source, self.max_length, t) for t in texts) or encode(self, texts, on_batch))
    monkeypatch.setattr(features.FrozenEncoder, "_load", lambda self: loads.append(self.max_length) or load(self))
    monkeypatch.setattr(metric.Embedder, "encode_uncached",
                        lambda self, texts, progress=False: embedded.extend(texts) or encode_uncached(self, texts, progress))
    embedder = str(tiny_bert_embedder)
    options = {"regressor": dict(backbone=str(tiny_bert), embedder=embedder, max_length=32, head_tokens=4, multiplier=1,
                                 epochs=1, batch_size=8, cache_dir=str(tmp_path / "cache"), feature_cache=disk_cache),
               **{label: {"embedder": embedder} for label in ("best", "bank", "evidence")},
               "ensemble": {"embedder": embedder, "hedge_steps": 2}}
    rows = _pairs(18).assign(source=["a.csv"] * 6 + ["b.csv"] * 6 + ["c.csv"] * 6)  # three sources: 3 inner folds
    method = EnsembleMethod(ensemble_config(None, options))
    method.fit(rows)
    assert method.gate is not None
    texts = set(rows.original_text) | set(rows.rewritten_text)
    bert, st = str(tiny_bert), str(tiny_bert_embedder)  # the regressor's backbone; the embedder's own transformer
    assert Counter(encoded) == Counter({(bert, 32, t): 1 for t in texts} | {(bert, 4, t): 1 for t in set(rows.rewritten_text)}
                                       | {(st, 32, t): 1 for t in texts})
    assert sorted(loads) == [4, 32, 32] and features._pretrained.cache_info().misses == 2  # both blocks: one model
    assert embedded and max(Counter(embedded).values()) == 1
    metric._shared_embedder.cache_clear()  # later tests start from a fresh embedder too


def test_embedder_and_regressor_share_one_encoder_pass_over_each_text(tiny_bert_embedder, tmp_path, monkeypatch):
    """Issue 24: when the regressor's backbone is the metric embedder's own transformer (the offline default: MiniLM),
    the embedder's vectors of originals and rewrites are the regressor's last-layer means, normalised: each text
    goes through the encoder once in a process, not once per model; prompts and scores keep the embedder's path."""
    from collections import Counter

    from promptrec import features, metric
    from promptrec.methods.ensemble import EnsembleMethod
    from promptrec.pipeline import ensemble_config

    monkeypatch.setenv("PROMPTREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(features, "_SHARED_CACHES", {})
    metric._shared_embedder.cache_clear()
    encoded, embedded = [], []
    encode, encode_uncached = features.FrozenEncoder.encode, metric.Embedder.encode_uncached
    monkeypatch.setattr(features.FrozenEncoder, "encode", lambda self, texts, on_batch=None: encoded.extend(
        (self.max_length, t) for t in texts) or encode(self, texts, on_batch))
    monkeypatch.setattr(metric.Embedder, "encode_uncached",
                        lambda self, texts, progress=False: embedded.extend(texts) or encode_uncached(self, texts, progress))
    shared = str(tiny_bert_embedder)
    options = {"regressor": dict(backbone=shared, embedder=shared, max_length=32, head_tokens=4, multiplier=1, epochs=1,
                                 batch_size=8), **{label: {"embedder": shared} for label in ("best", "bank", "evidence")},
               "ensemble": {"embedder": shared, "hedge_steps": 2}}
    rows = _pairs(18).assign(source=["a.csv"] * 6 + ["b.csv"] * 6 + ["c.csv"] * 6)
    EnsembleMethod(ensemble_config(None, options)).fit(rows)
    texts = set(rows.original_text) | set(rows.rewritten_text)
    assert Counter(encoded) == Counter({(32, t): 1 for t in texts} | {(4, t): 1 for t in set(rows.rewritten_text)})
    assert not texts & set(embedded)  # the embedder's own model only read prompts
    embedder = metric.load_embedder(shared)
    sample = sorted(texts)[:5]
    through_pass = embedder.encode_texts(sample)
    block = embedder.text_features.features(sample)[:, :32]
    assert np.allclose(through_pass, block / np.linalg.norm(block, axis=1, keepdims=True), atol=1e-6)
    own = embedder.encode_uncached(sample)  # the SentenceTransformer itself, float32
    assert (through_pass * own).sum(1).min() > 0.999
    metric._shared_embedder.cache_clear()


def test_feature_cache_keeps_at_most_its_memory_bound_and_never_a_text_of_the_call(tiny_bert, tmp_path):
    """Issue 24: a long `recover` must not keep every text's features: the oldest go past `memory_texts` (a later call
    encodes them again, or a new cache reads them back from disk)."""
    texts = [f"text number {i}" for i in range(7)]
    cache = FeatureCache(FrozenEncoder(str(tiny_bert), 32, amp=False), tmp_path, memory_texts=3)
    first = cache.features(texts[:5])  # all five wanted by this call: kept until it returns, then the oldest two go
    assert len(cache.store) == 3 and cache.cached(texts[:5]) == 3 and cache.cached(texts[:2]) == 0
    again = cache.features(texts[:2])
    assert cache.encoded == 7 and np.allclose(again, first[:2], atol=1e-6)  # re-encoded, same features
    assert cache.cached(texts[:2]) == 2 and len(cache.store) == 3
    reopened = FeatureCache(FrozenEncoder(str(tiny_bert), 32, amp=False), tmp_path, memory_texts=3)
    assert len(reopened.store) == 3  # the shards on disk hold all five, memory keeps three


def test_head_optimizer_is_fused_adamw_with_the_config_settings():
    """Issue 24: one fused kernel per step (the unfused loop was most of a warm-cache `fit`)."""
    from promptrec.methods.regressor import make_optimizer

    config = RegressorConfig(lr=0.01, weight_decay=0.1)
    defaults = make_optimizer(build_head(8, 4, 2, 0.02), config).defaults
    assert defaults["fused"] is True and defaults["lr"] == 0.01 and defaults["weight_decay"] == 0.1
    assert defaults["betas"] == (0.85, 0.999)
