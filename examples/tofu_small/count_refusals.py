"""How many greedy answers per TOFU task are refusals, in one or more `obliviate eval` outputs.

    python examples/tofu_small/count_refusals.py runs/tofu_small/eval-target runs/tofu_small/eval-ulmr
"""

import json
import sys
from pathlib import Path

from obliviate.methods.ulmr import is_refusal

for eval_dir in sys.argv[1:]:
    tasks = json.loads((Path(eval_dir) / "tofu_eval.json").read_text())["tasks"]
    counts = {name: f"{sum(is_refusal(item['generated']) for item in task['items'])}/{len(task['items'])}"
              for name, task in tasks.items() if task.get("items") and "generated" in task["items"][0]}
    print(eval_dir, counts)
