"""A benchmark's plan of one engine call: the pairs to score and the questions to answer."""

from __future__ import annotations

from obliviate.evaluation.engine import AnswerStats, score_and_generate


class WorkPlan:
    """Collects (question, answer) pairs and questions; each call returns the index where its
    result will be, so a benchmark plans all its items first, runs the engine once (prompts
    shared, batches full) and then reads its results back by index."""

    def __init__(self):
        self.pairs: list[tuple[str, str]] = []
        self.details: list[bool] = []
        self.questions: list[str] = []
        self.references: list[str | None] = []

    def pair(self, question: str, answer: str, details: bool = False) -> int:
        """Score ``answer`` given ``question`` (with per-token details when asked)."""
        self.pairs.append((question, answer))
        self.details.append(details)
        return len(self.pairs) - 1

    def question(self, question: str, reference: str | None = None) -> int:
        """Answer ``question`` greedily; ``reference``, an answer the model may reproduce,
        lets the engine skip decoding the tokens it reproduces."""
        self.questions.append(question)
        self.references.append(reference)
        return len(self.questions) - 1

    def run(self, model, tokenizer, **engine_options) -> tuple[list[AnswerStats], list[str]]:
        """:func:`~obliviate.evaluation.engine.score_and_generate` over the whole plan."""
        return score_and_generate(model, tokenizer, self.pairs, self.questions, details=self.details,
                                  references=self.references, **engine_options)
