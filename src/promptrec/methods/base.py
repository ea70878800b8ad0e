"""The contract every recovery method keeps, its optional capabilities, and the registry by name.

A method is a class with a `name`, a `Config` dataclass (validated in `__post_init__`) and four calls:
`fit(triples)`, `predict(pairs) -> list[str | None]`, `save(folder)`, `load(folder)`. `predict` may return
None (or a blank) for a row it has no answer for (it abstains); whoever needs text fills those rows: an
ensemble with its other members, `recover` and `cv` with `never_blank`, so a submission never holds a blank.
What `fit` learns is saved beside the config (`save_config(..., state=...)`, weights in files), never
written into the config. Methods log through `logging.getLogger(__name__)`; the CLI renders it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np
import pandas as pd

from promptrec.data import REWRITTEN, DataError, atomic_write

if TYPE_CHECKING:
    from promptrec.methods.gate import Gate
    from promptrec.metric import Embedder

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
    "form": "promptrec.methods.form:FormMethod",
    "rerank": "promptrec.methods.rerank:RerankMethod",
    "ensemble": "promptrec.methods.ensemble:EnsembleMethod",
}

_LABEL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a member label is also a folder name

C = TypeVar("C")
M = TypeVar("M", bound="Method")


@runtime_checkable
class Method(Protocol):
    """A prompt-recovery method: learn from triples, then recover a prompt per pair (or abstain)."""

    name: ClassVar[str]
    Config: ClassVar[type]  # a dataclass; `config_from_dict` builds it from files and `--set` options
    config: Any

    def fit(self, triples: pd.DataFrame) -> None:
        """Learn from `id, original_text, rewrite_prompt, rewritten_text` rows."""

    def predict(self, pairs: pd.DataFrame) -> list[str | None]:
        """A prompt per `id, original_text, rewritten_text` row, in order; None where the method abstains."""

    def save(self, folder: Path) -> None:
        """Write config and learned state (`save_config`) and weights (safetensors/npy/CSV) into `folder`."""

    @classmethod
    def load(cls, folder: Path) -> "Method":
        """Rebuild the method saved in `folder`, executing no code from it."""


@runtime_checkable
class PredictsEmbeddings(Protocol):
    """A method that also predicts where the true prompt lies in its metric embedder's space."""

    def predict_embeddings(self, pairs: pd.DataFrame) -> np.ndarray:
        """(n, d) unit rows in the space of the method's `config.embedder`."""


@runtime_checkable
class Resumable(Protocol):
    """A method whose training checkpoints, so a killed `fit` continues where it stopped."""

    def resume_in(self, folder: Path) -> None:
        """Keep training checkpoints in `folder` (unless the user chose one); a rerun continues from the newest."""


@runtime_checkable
class Continuable(Protocol):
    """A method whose finished fit can be trained further (`promptrec train ... --from FOLDER`)."""

    def continue_from(self, folder: Path) -> None:
        """Start the next `fit` from the training state saved with this method in `folder`."""


@runtime_checkable
class Composite(Protocol):
    """A method built from other methods (the ensemble): it fits, saves and checkpoints its members."""

    members: dict[str, Method]  # label -> member

    def adopt(self, label: str, member: Method) -> None:
        """Use `member`, already fitted, as member `label`: `fit` will not refit it."""

    def combine(self, pairs: pd.DataFrame, predictions: dict[str, list[str | None]]) -> list[str | None]:
        """Prompts for `pairs` from every member's `predictions` (by label); `predict` is `combine` over members."""


@runtime_checkable
class UsesEmbedder(Protocol):
    """A method whose `config.embedder` names its metric embedder: `embedder`, loaded on first use unless set (tests
    and benchmarks set a toy or shared one: anything with `encode`, `dim` and `label`). Methods subclass it to
    inherit that lazy `embedder`; before Python 3.12 `isinstance` reads (so loads) it: check where it is wanted."""

    config: Any

    @functools.cached_property
    def embedder(self) -> Embedder:
        """The metric embedder named by `config.embedder`, loaded on first use; assigning one replaces it."""
        from promptrec.metric import load_embedder

        return load_embedder(self.config.embedder)


@runtime_checkable
class SearchesBank(Protocol):
    """A method that predicts by searching a prompt bank (bank, regressor)."""

    bank: Any  # a methods.bank.PromptBank, or None before fit (named, not imported: bank imports this module)

    def bank_queries(self, pairs: pd.DataFrame) -> np.ndarray:
        """(n, dim) the queries `predict` searches the bank with."""


@runtime_checkable
class RanksCandidates(Protocol):
    """A method that scores candidate prompts per row (rerank): its scores serve as gate features and `explain`."""

    def rank(self, pairs: pd.DataFrame, extra: dict[str, list[str | None]] | None = None) -> Any:
        """A methods.rerank.Ranking of each row's own candidates plus `extra` (label -> a prompt or None per row)."""


@runtime_checkable
class Gated(Composite, Protocol):
    """A composite that picks one member per row with a gate learned on out-of-fold member predictions."""

    gate: Gate | None  # None until fitted, and in the composite's other modes
    hedge: str | None  # the mean prompt the gate may also pick, alone or after a member's prompt (None: no hedge)

    def choices(self) -> list[str]:
        """The labels the gate picks from, in order (the members, then any hedged candidates)."""

    def row_features(self, pairs: pd.DataFrame,
                     predictions: dict[str, list[str | None]]) -> tuple[np.ndarray, np.ndarray]:
        """The gate's features (m, n, F) of the members' `predictions` and which members answered (m, n)."""


# --- capabilities of a config: read from a saved `method.json` without building the method ----------------------
@runtime_checkable
class CompositeConfig(Protocol):
    """The config of a composite: its members, each saved in the subfolder named by its label, and how it combines
    them."""

    mode: str

    def specs(self) -> list[tuple[str, str]]:
        """The members as (label, method name) pairs, in order."""


@runtime_checkable
class NamesModels(Protocol):
    """A config whose fields name models (an offline short name, a hub id or a path): `bundle` carries the offline
    ones and lists the rest. A field called `embedder` also takes `official` and `proxy` (metric.load_embedder)."""

    model_fields: ClassVar[tuple[str, ...]]


@runtime_checkable
class NeedsExtra(Protocol):
    """A config whose method needs an optional promptrec extra (`pip install "promptrec[EXTRA]"`): `bundle` carries
    it."""

    extra: ClassVar[str]


@runtime_checkable
class CachesFeatures(Protocol):
    """A config whose method keeps encoded features in an on-disk cache, which `feature_cache = False` turns off."""

    feature_cache: bool


def method_class(name: str) -> type:
    """The registered class for `name`; one-line error listing the known names otherwise."""
    if name not in METHODS:
        raise DataError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))})")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def parse_members(specs: list[str]) -> list[tuple[str, str]]:
    """`["a", "b=constant"]` -> `[("a", "a"), ("b", "constant")]` (label, method name); labels must be unique."""
    pairs = []
    for spec in specs:
        label, sep, name = str(spec).partition("=")
        label, name = label.strip(), (name if sep else label).strip()
        if not _LABEL.match(label):
            raise DataError(f"method label '{label}': use letters, digits, '_', '-' or '.'")
        if name not in METHODS:
            raise DataError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))})")
        pairs.append((label, name))
    labels = [label for label, _ in pairs]
    duplicate = next((label for label in labels if labels.count(label) > 1), None)
    if duplicate:
        raise DataError(f"method label '{duplicate}' appears twice; write label=name to tell them apart")
    if not pairs:
        raise DataError("no methods given")
    return pairs


def check_options(options: dict[str, Any], pairs: list[tuple[str, str]], where: str = "") -> None:
    """One-line error (prefixed by `where`) if `options`, keyed by label, names a label not among `pairs`
    (`parse_members`): options for a method that is not there would silently do nothing."""
    labels = sorted(label for label, _ in pairs)
    unknown = sorted(set(options) - set(labels))
    if unknown:
        raise DataError(f"{where}options for '{unknown[0]}', which is not among the methods ({', '.join(labels)})")


def from_name(name: str, **config: Any) -> Method:
    """Build method `name` with config fields given as keyword arguments."""
    cls = method_class(name)
    return cls(config_from_dict(cls.Config, config, source=f"method '{name}'"))


def config_from_dict(cls: type[C], values: dict[str, Any], source: str) -> C:
    """Build a config dataclass, rejecting in one line naming `source` unknown keys and a switch (bool option) given
    anything but true or false (None where the field allows it), such as 'maybe', which Python would read as true."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise DataError(f"{source}: unknown option '{unknown[0]}' (known: {', '.join(sorted(fields))})")
    config = cls(**{name: _coerce(fields[name], value, source) for name, value in values.items()})
    for name, value in values.items():  # after the config's own checks, whose messages win where it has them
        kind = str(fields[name].type)
        if kind.split(" |")[0] == "bool" and not isinstance(value, bool) and not (value is None and "None" in kind):
            raise DataError(f"{source}: option '{name}' must be true or false, got '{value}'")
    return config


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


def save_config(folder: Path, name: str, config: Any, state: dict[str, Any] | None = None) -> None:
    """Write `method.json`: the method name, its config fields and what `fit` learned (`state`, JSON)."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"method": name, "config": dataclasses.asdict(config), "state": state or {}}
    with atomic_write(folder / CONFIG_FILE) as handle:
        json.dump(payload, handle, indent=2)


def read_config(folder: Path) -> tuple[str, dict[str, Any]]:
    """Read `method.json`: the method name and its config fields."""
    name, config, _ = _read_saved(Path(folder))
    return name, config


def _read_saved(folder: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise DataError(f"{folder}: not a saved method (no {CONFIG_FILE})")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        name, config, state = payload["method"], payload["config"], payload.get("state", {})
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"{path}: not a valid method config") from None
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise DataError(f"{path}: not a valid method config")
    return name, config, state


def load_saved(folder: str | Path, cls: type[M]) -> tuple[Any, dict[str, Any]]:
    """`cls.Config` and the learned state saved in `folder`; one-line error if it holds another method."""
    folder = Path(folder)
    name, config, state = _read_saved(folder)
    if name != cls.name:
        raise DataError(f"{folder}: holds a saved '{name}' method, not '{cls.name}'")
    return config_from_dict(cls.Config, config, str(folder)), state


def load_method(folder: str | Path) -> Method:
    """Load whichever method was saved in `folder`."""
    name, _ = read_config(Path(folder))
    return method_class(name).load(Path(folder))


def checkpoint_beside(method: Method, output: str | Path) -> None:
    """Let a resumable method checkpoint in `OUTPUT.partial` (a composite's members in `OUTPUT/LABEL.partial`),
    so that a rerun of the same training continues from its checkpoints."""
    output = Path(output)
    if isinstance(method, Composite):
        for label, member in method.members.items():
            checkpoint_beside(member, output / label)
    if isinstance(method, Resumable):
        method.resume_in(output.parent / f"{output.name}.partial")


# How a method that reads the rewrite sees it, in fit and predict alike (option `view`): as given, or with the
# rewriter's statements about its instruction (lead-ins, titles, refusals: clean's EVIDENCE_RULES) cut.
VIEWS = ("raw", "stripped")


def check_view(method: str, view: str) -> None:
    """One-line error unless `view` is one of VIEWS."""
    if view not in VIEWS:
        raise DataError(f"{method}: view must be one of {', '.join(VIEWS)}, not '{view}'")


def text_view(frame: pd.DataFrame, view: str) -> pd.DataFrame:
    """`frame` with its rewritten texts as `view` shows them ("raw": `frame` itself)."""
    if view == "raw":
        return frame
    from promptrec.clean import clean_texts

    return frame.assign(**{REWRITTEN: clean_texts(frame[REWRITTEN], keep_evidence=False)[0]})


def answer(prompt: object) -> str | None:
    """A prediction (or prompt) stripped; None for an abstention, a blank or anything not a string."""
    return (prompt.strip() or None) if isinstance(prompt, str) else None


def never_blank(prompts: list[str | None], fallback: str = FALLBACK_PROMPT) -> list[str]:
    """Replace abstentions (None) and blank predictions by `fallback`, so no row is ever empty."""
    return [answer(p) or fallback for p in prompts]


def safe_child(folder: Path, name: str) -> Path:
    """`folder / name`, refusing names from a config that would escape the folder."""
    target = (folder / name).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise DataError(f"{folder}: file name '{name}' in its config points outside the folder")
    return target
