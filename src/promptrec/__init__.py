"""promptrec: recover the rewrite prompt an LLM was given, from the original and rewritten texts."""

from promptrec.data import DataError, read_table, write_submission
from promptrec.methods.base import Method, from_name, load_method
from promptrec.metric import load_embedder, score, sharpened_cosine
from promptrec.pipeline import fit_ensemble, recover, train

__all__ = [
    "DataError",
    "Method",
    "fit_ensemble",
    "from_name",
    "load_embedder",
    "load_method",
    "read_table",
    "recover",
    "score",
    "sharpened_cosine",
    "train",
    "write_submission",
]
