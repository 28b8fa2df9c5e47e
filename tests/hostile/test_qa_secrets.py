"""Secrets: the API key never reaches an output, a cache, a log or a dead letter, whatever a
(real, loopback) server echoes back: in which field, in which JSON escape spelling."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest

from lwmkit.pipelines.books.qa_client import QAClient, QAClientConfig, ResponseCache
from lwmkit.pipelines.books.qa_prompt import load_prompt
from lwmkit.pipelines.books.redact import Redactor

KEY = "sk-hostile-3f9a0c77d1e24b6a"  # the same as conftest's


def u_escape(text: str, every: int = 1) -> str:
    """``text`` with every ``every``-th character written as a JSON \\uXXXX escape (upper-case hex)."""
    return "".join(f"\\u{ord(c):04X}" if i % every == 0 else c for i, c in enumerate(text))


def echo_modes(key: str) -> dict[str, tuple[int, bytes]]:
    """What a hostile server can send back, each with the key in another place or spelling."""
    qa = lambda q, a: json.dumps({"qa": [{"question": q, "answer": a}]})  # noqa: E731
    from_json = lambda text: json.dumps({"choices": [{"message": {"content": text}}]}).encode()  # noqa: E731
    escaped_pair = '{"qa": [{"question": "Which key was sent?", "answer": "The proxy echoed ' + u_escape(key) + '"}]}'
    return {
        "pair_literal": (200, from_json(qa(f"Is {key} the key?", f"Yes, {key} came back verbatim."))),
        "pair_u_escaped": (200, from_json(escaped_pair)),
        "pair_half_escaped": (200, from_json(escaped_pair.replace(u_escape(key), u_escape(key, 2)))),
        "pair_in_truncated_json": (200, from_json(escaped_pair[:-3] + ', {"question": "cut')),
        "pair_in_q_a_lines": (200, from_json(f"Q: Which key did you send?\nA: The proxy echoed {key} back.")),
        "envelope_field": (200, json.dumps({"echo": f"Bearer {key}", **json.loads(from_json(qa("Who?", "A fox.")))}).encode()),
        "prose_unparsable": (200, from_json(f"I will not answer; your key is {key}")),
        "body_not_json": (200, f"<html>proxy error for Bearer {key}</html>".encode()),
        "http_500_escaped": (500, json.dumps({"error": "Bearer " + u_escape(key)}).encode()),
        "http_400_fatal": (400, json.dumps({"error": f"bad key {key}"}).encode()),
        "cut_at_4000": (503, (b"x" * 3990) + key.encode()),
    }  # fmt: skip


@pytest.mark.parametrize("mode", list(echo_modes(KEY)))
def test_the_client_hands_back_no_key_in_any_field_or_spelling(
    mode, hostile_server, hk, monkeypatch, tmp_path
):
    monkeypatch.setenv("LWMKIT_QA_API_KEY", KEY)
    modes = echo_modes(KEY)
    srv = hostile_server(lambda i, auth, body: hk.Reply(*modes[mode]))
    cache = ResponseCache(str(tmp_path / "cache"))
    cfg = QAClientConfig(srv.endpoint, "m", timeout_s=5, max_attempts=2, backoff_base_s=0.0)
    client = QAClient(cfg, load_prompt(), cache)
    try:
        result = client.generate("A passage.", "0" * 64)
    finally:
        client.close()

    assert srv.auth_seen and all(a == f"Bearer {KEY}" for a in srv.auth_seen)  # it was sent
    handed_back = json.dumps([result.pairs, result.raw, result.error])
    assert not hk.leaks(handed_back.encode()), handed_back
    assert not hk.files_leaking(tmp_path)
    if mode.startswith("pair_"):  # the pair survives, with the key masked
        assert result.ok and "***" in json.dumps(result.pairs), result
    else:
        assert result.ok == (mode == "envelope_field")
    if not result.ok:
        assert result.raw, "a failure keeps the (scrubbed) raw reply for its dead letter"
    if mode == "cut_at_4000":  # scrubbed before the raw reply is cut: no fragment of the key either
        assert KEY[:8] not in result.raw


def test_redactor_masks_every_json_spelling_at_any_depth():
    r = Redactor(KEY)
    nested = json.dumps(json.dumps({"a": u_escape(KEY, 3)}))  # escapes gain backslashes per level
    for text in (
        KEY,
        u_escape(KEY),
        u_escape(KEY, 2).lower(),
        nested,
        f"pre{KEY}post",
        KEY.replace("-", "\\u002d"),
    ):
        masked = r.text(text)
        assert KEY not in json.loads(json.dumps(masked)) and "***" in masked, (text, masked)
    assert r.text("sk-hostile") == "sk-hostile"  # a part of the key is not the key
    assert Redactor("").text("anything") == "anything"
    assert r.deep({"q": [KEY, 3]}) == {"q": ["***", 3]}


def test_books_job_writes_the_key_nowhere_whatever_the_server_echoes(hostile_server, hk, botchan, tmp_path):
    modes = list(echo_modes(KEY).values())
    srv = hostile_server(lambda i, auth, body: hk.Reply(*modes[i % len(modes)]))
    book = tmp_path / "in" / "botchan.txt"
    book.parent.mkdir()
    book.write_text(botchan[:6000], encoding="utf-8")
    out = tmp_path / "out"
    env = {**os.environ, "LWMKIT_QA_API_KEY": KEY}
    proc = hk.lwmkit("books", f"--input={book}", f"--output={out}", f"--qa-endpoint={srv.endpoint}",
                     "--qa-model=echo", "--chunk-tokens=64", "--qa-max-attempts=1", "--qa-backoff=0",
                     "--max-failure-ratio=1", "--qa-min-grounding=0", "--qa-min-span=0", "--qa-regrades=0",
                     env=env)  # fmt: skip (the QA gate is not under test: every parsed pair is kept)

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert srv.requests >= len(modes) and set(srv.auth_seen) == {f"Bearer {KEY}"}
    assert not hk.leaks((proc.stdout + proc.stderr).encode()), "the key reached the log"
    assert not hk.files_leaking(out), "the key reached an output, the cache or a dead letter"
    summary = json.loads((out / "summary.json").read_text())["counters"]
    rows = sum(pq.read_table(f).num_rows for f in out.glob("chunks-*.parquet"))
    dead = [json.loads(line) for line in (out / "dead_letters.jsonl").read_text().splitlines()]
    assert rows == summary["chunks_done"] > 0 and len(dead) == summary["chunks_failed"] > 0
    assert rows + len(dead) == summary["chunks"], "a chunk was lost"
    assert any(
        "***" in json.dumps(r) for f in out.glob("chunks-*.parquet") for r in pq.read_table(f).to_pylist()
    )
