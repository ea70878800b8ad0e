"""PromptBank nearest-neighbour search, decoding, oracle, and the zero-training `bank` method."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from promptrec.data import DataError
from promptrec.methods.bank import BankConfig, BankMethod, PromptBank, build_bank
from promptrec.methods.base import from_name, load_method


class AxisEmbedder:
    """Embeds a text by its words a, b, c, d (first weight 1, second 0.5, others ignored): known neighbours."""

    label = "toy axes"
    dim = 4

    def __init__(self):
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        rows = np.zeros((len(texts), 4), dtype=np.float32)
        for i, text in enumerate(texts):
            words = [w for w in text.split() if w in ("a", "b", "c", "d")]
            for rank, word in enumerate(words[:2]):
                rows[i, "abcd".index(word)] += 1.0 if rank == 0 else 0.5
            if not words:
                rows[i] = 0.5
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    encode_texts = encode  # long texts take the same path here


def _bank(prompts):
    return PromptBank.build(prompts, AxisEmbedder())


def test_build_dedupes_and_drops_blanks_in_first_order():
    bank = _bank(["a x", "b y", "a x", "  ", "c z", " b y "])
    assert bank.prompts == ["a x", "b y", "c z"]
    assert bank.embeddings.shape == (3, 4)


def test_nearest_returns_the_right_neighbours_best_first():
    bank = _bank(["a", "b", "c", "d"])
    queries = np.array([[0, 1, 0, 0], [0.9, 0, 0.1, 0], [0, 0, -1, 0.2]], dtype=np.float32)
    top, cos = bank.nearest(queries, k=2)
    assert top.tolist() == [[1, 0], [0, 2], [3, 0]]
    assert cos[0].tolist() == pytest.approx([1.0, 0.0])
    assert bank.decode(queries) == ["b", "a", "d"]
    assert bank.decode(queries, top_k=2) == ["b a", "a c", "d a"]
    assert bank.nearest(queries, k=10)[0].shape == (3, 4)  # k is capped at the bank size


def test_oracle_is_best_single_prompt_cubed():
    bank = _bank(["a", "b b"])
    truth = AxisEmbedder().encode(["a b", "b", "c"])
    expected = [(1 / np.sqrt(1.25)) ** 3, 1.0, 0.0]
    assert bank.oracle(truth).tolist() == pytest.approx(expected, abs=1e-6)


def test_dimension_mismatch_is_one_line_error():
    with pytest.raises(DataError, match="queries have 3 dimensions but the prompt bank has 4"):
        _bank(["a"]).nearest(np.ones((1, 3)))


def test_concat_keeps_first_occurrence():
    joined = PromptBank.concat([_bank(["a", "b"]), _bank(["b", "c"])])
    assert joined.prompts == ["a", "b", "c"]
    assert np.allclose(joined.embeddings[2], [0, 0, 1, 0])


def test_empty_bank_is_an_error():
    with pytest.raises(DataError, match="prompt bank is empty"):
        build_bank(AxisEmbedder(), ["", " "], [])


def test_bank_file_is_cached_on_disk(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(["c one", "a two", "c one"]), encoding="utf-8")
    embedder = AxisEmbedder()
    first = PromptBank.from_file(path, embedder, tmp_path / "cache")
    second = PromptBank.from_file(path, embedder, tmp_path / "cache")
    assert first.prompts == second.prompts == ["c one", "a two"]
    assert embedder.calls == 1  # the second read came from the .npy cache
    assert np.array_equal(first.embeddings, second.embeddings)


def test_save_load_round_trip(tmp_path):
    bank = _bank(["a one", "b two", "c three"])
    bank.save(tmp_path)
    again = PromptBank.load(tmp_path)
    assert again.prompts == bank.prompts
    assert np.array_equal(again.embeddings, bank.embeddings)


PAIRS = pd.DataFrame({
    "id": ["1", "2", "3"],
    "original_text": ["a", "b", "a"],
    "rewritten_text": ["b", "c", ""],
    "rewrite_prompt": ["b p", "c q", "d r"],
})


def test_bank_method_queries_rewritten_and_direction():
    method = BankMethod(BankConfig())
    method.embedder = AxisEmbedder()
    method.fit(PAIRS)
    assert method.predict(PAIRS) == ["b p", "c q", method.predict(PAIRS)[2]]
    method.config.query = "direction"
    # b - a points most towards b; c - b towards c; "" (all axes) - a points away from a, towards b/c/d
    preds = method.predict(PAIRS)
    assert preds[:2] == ["b p", "c q"] and preds[2] != "" and all(p.strip() for p in preds)
    half = np.sqrt(0.5)  # the direction query is the unit shift: b - a, c - b, then (0.5, 0.5, 0.5, 0.5) - a
    assert method.queries(PAIRS) == pytest.approx(np.array(
        [[-half, half, 0, 0], [0, -half, half, 0], [-0.5, 0.5, 0.5, 0.5]]), abs=1e-6)


def test_bank_config_rejects_bad_query():
    with pytest.raises(DataError, match="query must be one of"):
        from_name("bank", query="sideways")


def test_bank_method_save_load_and_dimension_check(tmp_path, tiny_t5_embedder_dir):
    method = from_name("bank", embedder=str(tiny_t5_embedder_dir), written=False)
    method.fit(PAIRS)
    method.save(tmp_path / "m")
    loaded = load_method(tmp_path / "m")
    assert loaded.bank.prompts == ["b p", "c q", "d r"]
    assert loaded.predict(PAIRS) == method.predict(PAIRS)
    config = json.loads((tmp_path / "m" / "method.json").read_text())
    (tmp_path / "m" / "bank.safetensors").unlink()
    _bank(["a", "b", "c"]).save(tmp_path / "m")  # 4-dim embeddings where the embedder gives 768
    assert config["method"] == "bank"
    with pytest.raises(DataError, match="saved for 4-dim embeddings but embedder .* gives 768"):
        load_method(tmp_path / "m")


def test_bank_file_cache_folder_follows_config_then_environment_then_home(tmp_path, monkeypatch):
    path = tmp_path / "prompts.txt"
    path.write_text("a one\nb two\n", encoding="utf-8")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PROMPTREC_CACHE", "")  # blank means unset, as everywhere else
    PromptBank.from_file(path, AxisEmbedder())
    monkeypatch.setenv("PROMPTREC_CACHE", str(tmp_path / "env"))
    PromptBank.from_file(path, AxisEmbedder())
    PromptBank.from_file(path, AxisEmbedder(), tmp_path / "chosen")
    for root in ("home/.cache/promptrec", "env", "chosen"):
        assert [p.suffix for p in sorted((tmp_path / root / "bank").iterdir())] == [".json", ".npy"]


def test_a_saved_bank_is_not_loaded_as_another_method(tmp_path):
    from promptrec.methods.regressor import RegressorMethod

    method = BankMethod(BankConfig())
    method.embedder = AxisEmbedder()
    method.fit(PAIRS)
    method.save(tmp_path / "m")
    with pytest.raises(DataError, match=r"holds a saved 'bank' method, not 'regressor'"):
        RegressorMethod.load(tmp_path / "m")


def test_written_prompts_join_the_bank_and_are_cached(tmp_path):
    from promptrec.prompts import written_prompts

    written = written_prompts()
    assert len(written) == len(set(written)) > 5000
    assert "Convert this into a haiku." in written and "Rewrite this as an Instagram caption in a sad tone." in written
    assert "Turn this into a user guide." in written and "Convert this into an essay." in written  # a or an by sound
    embedder = AxisEmbedder()
    bank = build_bank(embedder, ["a mine"], [], tmp_path, written=True)
    assert bank.prompts == ["a mine", *written]
    build_bank(embedder, [], [], tmp_path, written=True)
    assert embedder.calls == 2  # training prompts once each fit; the written ones came from the cache the second time


def test_a_switch_given_as_text_is_a_one_line_error():
    for method in ("bank", "regressor", "rerank"):
        with pytest.raises(DataError, match=f"^method '{method}': option 'written' must be true or false, got 'maybe'$"):
            from_name(method, written="maybe")
        assert from_name(method, written=False).config.written is False
    assert from_name("rerank", bf16=None).config.bf16 is None  # None where the field allows it
