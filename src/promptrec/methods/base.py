"""The contract every recovery method keeps (fit / predict / save / load) and the registry by name."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import pandas as pd

from promptrec.data import DataError, atomic_write

# Used wherever a method produced nothing usable: a blank prediction is an error in the competition.
FALLBACK_PROMPT = "Rewrite this text in a different style."
CONFIG_FILE = "method.json"

# name -> "module:Class"; imported only when asked for, so heavy dependencies load lazily.
METHODS: dict[str, str] = {
    "constant": "promptrec.methods.constant:ConstantMethod",
    "bank": "promptrec.methods.bank:BankMethod",
    "regressor": "promptrec.methods.regressor:RegressorMethod",
    "lora": "promptrec.methods.lora:LoraMethod",
    "fewshot": "promptrec.methods.fewshot:FewShotMethod",
    "evidence": "promptrec.methods.evidence:EvidenceMethod",
    "ensemble": "promptrec.methods.ensemble:EnsembleMethod",
}

C = TypeVar("C")


@runtime_checkable
class Method(Protocol):
    """A prompt-recovery method: learn from triples, then recover one prompt per pair."""

    name: ClassVar[str]

    def fit(self, triples: pd.DataFrame) -> None:
        """Learn from `id, original_text, rewrite_prompt, rewritten_text` rows."""

    def predict(self, pairs: pd.DataFrame) -> list[str]:
        """One non-blank prompt per `id, original_text, rewritten_text` row, in order."""

    def save(self, folder: Path) -> None:
        """Write config (JSON) and weights (safetensors/npy) into `folder`."""

    @classmethod
    def load(cls, folder: Path) -> "Method":
        """Rebuild the method saved in `folder`, executing no code from it."""


def method_class(name: str) -> type:
    """The registered class for `name`; one-line error listing the known names otherwise."""
    if name not in METHODS:
        raise DataError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))})")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def from_name(name: str, **config: Any) -> Method:
    """Build method `name` with config fields given as keyword arguments."""
    cls = method_class(name)
    return cls(config_from_dict(cls.Config, config, source=f"method '{name}'"))


def config_from_dict(cls: type[C], values: dict[str, Any], source: str) -> C:
    """Build a config dataclass, rejecting unknown keys in one line naming `source`."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise DataError(f"{source}: unknown option '{unknown[0]}' (known: {', '.join(sorted(fields))})")
    return cls(**{name: _coerce(fields[name], value, source) for name, value in values.items()})


def _coerce(field: dataclasses.Field, value: Any, source: str) -> Any:
    """Numbers written as text (YAML reads "3e-4" as a string) become the field's number type."""
    kind = str(field.type).split(" |")[0]
    if kind not in ("float", "int") or not isinstance(value, str):
        return value
    try:
        return float(value) if kind == "float" else int(value)
    except ValueError:
        raise DataError(f"{source}: option '{field.name}' must be a number, got '{value}'") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a plain dict."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such config file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise DataError(f"{path}: invalid YAML/JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise DataError(f"{path}: expected a mapping of option: value")
    return values


def save_config(folder: Path, name: str, config: Any) -> None:
    """Write `method.json` naming the method and its config fields."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / CONFIG_FILE) as handle:
        json.dump({"method": name, "config": dataclasses.asdict(config)}, handle, indent=2)


def read_config(folder: Path) -> tuple[str, dict[str, Any]]:
    """Read `method.json`: the method name and its config fields."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise DataError(f"{folder}: not a saved method (no {CONFIG_FILE})")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        return payload["method"], payload["config"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"{path}: not a valid method config") from None


def load_method(folder: str | Path) -> Method:
    """Load whichever method was saved in `folder`."""
    name, _ = read_config(Path(folder))
    return method_class(name).load(Path(folder))


def checkpoint_beside(method: Method, output: str | Path) -> None:
    """Point a method whose config has an unset `checkpoint_dir` at `OUTPUT.partial` (an ensemble's members at
    `OUTPUT/LABEL.partial`), so that a rerun of the same training continues from its checkpoints; other
    methods are left as they are."""
    for label, member in getattr(method, "members", {}).items():
        checkpoint_beside(member, Path(output) / label)
    config = getattr(method, "config", None)
    if hasattr(config, "checkpoint_dir") and config.checkpoint_dir is None:
        output = Path(output)
        config.checkpoint_dir = str(output.parent / f"{output.name}.partial")


def never_blank(prompts: list[str], fallback: str = FALLBACK_PROMPT) -> list[str]:
    """Replace blank predictions by `fallback`, so no row is ever empty."""
    return [p.strip() if isinstance(p, str) and p.strip() else fallback for p in prompts]


def safe_child(folder: Path, name: str) -> Path:
    """`folder / name`, refusing names from a config that would escape the folder."""
    target = (folder / name).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise DataError(f"{folder}: file name '{name}' in its config points outside the folder")
    return target
