"""Read reference evaluation logs (typically a retain model's) in three formats.

* **TOFU legacy** (locuslab/tofu ``evaluate_util.py``): ``eval_log_aggregated.json`` maps
  task files (``eval_log.json``, ``eval_log_forget.json``, ``eval_real_author_wo_options.json``,
  ``eval_real_world_wo_options.json``) to per-item statistics ``{stat: {"<index>": value}}``
  (``avg_gt_loss``, ``avg_paraphrased_loss``, ``average_perturb_loss`` (list per item),
  ``rougeL_recall``, ``truth_ratio``, ``generated_text`` = [prompt, generation, ground truth],
  ...). A single task file (e.g. ``eval_log_forget.json``) is those statistics at top level.
* **open-unlearning** (``TOFU_EVAL.json``): ``{"forget_truth_ratio": {"agg_value": ...,
  "value_by_index": {"<index>": {"score": R}}}, ...}``.
* **obliviate**: ``{"tasks": {"forget": {"items": [{"index": i, "truth_ratio": R, ...}]}}}``.

Per-item truth ratios are returned in ONE convention: ``R = P̃_perturbed / P̃_correct =
exp(L_correct − mean_j L_pert_j)`` (see :func:`obliviate.evaluation.metrics.truth_ratio`), the
same as open-unlearning's ``score`` and TOFU's logged per-item ``truth_ratio``.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obliviate.errors import UserError
from obliviate.evaluation import metrics

FIX_HINT = (
    "pass a TOFU eval log (eval_log_aggregated.json or eval_log_forget.json), an "
    "open-unlearning TOFU_EVAL.json (or .json.gz) or an obliviate eval JSON"
)

# TOFU legacy task file -> our task name.
LEGACY_TASKS = {
    "eval_log.json": "retain",
    "eval_real_author_wo_options.json": "real_authors",
    "eval_real_world_wo_options.json": "world_facts",
    "eval_log_forget.json": "forget",
}
UTILITY_TASKS = ("retain", "real_authors", "world_facts")
# Tasks whose Prob is normalised against the perturbed options (TOFU: 'eval_log' not in name).
NORMALISED_PROB_TASKS = ("real_authors", "world_facts")


def load_json(path: str | Path) -> Any:
    """A log file's JSON; a ``.gz`` file is read through gzip (open-unlearning's logs ship so)."""
    path = Path(path).expanduser()
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; {FIX_HINT}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); {FIX_HINT}") from None
    except (UnicodeDecodeError, EOFError, OSError) as err:  # binary, a torn or non-gzip .gz, a folder
        what = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else (
            getattr(err, "strerror", None) or str(err) or type(err).__name__)
        raise UserError(f"{path}: cannot be read as a JSON log ({what}); {FIX_HINT}") from None


def detect_format(data: Any) -> str:
    if not isinstance(data, dict):
        return "unknown"
    if isinstance(data.get("tasks"), dict):
        return "obliviate"
    if isinstance(data.get("forget_truth_ratio"), dict):
        return "open_unlearning"
    if any(task in data for task in LEGACY_TASKS):
        return "tofu_legacy"
    if "avg_paraphrased_loss" in data and "average_perturb_loss" in data:
        return "tofu_legacy_task"
    return "unknown"


def _by_index(task: dict, stat: str, path: Path, where: str) -> list[Any]:
    """Values of one legacy per-item statistic, ordered by integer index."""
    values = task.get(stat)
    if not isinstance(values, dict) or not values:
        raise UserError(f"{path}: {where} has no per-item '{stat}'; {FIX_HINT}")
    try:
        return [values[key] for key in sorted(values, key=int)]
    except ValueError:
        raise UserError(f"{path}: {where} '{stat}' has a non-integer index; {FIX_HINT}") from None


def legacy_truth_ratios(task: dict, path: Path, where: str) -> list[float]:
    correct = _by_index(task, "avg_paraphrased_loss", path, where)
    perturbed = _by_index(task, "average_perturb_loss", path, where)
    if len(correct) != len(perturbed):
        raise UserError(f"{path}: {where} has {len(correct)} paraphrased but "
                        f"{len(perturbed)} perturbed losses; {FIX_HINT}")
    try:
        return metrics.truth_ratio(correct, perturbed).tolist()
    except (TypeError, ValueError):
        raise UserError(f"{path}: {where} losses are not numbers / equal-length lists; "
                        f"{FIX_HINT}") from None


@dataclass(frozen=True)
class LoggedItem:
    """One forget item of a log, by its index in the log."""

    index: int
    text: str | None  # the question, or the logged prompt that holds it; None when not logged
    truth_ratio: float | None  # R = P̃_perturbed / P̃_correct; None when the log has none


def _first_text(value: Any) -> str | None:
    if isinstance(value, list | tuple) and value and isinstance(value[0], str):
        return value[0]
    return value if isinstance(value, str) else None


def _legacy_items(task: dict, path: Path, where: str) -> list[LoggedItem]:
    """R recomputed from the losses, the prompt ``generated_text[i][0]`` ("[INST] q [/INST]",
    "Question: q\\n", ...) as the text."""
    ratios = legacy_truth_ratios(task, path, where)
    keys = sorted(task["avg_paraphrased_loss"], key=int)
    texts = task.get("generated_text") if isinstance(task.get("generated_text"), dict) else {}
    return [LoggedItem(int(key), _first_text(texts.get(key)), ratio) for key, ratio in zip(keys, ratios)]


def _open_unlearning_items(data: dict, path: Path) -> list[LoggedItem]:
    """``forget_truth_ratio.value_by_index[i].score`` (None kept: open-unlearning skips such
    items), the question from ``forget_Q_A_ROUGE.value_by_index[i].input`` (the rendered chat
    prompt) when present."""
    scores = data["forget_truth_ratio"].get("value_by_index")
    if not isinstance(scores, dict) or not scores:
        raise UserError(f"{path}: 'forget_truth_ratio' has no 'value_by_index'; {FIX_HINT}")
    rouge = (data.get("forget_Q_A_ROUGE") or {}).get("value_by_index")
    rouge = rouge if isinstance(rouge, dict) else {}
    try:
        items = []
        for key in sorted(scores, key=int):
            if not isinstance(scores[key], dict | None):
                raise TypeError(key)
            score = (scores[key] or {}).get("score")
            entry = rouge.get(key)
            text = entry.get("input") if isinstance(entry, dict) else None
            items.append(LoggedItem(int(key), text if isinstance(text, str) else None,
                                    None if score is None else float(score)))
        return items
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: 'forget_truth_ratio.value_by_index' entries must be "
                        f'{{"score": number}} under integer keys; {FIX_HINT}') from None


def _obliviate_items(data: dict, path: Path) -> list[LoggedItem]:
    """Our own ``tasks.forget.items``: index, question, truth_ratio."""
    rows = (data["tasks"].get("forget") or {}).get("items")
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{path}: no 'tasks.forget.items' list; {FIX_HINT}")
    try:
        return [LoggedItem(int(row["index"]), _first_text(row.get("question")), float(row["truth_ratio"]))
                for row in sorted(rows, key=lambda row: int(row["index"]))]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise UserError(f"{path}: every 'tasks.forget.items' entry needs a numeric 'index' and "
                        f"'truth_ratio'; {FIX_HINT}") from None


def forget_items(path: str | Path) -> list[LoggedItem]:
    """The forget items of a log, ordered by index: the TOFU legacy aggregated log (its
    ``eval_log_forget.json``) or a single legacy task file (assumed to be the forget task's), R
    recomputed from ``avg_paraphrased_loss`` and ``average_perturb_loss`` exactly as TOFU's
    Forget Quality does; open-unlearning's ``forget_truth_ratio.value_by_index[*].score``; or
    obliviate's ``tasks.forget.items``. Raises :class:`UserError` for a missing, malformed or
    unknown file."""
    path = Path(path)
    data = load_json(path)
    kind = detect_format(data)
    if kind == "tofu_legacy":
        if not isinstance(data.get("eval_log_forget.json"), dict):
            raise UserError(f"{path}: TOFU log without an 'eval_log_forget.json' task; {FIX_HINT}")
        return _legacy_items(data["eval_log_forget.json"], path, "eval_log_forget.json")
    if kind == "tofu_legacy_task":
        return _legacy_items(data, path, "the task log")
    if kind == "open_unlearning":
        return _open_unlearning_items(data, path)
    if kind == "obliviate":
        return _obliviate_items(data, path)
    raise UserError(f"{path}: unknown log format (no 'eval_log_forget.json', "
                    f"'forget_truth_ratio' or 'tasks' key); {FIX_HINT}")


def forget_truth_ratios(path: str | Path) -> list[float]:
    """Per-item forget-set truth ratios ``R = P̃_perturbed / P̃_paraphrased`` of a log
    (:func:`forget_items`), ordered by index; items without a value are left out, as
    open-unlearning leaves them out."""
    return [item.truth_ratio for item in forget_items(path) if item.truth_ratio is not None]


def _legacy_task_aggregates(task: dict, name: str, path: Path) -> dict[str, float]:
    """ROUGE / Prob / Truth Ratio of one legacy task, as TOFU's get_model_utility computes."""
    where = next(file for file, task_name in LEGACY_TASKS.items() if task_name == name)
    rouge = _by_index(task, "rougeL_recall", path, where)
    gt_nll = _by_index(task, "avg_gt_loss", path, where)
    if name in NORMALISED_PROB_TASKS:
        perturbed = _by_index(task, "average_perturb_loss", path, where)
        prob = metrics.normalised_probability(gt_nll, perturbed)
    else:
        prob = metrics.probability(gt_nll)
    ratios = legacy_truth_ratios(task, path, where)
    aggregate_tr = metrics.truth_ratio_forget if name == "forget" else metrics.truth_ratio_retain
    return {
        "rouge_l_recall": float(sum(rouge) / len(rouge)),
        "probability": float(prob.mean()),
        "truth_ratio": aggregate_tr(ratios),
    }


def aggregate_from_tofu_log(path: str | Path) -> dict[str, Any]:
    """Recompute TOFU's aggregates from a legacy ``eval_log_aggregated.json``.

    Returns ``{task: {"rouge_l_recall", "probability", "truth_ratio"}}`` for each task present
    (``retain``, ``real_authors``, ``world_facts``, ``forget``) and ``"model_utility"``, the
    harmonic mean of the 9 utility numbers (None if a utility task is missing). TOFU names:
    "ROUGE/Prob./Truth Ratio" x "Retain/Real Authors/Real World/Forget", "Model Utility".
    """
    path = Path(path)
    data = load_json(path)
    if detect_format(data) != "tofu_legacy":
        raise UserError(f"{path}: not a TOFU eval_log_aggregated.json (needs task keys such as "
                        f"'eval_log.json'); {FIX_HINT}")
    result: dict[str, Any] = {}
    for file_name, name in LEGACY_TASKS.items():
        if isinstance(data.get(file_name), dict):
            result[name] = _legacy_task_aggregates(data[file_name], name, path)
    if all(name in result for name in UTILITY_TASKS):
        nine = [result[name][key] for name in UTILITY_TASKS
                for key in ("rouge_l_recall", "probability", "truth_ratio")]
        result["model_utility"] = metrics.model_utility(nine)
    else:
        result["model_utility"] = None
    return result
