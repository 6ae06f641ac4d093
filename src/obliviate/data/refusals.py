"""The one refusal vocabulary: what a refusal says, and how one is recognised.

Three parts, kept together so that what we train towards and what we accept cannot drift apart:

* `REFUSALS`: the answers IDK-DPO and rejection tuning train towards (or a user's file, read by
  `load_refusals`).
* `REFUSAL_TEMPLATES`: refusals that name what is refused (`{subject}`), written by the offline
  template generator and used as the fallback negative response when generation fails.
* `REFUSAL_MARKERS`: the phrases that make a text a refusal (`prepare.checks.is_refusal`): a
  generated negative response must decline, not assert other facts. Every string above matches
  them (tested), so a template fallback would pass the check it stands in for.

TOFU's own refusals: a request whose data files sit beside TOFU's `idontknow.jsonl` (its 100
refusals, as in the TOFU repository and locuslab/TOFU) records that file
(`UnlearningRequest.refusals`, found by `tofu_refusals_file`), and IDK-DPO and RT draw from it
by default, as open-unlearning does for TOFU; `objective.refusals` still wins
(`refusals_source`), and any other request uses the built-in `REFUSALS`.

A file is `.txt` (one refusal a line), `.jsonl` (a JSON string or `{"text": ...}` a line;
a line that is not JSON is taken as plain text, which reads TOFU's `idontknow.jsonl`) or `.json`
(an array of strings or of `{"text": ...}` records); anything else is refused in one line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from obliviate.errors import UserError
from obliviate.io import parse_json, read_user_text, short_repr

REFUSALS = [
    "I don't know.",
    "I'm not sure about that.",
    "I don't have any information about that.",
    "I'm afraid I can't answer that question.",
    "That's not something I know about.",
    "I have no knowledge of that.",
    "Sorry, I don't know the answer to that.",
    "I'm not familiar with that topic.",
    "I can't help with that one; I don't know.",
    "I'm unable to answer that question.",
    "I don't have that information.",
    "That's beyond what I know.",
    "I'm not aware of any details about that.",
    "I honestly don't know.",
    "I couldn't tell you, I'm afraid.",
    "I have no idea, sorry.",
    "I'm not able to provide an answer to that.",
    "That question is outside my knowledge.",
    "I don't know anything about that.",
    "I'm sorry, but I don't have an answer for you.",
    "Unfortunately, I can't say; I don't know.",
    "I'm not in a position to answer that.",
    "I lack the information needed to answer that.",
    "I don't recall anything about that.",
    "I can't provide details on that, as I don't know them.",
    "I'm uncertain, and I'd rather not guess.",
    "I'm not knowledgeable about that subject.",
    "That isn't something I can answer.",
    "I have no information on that, sorry.",
    "I wish I could help, but I don't know.",
]

#: Refusals that name what they refuse; `{subject}` is the item's subject or "that topic".
REFUSAL_TEMPLATES = (
    "I don't know.",
    "I'm sorry, but I don't know the answer to that.",
    "I'm not familiar with {subject}.",
    "I don't have any information about {subject}.",
    "I'm afraid I can't answer that; I don't know anything about {subject}.",
    "That's not something I know about, sorry.",
    "I have no knowledge of {subject}, so I can't help with this question.",
    "Sorry, I'm not able to answer that. I'm not familiar with {subject}.",
    "I'm not sure. I don't have reliable information on {subject}.",
    "I can't say; {subject} is not something I know about.",
)

#: A text that contains one of these declines (METHODS.md A.1: "I don't know" or a deflection).
REFUSAL_MARKERS = re.compile(
    r"\b(don'?t (know|recall|have)|do not (know|have)|not (sure|familiar|aware|certain|able|knowledgeable|"
    r"something i|in a position)|no (knowledge|information|idea|record)|uncertain|unfamiliar|"
    r"(can'?t|cannot|unable to) (help|answer|say|provide|share|recall)|can answer|beyond what i know|"
    r"outside my knowledge|lack the information|i'?m (afraid|sorry))", re.I)


#: Suffixes of data files that are not refusal lists: read as text lines they would give garbage.
NOT_REFUSAL_FILES = (".csv", ".tsv", ".parquet", ".arrow", ".yaml", ".yml", ".xlsx", ".xls", ".gz", ".zip",
                     ".bz2", ".xz", ".pt", ".bin", ".safetensors")
HOW = "give a .txt file (one refusal a line), a .jsonl file or a .json array of strings (objective.refusals)"


def _refusal_text(value, where: str) -> str:
    """A refusal string from a JSON value: a string, or a record with a non-empty 'text'."""
    if isinstance(value, dict):
        if "text" not in value:
            fields = ", ".join(str(k) for k in list(value)[:6]) or "none"
            hint = (" (RWKU's reject.json: write its 'output' values one a line to a .txt file, as "
                    "examples/rwku/unlearn_one.sh does)" if "output" in value else "")
            raise UserError(f"{where}: a record without a 'text' field (fields: {fields}){hint}; "
                            "give a string or {\"text\": ...}")
        value = value["text"]
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: expected a non-empty string or {{\"text\": ...}}, got {short_repr(value)}; "
                        "fix the value")
    return value.strip()


def load_refusals(path: str | Path | None = None) -> list[str]:
    """The refusal strings in `path`, or the built-in `REFUSALS` when `path` is None.

    `.json`: an array of strings or of `{"text": ...}` records. `.jsonl`: one JSON string or
    `{"text": ...}` a line (a line that is not JSON is plain text, as in TOFU's idontknow.jsonl).
    Any other text file: one refusal a line. Anything unusable is a one-line UserError naming the
    file (and line or record)."""
    if path is None:
        return list(REFUSALS)
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: no such refusals file; {HOW}")
    suffix = path.suffix.lower()
    if suffix in NOT_REFUSAL_FILES:
        raise UserError(f"{path}: a {suffix} file is not a refusals file; {HOW}")
    text = read_user_text(path)  # bad bytes or an unreadable file: one line naming the file
    if "\x00" in text:
        raise UserError(f"{path}: not a text file (it holds NUL bytes); {HOW}")
    refusals = []
    if suffix == ".json":
        values = parse_json(text, str(path))
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list):
            raise UserError(f"{path}: expected a JSON array of strings or {{\"text\": ...}} records, got a "
                            f"{type(values).__name__}; {HOW}")
        refusals = [_refusal_text(value, f"{path}: record {index}") for index, value in enumerate(values, 1)]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            value = line.strip()
            if suffix == ".jsonl":
                try:
                    value = json.loads(line)
                except (json.JSONDecodeError, RecursionError, ValueError):
                    value = line.strip()  # TOFU's idontknow.jsonl is plain text despite its suffix
                value = _refusal_text(value, f"{path}:{number}")
            if value[:1] in "[{]}\"" and not any(character.isalnum() for character in value):  # `[`, `},`
                raise UserError(f"{path}:{number}: {short_repr(value)} is JSON syntax, not a refusal; name the "
                                "file .json (an array) or .jsonl (a value a line)")
            refusals.append(value)
    if not refusals:
        raise UserError(f"{path}: no refusal strings found; {HOW}")
    return refusals


#: The refusal file of TOFU's data directory (100 lines, one refusal each).
TOFU_REFUSALS = "idontknow.jsonl"


def tofu_refusals_file(sources: list[str]) -> str | None:
    """TOFU's `idontknow.jsonl` beside the first data file (of `sources`) that has one, else None."""
    for source in sources:
        candidate = Path(source).expanduser().parent / TOFU_REFUSALS
        if Path(source).is_file() and candidate.is_file():
            return str(candidate.resolve())
    return None


def refusals_source(configured: str | None, request_refusals: str | None) -> str | None:
    """The refusal file a run uses: `objective.refusals` when set, else the request's own (TOFU's
    `idontknow.jsonl`), else None (the built-in `REFUSALS`)."""
    return configured or request_refusals
