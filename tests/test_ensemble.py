"""Ensemble modes on hand-made candidates with the toy word embedder: exact joins and selections, save/load."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from promptrec.data import DataError
from promptrec.methods.base import (
    METHODS, checkpoint_beside, config_from_dict, from_name, load_method, parse_members, read_config, save_config,
)
from promptrec.methods.ensemble import EnsembleMethod, candidate_subsets, join_prompts
from promptrec.pipeline import fit_ensemble


@dataclass
class ColumnConfig:
    """Options of the in-test column method."""

    column: str = "a"  # the pairs column whose text is predicted


class ColumnMethod:
    """Predicts a given column of the pairs: per-row candidates chosen by the test."""

    name = "column"
    Config = ColumnConfig

    def __init__(self, config: ColumnConfig | None = None):
        self.config = config or ColumnConfig()
        self.fitted = 0

    def fit(self, triples: pd.DataFrame) -> None:
        self.fitted += 1

    def predict(self, pairs: pd.DataFrame) -> list[str]:
        return pairs[self.config.column].tolist()

    def save(self, folder: Path) -> None:
        save_config(Path(folder), self.name, self.config)

    @classmethod
    def load(cls, folder: Path) -> "ColumnMethod":
        return cls(config_from_dict(ColumnConfig, read_config(Path(folder))[1], str(folder)))


class GuideMethod(ColumnMethod):
    """A column method that also predicts a metric embedding (the 'poem' axis), as a regressor would."""

    name = "guide"

    def predict_embeddings(self, pairs: pd.DataFrame) -> np.ndarray:
        return np.tile(np.array([0.0, 0.0, 1.0, 0.0], dtype=np.float32), (len(pairs), 1))  # (n, 4)


@pytest.fixture(autouse=True)
def _register(monkeypatch):
    monkeypatch.setitem(METHODS, "column", f"{__name__}:ColumnMethod")
    monkeypatch.setitem(METHODS, "guide", f"{__name__}:GuideMethod")


PAIRS = pd.DataFrame({
    "id": ["r1", "r2"], "original_text": ["x", "y"], "rewritten_text": ["X", "Y"],
    "a": ["pirate", "poem"], "b": ["pirate", "formal"], "c": ["formal", "formal"], "g": ["short", "short"],
})


def _ensemble(word_embedder, **options) -> EnsembleMethod:
    members = options.pop("members", ["a=column", "b=column", "c=column"])
    configs = {label.split("=")[0]: {"column": label.split("=")[0]} for label in members}
    method = from_name("ensemble", members=members, member_config=configs, **options)
    method.embedder = word_embedder
    return method


def test_concat_joins_members_in_order_without_repeats(word_embedder):
    method = _ensemble(word_embedder, mode="concat")
    assert method.predict(PAIRS) == ["pirate formal", "poem formal"]


def test_concat_appends_suffix_once(word_embedder):
    method = _ensemble(word_embedder, mode="concat", suffix="short", separator=" | ")
    assert method.predict(PAIRS) == ["pirate | formal | short", "poem | formal | short"]


def test_select_picks_candidate_nearest_centroid(word_embedder):
    # row 1: centroid (2, 1, 0, 0) -> "pirate"; row 2: centroid (0, 2, 1, 0) -> "formal"
    method = _ensemble(word_embedder, mode="select")
    assert method.predict(PAIRS) == ["pirate", "formal"]


def test_select_with_subsets_picks_a_join(word_embedder):
    # row 1: "pirate formal" (cos 3/sqrt(10)) beats "pirate" (2/sqrt(5)); row 2: "poem formal" (3/sqrt(10)) beats "formal"
    method = _ensemble(word_embedder, mode="select", max_subset=2)
    assert method.predict(PAIRS) == ["pirate formal", "poem formal"]


def test_select_follows_a_members_predicted_embedding(word_embedder):
    members = ["a=column", "b=column", "c=column", "g=guide"]
    method = _ensemble(word_embedder, mode="select", members=members)
    assert method.predict(PAIRS) == ["pirate", "poem"]  # row 1 has no poem candidate: the first of the tied ones
    centroid = _ensemble(word_embedder, mode="select", members=members, reference="centroid")
    assert centroid.predict(PAIRS) == ["pirate", "formal"]


def test_predicted_embedding_of_wrong_width_is_refused(word_embedder):
    method = _ensemble(word_embedder, mode="select", members=["a=column", "g=guide"])
    word_embedder.dim = 8
    with pytest.raises(DataError, match="shape"):
        method.predict(PAIRS)


def test_candidate_subsets_order():
    assert candidate_subsets(3, 2) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]
    assert candidate_subsets(2, 5) == [(0,), (1,), (0, 1)]
    assert join_prompts(["a", " ", "a", "b"], " ") == "a b"


def test_member_specs_are_checked():
    assert parse_members(["constant", "best=constant"]) == [("constant", "constant"), ("best", "constant")]
    with pytest.raises(DataError, match="appears twice"):
        parse_members(["constant", "constant"])
    with pytest.raises(DataError, match="unknown method 'nope'"):
        parse_members(["nope"])
    with pytest.raises(DataError, match="label '../x'"):
        parse_members(["../x=constant"])
    with pytest.raises(DataError, match=r"^ensemble: options for 'other', which is not among the methods \(constant\)"):
        from_name("ensemble", members=["constant"], member_config={"other": {}})
    with pytest.raises(DataError, match="mode 'vote'"):
        from_name("ensemble", mode="vote")
    with pytest.raises(DataError, match="reference 'median'"):
        config_from_dict(EnsembleMethod.Config, {"reference": "median"}, "t")  # the config checks itself


def test_fit_fits_members_but_not_prefit_ones(word_embedder):
    given = ColumnMethod(ColumnConfig("a"))
    method = EnsembleMethod(config_from_dict(EnsembleMethod.Config, {"members": ["a=column", "b=column"]}, "t"), {"a": given})
    method.fit(PAIRS.assign(rewrite_prompt="p"))
    assert given.fitted == 0 and method.members["b"].fitted == 1
    assert set(method.fit_seconds) == {"b"}


def test_save_load_round_trip(tmp_path, word_embedder):
    method = _ensemble(word_embedder, mode="select", max_subset=2, suffix="short")
    method.save(tmp_path / "ens")
    assert read_config(tmp_path / "ens")[0] == "ensemble"
    assert sorted(p.name for p in (tmp_path / "ens").iterdir()) == ["a", "b", "c", "method.json"]
    assert json.loads((tmp_path / "ens" / "c" / "method.json").read_text())["config"] == {"column": "c"}
    loaded = load_method(tmp_path / "ens")
    loaded.embedder = word_embedder
    assert loaded.predict(PAIRS) == method.predict(PAIRS) == ["pirate formal short", "poem formal short"]


def test_load_refuses_member_folder_outside(tmp_path):
    folder = tmp_path / "ens"
    from_name("ensemble", members=["a=constant"]).save(folder)
    payload = json.loads((folder / "method.json").read_text())
    payload["config"]["members"] = ["../../etc=constant"]
    (folder / "method.json").write_text(json.dumps(payload))
    with pytest.raises(DataError, match="label"):
        load_method(folder)


def test_fit_ensemble_saves_a_recoverable_model(tmp_path):
    data = tmp_path / "train.csv"
    pd.DataFrame({"id": ["1", "2"], "original_text": ["a", "b"], "rewrite_prompt": ["p", "q"],
                  "rewritten_text": ["A", "B"]}).to_csv(data, index=False)
    fit_ensemble([data], tmp_path / "models", ["constant", "shout=constant"],
                 {"shout": {"prompt": "Shout it."}, "ensemble": {"mode": "concat"}})
    loaded = load_method(tmp_path / "models")
    assert loaded.predict(PAIRS) == ["Rewrite this text in a different style. Shout it."] * 2
    with pytest.raises(DataError, match="not among the methods"):
        fit_ensemble([data], tmp_path / "m2", ["constant"], {"other": {"prompt": "x"}})


def test_fit_optimises_a_suffix_on_the_training_prompts(word_embedder):
    method = _ensemble(word_embedder, mode="concat", members=["c=column"], suffix_steps=3)
    method.fit(PAIRS.assign(rewrite_prompt=["pirate", "pirate"]))
    assert method.suffix == "pirate"  # the best training prompt already scores 1.0; pruning keeps it
    assert method.config.suffix == ""  # learned state, not written into the config
    assert method.predict(PAIRS) == ["formal pirate", "formal pirate"]


def test_learned_suffix_is_saved_as_state_and_loaded(tmp_path, word_embedder):
    method = _ensemble(word_embedder, mode="concat", members=["c=column"], suffix="poem", suffix_steps=3)
    method.fit(PAIRS.assign(rewrite_prompt=["pirate", "pirate"]))
    method.save(tmp_path / "ens")
    payload = json.loads((tmp_path / "ens" / "method.json").read_text())
    assert payload["config"]["suffix"] == "poem" and payload["state"] == {"suffix": "pirate", "hedge": None}
    loaded = load_method(tmp_path / "ens")
    assert loaded.suffix == "pirate" and loaded.predict(PAIRS) == ["formal pirate", "formal pirate"]
    loaded.config.suffix_steps = 0
    loaded.fit(PAIRS.assign(rewrite_prompt=["x", "x"]))  # a refit without optimisation falls back to config.suffix
    assert loaded.predict(PAIRS) == ["formal poem", "formal poem"]


def test_member_folder_holding_another_method_is_refused(tmp_path):
    folder = tmp_path / "ens"
    from_name("ensemble", members=["a=constant"]).save(folder)
    from_name("ensemble", members=["constant"]).save(folder / "a")  # an ensemble where a constant belongs
    with pytest.raises(DataError, match=r"a: holds a saved 'ensemble' method, not 'constant'$"):
        load_method(folder)


def test_members_that_checkpoint_are_pointed_beside_the_output(tmp_path):
    ensemble = EnsembleMethod(config_from_dict(EnsembleMethod.Config, {"members": ["constant", "tuned=lora"]}, "t"))
    checkpoint_beside(ensemble, tmp_path / "models")
    assert ensemble.members["tuned"].checkpoint_folder() == tmp_path / "models" / "tuned.partial"
    assert ensemble.members["tuned"].config.checkpoint_dir is None  # resume_in never writes into the config
    assert not hasattr(ensemble.members["constant"].config, "checkpoint_dir")


def _gate_rows(n: int) -> pd.DataFrame:
    """Rows where member `e` is right when it answers (even rows) and abstains otherwise; `a` is right exactly
    where `e` abstains; `c` is never right."""
    truth = ["pirate" if i % 4 < 2 else "poem" for i in range(n)]
    return pd.DataFrame({
        "id": [f"r{i}" for i in range(n)], "original_text": [f"text {i}" for i in range(n)],
        "rewritten_text": [f"rewrite {i}" for i in range(n)], "rewrite_prompt": truth,
        "e": [t if i % 2 == 0 else "" for i, t in enumerate(truth)],
        "a": ["formal" if i % 2 == 0 else t for i, t in enumerate(truth)],
        "c": ["formal"] * n,
    })


def test_gate_learns_from_out_of_fold_predictions_which_member_to_trust(word_embedder, tmp_path):
    rows = _gate_rows(60)
    method = _ensemble(word_embedder, mode="gate", members=["c=column", "a=column", "e=column"], gate_ridge=0.01)
    method.fit(rows)
    assert method.gate is not None and method.gate.members == ["c", "a", "e"]
    test = _gate_rows(8)
    assert method.predict(test) == test["rewrite_prompt"].tolist()  # e where it answered, a elsewhere
    method.save(tmp_path / "ens")
    loaded = load_method(tmp_path / "ens")
    loaded.embedder = word_embedder
    assert loaded.predict(test) == test["rewrite_prompt"].tolist()
    np.testing.assert_array_equal(loaded.gate.weights, method.gate.weights)


def test_gate_inner_folds_follow_sources_and_every_abstention_gives_none(word_embedder):
    rows = _gate_rows(12).assign(source=["x.csv"] * 6 + ["y.csv"] * 6)
    method = _ensemble(word_embedder, mode="gate", members=["e=column"])
    method.fit(rows)  # two sources -> two inner folds, whatever gate_folds says
    assert method.members["e"].fitted == 1 and method.predict(_gate_rows(2)) == ["pirate", None]
    with pytest.raises(DataError, match="gate mode needs a fitted gate"):
        _ensemble(word_embedder, mode="gate", members=["e=column"]).predict(_gate_rows(2))


def test_gate_warns_of_a_member_it_never_saw_answer(word_embedder, caplog):
    rows = _gate_rows(12).assign(e="")  # e abstains on every out-of-fold row: the gate cannot rate it
    caplog.set_level(logging.WARNING, logger="promptrec")
    _ensemble(word_embedder, mode="gate", members=["c=column", "e=column"]).fit(rows)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "gate: member e answered none of the 12 out-of-fold rows; the gate cannot rate it and will never pick it "
        "(train on rows where it answers)"]


def test_default_ensemble_is_the_gated_offline_members_and_options_merge():
    from promptrec.pipeline import DEFAULT_MEMBERS, ensemble_config

    config = ensemble_config()
    assert config.members == DEFAULT_MEMBERS == ["best=constant", "bank", "regressor", "evidence"]
    assert config.mode == "gate" and config.member_config == {"best": {"select": True}, "bank": {"query": "direction"}}
    assert (config.hedge_steps, config.suffix_seconds, config.gate_calibrate) == (100, 0, False)  # step budget alone
    assert config.gate_rows == 400  # per inner fold: no large source outweighs the others
    tuned = ensemble_config(None, {"bank": {"top_k": 2}, "ensemble": {"gate_ridge": 3.0}})
    assert tuned.member_config["bank"] == {"query": "direction", "top_k": 2} and tuned.gate_ridge == 3.0
    assert ensemble_config(["constant"]).mode == "concat" and ensemble_config(["constant"]).member_config == {}
    recipe = {"ensemble": {"members": ["c=constant", "bank"], "mode": "select"}, "c": {"select": True}}
    assert ensemble_config(None, recipe).members == ["c=constant", "bank"]  # a file's members: no default options
    assert ensemble_config(None, recipe).member_config == {"c": {"select": True}}
    assert ensemble_config(["bank"], {"ensemble": recipe["ensemble"]}).members == ["bank"]  # -m wins over the file


def test_hedged_gate_offers_the_mean_prompt_alone_and_appended_and_saves_it(word_embedder, tmp_path):
    rows = _gate_rows(24).assign(rewrite_prompt="poem")  # one training prompt: the mean prompt is itself
    method = _ensemble(word_embedder, mode="gate", members=["c=column", "e=column"], hedge_steps=3)
    method.fit(rows)
    assert method.hedge == "poem"
    assert method.choices() == method.gate.members == ["c", "e", "mean", "c+mean", "e+mean"]
    hedged = method.hedged({"c": ["formal", "formal"], "e": ["pirate", ""]})
    assert hedged["mean"] == ["poem"] * 2 and hedged["c+mean"] == ["formal poem"] * 2
    assert hedged["e+mean"] == ["pirate poem", None]  # an abstention stays one
    test = _gate_rows(6)
    assert method.predict(test) == ["poem"] * 6  # the mean alone scores 1.0 on every out-of-fold row
    features, answered = method.row_features(test, method.candidates(test))  # what `explain` shows, per choice
    assert features.shape[:2] == answered.shape == (5, 6) and answered[[1, 4]].tolist() == [[True, False] * 3] * 2
    from promptrec.explain import _gate_lines, _gate_view

    view = _gate_view(method, test[:1], method.candidates(test[:1]))
    assert (view.choice, view.hedge, list(view.predicted_scores)) == ("mean", "poem", method.choices())
    assert [line.plain for line in _gate_lines(view)][1] == "  hedge (mean): poem"
    method.save(tmp_path / "ens")
    assert json.loads((tmp_path / "ens" / "method.json").read_text())["state"]["hedge"] == "poem"
    loaded = load_method(tmp_path / "ens")
    loaded.embedder = word_embedder
    assert loaded.hedge == "poem" and loaded.predict(test) == ["poem"] * 6
    from promptrec.methods.gate import Gate

    Gate(loaded.choices(), loaded.gate.weights[:, 1:]).save(tmp_path / "ens")  # as saved before the "original" feature
    with pytest.raises(DataError, match="gate.safetensors: a gate over 13 features; this version computes 14 .* refit"):
        load_method(tmp_path / "ens")
    with pytest.raises(DataError, match="hedge_steps must be 0, or more in gate mode"):
        _ensemble(word_embedder, mode="concat", hedge_steps=3)


def test_answer_strips_predictions_and_reads_abstentions():
    from promptrec.methods.base import answer, never_blank

    assert [answer(p) for p in [" a poem ", "", " \n", None, float("nan"), "b"]] == ["a poem", None, None, None, None, "b"]
    assert never_blank([" a ", None, "", float("nan")], "F") == ["a", "F", "F", "F"]
