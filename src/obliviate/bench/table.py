"""The comparison table: one row per model (target, retraining oracle, each method), the ULMR
paper's layout (R / P / TR for forget, retain, real authors, world facts; x100 as TOFU reports
them) plus Forget Quality, Model Utility, MIA AUC, privleak, hyperparameters and wall times."""

from __future__ import annotations

SPLITS = [("forget", "Forget"), ("retain", "Retain"), ("real_authors", "Real Authors"), ("world_facts", "World Facts")]
METRICS = [("rougeL", "R"), ("prob", "P"), ("truth_ratio", "TR")]
# keys of the config shown elsewhere in the row (or paths): left out of the hyperparameter text
HIDDEN = ("model", "request", "output_dir", "method", "device")


def hyperparameters(config: dict, overrides: dict) -> str:
    """The row's training budget (resolved: common and presets included) and every key the row sets
    itself, e.g. `lr 1e-05, 5 ep x bs 8; beta=4.5`; `common:` is stated once, beside the table."""
    train = config.get("train", {})
    budget = f"{train['max_steps']} steps" if train.get("max_steps", -1) > 0 else f"{train.get('num_epochs', 0):g} ep"
    text = f"lr {train.get('learning_rate', 0):g}, {budget} x bs {train.get('batch_size')}"
    shown = ("train.learning_rate", "train.num_epochs", "train.max_steps", "train.batch_size")
    extra = []
    for key, value in overrides.items():
        if key in shown or key in HIDDEN:
            continue
        if isinstance(value, str) and "/" in value:
            value = value.rsplit("/", 1)[-1]  # a file: its name
        extra.append(f"{key.split('.', 1)[-1] if key.startswith(('objective.', 'train.')) else key}={value}")
    return text + ("; " + ", ".join(extra) if extra else "")


def _metrics(summary: dict) -> dict:
    extras = summary.get("extras") or {}
    values = {split: {m: (summary.get(split) or {}).get(m) for m, _ in METRICS} for split, _ in SPLITS}
    values.update(forget_quality=summary.get("forget_quality"), model_utility=summary.get("model_utility"),
                  mia_auc=extras.get("mia_min_k_auc"), privleak=extras.get("privleak"), n=summary.get("n"))
    return values


def table_rows(results: dict) -> list[dict]:
    """The table as JSON rows, in order: target, oracle, then the rows of the row YAML."""
    evals, models = results["evals"], results["models"]
    rows = []
    for name, label in (("target", "target"), ("oracle", "retraining oracle")):
        given = models[name].get("given")
        rows.append({"name": label, "kind": name, "method": "finetune",
                     "hyperparameters": f"given: {models[name]['model']}" if given else "teach (row YAML)",
                     "metrics": _metrics(evals[name]["summary"]), "eval_dir": evals[name]["dir"],
                     "wall_s": {"train": models[name].get("wall_s"), "eval": evals[name]["wall_s"]}})
    for row in results["rows"]:
        slug = row["slug"]
        entry = {"name": row["name"], "kind": "method", "method": row["method"], "note": row.get("note", "")}
        if row["name"] in results["skipped"] or slug not in evals:
            entry.update(kind="skipped", reason=results["skipped"].get(row["name"], "not run (yet)"))
        else:
            entry.update(hyperparameters=hyperparameters(results["configs"][slug], row["overrides"]),
                         metrics=_metrics(evals[slug]["summary"]), eval_dir=evals[slug]["dir"],
                         wall_s={"train": models[slug]["wall_s"], "eval": evals[slug]["wall_s"]})
        rows.append(entry)
    return rows


def why_not(row: dict) -> str:
    """The hyperparameter cell of a row without numbers: skipped (and why) or not run yet."""
    reason = row["reason"]
    return reason if reason.startswith("not run") else f"skipped: {reason}"


def _x100(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.2e}" if value != 0 and abs(value) < 10 ** -digits else f"{value:.{digits}f}"


def _minutes(seconds) -> str:
    return "–" if seconds is None else f"{seconds / 60:.1f}"


def markdown(rows: list[dict], protocol: dict, common: dict | None = None) -> str:
    head = ["Model", *[f"{label} {m}" for _, label in SPLITS for _, m in METRICS], "FQ", "MU", "MIA AUC",
            "privleak", "hyperparameters", "train min", "eval min"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 4) + "---|---:|---:|"]
    for row in rows:
        if row["kind"] == "skipped":
            lines.append(f"| {row['name']} | " + " | ".join(["–"] * (len(head) - 4))
                         + f" | {why_not(row)} | – | – |")
            continue
        m = row["metrics"]
        cells = [_x100(m[split][metric]) for split, _ in SPLITS for metric, _ in METRICS]
        cells += [_num(m["forget_quality"], 4), _num(m["model_utility"]), _num(m["mia_auc"]),
                  "–" if m["privleak"] is None else f"{m['privleak']:.1f}", row["hyperparameters"],
                  _minutes(row["wall_s"]["train"]), _minutes(row["wall_s"]["eval"])]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    sizes = (rows[0].get("metrics") or {}).get("n") or {}
    legend = (f"\nR = ROUGE-L recall, P = probability, TR = truth ratio (x100, TOFU's convention); FQ = Forget "
              f"Quality (KS p-value against the retraining oracle), MU = Model Utility, MIA AUC = min-k% "
              f"membership inference on forget vs holdout, privleak against the oracle's AUC. Items evaluated: "
              f"{', '.join(f'{k} {v}' for k, v in sizes.items())}; greedy answers up to "
              f"{protocol.get('max_new_tokens')} new tokens. Every row also: "
              f"{', '.join(f'{k}={v}' for k, v in (common or {}).items()) or 'nothing'} (`common:`).\n")
    return "\n".join(lines) + "\n" + legend
