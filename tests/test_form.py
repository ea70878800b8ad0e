"""Method `form`: exact form features of hand-written rewrites, and prompt clusters decoded from the form alone."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file, save_file

from promptrec.data import DataError
from promptrec.methods.base import from_name, load_method
from promptrec.methods.form import FORM_FEATURES, WEIGHTS_FILE, FormMethod, form_features, form_matrix

COUPLETS = ("The night is dark and deep,\nThe stars above me sleep.\n"
            "The moon is shining bright,\nAnd fills the world with light.")
ALTERNATE = "I walked along the bay,\nBeneath the silver light,\nAnd there I found my way,\nAnd sang into the night."


def test_social_post_counts():
    f = form_features("The city opened a new park.",
                      "Love the new park! 🌳🌞 #sunday #outdoors thanks @city_council, a@b.c")
    assert (f["emojis"], f["hashtags"], f["mentions"], f["exclamations"], f["questions"]) == (2, 2, 1, 1, 0)
    # words: love the new park sunday outdoors thanks city council a b c (12) against 6 original words
    assert f["words"] == 12 and f["length_ratio"] == 2.0
    assert f["sentiment"] == pytest.approx(1 / 12) and f["sentiment_shift"] == pytest.approx(1 / 12)  # "love"
    assert f["word_overlap"] == pytest.approx(5 / 13)  # the new park city a, of 12 + 6 - 5 distinct words


def test_verse_lines_and_end_rhyme():
    couplets, alternate = form_features("It was night.", COUPLETS), form_features("", ALTERNATE)
    assert (couplets["lines"], couplets["verse_lines"]) == (4, 4)
    assert couplets["rhyme_share"] == pytest.approx(2 / 3)  # deep-sleep, bright-light; sleep: neither later line
    assert alternate["rhyme_share"] == pytest.approx(2 / 3)  # bay-way, light-night (one line apart)
    assert couplets["first_singular"] == pytest.approx(1 / 22)  # "me"
    prose = form_features("", "The cat sat on the mat in the warm afternoon sun all day long.\nThen it slept.")
    assert (prose["verse_lines"], prose["rhyme_share"]) == (1, 0.0)  # an 11-word line is not verse


def test_lists_headings_dialogue_and_questions():
    recipe = "## Steps\n1. Boil the water.\n2) Add the pasta.\nStep 3: Stir well.\n\n- Salt\n* Oil\n• Cheese\n**Tips**"
    f = form_features("", recipe)
    assert (f["lines"], f["headings"], f["numbered"], f["bullets"], f["verse_lines"]) == (8, 2, 3, 3, 0)
    play = ("Title: A Talk\nAlice: Where is the key?\nBob: I left it on the table!\nDr. Smith: Thanks.\n"
            "Q: Is it late?\nA: Yes.\nQuestion 2: Why?\nAnswer 2: Because.\nNote: none")
    f = form_features("", play)
    assert (f["headings"], f["dialogue"], f["qa_pairs"], f["questions"], f["exclamations"]) == (1, 3, 2, 3, 1)


def test_lexicons_contractions_capitals_and_reading_level():
    assert form_features("", "Thou art fair, and thy heart doth sing; hath thee no fear?")["archaic"] == 5
    assert form_features("", "Arr, matey! Ye be sailin' the seas, aye. Arrange the arrows.")["pirate"] == 4
    slang = form_features("I am sure.", "Y’all gonna love it, ain't that right? I'm kinda sure.")
    assert slang["slang"] == 4  # y'all gonna ain't kinda (curly apostrophe read as straight)
    assert slang["contractions"] == pytest.approx(2 / 10) and slang["formality_shift"] == pytest.approx(-0.2)
    f = form_features("The cat sat.", "ABC def. We saw you.")
    assert f["capitals"] == pytest.approx(4 / 14) and f["first_plural"] == 0.2 and f["second_person"] == 0.2
    assert f["sentence_words"] == 2.5
    # Flesch-Kincaid: 0.39 * words/sentence + 11.8 * syllables/word - 15.59; "The cat sat." is 3 one-syllable words
    assert form_features("", "The cat sat.")["reading_level"] == pytest.approx(0.39 * 3 + 11.8 - 15.59)
    assert f["reading_shift"] == pytest.approx(f["reading_level"] - (0.39 * 3 + 11.8 - 15.59))


def test_form_matrix_columns_and_missing_texts():
    pairs = pd.DataFrame({"original_text": ["It was night.", None], "rewritten_text": [COUPLETS, float("nan")]})
    matrix = form_matrix(pairs)
    assert matrix.shape == (2, len(FORM_FEATURES)) and matrix.dtype == np.float32
    assert matrix[0, FORM_FEATURES.index("verse_lines")] == 4 and not matrix[1].any()
    assert list(form_features("a", "b")) == list(FORM_FEATURES)
    assert form_matrix(pairs.head(0)).shape == (0, len(FORM_FEATURES))


# --- the method: each prompt cluster's rewrites have their own form; the toy embedder knows pirate/formal/poem/short.
_ORIGINALS = ["The train left the station at noon and reached the coast by evening.",
              "Our team finished the report after three long weeks of careful work.",
              "The bakery on the corner sells fresh bread every morning before dawn.",
              "A storm knocked down two old trees near the school on Friday night.",
              "The museum will open a new wing for modern art next spring.",
              "My neighbour repaired the fence and painted it a bright shade of blue."]
_POEMS = ["The day was long and gray,\nWe walked along the way.\nThe sun began to fall,\nAnd silence covered all.",
          "A bird sang in the tree,\nIts song was wild and free.\nThe river ran so cold,\nIts story never told."]
_KINDS = {  # prompt -> rewrite of original i
    "Add emojis to it.": lambda i, text: f"{text} 🎉😀✨ {'🔥' * (i % 3)}",
    "Make it a poem.": lambda i, text: _POEMS[i % 2],
    "Say it as a pirate.": lambda i, text: f"Arr, matey! {text} Ye landlubbers, aye!",
    "Make it short.": lambda i, text: " ".join(text.split()[:3]) + ".",
}


def _triples(originals: list[str], extra_poem_prompt: bool = True) -> pd.DataFrame:
    rows = [(prompt, original, rewrite(i, original)) for prompt, rewrite in _KINDS.items()
            for i, original in enumerate(originals)]
    if extra_poem_prompt:  # a second poem prompt, nearer to the poem axis than to any other cluster
        rows += [("Make it a poem, a formal poem.", o, _POEMS[i % 2]) for i, o in enumerate(originals[:2])]
    return pd.DataFrame([(f"t{i}", o, p, r) for i, (p, o, r) in enumerate(rows)],
                        columns=["id", "original_text", "rewrite_prompt", "rewritten_text"])


TRAIN = _triples(_ORIGINALS[:4])
TEST = _triples(_ORIGINALS[4:], extra_poem_prompt=False)
PAIRS = TEST.drop(columns="rewrite_prompt")


def _fitted(word_embedder, **options) -> FormMethod:
    method = from_name("form", **{"clusters": 4, **options})
    method.embedder = word_embedder
    method.fit(TRAIN)
    return method


@pytest.mark.parametrize("decode", ["expected", "medoid"])
def test_clusters_are_recovered_from_the_form_alone(word_embedder, decode):
    method = _fitted(word_embedder, direction=False, decode=decode)
    assert len(method.medoids) == 4 and len(method.prompts) == 5
    assert sorted(method.prompts[m] for m in method.medoids) == sorted(_KINDS)  # the formal poem prompt is no medoid
    assert method.predict(PAIRS) == TEST["rewrite_prompt"].tolist()
    probs = method.probabilities(PAIRS)
    assert probs.shape == (len(PAIRS), 4) and probs.sum(axis=1) == pytest.approx(np.ones(len(PAIRS)))


def test_save_load_round_trip(word_embedder, tmp_path):
    method = _fitted(word_embedder, direction=True)  # with the embedding direction (4 toy dimensions) beside the form
    before = method.predict(PAIRS)
    assert before == TEST["rewrite_prompt"].tolist()
    method.save(tmp_path / "form")
    saved = json.loads((tmp_path / "form" / "method.json").read_text(encoding="utf-8"))
    assert saved["state"]["features"] == list(FORM_FEATURES) and saved["config"]["clusters"] == 4
    loaded = load_method(tmp_path / "form")
    loaded.embedder = word_embedder
    assert isinstance(loaded, FormMethod) and loaded.predict(PAIRS) == before
    assert loaded.probabilities(PAIRS) == pytest.approx(method.probabilities(PAIRS))


def test_two_clusters_and_one(word_embedder):
    two = TRAIN[TRAIN["rewrite_prompt"].isin(["Make it a poem.", "Say it as a pirate."])]
    method = from_name("form", direction=False)
    method.embedder = word_embedder
    method.fit(two)  # scikit-learn keeps one logit for two classes: the method turns it into two
    wanted = TEST["rewrite_prompt"].isin(["Make it a poem.", "Say it as a pirate."]).to_numpy()
    assert method.predict(PAIRS[wanted]) == TEST["rewrite_prompt"][wanted].tolist()
    one = from_name("form")
    one.embedder = word_embedder
    one.fit(TRAIN.head(3).assign(rewrite_prompt=" Make it short. "))
    assert one.predict(PAIRS) == ["Make it short."] * len(PAIRS) and one.predict(PAIRS.head(0)) == []


def test_options_and_bad_folders_are_refused_in_one_line(word_embedder, tmp_path):
    for options, message in [({"decode": "best"}, "form: decode must be one of expected, medoid, not 'best'"),
                             ({"clusters": 0}, "form: clusters must be a whole number of at least 1, not 0"),
                             ({"l2": 0}, "form: l2 must be a number above 0, not 0"),
                             ({"direction": "yes"}, "form: direction must be true or false, got 'yes'")]:
        with pytest.raises(DataError, match=f"^{message}$"):
            from_name("form", **options)
    with pytest.raises(DataError, match="^form: not fitted"):
        from_name("form").predict(PAIRS)
    with pytest.raises(DataError, match="^form: no non-blank training prompt"):
        from_name("form").fit(TRAIN.assign(rewrite_prompt=" "))
    from_name("form").save(tmp_path / "empty")  # an unfitted method saves and loads
    assert load_method(tmp_path / "empty").weights == {}
    _fitted(word_embedder).save(tmp_path / "m")
    weights = load_file(str(tmp_path / "m" / WEIGHTS_FILE))
    save_file({**weights, "bias": weights["bias"][:3]}, str(tmp_path / "m" / WEIGHTS_FILE))
    with pytest.raises(DataError, match="do not fit 5 prompts in 4 clusters$"):
        load_method(tmp_path / "m")
    _fitted(word_embedder).save(tmp_path / "old")
    path = tmp_path / "old" / "method.json"
    path.write_text(path.read_text(encoding="utf-8").replace('"emojis"', '"smileys"'), encoding="utf-8")
    with pytest.raises(DataError, match="saved with other form features than this version reads"):
        load_method(tmp_path / "old")
