"""report.html: one self-contained page (the plot inlined as base64): the protocol, the table and,
for a few forget and retain questions, the true answer and every model's greedy answer, from the
evaluations' per-item logs (eval/<model>/tofu_eval.json)."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

from obliviate.bench.table import METRICS, SPLITS, _minutes, _num, _x100, why_not

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;
font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px}td.n{text-align:right}
tr.target{background:#fde8e8}tr.oracle{background:#e6f4e6}tr.skipped{color:#888}img{max-width:100%}
.q{font-weight:600;margin-top:1.2em}.truth{color:#2a6}"""


def _items(eval_dir: str, split: str) -> list[dict]:
    path = Path(eval_dir) / "tofu_eval.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))["tasks"][split]["items"]
    except (OSError, ValueError, KeyError):
        return []


def _table(rows: list[dict]) -> str:
    head = "".join(f"<th>{escape(label)} {m}</th>" for _, label in SPLITS for _, m in METRICS)
    out = [f"<table><tr><th>Model</th>{head}<th>FQ</th><th>MU</th><th>MIA AUC</th><th>privleak</th>"
           "<th>hyperparameters</th><th>train min</th><th>eval min</th></tr>"]
    for row in rows:
        if row["kind"] == "skipped":
            metrics = len(SPLITS) * len(METRICS) + 4  # the split columns, FQ, MU, MIA AUC, privleak
            out.append(f"<tr class=skipped><td>{escape(row['name'])}</td><td colspan={metrics}></td>"
                       f"<td>{escape(why_not(row))}</td><td></td><td></td></tr>")  # the reason: under hyperparameters
            continue
        m = row["metrics"]
        cells = [_x100(m[s][k]) for s, _ in SPLITS for k, _ in METRICS]
        cells += [_num(m["forget_quality"], 4), _num(m["model_utility"]), _num(m["mia_auc"]),
                  "–" if m["privleak"] is None else f"{m['privleak']:.1f}"]
        numbers = "".join(f"<td class=n>{c}</td>" for c in cells)
        wall = row["wall_s"]
        out.append(f"<tr class={row['kind']}><td>{escape(row['name'])}</td>{numbers}"
                   f"<td>{escape(row['hyperparameters'])}</td><td class=n>{_minutes(wall['train'])}</td>"
                   f"<td class=n>{_minutes(wall['eval'])}</td></tr>")
    return "\n".join(out) + "</table>"


def _answers(rows: list[dict], split: str, count: int = 3) -> str:
    """`count` questions of `split` spread over the split: the truth, then each model's answer."""
    scored = [r for r in rows if r["kind"] != "skipped"]
    logs = {r["name"]: {i.get("index"): i for i in _items(r["eval_dir"], split)} for r in scored}
    common = sorted(set.intersection(*(set(v) for v in logs.values()))) if logs else []
    if not common:
        return "<p>(no per-item logs)</p>"
    picks = sorted({common[round(k * (len(common) - 1) / max(count - 1, 1))] for k in range(count)})
    out = []
    for index in picks:
        first = logs[scored[0]["name"]][index]
        out.append(f"<p class=q>{escape(first.get('question', ''))}</p><p class=truth>truth: "
                   f"{escape(first.get('answer', ''))}</p><table>")
        for row in scored:
            item = logs[row["name"]][index]
            rouge = item.get("rougeL_recall")
            rouge_text = f"{rouge:.2f}" if isinstance(rouge, (int, float)) else ""
            out.append(f"<tr class={row['kind']}><td>{escape(row['name'])}</td><td class=n>{rouge_text}</td>"
                       f"<td>{escape(str(item.get('generated', '')))}</td></tr>")
        out.append("</table>")
    return "\n".join(out)


def render(rows: list[dict], results: dict, png: Path, markdown_table: str) -> str:
    picture = base64.b64encode(Path(png).read_bytes()).decode("ascii") if Path(png).is_file() else ""
    protocol = results["protocol"]
    facts = ", ".join(f"{k}: {escape(str(v))}" for k, v in protocol.items() if v is not None)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>obliviate bench: TOFU</title>
<style>{STYLE}</style></head><body>
<h1>TOFU method comparison</h1>
<p>Protocol ({escape(results['source'])}): {facts}. Rows: target, retraining oracle (the reference of
Forget Quality), then every method, each unlearning forget {escape(str(protocol.get('forget_split')))} from the
target while keeping {escape(str(protocol.get('retain_split')))}.</p>
{_table(rows)}
<p>R = ROUGE-L recall, P = probability, TR = truth ratio, x100. FQ = Forget Quality, MU = Model Utility.</p>
<img alt="forget vs utility" src="data:image/png;base64,{picture}">
<h2>Forget questions: before and after</h2>
<p>Greedy answers; the number is the answer's ROUGE-L recall against the truth.</p>
{_answers(rows, "forget")}
<h2>Retain questions: before and after</h2>
{_answers(rows, "retain")}
<h2>The table as Markdown</h2><pre>{escape(markdown_table)}</pre>
</body></html>
"""
