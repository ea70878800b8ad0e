"""Streaming recover: chunking changes nothing in the output, and a failing method leaves no file."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptrec.data import DataError
from promptrec.methods.constant import ConstantConfig, ConstantMethod
from promptrec.pipeline import recover


class EchoLength:
    """A toy method whose prompt depends on the row, to check order across chunks; blank on empty text."""

    name = "echo"

    def predict(self, pairs):
        return [f"len {len(t)}" if t else "" for t in pairs["rewritten_text"]]


def test_chunked_output_equals_one_chunk_and_blanks_fall_back(tmp_path):
    src = tmp_path / "pairs.csv"
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(25)], "original_text": "o",
                          "rewritten_text": ["x" * (i % 7) for i in range(25)]})
    frame.to_csv(src, index=False)
    assert recover(src, tmp_path / "one.csv", EchoLength(), chunk_rows=100) == 25
    assert recover(src, tmp_path / "many.csv", EchoLength(), chunk_rows=4) == 25
    one, many = (tmp_path / "one.csv").read_text(), (tmp_path / "many.csv").read_text()
    assert one == many
    sub = pd.read_csv(tmp_path / "one.csv", dtype=str)
    assert sub["id"].tolist() == frame["id"].tolist()
    assert sub["rewrite_prompt"][0] == "Rewrite this text in a different style." and sub["rewrite_prompt"][3] == "len 3"


def test_bad_row_late_in_the_file_leaves_no_output(tmp_path):
    src = tmp_path / "pairs.csv"
    src.write_text("id,original_text,rewritten_text\n" + "".join(f"r{i},a,b\n" for i in range(9)) + "r0,a,b\n")
    out = tmp_path / "sub.csv"
    message = f"{src}, row 10, column 'id': duplicate id 'r0' (first at row 1)"
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        recover(src, out, ConstantMethod(ConstantConfig(prompt="p")), chunk_rows=3)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["pairs.csv"]


ids_st = st.lists(st.text(alphabet="abcxyz019_-", min_size=1, max_size=6), min_size=1, max_size=12, unique=True)
texts_st = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)


class Whatever:
    """A toy method returning arbitrary, possibly blank, outputs."""

    name = "whatever"

    def __init__(self, outputs):
        self.outputs = outputs

    def predict(self, pairs):
        return [self.outputs[i % len(self.outputs)] for i in range(len(pairs))]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=ids_st, text=texts_st, outputs=st.lists(st.sampled_from(["", "  ", "p", "a, \"b\"\nc"]), min_size=1, max_size=4),
       chunk=st.integers(1, 5))
def test_recover_never_blank_every_id_once_in_order(tmp_path, ids, text, outputs, chunk):
    src, out = tmp_path / "pairs.jsonl", tmp_path / "sub.csv"
    pd.DataFrame({"id": ids, "original_text": text, "rewritten_text": text}).to_json(src, orient="records", lines=True)
    assert recover(src, out, Whatever(outputs), chunk_rows=chunk) == len(ids)
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert sub["id"].tolist() == ids
    assert (sub["rewrite_prompt"].str.strip() != "").all()


class Remembers:
    """A toy method that predicts the last training prompt on even rows and abstains (None) on odd ones."""

    name = "remembers"

    def fit(self, triples):
        self.prompt = triples["rewrite_prompt"].iloc[-1]

    def predict(self, pairs):
        return [self.prompt if i % 2 == 0 else None for i in range(len(pairs))]


def test_examples_are_fitted_first_and_abstentions_get_the_fallback(tmp_path, caplog):
    for name, prompt in [("a.csv", "first"), ("b.csv", "Say it twice.")]:
        pd.DataFrame({"id": [name], "original_text": "o", "rewrite_prompt": prompt,
                      "rewritten_text": "r"}).to_csv(tmp_path / name, index=False)
    src = tmp_path / "pairs.csv"
    pd.DataFrame({"id": ["x", "y", "z"], "original_text": ["o", "", "o"], "rewritten_text": "r"}).to_csv(src, index=False)
    with caplog.at_level("WARNING", logger="promptrec"):
        assert recover(src, tmp_path / "sub.csv", Remembers(), examples=[tmp_path / "a.csv", tmp_path / "b.csv"]) == 3
    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str)
    assert sub["rewrite_prompt"].tolist() == ["Say it twice.", "Rewrite this text in a different style.", "Say it twice."]
    assert caplog.messages == [f"{src}, row 2, column 'original_text': empty text (the row still gets a prediction)"]
