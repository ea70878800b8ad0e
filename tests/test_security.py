"""Security: the package never unpickles, never runs remote code by default, never hands text to a shell."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from promptrec.data import DataError
from promptrec.methods.base import safe_child

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "promptrec"
FORBIDDEN = {
    "pickle": re.compile(r"^\s*(import pickle|from pickle|import cPickle)|pickle\.loads?\(", re.M),
    "torch.load": re.compile(r"torch\.load\("),
    "allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "trust_remote_code=True": re.compile(r"trust_remote_code\s*=\s*True"),
    "shell": re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\("),
    "eval/exec": re.compile(r"(?<![\w.])(eval|exec)\("),
}


@pytest.mark.parametrize("rule", sorted(FORBIDDEN))
def test_package_source_has_no(rule):
    hits = [f"{path.relative_to(PACKAGE)}:{text[: m.start()].count(chr(10)) + 1}"
            for path in sorted(PACKAGE.rglob("*.py"))
            for text in [path.read_text(encoding="utf-8")]
            for m in FORBIDDEN[rule].finditer(text)]
    assert hits == []


def test_config_paths_cannot_escape_the_model_folder(tmp_path):
    assert safe_child(tmp_path, "member/weights.safetensors") == (tmp_path / "member" / "weights.safetensors").resolve()
    for name in ("../outside", "/etc/passwd", "a/../../b"):
        with pytest.raises(DataError, match="points outside the folder"):
            safe_child(tmp_path, name)
