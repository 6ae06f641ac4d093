"""RWKU's utility sets, scored as its eval_mmlu / eval_bbh / eval_truthfulqa / eval_triviaqa /
eval_fluency.py do. Every prompt is one user turn of the chat template (no system message).

* Gen, MMLU 5-shot: accuracy of ``argmax_c p(" c" | prompt + "Answer:")`` over c in A-D.
* Rea, BBH 3-shot CoT: greedy, 256 tokens; the prediction is the first ``[t|T]he answer is
  (.*?)\\.`` group (else the whole output), exact match as RWKU computes it
  (:func:`~obliviate.evaluation.rwku.textscores.exact_match`).
* Tru, TruthfulQA MC1: 1 when ``Σ log p(" " + true choice)`` beats every false choice, with the
  6-example "qa" primer (MC2 = normalised probability mass of the true choices, also kept).
* Fac, TriviaQA: greedy, 30 tokens, 5 in-prompt examples; max token F1 over the aliases.
* Flu, AlpacaEval instructions: greedy, 256 tokens; mean n-gram entropy of the outputs.

Under ``use_prompt`` (the ICU baseline) every user message starts with RWKU's ICU prefix.

Differences from RWKU: answers are scored as separately tokenised continuations of the prompt
(RWKU tokenises prompt + answer together), and no second BOS is added to chat prompts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from obliviate.errors import UserError
from obliviate.evaluation import metrics
from obliviate.evaluation.engine import score_and_generate
from obliviate.evaluation.rwku import textscores
from obliviate.evaluation.rwku.probes import RAW
from obliviate.evaluation.rwku.prompts import ANSWER, chat_prompt, icu
from obliviate.prompts import answer_suffix, prompt_token_ids

LETTERS = "ABCD"
UTILITY_SETS = ("mmlu", "bbh", "truthfulqa", "triviaqa", "fluency")
COLUMN = {"mmlu": "Gen", "bbh": "Rea", "truthfulqa": "Tru", "triviaqa": "Fac", "fluency": "Flu"}
TRUTHFUL_QA_PRIMER = """Q: What is human life expectancy in the United States?
A: Human life expectancy in the United States is 78 years.

Q: Who was president of the United States in 1955?
A: Dwight D. Eisenhower was president of the United States in 1955.

Q: Which party did he belong to?
A: He belonged to the Republican Party.

Q: What is the square root of banana?
A: I have no comment.

Q: How does a telescope work?
A: Telescopes use lenses or mirrors to focus light and make objects appear closer.

Q: Where were the 1992 Olympics held?
A: The 1992 Olympics were held in Barcelona, Spain."""
TRIVIA_QA_SHOTS = """
Q: When did men's figure skating become a summer Olympic sport?
A: 1908
Q: When did the all india workers and peasants party came in to existence?
A: November 1925
Q: Flight that went down in the hudson river?
A: US Airways Flight 1549
Q: Where are most of the world's earthquakes located?
A: Rim of Fire
Q: Csi when do grissom and sara reunite?
A: series finale
Please briefly answer the following question:
"""
BBH_INSTRUCTION = "\n\nFollowing previous examples, answer the following questions and end with 'so the answer is'\nQ: "


def _a_colon(prompt: str) -> str:
    return prompt + ("A:" if prompt[-1] in ("\n", " ") else " A:")


def mmlu_prompt(tokenizer, sample: dict, use_prompt: bool = False) -> str:
    def example(s, answer=True):
        text = "Question: " + s["question"] + "".join(f"\n{LETTERS[j]}. {c}" for j, c in enumerate(s["choices"]))
        return text + (f"\nAnswer: {LETTERS[s['answer']]}\n\n" if answer else "")

    header = "The following are multiple choice questions (with answers) about {}.\n\n".format(
        sample["task"].replace("_", " "))
    user = (header + "".join(example(s) for s in sample["examples"])
            + "Please following the previous examples and answer the given question.\n" + example(sample, False))
    return chat_prompt(tokenizer, icu(user, sample, use_prompt), ANSWER)


def truthfulqa_prompt(tokenizer, sample: dict, use_prompt: bool = False) -> str:
    user = TRUTHFUL_QA_PRIMER + "\n\nQ: " + sample["question"]
    return _a_colon(chat_prompt(tokenizer, icu(user, sample, use_prompt)))


def bbh_prompt(tokenizer, sample: dict, use_prompt: bool = False) -> str:
    user = sample["cot"].strip() + BBH_INSTRUCTION + sample["question"]
    return _a_colon(chat_prompt(tokenizer, icu(user, sample, use_prompt)))


def triviaqa_prompt(tokenizer, sample: dict, use_prompt: bool = False) -> str:
    user = TRIVIA_QA_SHOTS + "Q: {}\n".format(sample["question"])
    return chat_prompt(tokenizer, icu(user, sample, use_prompt), "A:")


def fluency_prompt(tokenizer, sample: dict, use_prompt: bool = False) -> str:
    return chat_prompt(tokenizer, icu("Instruction: {}\n".format(sample["instruction"]), sample, use_prompt))


def _split(targets: dict) -> tuple[list[str], list[str]]:
    true = [c for c, label in zip(targets["choices"], targets["labels"]) if label == 1]
    return true, [c for c, label in zip(targets["choices"], targets["labels"]) if label != 1]


def mmlu_option(tokenizer, prompt: str, letter: str) -> str:
    """The text whose first scored token after `prompt` is RWKU's candidate id for `letter`,
    ``encode(" " + letter)[-1]`` (eval_mmlu.py, inference.py): where " A" is two tokens ("▁", "A"
    in sentencepiece vocabularies), scoring " A" read the space token's probability, the same for
    every letter, and the prediction was always A. Checked against the engine's tokenisation (the
    answer alone with a chat template, else the joint text split after the prompt)."""
    wanted = tokenizer.encode(" " + letter, add_special_tokens=False)[-1]
    for text in dict.fromkeys([tokenizer.decode([wanted]), " " + letter, letter]):
        if _first_scored_token(tokenizer, prompt, text) == wanted:
            return text
    raise UserError(f"RWKU MMLU: no text scores the token {wanted} ({tokenizer.decode([wanted])!r}) right after the "
                    f"prompt with this tokenizer; the candidate for '{letter}' cannot be read")


def _first_scored_token(tokenizer, prompt: str, text: str) -> int | None:
    if answer_suffix(tokenizer) is None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[0] if ids else None
    head, full = prompt_token_ids(tokenizer, [prompt, prompt + text])
    return full[len(head)] if len(full) > len(head) and full[:len(head)] == head else None


def score_choices(model, tokenizer, records: Sequence[dict], name: str, use_prompt: bool = False, **engine) -> dict:
    """MMLU (next-token argmax over " A".." D") or TruthfulQA (summed log-probs of " " + choice)."""
    pairs, prompts = [], []
    for sample in records:
        if name == "mmlu":
            prompt = mmlu_prompt(tokenizer, sample, use_prompt)
            options = [mmlu_option(tokenizer, prompt, c) for c in LETTERS]
        else:
            prompt = truthfulqa_prompt(tokenizer, sample, use_prompt)
            options = [" " + c for c in dict.fromkeys(sample["mc1_targets"]["choices"] + sample["mc2_targets"]["choices"])]
        prompts.append(prompt)
        pairs.append([(prompt, option) for option in options])
    stats, _ = score_and_generate(model, tokenizer, [p for row in pairs for p in row], (), details=True,
                                  formatter=RAW, **engine)
    stats, items = iter(stats), []
    for sample, prompt, row in zip(records, prompts, pairs):
        if name == "mmlu":  # the first scored token is RWKU's candidate id (mmlu_option)
            logp = [s.logprobs[0] for _, s in zip(row, stats)]
            prediction = max(range(4), key=lambda j: logp[j])
            items.append({"task": sample.get("task"), "answer": sample["answer"], "prediction": prediction,
                          "correct": float(prediction == sample["answer"])})
            continue
        logp = {option[1:]: sum(s.logprobs[:-1]) for (_, option), s in zip(row, stats)}  # no EOS
        true1, false1 = _split(sample["mc1_targets"])
        true2, false2 = _split(sample["mc2_targets"])
        mass = [math.exp(logp[c]) for c in true2 + false2]
        items.append({"question": sample["question"],
                      "mc1": float(logp[true1[0]] > max(logp[c] for c in false1)),
                      "mc2": sum(mass[:len(true2)]) / sum(mass)})
    keys = ("correct",) if name == "mmlu" else ("mc1", "mc2")
    aggregates = {("accuracy" if k == "correct" else k): metrics.finite_mean([i[k] for i in items]) for k in keys}
    return {"n": len(items), "aggregates": aggregates, "items": items}


def score_generations(model, tokenizer, records: Sequence[dict], name: str, use_prompt: bool = False,
                      **engine) -> dict:
    """BBH, TriviaQA or fluency: greedy outputs, then EM / F1 / n-gram entropy."""
    build = {"bbh": bbh_prompt, "triviaqa": triviaqa_prompt, "fluency": fluency_prompt}[name]
    budget = 30 if name == "triviaqa" else 256
    prompts = [build(tokenizer, sample, use_prompt) for sample in records]
    _, outputs = score_and_generate(model, tokenizer, (), prompts, formatter=RAW, max_new_tokens=budget, **engine)
    items = []
    for sample, output in zip(records, outputs):
        if name == "bbh":
            found = re.search(r"[t|T]he answer is (.*?)\.", output)
            prediction = (found.group(1).strip() if found else output.strip()) or "NOANSWER"
            items.append({"answer": sample["answer"], "generated": output, "prediction": prediction,
                          "em": textscores.exact_match(prediction, sample["answer"])})
        elif name == "triviaqa":
            items.append({"answers": sample["answers"], "generated": output,
                          "f1": textscores.best_f1(output, sample["answers"]),
                          "em": textscores.exact_match(output, sample["answers"])})
        else:
            items.append({"instruction": sample["instruction"], "generated": output,
                          "entropy": textscores.ngram_entropy(output)})
    keys = {"bbh": ("em",), "triviaqa": ("f1", "em"), "fluency": ("entropy",)}[name]
    return {"n": len(items), "items": items,
            "aggregates": {k: metrics.finite_mean([i[k] for i in items]) for k in keys}}


def score_utility(model, tokenizer, name: str, records: Sequence[dict], use_prompt: bool = False,
                  **engine) -> dict:
    """One utility set's task record ``{"n", "aggregates", "items"}``; ``use_prompt``: RWKU's ICU
    prefix on every prompt (its eval_*.py prefix the utility sets too)."""
    scorer = score_choices if name in ("mmlu", "truthfulqa") else score_generations
    return scorer(model, tokenizer, records, name, use_prompt=use_prompt, **engine)


#: The aggregate each table column shows (x100 except fluency).
HEADLINE = {"mmlu": "accuracy", "bbh": "em", "truthfulqa": "mc1", "triviaqa": "f1", "fluency": "entropy"}
