"""The method contract, over every registered method: fit -> predict -> save -> load -> the same predictions, and a
folder saved by one method refuses to load as another, in one line naming both. Tiny random models from conftest."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pandas as pd
import pytest

from promptrec.data import DataError
from promptrec.methods.base import (
    METHODS, CachesFeatures, Composite, CompositeConfig, Gated, Method, NamesModels, NeedsExtra, PredictsEmbeddings,
    SearchesBank, UsesEmbedder, from_name, load_method, method_class, text_view,
)

_ROWS = [
    ("Rewrite this text as a pirate would say it.", "The meeting was moved to Thursday.", "Arr, the meeting be Thursday."),
    ("Make the text more formal.", "Please lock the door.", "Kindly ensure the door is locked."),
    ("Turn this into a poem about the sea.", "The projector broke.", "The projector broke, like waves upon the sea."),
    ("Summarize the text in one sentence.", "We met, talked and left early.", "We met briefly."),
]
TRIPLES = pd.DataFrame(
    [(f"t{i}", original, prompt, rewritten) for i, (prompt, original, rewritten) in enumerate(_ROWS * 2)],
    columns=["id", "original_text", "rewrite_prompt", "rewritten_text"],
)
PAIRS = TRIPLES.drop(columns="rewrite_prompt").assign(id=lambda f: "p" + f["id"])


@pytest.fixture(scope="module")
def contract_options(tiny_t5_embedder_dir, tiny_llama_dir, tmp_path_factory):
    """Options of each method on the tiny models: enough to run, as little work as possible."""
    embedder, llm, cache = str(tiny_t5_embedder_dir), str(tiny_llama_dir), str(tmp_path_factory.mktemp("cache"))
    specific = {
        "constant": {"select": True, "embedder": embedder},
        "bank": {"embedder": embedder, "cache_dir": cache},
        "regressor": {"backbone": llm, "embedder": embedder, "max_length": 16, "multiplier": 1, "epochs": 2,
                      "batch_size": 4, "cache_dir": cache, "device": "cpu"},
        "lora": {"model": llm, "r": 4, "alpha": 8, "text_tokens": 16, "batch_size": 4, "epochs": 1, "val_fraction": 0.0,
                 "select_fallback": False, "max_new_tokens": 4, "checkpoint_steps": 0, "bf16": False,
                 "infer_bf16": False},
        "fewshot": {"model": llm, "backend": "hf", "embedder": embedder, "k": 2, "example_tokens": 16,
                    "query_tokens": 16, "max_new_tokens": 4},
        "ensemble": {"members": ["constant", "bank"], "mode": "select", "embedder": embedder,
                     "member_config": {"constant": {"select": True, "embedder": embedder},
                                       "bank": {"embedder": embedder, "cache_dir": cache}}},
    }
    # A method registered later runs on its defaults, every model and embedder field pointed at the tiny models.
    tiny = {"embedder": embedder, "model": llm, "backbone": llm, "cache_dir": cache, "device": "cpu"}

    def options(name: str) -> dict:
        if name in specific:
            return specific[name]
        fields = {f.name for f in dataclasses.fields(method_class(name).Config)}
        return {key: value for key, value in tiny.items() if key in fields}

    return options


@pytest.mark.parametrize("name", list(METHODS))  # about 2 s each on the tiny models (their fixtures take ~30 s once)
def test_fit_predict_save_load_predict(name, contract_options, tmp_path, one_thread):
    method = from_name(name, **contract_options(name))
    assert isinstance(method, Method) and method.name == name and dataclasses.is_dataclass(method.config)
    config = dataclasses.asdict(method.config)
    method.fit(TRIPLES)
    assert dataclasses.asdict(method.config) == config  # what fit learns is state, never written into the config
    before = method.predict(PAIRS)
    assert len(before) == len(PAIRS) and all(p is None or isinstance(p, str) for p in before)
    method.save(tmp_path / name)
    assert json.loads((tmp_path / name / "method.json").read_text(encoding="utf-8"))["method"] == name
    loaded = load_method(tmp_path / name)
    assert type(loaded) is type(method) and loaded.predict(PAIRS) == before


@pytest.mark.parametrize("name", list(METHODS))
def test_a_folder_saved_by_another_method_is_refused_in_one_line(name, tmp_path):
    other = "ensemble" if name == "constant" else "constant"
    from_name(other).save(tmp_path / other)  # the cheapest saved folders: no fit needed
    with pytest.raises(DataError) as error:
        method_class(name).load(tmp_path / other)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(tmp_path / other))
    assert f"'{other}'" in message and f"'{name}'" in message, message


def test_uses_embedder_loads_the_configured_embedder_once_unless_one_is_set(monkeypatch):
    import promptrec.metric as metric

    loaded = []
    monkeypatch.setattr(metric, "load_embedder", lambda spec: loaded.append(spec) or SimpleNamespace(label=spec))
    method = from_name("constant", embedder="proxy")
    assert isinstance(method, UsesEmbedder)
    assert method.embedder is method.embedder and method.embedder.label == "proxy" and loaded == ["proxy"]
    other, toy = from_name("constant"), SimpleNamespace(label="toy")
    other.embedder = toy
    assert other.embedder is toy and loaded == ["proxy"]


# What each method declares, read through the capability protocols of methods/base.py (no attribute probing).
CAPABILITIES = {  # name -> (model fields, extra, searches a bank, predicts embeddings, composite, caches features)
    "constant": (("embedder",), None, False, False, False, False),
    "bank": (("embedder",), None, True, False, False, False),
    "regressor": (("backbone", "embedder"), None, True, True, False, True),
    "lora": (("model", "embedder"), "llm", False, False, False, False),
    "fewshot": (("model", "embedder"), "llm", False, False, False, False),
    "evidence": (("embedder",), None, False, False, False, False),
    "ensemble": (("embedder",), None, False, False, True, False),
    "form": (("embedder",), None, False, False, False, False),
    "rerank": (("model", "embedder"), "llm", True, False, False, False),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_declares_its_capabilities(name, monkeypatch):
    import promptrec.metric as metric

    monkeypatch.setattr(metric, "load_embedder", lambda spec: SimpleNamespace(label=spec))  # no model loads here
    method = from_name(name)
    config = method.config
    fields = {f.name for f in dataclasses.fields(config)}
    assert isinstance(config, NamesModels) and set(config.model_fields) <= fields
    assert "model_fields" not in dataclasses.asdict(config) and "extra" not in dataclasses.asdict(config)
    extra = config.extra if isinstance(config, NeedsExtra) else None
    found = (config.model_fields, extra, isinstance(method, SearchesBank), isinstance(method, PredictsEmbeddings),
             isinstance(method, Composite), isinstance(config, CachesFeatures))
    assert found == CAPABILITIES[name]
    assert isinstance(method, UsesEmbedder) and method.embedder.label == config.embedder  # every method's metric
    assert isinstance(config, CompositeConfig) == isinstance(method, Gated) == (name == "ensemble")


_LEAD_IN = "Sure, here's the text rewritten as a pirate's tale:\n\n"
EVIDENT = TRIPLES.assign(rewritten_text=[("**A Tale**\n" if i % 2 else _LEAD_IN) + text
                                         for i, text in enumerate(TRIPLES["rewritten_text"])])
VIEWED = [name for name in METHODS if "view" in {f.name for f in dataclasses.fields(method_class(name).Config)}]


def test_text_view_cuts_the_rewriters_statements():
    assert VIEWED == ["bank", "regressor", "lora", "fewshot", "rerank"]  # every method that reads the rewrite
    stripped = text_view(EVIDENT.head(2), "stripped")["rewritten_text"].tolist()
    assert stripped == ["Arr, the meeting be Thursday.", "A Tale\nKindly ensure the door is locked."]
    assert text_view(EVIDENT, "raw") is EVIDENT and EVIDENT["rewritten_text"][0].startswith("Sure, here's")
    with pytest.raises(DataError, match="^bank: view must be one of raw, stripped, not 'clean'$"):
        from_name("bank", view="clean")


@pytest.mark.parametrize("name", VIEWED)
def test_view_is_the_same_in_fit_and_predict(name, contract_options, one_thread):
    """view=stripped on raw rewrites = view=raw on rewrites stripped beforehand, in fit and in predict alike."""
    viewed = from_name(name, **contract_options(name), view="stripped")
    viewed.fit(EVIDENT)
    plain = from_name(name, **contract_options(name))
    plain.fit(text_view(EVIDENT, "stripped"))
    pairs = EVIDENT.drop(columns="rewrite_prompt")
    assert viewed.predict(pairs) == plain.predict(text_view(pairs, "stripped"))
    if isinstance(viewed, PredictsEmbeddings):  # what decoding searches with, before it snaps to a bank prompt
        assert viewed.predict_embeddings(pairs) == pytest.approx(plain.predict_embeddings(text_view(pairs, "stripped")))
    if name == "fewshot":  # the tiny LLM's answers fall back alike; its inputs must match
        assert viewed.inputs(pairs) == plain.inputs(text_view(pairs, "stripped"))
