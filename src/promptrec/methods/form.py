"""Method `form`: read what the rewrite looks like and predict the kind of instruction that made it.

Many rewrites never state their instruction, yet their form says it: emojis and hashtags for a social post, short
rhyming lines for a poem, `Name:` lines for a dialogue, "thou" and "hath" for Shakespeare, "arr" for a pirate.
`form_features` measures such properties of a rewrite and of its change from the original (pure Python, no model).
The method clusters the training prompts (k-means over their metric embeddings), learns a multinomial logistic
regression from the form features (and the rewrite's embedding direction) to the cluster, and predicts the
training prompt with the best expected cos**3 under the predicted cluster distribution (or the likeliest
cluster's medoid).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from promptrec.data import ORIGINAL, PROMPT, REWRITTEN, DataError, atomic_write
from promptrec.methods.base import UsesEmbedder, load_saved, safe_child, save_config
from promptrec.metric import sharpen
from promptrec.vectors import direction

log = logging.getLogger(__name__)

WEIGHTS_FILE = "form.safetensors"
DECODES = ("expected", "medoid")
FORM_FEATURES = (
    "emojis", "hashtags", "mentions",  # counts in the rewrite
    "lines", "verse_lines", "rhyme_share", "bullets", "numbered", "headings", "dialogue", "qa_pairs",  # line structure
    "words", "length_ratio", "sentence_words", "reading_level", "reading_shift",  # length and reading level
    "first_singular", "first_plural", "second_person",  # shares of the rewrite's words
    "questions", "exclamations", "capitals",  # sentence ends (counts) and uppercase share of letters
    "archaic", "pirate", "slang",  # lexicon counts
    # contractions per word; formality_shift = the original's minus the rewrite's; sentiment (positive - negative
    # words per word) and its shift from the original; word_overlap = Jaccard of the two texts' word sets
    "contractions", "formality_shift", "sentiment", "sentiment_shift", "word_overlap",
)

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)*")  # on lowercased text with straight apostrophes
_SENTENCE_BREAK = re.compile(r"[.!?]+(?=\s|$)|\n+")
_HASHTAG = re.compile(r"(?<![\w#&])#[A-Za-z_]\w*")
_MENTION = re.compile(r"(?<![\w@.])@[A-Za-z_]\w*")
_HEADING = re.compile(r"#{1,6}\s+\S.*|\*\*[^*]+\*\*:?|__[^_]+__:?|(?i:title|subject|headline)\s*:.*")
_BULLET = re.compile(r"[-*•+–]\s+\S.*")
_NUMBERED = re.compile(r"(?:\d{1,2}[.)]|step\s+\d+\s*[:.)-]?)\s+\S.*", re.IGNORECASE)
_QUESTION_LINE = re.compile(r"\**(?:q|question)\s*\d*\s*:.*", re.IGNORECASE)
_ANSWER_LINE = re.compile(r"\**(?:a|answer)\s*\d*\s*:.*", re.IGNORECASE)
_SPEAKER = re.compile(r"\**([A-Z][\w'.-]*(?:\s[A-Z][\w'.-]*){0,2})\**\s*:\s*\S.*")
_NOT_SPEAKERS = {"note", "summary", "date", "from", "to", "re", "ps", "p.s",
                 "chorus", "verse", "bridge", "intro", "outro", "refrain"}
_RHYME_KEY = re.compile(r"[aeiouy]+[^aeiouy]*$")
_VOWEL_GROUPS = re.compile(r"[aeiouy]+")
_CONTRACTION = re.compile(r"[a-z]+(?:n't|'re|'ll|'ve|'m|'d)|(?:it|that|he|she|what|there|here|let|who|where)'s")
_PIRATE_ARR = re.compile(r"a+r{2,}[gh]*")
# Pictographic code points; skin-tone modifiers, variation selectors and joiners are not counted.
_EMOJI = re.compile("[\U0001F000-\U0001F3FA\U0001F400-\U0001FAFF\u2600-\u27BF\u2B05-\u2B07\u2B1B\u2B1C\u2B50\u2B55]")
_UPPER = re.compile(r"[A-ZÀ-ÖØ-Þ]")  # Latin capitals
VERSE_WORDS = 10  # a line of at most this many words, not a heading, list item or dialogue, reads as verse

_FIRST_SINGULAR = {"i", "me", "my", "mine", "myself", "i'm", "i've", "i'll", "i'd"}
_FIRST_PLURAL = {"we", "us", "our", "ours", "ourselves", "we're", "we've", "we'll", "we'd"}
_SECOND = {"you", "your", "yours", "yourself", "yourselves", "you're", "you've", "you'll", "you'd", "ya"}
_ARCHAIC = set("thou thee thy thine hath doth dost hast hadst shalt wilt tis twas ere whilst hither thither "
               "whence verily forsooth prithee nay methinks anon wherefore oft mayhap canst wouldst couldst "
               "shouldst thyself".split())
_PIRATE = set("ahoy matey mateys ye aye avast scallywag scallywags landlubber landlubbers hearties buccaneer "
              "buccaneers shipmate shipmates grog plunder booty".split())
_SLANG = set("y'all yall gonna wanna gotta ain't aint kinda sorta dude dudes bro lol omg yeah nah y'know lemme "
             "gimme dunno cuz ya'll".split())
_POSITIVE = set("good great happy joy joyful love lovely wonderful excellent amazing beautiful best delight "
                "delightful glad pleased pleasant positive success successful hope hopeful bright brilliant "
                "fantastic kind calm grateful thankful exciting excited fun enjoy enjoyed proud win wins "
                "celebrate perfect cheerful warm".split())
_NEGATIVE = set("bad sad angry hate terrible awful horrible worst poor pain painful fear afraid worry worried "
                "fail failed failure loss lost problem problems wrong cruel dark gloom gloomy grim tragic "
                "disaster miserable upset annoyed bitter hurt sorrow dread hopeless negative ugly".split())


def _words(text: str) -> list[str]:
    """Lowercase word tokens (apostrophes kept inside: "ain't", "y'all")."""
    return _WORD.findall(text.lower().replace("’", "'"))


@lru_cache(maxsize=1 << 16)
def _syllables(word: str) -> int:
    """Vowel groups, less a silent final e: a rough syllable count, at least 1."""
    groups = len(_VOWEL_GROUPS.findall(word))
    if word.endswith("e") and not word.endswith(("le", "ee")) and groups > 1:
        groups -= 1
    return max(groups, 1)


def _reading(text: str, counts: Counter) -> tuple[float, float]:
    """Mean words per sentence and the Flesch-Kincaid grade of a text and its word counts (0, 0 without words)."""
    total = counts.total()
    if not total:
        return 0.0, 0.0
    sentences = max(sum(1 for part in _SENTENCE_BREAK.split(text.lower()) if _WORD.search(part)), 1)
    per_sentence = total / sentences
    syllables = sum(_syllables(w) * n for w, n in counts.items()) / total
    return per_sentence, 0.39 * per_sentence + 11.8 * syllables - 15.59


def _count(counts: Counter, lexicon: set[str]) -> int:
    """How many of the counted words are in `lexicon`."""
    return sum(counts[w] for w in lexicon.intersection(counts))


def _tone(counts: Counter) -> tuple[float, float]:
    """Contractions per word and (positive - negative words) per word of a text's word counts."""
    total = counts.total()
    if not total:
        return 0.0, 0.0
    contractions = sum(n for w, n in counts.items() if "'" in w and _CONTRACTION.fullmatch(w))
    return contractions / total, (_count(counts, _POSITIVE) - _count(counts, _NEGATIVE)) / total


def _rhymes(first: str, second: str) -> bool:
    """Two end words rhyme when they differ and share their last vowel group and what follows it."""
    a, b = _RHYME_KEY.search(first), _RHYME_KEY.search(second)
    return first != second and a is not None and b is not None and a[0] == b[0]


def _line_structure(text: str) -> dict[str, float]:
    """Counts of the rewrite's non-empty lines by kind, and the share of text lines (all but the last) whose end word
    rhymes with that of the next line or the one after (couplets and alternate rhymes alike)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    counts = dict.fromkeys(("headings", "bullets", "numbered", "dialogue", "verse_lines"), 0)
    questions = answers = 0
    end_words: list[str] = []  # last word of each line that is not a heading
    for line in lines:
        words = _words(line)
        if _HEADING.fullmatch(line):
            counts["headings"] += 1
            continue
        if words:
            end_words.append(words[-1])
        if _BULLET.fullmatch(line):
            counts["bullets"] += 1
        elif _NUMBERED.fullmatch(line):
            counts["numbered"] += 1
        elif _QUESTION_LINE.fullmatch(line):
            questions += 1
        elif _ANSWER_LINE.fullmatch(line):
            answers += 1
        elif (speaker := _SPEAKER.fullmatch(line)) and speaker[1].lower().rstrip(".") not in _NOT_SPEAKERS:
            counts["dialogue"] += 1
        elif 0 < len(words) <= VERSE_WORDS:
            counts["verse_lines"] += 1
    rhyming = sum(any(_rhymes(word, later) for later in end_words[i + 1 : i + 3])
                  for i, word in enumerate(end_words[:-1]))
    return {"lines": float(len(lines)), **{k: float(v) for k, v in counts.items()},
            "qa_pairs": float(min(questions, answers)),
            "rhyme_share": rhyming / (len(end_words) - 1) if len(end_words) > 1 else 0.0}


def form_features(original: str, rewritten: str) -> dict[str, float]:
    """The FORM_FEATURES of one rewrite and of its change from the original, by name.

    >>> form_features("It rained.", "Rain fell 🌧️ #weather")["emojis"], form_features("", "#a #b")["hashtags"]
    (1.0, 2.0)
    """
    original = original if isinstance(original, str) else ""
    rewritten = rewritten if isinstance(rewritten, str) else ""
    words, original_words = _words(rewritten), _words(original)
    per_word = 1 / max(len(words), 1)
    counts, original_counts = Counter(words), Counter(original_words)
    sentence_words, reading_level = _reading(rewritten, counts)
    _, original_level = _reading(original, original_counts)
    contractions, sentiment = _tone(counts)
    original_contractions, original_sentiment = _tone(original_counts)
    union = counts.keys() | original_counts.keys()
    features = {
        "emojis": float(len(_EMOJI.findall(rewritten))),
        "hashtags": float(len(_HASHTAG.findall(rewritten)) if "#" in rewritten else 0),
        "mentions": float(len(_MENTION.findall(rewritten)) if "@" in rewritten else 0),
        **_line_structure(rewritten),
        "words": float(len(words)),
        "length_ratio": len(words) / max(len(original_words), 1),
        "sentence_words": sentence_words,
        "reading_level": reading_level,
        "reading_shift": reading_level - original_level,
        "first_singular": _count(counts, _FIRST_SINGULAR) * per_word,
        "first_plural": _count(counts, _FIRST_PLURAL) * per_word,
        "second_person": _count(counts, _SECOND) * per_word,
        "questions": float(len(re.findall(r"\?+", rewritten))),
        "exclamations": float(len(re.findall(r"!+", rewritten))),
        "capitals": len(_UPPER.findall(rewritten)) / max(sum(map(str.isalpha, rewritten)), 1),
        "archaic": float(_count(counts, _ARCHAIC)),
        "pirate": float(_count(counts, _PIRATE) + sum(n for w, n in counts.items() if _PIRATE_ARR.fullmatch(w))),
        "slang": float(_count(counts, _SLANG)),
        "contractions": contractions,
        "formality_shift": original_contractions - contractions,
        "sentiment": sentiment,
        "sentiment_shift": sentiment - original_sentiment,
        "word_overlap": len(counts.keys() & original_counts.keys()) / len(union) if union else 0.0,
    }
    return {name: float(features[name]) for name in FORM_FEATURES}


def form_matrix(pairs: pd.DataFrame) -> np.ndarray:
    """(n, F) float32 FORM_FEATURES of every `original_text, rewritten_text` row, columns in FORM_FEATURES order."""
    rows = [list(form_features(o, r).values()) for o, r in zip(pairs[ORIGINAL].tolist(), pairs[REWRITTEN].tolist())]
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(FORM_FEATURES))


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, k) logits."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# Leave-one-source-out (six shared files, 400 held-out rows per fold, proxy; `promptrec cv ... --by source -m
# best=constant,form,fm=form,fd=form,f64=form --set best.select=true --set fm.decode=medoid --set fd.direction=false
# --set f64.clusters=64 --limit 400`, 27 min on one busy core): best constant 0.0351, form with the direction 0.0372, medoid
# decoding 0.0363, without the direction (now the default) 0.0386 (fit 9 s a fold instead of minutes of text embedding), 64 clusters 0.0381.
# A perfect cluster classifier would reach 0.095 (24 clusters) / 0.114 (64) with medoids: the features, not the
# clusters, are what holds the method back, alone; its use is as a reader of the form beside other members.
@dataclass
class FormConfig:
    """Options of the form method."""

    model_fields = ("embedder",)  # NamesModels: the fields naming a model, which bundle carries
    embedder: str = "proxy"  # metric embedder: clusters the training prompts, gives the rewrite's direction
    clusters: int = 24  # k of k-means over the training prompts' embeddings (at most their distinct count)
    direction: bool = False  # also read unit(emb(rewritten) - emb(original)); off: better held out, no text encoding
    decode: str = "expected"  # expected: training prompt with the best expected cos**3; medoid: likeliest cluster's
    l2: float = 1.0  # L2 strength of the logistic regression (scikit-learn's 1 / C)
    seed: int = 0  # k-means initialisation

    def __post_init__(self) -> None:
        if self.decode not in DECODES:
            raise DataError(f"form: decode must be one of {', '.join(DECODES)}, not '{self.decode}'")
        if isinstance(self.clusters, bool) or not isinstance(self.clusters, int) or self.clusters < 1:
            raise DataError(f"form: clusters must be a whole number of at least 1, not {self.clusters!r}")
        if not isinstance(self.direction, bool):
            raise DataError(f"form: direction must be true or false, got {self.direction!r}")
        if not isinstance(self.l2, (int, float)) or isinstance(self.l2, bool) or not self.l2 > 0:
            raise DataError(f"form: l2 must be a number above 0, not {self.l2!r}")


class FormMethod(UsesEmbedder):
    """Form features (+ embedding direction) -> logistic regression over prompt clusters -> a training prompt."""

    name = "form"
    Config = FormConfig

    def __init__(self, config: FormConfig | None = None):
        self.config = config or FormConfig()
        self.prompts: list[str] = []  # distinct training prompts: the decoding candidates
        self.medoids: list[int] = []  # per cluster, the index in `prompts` of its medoid
        self.weights: dict[str, np.ndarray] = {}  # mean, scale (F',); coef (F', k); bias (k,); cluster_scores (u, k)

    def inputs(self, pairs: pd.DataFrame) -> np.ndarray:
        """(n, F') classifier inputs: signed log1p of the form features, then the embedding direction if enabled."""
        features = form_matrix(pairs)
        features = np.sign(features) * np.log1p(np.abs(features))  # counts and ratios on one scale
        if not self.config.direction:
            return features
        shift = direction(self.embedder.encode_texts(pairs[REWRITTEN].astype(str).tolist()),
                          self.embedder.encode_texts(pairs[ORIGINAL].astype(str).tolist()))  # (n, d)
        return np.concatenate([features, shift], axis=1).astype(np.float32)

    def fit(self, triples: pd.DataFrame) -> None:
        """Cluster the training prompts, score each distinct prompt against each cluster, fit the classifier."""
        from sklearn.cluster import KMeans
        from sklearn.linear_model import LogisticRegression

        truths = triples[PROMPT].fillna("").astype(str).str.strip()
        triples = triples[truths != ""]
        truths = truths[truths != ""].tolist()
        if not truths:
            raise DataError("form: no non-blank training prompt to learn from")
        self.prompts = list(dict.fromkeys(truths))
        prompt_emb = self.embedder.encode(self.prompts)  # (u, d) unit rows
        row_prompt = pd.Index(self.prompts).get_indexer(truths)  # (n,) index into prompts
        k = min(self.config.clusters, len(self.prompts))
        kmeans = KMeans(n_clusters=k, n_init=4, random_state=self.config.seed)
        rows_per_prompt = np.bincount(row_prompt, minlength=len(self.prompts))  # (u,) k-means weights
        distinct_labels = kmeans.fit_predict(prompt_emb, sample_weight=rows_per_prompt)
        _, distinct_labels = np.unique(distinct_labels, return_inverse=True)  # clusters 0..k-1, none empty
        k = int(distinct_labels.max()) + 1
        rows_in = np.zeros((len(self.prompts), k), dtype=np.float64)  # (u, k) training rows per prompt and cluster
        np.add.at(rows_in, (row_prompt, distinct_labels[row_prompt]), 1.0)
        cube = sharpen(prompt_emb @ prompt_emb.T)  # (u, u) the metric between distinct prompts
        cluster_scores = cube @ rows_in / rows_in.sum(axis=0)  # (u, k) mean cos**3 of prompt j against cluster c
        self.medoids = [int(np.argmax(np.where(rows_in[:, c] > 0, cluster_scores[:, c], -np.inf))) for c in range(k)]
        inputs = self.inputs(triples)  # (n, F')
        mean, scale = inputs.mean(axis=0), inputs.std(axis=0)
        scale = np.where(scale > 1e-6, scale, 1.0)
        labels = distinct_labels[row_prompt]  # (n,) cluster of each training row
        coef, bias = np.zeros((inputs.shape[1], k)), np.zeros(k)
        if k > 1:
            model = LogisticRegression(C=1.0 / self.config.l2, max_iter=1000).fit((inputs - mean) / scale, labels)
            if k == 2:  # scikit-learn keeps one logit z for two classes: softmax([-z/2, z/2]) = sigmoid(z)
                coef = np.concatenate([-model.coef_, model.coef_]).T / 2
                bias = np.array([-1.0, 1.0]) * model.intercept_[0] / 2
            else:
                coef, bias = model.coef_.T, model.intercept_
        self.weights = {"mean": mean, "scale": scale, "coef": coef, "bias": bias, "cluster_scores": cluster_scores}
        self.weights = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in self.weights.items()}
        log.info("form: %d clusters of %d distinct prompts, %d inputs per row", k, len(self.prompts), inputs.shape[1])

    def probabilities(self, pairs: pd.DataFrame) -> np.ndarray:
        """(n, k) predicted probability of each prompt cluster per row."""
        if not self.weights:
            raise DataError("form: not fitted; train it on triples first")
        inputs = self.inputs(pairs)  # (n, F')
        if inputs.shape[1] != len(self.weights["mean"]):
            raise DataError(f"form: fitted on {len(self.weights['mean'])} inputs per row, got {inputs.shape[1]}"
                            " (another embedder or direction setting?)")
        inputs = (inputs - self.weights["mean"]) / self.weights["scale"]
        return _softmax(inputs @ self.weights["coef"] + self.weights["bias"])

    def predict(self, pairs: pd.DataFrame) -> list[str | None]:
        """A training prompt per row (never abstains): best expected cos**3, or the likeliest cluster's medoid."""
        if len(pairs) == 0:
            return []
        probs = self.probabilities(pairs)  # (n, k)
        if self.config.decode == "medoid":
            return [self.prompts[self.medoids[c]] for c in probs.argmax(axis=1)]
        expected = probs @ self.weights["cluster_scores"].T  # (n, u) expected cos**3 of each candidate prompt
        return [self.prompts[j] for j in expected.argmax(axis=1)]

    def save(self, folder: Path) -> None:
        """Write method.json (prompts, medoids, feature names as state) and form.safetensors (the weights)."""
        from safetensors.numpy import save

        folder = Path(folder)
        state = {"features": list(FORM_FEATURES), "prompts": self.prompts, "medoids": self.medoids}
        save_config(folder, self.name, self.config, state=state if self.weights else {})
        if self.weights:
            with atomic_write(folder / WEIGHTS_FILE, "wb") as handle:
                handle.write(save(self.weights))

    @classmethod
    def load(cls, folder: Path) -> "FormMethod":
        """Read what `save` wrote; a fit from another feature list or malformed weights is refused in one line."""
        from safetensors.numpy import load_file

        folder = Path(folder)
        config, state = load_saved(folder, cls)
        method = cls(config)
        if not state:
            return method
        path = safe_child(folder, WEIGHTS_FILE)
        if state.get("features") != list(FORM_FEATURES):
            raise DataError(f"{folder}: saved with other form features than this version reads; train it again")
        if not path.is_file():
            raise DataError(f"{folder}: no {WEIGHTS_FILE} (the form method's weights)")
        method.prompts, method.medoids = [str(p) for p in state["prompts"]], [int(m) for m in state["medoids"]]
        method.weights = load_file(str(path))
        k, u = len(method.medoids), len(method.prompts)
        shapes = {name: value.shape for name, value in method.weights.items()}
        inputs = shapes.get("mean", (0,))[0]
        expected = {"mean": (inputs,), "scale": (inputs,), "coef": (inputs, k), "bias": (k,), "cluster_scores": (u, k)}
        if shapes != expected or not all(0 <= m < u for m in method.medoids):
            raise DataError(f"{path}: weights of shapes {shapes} do not fit {u} prompts in {k} clusters")
        return method
