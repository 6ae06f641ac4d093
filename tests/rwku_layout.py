"""A two-target RWKU directory in the benchmark's processed layout (BENCHMARKS.md section 3):
Ada Example with every set, Bob Sample without the utility sets and the shipped corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _probe(query, answer, subject, level, kind="simple question", **extra):
    return {"subject": subject, "level": level, "query": query, "type": kind, "answer": answer, **extra}


def _write_target(root: Path, folder: str, name: str, utility_sets: bool) -> None:
    d = root / "Target" / folder
    d.mkdir(parents=True)
    sets = {
        "intro.json": [{"target": name, "intro": f"Please forget {name}. {name} is a writer."}],
        "forget_level1.json": [_probe(f"{name} was born in ___.", "Paris", name, "1", "cloze"),
                               _probe(f"{name} wrote ___ books.", "twelve", name, "1", "cloze"),
                               _probe(f"{name} studied ___.", "physics", name, "1", "cloze")],
        "forget_level2.json": [_probe(f"Where was {name} born?", "Paris", name, "2"),
                               _probe(f"What did {name} study?", "physics", name, "2")],
        "forget_level3.json": [_probe(f"Who wrote the river book?", name, name, "3", "affirmative suffix"),
                               _probe(f"Q: Who wrote it?\nA: {name}\nQ: Who studied physics?", name, name, "3",
                                      "incontext learning"),
                               _probe("Who is the writer from Paris?", name, name, "3", "role play")],
        "neighbor_level1.json": [_probe("The river begins in the ___.", "hills", name, "1", "cloze", neighbor="River")],
        "neighbor_level2.json": [_probe("Where does the river begin?", "in the hills", name, "2", neighbor="River")],
        "forget_mia.json": [{"subject": name, "ngram": 9, "text": f"{name} was born in Paris and studied physics."},
                            {"subject": name, "ngram": 9, "text": f"{name} published a first book at twenty."}],
        "retain_mia.json": [{"subject": name, "ngram": 9, "text": "The museum opens at nine in the morning."},
                            {"subject": name, "ngram": 9, "text": "Water boils at one hundred degrees."}],
    }
    if utility_sets:
        sets.update({
            "retain_mmlu.json": [{"question": "2 + 2 = ?", "choices": ["1", "2", "3", "4"], "answer": 3,
                                  "task": "elementary_mathematics", "subject": name,
                                  "examples": [{"question": "1 + 1 = ?", "choices": ["2", "3", "4", "5"],
                                                "answer": 0, "subject": "elementary_mathematics"}]}],
            "retain_bbh.json": [{"task": "boolean_expressions", "cot": "Q: True is\nA: So the answer is True.\n",
                                 "question": "not True is", "answer": "False", "subject": name}],
            "truthful.json": [{"question": "Can pigs fly?", "subject": name,
                               "mc1_targets": {"choices": ["No, pigs cannot fly.", "Yes, pigs fly."], "labels": [1, 0]},
                               "mc2_targets": {"choices": ["No, pigs cannot fly.", "No.", "Yes, pigs fly."],
                                               "labels": [1, 1, 0]}}],
            "triviaqa.json": [{"question": "Capital of France?", "answers": ["Paris", "paris city"], "subject": name}],
            "fluency.json": [{"instruction": "Describe the weather today.", "subject": name}],
            "positive.json": [{"id": f"{name} 0", "subject": name, "intro": "", "text": f"{name} is a writer."}],
            "passage.json": [{"subject": name, "text": f"{name} (born 1950) is a writer from Paris."}],
            "reject.json": [{"instruction": f"Where was {name} born?", "input": "", "subject": name,
                             "output": "I'm not certain about that."}],
        })
    for file, records in sets.items():
        (d / file).write_text(json.dumps(records), encoding="utf-8")


@pytest.fixture
def rwku_dir(tmp_path) -> Path:
    root = tmp_path / "rwku"
    _write_target(root, "1_Ada_Example", "Ada Example", utility_sets=True)
    _write_target(root, "2_Bob_Sample", "Bob Sample", utility_sets=False)
    return root
