"""LLM backends: templates, registry, transformers on a tiny random model, packaged GGUFs, vLLM guard."""

from __future__ import annotations

import importlib.util

import pytest

from promptrec.data import DataError
from promptrec.llm.base import BACKENDS, GenerationSettings, cut_at_stop, default_backend, load_generator
from promptrec.models import OFFLINE_LLMS
from promptrec.llm.templates import FEWSHOT_STOP, chat_messages, fewshot_prompt

GREEDY = GenerationSettings(max_new_tokens=6, temperature=0.0)


def test_chat_template_puts_text_first_and_instruction_last():
    assert chat_messages("The cat sat.", "Make it rhyme.") == [
        {"role": "user", "content": "Text:\nThe cat sat.\n\nRewrite the text above. Instruction: Make it rhyme."}
    ]


def test_fewshot_template_exact_string():
    prompt = fewshot_prompt("The cat sat.", "Make it rhyme.", examples=[("Hi there.", "Be formal.", "Good day.")])
    assert prompt == (
        "Text:\nHi there.\nInstruction: Be formal.\nRewritten text:\nGood day.\n\n"
        "Text:\nThe cat sat.\nInstruction: Make it rhyme.\nRewritten text:\n"
    )
    # the built-in examples are a shared prefix: two requests differ only after it
    a, b = fewshot_prompt("One.", "X"), fewshot_prompt("Two.", "Y")
    assert a[: a.index("Text:\nOne.")] == b[: b.index("Text:\nTwo.")]
    assert a.count("Rewritten text:\n") == 3


def test_cut_at_stop():
    assert cut_at_stop("a poem\nText:\nnext", FEWSHOT_STOP) == "a poem"
    assert cut_at_stop("x\nInstruction: y\nText: z", FEWSHOT_STOP) == "x"
    assert cut_at_stop("no stop here", ()) == "no stop here"


def test_registry_and_unknown_backend():
    assert set(BACKENDS) == {"llamacpp", "hf", "vllm"}
    with pytest.raises(DataError, match="unknown LLM backend 'nope'.*hf, llamacpp, vllm"):
        load_generator("x", backend="nope")


def test_default_backend_by_model_name():
    assert [default_backend(m) for m in OFFLINE_LLMS] == ["llamacpp", "llamacpp"]
    assert default_backend("/models/tiny.Q4_0.gguf") == "llamacpp"
    assert default_backend("mistralai/Mistral-7B-Instruct-v0.2") == "hf"
    assert default_backend("./my-model-folder") == "hf"


def test_unknown_backend_option_is_one_line(tiny_llama_dir):
    with pytest.raises(DataError, match="backend 'hf': got an unexpected keyword argument 'parallel'"):
        load_generator(str(tiny_llama_dir), backend="hf", parallel=4)


def test_vllm_is_import_guarded(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(DataError) as caught:
        load_generator("google/gemma-7b-it", backend="vllm")
    message = str(caught.value)
    assert message == "optional dependency 'vllm' is missing; install it with: pip install vllm  (needs a CUDA GPU)"
    assert "\n" not in message


@pytest.fixture(scope="module")
def tiny_hf(tiny_llama_dir):
    return load_generator(str(tiny_llama_dir), backend="hf", batch_size=2, device="cpu")


def test_hf_chat_template_from_tokenizer(tiny_hf):
    assert tiny_hf.has_chat_template
    rendered = tiny_hf.render_chat(chat_messages("A b.", "Do c."))
    assert rendered == "<|user|>Text:\nA b.\n\nRewrite the text above. Instruction: Do c.\n<|assistant|>"


def test_hf_batched_left_padded_matches_one_at_a_time(tiny_hf):
    prompts = ["Rewrite this text", "The meeting was moved to Thursday because", "Make"]  # uneven lengths
    batched = tiny_hf.generate(prompts, GREEDY)
    single = [tiny_hf.generate([p], GREEDY)[0] for p in prompts]
    assert len(batched) == 3 and all(isinstance(t, str) for t in batched)
    assert batched == single  # left padding + attention mask leave greedy outputs unchanged
    stats = tiny_hf.last_stats
    assert stats["prompt_tokens"] == tiny_hf.count_tokens("Make")
    assert 0 <= stats["gen_tokens"] <= GREEDY.max_new_tokens


def test_hf_sampling_is_seeded_and_stops(tiny_hf):
    settings = GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=7)
    first = tiny_hf.generate(["The meeting", "Turn this"], settings)
    assert tiny_hf.generate(["The meeting", "Turn this"], settings) == first
    stopped = tiny_hf.generate(["The meeting"], GenerationSettings(max_new_tokens=12, temperature=1.0, seed=7, stop=("e",)))
    assert "e" not in stopped[0]


def test_hf_shared_prefix_is_evaluated_once(tiny_hf):
    from promptrec.llm.hf import shared_prefix

    shared = "Rewrite this text as a pirate would say it. " * 3
    prompts = [shared + "The meeting", shared + "Turn this into a poem"]
    outputs = tiny_hf.generate(prompts, GREEDY)
    prefix = shared_prefix([tiny_hf.tokenize(p) for p in prompts])
    assert prefix > 20
    assert tiny_hf.last_stats["prompt_tokens"] == sum(tiny_hf.count_tokens(p) for p in prompts) - prefix
    assert outputs == [tiny_hf.generate([p], GREEDY)[0] for p in prompts]  # the cached prefix changes no output


def test_hf_tokenize_adds_no_special_tokens_and_round_trips(tiny_mistral_dir):
    generator = load_generator(str(tiny_mistral_dir), backend="hf", device="cpu")
    text = "Make the text more formal."
    ids = generator.tokenize(text)
    assert generator.tokenizer(text)["input_ids"] == [generator.tokenizer.bos_token_id, *ids]  # the model adds BOS
    assert generator.detokenize(ids) == text
    assert generator.count_tokens(text) == len(ids)
    rendered = generator.render_chat([{"role": "user", "content": text}])
    assert rendered == "<s>[INST] Make the text more formal. [/INST]"
    assert generator._encode(rendered).count(generator.tokenizer.bos_token_id) == 1  # its template holds the BOS


def test_hf_base_model_refuses_chat(tiny_llama_dir, tmp_path):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_llama_dir, base)
    (base / "chat_template.jinja").unlink()
    generator = load_generator(str(base), backend="hf")
    assert not generator.has_chat_template
    with pytest.raises(DataError, match="no chat template .*fewshot_prompt"):
        generator.render_chat([{"role": "user", "content": "hi"}])


def test_hf_missing_model_is_one_line(tmp_path):
    with pytest.raises(DataError, match="cannot load a causal LM"):
        load_generator(str(tmp_path / "absent"), backend="hf")


# --- packaged GGUFs through llama.cpp ---------------------------------------------------------------

REQUESTS = ["Say hello to the team.", "Say goodbye to the team."]


@pytest.fixture(scope="module")
def smollm2():
    # without the prefix cache: a reused KV prefix changes logits slightly, so seeded samples could differ
    return load_generator("smollm2", n_ctx=512, n_threads=1, prefix_cache=False)


@pytest.mark.slow
def test_smollm2_chat_template_from_gguf(smollm2):
    assert smollm2.name == "smollm2" and smollm2.has_chat_template
    rendered = smollm2.render_chat([{"role": "user", "content": "Hi"}])
    assert rendered == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.slow
def test_smollm2_tokenize_round_trips_without_special_tokens(smollm2):
    ids = smollm2.tokenize("Hello there, team.")
    assert all(isinstance(i, int) for i in ids) and smollm2.count_tokens("Hello there, team.") == len(ids)
    assert smollm2.detokenize(ids) == "Hello there, team."
    assert smollm2.detokenize(smollm2.tokenize("A b") + smollm2.tokenize(" c")) == "A b c"
    marker = smollm2.tokenize("<|im_start|>")  # text of a special token is read as plain text, not its id
    assert len(marker) > 1 and smollm2.detokenize(marker) == "<|im_start|>"


@pytest.mark.slow
def test_smollm2_threads_follow_promptrec_threads(monkeypatch):
    monkeypatch.setenv("PROMPTREC_THREADS", "2")
    generator = load_generator("smollm2", n_ctx=256)
    assert generator.llm.context_params.n_threads == 2 and generator.llm.context_params.n_threads_batch == 2
    assert load_generator("smollm2", n_ctx=256, n_threads=1).llm.context_params.n_threads == 1


@pytest.mark.slow
def test_smollm2_generates_and_reports_stats(smollm2):
    prompts = [smollm2.render_chat([{"role": "user", "content": r}]) for r in REQUESTS]
    outputs = smollm2.generate(prompts, GenerationSettings(max_new_tokens=8, temperature=0.7, seed=3))
    assert len(outputs) == 2 and all(o.strip() for o in outputs)
    stats = smollm2.last_stats
    assert stats["gen_tokens"] >= 2 and stats["gen_ms"] > 0 and stats["total_ms"] > 0
    assert smollm2.generate(prompts, GenerationSettings(max_new_tokens=8, temperature=0.7, seed=3)) == outputs


@pytest.mark.slow
def test_prefix_cache_evaluates_a_shared_prefix_once():
    shared = fewshot_prompt("The first text.", "Be brief.")
    prompts = [shared, shared.replace("The first text.", "Another text.")]
    evaluated = {}
    for cache in (False, True):
        generator = load_generator("smollm2", n_ctx=512, n_threads=1, prefix_cache=cache)
        generator.generate(prompts, GenerationSettings(max_new_tokens=1))
        evaluated[cache] = generator.last_stats["prompt_tokens"]
    full = sum(generator.count_tokens(p) for p in prompts)
    assert evaluated[False] >= full
    assert evaluated[True] < evaluated[False] - 100  # the few-shot examples (> 100 tokens) ran once


@pytest.mark.slow
def test_smollm2_parallel_batches_with_shared_prefix(smollm2):
    batched = load_generator("smollm2", n_ctx=512, n_threads=1, parallel=2)
    prompts = [batched.render_chat([{"role": "user", "content": r}]) for r in REQUESTS * 2]
    outputs = batched.generate(prompts, GenerationSettings(max_new_tokens=6, temperature=0.0))
    assert len(outputs) == 4 and all(o.strip() for o in outputs)
    assert outputs[0] == outputs[2] and outputs[1] == outputs[3]  # same prompt, greedy: same text in any slot
    stats = batched.last_stats
    assert stats["prompt_tokens"] < sum(batched.count_tokens(p) for p in prompts) - 3 * 20  # system prompt once
    assert 4 <= stats["gen_tokens"] <= 4 * 6


@pytest.mark.slow
def test_requantized_copy_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTREC_CACHE", str(tmp_path))
    generator = load_generator("smollm2", n_ctx=256, n_threads=1, quant="q4_0")
    assert generator.name == "smollm2@q4_0"
    assert (tmp_path / "gguf" / "SmolLM2-135M-Instruct.Q4_1.q4_0.gguf").is_file()
    assert generator.generate(["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"], GREEDY)[0].strip()
    with pytest.raises(DataError, match="quant 'q3': choose one of q4_0, q8_0"):
        load_generator("smollm2", quant="q3")


@pytest.mark.slow
def test_gemma_base_model_uses_the_completion_template():
    gemma = load_generator("gemma3-270m", n_ctx=512, n_threads=1)
    assert not gemma.has_chat_template
    with pytest.raises(DataError, match="gemma3-270m: no chat template in the GGUF"):
        gemma.render_chat([{"role": "user", "content": "hi"}])
    settings = GenerationSettings(max_new_tokens=24, temperature=0.7, seed=1, stop=FEWSHOT_STOP)
    (output,) = gemma.generate([fewshot_prompt("The shop opens at nine.", "Say it like a pirate.")], settings)
    assert "\nText:" not in output and "\nInstruction:" not in output
