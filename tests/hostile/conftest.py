"""A hostile OpenAI-compatible server (a real ``http.server`` in a thread) and leak checks.

Each test scripts the server with a function ``(request_index, authorization_header, body)
-> Reply``; the function decides what the server sends back and how (trickled, endless, huge).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

KEY = "sk-hostile-3f9a0c77d1e24b6a"


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    trickle_s: float = 0.0  # seconds between bytes (headers included) when > 0
    endless: bool = False  # after the body, keep sending spaces until the client hangs up


def chat(content: str, **extra: object) -> bytes:
    """A chat completion whose message content is ``content`` (extra top-level fields merged in)."""
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}], **extra}).encode()


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, script: Callable[[int, str, dict], Reply]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script
        self.lock = threading.Lock()
        self.requests = 0
        self.auth_seen: list[str] = []
        self.hangups: list[float] = []  # seconds each trickled/endless reply ran before the client left

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: HostileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # the books job's reachability probe
        self._write(Reply(404, b"{}"))

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization", "")
        with self.server.lock:
            index = self.server.requests
            self.server.requests += 1
            self.server.auth_seen.append(auth)
        self._write(self.server.script(index, auth, body))

    def _write(self, reply: Reply) -> None:
        head = f"HTTP/1.1 {reply.status} X\r\nContent-Type: application/json\r\n"
        for k, v in reply.headers.items():
            head += f"{k}: {v}\r\n"
        if not reply.endless:
            head += f"Content-Length: {len(reply.body)}\r\n"
        head += "Connection: close\r\n\r\n"
        data = head.encode() + reply.body
        t0 = time.monotonic()
        try:
            if reply.trickle_s > 0:
                for i in range(len(data)):
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(reply.trickle_s)
            else:
                self.wfile.write(data)
            while reply.endless and time.monotonic() - t0 < 60:
                self.wfile.write(b" " * 16)
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            with self.server.lock:
                self.server.hangups.append(time.monotonic() - t0)
        self.close_connection = True


@pytest.fixture
def hostile_server():
    servers: list[HostileServer] = []

    def start(script: Callable[[int, str, dict], Reply]) -> HostileServer:
        srv = HostileServer(script)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def unescape_all(text: str) -> str:
    """``text`` with JSON escapes undone at every nesting depth (an independent leak check)."""
    for _ in range(6):
        text = re.sub(r"\\+u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)
        text = re.sub(r"\\+/", "/", text)
    return text


def leaks(blob: bytes, key: str = KEY) -> bool:
    return key in unescape_all(blob.decode("utf-8", errors="replace"))


def files_leaking(root: Path, key: str = KEY) -> list[str]:
    """Files under ``root`` holding the key in any spelling (Parquet read as tables too)."""
    bad = []
    for f in root.rglob("*"):
        if not f.is_file():
            continue
        hit = leaks(f.read_bytes(), key)
        if f.suffix == ".parquet":
            import pyarrow.parquet as pq

            hit = hit or leaks(json.dumps(pq.read_table(f).to_pylist(), default=str).encode(), key)
        if hit:
            bad.append(str(f))
    return bad


def lwmkit(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the real CLI in a fresh process."""
    return subprocess.run(
        [sys.executable, "-c", "from lwmkit.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def packed_set(tmp_path_factory: pytest.TempPathFactory, botchan: str) -> dict[str, Path]:
    """A real shard set made by ``lwmkit pack`` from the demo inputs (seq_len 512), once per session;
    copy it before changing it."""
    from lwmkit.pack_demo import write_demo_mixture

    root = tmp_path_factory.mktemp("hostile-packed")
    mixture = write_demo_mixture(root / "demo", botchan)
    out = root / "shards"
    proc = lwmkit("pack", "--mixture", str(mixture), "--seq-len", "512", "--stage", "s512", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"shards": out, "mixture": mixture}


def tamper(
    set_dir: Path, shard: int, edit: Callable[[list[tuple[str, bytes]]], list[tuple[str, bytes]]]
) -> str:
    """Rewrite shard ``shard`` of a set with ``edit`` applied to its ``[(member name, bytes)]`` and make
    the manifest agree (size, sha256): the hostile content is all that is wrong. Returns the shard name."""
    import hashlib
    import io
    import tarfile

    manifest_path = set_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["shards"][shard]
    path = set_dir / entry["name"]
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in edit(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    path.write_bytes(data)
    entry["size_bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return entry["name"]


@pytest.fixture
def hk():
    """The helpers above, for test modules (conftest modules are not importable by name)."""
    import types

    return types.SimpleNamespace(
        KEY=KEY,
        Reply=Reply,
        chat=chat,
        leaks=leaks,
        files_leaking=files_leaking,
        lwmkit=lwmkit,
        unescape_all=unescape_all,
        tamper=tamper,
    )
