"""Method `constant`: fixed prompt, best-training-prompt selection, save/load round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd

from promptrec.methods.base import load_method
from promptrec.methods.constant import ConstantConfig, ConstantMethod, best_constant


def one_hot(texts):
    """Toy encoder: 'a'-texts and 'b'-texts point in two directions, 'ab' between them."""
    vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "ab": [1.0, 1.0]}
    emb = np.array([vectors[t] for t in texts])
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_best_constant_maximises_the_mean_score():
    # ab scores 0.354 against every row; a scores 1 on 3 rows and 0 on 3 -> 0.5 mean: a wins.
    assert best_constant(["a", "a", "a", "b", "b", "b"], one_hot) == "a"
    assert best_constant(["a", "b", "ab"], one_hot) == "ab"  # (0.354 * 2 + 1) / 3 beats (1 + 0.354) / 3


def test_predict_save_load(tmp_path):
    method = ConstantMethod(ConstantConfig(prompt="Make it rhyme."))
    pairs = pd.DataFrame({"id": ["1", "2"], "original_text": ["x", "y"], "rewritten_text": ["X", "Y"]})
    assert method.predict(pairs) == ["Make it rhyme.", "Make it rhyme."]
    method.save(tmp_path / "m")
    loaded = load_method(tmp_path / "m")
    assert isinstance(loaded, ConstantMethod) and loaded.predict(pairs) == method.predict(pairs)
