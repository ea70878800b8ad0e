"""Rewrite prompts this project wrote: readable templates ("Rewrite this as a {form}.") filled from slot lists.

A decoding bank of the training prompts alone can only answer with the training set's own instructions; these
add the common kinds of rewrite instruction (forms, tones, styles and voices, audiences, edits) in plain
phrasings, so a prediction between two training prompts can land on a readable prompt that names its kind.
Written from general knowledge of rewriting tasks, not copied from any data set.
"""

from __future__ import annotations

import re
from functools import lru_cache
from itertools import product

FORMS = (
    "poem", "haiku", "limerick", "sonnet", "song", "rap song", "ballad", "nursery rhyme", "epic poem", "free verse poem",
    "tweet", "social media post", "Instagram caption", "Facebook post", "LinkedIn post", "Reddit post", "text message",
    "email", "formal letter", "love letter", "cover letter", "apology letter", "thank-you note", "postcard",
    "birthday card", "diary entry", "blog post", "newsletter", "news article", "headline", "press release",
    "magazine article", "opinion piece", "editorial", "essay", "persuasive essay", "summary", "short summary",
    "bullet-point list", "step-by-step guide", "how-to guide", "recipe", "instruction manual", "user guide", "FAQ",
    "quiz", "riddle", "joke", "pun", "story", "short story", "children's story", "bedtime story", "fairy tale",
    "fable", "myth", "legend", "horror story", "ghost story", "mystery story", "detective story", "thriller",
    "romance novel excerpt", "science fiction story", "fantasy tale", "adventure story", "historical fiction",
    "comedy sketch", "stand-up comedy routine", "satire", "parody", "screenplay scene", "movie script",
    "movie trailer", "theater play", "dialogue", "conversation", "interview", "debate", "speech",
    "motivational speech", "political speech", "sermon", "eulogy", "wedding toast", "lecture", "lesson plan",
    "textbook passage", "encyclopedia entry", "dictionary definition", "scientific abstract", "research paper",
    "lab report", "technical report", "legal contract", "legal document", "police report", "medical report",
    "business proposal", "business memo", "meeting minutes", "job posting", "resume", "product description",
    "advertisement", "commercial", "slogan", "marketing pitch", "sales pitch", "travel brochure", "travel guide",
    "restaurant review", "movie review", "book review", "product review", "weather report", "sports commentary",
    "radio broadcast", "podcast script", "YouTube video script", "horoscope", "prophecy", "manifesto",
    "obituary", "customer complaint", "public announcement", "warning label", "to-do list", "shopping list",
)
TONES = (
    "formal", "informal", "casual", "professional", "friendly", "humorous", "funny", "sarcastic", "ironic", "serious",
    "optimistic", "pessimistic", "dramatic", "romantic", "mysterious", "suspenseful", "melancholic", "sad",
    "cheerful", "happy", "angry", "excited", "enthusiastic", "whimsical", "poetic", "academic", "scientific",
    "persuasive", "inspirational", "motivational", "nostalgic", "ominous", "dark", "playful", "neutral",
    "empathetic", "urgent", "calm", "polite", "rude", "confident", "humble", "passionate", "childlike", "mature",
)
ADJECTIVES = (
    "formal", "casual", "concise", "detailed", "simple", "complex", "engaging", "persuasive", "descriptive", "vivid",
    "emotional", "professional", "polite", "friendly", "exciting", "dramatic", "funny", "positive", "negative",
    "poetic", "academic", "technical", "clear", "readable", "suspenseful", "mysterious", "romantic", "optimistic",
    "inclusive", "modern", "old-fashioned", "elegant", "polished", "lively", "serious", "interesting",
)
VOICES = (
    "Shakespeare", "Edgar Allan Poe", "Jane Austen", "Ernest Hemingway", "Mark Twain", "Dr. Seuss", "Charles Dickens",
    "J.R.R. Tolkien", "Stephen King", "Oscar Wilde", "Agatha Christie", "Emily Dickinson", "Walt Whitman",
    "Lewis Carroll", "George Orwell", "H.P. Lovecraft", "Homer", "a pirate", "a cowboy", "a medieval knight",
    "a Victorian aristocrat", "a valley girl", "a robot", "Yoda", "a sports commentator", "a news anchor",
    "a teenager", "a grandmother", "a detective", "a scientist", "a lawyer", "a chef", "a kindergarten teacher",
    "an alien", "a superhero", "a villain", "a politician", "a salesperson", "a tour guide", "a drill sergeant",
    "a philosopher", "a poet", "a comedian", "a child", "a wizard", "a vampire", "a hippie", "a surfer",
    "a gangster", "a butler",
)
AUDIENCES = (
    "a five-year-old", "children", "teenagers", "college students", "beginners", "experts", "a general audience",
    "business executives", "scientists", "senior citizens", "tourists", "customers", "employees", "investors",
    "parents", "teachers", "doctors", "engineers", "a job interview", "social media",
)
REGISTERS = ("simple English", "plain English", "Old English", "Shakespearean English", "modern slang",
             "pirate speak", "Gen Z slang", "emojis", "legal jargon", "corporate jargon", "medical terminology")
EDITS = (
    "Summarize this text.", "Shorten this text.", "Expand this text with more details.", "Simplify this text.",
    "Paraphrase this text.", "Proofread and correct this text.", "Make this text more concise.",
    "Rewrite this text in the first person.", "Rewrite this text in the third person.",
    "Rewrite this text in the past tense.", "Rewrite this text in the future tense.",
    "Rewrite this text from the opposite point of view.", "Rewrite this text with the opposite meaning.",
    "Rewrite this text as a series of questions.", "Rewrite this text without using the letter e.",
    "Add a plot twist to this text.", "Add humor to this text.", "Add more emotion to this text.",
    "Add a happy ending to this text.", "Add a moral to this story.", "Remove all the jargon from this text.",
)
FORM_FRAMES = (
    "Rewrite this text as a {}.", "Convert this into a {}.", "Transform this into a {}.", "Turn this into a {}.",
    "Rewrite this as if it were a {}.", "Reimagine this as a {}.", "Rephrase this as a {}.", "Adapt this into a {}.",
)
TONE_FRAMES = ("Rewrite this text in a {} tone.", "Rephrase this in a {} tone.", "Make the tone of this text {}.")
ADJECTIVE_FRAMES = ("Make this text more {}.", "Rewrite this to be more {}.")
VOICE_FRAMES = ("Rewrite this text in the style of {}.", "Rewrite this as if it were written by {}.",
                "Rewrite this from the perspective of {}.", "Rewrite this as if spoken by {}.")
AUDIENCE_FRAMES = ("Rewrite this text for {}.", "Explain this to {}.", "Rewrite this so that {} would understand it.")
REGISTER_FRAMES = ("Rewrite this in {}.", "Translate this into {}.")


_VOWEL_SOUND = re.compile(r"\ba (?=[aeio]|u(?!s|ni))", re.IGNORECASE)  # "a user guide" keeps its "a"


def articled(text: str) -> str:
    """`text` with "a" before a vowel sound turned into "an"."""
    return _VOWEL_SOUND.sub("an ", text)


@lru_cache(maxsize=1)
def written_prompts() -> tuple[str, ...]:
    """Every written prompt (7,346), in a fixed order with no duplicates."""
    filled = [f.format(x) for frames, slot in ((FORM_FRAMES, FORMS), (TONE_FRAMES, TONES), (ADJECTIVE_FRAMES, ADJECTIVES),
                                               (VOICE_FRAMES, VOICES), (AUDIENCE_FRAMES, AUDIENCES),
                                               (REGISTER_FRAMES, REGISTERS)) for f, x in product(frames, slot)]
    filled += [f"Rewrite this as a {form} in a {tone} tone." for form, tone in product(FORMS, TONES)]
    return tuple(dict.fromkeys(articled(p) for p in filled + list(EDITS)))
