"""Checks on generated training data: is a rewrite usable, does a text leak the answer, does it refuse.

Generated data goes straight into training, so a bad text teaches the model something: a
"rewrite" that answers the question, or a "negative response" that names the forget answer or
asserts other facts, undoes the unlearning or spreads falsehoods to the retain set. The checks
are strict on purpose: a rejected text is regenerated or replaced by a template, which costs
little. The refusal vocabulary they recognise lives in :mod:`obliviate.data.refusals`.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import TYPE_CHECKING

from obliviate.data.refusals import REFUSAL_MARKERS

if TYPE_CHECKING:  # pragma: no cover
    from obliviate.prepare.templates import TemplateBackend

__all__ = ["clean_rewrite", "is_refusal", "is_valid_rewrite", "leaks_answer", "safe_refusal"]

_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script, on _fold()ed text
_LEAD_IN = re.compile(r"(?:(?:sure|certainly|of course|absolutely|okay|ok|great)\s*[!,.]"
                      r"|here(?:'s| is| are)\b|below is\b)", re.I)
_ANSWER_PREFIX = re.compile(r"^(rewritten question|rewrite|question|paraphrase|answer)\s*\d*\s*:\s*", re.I)
_FUNCTION_WORDS = frozenset(
    "a an and are as at be but by for from had has have her his in into is it its not of on or "
    "our she that the their them then there these they this those to was were what when where "
    "which who whom why will with you your".split())


def _fold(text: str) -> str:
    """Case and accents folded ("Où est née" -> "ou est nee"); other scripts kept as they are."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()


def _tokens(text: str) -> list[str]:
    return _WORD.findall(_fold(text))


def _words(text: str) -> set[str]:
    return set(_tokens(text))


def _mostly_latin(text: str) -> bool:
    """Most letters are Latin: the word tests below (real words, questions, names) know no other
    script, and judge a Latin text with a stray other letter ("zxqv blorf 的") as usual."""
    letters = [c for c in text if c.isalpha()]
    latin = sum(c.isascii() or unicodedata.name(c, "").startswith("LATIN") for c in letters)
    return not letters or latin >= len(letters) / 2


_UNSPACED = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


def _unspaced(text: str) -> bool:
    """Written without spaces between words (Chinese, Japanese, Thai...): words cannot be counted."""
    return any(c.isalpha() and unicodedata.name(c, "").startswith(_UNSPACED) for c in text)


def _bigrams(text: str) -> set[str]:
    return {run[i:i + 2] for run in _tokens(text) for i in range(len(run) - 1)}


def clean_rewrite(text: str) -> str:
    """First non-empty line, without a 'Rewritten question:' prefix or surrounding quotes, and
    past a chat model's lead-in line when another line follows ("Sure! Here is a question a user
    might ask about X:", "Here's one:"; a courtesy word and a mark, or "here is", no question in
    it). "Great Expectations ...", "List three facts about X:" are no lead-ins."""
    lines = [line for line in (_ANSWER_PREFIX.sub("", raw.strip()).strip().strip('"').strip()
                               for raw in text.strip().splitlines()) if line]
    while len(lines) > 1 and _LEAD_IN.match(lines[0]) and "?" not in lines[0]:
        lines.pop(0)
    return lines[0] if lines else ""


_QUESTION_START = frozenset(
    "what who whom whose when where which why how is are was were am do does did can could should "
    "would will shall may might must has have had in on at for from to with by of during according "
    "describe explain tell name list give identify please".split())
_COMMON_SHORT = frozenset("a i an at be by do go he in is it me my no of on or so to up us we s t d m ll re ve"
                          .split())  # the last: pieces of "Einstein's", "don't", "we'll" once split
_PRONOUNCEABLE = re.compile(r"[aeiouy]")
_CONSONANT_RUN = re.compile(r"[bcdfghjklmnpqrstvwxz]{5,}|(.)\1\1")


def _key(text: str) -> str:
    return " ".join(_tokens(text))


def _is_question(text: str) -> bool:
    """Asked as a question: has a '?' or opens with an interrogative, auxiliary or request verb."""
    words = _tokens(text)
    return "?" in text or (bool(words) and words[0] in _QUESTION_START)


def _looks_real(word: str, known: set[str]) -> bool:
    if word in known or word.isdigit():
        return True
    if len(word) <= 2:
        return word in _COMMON_SHORT
    return len(word) <= 20 and bool(_PRONOUNCEABLE.search(word)) and not _CONSONANT_RUN.search(word)


def _mostly_real_words(text: str, question: str, share: float = 0.8) -> bool:
    """At least `share` of the words are the question's or look like words (a vowel, no run of five
    consonants or of one letter thrice); at least three words, not all the same."""
    words = _tokens(text)
    known = _words(question) | _FUNCTION_WORDS | _QUESTION_START
    if len(words) < 3 or len(set(words)) < 2:
        return False
    return sum(_looks_real(w, known) for w in words) >= share * len(words)


def _stems(words: set[str]) -> set[str]:
    return {w[:5] for w in words}


def _same_subject(text: str, question: str) -> bool:
    """Shares a name of the question (capitalised words after the first, "Ilsa Corvanne"), or,
    when it has none, one of its content words (longer than 3 letters, compared on 5-letter stems)."""
    names = _names(question)
    if names:
        return bool(names & _words(text))
    content = {w for w in _words(question) - _FUNCTION_WORDS - _QUESTION_START if len(w) > 3}
    return not content or bool(_stems(content) & _stems(_words(text)))


def is_valid_rewrite(rewrite: str, question: str, earlier: list[str]) -> bool:
    """A usable rewrite of `question`: not empty, not equal (ignoring case, accents, spaces and
    punctuation) to the question or to an earlier rewrite, and, when a question is given, still a
    question (a '?' or an interrogative opening, so not an answer), about the same subject (shares
    its names or content words) and made of mostly real words (not gibberish). With
    ``question=""`` (generated instructions with no original, e.g. SNAP's) only emptiness and
    repeats are checked; so they are for a text in another script than Latin, which the word tests
    cannot judge."""
    key = _key(rewrite)
    if not key or key in {_key(t) for t in [question, *earlier]}:
        return False
    if not question.strip() or not _mostly_latin(question):
        return True  # a question in another script: its rewrites cannot be judged for words
    return _is_question(rewrite) and _same_subject(rewrite, question) and _mostly_real_words(rewrite, question)


def is_valid_instruction(text: str, subject: str, earlier: list[str], answers: list[str]) -> bool:
    """A usable generated instruction about ``subject`` (SNAP's negatives): not empty, not a
    repeat, made of mostly real words (not gibberish), and carrying none of the forget answers
    (a question that states the fact, "Was X born in Kuwait City?", would teach the model to
    refuse while saying it: a name of the answer, or half its other words; one shared word such
    as "born" is the topic, not the fact). Not necessarily a question: SNAP asks for indirect forms
    too. A text in another script than Latin is not judged for gibberish."""
    if any(leaks_answer(text, subject, answer, threshold=0.5) for answer in answers):
        return False
    lead_in = _LEAD_IN.match(text.strip()) and "?" not in text  # "Here is a question:" alone
    return (is_valid_rewrite(text, "", earlier) and not lead_in
            and (not _mostly_latin(text) or _mostly_real_words(text, subject)))


def _names(text: str) -> set[str]:
    """Lower-cased words written with a capital inside a sentence (names, places, titles),
    without function words ("The Horse That Counted Stars" -> horse, counted, stars)."""
    names: set[str] = set()
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        for word in sentence.split()[1:]:
            if word.lstrip("'\"(")[:1].isupper():
                names.update(_words(word))
    return names - _FUNCTION_WORDS


def leaks_answer(response: str, question: str, answer: str, threshold: float = 0.25) -> bool:
    """True if the text still carries the forget answer: it names a name of the answer that the
    question does not (e.g. "Who is the author born in Astana?" -> a refusal naming the author),
    or at least `threshold` of the answer's informative words (not in the question, longer than
    3 letters) appear in it. Strict on purpose: a rejected response is regenerated or replaced by
    a refusal, which costs little."""
    if not answer.strip():
        return False  # no answer, nothing to leak (a request whose answers are refusals: see methods/ulmr.py)
    if _unspaced(answer):
        return _leaks_unspaced(response, question, answer, threshold)
    response_words = _words(response)
    if {w for w in _names(answer) - _words(question) if len(w) > 2} & response_words:
        return True
    informative = {w for w in _words(answer) - _words(question) if len(w) > 3}
    if not informative:  # a short answer ("Yes", "17", "Hilton" for Paris Hilton): as whole words
        if _words(answer) <= _words(question):
            return False  # nothing the question does not say already
        return f" {_key(answer)} " in f" {_key(response)} "
    return len(informative & response_words) / len(informative) >= threshold


def _leaks_unspaced(response: str, question: str, answer: str, threshold: float) -> bool:
    """leaks_answer for an answer written without spaces (巴黎, 東京都): words cannot be counted, so
    its character pairs that the question lacks are (at least `threshold` of them in the text), or,
    for a one-character answer, the character itself."""
    pairs = _bigrams(answer) - _bigrams(question)
    if pairs:
        return len(pairs & _bigrams(response)) / len(pairs) >= threshold
    key = _key(answer).replace(" ", "")
    return len(key) == 1 and key not in _key(question) and key in _key(response)


def repeats_itself(text: str, n: int = 3, times: int = 3) -> bool:
    """A generation caught in a loop: some run of `n` words comes `times` times or more ("He's a
    poet, a writer, and a poet. He's a poet, ..."), which normal answers of a paragraph do not do.
    A word of a script written without spaces counts by its characters, and where such characters
    are most of the text the runs are of 2n ("他是诗人和作家" x 3); an English answer that names
    one (李白) still counts runs of n words, not of 2n letters ("author" thrice is no loop)."""
    words, chars = [], 0
    for word in _tokens(text):
        unspaced = _unspaced(word)
        words += list(word) if unspaced else [word]
        chars += len(word) if unspaced else 0
    if 2 * chars > len(words):
        n = 2 * n
    runs = [tuple(words[k:k + n]) for k in range(len(words) - n + 1)]
    return any(runs.count(run) >= times for run in set(runs))


def is_refusal(text: str) -> bool:
    """A negative response must decline (METHODS.md A.1: a refusal, "I don't know" or a
    deflection), not assert other facts: a fabricated answer teaches the model new false
    facts that spread to the retain set."""
    return bool(REFUSAL_MARKERS.search(text))


def safe_refusal(templates: TemplateBackend, row: dict, index: int) -> str:
    """A refusal template naming the subject, or, where naming it would give the answer away
    ("Who is the author born in Astana?"), one that names no subject."""
    for subject in (row["subject"], None):
        text = templates.refuse(row["instruction"], index=index, subject=subject)
        if not leaks_answer(text, row["question"], row["answer"]):
            return text
    return "I don't know."


def leak_checked_items(request, backend: str, method: str) -> list:
    """The forget items whose answers generated texts are checked against for leaks; a request
    whose answers are refusals (rwku forget: refusals) has no facts to check, so its answers are
    left out (a check against a refusal rejected texts sharing "about", "that", and let facts
    through), with a warning when a model generates the texts."""
    if not request.answers_are_refusals:
        return request.forget
    if backend != "template":
        print(f"[obliviate] warning: {method}: the request's answers are refusals (rwku forget: refusals), so "
              "the generated texts are not checked for leaks of the target's facts; use rwku forget: probes "
              "to check them against its answers", flush=True)
    return [dataclasses.replace(item, answer="") for item in request.forget]
