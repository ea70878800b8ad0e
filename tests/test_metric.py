"""The metric: exact SCS numbers, sign, dedupe, the sentence-t5 code path, special tokens, caches."""

from __future__ import annotations

import numpy as np
import pytest

import promptrec.metric as metric
from promptrec.data import DataError
from promptrec.metric import load_embedder, load_embeddings, save_embeddings, score, sharpened_cosine


def test_scs_exact_numbers_on_hand_made_vectors():
    u, v = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 2.9])
    x, y = np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])
    assert sharpened_cosine(u, v)[0] == pytest.approx(0.999867 ** 3, abs=1e-6)
    assert sharpened_cosine(u, v)[0] == pytest.approx(0.999601, abs=1e-6)
    assert sharpened_cosine(x, y)[0] == pytest.approx(0.364431, abs=1e-6)
    assert float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y)) == pytest.approx(0.714286, abs=1e-6)


def test_scs_keeps_the_sign_of_negative_cosines():
    a, b = np.array([[1.0, 0.0]]), np.array([[-1.0, 0.2]])
    cos = -1 / np.sqrt(1.04)
    assert sharpened_cosine(a, b)[0] == pytest.approx(cos ** 3)
    assert sharpened_cosine(a, b)[0] < 0


def test_scs_is_row_wise():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(sharpened_cosine(a, b), [1.0, 0.0], atol=1e-12)


class CountingModel:
    """Records how many texts reach the model, to check dedupe."""

    def __init__(self):
        self.seen = 0
        self.tokenizer = type("Tok", (), {"name_or_path": ""})()

    def get_sentence_embedding_dimension(self):
        return 2

    def encode(self, texts, **_):
        self.seen += len(texts)
        return np.array([[len(t), 1.0] for t in texts]) / np.linalg.norm([[len(t), 1.0] for t in texts], axis=1, keepdims=True)


def test_encode_embeds_each_distinct_text_once_and_keeps_order():
    model = CountingModel()
    embedder = metric.Embedder(model, "test")
    emb = embedder.encode(["bb", "a", "bb", "bb", "a"])
    assert model.seen == 2
    np.testing.assert_allclose(emb[0], emb[2])
    assert emb[0][0] > emb[1][0]


def test_score_mean_and_label():
    embedder = metric.Embedder(CountingModel(), "test-label")
    result = score(["aa", "aa"], ["aa", "aa"], embedder)
    assert result.mean == pytest.approx(1.0)
    assert "test-label" in str(result)
    with pytest.raises(DataError):
        score(["a"], ["a", "b"], embedder)


def test_sentence_t5_architecture_loads_through_the_official_path(tiny_t5_embedder_dir, monkeypatch):
    monkeypatch.setattr(metric, "OFFICIAL_EMBEDDER", str(tiny_t5_embedder_dir))
    embedder = load_embedder("official")
    assert embedder.label == "official (sentence-t5-base)" and embedder.is_official
    assert embedder.dim == 768
    texts = ["Make the text more formal.", "Turn this into a poem about the sea."]
    emb = embedder.encode(texts)
    assert emb.shape == (2, 768)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Our sentencepiece path gives exactly what sentence-transformers gives on ordinary text.
    reference = embedder.model.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(emb, reference, atol=1e-5)


def test_special_token_strings_in_predictions_count_as_plain_text(tiny_t5_embedder_dir):
    embedder = load_embedder(str(tiny_t5_embedder_dir))
    sp = embedder.sentencepiece
    assert sp is not None
    pieces = sp.encode("Make the text more formal.</s>", out_type=str)
    assert "</s>" not in pieces and {"<", "/", ">"} <= set("".join(pieces))
    injected = "Make the text more formal.</s>"
    ids = sp.encode(injected) + [sp.eos_id()]
    assert ids.count(sp.eos_id()) == 1  # only the real end of sequence
    # The Hugging Face tokenizer alone reads it as a second end-of-sequence token, and embeds differently.
    naive_ids = embedder.model.tokenizer(injected, split_special_tokens=False)["input_ids"]
    assert naive_ids.count(embedder.model.tokenizer.eos_token_id) == 2
    naive = embedder.model.encode([injected], normalize_embeddings=True)
    assert not np.allclose(embedder.encode([injected]), naive, atol=1e-3)


def test_official_embedder_unavailable_says_how_to_use_the_proxy(monkeypatch, tmp_path):
    monkeypatch.setattr(metric, "OFFICIAL_EMBEDDER", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="--embedder proxy"):
        load_embedder("official")


def test_bad_embedder_path_is_one_line(tmp_path):
    with pytest.raises(DataError, match="not a SentenceTransformer folder"):
        load_embedder(str(tmp_path))


def test_embedding_cache_round_trip_and_invalidation(tmp_path):
    embedder = metric.Embedder(CountingModel(), "test")
    texts = ["a", "bb", "a"]
    emb = save_embeddings(tmp_path / "prompts.npy", texts, embedder)
    np.testing.assert_array_equal(load_embeddings(tmp_path / "prompts.npy", texts, embedder), emb)
    assert load_embeddings(tmp_path / "prompts.npy", ["a", "bb", "c"], embedder) is None
    assert load_embeddings(tmp_path / "prompts.npy", texts, metric.Embedder(CountingModel(), "other")) is None


@pytest.mark.slow
def test_proxy_embedder_is_labelled_and_scores_identity_as_one():
    embedder = load_embedder("proxy")
    assert embedder.label == "proxy (all-MiniLM-L6-v2)" and not embedder.is_official
    assert embedder.dim == 384
    result = score(["Rewrite as a poem."], ["Rewrite as a poem."], embedder)
    assert result.mean == pytest.approx(1.0, abs=1e-5)
    # "[SEP]" typed in a prediction must not act as the separator token.
    ids = embedder.model.tokenizer("poem [SEP]")["input_ids"]
    assert ids.count(embedder.model.tokenizer.sep_token_id) == 1


def test_encode_remembers_texts_and_evicts_the_oldest_first():
    calls = []

    class Model:
        tokenizer = type("T", (), {})()

        def get_embedding_dimension(self):
            return 2

        def encode(self, texts, **_):
            calls.append(list(texts))
            return np.array([[len(t), 1.0] for t in texts]) / np.linalg.norm([[len(t), 1.0] for t in texts], axis=1,
                                                                             keepdims=True)

    from promptrec.metric import Embedder

    embedder = Embedder(Model(), "toy", memo_size=3)
    first = embedder.encode(["a", "bb", "a"])
    assert calls == [["a", "bb"]] and first.shape == (3, 2)
    np.testing.assert_array_equal(embedder.encode(["bb", "ccc"]), np.stack([first[1], embedder.memo["ccc"]]))
    assert calls[-1] == ["ccc"] and list(embedder.memo) == ["a", "bb", "ccc"]
    embedder.encode(["dddd", "a"])  # "bb" is the oldest text not asked for now: it goes
    assert calls[-1] == ["dddd"] and list(embedder.memo) == ["a", "ccc", "dddd"]
    assert embedder.encode(["e", "ff", "ggg", "hhhh"]).shape == (4, 2) and calls[-1] == ["e", "ff", "ggg", "hhhh"]


def test_distinct_texts_matches_np_unique():
    texts = ["b", "a", "b", "é", "", "a b", "Z", "a"]
    unique, inverse = metric.distinct_texts(texts)
    expected, expected_inverse = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
    assert unique == expected.tolist()
    np.testing.assert_array_equal(inverse, expected_inverse.reshape(-1))


def test_encode_does_not_copy_every_text_at_the_longest_ones_width():
    """Issue 24: `np.unique` on 14k texts with one of 26k characters held 5.5 GB; memory must follow the texts' size."""
    import tracemalloc

    model = CountingModel()
    texts = [f"short text {i}" for i in range(2000)] + ["x" * 20_000]  # as a unicode array: 2001 x 80 kB = 160 MB
    tracemalloc.start()
    embedder = metric.Embedder(model, "test")
    emb = embedder.encode(texts)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert emb.shape == (2001, 2) and model.seen == 2001
    assert peak < 20 * 2**20, f"encode held {peak / 2**20:.0f} MiB for 2001 texts"
