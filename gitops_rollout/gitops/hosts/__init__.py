"""Git hosts behind the `GitHost` protocol, and the registry that picks one by kind.

`HOSTS` maps the ``--host`` value to a factory taking one `HostConfig`; adding a host is one
entry here (its module provides ``from_config``). An unknown kind is refused loudly, never
replaced by a default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from gitops_rollout.errors import HostError
from gitops_rollout.gitops.hosts.base import GitHost
from gitops_rollout.gitops.hosts.local import LocalHost


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class HostConfig:
    """What any host needs to know to be reached; each host reads the fields it uses."""

    remote: str
    """The GitOps repository's remote: a bare repository path (local) or its clone URL."""
    token: str | None = field(default=None, repr=False)
    """API token (never logged, never rendered); None for the local host."""
    api_url: str | None = None
    """API base URL for self-hosted forges; None derives it from `remote`."""
    user: str = "gitops-rollout"
    """The account the bot acts as (comment author, merger)."""
    clock: Callable[[], datetime] = _utcnow
    """Time source for what the host records (the demo runs on a simulated clock)."""


class HostFactory(Protocol):
    def __call__(self, config: HostConfig, /) -> GitHost: ...


HOSTS: dict[str, HostFactory] = {
    "local": LocalHost.from_config,
}


class UnknownHostError(HostError):
    """The configured host kind is not one we have; bad input, not an outage."""

    exit_code = 1


def make_host(kind: str, config: HostConfig) -> GitHost:
    """The host of `kind` for `config`; UnknownHostError names the kinds there are."""
    try:
        factory = HOSTS[kind]
    except KeyError:
        known = ", ".join(sorted(HOSTS))
        raise UnknownHostError(f"unknown host kind {kind!r}; use one of: {known}") from None
    return factory(config)
