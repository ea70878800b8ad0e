"""Can the installed llama.cpp run on this CPU? Asked once per installed build, in a child process.

A native build can trap (SIGILL) on a CPU that advertises an instruction family the OS does not grant, as AMX on
some VMs: loaded in our own process that kills the caller, pytest included. So before the first llama.cpp model
load, a child loads the packaged SmolLM2 GGUF and decodes a few tokens; its verdict is kept in
`models.cache_dir()/probe/` under a key of the installed shared libraries, and in memory for the process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from promptrec.data import DataError, atomic_write
from promptrec.models import cache_dir, smollm2_gguf

log = logging.getLogger(__name__)

FIX = "rebuild it for this CPU with: make setup (build settings: src/promptrec/llm/native.py)"
TIMEOUT_S = 300
# Load a GGUF and decode four tokens greedily, with one thread and a small context: what every caller does first.
_CHILD = """
import sys
import llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=128, n_threads=1, n_batch=32, verbose=False)
out = llm("The rewrite prompt was:", max_tokens=4, temperature=0.0)
print("decoded", out["usage"]["completion_tokens"], "tokens")
"""


@dataclass(frozen=True)
class ProbeResult:
    """The verdict on one installed llama.cpp build: `ok`, else `reason` says what the child did."""

    ok: bool
    reason: str = ""


_verdicts: dict[str, ProbeResult] = {}  # build id -> verdict, for this process
_warned = False


def build_id() -> str | None:
    """A key of the installed llama_cpp shared libraries (names, sizes, mtimes); None when it is not installed."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    libs = sorted(Path(next(iter(spec.submodule_search_locations)), "lib").glob("*"))
    stats = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in libs if p.is_file()]
    return hashlib.sha256("\n".join([sys.executable, *stats]).encode()).hexdigest()[:16]


def child_command(gguf: Path) -> list[str]:
    """The probe child: a fresh interpreter that loads `gguf` with llama.cpp and decodes a few tokens."""
    return [sys.executable, "-c", _CHILD, str(gguf)]


def run_child(command: list[str]) -> ProbeResult:
    """Run the probe child and read its fate: exit 0 is ok; a signal or an error is the reason, in one line."""
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"loading a GGUF did not finish in {TIMEOUT_S} s")
    if run.returncode == 0:
        return ProbeResult(True)
    if run.returncode < 0:
        sig = signal.Signals(-run.returncode)
        what = " (illegal instruction: the build uses an instruction this CPU or OS does not allow)" \
            if sig == signal.SIGILL else ""
        return ProbeResult(False, f"loading a GGUF killed the process with {sig.name}{what}")
    last = next((line for line in reversed(run.stderr.splitlines()) if line.strip()), "no message")
    return ProbeResult(False, f"loading a GGUF failed with exit code {run.returncode}: {last.strip()}")


def llamacpp_status(refresh: bool = False) -> ProbeResult:
    """Whether llama.cpp as installed loads and decodes the packaged GGUF here (cached per build and process)."""
    key = build_id()
    if key is None:
        return ProbeResult(False, "llama-cpp-python is not installed; install it with: make setup")
    if key in _verdicts and not refresh:
        return _verdicts[key]
    path = cache_dir() / "probe" / f"llamacpp-{key}.json"
    if path.is_file() and not refresh:
        verdict = ProbeResult(**json.loads(path.read_text()))
    else:
        try:
            gguf = smollm2_gguf()
        except DataError as error:  # nothing packaged to probe with: say so, the caller decides
            return ProbeResult(False, f"cannot probe llama.cpp: {error}")
        verdict = run_child(child_command(gguf))
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as handle:
            handle.write(json.dumps(asdict(verdict)) + "\n")
    _verdicts[key] = verdict
    return verdict


def require_llamacpp() -> None:
    """Stop in one line when the installed llama.cpp cannot run here (the caller asked for llama.cpp itself)."""
    verdict = llamacpp_status()
    if not verdict.ok:
        raise DataError(f"llama.cpp cannot run on this machine: {verdict.reason}; {FIX}")


def llamacpp_or_fallback() -> str:
    """'llamacpp' when the probe passes, else 'hf' after one warning line naming the cause and the fix."""
    global _warned
    verdict = llamacpp_status()
    if verdict.ok:
        return "llamacpp"
    if not _warned:
        log.warning("llama.cpp cannot run on this machine: %s; using the transformers backend instead (slower); %s",
                    verdict.reason, FIX)
        _warned = True
    return "hf"
