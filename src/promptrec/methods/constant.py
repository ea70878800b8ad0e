"""Method `constant`: one prompt for every row, fixed or chosen as the best-scoring training prompt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from promptrec.data import PROMPT, DataError
from promptrec.methods.base import FALLBACK_PROMPT, UsesEmbedder, load_saved, save_config
from promptrec.vectors import Encode, most_typical


@dataclass
class ConstantConfig:
    """Options of the constant method."""
    model_fields = ("embedder",)  # NamesModels: the fields naming a model, which bundle carries

    prompt: str = FALLBACK_PROMPT  # the prompt predicted for every row (until `select` picks one)
    select: bool = False  # fit picks the training prompt with the best mean score against all the others
    embedder: str = "proxy"  # embedder used by `select`: official, proxy or a folder

    def __post_init__(self) -> None:
        # YAML reads `--set prompt=42` as a number and `select=maybe` as text: say so instead of predicting "42".
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise DataError(f"constant: prompt must be a non-blank text, got {self.prompt!r}")
        if not isinstance(self.select, bool):
            raise DataError(f"constant: select must be true or false, got {self.select!r}")


class ConstantMethod(UsesEmbedder):
    """Predicts one fixed prompt; with `select`, the training set's medoid under cos**3."""

    name = "constant"
    Config = ConstantConfig

    def __init__(self, config: ConstantConfig | None = None):
        self.config = config or ConstantConfig()
        self.selected: str | None = None  # learned by fit with `select`; saved as state, never in the config

    def fit(self, triples: pd.DataFrame) -> None:
        """With `select`, choose the training prompt maximising the mean score against the rest."""
        self.selected = None
        if self.config.select:
            self.selected = best_constant(triples[PROMPT].tolist(), self.embedder.encode)

    def predict(self, pairs: pd.DataFrame) -> list[str | None]:
        """The same prompt for every row: the selected one, else the configured one."""
        return [self.selected or self.config.prompt] * len(pairs)

    def save(self, folder: Path) -> None:
        """Write method.json (the selected prompt as learned state)."""
        save_config(Path(folder), self.name, self.config, state={"selected": self.selected})

    @classmethod
    def load(cls, folder: Path) -> "ConstantMethod":
        """Read method.json."""
        config, state = load_saved(folder, cls)
        method = cls(config)
        method.selected = state.get("selected")
        return method


def best_constant(prompts: list[str], encode: Encode) -> str:
    """The prompt (stripped, among the non-blank `prompts`) with the highest mean cos**3 against all of them."""
    if not any(str(p).strip() for p in prompts):
        raise DataError("constant: no non-blank training prompt to select from")
    return str(prompts[most_typical(prompts, encode)[0]]).strip()
