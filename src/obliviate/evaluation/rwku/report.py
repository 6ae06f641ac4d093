"""The ULMR paper's RWKU table: Forget FB / QA / AA / All, Neighbor FB / QA / All, MIA FM / RM,
Utility Gen / Rea / Tru / Fac / Flu. ROUGE-L recall, accuracies and F1 are shown x100, MIA as
LOSS x100 (mean NLL x100), fluency as the n-gram entropy itself."""

from __future__ import annotations

import math

#: (header, summary key, scale)
COLUMNS = (
    ("Forget FB ↓", "forget_fb", 100), ("Forget QA ↓", "forget_qa", 100), ("Forget AA ↓", "forget_aa", 100),
    ("Forget All ↓", "forget_all", 100), ("Neighbor FB ↑", "neighbor_fb", 100),
    ("Neighbor QA ↑", "neighbor_qa", 100), ("Neighbor All ↑", "neighbor_all", 100),
    ("MIA FM ↑", "mia_fm_loss_x100", 1), ("MIA RM ↓", "mia_rm_loss_x100", 1),
    ("Gen ↑", "mmlu", 100), ("Rea ↑", "bbh", 100), ("Tru ↑", "truthfulqa", 100), ("Fac ↑", "triviaqa", 100),
    ("Flu ↑", "fluency", 1),
)


def _cell(row: dict, key: str, scale: float) -> str:
    value = row.get(key)
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * scale:.1f}"


def table(rows: dict[str, dict]) -> str:
    """A Markdown table with one line per ``{label: summary row}``."""
    lines = ["| | " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    lines += [f"| {label} | " + " | ".join(_cell(row, k, s) for _, k, s in COLUMNS) + " |" for label, row in rows.items()]
    return "\n".join(lines) + "\n"


def render_rwku(envelope: dict) -> str:
    """The Markdown report of an RWKU envelope: the averaged row, then one row per target."""
    summary, config = envelope["summary"], envelope["config"]
    sizes = "all records" if config.get("ds_size") is None else f"first {config['ds_size']} records of each set"
    if config.get("utility_size"):
        sizes += f", first {config['utility_size']} of each utility set"
    return (f"# RWKU: {summary['model']}\n\n"
            f"Targets: {', '.join(summary['targets'])} ({sizes}); precision {config.get('precision_used')}, "
            f"device {config.get('device')}; created {envelope.get('created')}.\n\n"
            + table({"mean over targets": summary}) + "\n## Per target\n\n" + table(summary.get("per_target", {}))
            + "\nROUGE-L recall with the `rouge` package's semantics; greedy, 30 new tokens, stop at a newline. "
            "MIA: LOSS = 100 x mean token NLL of forget_mia (FM) / retain_mia (RM). "
            "Gen = MMLU accuracy, Rea = BBH EM, Tru = TruthfulQA MC1, Fac = TriviaQA F1, Flu = n-gram entropy.\n")
