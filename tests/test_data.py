"""Data I/O: reading and validating tables, one-line errors on bad input, atomic submission writes."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from promptrec.data import (
    TRIPLE_COLUMNS, DataError, atomic_write, read_table, read_texts, write_submission, write_table,
)
from promptrec.splits import held_out, key_groups

BAD = Path(__file__).parent / "data" / "bad"

# file -> a fragment the one-line error must contain
ERRORS = {
    "empty.csv": "empty.csv: file is empty",
    "header_only.csv": "header only, no data rows",
    "missing_column.csv": "header: missing column 'rewritten_text' (found: id, original_text)",
    "wrong_delimiter.csv": "the delimiter looks wrong",
    "duplicate_ids.csv": "row 3, column 'id': duplicate id 'a' (first at row 1)",
    "non_utf8.csv": "row 2, column 'rewritten_text': byte 0xff is not valid UTF-8",
    "truncated.csv": "malformed CSV (",
    "binary.csv": "contains NUL bytes; not a text CSV file",
    "empty_id.csv": "row 1, column 'id': empty id",
    "wrong_types.parquet": "column 'original_text': has type int64, expected text",
    "corrupt.parquet": "not a readable Parquet file",
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_bad_input_gives_one_line_naming_the_file(name):
    with pytest.raises(DataError) as info:
        read_table(BAD / name)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(BAD / name))
    assert ERRORS[name] in message


def test_bom_and_extra_columns_are_accepted():
    frame = read_table(BAD / "ok_bom.csv")
    assert frame["id"].tolist() == ["a"] and frame["rewritten_text"].tolist() == ["ONE"]
    frame = read_table(BAD / "ok_extra_columns.csv")
    assert frame["extra"].tolist() == ["x"]


def test_empty_and_null_texts_are_kept_with_a_warning_naming_row_and_column():
    frame = read_table(BAD / "ok_empty_text.csv")
    assert frame["original_text"].tolist() == ["", "two"]
    assert frame["rewritten_text"].tolist() == ["ONE", ""]
    assert frame.attrs["warnings"] == [
        f"{BAD / 'ok_empty_text.csv'}, row 1, column 'original_text': empty text (the row still gets a prediction)",
        f"{BAD / 'ok_empty_text.csv'}, row 2, column 'rewritten_text': empty text (the row still gets a prediction)",
    ]
    frame = read_table(BAD / "ok_null_text.parquet")
    assert frame["original_text"].tolist() == ["x", ""]


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "a.xlsx").write_text("x")
    with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
        read_table(tmp_path / "a.xlsx")


def test_numeric_ids_are_read_as_text(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,original_text,rewritten_text\n007,a,b\n", encoding="utf-8")
    assert read_table(path)["id"].tolist() == ["007"]


def test_parquet_and_jsonl_round_trip(tmp_path):
    frame = pd.DataFrame({"id": ["1", "2"], "original_text": ["a, \"b\"", "é\nx"],
                          "rewrite_prompt": ["p", "q"], "rewritten_text": ["c", ""]})
    for suffix in (".parquet", ".jsonl", ".csv"):
        write_table(tmp_path / f"t{suffix}", frame)
        back = read_table(tmp_path / f"t{suffix}", TRIPLE_COLUMNS)
        assert back[list(TRIPLE_COLUMNS)].to_dict("list") == frame[list(TRIPLE_COLUMNS)].to_dict("list")


def test_read_texts_from_json_txt_and_table(tmp_path):
    (tmp_path / "p.json").write_text('["a", "b"]', encoding="utf-8")
    (tmp_path / "p.txt").write_text("a\n\nb\n", encoding="utf-8")
    (tmp_path / "p.csv").write_text("text\na\nb\n", encoding="utf-8")
    assert read_texts(tmp_path / "p.json", "text") == ["a", "b"]
    assert read_texts(tmp_path / "p.txt", "text") == ["a", "b"]
    assert read_texts(tmp_path / "p.csv", "text") == ["a", "b"]
    (tmp_path / "bad.json").write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON list of strings"):
        read_texts(tmp_path / "bad.json", "text")


def test_submission_format_exactly(tmp_path):
    path = tmp_path / "sub.csv"
    write_submission(path, ["b", "a"], ["Make it a poem", 'Say "hi", then stop'])
    assert path.read_text(encoding="utf-8") == 'id,rewrite_prompt\nb,Make it a poem\na,"Say ""hi"", then stop"\n'


def test_submission_refuses_blank_prompts_and_leaves_no_file(tmp_path):
    path = tmp_path / "sub.csv"
    with pytest.raises(ValueError, match="row 2 \\(id b\\): blank prompt"):
        write_submission(path, ["a", "b"], ["x", "  "])
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_old_file_when_the_block_fails(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), max_size=60)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(texts, texts.filter(lambda s: s.strip() != "")), min_size=1, max_size=8))
def test_any_submission_reads_back_identically(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("sub") / "sub.csv"
    ids = [f"id{i}" for i in range(len(rows))]
    prompts = [p for _, p in rows]
    write_submission(path, ids, prompts)
    with open(path, newline="", encoding="utf-8") as handle:
        back = list(csv.reader(handle))
    assert back[0] == ["id", "rewrite_prompt"]
    assert back[1:] == [[i, p] for i, p in zip(ids, prompts)]


def test_unusable_output_paths_fail_before_any_work(tmp_path, monkeypatch):
    import promptrec.data as data

    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="cannot create folder"):
        data.ensure_writable(tmp_path / "file" / "out.csv")
    with pytest.raises(DataError, match="is a folder"):
        data.ensure_writable(tmp_path)
    monkeypatch.setattr(data, "MIN_FREE_BYTES", 2**62)
    with pytest.raises(DataError, match="disk holding .* is full"):
        data.ensure_writable(tmp_path / "out.csv")


def test_chunked_reading_numbers_rows_across_chunks(tmp_path):
    from promptrec.data import iter_table

    path = tmp_path / "t.csv"
    path.write_text("id,original_text,rewritten_text\na,1,x\nb,,y\nc,3,z\nd,4,w\na,5,v\n", encoding="utf-8")
    warnings: list[str] = []
    chunks = iter_table(path, chunk_rows=2, warnings=warnings)
    assert next(chunks)["id"].tolist() == ["a", "b"]
    assert next(chunks)["id"].tolist() == ["c", "d"]
    with pytest.raises(DataError, match="row 5, column 'id': duplicate id 'a' \\(first at row 1\\)"):
        next(chunks)
    assert warnings == [f"{path}, row 2, column 'original_text': empty text (the row still gets a prediction)"]


def test_held_out_keeps_each_key_on_one_side():
    keys = list("aabbccddee")
    mask = held_out(keys, 0.4, seed=1)
    assert mask.sum() == 4 and {k for k, m in zip(keys, mask) if m}.isdisjoint(k for k, m in zip(keys, mask) if not m)
    assert (held_out(keys, 0.4, seed=1) == mask).all() and not held_out(keys, 0.0, seed=1).any()
    assert held_out(keys, 1.0, seed=1).all()


def test_held_out_groups_keys_that_differ_only_in_surrounding_space():
    keys = ["a", " a", "b\n", "b", "c", "c "]
    assert key_groups(keys) == {"a": [0, 1], "b": [2, 3], "c": [4, 5]}
    for seed in range(4):
        mask = held_out(keys, 1 / 3, seed)
        assert mask.sum() == 2 and mask[0::2].tolist() == mask[1::2].tolist()
