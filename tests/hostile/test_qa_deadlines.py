"""Deadlines and caps: a QA request ends at its deadline however the server dribbles, a reply
is cut at its size cap, the reply parser is linear, and the books job fails loudly (one line,
non-zero exit) when the endpoint is down or too many chunks fail."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from lwmkit.pipelines.books.qa_client import QAClient, QAClientConfig
from lwmkit.pipelines.books.qa_prompt import ParseError, load_prompt, parse_qa

GOOD = json.dumps({"qa": [{"question": "Which animal ran away?", "answer": "The fox."}]})


def _generate(srv, **cfg):
    config = QAClientConfig(srv.endpoint, "m", max_attempts=1, connect_timeout_s=1, **cfg)
    client = QAClient(config, load_prompt())
    t0 = time.monotonic()
    try:
        return client.generate("A passage.", "0" * 64), time.monotonic() - t0
    finally:
        client.close()


@pytest.mark.parametrize(
    "how",
    [
        "body_trickles",  # a byte every 0.3 s: every read is within a per-read timeout
        "headers_trickle",  # the status line and headers themselves arrive byte by byte
        "endless",  # a valid reply, then spaces forever
    ],
)
def test_a_request_ends_at_its_deadline_however_the_reply_dribbles(how, hostile_server, hk):
    def script(i, auth, body):
        if how == "endless":
            return hk.Reply(body=hk.chat(GOOD), endless=True)
        return hk.Reply(body=hk.chat(GOOD), trickle_s=0.3)

    srv = hostile_server(script)
    result, took = _generate(srv, timeout_s=1.5)
    assert not result.ok and result.error_class == "Timeout", result
    assert result.error == "no reply within 1.5 s"
    assert took < 1.5 + 1.0, f"the request ran {took:.1f} s past a 1.5 s deadline"
    t0 = time.monotonic()
    while not srv.hangups and time.monotonic() - t0 < 10:  # the server notices at its next write
        time.sleep(0.1)
    assert srv.hangups, "the client must hang up, not leave the server sending"


def test_a_fast_reply_is_unaffected_and_the_connection_is_reused(hostile_server, hk):
    srv = hostile_server(lambda i, auth, body: hk.Reply(body=hk.chat(GOOD)))
    config = QAClientConfig(srv.endpoint, "m", timeout_s=2)
    client = QAClient(config, load_prompt())
    try:
        results = [client.generate(f"p{i}", f"{i:064d}") for i in range(5)]
    finally:
        client.close()
    assert all(r.ok and r.pairs == [{"question": "Which animal ran away?", "answer": "The fox."}] for r in results)


def test_a_reply_over_the_size_cap_is_cut_off_unread(hostile_server, hk):
    huge = json.dumps({"qa": [{"question": "Long?", "answer": "word " * 400_000}]})  # ~2 MB
    srv = hostile_server(lambda i, auth, body: hk.Reply(body=hk.chat(huge)))
    result, _ = _generate(srv, timeout_s=10, max_reply_bytes=64 * 1024)
    assert not result.ok and result.error_class == "ReplyTooLarge"
    assert result.error == "reply longer than 65536 bytes (max_reply_bytes)"
    assert result.raw is None and result.pairs == []  # nothing of it is kept
    ok, _ = _generate(srv, timeout_s=10)  # the default cap (1 MiB) takes ordinary replies
    assert QAClientConfig("http://x/v1", "m").max_reply_bytes == 1 << 20


@pytest.mark.parametrize(
    "reply",
    [
        "Q: what\n" * 120_000,  # questions without answers (was quadratic)
        "\n" * 1_000_000,
        "```" + " " * 1_000_000,
        '"question": "' * 80_000,
        '"question": "a", "answer": "' + "x" * 1_000_000,
        "Q" + " " * 1_000_000 + "x",
        "[" * 1_000_000,
    ],
    ids=["q_lines", "newlines", "open_fence", "open_strings", "unterminated_answer", "spaces", "nesting"],
)
def test_parse_qa_is_linear_on_hostile_megabyte_replies(reply):
    t0 = time.process_time()
    with pytest.raises(ParseError):
        parse_qa(reply)
    assert time.process_time() - t0 < 3.0  # ~0.3 s here; the quadratic parser took minutes


def test_parse_qa_still_finds_pairs_deep_in_a_long_reply():
    reply = "Q: filler\n" * 50_000 + "\n" + "Q: Where is Edo?\nA: In Japan.\n"
    t0 = time.process_time()
    pairs = parse_qa(reply)
    assert time.process_time() - t0 < 3.0
    assert {"question": "Where is Edo?", "answer": "In Japan."} in pairs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_books_job_with_an_unreachable_endpoint_exits_1_with_one_line(hk, tmp_path):
    book = tmp_path / "b.txt"
    book.write_text("One sentence here. Another sentence there.")
    out = tmp_path / "out"
    endpoint = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    proc = hk.lwmkit("books", f"--input={book}", f"--output={out}", f"--qa-endpoint={endpoint}", "--qa-model=m",
                     "--qa-backoff=0.01", "--max-failure-ratio=1")  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: QA endpoint {endpoint} is unreachable: 1 chunks"
    )
    assert "Traceback" not in proc.stderr
    dead = [json.loads(line) for line in (out / "dead_letters.jsonl").read_text().splitlines()]
    assert [d["error_class"] for d in dead] == ["ConnectionError"]  # the chunk is kept, to retry


def test_books_job_past_max_failure_ratio_exits_1_and_keeps_its_outputs(hostile_server, hk, tmp_path):
    srv = hostile_server(lambda i, auth, body: hk.Reply(body=hk.chat("I cannot help." if i % 2 else GOOD)))
    book = tmp_path / "b.txt"
    book.write_text(" ".join(f"Sentence number {i} is about a fox." for i in range(60)))
    out = tmp_path / "out"
    args = ("books", f"--input={book}", f"--output={out}", f"--qa-endpoint={srv.endpoint}", "--qa-model=m",
            "--chunk-tokens=40", "--qa-max-attempts=1", "--qa-max-in-flight=1", "--qa-batch-size=1",
            # the QA gate is not what this test is about: keep every parsed pair, never re-ask
            "--qa-min-grounding=0", "--qa-min-span=0", "--qa-regrades=0")  # fmt: skip
    env = {**os.environ, "LWMKIT_QA_API_KEY": ""}
    proc = hk.lwmkit(*args, "--max-failure-ratio=0.25", env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "chunks failed QA" in errors[0] and "> max_failure_ratio 25%" in errors[0]
    summary = json.loads((out / "summary.json").read_text())["counters"]
    dead = (out / "dead_letters.jsonl").read_text().splitlines()
    assert summary["chunks_failed"] == len(dead) > 0 and summary["chunks_done"] > 0  # outputs kept
    proc = hk.lwmkit(*args, "--max-failure-ratio=1", "--qa-cache=none", env=env)  # tolerated when asked
    assert proc.returncode == 0, proc.stderr[-2000:]
