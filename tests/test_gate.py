"""The ensemble's gate: feature layout, ridge fit per member, choice with abstentions, save/load."""

import numpy as np
import pytest

from promptrec.data import DataError
from promptrec.methods.gate import FEATURES, Gate, gate_features, pair_change, words


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_features_layout_and_values():
    answered = np.array([[1, 1], [1, 0], [0, 1]], dtype=bool)  # 3 members, 2 rows
    emb = np.zeros((3, 2, 2), dtype=np.float32)
    emb[0, :, 0] = 1  # member 0 points along x on both rows
    emb[1, 0] = [1, 0]  # member 1 agrees with member 0 on row 0
    emb[2, 1] = [0, 1]  # member 2 is orthogonal to member 0 on row 1
    reference = np.array([[1, 0], [0, 1]], dtype=np.float32)
    original = np.array([[0.6, 0.8], [1, 0]], dtype=np.float32)
    feats = gate_features(answered, emb, np.ones((3, 2), np.float32), np.array([0.5, 0.9], np.float32),
                          np.array([2.0, 3.0], np.float32), reference, original)
    assert feats.shape == (3, 2, 1 + 3 + 5 + 3) == (3, 2, len(FEATURES) + 3)
    # bias, change, rewrite words, answered share, answered, words, agreement, reference, original, flags of 0..2
    np.testing.assert_allclose(feats[0, 0], [1, 0.5, 2, 2 / 3, 1, 1, 1.0, 1, 0.6, 1, 1, 0])
    np.testing.assert_allclose(feats[0, 1], [1, 0.9, 3, 2 / 3, 1, 1, 0.0, 0, 1, 1, 0, 1])
    np.testing.assert_allclose(feats[1, 1], [1, 0.9, 3, 2 / 3, 0, 0, 0, 0, 0, 1, 0, 1])  # abstained: own features zero
    np.testing.assert_allclose(feats[2, 1], [1, 0.9, 3, 2 / 3, 1, 1, 0.0, 1, 0, 1, 0, 1])


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
    gate = Gate(["a", "b"], np.ones((2, 1 + 3 + 5 + 2), np.float32))
    answered = np.array([[0, 1], [0, 0]], dtype=bool)
    feats = gate_features(answered, np.zeros((2, 2, 3), np.float32), np.zeros((2, 2), np.float32),
                          np.zeros(2, np.float32), np.zeros(2, np.float32))
    assert gate.choose(feats, answered).tolist() == [-1, 0]
    with pytest.raises(DataError, match="gate: features of shape"):
        Gate(["a"], gate.weights[:1]).choose(feats, answered)


def test_save_load_round_trip(tmp_path):
    gate = Gate(["x", "y"], np.arange(22, dtype=np.float32).reshape(2, 11))  # 9 features and a flag per member
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


def _sources(slopes, rows=200):
    """Rows of sources where `steady` scores 0.1, `wild` 0.08 + slope * (x - 0.5) and `evidence` 0.6 on every other row
    (abstaining on the rest): features (3, n, 2) = [bias, x] for each member, scores (3, n), answered, groups."""
    x = np.tile(np.linspace(0, 1, rows), len(slopes))
    slope = np.repeat(slopes, rows)
    scores = np.stack([np.full_like(x, 0.1), 0.08 + slope * (x - 0.5), np.full_like(x, 0.6)])
    answered = np.ones((3, len(x)), dtype=bool)
    answered[2, 1::2] = False
    scores[2, 1::2] = 0.0  # what the fallback prompt, standing in for evidence there, would score
    features = np.broadcast_to(np.stack([np.ones_like(x), x], axis=-1), (3, len(x), 2)).copy()
    return features, scores, answered, np.repeat(np.arange(len(slopes)), rows)


def test_calibrated_gate_is_no_worse_than_its_best_member_where_evidence_abstains():
    # Two training sources reward `wild` on rows with a large x, a third the opposite; so does the new source. A gate
    # fitted on the pooled rows learns "wild when x is large" and loses to `steady` on the new source; the calibrated
    # gate sees that rule fail on the third training source held out and keeps `steady` where evidence abstains.
    features, scores, answered, groups = _sources([0.4, 0.4, -0.4])
    test_features, test_scores, test_answered, _ = _sources([-0.4])
    naive = Gate.fit(["steady", "wild", "evidence"], features, scores, answered, ridge=1e-3)
    gate = Gate.fit(["steady", "wild", "evidence"], features, scores, answered, ridge=1e-3, groups=groups)
    abstain = ~test_answered[2]
    member_means = test_scores[:, abstain].mean(axis=1)
    mean_of = lambda g: test_scores[g.choose(test_features, test_answered), np.arange(len(abstain))][abstain].mean()
    assert member_means.round(4).tolist() == [0.1, 0.079, 0.0]
    assert round(mean_of(naive), 4) == 0.0469  # wild where x > 0.65, where it scores least
    assert round(mean_of(gate), 6) == round(member_means.max(), 6) == 0.1
    assert gate.kinds.tolist() == [[True, True, False], [True, True, True]]
    assert gate.defaults.tolist() == [0, 0] and gate.margins.tolist() == [np.inf, np.float32(0.12)]
    # where evidence abstains: steady, always; where it answers, its 0.6 beats steady's 0.1 + the 0.12 margin
    assert (gate.choose(test_features, test_answered)[~abstain] == 2).all()


def test_calibrated_gate_round_trips(tmp_path):
    features, scores, answered, groups = _sources([0.4, 0.4, -0.4])
    gate = Gate.fit(["steady", "wild", "evidence"], features, scores, answered, groups=groups)
    gate.save(tmp_path)
    loaded = Gate.load(tmp_path, ["steady", "wild", "evidence"])
    for name in ("weights", "kinds", "defaults", "margins"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(gate, name))
    np.testing.assert_array_equal(loaded.choose(features, answered), gate.choose(features, answered))
    assert loaded.rule(np.array([1, 1, 0])) == (0, np.inf) and loaded.rule(np.array([0, 1, 1])) is None  # unseen kind
