"""Every shipped file in configs/ parses into its method's Config (the method is the file-name prefix) and runs
through fit/predict on a tiny, randomly initialised model of the same architecture as the hub model it names."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from promptrec.data import ID, ORIGINAL, PROMPT, REWRITTEN
from promptrec.methods.base import config_from_dict, load_config_file, method_class

FIT_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("fit_*.yaml"))  # recipes of `fit --config`
CONFIGS = sorted(set((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")) - set(FIT_CONFIGS))
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

# Hub model (or embedder name) -> the conftest fixture of its tiny stand-in with the same architecture.
STAND_INS = {
    "microsoft/deberta-v3-large": "tiny_deberta_dir",
    "official": "tiny_t5_embedder_dir",  # sentence-t5-base
    "microsoft/phi-2": "tiny_phi_dir",
    "mistralai/Mistral-7B-Instruct-v0.2": "tiny_mistral_dir",
    "google/gemma-7b-it": "tiny_gemma_dir",
}

_TEXTS = [
    ("The meeting was moved to Thursday because the projector broke.", "Rewrite this text as a pirate would say it.",
     "Arr, the meetin' be moved to Thursday, for the projector be broken!"),
    ("Please remember to lock the door and turn off the lights.", "Make the text more formal.",
     "Kindly ensure that the door is locked and the lights are switched off."),
    ("The cat sat on the mat all day.", "Turn this into a poem about the sea.",
     "Upon the mat the cat did stay, as waves rolled by the whole long day."),
    ("We will ship the new version next week.", "Summarize the text in one sentence.", "The new version ships next week."),
]
TRIPLES = pd.DataFrame([{ID: f"r{i}", ORIGINAL: f"{o} ({i})", PROMPT: p, REWRITTEN: w}
                        for i, (o, p, w) in enumerate(_TEXTS * 2)])  # 8 rows, 8 distinct originals


def _method_name(path: Path) -> str:
    return path.stem.split("_")[0]


def test_configs_folder_holds_the_original_setups():
    assert {p.name for p in CONFIGS} >= {"regressor_original.yaml", "lora_original.yaml", "fewshot_original.yaml",
                                         "lora_mistral-7b-instruct.yaml", "lora_gemma-7b-it.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_file_parses_into_its_method_config(path):
    values = load_config_file(path)
    config = config_from_dict(method_class(_method_name(path)).Config, values, str(path))
    for key, value in values.items():
        assert getattr(config, key) == value, key
    hub_ids = [v for v in values.values() if isinstance(v, str) and (HUB_ID.match(v) or v == "official")]
    missing = [v for v in hub_ids if v not in STAND_INS]
    assert not missing, f"{path.name} names {missing}: add a tiny stand-in to STAND_INS (conftest fixture)"


def test_fit_quality_recipe_is_the_default_ensemble_plus_lora():
    from promptrec.pipeline import ensemble_config

    assert [p.name for p in FIT_CONFIGS] == ["fit_quality.yaml"]
    default, quality = ensemble_config(), ensemble_config(None, load_config_file(FIT_CONFIGS[0]))
    assert quality.members == [*default.members, "lora"] and quality.mode == default.mode == "gate"
    assert quality.member_config == {**default.member_config, "lora": {"max_steps": 100, "val_fraction": 0}}
    assert quality.gate_rows == 100 and default.gate_rows == 400
    same = {k: v for k, v in vars(default).items() if k not in ("members", "member_config", "gate_rows")}
    assert same == {k: v for k, v in vars(quality).items() if k in same}  # the default's hedge and plain argmax
    assert (default.hedge_steps, default.suffix_seconds, default.gate_calibrate) == (100, 0, False)


EXPECTED = {  # file -> fields whose shipped values the run below checks on the fitted method's config
    "regressor_original.yaml": dict(multiplier=42, max_length=384, lr=5e-6, epochs=10, batch_size=4, loss="cosine"),
    "lora_original.yaml": dict(r=16, alpha=32, text_tokens=256, batch_size=8, max_steps=0),
    "lora_mistral-7b-instruct.yaml": dict(r=16, alpha=32, text_tokens=384, batch_size=4, max_steps=0),
    "lora_gemma-7b-it.yaml": dict(r=16, alpha=32, text_tokens=384, batch_size=4, max_steps=0),
    "fewshot_original.yaml": dict(backend="hf"),
}


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_file_fits_and_predicts_on_a_tiny_stand_in(path, request, tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("PROMPTREC_CACHE", str(tmp_path / "cache"))
    values = load_config_file(path)
    swapped = {k: str(request.getfixturevalue(STAND_INS[v])) if isinstance(v, str) and v in STAND_INS else v
               for k, v in values.items()}
    assert swapped != values  # each file names at least one hub model: the run proves its architecture works
    cls = method_class(_method_name(path))
    method = cls(config_from_dict(cls.Config, swapped, str(path)))
    for key, value in EXPECTED.get(path.name, {}).items():
        assert getattr(method.config, key) == value, key
    method.fit(TRIPLES)
    prompts = method.predict(TRIPLES[[ID, ORIGINAL, REWRITTEN]].iloc[:3])
    assert len(prompts) == 3 and all(isinstance(p, str) and p.strip() for p in prompts)
    if cls.name == "lora":
        kind = method.model.base_model.model.config.model_type  # the stand-in's architecture was trained
        assert kind == {"microsoft/phi-2": "phi", "google/gemma-7b-it": "gemma"}.get(values["model"], "mistral")
        updates = -(-7 // method.config.batch_size)  # 8 rows, 1 held out (val_fraction 0.1), one epoch
        assert [h["step"] for h in method.history] == [updates] and "val_score" in method.history[0]
