"""The book job against a loopback OpenAI-compatible server of our own that misbehaves:
5xx, hangs past the timeout, malformed bodies, unparsable replies. Every chunk must end up
done or dead-lettered (none lost), retries must be counted, the API key must never be
written anywhere, and the multi-process DirectRunner must give the same answer.
"""

from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lwmkit.pipelines.books.chunking import chunk_text, clean_book
from lwmkit.pipelines.books.job import BooksJobFailed, run
from lwmkit.pipelines.books.qa_grade import content_words
from lwmkit.schemas.dead_letters import read_dead_letters
from lwmkit.schemas.errors import ContractError
from lwmkit.schemas.records import BOOK_CHUNK, read_table
from lwmkit.tokenizers.text import TextTokenizer

SECRET = "sk-lwmkit-test-9f8e7d6c5b4a"
FAULTS = ("500", "hang", "malformed", "503", "unparsable", "429")
POISON = "POISONPILL"  # a chunk holding this word always gets an unparsable reply


class FaultyChatServer(ThreadingHTTPServer):
    """Answers chat completions with a valid QA reply, or (for ``fault_rate`` of requests,
    chosen by a seeded RNG) one of, in turn: HTTP 500/503/429, a hang past the client's timeout, a body
    that is not a chat completion, or prose with no QA pair in it."""

    daemon_threads = True

    def __init__(self, fault_rate: float, hang_s: float, seed: int = 0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fault_rate, self.hang_s = fault_rate, hang_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.faults: dict[str, int] = {}
        self.bad_auth = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def pick(self, passage: str) -> str:
        with self.lock:
            self.requests += 1
            if POISON in passage:
                fault = "unparsable"
            elif self.rng.random() < self.fault_rate:
                fault = FAULTS[sum(self.faults.values()) % len(FAULTS)]  # every kind, in turn
            else:
                return "ok"
            self.faults[fault] = self.faults.get(fault, 0) + 1
            return fault


INVENTED, HOLLOW = "INVENTEDFACTS", "HOLLOWREPLY"


def _pairs(passage: str) -> list[dict[str, str]]:
    """Grounded pairs: 'What comes after X?' -> the next long word of the passage."""
    passage = passage.split('"""')[1] if passage.count('"""') >= 2 else passage  # the prompt's passage
    words = [w.strip(".,;:!?'\"") for w in passage.split()]
    words = [w for w in words if w.isalpha() and content_words(w) and w.lower() not in ("comes", "after")]
    pairs = [(a, b) for a, b in zip(words, words[1:], strict=False) if a.lower() != b.lower()][:3]
    return [{"question": f"What comes after {a}?", "answer": b} for a, b in pairs]


class _Handler(BaseHTTPRequestHandler):
    server: FaultyChatServer

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") != f"Bearer {SECRET}":
            self.server.bad_auth += 1
            return self._send(401, b'{"error": "bad key"}')
        passage = body["messages"][-1]["content"]
        fault = self.server.pick(passage)
        if fault in ("500", "503"):
            return self._send(int(fault), b'{"error": "overloaded"}')
        if fault == "429":
            return self._send(429, b'{"error": "slow down"}', {"Retry-After": "0"})
        if fault == "hang":
            time.sleep(self.server.hang_s)
            return self._send(200, b"{}")
        if fault == "malformed":  # echoes the key: the client must scrub it from dead letters
            return self._send(200, f"<html>proxy error for Bearer {SECRET}".encode())
        content = (
            f"I cannot answer that (key {SECRET})."
            if fault == "unparsable"
            else json.dumps({"qa": _pairs(passage)})
        )
        if INVENTED in passage:  # fluent, and not in the passage: the QA gate must drop it
            content = json.dumps(
                {"qa": [{"question": "Who killed Lucius Marcellus?", "answer": "The Roman Emperor Titus."}]}
            )
        elif HOLLOW in passage:  # JSON whose pairs clean to nothing: no answer, never cached
            content = '{"qa": [{"question": "What happened?", "answer": "} {"}]}'

        reply = {
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
        }
        self._send(200, json.dumps(reply).encode())


@pytest.fixture
def faulty_server():
    servers = []

    def start(fault_rate: float = 0.0, hang_s: float = 3.0, seed: int = 0) -> FaultyChatServer:
        srv = FaultyChatServer(fault_rate, hang_s, seed)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("LWMKIT_QA_API_KEY", SECRET)
    return SECRET


def _job(inputs: list[str], out: Path, endpoint: str, *extra: str) -> dict:
    args = [f"--input={p}" for p in inputs]
    args += [f"--output={out}", f"--qa-endpoint={endpoint}", "--qa-model=fake-qa", "--chunk-tokens=120",
             "--qa-timeout=1", "--qa-backoff=0.01", "--qa-max-attempts=4", "--qa-max-in-flight=3", *extra]  # fmt: skip
    return run(args)


def _records(out: Path) -> list[dict]:
    rows = []
    for shard in sorted(out.glob("chunks-*.parquet")):
        rows += read_table(str(shard), BOOK_CHUNK).to_pylist()
    return rows


def _expected_ids(text: str, book_id: str, budget: int = 120) -> set[str]:
    chunks = chunk_text(clean_book(text.encode()), TextTokenizer.load(), budget)
    return {f"{book_id}/{c.index:06d}" for c in chunks}


def _book_with_poison(botchan: str, tmp_path: Path) -> Path:
    text = botchan[:9000]
    cut = text.index(". ", 5000) + 2
    path = tmp_path / "in" / "botchan.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text[:cut] + f"The {POISON} was here. " + text[cut:], encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["in_process", "multi_processing"])
def test_every_chunk_is_done_or_dead_lettered_under_faults(
    mode, faulty_server, secret_env, botchan, tmp_path, capfd
):
    book = _book_with_poison(botchan, tmp_path)
    expected = _expected_ids(book.read_text(encoding="utf-8"), "botchan")
    srv = faulty_server(fault_rate=0.35, hang_s=2.5, seed=7)
    out = tmp_path / "out"
    runner = (
        ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
        if mode == "multi_processing"
        else []
    )
    summary = _job([str(book)], out, srv.endpoint, "--max-failure-ratio=1", *runner)

    done = {r["chunk_id"] for r in _records(out)}
    dead = [d for d in read_dead_letters(str(out / "dead_letters.jsonl")) if d.stage == "qa"]
    dead_ids = {d.uri for d in dead}
    assert done | dead_ids == expected, "a chunk was lost"
    assert not done & dead_ids, "a chunk was both written and dead-lettered"
    poisoned = [d for d in dead if d.error_class == "ParseError" and "cannot answer" in (d.detail or "")]
    assert poisoned, "the always-unparsable chunk must be dead-lettered with its raw reply"
    n = summary["counters"]
    assert n["chunks"] == len(expected)
    assert n["chunks_done"] == len(done) and n["chunks_failed"] == len(dead_ids)
    assert n["qa_retries"] > 0 and n["qa_requests"] == srv.requests
    assert {"hang", "malformed"} <= set(srv.faults) and srv.bad_auth == 0
    # The key went out in every request's header and came back in bodies; it is written nowhere.
    logs = capfd.readouterr()
    assert SECRET not in logs.out + logs.err
    for f in out.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f"API key leaked into {f}"


def test_inputs_of_every_kind_and_bad_ones_go_to_dead_letters(faulty_server, secret_env, tmp_path):
    srv = faulty_server()
    src = tmp_path / "in"
    src.mkdir()
    (src / "tale.txt").write_bytes(b"\xef\xbb\xbfOnce there was a fox.\r\nThe fox ran far away.\r\n")
    (src / "blob.txt").write_bytes(bytes(range(256)) * 4)
    (src / "empty.txt").write_text("   \n")
    (src / "latin1.txt").write_bytes("Caf\xe9 au lait, r\xe9sum\xe9, na\xefve, fa\xe7ade.".encode("latin-1"))
    (src / "notes.csv").write_text("a,b\n")
    (src / "zz-more.jsonl").write_text(
        json.dumps({"id": "jl-1", "text": "A cat sat on a mat. It slept."}) + "\n{broken\n"
        + json.dumps({"id": "jl-2"}) + "\n" + json.dumps({"id": "tale", "text": "A duplicate id: dropped, as zz-more.jsonl sorts after tale.txt."}) + "\n"
    )  # fmt: skip
    pq.write_table(
        __import__("pyarrow").table({"id": ["pq-1"], "text": ["The sun rose. Birds sang loudly."]}),
        src / "shelf.parquet",
    )
    out = tmp_path / "out"
    summary = _job([str(src / "*"), str(tmp_path / "nothing-*.txt")], out, srv.endpoint)

    rows = _records(out)
    assert sorted({r["book_id"] for r in rows}) == ["jl-1", "pq-1", "tale"]
    tale = next(r for r in rows if r["book_id"] == "tale")
    assert tale["text"] == "Once there was a fox.\nThe fox ran far away."  # BOM and CRLF normalised
    assert all(r["model"] == "fake-qa" and r["prompt_version"] == "qa-v1" and r["qa"] for r in rows)
    assert all(r["tokenizer_id"] == TextTokenizer.load().id for r in rows)
    dead = {
        (Path(d.uri.split("#")[0]).name, d.stage) for d in read_dead_letters(str(out / "dead_letters.jsonl"))
    }
    assert dead == {("blob.txt", "decode"), ("empty.txt", "decode"), ("latin1.txt", "decode"), ("notes.csv", "read"),
                    ("zz-more.jsonl", "read"), ("nothing-*.txt", "match")}  # fmt: skip
    letters = read_dead_letters(str(out / "dead_letters.jsonl"))
    assert (
        sum(d.uri.startswith(str(src / "zz-more.jsonl")) for d in letters) == 3
    )  # broken, no text, duplicate id
    assert summary["counters"]["chunks_failed"] == 0 and summary["counters"]["books_read"] == 3
    assert summary["dead_letters"] == {"decode": 3, "match": 1, "read": 4}
    # a re-run (replies from the cache) still reports every dead letter of the output
    again = _job([str(src / "*"), str(tmp_path / "nothing-*.txt")], out, srv.endpoint)
    assert again["dead_letters"] == summary["dead_letters"] and again["counters"]["qa_requests"] == 0


def test_a_server_that_never_answers_dead_letters_every_chunk(faulty_server, secret_env, tmp_path):
    srv = faulty_server(fault_rate=1.0, hang_s=0.0, seed=1)
    src = tmp_path / "b.txt"
    src.write_text("One sentence here. Another sentence there. A third one.")
    with pytest.raises(BooksJobFailed, match=r"1 of 1 chunks failed QA \(100% > max_failure_ratio 10%\)"):
        _job([str(src)], tmp_path / "out", srv.endpoint, "--qa-max-attempts=2")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())  # outputs are still written
    assert _records(tmp_path / "out") == []
    dead = [d for d in read_dead_letters(str(tmp_path / "out" / "dead_letters.jsonl")) if d.stage == "qa"]
    assert [d.uri for d in dead] == ["b/000000"] and "after 2 request(s)" in dead[0].message
    assert summary["counters"]["qa_requests"] == 2 and summary["counters"]["qa_retries"] == 1


def test_encodings_are_chosen_and_replaced_bytes_counted_per_book(
    faulty_server, secret_env, botchan, tmp_path
):
    srv = faulty_server()
    src = tmp_path / "in"
    src.mkdir()
    text = botchan[5000:9000]
    (src / "western.txt").write_bytes(("Café au lait, résumé, naïve façade. " + text).encode("cp1252"))
    damaged = bytearray(text.encode("utf-8"))
    damaged[100:102] = b"\xff\xfe"  # two bad bytes in 4000: below the 0.1 % threshold
    (src / "damaged.txt").write_bytes(bytes(damaged))
    out = tmp_path / "out"
    summary = _job([str(src / "*.txt")], out, srv.endpoint)  # default utf-8: the cp1252 book is refused
    assert summary["replaced_bytes_per_book"] == {"damaged": 2} and summary["counters"]["replaced_bytes"] == 2
    letters = read_dead_letters(str(out / "dead_letters.jsonl"))
    assert [(Path(d.uri).name, d.error_class) for d in letters] == [("western.txt", "BookError")]
    assert "try --encoding" in letters[0].message
    for encoding in ("cp1252", "auto"):
        again = _job([str(src / "western.txt")], tmp_path / encoding, srv.endpoint, f"--encoding={encoding}")
        assert again["counters"]["books_read"] == 1 and again["replaced_bytes_per_book"] == {}
        first = min(_records(tmp_path / encoding), key=lambda r: r["chunk_index"])
        assert first["text"].startswith("Café au lait, résumé, naïve façade.")
    with pytest.raises(ContractError, match="--encoding.*unknown encoding"):
        _job([str(src / "western.txt")], tmp_path / "x", srv.endpoint, "--encoding=klingon")


def test_the_qa_gate_keeps_grounded_pairs_and_dead_letters_the_rest(
    faulty_server, secret_env, botchan, tmp_path
):
    srv = faulty_server()
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.txt").write_text(botchan[6000:6400], encoding="utf-8")
    (src / "invented.txt").write_text(
        f"The {INVENTED} were told here. " + botchan[7000:7200], encoding="utf-8"
    )
    (src / "hollow.txt").write_text(f"A {HOLLOW} came back. " + botchan[8000:8200], encoding="utf-8")
    out = tmp_path / "out"
    # the hollow book's ParseError is one failure in three: tolerated here, the gate is under test
    summary = _job([str(src / "*.txt")], out, srv.endpoint, "--qa-max-attempts=2", "--max-failure-ratio=1")
    rows = _records(out)
    assert {r["book_id"] for r in rows} == {"good"}
    pairs = [p for r in rows for p in r["qa"]]
    assert pairs and all(p["grounding"] == 1.0 for p in pairs)  # the score travels with each kept pair
    letters = {d.uri.split("/")[0]: d for d in read_dead_letters(str(out / "dead_letters.jsonl"))}
    invented, hollow = letters["invented"], letters["hollow"]
    assert (
        invented.error_class == "Ungrounded"
        and "failed the quality gate in 3 replies (3 ungrounded)" in invented.message
    )
    assert "Titus" in (invented.detail or "")
    assert hollow.error_class == "ParseError" and "after 2 request(s)" in hollow.message
    grade = summary["qa_grade"]
    assert grade["dropped"]["ungrounded"] == 3 and grade["regrades"] == 2 and grade["chunks_ungrounded"] == 1
    assert grade["pairs_kept"] == len(pairs) and grade["pairs_graded"] == len(pairs) + 3
    # re-run: answered chunks (the ungrounded replies too) come from the cache; the hollow reply
    # was never cached, so only its chunk is asked again
    before = srv.requests
    again = _job([str(src / "*.txt")], out, srv.endpoint, "--qa-max-attempts=2", "--max-failure-ratio=1")
    assert srv.requests - before == 2 and again["qa_grade"] == grade


def test_beams_polyfit_warnings_are_silenced_in_qa_workers(faulty_server, secret_env):
    """BatchElements' timing fits warn on every batch of a re-run from the cache (issue 22);
    the QA handler's workers drop exactly that warning, from exactly that module."""
    import warnings

    import numpy as np

    from lwmkit.pipelines.books.qa_client import QAClientConfig
    from lwmkit.pipelines.books.qa_handler import OpenAIChatQAHandler
    from lwmkit.pipelines.books.qa_prompt import load_prompt

    rank_warning = getattr(np, "exceptions", np).RankWarning
    handler = OpenAIChatQAHandler(QAClientConfig(faulty_server().endpoint, "fake-qa"), load_prompt(), None)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for client in handler.load_model():
            client.close()
        for module in ("apache_beam.transforms.util", "lwmkit.elsewhere"):
            warnings.warn_explicit(
                "Polyfit may be poorly conditioned", rank_warning, "util.py", 645, module=module
            )
    assert [w.filename for w in seen] == ["util.py"] and len(seen) == 1  # only the one from elsewhere
