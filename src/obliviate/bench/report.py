"""The bench's outputs from its results (bench/plan.py): bench_table.json and bench_table.md (the
table, bench/table.py), forget_vs_utility.png (bench/plot.py) and report.html (bench/html.py).
Always rewritten at the end of a run: cheap, and a rerun picks up a changed renderer."""

from __future__ import annotations

from pathlib import Path

from obliviate.bench import html, plot, table
from obliviate.io import atomic_write_json, atomic_write_text


def write_report(results: dict, root: Path, echo) -> dict[str, Path]:
    root = Path(root)
    rows = table.table_rows(results)
    text = table.markdown(rows, results["protocol"], results.get("common"))
    paths = {"json": root / "bench_table.json", "md": root / "bench_table.md",
             "png": root / "forget_vs_utility.png", "html": root / "report.html"}
    atomic_write_json(paths["json"], {"protocol": results["protocol"], "source": results["source"],
                                      "skipped": results["skipped"], "rows": rows})
    atomic_write_text(paths["md"], f"# TOFU method comparison ({results['source']})\n\n{text}")
    plot.plot(rows, paths["png"])
    atomic_write_text(paths["html"], html.render(rows, results, paths["png"], text))
    echo(f"[bench] report: {', '.join(str(p) for p in paths.values())}")
    return paths
