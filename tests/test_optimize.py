"""Mean-prompt optimiser: monotone trajectory on toy objectives, seeded reproducibility, pruning, held-out split."""

from __future__ import annotations

import numpy as np
import pytest

from promptrec.data import DataError
from promptrec.optimize import (
    OptimizeConfig, _edits, beam_search, mean_scs_guide, mean_scs_objective, optimize_prompts, prune, split_holdout,
    vocabulary, words_of,
)

TARGET = ["make", "it", "a", "short", "poem"]


def _overlap(texts: list[str]) -> np.ndarray:
    """Toy objective: words of TARGET present, minus a small length penalty."""
    return np.array([len(set(words_of(t)) & set(TARGET)) - 0.01 * len(words_of(t)) for t in texts])


VOCAB = TARGET + ["dog", "blue", "run", "seven", "the"]


def test_trajectory_never_decreases_and_improves():
    result = beam_search("the dog", VOCAB, _overlap, OptimizeConfig(steps=25, beam=3, edits=20, seed=1))
    scores = [step.score for step in result.trajectory]
    assert all(b >= a for a, b in zip(scores, scores[1:]))
    assert [step.step for step in result.trajectory] == list(range(len(scores)))
    assert scores[0] == pytest.approx(-0.02) and result.score > 3.0
    assert result.score == pytest.approx(_overlap([result.text])[0])
    assert result.trajectory[-1].text == result.text


def test_seed_makes_runs_reproducible():
    config = OptimizeConfig(steps=10, beam=2, edits=8, seed=7)
    first = beam_search("blue", VOCAB, _overlap, config)
    second = beam_search("blue", VOCAB, _overlap, config)
    assert [(s.score, s.text) for s in first.trajectory] == [(s.score, s.text) for s in second.trajectory]
    other = beam_search("blue", VOCAB, _overlap, OptimizeConfig(steps=10, beam=2, edits=8, seed=8))
    assert [s.text for s in other.trajectory] != [s.text for s in first.trajectory]


def test_time_budget_stops_the_search():
    result = beam_search("blue", VOCAB, _overlap, OptimizeConfig(steps=10_000, seconds=0.0))
    assert [s.step for s in result.trajectory] == [0, 1]  # the start, then pruning only


def test_prune_deletes_words_that_do_not_help():
    text, value = prune("dog make blue poem", _overlap(["dog make blue poem"])[0], lambda t: _overlap(t).tolist())
    assert text == "make poem" and value == pytest.approx(1.98)


def test_empty_vocabulary_is_an_error():
    with pytest.raises(DataError, match="empty vocabulary"):
        beam_search("x", [], _overlap, OptimizeConfig())


def test_config_rejects_an_empty_beam_and_negative_budgets():
    with pytest.raises(DataError, match="beam must be at least 1, got 0"):
        OptimizeConfig(beam=0)
    with pytest.raises(DataError, match="must not be negative, got 30 and -1.0"):
        OptimizeConfig(seconds=-1.0)
    with pytest.raises(DataError, match="guided must be a share in"):
        OptimizeConfig(guided=1.5)


def test_vocabulary_by_frequency():
    assert vocabulary(["Rewrite it.", "Rewrite as a poem", "a poem"], 3) == ["Rewrite", "a", "poem"]


def test_holdout_split_is_by_distinct_text_and_seeded():
    prompts = [f"p{i}" for i in range(10)] * 2
    train, held = split_holdout(prompts, 0.2, seed=3)
    assert len(set(held)) == 2 and len(held) == 4 and not set(train) & set(held)
    assert split_holdout(prompts, 0.2, seed=3) == (train, held)
    with pytest.raises(DataError, match="holdout"):
        split_holdout(prompts, 1.0, seed=0)


def test_mean_scs_objective_matches_hand_values(word_embedder):
    objective = mean_scs_objective(["pirate", "pirate", "formal"], word_embedder.encode)
    # "pirate formal" has cos 1/sqrt(2) to both: (1/sqrt 2)**3; "pirate": 2/3 of rows at cos 1
    assert objective(["pirate", "pirate formal"]) == pytest.approx([2 / 3, 2 ** -1.5])


def test_optimize_prompts_raises_the_training_score(word_embedder):
    prompts = ["pirate poem", "pirate short", "formal poem", "pirate", "poem short"] * 3
    report = optimize_prompts(prompts, word_embedder, start="formal",
                              config=OptimizeConfig(steps=15, beam=2, edits=10, seed=0), holdout=0.2)
    assert report.label == "fixture (4 words)"
    assert report.train_rows + report.holdout_rows == 15 and report.holdout_rows == 3
    assert report.result.score > report.train_start
    assert report.holdout_start is not None and report.holdout_final is not None


def test_guide_rates_the_word_a_text_lacks_best(word_embedder):
    vocab = ["pirate", "formal", "poem", "short", "dog"]
    rating = mean_scs_guide(["pirate poem"] * 3, word_embedder.encode, vocab)("pirate")
    # the gradient at "pirate" toward "pirate poem" is the poem axis alone: poem > dog (a bit of every axis) > 0
    assert rating.argmax() == vocab.index("poem") and rating[vocab.index("dog")] > 0
    assert rating[[0, 1, 3]] == pytest.approx([0, 0, 0], abs=1e-6)


def test_guided_edits_draw_their_share_of_words_from_the_favoured():
    import random

    texts = _edits(["a"], ["q"], 50, 3, random.Random(0), favoured=["Z"], share=1.0)
    assert all("Z" in words_of(t) and "q" not in words_of(t) for t in texts)
    mixed = _edits(["a"], ["q"], 200, 3, random.Random(0), favoured=["Z"], share=0.5)
    assert 70 < sum("Z" in words_of(t) for t in mixed) < 130
    assert _edits(["a"], ["q"], 5, 3, random.Random(1)) == _edits(["a"], ["q"], 5, 3, random.Random(1), ["Z"], 0.0)


def test_a_guide_finds_the_targets_in_a_large_vocabulary():
    vocab = [f"junk{i}" for i in range(400)] + TARGET

    def guide(text: str) -> np.ndarray:  # rates the target words the text lacks
        return np.array([float(word in TARGET and word not in words_of(text)) for word in vocab])

    found = {share: beam_search("the", vocab, _overlap, OptimizeConfig(steps=8, beam=2, edits=6, guided=share,
                                                                       guide_top=5), guide=guide).score
             for share in (0.0, 1.0)}
    assert found[1.0] == pytest.approx(5 - 0.05)  # every target word, nothing else
    assert found[0.0] < 2  # 96 uniform draws from 405 words rarely hit one of the 5 that count
