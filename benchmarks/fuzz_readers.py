"""Fuzz every reader of user files: for any bytes, a one-line UserError or a valid value; never
another exception, never a file written.

    python benchmarks/fuzz_readers.py              # 10,000 generated inputs per reader
    python benchmarks/fuzz_readers.py --n 500 --seed 3

Inputs are random bytes, mutations of valid files (flipped bytes, inserted BOMs, aliases, huge
numbers, deep brackets, NULs, odd newlines, cut files) and valid-looking generated records. Prints,
per reader, how many inputs were accepted and refused, and any other exception with its
traceback (exit status 1 if there was one). tests/test_reliability_fuzz.py uses READERS and
`check` with hypothesis.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from obliviate.config import RunConfig, load_config  # noqa: E402
from obliviate.data.passages import PassageItem  # noqa: E402
from obliviate.data.loaders import load_records  # noqa: E402
from obliviate.data.request import UnlearningRequest, load_request  # noqa: E402
from obliviate.errors import UserError  # noqa: E402
from obliviate.models import resolve_model  # noqa: E402


def _records(path: Path):
    records = load_records(str(path))
    assert isinstance(records, list) and all(isinstance(r, dict) for r in records)
    return records


def _request(path: Path):
    request = load_request(path)
    assert isinstance(request, UnlearningRequest) and request.forget
    for item in request.forget + request.retain + request.neighbors:
        assert isinstance(item.question, str) and isinstance(item.answer, str)
        # a question, or a raw passage (a forget record with only a 'text': PassageItem, no question)
        assert item.question.strip() or (isinstance(item, PassageItem) and item.answer.strip())
    assert all(isinstance(p, str) and p.strip() for p in request.passages)
    return request


def _config(path: Path):
    config = load_config(path)
    assert isinstance(config, RunConfig)
    return config


def _override(path: Path):
    text = path.read_bytes().decode("utf-8", "surrogateescape")  # as argv arrives from a shell
    config = load_config(None, [text])  # the whole `key=value`, key included
    assert isinstance(config, RunConfig)
    return config


def _model_dir(path: Path):
    folder = path.parent / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_bytes(path.read_bytes())
    return resolve_model(str(folder))


# reader name -> (file name the bytes are written to, function of that path)
READERS = {
    "records.json": ("data.json", _records),
    "records.jsonl": ("data.jsonl", _records),
    "records.csv": ("data.csv", _records),
    "records.parquet": ("data.parquet", _records),
    "request.yaml": ("request.yaml", _request),
    "request.json": ("request.json", _request),
    "config.yaml": ("run.yaml", _config),
    "override": ("override.txt", _override),
    "model_dir": ("config.json", _model_dir),
}


def check(reader: str, data: bytes, workdir: Path) -> str:
    """'ok' or 'refused'; raises AssertionError for a multi-line refusal or a write, and lets any
    other exception through (the finding)."""
    name, read = READERS[reader]
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.rglob("*"):
        if old.is_file():
            old.unlink()
    path = workdir / name
    path.write_bytes(data)
    before = _listing(workdir)
    try:
        read(path)
        outcome = "ok"
    except UserError as error:
        assert "\n" not in str(error) and len(str(error)) < 2000, f"not one short line: {str(error)[:300]!r}"
        outcome = "refused"
    after = _listing(workdir)
    if reader == "model_dir":
        before = before | {p for p in after if p.startswith("model")}
    assert after == before, f"files written: {sorted(after - before)}"
    return outcome


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


SEEDS = {
    "json": json.dumps([{"question": "Who?", "answer": "Her.", "perturbed_answer": ["a", "b"]},
                        {"question": "When?", "answer": "Then.", "subject": "X"}]).encode(),
    "jsonl": b'{"question": "Who?", "answer": "Her."}\n{"prompt": "When?", "response": "Then."}\n',
    "csv": b'question,answer,perturbed_answer\r\nWho?,Her.,"[""a"", ""b""]"\r\n"When, then?",Then.,x\r\n',
    "yaml": b"name: r\nforget:\n  - question: Who?\n    answer: Her.\nretain:\n  - {question: q, answer: a}\n"
            b"passages: [some text, {text: more}]\nsubject: S\n",
    "config": b"method: npo\nseed: 3\ntrain:\n  learning_rate: 2.0e-5\n  lora: {enabled: true, r: 4}\n"
              b"objective:\n  beta: 0.2\n",
    "override": b"train.lora.target_modules=q_proj,v_proj",
    "model": b'{"model_type": "llama", "hidden_size": 32, "architectures": ["LlamaForCausalLM"]}',
}
SEED_OF = {"records.json": "json", "records.jsonl": "jsonl", "records.csv": "csv", "records.parquet": "parquet",
           "request.yaml": "yaml", "request.json": "json", "config.yaml": "config", "override": "override",
           "model_dir": "model"}
def _parquet_seed() -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(json.loads(SEEDS["json"])), buffer)
    return buffer.getvalue()


SEEDS["parquet"] = _parquet_seed()
TOKENS = [b"\xef\xbb\xbf", b"\xff\xfe", b"\x00", b"\r", b"\r\n", b"\n", b"\xe9", b"\xed\xa0\x80", b"*a", b"&a ",
          b"null", b"[", b"{", b'"', b"'", b",", b":", b"- ", b"9" * 5000, b"[" * 3000, b"\\ud800", b".inf",
          b"nan", b"!!python/object:os.system", b"~", b"\t", b"\u2028".decode("unicode_escape").encode()]


def generate(reader: str, rng: random.Random) -> bytes:
    """One fuzz input: random bytes, or a valid seed with a few mutations."""
    if rng.random() < 0.2:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
    data = bytearray(SEEDS[SEED_OF[reader]])
    for _ in range(rng.randint(0, 4)):
        where = rng.randint(0, len(data))
        choice = rng.random()
        if choice < 0.4:
            data[where:where] = rng.choice(TOKENS)
        elif choice < 0.6 and data:
            data[min(where, len(data) - 1)] = rng.getrandbits(8)
        elif choice < 0.8:
            del data[where:where + rng.randint(1, 20)]
        else:
            data = data[:where]
    return bytes(data)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="inputs per reader")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--readers", default=",".join(READERS))
    args = parser.parse_args(argv)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for reader in args.readers.split(","):
            rng, counts, found = random.Random(f"{args.seed}:{reader}"), {"ok": 0, "refused": 0}, {}
            for index in range(args.n):
                data = generate(reader, rng)
                try:
                    counts[check(reader, data, Path(tmp) / reader)] += 1
                except Exception:  # noqa: BLE001 - the findings this script exists for
                    key = traceback.format_exc().strip().splitlines()[-1][:200]
                    found.setdefault(key, (index, data[:200], traceback.format_exc()))
            print(f"{reader:16s} inputs={args.n} ok={counts['ok']} refused={counts['refused']} "
                  f"other={args.n - counts['ok'] - counts['refused']} distinct_failures={len(found)}", flush=True)
            for key, (index, data, trace) in found.items():
                failures += 1
                print(f"--- {reader} input {index}: {data[:120]!r}\n" + "\n".join(trace.splitlines()[-8:])[:3000],
                      flush=True)
    print("no traceback" if not failures else f"{failures} distinct failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
