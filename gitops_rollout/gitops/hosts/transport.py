"""HTTP transport shared by the Git hosts: timeouts, retries with backoff, rate limits.

PyGithub, python-gitlab and our Gitea client all sit on requests and urllib3, so one urllib3
`Retry` policy gives the three hosts the same behaviour. Transient failures (5xx, timeouts,
dropped connections) are retried with capped exponential backoff and jitter. Rate limits (429,
or any answer saying how long to wait: Retry-After, X-RateLimit-Reset, RateLimit-Reset) wait as
long as the host asks, up to a cap; past the cap, or when the tries run out, `RateLimited` is
raised so the pass fails fast and the next pass tries again instead of stalling the loop.
GitHub's 403 rate limits need a look at the body and live in `github`. Sleeping, the clock and
the jitter are injected so the tests run in milliseconds. Credentials live in `auth`.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3 import BaseHTTPResponse
from urllib3.connectionpool import ConnectionPool
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from gitops_rollout.errors import HostError

log = logging.getLogger(__name__)

USER_AGENT = "gitops-rollout"
TRANSIENT_STATUSES = (500, 502, 503, 504)
RATE_LIMIT_STATUSES = (403, 429)
# Every method we use is retried. Repeating a write is harmless: edits and labels are
# idempotent, a merge names the head sha, a second create gets "already exists" and is
# adopted. The exception is a comment whose answer was lost after the host stored it: it may
# appear twice, which we prefer to losing it.
RETRIED_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class HttpPolicy:
    """How a host talks HTTP: timeouts, retries, rate-limit waits and pacing."""

    timeout: float = 15.0
    """Seconds to wait for a connection, then for each read (PyGithub's default; GitHub rounds
    it up to whole seconds)."""
    attempts: int = 5
    """Tries per request, the first included: four retries, backing off up to 1, 2, 4 and 8 s
    (about 15 s at most), enough to ride out a load balancer's blip without stalling a pass."""
    backoff_initial: float = 1.0
    """Seconds before the first retry of a transient failure; doubles with each further retry."""
    backoff_max: float = 30.0
    """Cap on one backoff sleep, seconds, so a pass never hangs on one request."""
    rate_limit_max_wait: float = 120.0
    """Longest wait, in seconds, for a rate limit to lift within a pass. A longer wait (GitHub's
    hourly budget can reset up to an hour away) fails the call; the next pass retries."""
    secondary_rate_wait: float = 60.0
    """Seconds to wait after a GitHub secondary rate limit that names no time: GitHub's docs say
    to wait at least one minute."""
    write_interval: float = 1.0
    """Minimum seconds between two writes to GitHub: GitHub asks integrators to pace writes to
    avoid secondary rate limits. PyGithub does the pacing (and its own sleeping)."""
    page_size: int = 100
    """Items per list request: the maximum GitHub and GitLab allow, fewest round trips (Gitea
    caps it at 50)."""
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    """Sleeps between tries; tests inject a recorder."""
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)
    """Seconds since the epoch, to turn rate-limit reset times into waits."""
    jitter: Callable[[], float] = field(
        default=random.SystemRandom().random, repr=False, compare=False
    )
    """A number in [0, 1) that spreads the backoff of clients retrying together."""

    def backoff(self, retry_number: int) -> float:
        """Seconds before retry `retry_number` (1 for the first): half fixed, half jittered."""
        ceiling = min(self.backoff_max, self.backoff_initial * 2.0 ** max(0, retry_number - 1))
        return ceiling / 2 + self.jitter() * ceiling / 2


class RateLimited(HostError):
    """The host rate-limited us for longer than we wait within one pass."""


def rate_limit_wait(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the host asked us to wait, from its headers; None when it did not say.

    Retry-After (seconds or an HTTP date) is used by every host; GitHub's X-RateLimit-* and
    GitLab's RateLimit-* headers say when an exhausted budget resets (epoch seconds).
    """
    retry_after = headers.get("Retry-After")
    if retry_after:
        retry_after = retry_after.strip()
        if retry_after.isdigit():
            return float(retry_after)
        try:
            when = email.utils.parsedate_to_datetime(retry_after)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return max(0.0, when.timestamp() - now)
    for prefix in ("X-RateLimit", "RateLimit"):
        remaining, reset = headers.get(f"{prefix}-Remaining"), headers.get(f"{prefix}-Reset")
        if remaining is not None and reset is not None and remaining.strip() == "0":
            try:
                # +1: the reset happens somewhere within that second.
                return max(0.0, float(reset) - now) + 1.0
            except ValueError:
                continue
    return None


class PolicyRetry(Retry):
    """urllib3 `Retry` driven by an `HttpPolicy` (used for GitLab, Gitea and GitHub App tokens).

    Retries the transient statuses and 429, honouring the waits hosts ask for.
    """

    def __init__(self, *, policy: HttpPolicy | None = None, **kwargs: Any) -> None:
        self.policy = policy or HttpPolicy()
        super().__init__(**kwargs)

    @classmethod
    def from_policy(cls, policy: HttpPolicy) -> Self:
        return cls(policy=policy, **retry_arguments(policy, [*TRANSIENT_STATUSES, 429]))

    def new(self, **kw: Any) -> Self:
        kw["policy"] = self.policy
        return super().new(**kw)

    def get_backoff_time(self) -> float:
        return self.policy.backoff(len(self.history))

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        try:
            return super().increment(method, url, response, error, _pool, _stacktrace)
        except MaxRetryError:
            raise_if_rate_limited(response)
            raise

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        pause(self.policy, response, self.get_backoff_time())


def retry_arguments(policy: HttpPolicy, statuses: list[int]) -> dict[str, Any]:
    """Keyword arguments for a urllib3 `Retry` that follows `policy`."""
    return {
        "total": max(0, policy.attempts - 1),
        "status_forcelist": statuses,
        "allowed_methods": RETRIED_METHODS,
        "respect_retry_after_header": True,
        # Hand the last failed answer to the client library, which turns it into its own error.
        "raise_on_status": False,
    }


def raise_if_rate_limited(response: BaseHTTPResponse | None) -> None:
    """Out of tries on a rate limit: raise `RateLimited` rather than hand the answer back.

    Letting the last 429 through would make python-gitlab start sleeping on its own.
    """
    if response is not None and response.status in RATE_LIMIT_STATUSES:
        response.drain_conn()
        raise RateLimited(f"still rate limited (HTTP {response.status}) after retrying") from None


def pause(policy: HttpPolicy, response: BaseHTTPResponse | None, backoff: float) -> None:
    """Sleep before the next try: as long as the host asked, else `backoff` seconds."""
    asked = rate_limit_wait(response.headers, policy.clock()) if response is not None else None
    wait = backoff if asked is None else max(asked, 0.0)
    if wait > policy.rate_limit_max_wait:
        raise RateLimited(
            f"rate limited for another {wait:.0f} s, longer than the "
            f"{policy.rate_limit_max_wait:.0f} s a pass waits; the next pass will try again"
        )
    status = response.status if response is not None else "no answer"
    log.info("host answered %s; retrying in %.1f s", status, wait)
    policy.sleep(wait)


class TokenAuth(requests.auth.AuthBase):
    """Sets ``Authorization: <scheme> <token>`` from a callable on every request."""

    def __init__(self, scheme: str, token: Callable[[], str]) -> None:
        self._scheme = scheme
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"{self._scheme} {self._token()}"
        return request

    def __repr__(self) -> str:
        return f"TokenAuth({self._scheme} ***)"


def make_session(policy: HttpPolicy, auth: requests.auth.AuthBase) -> requests.Session:
    """A requests session that retries per `policy` and authenticates with `auth`.

    Setting `auth` also keeps requests from reading ~/.netrc.
    """
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=PolicyRetry.from_policy(policy))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.auth = auth
    session.headers["User-Agent"] = USER_AGENT
    return session


class RemoteConfig(Protocol):
    """What a host's ``from_config`` reads from the registry's `HostConfig`.

    A protocol rather than an import of the registry, so that the hosts stay independent of
    each other (the registry imports every host).
    """

    @property
    def remote(self) -> str: ...
    @property
    def token(self) -> str | None: ...
    @property
    def api_url(self) -> str | None: ...
    @property
    def repository(self) -> str | None: ...
    @property
    def environ(self) -> Mapping[str, str] | None: ...
    @property
    def http(self) -> HttpPolicy | None: ...


@dataclass(frozen=True)
class Remote:
    """Where a repository's clone URL points: enough to find the host's API and the repo."""

    scheme: str
    """``https``, ``http`` or ``ssh``."""
    host: str
    """Host name, with the port for HTTP(S) remotes."""
    path: str
    """``owner/name`` (GitLab: ``group/subgroup/project``), without ``.git``."""


_SCP_LIKE = re.compile(r"^(?:[^@/]+@)?(?P<host>[^:/]+):(?P<path>[^/].*)$")


def parse_remote(remote: str) -> Remote:
    """The parts of a clone URL (``https://host/owner/name.git`` or ``git@host:owner/name``)."""
    parts = urlsplit(remote)
    if parts.scheme in ("http", "https", "ssh") and parts.hostname:
        port = f":{parts.port}" if parts.port and parts.scheme != "ssh" else ""
        scheme, host, path = parts.scheme, parts.hostname + port, parts.path
    elif (match := _SCP_LIKE.match(remote)) and "://" not in remote:
        scheme, host, path = "ssh", match["host"], match["path"]
    else:
        scheme, host, path = "", "", ""
    path = path.strip("/").removesuffix(".git")
    if not host or "/" not in path:
        shown = re.sub(r"//[^/@]*@", "//", remote)  # never echo user:token@
        raise HostError(
            f"cannot tell the host and repository from the remote {shown!r}; "
            "use a clone URL such as https://host/owner/name.git"
        )
    return Remote(scheme, host, path)


def locate(config: RemoteConfig, *, api_of: Callable[[Remote], str]) -> tuple[str, str]:
    """(repository, API URL) for a host: as configured, else from the clone URL.

    A remote need not say either when both are configured (an SSH host alias, a mirror).
    """
    if config.repository and config.api_url:
        return config.repository, config.api_url
    remote = parse_remote(config.remote)
    return config.repository or remote.path, config.api_url or api_of(remote)


def status_hint(status: int | None, *, credentials: str) -> str:
    """What a user can do about an HTTP failure, for the end of a HostError message."""
    if status == 401:
        return f"the host rejected the token; check {credentials}"
    if status == 403:
        return f"the token lacks a permission; check the scopes of {credentials}"
    if status == 404:
        return "not found: check the repository name and that the token can read it"
    if status is not None and status >= 500:
        return "the host is failing; the next pass will try again"
    return ""
