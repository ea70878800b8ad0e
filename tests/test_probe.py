"""The llama.cpp probe: a child that traps means a fallback with one warning, or one line where llama.cpp was asked."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from promptrec.data import DataError
from promptrec.llm import probe
from promptrec.llm.base import default_backend, load_generator

SIGILL_CHILD = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
OK_CHILD = [sys.executable, "-c", "print('decoded')"]
FAILING_CHILD = [sys.executable, "-c", "import sys; sys.exit('OSError: libggml-cpu.so: cannot open')"]


@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    """A fresh probe state in a temp cache; `use(command)` sets the child to run and counts its runs."""
    monkeypatch.setenv("PROMPTREC_CACHE", str(tmp_path))
    monkeypatch.setattr(probe, "_verdicts", {})
    monkeypatch.setattr(probe, "_warned", False)
    monkeypatch.setattr(probe, "build_id", lambda: "b1")
    runs = []

    def use(command):
        monkeypatch.setattr(probe, "child_command", lambda gguf: runs.append(gguf) or command)
        return runs

    return use


def test_a_child_killed_by_sigill_is_read_as_such():
    verdict = probe.run_child(SIGILL_CHILD)
    assert not verdict.ok
    assert verdict.reason == ("loading a GGUF killed the process with SIGILL (illegal instruction: the build uses "
                              "an instruction this CPU or OS does not allow)")


def test_a_child_that_errors_names_its_last_line():
    verdict = probe.run_child(FAILING_CHILD)
    assert verdict == probe.ProbeResult(False, "loading a GGUF failed with exit code 1: "
                                               "OSError: libggml-cpu.so: cannot open")


def test_trapping_build_falls_back_to_transformers_with_one_warning(fake_build, caplog):
    runs = fake_build(SIGILL_CHILD)
    with caplog.at_level(logging.WARNING, logger="promptrec.llm.probe"):
        assert [default_backend("smollm2"), default_backend("x.gguf"), default_backend("org/model")] == \
            ["hf", "hf", "hf"]
    assert len(runs) == 1  # probed once per process
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message and "SIGILL" in message and "make setup" in message
    assert "using the transformers backend instead" in message


def test_passing_build_keeps_llamacpp_and_caches_the_verdict_on_disk(fake_build, tmp_path):
    runs = fake_build(OK_CHILD)
    assert default_backend("gemma3-270m") == "llamacpp"
    assert json.loads((tmp_path / "probe" / "llamacpp-b1.json").read_text()) == {"ok": True, "reason": ""}
    probe._verdicts.clear()  # a new process: the file answers, no child runs
    assert probe.llamacpp_status().ok and len(runs) == 1
    assert probe.llamacpp_status(refresh=True).ok and len(runs) == 2


def test_forced_llamacpp_on_a_trapping_build_is_one_line(fake_build):
    fake_build(SIGILL_CHILD)
    with pytest.raises(DataError) as error:
        load_generator("smollm2", backend="llamacpp", n_threads=1)
    message = str(error.value)
    assert message.startswith("llama.cpp cannot run on this machine: loading a GGUF killed the process with SIGILL")
    assert message.endswith("rebuild it for this CPU with: make setup (build settings: src/promptrec/llm/native.py)")
    assert "\n" not in message


def test_a_new_build_is_probed_again(fake_build, monkeypatch):
    runs = fake_build(OK_CHILD)
    assert probe.llamacpp_status().ok
    monkeypatch.setattr(probe, "build_id", lambda: "b2")
    assert probe.llamacpp_status().ok and len(runs) == 2


def test_build_id_follows_the_installed_libraries():
    key = probe.build_id()
    assert key is None or (len(key) == 16 and key == probe.build_id())


@pytest.mark.slow
def test_the_installed_build_passes_the_real_probe(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTREC_CACHE", str(tmp_path))
    monkeypatch.setattr(probe, "_verdicts", {})
    verdict = probe.llamacpp_status()
    assert verdict == probe.ProbeResult(True), verdict.reason
    (cached,) = (tmp_path / "probe").glob("llamacpp-*.json")
    assert json.loads(cached.read_text()) == {"ok": True, "reason": ""}
