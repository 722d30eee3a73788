"""Git hosts behind the `GitHost` protocol, and the registry that picks one by kind.

`HOSTS` maps the ``--host`` value to a factory taking one `HostConfig`; adding a host is one
entry here (its module provides ``from_config``). An unknown kind is refused loudly, never
replaced by a default. `git_credentials` gives git the same token the host's API calls use,
for a remote reached over HTTP(S).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from gitops_rollout.errors import HostError
from gitops_rollout.gitops.hosts.base import GitHost
from gitops_rollout.gitops.hosts.config import HostConfig

if TYPE_CHECKING:
    from gitops_rollout.gitops.hosts.auth import TokenSource

__all__ = ["HOSTS", "HostConfig", "UnknownHostError", "git_credentials", "make_host"]


class HostFactory(Protocol):
    def __call__(self, config: HostConfig, /) -> GitHost: ...


# Each host module is imported when its kind is asked for: the forge clients (PyGithub,
# python-gitlab, requests) cost a pass on the local host a quarter of a second to import.


def _local(config: HostConfig) -> GitHost:
    from gitops_rollout.gitops.hosts.local import LocalHost

    return LocalHost.from_config(config)


def _github(config: HostConfig) -> GitHost:
    from gitops_rollout.gitops.hosts.github import GitHubHost

    return GitHubHost.from_config(config)


def _gitlab(config: HostConfig) -> GitHost:
    from gitops_rollout.gitops.hosts.gitlab import GitLabHost

    return GitLabHost.from_config(config)


def _gitea(config: HostConfig) -> GitHost:
    from gitops_rollout.gitops.hosts.gitea import GiteaHost

    return GiteaHost.from_config(config)


HOSTS: dict[str, HostFactory] = {
    "local": _local,
    "github": _github,
    "gitlab": _gitlab,
    "gitea": _gitea,
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


@runtime_checkable
class TokenHost(Protocol):
    """A host whose API token also authenticates git over HTTPS (GitHub, GitLab, Gitea)."""

    @property
    def credentials(self) -> TokenSource: ...
    @property
    def git_username(self) -> str: ...


def git_credentials(host: GitHost, remote: str) -> Callable[[], dict[str, str]] | None:
    """Environment for git's network calls that sends `host`'s token to `remote`, or None.

    None when git needs nothing from us: a local path, or an SSH remote (keys, ``ssh-agent``
    and ``GIT_SSH_COMMAND`` come from the environment as usual). The token travels in an
    ``http.<remote>.extraHeader`` set through ``GIT_CONFIG_*`` variables (`auth.git_http_env`):
    never in git's argument list, the remote URL or the clone's config. A callable, because
    GitHub App tokens rotate: the workspace asks again before each fetch and push.
    """
    parts = urlsplit(remote)
    if parts.scheme not in ("http", "https") or not isinstance(host, TokenHost):
        return None
    # The URL git is given: credentials in it are moved out by the workspace, so the header
    # must be keyed on the URL without them.
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))

    def environment() -> dict[str, str]:
        from gitops_rollout.gitops.hosts.auth import git_http_env

        return git_http_env(
            remote_url=url, username=host.git_username, credentials=host.credentials
        )

    return environment
