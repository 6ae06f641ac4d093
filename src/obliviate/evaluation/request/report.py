"""``request_report.md``: one row per set (and the base model's row and the change, when given)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from obliviate.evaluation.report import _markdown, _pct, report_tail

COLUMNS = (("rougeL", "R"), ("prob", "P"), ("truth_ratio", "TR"), ("rougeL_paraphrased_question", "R para-Q"))


def _delta(value: Any) -> str:
    return "–" if value is None else f"{100 * value:+.1f}"


def _share(value: Any) -> str:
    return "–" if value is None else f"{value:.0%}"


def request_table(summary: Mapping[str, Any]) -> str:
    """Rows: each set (model), its base value and the change when a base is known; columns R, P,
    TR, R para-Q ×100."""
    rows, base, change = [], summary.get("base") or {}, summary.get("change") or {}
    for name in summary.get("sets", []):
        values = summary.get(name) or {}
        rows.append([name, str((summary.get("n") or {}).get(name, "")), *(_pct(values.get(k)) for k, _ in COLUMNS)])
        if name in base:
            rows.append([f"{name} (base)", "", *(_pct(base[name].get(k)) for k, _ in COLUMNS)])
            rows.append([f"{name} Δ", "", *(_delta((change.get(name) or {}).get(k)) for k, _ in COLUMNS)])
    return _markdown(["Set", "n", *(short for _, short in COLUMNS)], rows)


def render_request(result: Mapping[str, Any]) -> str:
    """The full report of one request evaluation envelope."""
    summary, config = result["summary"], result.get("config", {})
    lines = [f"# Request evaluation: {summary.get('model')} on '{summary.get('request')}'", "",
             f"Created {result.get('created', '?')}; precision {config.get('precision_used', '?')}; max "
             f"{config.get('max_new_tokens', '?')} new tokens, greedy; base: {config.get('base') or 'none'}.", "",
             "R = ROUGE-L recall of the greedy answer, P = answer probability exp(−mean NLL), TR = truth ratio "
             "(forget: mean min(R, 1/R); retain, neighbors: mean max(0, 1 − R)), R para-Q = ROUGE-L recall of "
             "the answer to the paraphrased question; all ×100, Δ in points.", "",
             request_table(summary)]
    if summary.get("base"):
        shares = [f"forget drop {_share(summary.get('forget_drop'))} of the base's forget ROUGE-L recall"]
        shares += [f"{name} kept {_share(summary.get(f'{name}_kept'))}" for name in summary.get("sets", [])
                   if name != "forget"]
        lines += ["", "; ".join(shares) + "."]
    lines.append("")
    return "\n".join(lines + report_tail(result))
