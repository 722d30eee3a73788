"""`HostConfig`: what the registry hands a host's ``from_config``.

A module of its own, importing no host, so that every host may name it (the local host does)
while the registry imports every host: the hosts stay independent of each other
(``.importlinter``). The forge hosts read it through `transport.RemoteConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only named here: importing the transport (requests, urllib3) is the forge hosts' cost.
    from gitops_rollout.gitops.hosts.transport import HttpPolicy


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class HostConfig:
    """What any host needs to know to be reached; each host reads the fields it uses."""

    remote: str
    """The GitOps repository's remote: a bare repository path (local) or its clone URL."""
    token: str | None = field(default=None, repr=False)
    """API token (never logged, never rendered); None: the host's environment variables."""
    api_url: str | None = None
    """API base URL for self-hosted forges; None derives it from `remote`."""
    repository: str | None = None
    """``owner/name`` (GitLab: ``group/project``); None derives it from `remote`."""
    user: str = "gitops-rollout"
    """The account the bot acts as (comment author, merger)."""
    clock: Callable[[], datetime] = _utcnow
    """Time source for what the host records (the demo runs on a simulated clock)."""
    environ: Mapping[str, str] | None = field(default=None, repr=False)
    """Where the forge hosts read ``GITOPS_ROLLOUT_<HOST>_*`` credentials; None: os.environ."""
    http: HttpPolicy | None = None
    """Timeouts, retries and rate-limit waits of the forge hosts; None: the defaults."""
