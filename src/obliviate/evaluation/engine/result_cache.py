"""Per-item results on disk, so a re-run or an interrupted evaluation computes only what is missing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from obliviate.fingerprints import model_fingerprint, tokenizer_fingerprint
from obliviate.evaluation.engine.settings import ENGINE_VERSION
from obliviate.hardware import model_device


class ResultCache:
    """Per-item evaluation results on disk, one JSONL file per (model, tokenizer, settings).

    ``directory/<namespace[:20]>.jsonl`` holds one ``{"k": key, "v": value}`` record per line.
    New results are appended in chunks, each chunk one ``write`` followed by ``fsync``, so an
    interrupted run loses at most the chunk in flight; a torn last line is skipped on reading.
    Several processes may append to the same file (each line is self-contained).
    ``calls`` counts results computed (misses written), ``hits`` results served.
    """

    def __init__(self, directory: str | Path, namespace: str):
        self.directory = Path(directory)
        self.namespace = namespace
        self.path = self.directory / f"{namespace[:20]}.jsonl"
        self._data: dict[str, Any] = {}
        self.hits = 0
        self.calls = 0
        if self.path.is_file():
            with self.path.open(encoding="utf-8") as handle:
                for line in handle:
                    try:
                        record = json.loads(line)
                        self._data[record["k"]] = record["v"]
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn line from an interrupted write

    def key(self, *parts: Any) -> str:
        text = json.dumps([self.namespace, *parts], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def score_key(self, prompt: str, answer: str, details: bool, scoring: str = "answer", *,
                  batch: int | None = None, prompt_format: str | None = None) -> str:
        """Key of a scored answer: the prompt text (so the formatter is part of it), the answer,
        whether per-token details were kept and, unless it is the default, the scoring mode; with
        ``batch``, the scoring batch size too (where batch shapes change the rounding: bf16); with
        ``prompt_format``, a tag format's text (prompt_formats.py: BOS and joint tokenisation of
        text that a chat template would tokenise otherwise)."""
        extra = ([] if scoring == "answer" else [scoring]) + ([] if batch is None else [{"batch": batch}])
        extra += [] if prompt_format is None else [{"prompt_format": prompt_format}]
        return self.key("score", prompt, answer, details, *extra)

    def generation_key(self, prompt: str, max_new_tokens: int, stop_strings: tuple[str, ...],
                       decode: str = "plain", *, rows: int | None = None, prompt_format: str | None = None) -> str:
        """Key of a greedy generation: prompt text, token budget, stop strings and, unless it is
        the plain path, the decoding path (its rounding may flip a near-tied argmax); with
        ``rows``, the rows decoded together too (where they change the rounding: bf16); with
        ``prompt_format``, a tag format's text (as :meth:`score_key`)."""
        extra = ([] if decode == "plain" else [decode]) + ([] if rows is None else [{"rows": rows}])
        extra += [] if prompt_format is None else [{"prompt_format": prompt_format}]
        return self.key("generate", prompt, max_new_tokens, list(stop_strings), *extra)

    def get(self, key: str) -> Any:
        value = self._data.get(key)
        if value is not None:
            self.hits += 1
        return value

    def put_many(self, items: dict[str, Any]) -> None:
        if not items:
            return
        self._data.update(items)
        self.calls += len(items)
        self.directory.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps({"k": k, "v": v}, ensure_ascii=False) + "\n" for k, v in items.items())
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def __len__(self) -> int:
        return len(self._data)


def open_result_cache(
    model, tokenizer, directory: str | Path, settings: dict, *, fingerprint: str | None = None
) -> ResultCache:
    """A :class:`ResultCache` for this model, tokenizer and engine settings (e.g. precision,
    max_length). The prompt text, stop strings and ``max_new_tokens`` are part of each
    item's key, so one file serves every prompt formatter."""
    namespace = hashlib.sha256(
        json.dumps(
            {
                "engine": ENGINE_VERSION,
                "model": fingerprint or model_fingerprint(model),
                "tokenizer": tokenizer_fingerprint(tokenizer),
                "device": model_device(model).type,
                **settings,
            },
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    return ResultCache(directory, namespace)


def result_cache_for(model, tokenizer, cache, settings: dict, fingerprint: str | None = None) -> ResultCache | None:
    """The result cache a ``cache`` option names: None / False (none), True
    (``$OBLIVIATE_CACHE/eval``), a directory, or a :class:`ResultCache` itself."""
    if cache is None or cache is False:
        return None
    if isinstance(cache, ResultCache):
        return cache
    from obliviate.models import cache_dir

    directory = cache_dir() / "eval" if cache is True else Path(cache)
    return open_result_cache(model, tokenizer, directory, settings, fingerprint=fingerprint)
