"""A client for Prometheus' HTTP query API (``/api/v1/query`` and ``/api/v1/query_range``).

It knows HTTP and the API's JSON shapes, nothing about what is asked: `queries` writes the PromQL.
Every failure leaves as a `MetricsError` (a `QueryError` when Prometheus rejected the query, with
its message), never as a `requests` exception. Outages (connection errors, timeouts, 5xx) are
retried a bounded number of times with backoff; 4xx answers are not, since asking again cannot
help. Tokens and passwords stay out of logs, reprs and exception messages.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from gitops_rollout.errors import MetricsError
from gitops_rollout.metrics.base import QueryError, utc

log = logging.getLogger(__name__)

MAX_POINTS = 11_000
"""Prometheus refuses range queries of more points per series; longer ones are split."""

_RETRIED_STATUS = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class PrometheusOptions:
    """How to reach Prometheus. Secrets are excluded from ``repr`` so they cannot leak into logs."""

    bearer_token: str | None = field(default=None, repr=False)
    """Sent as ``Authorization: Bearer``; e.g. a service account token for an OpenShift or
    Grafana Cloud endpoint."""
    bearer_token_file: Path | None = None
    """Read before every request, because projected service-account tokens rotate."""
    username: str | None = None
    """Basic auth user; Prometheus' own ``web.config.file`` or a reverse proxy checks it."""
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    """PEM bundle of the CAs trusted for a private Prometheus; default the system store."""
    cert_file: Path | None = None
    """Client certificate (PEM) for mutual TLS, with `key_file`."""
    key_file: Path | None = None
    insecure_skip_verify: bool = False
    """Off by default: an unverified server can feed a rollout false metrics."""
    connect_timeout: float = 5.0
    """Seconds to open a connection; Prometheus in the same cluster answers in milliseconds."""
    read_timeout: float = 30.0
    """Seconds to wait for an answer; also sent as the query's server-side ``timeout``."""
    retries: int = 2
    """Extra attempts after an outage (connection error, timeout, 5xx); never after a 4xx."""
    backoff: float = 0.5
    """Seconds before the first retry; doubled for each further one."""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Extra headers, e.g. ``X-Scope-OrgID`` for Thanos, Cortex or Mimir tenants; hidden from
    ``repr`` in case one carries a key."""


@dataclass(frozen=True)
class Sample:
    """One series of an instant query."""

    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class RangeSeries:
    """One series of a range query: (Unix seconds, value) at each step it had a value."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]


class PrometheusClient:
    """Queries one Prometheus (or a compatible API: Thanos, Mimir, VictoriaMetrics)."""

    def __init__(
        self,
        url: str,
        options: PrometheusOptions | None = None,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._options = options or PrometheusOptions()
        self._url, url_user, url_password = _split_credentials(url)
        if url_user is not None and self._options.username is None:
            # A URL like https://user:pass@host works, but the credentials must not travel in a
            # string that ends up in logs; they move to the auth fields.
            self._options = replace(self._options, username=url_user, password=url_password or "")
        self._secrets = tuple(
            s for s in (self._options.bearer_token, self._options.password, url_password) if s
        )
        self._session = session or requests.Session()
        self._sleep = sleep
        if self._options.insecure_skip_verify:
            log.warning("TLS verification of %s is off (insecure_skip_verify)", self._url)

    def __repr__(self) -> str:
        return f"PrometheusClient({self._url!r})"

    @property
    def url(self) -> str:
        """The base URL, without any credentials."""
        return self._url

    def instant(self, query: str, *, at: datetime) -> list[Sample]:
        """The vector `query` evaluates to at `at`; raises MetricsError (QueryError if rejected)."""
        data = self._query("/api/v1/query", {"query": query, "time": _unix(at)}, query)
        kind = data.get("resultType")
        if kind == "scalar":
            return [Sample({}, _number(data.get("result"), query))]
        if kind != "vector":
            raise MetricsError(f"Prometheus answered {kind!r} where a vector was expected: {query}")
        return [
            Sample(_labels(item, query), _number(item.get("value"), query))
            for item in _items(data, query)
        ]

    def range(
        self, query: str, *, start: datetime, end: datetime, step: timedelta
    ) -> list[RangeSeries]:
        """`query` evaluated at start, start + step, ..., end, one entry per series; raises
        MetricsError (QueryError if rejected)."""
        step_s = step.total_seconds()
        if step_s <= 0:
            raise ValueError(f"step must be positive, got {step}")
        first, last = utc(start).timestamp(), utc(end).timestamp()
        merged: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        chunk = step_s * (MAX_POINTS - 1)
        lo = first
        while lo <= last:
            hi = min(last, lo + chunk)
            params = {"query": query, "start": _fmt(lo), "end": _fmt(hi), "step": _fmt(step_s)}
            data = self._query("/api/v1/query_range", params, query)
            if data.get("resultType") != "matrix":
                raise MetricsError(
                    f"Prometheus answered {data.get('resultType')!r} where a matrix was "
                    f"expected: {query}"
                )
            for item in _items(data, query):
                labels = _labels(item, query)
                values = item.get("values")
                if not isinstance(values, list):
                    raise MetricsError(f"malformed answer from Prometheus for {query}: no values")
                points = merged.setdefault(tuple(sorted(labels.items())), [])
                points.extend(_point(v, query) for v in values)
            lo = hi + step_s
        return [RangeSeries(dict(key), tuple(points)) for key, points in merged.items()]

    def version(self) -> str:
        """Prometheus' version from its build info; raises MetricsError if it cannot be read."""
        data = self._call("GET", "/api/v1/status/buildinfo", {}, "buildinfo")
        version = data.get("version") if isinstance(data, dict) else None
        return str(version) if version else "unknown"

    def close(self) -> None:
        self._session.close()

    # -- transport ------------------------------------------------------------------------------

    def _query(self, path: str, params: dict[str, str], query: str) -> dict[str, Any]:
        params = {**params, "timeout": _fmt(self._options.read_timeout)}
        data = self._call("POST", path, params, query)
        if not isinstance(data, dict):
            raise MetricsError(f"malformed answer from Prometheus for {query}: no data")
        return data

    def _call(self, method: str, path: str, params: dict[str, str], query: str) -> Any:
        """The ``data`` member of a successful answer, after bounded retries of outages."""
        attempts = self._options.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return self._once(method, path, params, query)
            except _Retryable as err:
                if attempt == attempts:
                    times = f" {attempts} times" if attempts > 1 else ""
                    raise MetricsError(
                        f"Prometheus at {self._url} failed{times}: {err}"
                    ) from err.__cause__
                delay = self._options.backoff * 2 ** (attempt - 1)
                log.info("Prometheus %s: %s; retrying in %.1fs", self._url, err, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(self, method: str, path: str, params: dict[str, str], query: str) -> Any:
        options = self._options
        url = self._url + path
        started = time.monotonic()
        try:
            if method == "POST":
                response = self._session.post(url, data=params, **self._request_args())
            else:
                response = self._session.get(url, params=params, **self._request_args())
        except requests.exceptions.SSLError as err:
            # A certificate problem is configuration; asking again cannot fix it.
            raise MetricsError(
                f"TLS with Prometheus at {self._url} failed: {self._redact(_reason(err))}; "
                "check the CA file, the client certificate, or the URL's scheme"
            ) from err
        except requests.Timeout as err:
            raise _Retryable(f"no answer within {options.read_timeout}s") from err
        except requests.ConnectionError as err:
            raise _Retryable(f"cannot connect ({self._redact(_reason(err))})") from err
        except (requests.RequestException, OSError) as err:
            # Bad TLS files, invalid URLs: configuration, not an outage.
            raise MetricsError(
                f"cannot query Prometheus at {self._url}: {self._redact(_reason(err))}"
            ) from err
        elapsed = time.monotonic() - started
        log.debug("Prometheus %s %s -> %s in %.3fs", path, query, response.status_code, elapsed)
        body = _json(response)
        if response.status_code in _RETRIED_STATUS:
            detail = _error_text(body) or response.reason
            raise _Retryable(f"HTTP {response.status_code} {self._redact(detail)}")
        if response.status_code in (401, 403):
            raise MetricsError(
                f"Prometheus at {self._url} refused the credentials (HTTP {response.status_code});"
                " check the token, user and password it is given"
            )
        if isinstance(body, dict) and body.get("status") == "error":
            raise QueryError(
                query=query,
                error_type=str(body.get("errorType", f"HTTP {response.status_code}")),
                error=self._redact(str(body.get("error", ""))),
            )
        if response.status_code >= 400:
            hint = (
                "; check that the URL is Prometheus' base URL"
                if response.status_code == 404
                else ""
            )
            raise MetricsError(
                f"Prometheus at {self._url} answered HTTP {response.status_code} "
                f"{self._redact(response.reason or '')} for {path}{hint}"
            )
        if not isinstance(body, dict) or body.get("status") != "success":
            raise MetricsError(
                f"{self._url}{path} did not answer like Prometheus (HTTP {response.status_code});"
                " check the URL"
            )
        for warning in body.get("warnings") or ():
            log.warning("Prometheus warns about %s: %s", query, warning)
        return body.get("data")

    def _request_args(self) -> dict[str, Any]:
        options = self._options
        headers = dict(options.headers)
        token = options.bearer_token
        if options.bearer_token_file is not None:
            try:
                token = options.bearer_token_file.read_text().strip()
            except OSError as err:
                raise MetricsError(
                    f"cannot read the bearer token file {options.bearer_token_file}: {err.strerror}"
                ) from err
        if token:
            if token not in self._secrets:
                self._secrets = (*self._secrets, token)
            headers["Authorization"] = f"Bearer {token}"
        verify: bool | str = True
        if options.insecure_skip_verify:
            verify = False
        elif options.ca_file is not None:
            verify = str(options.ca_file)
        args: dict[str, Any] = {
            "headers": headers,
            "timeout": (options.connect_timeout, options.read_timeout),
            "verify": verify,
            "allow_redirects": False,
        }
        if options.username is not None and not token:
            args["auth"] = (options.username, options.password or "")
        if options.cert_file is not None:
            args["cert"] = (
                (str(options.cert_file), str(options.key_file))
                if options.key_file is not None
                else str(options.cert_file)
            )
        return args

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text


class _Retryable(Exception):
    """An outage worth another attempt."""


def _split_credentials(url: str) -> tuple[str, str | None, str | None]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MetricsError(
            f"{_strip_userinfo(url)!r} is not a Prometheus URL; write it as "
            "http(s)://host:port[/path]"
        )
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return clean, parts.username, parts.password


def _strip_userinfo(url: str) -> str:
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://{tail}"


def _reason(err: BaseException) -> str:
    # requests wraps urllib3 wraps the socket error; the innermost one says what happened
    # (refused, DNS, TLS) without the pool details the outer messages repeat.
    inner: BaseException = err
    while True:
        nested = getattr(inner, "reason", None)
        if not isinstance(nested, BaseException) and inner.args:
            nested = inner.args[0]
        if not isinstance(nested, BaseException):
            break
        inner = nested
    text = str(inner)
    if text.startswith("<") and ">: " in text:
        text = text.split(">: ", 1)[1]
    return text[:300]


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("error", ""))
    return ""


def _items(data: dict[str, Any], query: str) -> list[dict[str, Any]]:
    result = data.get("result")
    if not isinstance(result, list) or not all(isinstance(r, dict) for r in result):
        raise MetricsError(f"malformed answer from Prometheus for {query}: result is not a list")
    return result


def _labels(item: dict[str, Any], query: str) -> dict[str, str]:
    metric = item.get("metric", {})
    if not isinstance(metric, dict):
        raise MetricsError(f"malformed answer from Prometheus for {query}: labels")
    return {str(k): str(v) for k, v in metric.items()}


def _point(raw: Any, query: str) -> tuple[float, float]:
    if not isinstance(raw, list) or len(raw) != 2:
        raise MetricsError(f"malformed answer from Prometheus for {query}: point {raw!r}")
    return float(raw[0]), _number(raw, query)


def _number(raw: Any, query: str) -> float:
    # Prometheus sends [timestamp, "value"]; values are strings so NaN and Inf survive JSON.
    try:
        return float(raw[1])
    except (TypeError, ValueError, IndexError) as err:
        raise MetricsError(f"malformed answer from Prometheus for {query}: {raw!r}") from err


def _unix(moment: datetime) -> str:
    return _fmt(utc(moment).timestamp())


def _fmt(seconds: float) -> str:
    if math.isfinite(seconds) and seconds == int(seconds):
        return str(int(seconds))
    return f"{seconds:.3f}"
