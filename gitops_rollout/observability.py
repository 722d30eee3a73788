"""What the daemon tells operators: Prometheus metrics, health probes and decision log lines.

`Metrics` owns the counters and histograms of passes, decisions, pull requests and errors in
its own registry (tests build as many as they like). `ObservabilityServer` serves ``/healthz``
(the process and its scheduler are alive), ``/readyz`` (a first pass succeeded) and
``/metrics`` on one address. `log_decision` writes one ``key=value`` line per decision, the
format log pipelines parse without configuration. The scheduler decides when to call these.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)
decisions_log = logging.getLogger("gitops_rollout.decisions")

DEFAULT_LISTEN = "127.0.0.1:9090"
"""Local default; the container image sets ``0.0.0.0:8080`` so Prometheus can scrape it."""

_BARE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@%+")


def logfmt(**fields: object) -> str:
    """``key=value`` pairs; values with spaces, quotes or ``=`` are JSON-quoted."""
    parts = []
    for key, value in fields.items():
        text = "" if value is None else str(value)
        bare = bool(text) and set(text) <= _BARE
        parts.append(f"{key}={text}" if bare else f"{key}={json.dumps(text)}")
    return " ".join(parts)


def log_decision(*, policy: str, cluster: str, action: str, reason: str) -> None:
    """One INFO line per decision, e.g. ``decision policy=fraud cluster=prod action=step ...``."""
    decisions_log.info(
        "decision %s", logfmt(policy=policy, cluster=cluster, action=action, reason=reason)
    )


class Metrics:
    """The daemon's Prometheus metrics, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.passes = Counter(
            "gitops_rollout_passes",
            "Reconcile passes by outcome (succeeded, failed, skipped).",
            ["outcome"],
            registry=r,
        )
        self.decisions = Counter(
            "gitops_rollout_decisions", "Decisions taken, by action.", ["action"], registry=r
        )
        self.pull_requests = Counter(
            "gitops_rollout_pull_requests_opened", "Pull requests opened or updated.", registry=r
        )
        self.errors = Counter(
            "gitops_rollout_errors", "Errors reported by passes, by stage.", ["stage"], registry=r
        )
        self.pass_duration = Histogram(
            "gitops_rollout_pass_duration_seconds",
            "Wall time of one pass.",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.policies = Gauge(
            "gitops_rollout_policies_scheduled", "Policies with a job on this replica.", registry=r
        )
        self.consecutive_failures = Gauge(
            "gitops_rollout_policy_consecutive_failures",
            "Failed passes in a row per policy (0 after a success); alert when it keeps rising.",
            ["policy"],
            registry=r,
        )
        self.shard_held = Gauge(
            "gitops_rollout_shard_lease_held",
            "1 while this replica holds the Lease of the shard, else 0.",
            ["shard"],
            registry=r,
        )
        self.last_success = Gauge(
            "gitops_rollout_last_successful_pass_timestamp_seconds",
            "Unix time of the last successful pass.",
            registry=r,
        )

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


@dataclass
class Health:
    """Probe state: alive while `alive()` says so, ready once `mark_ready` was called."""

    alive: Callable[[], bool] = lambda: True
    _ready: threading.Event = field(default_factory=threading.Event)

    def mark_ready(self) -> None:
        self._ready.set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) -> (host, port); raises ValueError."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {address!r} must look like host:port")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - explicit ":8080" means all


class ObservabilityServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` over HTTP, served from a daemon thread."""

    def __init__(self, address: str, *, metrics: Metrics, health: Health) -> None:
        self.metrics, self.health = metrics, health
        host, port = parse_address(address)
        routes: Mapping[str, Callable[[], tuple[int, str, bytes]]] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, self.metrics.render()),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                code, ctype, body = route() if route else (404, "text/plain", b"not found\n")
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _healthz(self) -> tuple[int, str, bytes]:
        ok = self.health.alive()
        return (200 if ok else 503), "text/plain", b"ok\n" if ok else b"scheduler stopped\n"

    def _readyz(self) -> tuple[int, str, bytes]:
        ok = self.health.ready
        return (200 if ok else 503), "text/plain", b"ready\n" if ok else b"no pass yet\n"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="observability", daemon=True
        )
        self._thread.start()
        log.info("serving /healthz /readyz /metrics on port %d", self.port)

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
