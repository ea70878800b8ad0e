"""Method `constant`: one prompt for every row, fixed or chosen as the best-scoring training prompt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from promptrec.data import PROMPT
from promptrec.methods.base import FALLBACK_PROMPT, config_from_dict, read_config, save_config


@dataclass
class ConstantConfig:
    """Options of the constant method."""

    prompt: str = FALLBACK_PROMPT  # the prompt predicted for every row
    select: bool = False  # fit picks the training prompt with the best mean score against all the others
    embedder: str = "proxy"  # embedder used by `select`: official, proxy or a folder


class ConstantMethod:
    """Predicts one fixed prompt; with `select`, the training set's medoid under cos**3."""

    name = "constant"
    Config = ConstantConfig

    def __init__(self, config: ConstantConfig | None = None):
        self.config = config or ConstantConfig()

    def fit(self, triples: pd.DataFrame) -> None:
        """With `select`, choose the training prompt maximising the mean score against the rest."""
        if self.config.select:
            from promptrec.metric import load_embedder

            self.config.prompt = best_constant(triples[PROMPT].tolist(), load_embedder(self.config.embedder).encode)

    def predict(self, pairs: pd.DataFrame) -> list[str]:
        """The same prompt for every row."""
        return [self.config.prompt] * len(pairs)

    def save(self, folder: Path) -> None:
        """Write method.json."""
        save_config(Path(folder), self.name, self.config)

    @classmethod
    def load(cls, folder: Path) -> "ConstantMethod":
        """Read method.json."""
        return cls(config_from_dict(ConstantConfig, read_config(Path(folder))[1], str(folder)))


def best_constant(prompts: list[str], encode) -> str:
    """The prompt (among `prompts`) with the highest mean cos**3 against all of them."""
    unique, counts = np.unique(np.asarray([p for p in prompts if p.strip()], dtype=object).astype(str), return_counts=True)
    emb = encode(list(unique))  # (u, d) unit rows
    mean_scs = (emb @ emb.T) ** 3 @ counts / counts.sum()  # weighted by how often each true prompt occurs
    return str(unique[int(np.argmax(mean_scs))])
