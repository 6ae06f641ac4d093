"""What the engine returns for one scored answer."""

from __future__ import annotations

from dataclasses import dataclass

DETAIL_KEYS = ("logprobs", "preds", "targets", "mu", "sigma")


@dataclass
class AnswerStats:
    """Scores of one answer given its question.

    ``sum_nll`` = Σ_t −log p(a_t | q, a_<t) over the answer tokens including the final EOS;
    ``n_tokens`` = their number (0 when ``max_length`` cut the whole answer; then
    ``avg_nll`` is nan). With ``details``: per answer token, its log-prob (``logprobs``), the
    teacher-forced argmax (``preds``) and label (``targets``), and the mean and std of log p
    under the model's next-token distribution (``mu``, ``sigma``; min-k%++).
    """

    sum_nll: float
    n_tokens: int
    logprobs: list[float] | None = None
    preds: list[int] | None = None
    targets: list[int] | None = None
    mu: list[float] | None = None
    sigma: list[float] | None = None

    @property
    def avg_nll(self) -> float:
        """``sum_nll / n_tokens`` (nan for an answer with no tokens)."""
        return self.sum_nll / self.n_tokens if self.n_tokens else float("nan")

    def summary(self) -> AnswerStats:
        """The same scores without the per-token lists."""
        return AnswerStats(self.sum_nll, self.n_tokens)

    def to_json(self) -> dict:
        record = {"s": self.sum_nll, "n": self.n_tokens}
        for key in DETAIL_KEYS:
            if getattr(self, key) is not None:
                record[key] = getattr(self, key)
        return record

    @classmethod
    def from_json(cls, record: dict) -> AnswerStats:
        return cls(record["s"], record["n"], *(record.get(k) for k in DETAIL_KEYS))

    @classmethod
    def empty(cls, details: bool) -> AnswerStats:
        """An answer that ``max_length`` cut away entirely."""
        return cls(0.0, 0, [], [], [], [], []) if details else cls(0.0, 0)
