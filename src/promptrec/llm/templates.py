"""Rewrite templates as plain strings: a chat message for instruct models, a few-shot completion for base models.

Small LLMs copy the text back when the instruction comes first, so the text goes first and the
instruction last, right before the model answers.
"""

from __future__ import annotations

from typing import Callable, Sequence

ELLIPSIS = " [...] "  # joins the head and tail of a text cut to its token budget


def head_tail(text: str, budget: int, encode: Callable[[str], list] = str.split,
              decode: Callable[[list], str] = " ".join) -> str:
    """`text` cut to `budget` tokens (words by default), keeping its head and tail joined by ELLIPSIS: the head
    shows lead-ins and titles, the tail the requested form. A budget of 0 keeps the whole text."""
    tokens = encode(text)
    if budget <= 0 or len(tokens) <= budget:
        return text
    head = (budget + 1) // 2
    return decode(tokens[:head]).rstrip() + ELLIPSIS + decode(tokens[len(tokens) - (budget - head):]).lstrip()

# The user turn of a chat rewrite request.
CHAT_REWRITE = "Text:\n{text}\n\nRewrite the text above. Instruction: {prompt}"

# One solved example of the completion template; the request repeats it with the rewrite left open.
FEWSHOT_EXAMPLE = "Text:\n{text}\nInstruction: {prompt}\nRewritten text:\n{rewritten}\n\n"
FEWSHOT_REQUEST = "Text:\n{text}\nInstruction: {prompt}\nRewritten text:\n"
# A completion ends where the model starts the next example.
FEWSHOT_STOP = ("\nText:", "\nInstruction:")

# Built-in examples for base models: short, varied, each clearly unlike its original.
FEWSHOT_EXAMPLES: tuple[tuple[str, str, str], ...] = (
    (
        "The meeting has been moved to Thursday because the projector is broken.",
        "Rewrite this as a pirate would say it.",
        "Arr, the gatherin' be shifted to Thursday, for the cursed projector be broken!",
    ),
    (
        "I went to the store and bought apples, bread and milk.",
        "Turn this into a short poem.",
        "To the store I went one day,\nApples, bread and milk to weigh.",
    ),
)


def chat_messages(text: str, prompt: str) -> list[dict[str, str]]:
    """The chat messages asking an instruct model to apply `prompt` to `text`."""
    return [{"role": "user", "content": CHAT_REWRITE.format(text=text, prompt=prompt)}]


def fewshot_prompt(
    text: str, prompt: str, examples: Sequence[tuple[str, str, str]] = FEWSHOT_EXAMPLES
) -> str:
    """A completion prompt for a base model: solved (text, prompt, rewritten) examples, then the request.

    The examples come first and are identical across requests, so a prefix cache evaluates them once.
    """
    shots = "".join(FEWSHOT_EXAMPLE.format(text=t, prompt=p, rewritten=r) for t, p, r in examples)
    return shots + FEWSHOT_REQUEST.format(text=text, prompt=prompt)
