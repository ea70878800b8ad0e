"""Method rerank: the batched, prefix-cached log-probabilities against a plain forward pass, the score arithmetic
(normalised by the no-prompt baseline), and the ordering on a tiny LM trained so that the true prompt is planted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from promptrec.data import DataError
from promptrec.methods.base import from_name, load_method
from promptrec.methods.rerank import Ranking, RerankMethod, target_logprobs

PROMPTS = ["Rewrite this text as a pirate would say it.", "Make the text more formal.",
           "Turn this into a poem about the sea.", "Summarize the text in one sentence."]
# What a rewriter answers to each prompt, whatever the text: the planted association the tiny LM learns.
ANSWERS = ["Arr, the meeting be Thursday.", "Kindly lock the door.", "The sea, the sea, the projector broke.",
           "We met briefly."]
ORIGINALS = ["The meeting was moved to Thursday.", "Please lock the door.", "The projector broke.",
             "We met, talked and left early."]


def _triples() -> pd.DataFrame:
    rows = [(f"t{i}{j}", original, prompt, answer) for i, original in enumerate(ORIGINALS)
            for j, (prompt, answer) in enumerate(zip(PROMPTS, ANSWERS))]
    return pd.DataFrame(rows, columns=["id", "original_text", "rewrite_prompt", "rewritten_text"])


def _plain_logprob(model, ids: list[int], target: int) -> float:
    """Mean log p of the last `target` tokens of `ids` from one unbatched, uncached forward pass."""
    import torch

    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].log_softmax(dim=-1)  # (len, vocab)
    return float(np.mean([logp[len(ids) - target - 1 + j, ids[len(ids) - target + j]].item() for j in range(target)]))


@pytest.fixture
def tiny_lm(tiny_llama_dir, one_thread):
    """(model, tokenizer) of the tiny random Llama of conftest."""
    from promptrec.llm.hf import load_causal_lm, load_tokenizer

    return load_causal_lm(str(tiny_llama_dir)), load_tokenizer(str(tiny_llama_dir))


def _method(tiny_llama_dir, toy_embedder=None, **options) -> RerankMethod:
    """A rerank method with the LM in `tiny_llama_dir` (and `toy_embedder`, if given), fitted on `_triples()`."""
    method = from_name("rerank", model=str(tiny_llama_dir), bf16=False, **options)
    if toy_embedder is not None:
        method.embedder = toy_embedder
    method.fit(_triples())
    return method


def test_batched_cached_logprobs_equal_a_plain_forward_pass(tiny_lm):
    model, _ = tiny_lm
    rng = np.random.default_rng(0)
    # a shared head, rests of different lengths (left padding inside a batch), three batches of at most two rows
    inputs = [[1, 5, 6, 7, *rng.integers(3, 200, size=n).tolist(), 9, 10, 11] for n in (1, 6, 2, 4, 3)]
    found = target_logprobs(model, inputs, target=3, batch_size=2)
    expected = [_plain_logprob(model, ids, 3) for ids in inputs]
    assert found == pytest.approx(expected, abs=1e-5)
    # inputs that share no head, and a target that starts right after the shared part, are scored the same way
    assert target_logprobs(model, [[4, 9, 10], [5, 9, 10]], target=2) == pytest.approx(
        [_plain_logprob(model, [4, 9, 10], 2), _plain_logprob(model, [5, 9, 10], 2)], abs=1e-5)


def test_score_is_the_candidates_mean_logprob_minus_the_no_prompt_baseline(tiny_llama_dir, word_embedder, one_thread):
    method = _method(tiny_llama_dir, word_embedder, k=2)
    pairs = _triples().drop(columns="rewrite_prompt").iloc[[0, 5]].reset_index(drop=True)
    ranking = method.rank(pairs)
    model, tokenizer = method.model, method.tokenizer
    for row, (original, rewritten) in enumerate(zip(pairs["original_text"], pairs["rewritten_text"])):
        target = tokenizer(rewritten, add_special_tokens=False)["input_ids"]
        baseline = _plain_logprob(model, method.request_ids(original, "") + target, len(target))
        assert ranking.baseline[row] == pytest.approx(baseline, abs=1e-5)
        assert len(ranking.prompts[row]) == 2  # k nearest bank prompts
        for prompt, score in zip(ranking.prompts[row], ranking.scores[row]):
            with_prompt = _plain_logprob(model, method.request_ids(original, prompt) + target, len(target))
            assert score == pytest.approx(with_prompt - baseline, abs=1e-5)


def test_a_uniform_lm_scores_every_candidate_zero_against_a_baseline_of_minus_log_vocab(tiny_llama_dir, word_embedder,
                                                                                       one_thread):
    import torch

    method = _method(tiny_llama_dir, word_embedder, k=4)
    method.load_model()
    torch.nn.init.zeros_(method.model.lm_head.weight)  # every next token equally likely
    pairs = _triples().iloc[:3]
    ranking = method.rank(pairs)
    vocab = method.model.config.vocab_size
    assert ranking.baseline == pytest.approx([-np.log(vocab)] * 3, abs=1e-5)
    assert ranking.scores == pytest.approx(np.zeros((3, 4)), abs=1e-6)
    _, cosines = method.bank.nearest(method.bank_queries(pairs), 4)
    assert ranking.cosines == pytest.approx(cosines, abs=1e-6) and ranking.cosine_weight == 1.0  # the default
    assert ranking.best() == [ranking.prompts[row][0] for row in range(3)]  # equal scores: the nearest bank prompt


def test_extra_candidates_are_scored_once_and_short_rows_pad_with_minus_inf(tiny_llama_dir, word_embedder, one_thread):
    method = _method(tiny_llama_dir, word_embedder, k=1, query="rewritten")
    pairs = _triples().iloc[:2]
    nearest = method.rank(pairs).prompts
    extra = {"a": ["Say it like a pirate.", nearest[1][0]], "b": [None, "  "]}  # a repeat, an abstention, a blank
    ranking = method.rank(pairs, extra)
    assert ranking.prompts == [[nearest[0][0], "Say it like a pirate."], nearest[1]]
    assert ranking.scores.shape == (2, 2) and np.isfinite(ranking.scores[0]).all() and ranking.scores[1, 1] == -np.inf
    assert ranking.best()[1] == nearest[1][0]
    # a prompt outside the bank is embedded for its cosine: the pirate axis vs a rewrite of no known word, (1,1,1,1)/2
    assert ranking.cosines[0, 1] == pytest.approx(0.5) and ranking.cosines[1, 1] == 0.0


def test_ranking_picks_the_highest_score_plus_weighted_cosine_per_row():
    scores = np.array([[0.1, 0.3, -1.0], [-0.2, -0.5, -np.inf]])  # the second row has two candidates
    cosines = np.array([[0.9, 0.5, 0.1], [0.2, 0.6, 0.0]])
    ranking = Ranking([["a", "b", "c"], ["d", "e"]], scores, cosines, np.zeros(2))
    assert ranking.best() == ["b", "d"]  # weight 0: the score alone
    ranking.cosine_weight = 1.0  # a: 0.1 + 0.9 = 1.0 beats b: 0.8; e: 0.1 beats d: 0.0
    assert ranking.keys()[0] == pytest.approx([1.0, 0.8, -0.9]) and ranking.best() == ["a", "e"]


@pytest.fixture(scope="module")
def planted_lm_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama trained on the rerank requests of `_triples()`: each prompt's answer becomes likely after it."""
    import torch

    from promptrec.llm.hf import load_causal_lm, load_tokenizer

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    method = from_name("rerank", model=str(tiny_llama_dir))
    method.tokenizer, model = load_tokenizer(str(tiny_llama_dir)), load_causal_lm(str(tiny_llama_dir))
    rows = []
    triples = _triples()
    for original, prompt, answer in zip(triples["original_text"], triples["rewrite_prompt"], triples["rewritten_text"]):
        context = method.request_ids(original, prompt)
        target = method.tokenizer(answer, add_special_tokens=False)["input_ids"]
        rows.append((context + target, [-100] * len(context) + target))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [0] * (width - len(ids)) for ids, _ in rows])  # (16, width), right padded
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    torch.manual_seed(0)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        model(input_ids=input_ids, labels=labels).loss.backward()
        optimizer.step()
    out = tmp_path_factory.mktemp("planted")
    model.save_pretrained(out)
    method.tokenizer.save_pretrained(out)
    torch.set_num_threads(before)
    return out


def test_the_planted_prompt_ranks_first_and_survives_save_and_load(planted_lm_dir, tiny_t5_embedder_dir, tmp_path,
                                                                  one_thread):
    method = _method(planted_lm_dir, k=4, cosine_weight=0.0, embedder=str(tiny_t5_embedder_dir), written=False)
    pairs = _triples().drop(columns="rewrite_prompt")
    ranking = method.rank(pairs)
    assert all(sorted(row) == sorted(PROMPTS) for row in ranking.prompts)  # every row scores all four prompts
    assert ranking.best() == _triples()["rewrite_prompt"].tolist()
    # the true prompt makes its answer more likely than no prompt does, and more likely than any other prompt does
    truth = np.array([[p == true for p in row] for row, true in zip(ranking.prompts, _triples()["rewrite_prompt"])])
    assert (ranking.scores[truth] > 0).all()
    assert (ranking.scores[truth] > np.where(truth, -np.inf, ranking.scores).max(axis=1)).all()
    method.save(tmp_path / "rerank")
    loaded = load_method(tmp_path / "rerank")
    assert loaded.bank.prompts == method.bank.prompts and loaded.predict(pairs) == ranking.best()


def test_bad_options_and_an_unfitted_method_are_one_line_errors():
    for options, message in (({"k": 0}, "k must be at least 1"), ({"text_tokens": -1}, "text_tokens must be 0 or more"),
                             ({"cosine_weight": -0.5}, "cosine_weight must be 0 or more"),
                             ({"query": "x"}, "query must be one of"), ({"view": "x"}, "view must be one of")):
        with pytest.raises(DataError, match=message):
            from_name("rerank", **options)
    with pytest.raises(DataError, match="fit on triples first"):
        from_name("rerank").predict(_triples())
