"""The one place that says how llama-cpp-python is built: native tuning with AMX switched off, a small build,
and a wheel folder keyed by those settings and the CPU features they use.

Standard library only: `make setup` runs this file as a script before promptrec's dependencies are installed
(`python src/promptrec/llm/native.py build` prints the wheel's path, building it if that folder lacks it).

Why these flags: pip's default build of llama.cpp uses `-march=native`, which on a CPU that advertises AMX turns
on ggml's AMX kernels; on machines whose hypervisor or kernel does not grant the AMX tile state they trap
(SIGILL on `tilezero`). `-mno-amx-*` keeps every other native extension (AVX-512, VNNI, BF16) and drops AMX,
which the GGUFs promptrec runs (Q4 on a 135M/270M model) do not need. pip's own wheel cache keys a wheel by name
and version only, so a machine that once built the trapping wheel would silently reinstall it: the build here
bypasses that cache and keeps its wheel under a key of version, flags, compiler and CPU features.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

VERSION = "0.3.36"  # llama-cpp-python, as pinned in constraints.txt
NO_AMX = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16")
# Only the shared libraries llama_cpp loads: no multimodal (mtmd) library, tests, examples, tools or server.
SMALL_BUILD = (
    "-DLLAVA_BUILD=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_SERVER=OFF",
)
BUILD_INFO = "build.json"  # beside the wheel: version, CMake arguments, the CPU features the build needs

# Compiler macro -> /proc/cpuinfo flag, for the x86 instruction families a native build may emit.
_ISA_FLAGS = {
    "__SSE4_2__": "sse4_2", "__F16C__": "f16c", "__FMA__": "fma", "__BMI2__": "bmi2", "__AVX__": "avx",
    "__AVX2__": "avx2", "__AVXVNNI__": "avx_vnni", "__AVX512F__": "avx512f", "__AVX512CD__": "avx512cd",
    "__AVX512VL__": "avx512vl", "__AVX512DQ__": "avx512dq", "__AVX512BW__": "avx512bw",
    "__AVX512VBMI__": "avx512vbmi", "__AVX512VBMI2__": "avx512_vbmi2", "__AVX512VNNI__": "avx512_vnni",
    "__AVX512BF16__": "avx512_bf16", "__AVX512FP16__": "avx512_fp16", "__AVX512IFMA__": "avx512ifma",
    "__AVX512BITALG__": "avx512_bitalg", "__AVX512VPOPCNTDQ__": "avx512_vpopcntdq",
    "__AMX_TILE__": "amx_tile", "__AMX_INT8__": "amx_int8", "__AMX_BF16__": "amx_bf16",
}


def _compiler() -> str:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or "cc"


def _accepts(flags: tuple[str, ...]) -> bool:
    """Whether the C compiler accepts `flags` (compilers older than AMX reject `-mno-amx-*`, and never emit it)."""
    run = subprocess.run([_compiler(), *flags, "-E", "-x", "c", os.devnull], capture_output=True)
    return run.returncode == 0


@lru_cache(maxsize=1)
def compiler_flags() -> tuple[str, ...]:
    """Flags added to `-march=native`: AMX off on x86-64 where the compiler knows AMX."""
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return NO_AMX if x86 and _accepts(NO_AMX) else ()


def cmake_args() -> list[str]:
    """The CMake arguments of promptrec's llama.cpp build (CMAKE_ARGS for pip)."""
    flags = " ".join(compiler_flags())
    args = ["-DGGML_NATIVE=ON", *SMALL_BUILD]
    if flags:
        args += [f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"]
    return args


@lru_cache(maxsize=1)
def build_features() -> tuple[str, ...]:
    """The CPU flags (as /proc/cpuinfo names them) that code built with `-march=native` and our flags may use."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ()
    run = subprocess.run(
        [_compiler(), "-march=native", *compiler_flags(), "-dM", "-E", "-x", "c", os.devnull],
        capture_output=True, text=True,
    )
    macros = {line.split()[1] for line in run.stdout.splitlines() if line.startswith("#define ")}
    return tuple(sorted(flag for macro, flag in _ISA_FLAGS.items() if macro in macros))


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The flags this CPU advertises (empty where there is no /proc/cpuinfo)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


@lru_cache(maxsize=1)
def _compiler_version() -> str:
    run = subprocess.run([_compiler(), "--version"], capture_output=True, text=True)
    return run.stdout.splitlines()[0] if run.stdout else ""


def build_key(args: list[str], features: tuple[str, ...] | list[str]) -> str:
    """A short hash of everything the built wheel depends on besides the Python tag in its file name."""
    parts = [VERSION, *args, _compiler_version(), *features, platform.machine()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def wheel_root() -> Path:
    """PROMPTREC_WHEELS, else ~/.cache/promptrec/wheels: kept across clones, so CI builds once per machine."""
    return Path(os.environ.get("PROMPTREC_WHEELS") or Path.home() / ".cache" / "promptrec" / "wheels")


def wheel_folder() -> Path:
    """The folder holding the wheel built with today's settings on this machine (it may not exist yet)."""
    return wheel_root() / f"llama-cpp-python-{VERSION}-{build_key(cmake_args(), build_features())}"


def find_wheel(folder: Path) -> Path | None:
    """The llama-cpp-python wheel in `folder` (py3-none: it loads its libraries with ctypes), if a build there
    finished (its info file is written last)."""
    if not (folder / BUILD_INFO).is_file():
        return None
    return next(iter(sorted(folder.glob(f"llama_cpp_python-{VERSION}-*.whl"))), None)


def build_wheel(python: str = sys.executable) -> Path:
    """The wheel for today's settings: found in its folder, else built there with pip (no pip cache)."""
    folder = wheel_folder()
    wheel = find_wheel(folder)
    if wheel is not None:
        return wheel
    args, features = cmake_args(), build_features()
    wheel_root().mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=wheel_root()))
    env = {**os.environ, "CMAKE_ARGS": " ".join(_quote(a) for a in args), "FORCE_CMAKE": "1",
           "CMAKE_BUILD_PARALLEL_LEVEL": os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))}
    start = time.perf_counter()
    pip = [python, "-m", "pip", "wheel", "--no-cache-dir", "--no-deps", "--no-binary", "llama-cpp-python",
           "-w", str(partial), f"llama-cpp-python=={VERSION}"]
    if subprocess.run(pip, env=env, stdout=sys.stderr).returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise SystemExit(f"building llama-cpp-python {VERSION} failed (CMAKE_ARGS: {env['CMAKE_ARGS']})")
    info = {"version": VERSION, "cmake_args": args, "cpu_features": features, "compiler": _compiler_version(),
            "machine": platform.machine(), "build_seconds": round(time.perf_counter() - start, 1)}
    (partial / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
    folder.mkdir(exist_ok=True)
    for path in sorted(partial.iterdir(), key=lambda p: p.name == BUILD_INFO):  # the info file last: it marks done
        os.replace(path, folder / path.name)
    partial.rmdir()
    return find_wheel(folder)


def _quote(arg: str) -> str:
    return f'"{arg}"' if " " in arg else arg


def main(argv: list[str]) -> int:
    """`build`: print the wheel's path, building it first if needed; `args`: print the CMake arguments."""
    if argv == ["build"]:
        print(build_wheel())
    elif argv == ["args"]:
        print(" ".join(_quote(a) for a in cmake_args()))
    else:
        print("usage: native.py build | args", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
