"""An OpenAI-compatible chat-completions client for QA generation.

Speaks ``POST {endpoint}/chat/completions`` as vLLM, llama.cpp's servers and hosted APIs do.
What it adds over a bare request:

* at most ``max_in_flight`` requests at once per client (one client per Beam worker);
* a deadline per request (connect, send and every read together: a reply that trickles in
  ends at the deadline) and a cap on the reply's size, and retries with exponential backoff and full jitter on 408, 429,
  5xx, timeouts, dropped connections and unparsable replies (``Retry-After`` is honoured);
* grammar-constrained JSON replies through ``response_format`` (``json_schema`` the OpenAI
  way, or llama-cpp-python's ``json_object`` + ``schema``; ``auto`` finds which the server
  takes), with the tolerant parser of :mod:`qa_prompt` as the fallback;
* an on-disk response cache keyed by (model, prompt version and hash, generation
  settings, chunk sha256): a re-run sends no request for a chunk it has answered.

The API key is read from an environment variable (``api_key_env``, then ``OPENAI_API_KEY``)
when the client is built; it is sent only in the ``Authorization`` header and scrubbed
(:mod:`redact`: literal or JSON-escaped) from every message, reply and parsed pair the client
hands back or caches, whatever the server echoes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from lwmkit.pipelines.books.http_deadline import DeadlineExceeded, ReplyTooLarge, deadline_session, post_json
from lwmkit.pipelines.books.qa_prompt import ParseError, QAPrompt, parse_qa
from lwmkit.pipelines.books.redact import Redactor
from lwmkit.schemas.jobs import DEFAULT_MAX_REPLY_BYTES, RESPONSE_FORMATS

DEFAULT_API_KEY_ENV = "LWMKIT_QA_API_KEY"
FALLBACK_API_KEY_ENV = "OPENAI_API_KEY"
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class QAClientConfig:
    """How to reach the model and how hard to try.

    endpoint: base URL ending in ``/v1`` (``http://127.0.0.1:8000/v1`` for vLLM).
    model: the model name sent with each request and recorded in the output.
    api_key_env: environment variable holding the API key (never a flag: flags get logged).
    max_in_flight: concurrent requests per client (= per Beam worker).
    timeout_s: deadline of one request in all (connect, send, headers, body); past it the request is
        cut off and counts as a retryable failure. connect_timeout_s: the connect part of it.
    max_reply_bytes: a reply body longer than this is cut off unread (a retryable failure).
    max_attempts: tries per chunk, the first included.
    n_pairs / max_tokens / temperature / seed: generation settings (part of the cache key).
    response_format: ``auto``, ``json_schema``, ``json_object`` (llama-cpp-python) or ``none``.
    """

    endpoint: str
    model: str
    api_key_env: str = DEFAULT_API_KEY_ENV
    max_in_flight: int = 4
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
    max_attempts: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    n_pairs: int = 3
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    response_format: str = "auto"

    def __post_init__(self) -> None:
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"QAClientConfig.endpoint must be an http(s) URL, got {self.endpoint!r}")
        if not self.model:
            raise ValueError("QAClientConfig.model must not be empty")
        for name in ("max_in_flight", "max_attempts", "n_pairs", "max_tokens", "max_reply_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"QAClientConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("timeout_s", "connect_timeout_s", "backoff_max_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"QAClientConfig.{name} must be > 0")
        if self.backoff_base_s < 0 or self.temperature < 0:
            raise ValueError("QAClientConfig.backoff_base_s and temperature must be >= 0")
        if self.response_format not in RESPONSE_FORMATS:
            raise ValueError(f"QAClientConfig.response_format must be one of {RESPONSE_FORMATS}")

    def generation_settings(self) -> dict[str, Any]:
        """What changes the reply for a given prompt: part of the cache key."""
        return {
            "n_pairs": self.n_pairs,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
        }


@dataclass
class QAResult:
    """A chunk's answer: parsed pairs and the raw reply; ``error`` set when it failed for good."""

    key: str
    pairs: list[dict[str, str]] = field(default_factory=list)
    raw: str | None = None
    cached: bool = False
    requests: int = 0
    retries: int = 0
    error_class: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class ResponseCache:
    """One JSON file per answered chunk under ``root`` (any Beam filesystem), written atomically."""

    def __init__(self, root: str):
        from apache_beam.io.filesystems import FileSystems

        self._fs = FileSystems
        self.root = root.rstrip("/")

    def _path(self, key: str) -> str:
        return self._fs.join(self.root, key[:2], f"{key}.json")

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            if not self._fs.exists(path):
                return None
            with self._fs.open(path) as f:
                entry = json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError):
            return None  # a torn or foreign file is a miss, never an error: the answer is re-made
        return entry if isinstance(entry, dict) and entry.get("key") == key else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        path = self._path(key)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        parent = self._fs.split(path)[0]
        if not self._fs.exists(parent):
            try:
                self._fs.mkdirs(parent)
            except OSError:
                pass  # another worker made it first
        with self._fs.create(tmp) as f:
            f.write(json.dumps({**entry, "key": key}, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        self._fs.rename([tmp], [path])


class _Retryable(Exception):
    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        raw: str | None = None,
        kind: str = "ServerError",
    ):
        super().__init__(message)
        self.retry_after = retry_after
        self.raw = raw
        self.kind = kind


class _Fatal(Exception):
    def __init__(self, message: str, raw: str | None = None):
        super().__init__(message)
        self.raw = raw


class QAClient:
    """Generate QA pairs for chunks; thread-safe, one per worker (Beam ``load_model``)."""

    def __init__(self, config: QAClientConfig, prompt: QAPrompt, cache: ResponseCache | None = None):
        self.config = config
        self.prompt = prompt
        self.cache = cache
        self._api_key = os.environ.get(config.api_key_env) or os.environ.get(FALLBACK_API_KEY_ENV) or ""
        self._redactor = Redactor(self._api_key)
        self._formats = (
            [config.response_format]
            if config.response_format != "auto"
            else ["json_schema", "json_object", "none"]
        )
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.max_in_flight)
        self._session = deadline_session(config.max_in_flight)
        self._pool = ThreadPoolExecutor(config.max_in_flight, thread_name_prefix="qa")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._session.close()

    def cache_key(self, chunk_sha256: str) -> str:
        parts = [
            self.config.model,
            self.prompt.version,
            self.prompt.sha256,
            json.dumps(self.config.generation_settings(), sort_keys=True),
            chunk_sha256,
        ]
        return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()

    def generate_many(self, chunks: Sequence[tuple[str, str]]) -> list[QAResult]:
        """Answers for ``[(text, text_sha256)]``, in order; at most ``max_in_flight`` at once."""
        return list(self._pool.map(lambda c: self.generate(*c), chunks))

    def generate(self, text: str, text_sha256: str) -> QAResult:
        """QA pairs for one chunk: from the cache, or from the server with retries. Never raises."""
        key = self.cache_key(text_sha256)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:  # scrubbed again: the cache may predate the key or the scrubber
                return QAResult(
                    key, self._redactor.deep(hit["pairs"]), self.redact(hit.get("raw")), cached=True
                )
        result = QAResult(key)
        for attempt in range(self.config.max_attempts):
            result.requests += 1
            try:
                raw = self.redact(self._request(text, attempt))
                result.raw = raw
                # Scrubbed before and after parsing: the parser undoes escapes the reply may hide the key in.
                result.pairs = self._redactor.deep(parse_qa(raw, self.config.n_pairs))
                result.error = result.error_class = None
                break
            except (_Retryable, ParseError) as err:
                result.error_class, result.error = getattr(err, "kind", "ParseError"), self.redact(str(err))
                if isinstance(err, _Retryable) and err.raw is not None:
                    result.raw = self.redact(err.raw)
                if attempt + 1 < self.config.max_attempts:
                    result.retries += 1
                    time.sleep(self._backoff(attempt, getattr(err, "retry_after", None)))
            except _Fatal as err:
                result.error_class, result.error = "HTTPError", self.redact(str(err))
                result.raw = self.redact(err.raw) if err.raw is not None else result.raw
                break
        if result.ok and self.cache is not None:
            self.cache.put(
                key,
                {
                    "pairs": result.pairs,
                    "raw": result.raw,
                    "model": self.config.model,
                    "prompt_version": self.prompt.version,
                },
            )
        return result

    def redact(self, text: str | None) -> str | None:
        """``text`` with the API key (if any), literal or JSON-escaped, replaced by ``***``."""
        return self._redactor.text(text)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.config.backoff_max_s)
        return random.uniform(0, min(self.config.backoff_max_s, self.config.backoff_base_s * 2**attempt))

    def _body(self, text: str, attempt: int, fmt: str) -> dict[str, Any]:
        cfg = self.config
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": self.prompt.messages(text, cfg.n_pairs),
            "max_tokens": cfg.max_tokens,
            # A retry after a bad reply must not replay the same greedy decode.
            "temperature": cfg.temperature if attempt == 0 else max(cfg.temperature, 0.7),
            "seed": cfg.seed + attempt,
        }
        schema = self.prompt.schema(cfg.n_pairs)
        if fmt == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "qa_pairs", "schema": schema, "strict": True},
            }
        elif fmt == "json_object":
            body["response_format"] = {"type": "json_object", "schema": schema}
        return body

    def _request(self, text: str, attempt: int) -> str:
        """One chat completion; returns the message content. Raises _Retryable / _Fatal."""
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        url = self.config.endpoint.rstrip("/") + "/chat/completions"
        while True:
            with self._lock:
                fmt = self._formats[0]
            try:
                with self._slots:
                    status, resp_headers, body = post_json(
                        self._session, url, self._body(text, attempt, fmt), headers,
                        deadline_s=self.config.timeout_s, connect_s=self.config.connect_timeout_s,
                        max_bytes=self.config.max_reply_bytes,
                    )  # fmt: skip
            except (requests.Timeout, DeadlineExceeded):
                raise _Retryable(f"no reply within {self.config.timeout_s:g} s", kind="Timeout") from None
            except ReplyTooLarge:
                raise _Retryable(f"reply longer than {self.config.max_reply_bytes} bytes (max_reply_bytes)",
                                 kind="ReplyTooLarge") from None  # fmt: skip
            except (requests.ConnectionError, requests.RequestException) as err:
                raise _Retryable(f"connection failed: {type(err).__name__}", kind="ConnectionError") from None
            # Scrubbed before anything is cut or kept, so no fragment of the key survives a cut.
            reply = self.redact(body.decode("utf-8", errors="replace"))
            if status in (400, 422, 500) and "response_format" in reply and self._downgrade(fmt):
                continue  # the server does not take this response_format: try the next kind
            return self._content(status, resp_headers, reply)

    def _downgrade(self, fmt: str) -> bool:
        with self._lock:
            if self._formats[0] == fmt and len(self._formats) > 1:
                self._formats.pop(0)
            return len(self._formats) >= 1 and self._formats[0] != fmt

    def _content(self, status: int, headers: Any, reply: str) -> str:
        body = reply[:4000]
        if status in _RETRY_STATUS:
            after = headers.get("Retry-After")
            raise _Retryable(
                f"HTTP {status}",
                float(after) if after and after.replace(".", "", 1).isdigit() else None,
                body,
            )
        if status != 200:
            raise _Fatal(f"HTTP {status}: {body[:500]}", body)
        try:
            content = json.loads(reply)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError, RecursionError):
            raise _Retryable(
                "malformed response body (not a chat completion)", raw=body, kind="MalformedReply"
            ) from None
        if not isinstance(content, str):
            raise _Retryable("malformed response body (content is not text)", raw=body, kind="MalformedReply")
        return content
