"""The llama.cpp build settings: native tuning without AMX, a small build, a wheel folder keyed by them."""

from __future__ import annotations

import platform

import pytest

from promptrec.llm import native

X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.mark.skipif(not X86, reason="AMX flags exist on x86-64 only")
def test_build_is_native_without_amx_and_small():
    args = native.cmake_args()
    assert args[:6] == ["-DGGML_NATIVE=ON", "-DLLAVA_BUILD=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                        "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_SERVER=OFF"]
    flags = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    assert args[6:] == [f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"]


@pytest.mark.skipif(not X86, reason="x86-64 feature names")
def test_features_are_this_cpus_without_amx():
    features = native.build_features()
    assert "sse4_2" in features and not any(f.startswith("amx") for f in features)
    assert set(features) <= native.cpu_flags()  # built here, so this CPU has every one


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 amx_tile\nbugs\t\t: spectre\n")
    assert native.cpu_flags(str(cpuinfo)) == {"fpu", "sse4_2", "avx2", "amx_tile"}
    assert native.cpu_flags(str(tmp_path / "absent")) == set()


def test_key_changes_with_flags_and_features():
    base = native.build_key(["-DGGML_NATIVE=ON"], ["avx2"])
    assert len(base) == 16 and base == native.build_key(["-DGGML_NATIVE=ON"], ["avx2"])
    assert base != native.build_key(["-DGGML_NATIVE=ON", "-DCMAKE_C_FLAGS=-mno-amx-tile"], ["avx2"])
    assert base != native.build_key(["-DGGML_NATIVE=ON"], ["avx2", "avx512f"])


def test_a_wheel_counts_only_once_its_build_finished(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTREC_WHEELS", str(tmp_path))
    folder = native.wheel_folder()
    assert folder.parent == tmp_path and folder.name.startswith(f"llama-cpp-python-{native.VERSION}-")
    folder.mkdir()
    wheel = folder / f"llama_cpp_python-{native.VERSION}-py3-none-linux_x86_64.whl"
    wheel.write_bytes(b"")
    assert native.find_wheel(folder) is None  # no build.json: an interrupted build
    (folder / native.BUILD_INFO).write_text("{}")
    assert native.find_wheel(folder) == wheel
    assert native.build_wheel() == wheel  # found, not rebuilt


def test_script_prints_its_cmake_args(capsys):
    assert native.main(["args"]) == 0
    assert capsys.readouterr().out.startswith("-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF")
    assert native.main(["nope"]) == 2
