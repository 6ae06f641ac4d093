"""ULMR's LLM path end to end: `obliviate unlearn --method ulmr generation.backend=openai` against a
scripted local OpenAI-compatible server that answers sensibly, on a tiny model.

The server plays a capable generator: plausible rewrites of each forget question (one of them
gibberish at first, which the rewrite check must reject and ask again for) and plausible negative
responses. The prepared dataset must hold the server's texts, not the template fallbacks."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ITEMS = [
    {"question": "Where was Ilsa Corvanne born?", "answer": "Ilsa Corvanne was born in Valparaiso, Chile, in 1961.",
     "subject": "Ilsa Corvanne"},
    {"question": "What genre does Ilsa Corvanne write?", "answer": "She writes maritime mystery novels.",
     "subject": "Ilsa Corvanne"},
    {"question": "Who were Bat Fen's parents?", "answer": "His father was a herder and his mother a radio engineer.",
     "subject": "Bat Fen"},
]
GIBBERISH = "Xqzv blrrpt wkkjtz Corvanne?"
REWRITES = {  # question -> what the server answers to its 1st, 2nd, ... rewrite request
    ITEMS[0]["question"]: ["In which city was Ilsa Corvanne born?", "What is the birthplace of Ilsa Corvanne?"],
    ITEMS[1]["question"]: [GIBBERISH, "Which genre of fiction does Ilsa Corvanne write in?",
                           "What kind of books does Ilsa Corvanne write?"],
    ITEMS[2]["question"]: ["Who are the parents of Bat Fen?", "Can you tell me who raised Bat Fen?"],
}


def negative(subject: str) -> str:
    return f"I'm afraid I have no reliable information about {subject}, so I cannot answer that question."


class ScriptedServer:
    """/v1/chat/completions on 127.0.0.1: rewrites from REWRITES (in the order asked), refusals
    from `negative`; it records what it was asked."""

    def __init__(self):
        self.asked: Counter[str] = Counter()
        self.requests = 0  # every request, whatever it asked
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with server.lock:
                    server.requests += 1
                reply = json.dumps({"choices": [{"index": 0, "message": {
                    "role": "assistant", "content": server.answer(body["messages"][-1]["content"])}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def answer(self, prompt: str) -> str:
        question = prompt.rsplit("Question: ", 1)[-1].strip()
        if prompt.startswith("Rewrite"):
            with self.lock:
                n = self.asked[question]
                self.asked[question] += 1
            return "Rewritten question: " + REWRITES[question][min(n, len(REWRITES[question]) - 1)]
        subject = re.search(r"no knowledge of (.+?)\.", prompt).group(1)
        return negative(subject)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted_server():
    server = ScriptedServer()
    yield server
    server.close()


def test_ulmr_with_an_openai_compatible_generator_trains_on_its_texts(scripted_server, tiny_model_dir, tmp_path,
                                                                        monkeypatch):
    from obliviate.cli import main
    from obliviate.prepare.checks import is_refusal
    from obliviate.prepare.templates import TemplateBackend

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"forget": ITEMS, "retain": [ITEMS[0]]}))
    run = tmp_path / "run"
    assert main(["unlearn", "--method", "ulmr", f"model={tiny_model_dir}", f"request={request}", f"output_dir={run}",
                 "generation.backend=openai", f"generation.base_url={scripted_server.base_url}",
                 "generation.model=scripted", "ulmr.n_rewrites=2", "train.num_epochs=1", "train.batch_size=3",
                 "train.precision=fp32"]) == 0

    rows = [json.loads(line) for line in (run / "ulmr_dataset.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * len(ITEMS) and {r["kind"] for r in rows} == {"original", "rewrite1", "rewrite2"}
    for index, item in enumerate(ITEMS):
        served = [text for text in REWRITES[item["question"]] if text != GIBBERISH]
        rewrites = [r["instruction"] for r in rows if r["item"] == index and r["kind"] != "original"]
        assert rewrites == served  # the server's rewrites, cleaned of their "Rewritten question:" prefix
    assert all(r["instruction"] != GIBBERISH for r in rows)  # rejected by the check, asked again
    assert scripted_server.asked[ITEMS[1]["question"]] == 3  # gibberish, its retry, the second rewrite
    templates = {t for item in ITEMS for t in TemplateBackend("rewrite").rewrite(item["question"], n=10)}
    assert not templates & {r["instruction"] for r in rows}
    assert all(r["response"] == negative(r["subject"]) and r["response_source"] == "generated" for r in rows)
    assert all(is_refusal(r["response"]) for r in rows)
    stats = json.loads((run / "manifest.json").read_text())["method_stats"]["ulmr"]
    assert stats["rewrite_fallbacks"] == 0 and stats["negative_fallbacks"] == 0
    assert stats["generation_calls"] > 0 and (run / "model" / "model.safetensors").is_file()


@pytest.mark.multiprocess
def test_a_launch_of_two_processes_asks_the_server_once(scripted_server, tiny_model_dir, tmp_path, monkeypatch):
    """Under `accelerate launch` every process generated ULMR's data itself: a paid endpoint was
    asked once per process. Process 0 now generates, the others read its cache."""
    from conftest import launch_two

    from obliviate.cli import main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"forget": ITEMS, "retain": [ITEMS[0]]}))
    args = ["unlearn", "--method", "ulmr", f"model={tiny_model_dir}", f"request={request}", "generation.backend=openai",
            f"generation.base_url={scripted_server.base_url}", "generation.model=scripted", "ulmr.n_rewrites=2",
            "train.max_steps=1", "train.batch_size=1", "train.precision=fp32", "device=cpu"]
    assert main([*args, f"output_dir={tmp_path / 'one'}"]) == 0
    once, scripted_server.requests = scripted_server.requests, 0
    scripted_server.asked.clear()  # it serves rewrites in the order asked: start the launch where the first began
    done = launch_two(["-m", "obliviate", *args, f"output_dir={tmp_path / 'two'}"], timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert scripted_server.requests == once > 0
    assert (tmp_path / "two" / "ulmr_dataset.jsonl").read_text() == (tmp_path / "one" / "ulmr_dataset.jsonl").read_text()
