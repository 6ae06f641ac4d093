"""forget_vs_utility.png: one labelled point per model. Left: forget ROUGE-L (lower = forgotten)
against Model Utility; right: Forget Quality (log scale, higher = closer to the oracle) against
Model Utility. Best is top-left on the left panel, top-right on the right one."""

from __future__ import annotations

from pathlib import Path

COLOURS = {"target": "#d62728", "oracle": "#2ca02c", "method": "#1f77b4"}


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if r["kind"] != "skipped" and r["metrics"]["model_utility"] is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.2))
    for axis, x_of, xlabel in (
            (left, lambda m: m["forget"]["rougeL"], "forget ROUGE-L recall (lower = forgotten)"),
            (right, lambda m: m["forget_quality"], "Forget Quality (log; higher = closer to the oracle)")):
        placed = [(x_of(r["metrics"]), r["metrics"]["model_utility"], r) for r in points]
        placed = [(x, y, r) for x, y, r in placed if x is not None and not (axis is right and x <= 0)]
        for x, y, row in placed:
            marker = "*" if row["kind"] != "method" else "o"
            axis.scatter([x], [y], s=120 if marker == "*" else 45, marker=marker, color=COLOURS[row["kind"]],
                         zorder=3)
        if axis is right:
            axis.set_xscale("log")
        _labels(axis, placed, log_x=axis is right)
        axis.set_xlabel(xlabel)
        axis.set_ylabel("Model Utility")
        axis.grid(True, alpha=0.3)
    if points:
        target = next((r for r in points if r["kind"] == "target"), None)
        if target is not None:
            for axis in (left, right):
                axis.axhline(target["metrics"]["model_utility"], color=COLOURS["target"], lw=0.8, ls="--", alpha=0.6)
    fig.suptitle("TOFU: forgetting vs. utility (red: target, green: retraining oracle, blue: methods)")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)  # atomic: a reader never sees half a PNG
    return path


def _labels(axis, placed, *, log_x: bool) -> None:
    """One label per point, moved down a line while it would sit on an earlier label."""
    import math

    if not placed:
        return
    xs = [math.log10(x) if log_x else x for x, _, _ in placed]
    ys = [y for _, y, _ in placed]
    width, height = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    taken: list[tuple[float, float]] = []
    for (x, y, row), fx in sorted(zip(placed, xs), key=lambda item: -item[0][1]):
        nx, ny = (fx - min(xs)) / width, (y - min(ys)) / height
        for shift in (0, 1, -1, 2, -2, 3, -3, 4, -4, 5):  # lines below (+) or above (-) the point
            if not any(abs(nx - tx) < 0.18 and abs(ny - shift * 0.045 - ty) < 0.04 for tx, ty in taken):
                break
        taken.append((nx, ny - shift * 0.045))
        axis.annotate(row["name"], (x, y), textcoords="offset points", xytext=(5, 4 - 11 * shift), fontsize=8,
                      arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "#888"} if shift else None)
