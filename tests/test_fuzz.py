"""Bounded fuzzing of the table reader and the cleaner: only DataError may escape, never a crash."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptrec.clean import clean_text
from promptrec.data import DataError, read_table

SEEDS = [p.read_bytes() for p in sorted((Path(__file__).parent / "data" / "bad").glob("*.csv"))]
HEADER = b"id,original_text,rewritten_text\n"
EXAMPLES = int(os.environ.get("PROMPTREC_FUZZ_EXAMPLES", "400"))  # `promptrec bench fuzz` raises it

csv_bytes = st.one_of(
    st.binary(max_size=400),
    st.builds(lambda body: HEADER + body, st.binary(max_size=300)),
    st.builds(lambda seed, cut, junk: seed[:cut] + junk + seed[cut:],
              st.sampled_from(SEEDS), st.integers(0, 200), st.binary(max_size=20)),
    st.builds(lambda items: "\n".join(items).encode(), st.lists(st.sampled_from(
        ['1', 'null', '[1]', '{"id": 1, "original_text": "a", "rewritten_text": "b"}', '{"id": [1]}',
         '{"id": "x", "original_text": 5, "rewritten_text": "b"}', '{"id": "x"}', '{']), max_size=4)),
    st.builds(lambda body: HEADER + body.encode("utf-8", "surrogatepass"),
              st.text(alphabet=st.sampled_from(list('ab,"\n\r; \t\u00e9\x00')), max_size=200)),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=csv_bytes, suffix=st.sampled_from([".csv", ".jsonl", ".parquet"]))
def test_reader_only_raises_data_error(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        frame = read_table(path)
    except DataError as err:
        assert "\n" not in str(err) and str(path) in str(err)
    else:
        assert frame["id"].is_unique and len(frame) > 0


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.text(max_size=300))
def test_cleaner_never_crashes_and_strips(text):
    cleaned, fired = clean_text(text)
    assert cleaned == cleaned.strip()
    assert len(cleaned) <= len(text)
    assert len(fired) == len(set(fired))
