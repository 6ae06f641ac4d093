"""The bench's stages in order: target, oracle, their evaluations, then per row: unlearn, evaluate;
last the report. Every stage goes through StageBook (cached, resumable).

    <bench>/requests/{target,oracle,unlearn}.yaml   the three requests (absolute data paths)
    <bench>/target/, oracle/, rows/<row>/            run directories (methods/pipeline.py)
    <bench>/eval/<model>/                            TOFU evaluations (tofu_summary.json, tofu_eval.json)
    <bench>/stages/<stage>.json                      markers; stages.log.jsonl; bench_manifest.json
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import yaml

from obliviate.bench.rows import BenchSpec, Row, missing_requirements, row_config, teach_config
from obliviate.bench.stages import NotDone, StageBook, fingerprint
from obliviate.errors import UserError
from obliviate.io import atomic_write_json, atomic_write_text
from obliviate.models import resolve_model
from obliviate.rundir import take_lock


def check_data(spec: BenchSpec) -> Path:
    """The protocol's TOFU folder, resolved; a missing folder, split file or given model is refused
    naming where its value came from: the flag (`--data DIR`) or the row file's key."""
    data = Path(spec.protocol.data)
    elsewhere = "" if spec.from_flag("data") else ", or pass --data"
    if not data.is_dir():
        raise UserError(f"{spec.named('data')}: no such directory; give the TOFU data folder "
                        f"(e.g. ../shared/data/tofu){elsewhere}")
    for key, suffix in (("forget_split", ""), ("retain_split", ""), ("forget_split", "_perturbed")):
        split = getattr(spec.protocol, key) + suffix
        if not (data / f"{split}.json").is_file():
            fix = f"--{key}" if spec.from_flag(key) else f"protocol.{key} or --{key}"
            raise UserError(f"{spec.named(key)}: no {split}.json in {data.absolute()}; give a split that "
                            f"folder has ({fix}), or another data folder")
    for key in ("target", "oracle"):
        if getattr(spec.protocol, key):
            _given_model_key(getattr(spec.protocol, key), spec.named(key))
    if not (spec.protocol.target and spec.protocol.oracle):
        _check_base_model(spec)
    return data.resolve()


def _check_base_model(spec: BenchSpec) -> None:
    """protocol.model, which the target or the oracle is taught from, resolves (a local path
    exists, the default model is installed) before anything is written; a hub id is checked when
    it loads."""
    try:
        resolve_model(spec.protocol.model)
    except UserError as err:
        raise UserError(f"{spec.named('model')}: {str(err).split(': ', 1)[-1]}") from None


def write_requests(root: Path, data: Path, spec: BenchSpec) -> dict[str, Path]:
    forget = str(data / f"{spec.protocol.forget_split}.json")
    retain = str(data / f"{spec.protocol.retain_split}.json")
    specs = {"target": {"name": "bench-target", "forget": [forget, retain]},
             "oracle": {"name": "bench-oracle", "forget": retain},
             "unlearn": {"name": f"bench-{spec.protocol.forget_split}", "forget": forget, "retain": retain}}
    paths = {}
    for name, request in specs.items():
        paths[name] = atomic_write_text(root / "requests" / f"{name}.yaml", yaml.safe_dump(request, sort_keys=False))
    return paths


def _given_model_key(path: str, named: str) -> dict:
    """Identity of a model the user passed (--target/--oracle or the file's protocol.target/oracle,
    `named` for the error): its path and weight files' sizes/mtimes."""
    model = Path(path)
    if not model.exists():
        raise UserError(f"{named}: no such model directory; give a trained model's folder, or leave it out "
                        "to train it here")
    files = sorted(model.glob("*.safetensors")) if model.is_dir() else []
    weights = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]
    return {"path": str(model.resolve()), "weights": weights}


def _config_key(config) -> dict:
    values = config.to_dict()
    values.pop("output_dir", None)
    return values


def train_stage(book: StageBook, name: str, config, upstream: str = "") -> dict:
    """One pipeline run into config.output_dir, resumed from its checkpoints after a crash. Its
    marker is current while the run's saved config.yaml agrees with `config` on every key both
    have (rundir.check_resume_config: a field a newer obliviate adds does not redo finished runs)
    and it was trained from the same upstream model. The returned key is the weights' sha256."""
    from obliviate.rundir import config_agrees

    run_dir = Path(config.output_dir)

    def agrees() -> bool:
        return config_agrees(run_dir, config.to_dict())

    def current(record: dict) -> bool:
        same_upstream = record.get("result", {}).get("upstream", upstream) == upstream
        return same_upstream and (run_dir / "model").is_dir() and agrees()

    def work():
        from obliviate.methods.pipeline import run

        if run_dir.exists() and not agrees():
            shutil.rmtree(run_dir)  # another config's leftovers: start afresh
        if (run_dir / "manifest.json").is_file() and (run_dir / "model").is_dir():
            book.echo(f"[bench] {name}: the run finished before its marker was written; keeping it")
        else:
            resume = (run_dir / "checkpoints").is_dir()
            if run_dir.exists() and not resume:
                shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to resume
            run(config, resume=resume)
        return {"model": str(run_dir / "model"), "run_dir": str(run_dir), "upstream": upstream}

    key = fingerprint({"config": _config_key(config), "upstream": upstream})
    record = book.run(name, key, work, reset=lambda: shutil.rmtree(run_dir, ignore_errors=True), reuse=current)
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    return {**record["result"], "key": manifest["models"]["model"], "wall_s": record["wall_s"]}


def eval_data(root: Path, data: Path, spec: BenchSpec) -> Path:
    """The evaluation's TOFU folder: the forget split and its holdout whole (Forget Quality and the
    MIA need every forget item), retain / real authors / world facts cut to their first ds_size
    items. The evaluator's cache is keyed by item text, so items already scored stay cached."""
    from obliviate.evaluation.tofu.data import TASKS, holdout_split, load_split

    size, forget = spec.protocol.ds_size, spec.protocol.forget_split
    if size is None:
        return data
    out = root / "eval_data" / f"{forget}-first{size}"
    for task in TASKS:
        split = task.split.format(forget=forget)
        records = load_split(data, split)
        atomic_write_json(out / f"{split}.json", records if task.kind == "forget" else records[:size])
    holdout = holdout_split(forget)
    if any((data / f"{holdout}{suffix}").is_file() for suffix in (".json", ".jsonl", ".parquet")):
        atomic_write_json(out / f"{holdout}.json", load_split(data, holdout))
    return out


def eval_stage(book: StageBook, name: str, model: str, model_key: str, oracle: dict, spec: BenchSpec,
               data: Path) -> dict:
    """One TOFU evaluation. Current while it was computed from the same weights (the model's and
    the oracle's keys: sha256 of trained weights), its saved options (tofu_eval.json) are the ones
    asked for, and it finished after those weights were last written."""
    p = spec.protocol
    options = {"data": str(data), "forget_split": p.forget_split, "retain_model": oracle["model"],
               "max_new_tokens": p.max_new_tokens, "batch_size": p.eval_batch_size}
    out = book.root / "eval" / name
    key = fingerprint({"model": model_key, "oracle": oracle["key"], "options": options})

    def current(record: dict) -> bool:
        if record.get("fingerprint") != key:  # other weights: a row retrained within the same
            return False  # second as its evaluation finished looks older than it by mtime
        try:
            saved = json.loads((out / "tofu_eval.json").read_text(encoding="utf-8"))["config"]
            finished = datetime.fromisoformat(record["finished"]).timestamp()
        except (OSError, ValueError, KeyError, TypeError):
            return False
        wanted = {**{k: options[k] for k in ("data", "forget_split", "max_new_tokens", "batch_size")},
                  "ds_size": None, "retain_reference": f"model {oracle['model']}"}
        return (all(saved.get(k) == v for k, v in wanted.items())
                and all(_weights_mtime(m) <= finished + 1 for m in (model, oracle["model"])))

    def work():
        from obliviate.api import evaluate

        if out.exists():
            shutil.rmtree(out)  # a killed evaluation; the evaluator's cache keeps its finished items
        result = evaluate(model, benchmark="tofu", output_dir=out, progress=False, **options)
        return {"summary": result.summary, "dir": str(out)}

    record = book.run(f"eval-{name}", key, work, reset=lambda: shutil.rmtree(out, ignore_errors=True),
                      reuse=current)
    return {**record["result"], "wall_s": record["wall_s"]}


def _weights_mtime(model: str) -> float:
    path = Path(model)
    files = list(path.glob("*.safetensors")) if path.is_dir() else [path]
    return max((f.stat().st_mtime for f in files if f.exists()), default=0.0)


def base_model(name: str, spec: BenchSpec, book: StageBook, requests: dict, given: str | None) -> dict:
    """The target or the oracle: the given model, or a fine-tune of protocol.model on its request."""
    if given:
        return {"model": given, "key": fingerprint(_given_model_key(given, spec.named(name))), "given": True,
                "wall_s": None}
    config = teach_config(spec, model=spec.protocol.model, request=str(requests[name]),
                          output_dir=str(book.root / name))
    return {**train_stage(book, name, config), "given": False}


def check_rows(spec: BenchSpec, rows: list[Row], root: Path, requests: dict) -> dict[str, str]:
    """Every row's config is built before anything runs (a bad key fails now); rows whose required
    keys this build lacks are skipped: row name -> reason."""
    skipped = {}
    for row in rows:
        missing = missing_requirements(row)
        if missing:
            skipped[row.name] = f"config key(s) {', '.join(missing)} not available in this obliviate build"
            continue
        row_config(spec, row, model="target", request=str(requests["unlearn"]),
                   output_dir=str(root / "rows" / row.slug))
    if not (spec.protocol.target and spec.protocol.oracle):
        teach_config(spec, model=spec.protocol.model, request=str(requests["target"]), output_dir=str(root / "target"))
    return skipped


def run_bench(spec: BenchSpec, rows: list[Row], out_dir: str | Path, echo: Callable[[str], None] = print,
              report_only: bool = False) -> dict:
    """Run every missing stage; return the bench's results (what the report renders). The report
    is rewritten after each row, so a long bench shows its table so far."""
    data = check_data(spec)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise UserError(f"--output_dir {root}: a file, not a directory; choose another output_dir")
    planned = {name: root / "requests" / f"{name}.yaml" for name in ("target", "oracle", "unlearn")}
    skipped = check_rows(spec, rows, root, planned)  # every bad key is refused before anything is written
    root.mkdir(parents=True, exist_ok=True)
    with bench_lock(root):
        requests = write_requests(root, data, spec)
        if not report_only:
            _write_manifest(root, spec, rows, skipped)
        book = StageBook(root, echo, dry=report_only)
        return _stages(spec, rows, root, eval_data(root, data, spec), requests, skipped, book)


def _stages(spec, rows, root, data, requests, skipped, book) -> dict:
    from obliviate.bench.report import write_report

    try:
        models = {"target": base_model("target", spec, book, requests, spec.protocol.target),
                  "oracle": base_model("oracle", spec, book, requests, spec.protocol.oracle)}
        oracle, target = models["oracle"], models["target"]
        evals = {name: eval_stage(book, name, m["model"], m["key"], oracle, spec, data) for name, m in models.items()}
    except NotDone as stage:
        raise UserError(f"--report_only: stage '{stage}' of {root} is not done yet; run the bench first") from None
    configs = {r.slug: row_config(spec, r, model=target["model"], request=str(requests["unlearn"]),
                                  output_dir=str(root / "rows" / r.slug)) for r in rows if r.name not in skipped}
    results = {"protocol": vars(spec.protocol), "source": spec.source, "models": models, "evals": evals,
               "skipped": skipped, "common": spec.common, "rows": [vars(r) | {"slug": r.slug} for r in rows],
               "root": str(root), "configs": {slug: _config_key(c) for slug, c in configs.items()}}
    for row in rows:
        if row.name in skipped:
            book.echo(f"[bench] {row.slug}: skipped: {skipped[row.name]}")
            continue
        try:
            models[row.slug] = train_stage(book, row.slug, configs[row.slug], upstream=target["key"])
            evals[row.slug] = eval_stage(book, row.slug, models[row.slug]["model"], models[row.slug]["key"],
                                         oracle, spec, data)
        except NotDone:
            continue  # --report_only: this row is not done yet
        write_report(results, root, lambda line: None)
    write_report(results, root, book.echo)
    return results


@contextmanager
def bench_lock(root: Path):
    """One bench per directory: a second one started there is refused while the first runs."""
    lock = take_lock(root / "bench.lock", busy=f"--output_dir {root}: another bench is running there")
    try:
        yield
    finally:
        lock.release()


def _write_manifest(root: Path, spec: BenchSpec, rows: list[Row], skipped: dict) -> None:
    path = root / "bench_manifest.json"
    manifest = {"command": sys.argv, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "config": spec.source, "protocol": vars(spec.protocol),
                "target": {"given": spec.protocol.target} if spec.protocol.target else {"trained": "target/"},
                "oracle": {"given": spec.protocol.oracle} if spec.protocol.oracle else {"trained": "oracle/"},
                "teach": spec.teach, "common": spec.common,
                "rows": [{"name": r.name, "method": r.method, "overrides": r.overrides, "note": r.note} for r in rows],
                "skipped": skipped}
    atomic_write_json(path, manifest)
