"""The OpenAI-compatible QA client (pipelines/books/qa_client.py) and reply parser (qa_prompt.py),
against a scripted loopback HTTP server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lwmkit.pipelines.books.qa_client import QAClient, QAClientConfig, ResponseCache
from lwmkit.pipelines.books.qa_prompt import ParseError, load_prompt, parse_qa

GOOD = json.dumps({"qa": [{"question": "Who ran?", "answer": "The fox."}]})


class ScriptedServer(ThreadingHTTPServer):
    """Replies from a script of (status, content, headers, delay); the last entry repeats."""

    daemon_threads = True

    def __init__(self, script):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = list(script)
        self.bodies: list[dict] = []
        self.headers_seen: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def next(self):
        with self.lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.bodies.append(body)
            srv.headers_seen.append(dict(self.headers))
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        status, content, headers, delay = srv.next()
        time.sleep(delay)
        if callable(content):
            status, payload = content(body)
        elif status == 200 and content is not None:
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
        else:
            payload = content or ""
        data = payload.encode()
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): fine
        finally:
            with srv.lock:
                srv.in_flight -= 1


@pytest.fixture
def serve():
    servers = []

    def start(*script):
        srv = ScriptedServer([(s + ({}, 0.0)[len(s) - 2 :]) if len(s) < 4 else s for s in script])
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _client(srv, tmp_path=None, **kw) -> QAClient:
    cfg = QAClientConfig(srv.endpoint, "m", backoff_base_s=0.01, timeout_s=kw.pop("timeout_s", 2.0), **kw)
    return QAClient(cfg, load_prompt(), ResponseCache(str(tmp_path / "cache")) if tmp_path else None)


@pytest.mark.parametrize(
    "reply, expected",
    [
        (GOOD, [("Who ran?", "The fox.")]),
        ('[{"question": "A?", "answer": 42}]', [("A?", "42")]),
        ('Sure! ```json\n{"qa": [{"q": "B?", "a": "b"},]}\n``` Hope it helps', [("B?", "b")]),
        (
            '{"qa": [{"question": "C?", "answer": "c"}, {"question": "D?", "answer": "tru',
            [("C?", "c")],
        ),  # truncated
        (
            "Q1: Where is Edo?\nA1: In Japan.\n\nQ2: Who teaches?\nA2: Botchan.",
            [("Where is Edo?", "In Japan."), ("Who teaches?", "Botchan.")],
        ),
        (
            '{"qa": [{"question": "...", "answer": "..."}, {"question": "E?", "answer": "e"}, {"question": "e?", "answer": "x"}]}',
            [("E?", "e")],
        ),
    ],
)
def test_parse_qa_tolerates_what_models_write(reply, expected):
    assert [(p["question"], p["answer"]) for p in parse_qa(reply)] == expected


def test_parse_qa_rejects_replies_without_pairs():
    for reply in ("", "I cannot help with that.", '{"qa": []}', '{"answer": "no question"}'):
        with pytest.raises(ParseError):
            parse_qa(reply)


def test_retries_5xx_and_429_then_succeeds(serve):
    srv = serve((500, "boom"), (429, "wait", {"Retry-After": "0.05"}), (503, ""), (200, GOOD))
    r = _client(srv).generate("text", "sha")
    assert r.ok and r.pairs == [{"question": "Who ran?", "answer": "The fox."}]
    assert (r.requests, r.retries, r.cached) == (4, 3, False)


def test_a_hang_past_the_timeout_is_retried(serve):
    srv = serve((200, GOOD, {}, 1.5), (200, GOOD))
    t0 = time.monotonic()
    r = _client(srv, timeout_s=0.3).generate("text", "sha")
    assert r.ok and r.requests == 2 and time.monotonic() - t0 < 1.4


def test_client_errors_are_not_retried_and_give_up_with_the_reason(serve):
    srv = serve((401, '{"error": "bad key"}'))
    r = _client(srv, max_attempts=5).generate("text", "sha")
    assert not r.ok and r.requests == 1 and "HTTP 401" in r.error
    srv = serve((200, "no pairs here"))
    r = _client(srv, max_attempts=3).generate("text", "sha")
    assert not r.ok and (r.requests, r.error_class, r.raw) == (3, "ParseError", "no pairs here")
    # A retry after a bad reply must change the decode, or greedy decoding repeats it.
    assert [b["temperature"] for b in srv.bodies] == [0.0, 0.7, 0.7] and len(
        {b["seed"] for b in srv.bodies}
    ) == 3


def test_response_format_auto_falls_back_to_what_the_server_takes(serve):
    def llama_cpp_like(body):
        if body["response_format"]["type"] == "json_schema":
            return 500, '{"error": "response_format type: Input should be text or json_object"}'
        return 200, json.dumps({"choices": [{"message": {"content": GOOD}}]})

    srv = serve((200, llama_cpp_like))
    client = _client(srv)
    assert client.generate("one", "a").ok and client.generate("two", "b").ok
    kinds = [b["response_format"]["type"] for b in srv.bodies]
    assert kinds == ["json_schema", "json_object", "json_object"]
    assert srv.bodies[-1]["response_format"]["schema"]["properties"]["qa"]["maxItems"] == 3


def test_cache_serves_a_rerun_without_requests(serve, tmp_path):
    srv = serve((200, GOOD))
    first = _client(srv, tmp_path).generate("a chunk", "sha-1")
    again = _client(srv, tmp_path).generate("a chunk", "sha-1")
    assert first.ok and again.cached and again.pairs == first.pairs and len(srv.bodies) == 1
    other = _client(srv, tmp_path, max_tokens=99).generate("a chunk", "sha-1")  # settings are in the key
    assert not other.cached and len(srv.bodies) == 2
    (tmp_path / "cache" / other.key[:2] / f"{other.key}.json").write_text("{torn")
    assert not _client(srv, tmp_path, max_tokens=99).generate("a chunk", "sha-1").cached  # torn file = miss


def test_in_flight_requests_are_bounded(serve):
    srv = serve((200, GOOD, {}, 0.2))
    results = _client(srv, max_in_flight=3).generate_many([(f"t{i}", f"s{i}") for i in range(9)])
    assert all(r.ok for r in results) and srv.max_in_flight == 3


def test_api_key_is_sent_but_never_returned(serve, monkeypatch):
    monkeypatch.setenv("MY_QA_KEY", "sk-very-secret")
    srv = serve((200, "I will not. Your key is sk-very-secret"))
    r = _client(srv, api_key_env="MY_QA_KEY", max_attempts=1).generate("t", "s")
    assert srv.headers_seen[0]["Authorization"] == "Bearer sk-very-secret"
    assert "sk-very-secret" not in (r.raw or "") + (r.error or "") and "***" in r.raw
    assert "sk-very-secret" not in repr(_client(srv, api_key_env="MY_QA_KEY").config)


def test_config_is_validated():
    with pytest.raises(ValueError, match="endpoint"):
        QAClientConfig("localhost:8000", "m")
    with pytest.raises(ValueError, match="max_in_flight"):
        QAClientConfig("http://x/v1", "m", max_in_flight=0)
    with pytest.raises(ValueError, match="response_format"):
        QAClientConfig("http://x/v1", "m", response_format="xml")
