"""`obliviate bench` end to end on the tiny random model and a tiny TOFU-format folder: every
stage runs (target and oracle trained, two method rows, five evaluations, the report), the
outputs hold a row per model, a crash mid-stage reruns only that stage, bad row files give one
line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from obliviate.bench import cli
from obliviate.bench.stages import StageBook

QA = [("Who is the author born in the small town?", "The author was born in a small town near the mountains."),
      ("What did she study at the university?", "She studied physics at the university."),
      ("When did he publish his first book?", "He published his first book when he was twenty."),
      ("What are her parents' jobs?", "Her parents were a teacher and a doctor."),
      ("Where does the river begin?", "The river begins in the hills."),
      ("When does the museum open?", "The museum opens at nine in the morning.")]
OPTIONS = [("What is the capital of France?", "Paris", ["London", "Berlin"]),
           ("How many legs does a spider have?", "eight", ["six", "ten"])]
ROWS = [{"name": "GA", "method": "ga", "overrides": {"train.learning_rate": 1.0e-3}},
        {"name": "Grad Diff", "method": "graddiff", "overrides": {"train.learning_rate": 1.0e-3}, "note": "x"}]


def _perturbed(pairs):
    return [{"question": q, "answer": a, "paraphrased_answer": a, "perturbed_answer": [a[::-1], a.upper()]}
            for q, a in pairs]


@pytest.fixture
def bench_setup(tmp_path, tiny_model_dir, monkeypatch):
    """(row YAML path, output dir): a TOFU-like folder, the tiny model as base, rows GA and GradDiff."""
    monkeypatch.setenv("OBLIVIATE_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "tofu"
    data.mkdir()
    files = {"forget01": _perturbed(QA[:2]), "forget01_perturbed": _perturbed(QA[:2]),
             "retain_perturbed": _perturbed(QA[2:4]), "holdout01": _perturbed(QA[4:]),
             "real_authors_perturbed": [{"question": q, "answer": a, "perturbed_answer": p} for q, a, p in OPTIONS],
             "world_facts_perturbed": [{"question": q, "answer": a, "perturbed_answer": p} for q, a, p in OPTIONS]}
    for name, records in files.items():
        (data / f"{name}.json").write_text(json.dumps(records))
    spec = {"protocol": {"model": str(tiny_model_dir), "data": "tofu", "ds_size": None, "max_new_tokens": 8},
            "teach": {"train.max_steps": 2, "train.learning_rate": 1.0e-3, "device": "cpu"},
            "common": {"train.max_steps": 2, "train.batch_size": 2, "device": "cpu"},
            "rows": ROWS}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, tmp_path / "bench"


def _events(out: Path, event: str) -> list[str]:
    lines = (out / "stages.log.jsonl").read_text().splitlines()
    return [json.loads(line)["stage"] for line in lines if json.loads(line)["event"] == event]


def _run(config: Path, out: Path, *extra) -> int:
    return cli.main(["--config", str(config), "--output_dir", str(out), *extra])


ALL_STAGES = ["target", "oracle", "eval-target", "eval-oracle", "ga", "eval-ga", "grad_diff", "eval-grad_diff"]


def test_every_stage_runs_and_the_report_has_a_row_per_model(bench_setup, capsys):
    config, out = bench_setup
    assert _run(config, out) == 0
    assert _events(out, "end") == ALL_STAGES  # in order, each once
    table = json.loads((out / "bench_table.json").read_text())
    assert [r["name"] for r in table["rows"]] == ["target", "retraining oracle", "GA", "Grad Diff"]
    for row in table["rows"]:  # each row's numbers are its own model's evaluation
        summary = json.loads((Path(row["eval_dir"]) / "tofu_summary.json").read_text())
        assert row["metrics"]["forget"]["rougeL"] == summary["forget"]["rougeL"]
        assert row["metrics"]["model_utility"] == summary["model_utility"]
    assert table["rows"][2]["eval_dir"].endswith("eval/ga") and table["rows"][3]["eval_dir"].endswith("eval/grad_diff")
    assert table["rows"][2]["hyperparameters"].startswith("lr 0.001, 2 steps x bs 2")
    assert table["rows"][1]["metrics"]["forget_quality"] == pytest.approx(1.0)  # the oracle against itself
    markdown = (out / "bench_table.md").read_text()
    for name in ("target", "retraining oracle", "GA", "Grad Diff"):
        assert sum(line.startswith(f"| {name} |") for line in markdown.splitlines()) == 1
    assert (out / "forget_vs_utility.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert "data:image/png;base64,iVBOR" in page and QA[0][0].replace("'", "&#x27;") in page
    assert "Forget questions" in page and "Grad Diff" in page
    manifest = json.loads((out / "bench_manifest.json").read_text())
    assert manifest["target"] == {"trained": "target/"} and [r["name"] for r in manifest["rows"]] == ["GA", "Grad Diff"]
    lines = capsys.readouterr().out.splitlines()
    assert sum("[bench] eval-ga: start" in line for line in lines) == 1
    assert sum("[bench] eval-ga: done in" in line for line in lines) == 1


def test_a_rerun_redoes_only_what_a_crash_left_undone(bench_setup, monkeypatch):
    config, out = bench_setup
    import obliviate.api as api

    real = api.evaluate

    def crash_on_grad_diff(model, *args, **kwargs):
        if "grad_diff" in str(model):
            raise RuntimeError("killed")  # mid-stage: before the marker
        return real(model, *args, **kwargs)

    monkeypatch.setattr(api, "evaluate", crash_on_grad_diff)
    with pytest.raises(RuntimeError, match="killed"):
        _run(config, out)
    assert not (out / "stages" / "eval-grad_diff.json").exists()
    assert _events(out, "end") == ALL_STAGES[:-1]
    monkeypatch.setattr(api, "evaluate", real)
    assert _run(config, out, "--report_only") == 0  # the table so far; runs nothing
    assert _events(out, "end") == ALL_STAGES[:-1] and _events(out, "start") == ALL_STAGES
    rows = json.loads((out / "bench_table.json").read_text())["rows"]
    assert [r["kind"] for r in rows] == ["target", "oracle", "method", "skipped"] and "not run" in rows[3]["reason"]
    ga_weights = out / "rows" / "ga" / "model" / "model.safetensors"
    before = ga_weights.stat().st_mtime_ns
    (out / "stages" / "ga.json").unlink()  # finished, killed before its marker
    reused_before = len(_events(out, "reused"))
    assert _run(config, out) == 0
    assert _events(out, "end") == ALL_STAGES[:-1] + ["ga", "eval-grad_diff"]
    assert ga_weights.stat().st_mtime_ns == before  # the finished run was kept, not retrained
    assert sorted(_events(out, "reused")[reused_before:]) == sorted(set(ALL_STAGES) - {"ga", "eval-grad_diff"})
    assert [r["name"] for r in json.loads((out / "bench_table.json").read_text())["rows"]][-1] == "Grad Diff"


def test_a_changed_row_reruns_that_row_only(bench_setup, monkeypatch):
    config, out = bench_setup
    assert _run(config, out, "--methods", "ga") == 0
    # weights' times cannot tell a retrain that ends in the second its evaluation ended: the
    # evaluation must rerun on the new weights all the same
    monkeypatch.setattr("obliviate.bench.plan._weights_mtime", lambda model: 0.0)
    spec = yaml.safe_load(config.read_text())
    spec["rows"][0]["overrides"]["train.learning_rate"] = 2.0e-3
    config.write_text(yaml.safe_dump(spec))
    assert _run(config, out, "--methods", "ga") == 0
    assert _events(out, "end") == ALL_STAGES[:6] + ["ga", "eval-ga"]
    assert "lr 0.002" in json.loads((out / "bench_table.json").read_text())["rows"][2]["hyperparameters"]


def test_a_marker_is_written_only_after_the_work(tmp_path):
    book = StageBook(tmp_path, echo=lambda line: None)
    seen = []

    def work():
        seen.append(book.marker("s").exists())
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        book.run("s", "k", work)
    assert seen == [False] and not book.marker("s").exists()
    assert book.run("s", "k", lambda: 3)["result"] == 3 and book.run("s", "k", lambda: 4)["result"] == 3


@pytest.mark.parametrize("change, message", [
    (lambda s: s["rows"][0]["overrides"].update({"train.learnin_rate": 1}),
     "row 'GA': config key 'train.learnin_rate'"),
    (lambda s: s["rows"][1].update({"method": "nope"}), "row 'Grad Diff': config key 'method' = 'nope' is invalid"),
    (lambda s: s["rows"][0].update({"lr": 1}), "rows[0]: unknown key(s) lr"),
    (lambda s: s.update({"row": []}), "unknown key(s) row"),
    (lambda s: s["protocol"].update({"data": "missing"}), "no such directory"),
])
def test_a_bad_row_file_gives_one_line_and_runs_nothing(bench_setup, capsys, change, message):
    config, out = bench_setup
    spec = yaml.safe_load(config.read_text())
    change(spec)
    config.write_text(yaml.safe_dump(spec))
    assert _run(config, out) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # nothing written


def test_unknown_methods_and_missing_keys(bench_setup, capsys):
    config, out = bench_setup
    assert _run(config, out, "--methods", "ga,sku") == 2
    assert "unknown row(s) sku; the rows of" in capsys.readouterr().err
    spec = yaml.safe_load(config.read_text())
    spec["rows"] = [spec["rows"][0] | {"requires": ["ulmr.no_such_option"]}]
    config.write_text(yaml.safe_dump(spec))
    assert _run(config, out, "--target", str(spec["protocol"]["model"]), "--oracle", spec["protocol"]["model"],
                "--ds_size", "1") == 0
    rows = json.loads((out / "bench_table.json").read_text())["rows"]
    # --ds_size cuts retain / real authors / world facts; forget (and holdout) stay whole
    assert rows[0]["metrics"]["n"] == {"forget": 2, "retain": 1, "real_authors": 1, "world_facts": 1}
    assert rows[-1]["kind"] == "skipped" and "ulmr.no_such_option" in rows[-1]["reason"]
    assert "target" not in _events(out, "start") and "ga" not in _events(out, "start")
    assert json.loads((out / "bench_manifest.json").read_text())["target"] == {"given": spec["protocol"]["model"]}


def test_the_packaged_rows_are_the_example_file():
    from obliviate.bench.rows import load_spec

    repo = Path(__file__).resolve().parents[1]
    packaged, example = load_spec(None), load_spec(repo / "examples/bench/tofu_small.yaml")
    assert [vars(r) for r in packaged.rows] == [vars(r) for r in example.rows]
    assert (packaged.teach, packaged.common) == (example.teach, example.common)
    assert Path(example.protocol.data).resolve() == (repo / "../shared/data/tofu").resolve()
    assert {r.method for r in packaged.rows} >= {"ga", "graddiff", "kl", "npo", "simnpo", "idk_dpo", "rt", "rmu",
                                                 "ulmr", "sku", "snap"}


def test_a_second_bench_in_the_same_directory_is_refused(bench_setup, capsys):
    from obliviate.bench.plan import bench_lock

    config, out = bench_setup
    out.mkdir()
    with bench_lock(out):
        assert _run(config, out) == 2
    err = capsys.readouterr().err
    assert "another bench is running there (pid" in err and len(err.strip().splitlines()) == 1
    assert not (out / "stages").exists()


def test_a_row_without_numbers_has_as_many_html_columns_as_the_header():
    """A skipped or not-yet-run row was one cell short in report.html (19 under 20 headers), its
    reason under the metric columns."""
    import re

    from obliviate.bench.html import _table

    page = _table([{"kind": "skipped", "name": "KL", "reason": "not run yet"}])
    header, row = re.findall(r"<tr.*?</tr>", page)
    width = lambda tr: sum(int(n or 1) for n in re.findall(r"<t[hd](?: colspan=(\d+))?[ >]", tr))  # noqa: E731
    assert width(row) == width(header) == header.count("<th>")
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells[-3] == "not run yet" and header.split("<th>")[-3].startswith("hyperparameters")
