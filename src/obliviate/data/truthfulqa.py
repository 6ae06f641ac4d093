"""TruthfulQA as SKU's normal data: questions with their best answers (BENCHMARKS.md section 4).

The source is ``TruthfulQA.csv`` (817 rows; columns Type, Category, Question, Best Answer,
Correct Answers, Incorrect Answers, Source) or a directory holding it. The copy beside the
project is ``../shared/data/truthfulqa``; :func:`default_truthfulqa` finds it from the current
directory or from the package's checkout, and returns None in a clone without it.

SKU's reference code (utils.py, create_truthfulqa_dataloader) also adds, for every question, a
second row whose answer is the whole "Correct Answers" text ("a; b; c", not split);
``correct_answers=True`` does the same.
"""

from __future__ import annotations

from pathlib import Path

from obliviate.data.loaders import load_records
from obliviate.data.request import QAItem
from obliviate.errors import UserError

FILE_NAME = "TruthfulQA.csv"
SHARED = Path("shared") / "data" / "truthfulqa"


def default_truthfulqa() -> Path | None:
    """``../shared/data/truthfulqa`` beside the working directory or beside this checkout."""
    checkout = Path(__file__).resolve().parents[3]  # src/obliviate/data/ -> the checkout
    for root in (Path.cwd().parent, checkout.parent):
        if (root / SHARED / FILE_NAME).is_file():
            return root / SHARED
    return None


def _csv_path(source: str | Path) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        raise UserError(f"{path}: no such file; give TruthfulQA.csv or the directory that holds it")
    return path


def load_truthfulqa(source: str | Path | None = None, *, correct_answers: bool = False,
                    limit: int | None = None) -> list[QAItem]:
    """``QAItem(Question, Best Answer)`` per row (plus one per correct answer with
    ``correct_answers``); ``limit`` keeps the first N rows. None: :func:`default_truthfulqa`."""
    source = source if source is not None else default_truthfulqa()
    if source is None:
        raise UserError("TruthfulQA not found (../shared/data/truthfulqa); give its directory or TruthfulQA.csv")
    path = _csv_path(source)
    records = load_records(str(path))[:limit] if limit is not None else load_records(str(path))
    items = []
    for number, record in enumerate(records):
        question, best = record.get("Question"), record.get("Best Answer")
        for name, value in (("Question", question), ("Best Answer", best)):
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"{path}: row {number + 2} has no '{name}'; the TruthfulQA header names it")
        items.append(QAItem(question=question, answer=best))
        if correct_answers and str(record.get("Correct Answers") or "").strip():
            items.append(QAItem(question=question, answer=str(record["Correct Answers"])))
    return items
