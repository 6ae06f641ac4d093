"""Forget FB / QA / AA and neighbor FB / QA probes, scored as RWKU's eval_forget.py does.

Greedy decoding, at most 30 new tokens, stopped at EOS, the end of turn or a newline; an
empty output becomes ``"NOANSWER"``. Score of a set = mean over its probes of the ROUGE-L
recall of the answer by the output with the ``rouge`` package's semantics
(:func:`obliviate.evaluation.rouge.rouge_l_recall_rwku`): ``rouge.Rouge().get_scores(hyps,
refs, avg=True)["rouge-l"]["r"]``. Lower is better on forget sets, higher on neighbor sets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from obliviate.evaluation import metrics
from obliviate.evaluation.engine import plain_formatter
from obliviate.evaluation.rwku.prompts import KIND_OF_SET, probe_prompt

MAX_NEW_TOKENS = 30
STOP_STRINGS = ("\n",)
NO_ANSWER = "NOANSWER"
#: The prompts are complete texts already: the engine takes them as they are.
RAW = plain_formatter("{question}")


def generate_answers(model, tokenizer, prompts: Sequence[str], **engine) -> list[str]:
    """Greedy outputs of RWKU's probe decoding for full ``prompts``; ``engine`` options go to
    :func:`~obliviate.evaluation.engine.score_and_generate` (batch_size, precision, cache, ...)."""
    from obliviate.evaluation.engine import score_and_generate

    _, texts = score_and_generate(model, tokenizer, (), list(prompts), formatter=RAW, stop_strings=STOP_STRINGS,
                                  max_new_tokens=MAX_NEW_TOKENS, **engine)
    return [text.strip() or NO_ANSWER for text in texts]


def score_probe_sets(model, tokenizer, sets: Mapping[str, Sequence[dict]], *, use_prompt: bool = False,
                     **engine) -> dict[str, dict]:
    """``{set: {"n", "aggregates": {"rougeL_recall"}, "items"}}`` for probe sets named as in
    :data:`~obliviate.evaluation.rwku.prompts.KIND_OF_SET`; all prompts go to the engine in
    one call so batches are full."""
    prompts = {name: [probe_prompt(tokenizer, r, KIND_OF_SET[name], use_prompt) for r in records]
               for name, records in sets.items()}
    flat = [p for name in sets for p in prompts[name]]
    outputs = iter(generate_answers(model, tokenizer, flat, **engine))
    tasks = {}
    for name, records in sets.items():
        items = []
        for record, prompt in zip(records, prompts[name]):
            output = next(outputs)
            items.append({"query": record["query"], "answer": record["answer"], "type": record.get("type"),
                          "prompt": prompt, "generated": output,
                          "rougeL_recall": metrics.rouge_l_recall(record["answer"], output, variant="rwku")})
        tasks[name] = {"n": len(items), "items": items,
                       "aggregates": {"rougeL_recall": metrics.finite_mean([i["rougeL_recall"] for i in items])}}
    return tasks
