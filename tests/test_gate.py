"""The ensemble's gate: feature layout, ridge fit per member, choice with abstentions, save/load."""

import numpy as np
import pytest

from promptrec.data import DataError
from promptrec.methods.gate import Gate, gate_features, pair_change, words


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_features_layout_and_values():
    answered = np.array([[1, 1], [1, 0], [0, 1]], dtype=bool)  # 3 members, 2 rows
    emb = np.zeros((3, 2, 2), dtype=np.float32)
    emb[0, :, 0] = 1  # member 0 points along x on both rows
    emb[1, 0] = [1, 0]  # member 1 agrees with member 0 on row 0
    emb[2, 1] = [0, 1]  # member 2 is orthogonal to member 0 on row 1
    reference = np.array([[1, 0], [0, 1]], dtype=np.float32)
    feats = gate_features(answered, emb, np.ones((3, 2), np.float32), np.array([0.5, 0.9], np.float32),
                          np.array([2.0, 3.0], np.float32), reference)
    assert feats.shape == (3, 2, 1 + 3 + 4 + 3)
    # bias, change, rewrite words, answered share, answered, words, agreement, reference, flags of members 0..2
    np.testing.assert_allclose(feats[0, 0], [1, 0.5, 2, 2 / 3, 1, 1, 1.0, 1, 1, 1, 0])
    np.testing.assert_allclose(feats[0, 1], [1, 0.9, 3, 2 / 3, 1, 1, 0.0, 0, 1, 0, 1])
    np.testing.assert_allclose(feats[1, 1], [1, 0.9, 3, 2 / 3, 0, 0, 0, 0, 1, 0, 1])  # abstained: own features zero
    np.testing.assert_allclose(feats[2, 1], [1, 0.9, 3, 2 / 3, 1, 1, 0.0, 1, 1, 0, 1])


def test_gate_learns_which_member_to_trust():
    rng = np.random.default_rng(0)
    n = 400
    change = rng.uniform(0, 1, n).astype(np.float32)
    answered = np.ones((2, n), dtype=bool)
    answered[1, : n // 2] = False  # member 1 answers on half the rows (like an evidence method)
    emb = _unit(rng.normal(size=(2, n, 8))).astype(np.float32)
    feats = gate_features(answered, emb, np.ones((2, n), np.float32), change, np.ones(n, np.float32))
    scores = np.stack([0.3 * change, np.full(n, 0.25, np.float32)])  # member 0 good when the text changed much
    gate = Gate.fit(["a", "b"], feats, scores, answered, ridge=1e-3)
    chosen = gate.choose(feats, answered)
    expected = np.where(~answered[1] | (0.3 * change > 0.25), 0, 1)
    assert (chosen == expected).mean() > 0.97
    assert (chosen[: n // 2] == 0).all()  # never picks a member that abstained


def test_all_abstain_gives_minus_one_and_shape_errors():
    gate = Gate(["a", "b"], np.ones((2, 1 + 3 + 4 + 2), np.float32))
    answered = np.array([[0, 1], [0, 0]], dtype=bool)
    feats = gate_features(answered, np.zeros((2, 2, 3), np.float32), np.zeros((2, 2), np.float32),
                          np.zeros(2, np.float32), np.zeros(2, np.float32))
    assert gate.choose(feats, answered).tolist() == [-1, 0]
    with pytest.raises(DataError, match="gate: features of shape"):
        Gate(["a"], gate.weights[:1]).choose(feats, answered)


def test_save_load_round_trip(tmp_path):
    gate = Gate(["x", "y"], np.arange(22, dtype=np.float32).reshape(2, 11))
    gate.save(tmp_path)
    loaded = Gate.load(tmp_path, ["x", "y"])
    np.testing.assert_array_equal(loaded.weights, gate.weights)
    with pytest.raises(DataError, match="for 3 members"):
        Gate.load(tmp_path, ["x", "y", "z"])
    with pytest.raises(DataError, match="no gate.safetensors"):
        Gate.load(tmp_path / "missing", ["x"])


def test_helpers():
    np.testing.assert_allclose(words(["a b c", ""]), np.log1p([3, 0]))
    np.testing.assert_allclose(pair_change(np.array([[1.0, 0], [0, 2]]), np.array([[2.0, 0], [1, 0]])), [1, 0])
