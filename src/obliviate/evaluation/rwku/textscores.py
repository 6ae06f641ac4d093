"""Text scores of RWKU's utility sets: token F1 / exact match and n-gram entropy."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalise(text: str) -> list[str]:
    """SQuAD-style tokens: lower-case, punctuation removed, articles removed, whitespace split."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split()).split()


def token_f1(prediction: str, reference: str) -> float:
    """``F1 = 2PR / (P + R)`` over the multiset of shared normalised tokens; 1 if both are
    empty, 0 if only one is."""
    pred, ref = normalise(prediction), normalise(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_f1(prediction: str, references: Sequence[str]) -> float:
    """max over the reference aliases (TriviaQA's F1)."""
    return max(token_f1(prediction, r) for r in references)


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1 when the normalised prediction equals some normalised reference.

    RWKU's eval_bbh.py passes each BBH answer *string* as the references, so the references
    are its characters: ``exact_match(pred, answer)`` with a str reproduces that (an answer
    "(A)" matches "A"; "False" matches no multi-letter prediction)."""
    return float(any(normalise(prediction) == normalise(r) for r in references))


def word_tokens(text: str) -> list[str]:
    """nltk's ``word_tokenize`` (RWKU's eval_fluency.py) when its punkt data is installed; else
    the same treebank word tokenizer over an untrained Punkt sentence splitter, which needs no
    data (nltk comes with rouge-score): "don't" -> "do", "n't" as RWKU's, where the regex used
    before gave "don", "'", "t" and a higher entropy. Without nltk, words and single marks."""
    try:
        import nltk
    except ImportError:
        return re.findall(r"\w+|[^\w\s]", text)
    try:
        return nltk.word_tokenize(text)
    except LookupError:  # no punkt data (no download here)
        words = nltk.tokenize.NLTKWordTokenizer()
        sentences = nltk.tokenize.PunktSentenceTokenizer().tokenize(text)
        return [token for sentence in sentences for token in words.tokenize(sentence)]


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """``mean_n(w_n · H_n)``, ``H_n = −Σ f log2 f`` over the relative frequencies f of the
    text's word n-grams (RWKU eval_fluency.py; ROME's measure). 0 for a text without n-grams."""
    tokens = word_tokens(text)
    values = []
    for n, weight in zip(ns, weights):
        counts = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
        total = sum(counts.values())
        entropy = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        values.append(weight * entropy)
    return sum(values) / len(values)
