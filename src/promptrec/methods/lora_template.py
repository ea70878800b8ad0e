"""The template of method lora: the instruction a pair is rendered into and the labelled training example.

Used by `lora` to generate and by `lora_train` to train, so both read a pair the same way. `config` is the lora
method's `LoraConfig` (text_tokens, chat_template, prompt_tokens).
"""

from __future__ import annotations

from promptrec.llm.templates import head_tail

IGNORE = -100  # label value the causal-LM loss skips

INSTRUCTION = (
    "An LLM was given a text and an instruction and rewrote the text.\n"
    "Original text:\n{original}\n\nRewritten text:\n{rewritten}\n\n"
    "Write the instruction it was given, in one line."
)
PLAIN_SUFFIX = "\nInstruction:\n"  # ends the instruction for tokenizers without a chat template


def truncate(tokenizer, text: str, budget: int) -> str:
    """`text` cut to `budget` tokens of `tokenizer`, head and tail kept (`templates.head_tail`)."""
    return head_tail(text, budget, lambda t: tokenizer(t, add_special_tokens=False)["input_ids"], tokenizer.decode)


def render_input(tokenizer, original: str, rewritten: str, config) -> list[int]:
    """Token ids of the instruction for one pair, ending where the prompt starts."""
    text = INSTRUCTION.format(original=truncate(tokenizer, original, config.text_tokens),
                              rewritten=truncate(tokenizer, rewritten, config.text_tokens))
    if config.chat_template and tokenizer.chat_template:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return tokenizer(text + PLAIN_SUFFIX, add_special_tokens=True)["input_ids"]


def encode_example(tokenizer, original: str, rewritten: str, prompt: str, config) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one training row: labels are -100 except on the prompt tokens and EOS."""
    context = render_input(tokenizer, original, rewritten, config)
    one_line = " ".join(prompt.split())
    target = tokenizer(one_line, add_special_tokens=False)["input_ids"][: config.prompt_tokens] + [tokenizer.eos_token_id]
    return context + target, [IGNORE] * len(context) + target
