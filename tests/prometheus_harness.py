"""A real Prometheus for tests: Debian's ``prometheus`` binary on 127.0.0.1, fed exact history.

- `OpenMetrics` writes counter histories at chosen timestamps; `backfill` turns them into TSDB
  blocks with ``promtool tsdb create-blocks-from openmetrics``, so queries see a deterministic
  past (resets and scrape gaps included) without waiting for scrapes.
- `PrometheusServer` starts Prometheus on a free port with a temporary data dir and config
  (optionally a ``web.config.file`` for TLS and basic auth), waits for ``/-/ready`` and stops it.
- `RecordingProxy` sits in front of it and records every request (to count queries, to see
  headers), and can demand a bearer token, fail the first requests or answer slowly.
- `make_tls` writes a throwaway CA and certificates for TLS and mutual TLS tests.

`require_prometheus()` skips when the binaries are missing, except in CI (``CI=true``), where it
fails: a suite that silently skips its real components proves nothing.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import pytest
import requests

READY_TIMEOUT = 30.0
"""Seconds Prometheus may take to load its blocks and answer /-/ready."""


@dataclass(frozen=True)
class Binaries:
    prometheus: str
    promtool: str


def require_prometheus() -> Binaries:
    """The prometheus and promtool binaries; skip without them, fail in CI."""
    found = [shutil.which(name) or f"/usr/bin/{name}" for name in ("prometheus", "promtool")]
    missing = [path for path in found if not os.access(path, os.X_OK)]
    if missing:
        message = (
            f"{', '.join(missing)} not found; install Debian's prometheus package "
            "(apt-get install -y prometheus)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return Binaries(found[0], found[1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- history ------------------------------------------------------------------------------------


@dataclass
class OpenMetrics:
    """Samples to backfill: series by metric name and labels, (Unix seconds, value) each."""

    series: dict[tuple[str, tuple[tuple[str, str], ...]], dict[float, float]] = field(
        default_factory=dict
    )

    def add(
        self, name: str, labels: Mapping[str, str], samples: Iterable[tuple[float, float]]
    ) -> None:
        points = self.series.setdefault((name, tuple(sorted(labels.items()))), {})
        points.update(samples)

    def text(self) -> str:
        """OpenMetrics exposition with timestamps; every family typed ``unknown`` so any sample
        name is allowed, families contiguous, samples of a series in time order."""
        lines: list[str] = []
        for name in sorted({name for name, _ in self.series}):
            lines.append(f"# TYPE {name} unknown")
            for (series_name, labels), points in sorted(self.series.items()):
                if series_name != name:
                    continue
                rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                for ts in sorted(points):
                    lines.append(f"{name}{{{rendered}}} {points[ts]!r} {ts:.3f}")
        lines.append("# EOF")
        return "\n".join(lines) + "\n"


def backfill(history: OpenMetrics, data_dir: Path, *, binaries: Binaries) -> None:
    """Write `history` as TSDB blocks into `data_dir` (before Prometheus starts on it)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    source = data_dir.parent / f"{data_dir.name}-input.om"
    source.write_text(history.text())
    done = subprocess.run(
        [
            binaries.promtool,
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            str(source),
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"promtool backfill failed:\n{done.stdout}\n{done.stderr}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# -- the server ---------------------------------------------------------------------------------


class PrometheusServer:
    """A Prometheus process on 127.0.0.1; use as a context manager."""

    def __init__(
        self,
        workdir: Path,
        *,
        binaries: Binaries,
        scrape_configs: str = "[]",
        web_config: str | None = None,
        scheme: str = "http",
        ready_auth: tuple[str, str] | None = None,
        ready_verify: bool | str = True,
        ready_cert: tuple[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.binaries = binaries
        self.scrape_configs = scrape_configs
        self.web_config = web_config
        self.scheme = scheme
        self.ready_auth = ready_auth
        self.ready_verify = ready_verify
        self.ready_cert = ready_cert
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"scrape_configs: {self.scrape_configs}\n"
        )
        self.port = free_port()
        args = [
            self.binaries.prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # Backfilled history is hours old; keep it well inside retention.
            "--storage.tsdb.retention.time=30d",
            "--log.level=warn",
        ]
        if self.web_config is not None:
            web = self.workdir / "web.yml"
            web.write_text(self.web_config)
            args.append(f"--web.config.file={web}")
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {self._process.returncode}:\n{self.log_text()}"
                )
            try:
                answer = requests.get(
                    f"{self.url}/-/ready",
                    auth=self.ready_auth,
                    verify=self.ready_verify,
                    cert=self.ready_cert,
                    timeout=1,
                )
                if answer.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus not ready after {READY_TIMEOUT}s:\n{self.log_text()}")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def log_text(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- the proxy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that gave up (a timeout test) leaves a broken pipe; that is the point.
        pass


class RecordingProxy:
    """Forwards HTTP requests to `upstream` and records them; use as a context manager.

    `require_bearer` answers 401 to requests without that token; `fail_first` answers the
    first N requests with `fail_status` (and no JSON body); `delay` holds every answer.
    """

    def __init__(
        self,
        upstream: str,
        *,
        require_bearer: str | None = None,
        fail_first: int = 0,
        fail_status: int = 503,
        delay: float = 0.0,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.require_bearer = require_bearer
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.delay = delay
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def count(self, path_prefix: str = "/api/v1/") -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.path.startswith(path_prefix))

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._forward()

            def do_POST(self) -> None:
                self._forward()

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests.append(
                        Recorded(self.command, self.path, dict(self.headers.items()), body)
                    )
                    seen = len(proxy.requests)
                if proxy.delay:
                    time.sleep(proxy.delay)
                if seen <= proxy.fail_first:
                    self._reply(proxy.fail_status, b"upstream trouble", "text/plain")
                    return
                if proxy.require_bearer is not None and self.headers.get("Authorization") != (
                    f"Bearer {proxy.require_bearer}"
                ):
                    self._reply(401, b"Unauthorized\n", "text/plain")
                    return
                conn = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=30
                )
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    # Plain bodies: the proxy forwards bytes, not encodings.
                    if k.lower() not in ("host", "connection", "authorization", "accept-encoding")
                }
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                payload = answer.read()
                conn.close()
                self._reply(
                    answer.status, payload, answer.getheader("Content-Type") or "text/plain"
                )

            def _reply(self, status: int, payload: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# -- TLS --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throwaway CA, a server certificate for 127.0.0.1 and a client one."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def web_config(self, *, require_client_cert: bool = True) -> str:
        """A Prometheus ``web.config.file`` body serving TLS with these files."""
        lines = [
            "tls_server_config:",
            f"  cert_file: {self.server_cert}",
            f"  key_file: {self.server_key}",
        ]
        if require_client_cert:
            lines += [
                "  client_auth_type: RequireAndVerifyClientCert",
                f"  client_ca_file: {self.ca}",
            ]
        return "\n".join(lines) + "\n"


def make_tls(directory: Path) -> TlsFiles:
    """Write a CA and certificates signed by it (valid for a day) into `directory`."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("gitops-rollout test CA"))
        .issuer_name(name("gitops-rollout test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def issue(common: str, usage: x509.ObjectIdentifier, stem: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, key_path)
        return cert_path, key_path

    ca_path = directory / "ca.crt"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_cert, server_key = issue("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH, "server")
    client_cert, client_key = issue("gitops-rollout", ExtendedKeyUsageOID.CLIENT_AUTH, "client")
    return TlsFiles(ca_path, server_cert, server_key, client_cert, client_key)
