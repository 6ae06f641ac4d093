"""Generate until every item has a usable text, then fall back for the rest.

A generated text that fails a check (it leaks the answer, repeats the question, does not
refuse) must be asked for again, but asking again the same way is useless: greedy decoding
gives the same text. So the first try uses the configured temperature (greedy by default) and
every later try samples at `SAMPLING_TEMPERATURE` or more, with its own seed (`seed + attempt`),
and only the items still without a usable text are asked again. After the last try a fallback
(a template) fills in, so preparation always finishes; the caller counts what fell back.

The prompts, temperatures and seeds of every try are a pure function of the inputs, so a rerun
sends the same requests in the same order and is served entirely from the generation cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from obliviate.prepare.backend import Messages

if TYPE_CHECKING:  # pragma: no cover
    from obliviate.config import GenerationConfig
    from obliviate.prepare.cache import CachedGenerator

__all__ = ["SAMPLING_TEMPERATURE", "generate_until_valid"]

SAMPLING_TEMPERATURE = 0.8  # retries sample, so they can differ from the rejected greedy text


def generate_until_valid(
    generator: CachedGenerator,
    pending: Iterable[int],
    make_prompt: Callable[[int], Messages],
    accept: Callable[[int, str], str | None],
    gen: GenerationConfig,
    *,
    attempts: int,
    seed: int,
    on_fallback: Callable[[int], str],
    first_attempt: int = 0,
) -> dict[int, str]:
    """A usable text for every index in `pending`: ``{index: text}``.

    Each try sends one batch: ``make_prompt(i)`` for every index still pending, in order.
    ``accept(i, output)`` returns the text to keep (it may clean the output) or None to ask
    again. After `attempts` tries, ``on_fallback(i)`` supplies the text of each index left, in
    order. Try number ``t`` (counted from `first_attempt`) runs at ``gen.temperature`` when
    ``t == 0``, else at ``max(gen.temperature, SAMPLING_TEMPERATURE)``, with seed ``seed + t``:
    ``first_attempt=1`` makes even the first try sample, e.g. for a second paraphrase that
    must differ from the first.
    """
    results: dict[int, str] = {}
    pending = list(pending)
    for attempt in range(first_attempt, first_attempt + attempts):
        if not pending:
            break
        temperature = gen.temperature if attempt == 0 else max(gen.temperature, SAMPLING_TEMPERATURE)
        outputs = generator.generate([make_prompt(i) for i in pending], max_new_tokens=gen.max_new_tokens,
                                     temperature=temperature, top_p=1.0, seed=seed + attempt)
        still = []
        for i, output in zip(pending, outputs):
            text = accept(i, output)
            if text is None:
                still.append(i)
            else:
                results[i] = text
        pending = still
    for i in pending:
        results[i] = on_fallback(i)
    return results
