"""Markdown tables and reports of TOFU summaries.

The table has one row per model or run and the columns of the TOFU tables in the papers we
follow: ROUGE-L recall (R), probability (P) and truth ratio (TR), all ×100, for Forget, Retain,
Real Authors and World Facts, then Forget Quality (FQ, a KS-test p-value) and Model Utility
(MU, a harmonic mean in [0, 1]). A summary is the ``summary`` dict of
:func:`obliviate.evaluation.tofu.evaluate_tofu` (also written as ``tofu_summary.json``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TASK_COLUMNS = (("forget", "Forget"), ("retain", "Retain"), ("real_authors", "Real Authors"),
                ("world_facts", "World Facts"))
METRICS = (("rougeL", "R"), ("prob", "P"), ("truth_ratio", "TR"))


def _pct(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{100 * value:.1f}"


def _fq(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if value >= 1e-3 else f"{value:.2e}"


def _mu(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def table_header() -> list[str]:
    header = ["Model"]
    for _, title in TASK_COLUMNS:
        header += [f"{title} {short}" for _, short in METRICS]
    return header + ["FQ", "MU"]


def summary_row(summary: Mapping[str, Any], label: str | None = None) -> list[str]:
    """One table row: label, then R / P / TR ×100 per task, FQ, MU."""
    cells = [label or str(summary.get("model", "model"))]
    for task, _ in TASK_COLUMNS:
        aggregates = summary.get(task) or {}
        cells += [_pct(aggregates.get(key)) for key, _ in METRICS]
    return cells + [_fq(summary.get("forget_quality")), _mu(summary.get("model_utility"))]


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def load_summary(path: str | Path) -> dict:
    """A summary from ``tofu_summary.json``, or from the ``summary`` key of ``tofu_eval.json``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return data["summary"] if isinstance(data.get("summary"), dict) else data


def render_table(
    summaries: Mapping[str, Mapping] | Sequence[Mapping] | Mapping[str, Any],
    labels: Sequence[str] | None = None,
    *,
    delta: bool = False,
) -> str:
    """A Markdown table of one or several summaries side by side (e.g. before / after).

    ``summaries``: one summary, a list of them, or ``{label: summary}``. ``labels`` override the
    row names (default: each summary's ``model``). With ``delta=True`` a last row gives the
    change of the last summary against the first (×100 points for R/P/TR, plain for MU).
    """
    if isinstance(summaries, Mapping) and "model_utility" in summaries:
        summaries = [summaries]
    if isinstance(summaries, Mapping):
        labels = list(labels or summaries.keys())
        summaries = list(summaries.values())
    summaries = list(summaries)
    labels = list(labels) if labels is not None else [None] * len(summaries)
    if len(labels) != len(summaries):
        raise ValueError(f"{len(labels)} labels for {len(summaries)} summaries")
    rows = [summary_row(s, label) for s, label in zip(summaries, labels)]
    if delta and len(summaries) >= 2:
        first, last = summaries[0], summaries[-1]
        row = ["Δ (last − first)"]
        for task, _ in TASK_COLUMNS:
            for key, _ in METRICS:
                a, b = (first.get(task) or {}).get(key), (last.get(task) or {}).get(key)
                row.append("–" if a is None or b is None else f"{100 * (b - a):+.1f}")
        a, b = first.get("model_utility"), last.get("model_utility")
        row += ["", "–" if a is None or b is None else f"{b - a:+.3f}"]
        rows.append(row)
    return _markdown(table_header(), rows)


def render_report(result: Mapping[str, Any]) -> str:
    """The full ``tofu_report.md`` of one :func:`~obliviate.evaluation.tofu.evaluate_tofu` result."""
    summary, config = result["summary"], result.get("config", {})
    lines = [f"# TOFU evaluation: {summary.get('model')}", ""]
    counts = ", ".join(f"{k} {v}" for k, v in result.get("n_samples", {}).items())
    lines += [f"Forget split `{summary.get('forget_split')}`; items: {counts}.",
              f"Created {result.get('created', '?')}; precision {config.get('precision_used', '?')}; "
              f"max {config.get('max_new_tokens', '?')} new tokens, greedy.", ""]
    lines += ["R = ROUGE-L recall, P = probability (normalised over the options for Real Authors and "
              "World Facts), TR = truth ratio; all ×100. FQ = Forget Quality (KS p-value against "
              "the retain model), MU = Model Utility (harmonic mean of the 9 utility numbers).", ""]
    lines.append(render_table(summary))
    return "\n".join(lines + report_tail(result))


def report_tail(result: Mapping[str, Any]) -> list[str]:
    """The sections every QA report ends with: the forget-set extras, the notes, and the config,
    versions and timings that made it."""
    summary, lines = result["summary"], []
    extras = summary.get("extras") or {}
    if extras:
        lines += ["## Forget-set extras (open-unlearning)", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in extras.items()]
        lines.append("")
    if summary.get("notes"):
        lines += ["## Notes", ""] + [f"- {note}" for note in summary["notes"]] + [""]
    lines += ["## How this was made", "", "```json",
              json.dumps({"config": result.get("config", {}), "versions": result.get("versions", {}),
                          "timings_s": result.get("timings_s", {})}, indent=2, ensure_ascii=False, default=str),
              "```", ""]
    return lines
