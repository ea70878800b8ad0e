"""Method `constant`: fixed prompt, best-training-prompt selection, save/load round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from promptrec.data import DataError
from promptrec.methods.base import FALLBACK_PROMPT, from_name, load_method
from promptrec.methods.constant import ConstantConfig, ConstantMethod, best_constant

PAIRS = pd.DataFrame({"id": ["1", "2"], "original_text": ["x", "y"], "rewritten_text": ["X", "Y"]})


def one_hot(texts):
    """Toy encoder: 'a'-texts and 'b'-texts point in two directions, 'ab' between them."""
    vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "ab": [1.0, 1.0]}
    emb = np.array([vectors[t] for t in texts])
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_best_constant_maximises_the_mean_score():
    # ab scores 0.354 against every row; a scores 1 on 3 rows and 0 on 3 -> 0.5 mean: a wins.
    assert best_constant(["a", "a", "a", "b", "b", "b"], one_hot) == "a"
    assert best_constant(["a", "b", "ab"], one_hot) == "ab"  # (0.354 * 2 + 1) / 3 beats (1 + 0.354) / 3
    assert best_constant([" ", " b ", "b", "a"], one_hot) == "b"  # blanks ignored, text stripped
    with pytest.raises(DataError, match="no non-blank training prompt"):
        best_constant(["", "  "], one_hot)


def test_predict_save_load(tmp_path):
    method = ConstantMethod(ConstantConfig(prompt="Make it rhyme."))
    pairs = PAIRS
    assert method.predict(pairs) == ["Make it rhyme.", "Make it rhyme."]
    method.save(tmp_path / "m")
    loaded = load_method(tmp_path / "m")
    assert isinstance(loaded, ConstantMethod) and loaded.predict(pairs) == method.predict(pairs)


def test_selected_prompt_is_learned_state_not_config(tmp_path, monkeypatch, word_embedder):
    monkeypatch.setattr("promptrec.metric.load_embedder", lambda spec: word_embedder)
    method = ConstantMethod(ConstantConfig(select=True))
    method.fit(pd.DataFrame({"rewrite_prompt": ["pirate", "formal", "pirate", "poem"]}))
    assert method.predict(PAIRS) == ["pirate", "pirate"] and method.config.prompt == FALLBACK_PROMPT
    method.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "method.json").read_text()) == {
        "method": "constant", "config": {"prompt": FALLBACK_PROMPT, "select": True, "embedder": "proxy"},
        "state": {"selected": "pirate"}}
    loaded = load_method(tmp_path / "m")
    assert loaded.predict(PAIRS) == ["pirate", "pirate"]
    loaded.config.select = False
    loaded.fit(pd.DataFrame({"rewrite_prompt": ["poem"]}))  # a refit without select forgets the old choice
    assert loaded.predict(PAIRS) == [FALLBACK_PROMPT, FALLBACK_PROMPT]


@pytest.mark.parametrize("options,message", [
    ({"prompt": "  "}, "prompt must be a non-blank text, got '  '"),
    ({"prompt": 42}, "prompt must be a non-blank text, got 42"),
    ({"select": "maybe"}, "select must be true or false, got 'maybe'"),
])
def test_config_is_validated_in_one_line(options, message):
    with pytest.raises(DataError, match=message):
        from_name("constant", **options)
