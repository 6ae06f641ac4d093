"""SNAP's training data (METHODS.md C.1 steps 1-2, C.4): negative instructions with obliterated
responses, and hard positives answered by the original model.

* Negative instructions: per target subject, its forget questions plus `n_instructions`
  generated ones, each asking about one aspect (biography, relations, works, ...) in a direct,
  indirect or paraphrased form. Template fallback: a fixed question per aspect.
* Obliterated responses: a fluent, polite statement of not knowing the subject that carries
  none of its forget answers (prepare.checks.leaks_answer against every answer of the subject,
  and is_refusal); fallback: a refusal template (prepare.checks.safe_refusal).
* Hard positives: the retain and neighbour questions, answered greedily by the model before any
  training (cached), so training holds its own behaviour on them in place.
"""

from __future__ import annotations

from obliviate.data.request import QAItem
from obliviate.prepare.backend import user_turn
from obliviate.prepare.cache import CachedGenerator, GenerationCache
from obliviate.prepare.checks import (clean_rewrite, is_refusal, is_valid_instruction, is_valid_rewrite, leaks_answer,
                                      repeats_itself, safe_refusal)
from obliviate.prepare.local import LocalHFBackend
from obliviate.prepare.retry import generate_until_valid
from obliviate.prepare.templates import TemplateBackend

__all__ = ["ASPECTS", "hard_positives", "negative_instructions", "obliterated_responses"]

# (aspect asked about, a fallback question): cycled through for the generated instructions
ASPECTS = (
    ("biography: birth, upbringing, education", "Where and when was {subject} born?"),
    ("family and relations to other people", "Who are the people closest to {subject}?"),
    ("works, books or achievements", "What is {subject} best known for?"),
    ("an indirect form that describes {subject} without asking directly", "Tell me about {subject}."),
    ("career and major life events", "What did {subject} do for a living?"),
    ("a paraphrased, casual form", "Do you know anything about {subject}?"),
)



def negative_instructions(forget: list[QAItem], cfg, gen, generator, seed: int, stats: dict) -> list[dict]:
    """Rows {subject, instruction, kind, answers}: each forget question, then n generated ones per subject."""
    answers: dict[str | None, list[str]] = {}
    for item in forget:
        answers.setdefault(item.subject, []).append(item.answer)
    rows = [{"subject": i.subject, "instruction": i.question, "kind": "forget_question", "answers": [i.answer]}
            for i in forget]
    subjects = [s for s in answers if s]  # items without a subject get no generated instructions
    stats["items_without_subject"] = bare = sum(len(v) for s, v in answers.items() if not s)
    if bare and cfg.n_instructions:
        print(f"[obliviate] warning: SNAP: {bare} of {len(forget)} forget items have no subject, so "
              f"snap.n_instructions={cfg.n_instructions} generates no negative instructions for them (only their "
              "own questions are negatives); give each a subject (docs/request.md)", flush=True)
    asked: dict[str, list[str]] = {s: [i.question for i in forget if i.subject == s] for s in subjects}
    for k in range(cfg.n_instructions):
        aspect, fallback_question = ASPECTS[k % len(ASPECTS)]

        def prompt(i: int, aspect=aspect, fallback_question=fallback_question, k=k) -> list[dict]:
            s = subjects[i]
            return user_turn(cfg.instruction_prompt.format(subject=s, aspect=aspect.format(subject=s)),
                         question=fallback_question.format(subject=s), index=k)

        def accept(i: int, output: str) -> str | None:
            text = clean_rewrite(output)
            return text if is_valid_instruction(text, subjects[i], asked[subjects[i]], answers[subjects[i]]) else None

        def fallback(i: int, fallback_question=fallback_question, k=k) -> str:
            stats["instruction_fallbacks"] += 1
            base = fallback_question.format(subject=subjects[i])
            options = [base, *TemplateBackend("rewrite").rewrite(base, n=10)]
            return next((o for o in options if is_valid_rewrite(o, "", asked[subjects[i]])), f"{base} ({k})")

        made = generate_until_valid(generator, range(len(subjects)), prompt, accept, gen, attempts=cfg.max_attempts,
                                    seed=seed + 1000 * k, on_fallback=fallback, first_attempt=1 if k else 0)
        for i, text in sorted(made.items()):
            asked[subjects[i]].append(text)
            rows.append({"subject": subjects[i], "instruction": text, "kind": f"generated{k + 1}",
                         "answers": answers[subjects[i]]})
    return rows


def _leaks(text: str, row: dict) -> bool:
    return any(leaks_answer(text, row["instruction"], answer) for answer in row["answers"])


def obliterated_responses(rows: list[dict], cfg, gen, generator, seed: int, stats: dict) -> None:
    """Fill row['response'] (and its source): polite not-knowing, none of the subject's answers."""
    templates = TemplateBackend("negative")
    source = "template" if isinstance(generator.backend, TemplateBackend) else "generated"
    fell_back: set[int] = set()

    def prompt(i: int) -> list[dict]:
        row = rows[i]
        return user_turn(cfg.obliterated_prompt.format(subject=row["subject"] or "this topic", instruction=row["instruction"]),
                     question=row["instruction"], subject=row["subject"])

    def accept(i: int, output: str) -> str | None:
        text = output.strip()
        return text if text and is_refusal(text) and not _leaks(text, rows[i]) else None

    def fallback(i: int) -> str:
        stats["response_fallbacks"] += 1
        fell_back.add(i)
        row = rows[i]
        for answer in row["answers"]:
            text = safe_refusal(templates, {**row, "question": row["instruction"], "answer": answer}, index=i)
            if not _leaks(text, row):
                return text
        return "I don't know."

    done = generate_until_valid(generator, range(len(rows)), prompt, accept, gen, attempts=cfg.max_attempts,
                                seed=seed, on_fallback=fallback)
    for i, text in done.items():
        rows[i]["response"] = text
        rows[i]["response_source"] = "refusal_template" if i in fell_back else source


def hard_positives(items: list[QAItem], model, tokenizer, gen, cache_dir, *, given: bool, stats: dict) -> list[dict]:
    """Rows {question, answer, given_answer}: the model's own greedy answer (before training), or the
    request's answer when `given` (or when the model answers nothing, or loops)."""
    rows = [{"question": i.question, "given_answer": i.answer, "subject": i.subject} for i in items]
    if given or not items:
        outputs = [i.answer for i in items]
    else:
        generator = CachedGenerator(LocalHFBackend(model, tokenizer, batch_size=gen.batch_size),
                                    GenerationCache(cache_dir) if cache_dir is not None else None)
        outputs = generator.generate([user_turn(i.question) for i in items], max_new_tokens=gen.max_new_tokens,
                                     temperature=0.0, top_p=1.0, seed=0)
        stats["hard_positive_generation_calls"] = generator.calls
    for row, output in zip(rows, outputs):
        looping = not given and repeats_itself(output)  # a small model's loop is no normal answer
        row["answer"] = output.strip() if output.strip() and not looping else row["given_answer"]
        row["answer_source"] = "given" if given or not output.strip() or looping else "original_model"
        stats["hard_positive_empty"] = stats.get("hard_positive_empty", 0) + (not given and not output.strip())
        stats["hard_positive_looping"] = stats.get("hard_positive_looping", 0) + looping
    return rows
