"""HTTP with a whole-request deadline and a reply size cap, on top of ``requests``.

``requests`` only knows a connect timeout and a timeout *per socket read*: a server that
trickles one byte a second, or never stops sending, keeps a request alive forever. Here a
watchdog timer shuts the request's socket down when the deadline passes, which wakes the
blocked read at once (in the header phase as well as the body), and the body is read in
pieces up to ``max_bytes``.

Usage::

    session = deadline_session(pool_size=4)
    status, headers, body = post_json(session, url, payload, headers, deadline_s=30, connect_s=10,
                                      max_bytes=1 << 20)
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_CHUNK = 64 * 1024
_local = threading.local()  # the watchdog of the request this thread is making, if any


class DeadlineExceeded(Exception):
    """The whole request (connect, send, headers, body) did not finish within its deadline."""


class ReplyTooLarge(Exception):
    """The reply body is longer than the cap (decoded bytes)."""


class _Watchdog:
    """Shuts down the socket(s) of one request when its deadline passes."""

    def __init__(self, deadline_s: float):
        self.fired = False
        self._done = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._timer = threading.Timer(deadline_s, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def attach(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if self._done:
                return
            self._socks.append(sock)
            if self.fired:  # the deadline passed while connecting
                _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            for sock in self._socks:
                _shutdown(sock)

    def stop(self) -> bool:
        """Disarm; True when the deadline had already passed."""
        with self._lock:
            self._done = True
            self._timer.cancel()
            return self.fired


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def _attach(conn: Any) -> None:
    watchdog = getattr(_local, "watchdog", None)
    if watchdog is not None:
        watchdog.attach(getattr(conn, "sock", None))


class _WatchedHTTP(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _attach(self)

    def getresponse(self) -> Any:  # a pooled (reused) connection never calls connect() again
        _attach(self)
        return super().getresponse()


class _WatchedHTTPS(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _attach(self)

    def getresponse(self) -> Any:
        _attach(self)
        return super().getresponse()


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTP


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPS


class _DeadlineAdapter(HTTPAdapter):
    """An adapter whose connections report their sockets to the calling thread's watchdog."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}
        return manager


def deadline_session(pool_size: int) -> requests.Session:
    """A session whose requests :func:`post_json` can bound in total time (no urllib3 retries)."""
    session = requests.Session()
    adapter = _DeadlineAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def post_json(
    session: requests.Session,
    url: str,
    payload: Any,
    headers: Mapping[str, str],
    *,
    deadline_s: float,
    connect_s: float,
    max_bytes: int,
) -> tuple[int, Mapping[str, str], bytes]:
    """POST ``payload`` as JSON; ``(status, headers, body)`` within ``deadline_s`` seconds in all.

    Raises :class:`DeadlineExceeded` past the deadline, :class:`ReplyTooLarge` for a body over
    ``max_bytes`` (read no further), ``requests.ConnectionError`` / ``requests.Timeout`` as
    ``requests`` does. The body is decoded from any ``Content-Encoding`` (the cap counts decoded
    bytes, so a compression bomb stops at the cap too).
    """
    t0 = time.monotonic()
    watchdog = _local.watchdog = _Watchdog(deadline_s)
    resp = None
    try:
        resp = session.post(
            url,
            json=payload,
            headers=dict(headers),
            stream=True,
            timeout=(min(connect_s, deadline_s), deadline_s),
        )
        body = bytearray()
        for piece in resp.iter_content(_CHUNK):
            body += piece
            if len(body) > max_bytes:
                raise ReplyTooLarge(f"reply longer than {max_bytes} bytes")
            if time.monotonic() - t0 > deadline_s:
                raise DeadlineExceeded
        if watchdog.stop():
            raise DeadlineExceeded
        return resp.status_code, resp.headers, bytes(body)
    except (requests.RequestException, OSError):
        if watchdog.stop() or time.monotonic() - t0 > deadline_s:
            raise DeadlineExceeded from None
        raise
    finally:
        watchdog.stop()
        _local.watchdog = None
        if resp is not None:
            resp.close()
