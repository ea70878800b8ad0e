"""Method `fewshot`: templates, truncation, retrieval, output parsing, fallback, save/load, packaged SmolLM2."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from promptrec.clean import parse_generation
from promptrec.data import DataError
from promptrec.llm.templates import head_tail
from promptrec.methods.base import FALLBACK_PROMPT, from_name, load_method
from promptrec.methods.fewshot import (
    Example, ExampleIndex, FewShotConfig, FewShotMethod, capitalize, completion_prompt,
)

VOCAB = ["pirate", "poem", "formal", "summary", "cat", "dog", "sea", "office"]


class BagOfWords:
    """Toy embedder: unit word-count vectors over VOCAB (plus a constant so no row is zero)."""

    label = "toy"

    def encode(self, texts):
        rows = np.array([[t.lower().count(w) for w in VOCAB] + [0.1] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class ChatMLGenerator:
    """In-test Generator: SmolLM2's ChatML template and canned answers, recording what it was asked."""

    name = "fake-chatml"

    def __init__(self, answers=None):
        self.answers = answers
        self.prompts: list[str] = []
        self.settings = None
        self.vocab: dict[str, int] = {}  # its tokens are whitespace words, so budgets below count words

    def tokenize(self, text):
        return [self.vocab.setdefault(word, len(self.vocab)) for word in text.split()]

    def detokenize(self, ids):
        words = {i: word for word, i in self.vocab.items()}
        return " ".join(words[i] for i in ids)

    def render_chat(self, messages):
        body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return body + "<|im_start|>assistant\n"

    def generate(self, prompts, settings):
        self.prompts += list(prompts)
        self.settings = settings
        return list(self.answers or ["Make it rhyme."] * len(prompts))


class BaseGenerator(ChatMLGenerator):
    """In-test base model: no chat template."""

    name = "fake-base"

    def render_chat(self, messages):
        raise ValueError("no chat template")


def _triples() -> pd.DataFrame:
    rows = [
        ("t0", "The cat sat.", "Rewrite as a pirate.", "Arr, the pirate cat sat, matey."),
        ("t1", "The dog ran.", "Make it a poem.", "A dog ran / a poem of the sea."),
        ("t2", "See you at the office.", "Make it formal.", "I shall see you at the office; formal regards."),
        ("t3", "Long story about a dog and a cat.", "Write a summary.", "Summary: dog and cat."),
        ("t4", "The sea is calm.", "Rewrite as a pirate.", "Arr, the sea be calm, says the pirate."),
    ]
    return pd.DataFrame(rows, columns=["id", "original_text", "rewrite_prompt", "rewritten_text"])


def _method(generator=None, **config) -> FewShotMethod:
    method = FewShotMethod(FewShotConfig(**config))
    method.embedder = BagOfWords()
    method.generator = generator or ChatMLGenerator()
    return method


def test_chat_template_exact_string():
    method = _method(k=1, selection="fixed", fixed_ids=["t1"], select_fallback=False)
    method.fit(_triples())
    text = method.inputs(pd.DataFrame({"original_text": ["A cat."], "rewritten_text": ["A cat\n\npoem."]}))[0]
    assert text == (
        "<|im_start|>system\nEach example shows an original text, the same text after an AI rewrote it, and the "
        "instruction the AI was given. Reply with the instruction for the last example only: one short sentence.<|im_end|>\n"
        "<|im_start|>user\nOriginal text: The dog ran.\nRewritten text: A dog ran / a poem of the sea.<|im_end|>\n"
        "<|im_start|>assistant\nMake it a poem.<|im_end|>\n"
        "<|im_start|>user\nOriginal text: A cat.\nRewritten text: A cat poem.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


class NoSystemGenerator(ChatMLGenerator):
    """In-test Mistral-like template: user/assistant turns only."""

    def render_chat(self, messages):
        if messages[0]["role"] == "system":
            raise ValueError("Conversation roles must alternate user/assistant/user/assistant/...")
        return "".join(f"[{m['role']}] {m['content']}\n" for m in messages)


def test_system_instruction_folds_into_first_user_turn_when_template_rejects_it():
    method = _method(NoSystemGenerator(), k=1, selection="fixed", fixed_ids=["t0"], select_fallback=False)
    method.fit(_triples())
    text = method.inputs(pd.DataFrame({"original_text": ["Hi."], "rewritten_text": ["Ahoy."]}))[0]
    assert text == (
        "[user] Each example shows an original text, the same text after an AI rewrote it, and the instruction the AI "
        "was given. Reply with the instruction for the last example only: one short sentence.\n\n"
        "Original text: The cat sat.\nRewritten text: Arr, the pirate cat sat, matey.\n"
        "[assistant] Rewrite as a pirate.\n"
        "[user] Original text: Hi.\nRewritten text: Ahoy.\n"
    )


def test_completion_template_exact_string_for_base_model():
    method = _method(BaseGenerator(), k=2, selection="fixed", fixed_ids=["t0", "t2"], select_fallback=False)
    method.fit(_triples())
    assert not method.uses_chat()
    text = method.inputs(pd.DataFrame({"original_text": ["Hi."], "rewritten_text": ["Hello there."]}))[0]
    assert text == (
        "Each example shows an original text, the same text after an AI rewrote it, and the instruction the AI "
        "was given. Reply with the instruction for the last example only: one short sentence.\n\n"
        "Original text: The cat sat.\nRewritten text: Arr, the pirate cat sat, matey.\nInstruction: Rewrite as a pirate.\n\n"
        "Original text: See you at the office.\nRewritten text: I shall see you at the office; formal regards.\n"
        "Instruction: Make it formal.\n\n"
        "Original text: Hi.\nRewritten text: Hello there.\nInstruction:"
    )
    assert text == completion_prompt([Example("The cat sat.", "Arr, the pirate cat sat, matey.", "Rewrite as a pirate."),
                                      Example("See you at the office.", "I shall see you at the office; formal regards.",
                                              "Make it formal.")], "Hi.", "Hello there.")
    method.predict(pd.DataFrame({"original_text": ["Hi."], "rewritten_text": ["Hello there."]}))
    assert method.generator.settings.stop == ("\n",)


def test_head_tail_keeps_head_and_tail():
    words = " ".join(f"w{i}" for i in range(10))
    assert head_tail(words, 4) == "w0 w1 [...] w8 w9"
    assert head_tail(words, 5) == "w0 w1 w2 [...] w8 w9"
    assert head_tail(words, 10) == words
    assert head_tail(words, 0) == words
    chars = "abcdefghij"  # any tokenizer: characters here
    assert head_tail(chars, 4, list, "".join) == "ab [...] ij"


def test_truncation_budget_applies_to_examples_and_query():
    method = _method(BaseGenerator(), k=1, selection="fixed", fixed_ids=["t3"], example_tokens=2, query_tokens=3,
                     select_fallback=False)
    method.fit(_triples())
    text = method.inputs(pd.DataFrame({"original_text": ["a b c d e"], "rewritten_text": ["v w x y z"]}))[0]
    assert "Original text: Long [...] cat.\nRewritten text: Summary: [...] cat.\nInstruction: Write a summary." in text
    assert text.endswith("Original text: a b [...] e\nRewritten text: v w [...] z\nInstruction:")


def test_retrieval_returns_right_neighbours():
    index = ExampleIndex.build(_triples(), BagOfWords().encode)
    from promptrec.methods.fewshot import pair_embeddings

    rew, diff = pair_embeddings(BagOfWords().encode, ["The sea.", "An office note."], ["Pirate sea, arr pirate.", "Formal office memo."])
    nearest = index.neighbours(rew, diff, k=2, diff_weight=0.5)
    assert nearest.shape == (2, 2)
    assert set(index.examples["id"][nearest[0]]) == {"t0", "t4"}  # the two pirate rewrites
    assert index.examples["id"][nearest[1][0]] == "t2"  # the formal office rewrite first


def test_retrieved_shots_put_the_closest_example_last():
    method = _method(k=2, select_fallback=False)
    method.fit(_triples())
    shots = method.shots(pd.DataFrame({"original_text": ["Office."], "rewritten_text": ["Formal office formal."]}))
    assert [e.prompt for e in shots[0]][-1] == "Make it formal."
    assert len(shots[0]) == 2


def test_fixed_examples_picked_by_fit_are_distinct_prompts():
    method = _method(k=3, selection="fixed", select_fallback=False)
    method.fit(_triples())
    prompts = [method.index.examples.set_index("id").loc[i, "rewrite_prompt"] for i in method.fixed_ids]
    assert len(method.fixed_ids) == 3 and len(set(prompts)) == 3


MESSY = [
    ("Rewrite the text as a pirate.", "Rewrite the text as a pirate."),
    ('"Make it more formal."\nOriginal text: blah', "Make it more formal."),
    ("Instruction: Turn it into a haiku.", "Turn it into a haiku."),
    ("**Prompt:** \"Summarize the email.\"", "Summarize the email."),
    ("  \n\nThe instruction was: write it as a poem<|im_end|>", "Write it as a poem"),
    ("Rewrite prompt - 'Explain it to a child'", "Explain it to a child"),
    ("1. Convert to bullet points\n2. Add emojis", "Convert to bullet points"),
    ("- make it sound like Shakespeare", "Make it sound like Shakespeare"),
    ("\u201cTranslate it into French.\u201d", "Translate it into French."),
    ("Answer: Make it shorter.<end_of_turn>\n<start_of_turn>user", "Make it shorter."),
    ("", ""),
    ("   \n  ", ""),
    ('""', ""),
    ("Instruction:", ""),
    ("12345 ...", ""),
    ("word " * 60, ""),  # a copied text, not an instruction
    ('The original text: The show "Ruff and Reddy" made its debut in 1957', ""),  # echoes the template
    ("Rewritten text: Arr, matey.", ""),
]


@pytest.mark.parametrize("raw,expected", MESSY)
def test_parse_messy_generations(raw, expected):
    assert capitalize(parse_generation(raw)) == expected


def test_never_blank_falls_back_to_best_constant():
    generator = ChatMLGenerator(["", "Instruction: \"\"", "Make it a poem please."])
    method = _method(generator, k=1)
    method.fit(_triples())
    assert method.fallback_prompt == "Rewrite as a pirate."  # the only prompt occurring twice
    pairs = pd.DataFrame({"original_text": ["a", "b", "c"], "rewritten_text": ["x", "y", "z"]})
    assert method.predict(pairs) == ["Rewrite as a pirate.", "Rewrite as a pirate.", "Make it a poem please."]
    assert method.fallbacks == 2


def test_constant_fallback_without_selection():
    method = _method(ChatMLGenerator(["???"]), k=1, select_fallback=False, fallback_prompt="Improve the text.")
    method.fit(_triples())
    assert method.predict(pd.DataFrame({"original_text": ["a"], "rewritten_text": ["b"]})) == ["Improve the text."]


def test_predict_before_fit_is_a_one_line_error():
    with pytest.raises(DataError, match="fit it first"):
        _method().predict(pd.DataFrame({"original_text": ["a"], "rewritten_text": ["b"]}))


def test_bad_options_are_rejected():
    with pytest.raises(DataError, match="selection"):
        FewShotMethod(FewShotConfig(selection="random"))
    with pytest.raises(DataError, match="fewshot: k must be at least 1, not 0"):
        from_name("fewshot", k=0)
    with pytest.raises(DataError, match=r"fewshot: diff_weight must lie in \[0, 1\], not 1.5"):
        from_name("fewshot", diff_weight=1.5)
    with pytest.raises(DataError, match="unknown option 'kk'"):
        from_name("fewshot", kk=3)


def test_save_load_round_trip(tmp_path):
    triples = _triples()
    triples.loc[3, "rewritten_text"] = "Summary:\n\u2028dog, \"cat\"\r\nand\x85 more."  # separators real data has
    method = _method(k=2, selection="fixed")
    method.fit(triples)
    method.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["examples.csv", "index.safetensors", "method.json"]
    loaded = load_method(tmp_path)
    assert isinstance(loaded, FewShotMethod)
    assert loaded.config == method.config
    assert loaded.fixed_ids == method.fixed_ids and len(method.fixed_ids) == 2
    assert loaded.fallback_prompt == method.fallback_prompt == "Rewrite as a pirate."
    saved = json.loads((tmp_path / "method.json").read_text(encoding="utf-8"))
    assert saved["config"]["fixed_ids"] == [] and saved["config"]["fallback_prompt"] == FALLBACK_PROMPT
    assert saved["state"] == {"fixed_ids": method.fixed_ids, "fallback_prompt": "Rewrite as a pirate."}
    pd.testing.assert_frame_equal(loaded.index.examples, method.index.examples)
    np.testing.assert_array_equal(loaded.index.rewritten_emb, method.index.rewritten_emb)
    np.testing.assert_array_equal(loaded.index.diff_emb, method.index.diff_emb)
    loaded.embedder, loaded.generator = BagOfWords(), ChatMLGenerator()
    pairs = pd.DataFrame({"original_text": ["a cat"], "rewritten_text": ["a pirate cat"]})
    assert loaded.inputs(pairs) == method.inputs(pairs)


def test_refit_of_a_loaded_method_relearns_fixed_examples_and_fallback(tmp_path):
    method = _method(k=2, selection="fixed")
    method.fit(_triples())
    method.save(tmp_path)
    loaded = load_method(tmp_path)
    loaded.embedder, loaded.generator = BagOfWords(), ChatMLGenerator()
    fresh = pd.DataFrame([
        ("n0", "The office.", "Make it formal.", "The office, formal."),
        ("n1", "The dog.", "Make it a poem.", "A dog poem, a poem."),
        ("n2", "Hi.", "Make it formal.", "Formal greetings."),
    ], columns=["id", "original_text", "rewrite_prompt", "rewritten_text"])
    loaded.fit(fresh)  # the old ids (t*) are not in these rows: a stale pick would fail or show old examples
    assert sorted(loaded.fixed_ids) == ["n0", "n1"] and loaded.config.fixed_ids == []
    assert loaded.fallback_prompt == "Make it formal."
    shots = loaded.shots(pd.DataFrame({"original_text": ["a"], "rewritten_text": ["b"]}))[0]
    assert sorted(e.prompt for e in shots) == ["Make it a poem.", "Make it formal."]


def test_configured_fixed_id_missing_from_the_data_fails_at_fit():
    with pytest.raises(DataError, match="fewshot: fixed example id 'zz' is not in the training set"):
        _method(k=1, selection="fixed", fixed_ids=["zz"]).fit(_triples())


@pytest.mark.slow
def test_packaged_smollm2_end_to_end(tmp_path):
    """Real SmolLM2 GGUF through llama.cpp: its chat template, and one non-blank prediction per row."""
    from promptrec.llm.base import load_generator

    method = FewShotMethod(FewShotConfig(k=2, max_new_tokens=16, example_tokens=32, query_tokens=48))
    method.embedder = BagOfWords()
    method.generator = load_generator("smollm2", n_threads=1)
    assert method.uses_chat()
    method.fit(_triples())
    pairs = pd.DataFrame({"original_text": ["The cat sat.", "The dog ran."],
                          "rewritten_text": ["Arr, the cat be sittin', pirate style.", "The dog ran, formal office."]})
    text = method.inputs(pairs)[0]
    assert text.startswith("<|im_start|>system\nEach example shows") and text.endswith("<|im_start|>assistant\n")
    predictions = method.predict(pairs)
    assert len(predictions) == 2 and all(p.strip() for p in predictions)


def test_shipped_original_config_asks_for_mistral_through_transformers(monkeypatch):
    from pathlib import Path

    from promptrec.methods.base import load_config_file

    calls = []
    monkeypatch.setattr("promptrec.llm.base.load_generator",
                        lambda model, backend=None, **options: calls.append((model, backend, options)) or "loaded")
    method = from_name("fewshot", **load_config_file(Path(__file__).parents[1] / "configs" / "fewshot_original.yaml"))
    assert method.load_generator() == "loaded"
    assert calls == [("mistralai/Mistral-7B-Instruct-v0.2", "hf", {})]


def test_example_budget_defaults_by_selection_and_keeps_a_given_one():
    assert FewShotMethod(FewShotConfig()).config.example_tokens == 64
    assert FewShotMethod(FewShotConfig(selection="fixed")).config.example_tokens == 128
    assert FewShotMethod(FewShotConfig(selection="fixed", example_tokens=32)).config.example_tokens == 32
