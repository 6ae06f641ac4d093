"""How much each model's greedy answers moved from the target's, per TOFU task.

    python examples/tofu_small/compare_answers.py runs/tofu_small/eval-target runs/tofu_small/eval-snap

For every question of a task: ROUGE-L recall (TOFU's scorer) of the unlearned model's answer
against the target model's answer to the same question; 1.0 = unchanged. SNAP's claim is that the
hard positives (TOFU's retain questions here) move less than the forget answers.
"""

import json
import sys
from pathlib import Path

from obliviate.evaluation.metrics import rouge_l_recall


def answers(eval_dir: str) -> dict[str, dict[str, str]]:
    data = json.loads((Path(eval_dir) / "tofu_eval.json").read_text(encoding="utf-8"))
    return {task: {row["question"]: row["generated"] for row in body["items"] if "generated" in row}
            for task, body in data["tasks"].items()}


def main(before_dir: str, after_dir: str) -> None:
    before, after = answers(before_dir), answers(after_dir)
    print("| task | questions | mean ROUGE-L recall of the new answer against the target's |")
    print("|---|---:|---:|")
    for task, old in before.items():
        pairs = [(old[q], after[task][q]) for q in old if q in after.get(task, {})]
        kept = sum(rouge_l_recall(a, b) for a, b in pairs) / max(len(pairs), 1)
        print(f"| {task} | {len(pairs)} | {kept:.3f} |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
