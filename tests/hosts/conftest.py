"""Fixtures: each Git host wired to its fake API on 127.0.0.1, with sleeps recorded, not slept."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import pytest

from gitops_rollout.gitops.hosts.auth import StaticToken
from gitops_rollout.gitops.hosts.base import GitHost, PullRequestDraft
from gitops_rollout.gitops.hosts.gitea import GiteaHost
from gitops_rollout.gitops.hosts.github import GitHubHost
from gitops_rollout.gitops.hosts.gitlab import GitLabHost
from gitops_rollout.gitops.hosts.transport import HttpPolicy

from .fake_gitea import FakeGitea
from .fake_github import FakeGitHub
from .fake_gitlab import FakeGitLab
from .fake_server import FakeServer

TOKEN = "glpat-S3CRET-token-for-tests-0123456789"
NOW = 1_700_000_000.0
HOSTS = ("github", "gitlab", "gitea")
PREFIX = "gitops-rollout/prod/"
HEAD = "gitops-rollout/prod/serving/wisdom"


def draft(**changes: object) -> PullRequestDraft:
    fields: dict[str, object] = {
        "head": HEAD,
        "base": "main",
        "title": "rollout(wisdom): prod step 1/4 -> 10%",
        "body": "Shift 10% of traffic to v2.",
        "labels": ("gitops-rollout", "model:wisdom"),
        "reviewers": ("alice",),
    }
    fields.update(changes)
    return PullRequestDraft(**fields)  # type: ignore[arg-type]


@dataclass
class Sleeps:
    """Stands in for time.sleep: records each wait."""

    waits: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@dataclass
class HostCase:
    """One host under test: the fake it talks to and a factory for the host itself."""

    kind: str
    fake: FakeServer
    policy: HttpPolicy
    sleeps: Sleeps
    build: Callable[..., GitHost]
    host: GitHost

    @property
    def store(self):  # type: ignore[no-untyped-def]
        return self.fake.store  # type: ignore[attr-defined]

    @property
    def list_path(self) -> str:
        """Regex of the path the host lists pull requests on."""
        return {"github": r"/pulls$", "gitlab": r"/merge_requests$", "gitea": r"/pulls$"}[self.kind]


def fast_policy(sleeps: Sleeps, *, kind: str) -> HttpPolicy:
    # PyGithub only takes whole seconds; the others can time out faster.
    return HttpPolicy(
        timeout=1.0 if kind == "github" else 0.3,
        attempts=4,
        backoff_initial=1.0,
        backoff_max=8.0,
        rate_limit_max_wait=120.0,
        write_interval=0.0,
        page_size=2,
        sleep=sleeps,
        clock=lambda: NOW,
        jitter=lambda: 0.5,
    )


def start_fake(kind: str, tokens: set[str]) -> FakeServer:
    fakes: dict[str, type[FakeServer]] = {
        "github": FakeGitHub,
        "gitlab": FakeGitLab,
        "gitea": FakeGitea,
    }
    return fakes[kind](tokens=tokens).start()


def host_factory(kind: str, fake: FakeServer, policy: HttpPolicy) -> Callable[..., GitHost]:
    def build(*, token: str = TOKEN, auto_merge: bool = True, **changes: object) -> GitHost:
        credentials = StaticToken(token, origin="test")
        used = replace(policy, **changes) if changes else policy  # type: ignore[arg-type]
        if kind == "github":
            return GitHubHost(
                repository="acme/gitops",
                credentials=credentials,
                api_url=fake.url,
                policy=used,
                auto_merge=auto_merge,
            )
        if kind == "gitlab":
            return GitLabHost(
                project="acme/gitops",
                credentials=credentials,
                api_url=fake.url,
                policy=used,
                auto_merge=auto_merge,
            )
        return GiteaHost(
            repository="acme/gitops",
            credentials=credentials,
            api_url=fake.url,
            policy=used,
            auto_merge=auto_merge,
        )

    return build


@pytest.fixture(params=HOSTS)
def case(request: pytest.FixtureRequest) -> Iterator[HostCase]:
    kind: str = request.param
    sleeps = Sleeps()
    fake = start_fake(kind, {TOKEN})
    policy = fast_policy(sleeps, kind=kind)
    build = host_factory(kind, fake, policy)
    try:
        yield HostCase(kind, fake, policy, sleeps, build, build())
    finally:
        fake.stop()
        assert not fake.errors, f"the fake API failed: {fake.errors!r}"
