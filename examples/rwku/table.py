"""Print the RWKU table of several evaluations: `python table.py OUT NAME...` reads
OUT/eval-NAME/rwku_summary.json for each NAME and prints one row per NAME (RWKU's columns)."""

import json
import sys
from pathlib import Path

from obliviate.evaluation.rwku.report import table

out, names = Path(sys.argv[1]), sys.argv[2:]
rows = {name: json.loads((out / f"eval-{name}" / "rwku_summary.json").read_text()) for name in names
        if (out / f"eval-{name}" / "rwku_summary.json").is_file()}
print(table(rows), end="")
