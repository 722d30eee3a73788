"""The world around one reconciler in the cross-host end-to-end tests.

A bare GitOps repository seeded with scenario 1 of the example (``wisdom`` on KServe ModelMesh,
staging then prod-east), a human who pushes to it, readiness snapshots written from its main
branch, a simulated clock, and one Git host in front of it:

- ``local``: the bare repository itself (pull requests kept inside it);
- ``github``, ``gitlab``, ``gitea``: the fake API on 127.0.0.1 (tests/hosts), attached to the
  same bare repository, which it serves to git over smart HTTP and merges into for real.

The bot is wired as ``gitops-rollout reconcile --host <kind>`` wires it (the host registry,
`git_credentials` for git over HTTP, a `Workspace` on the remote URL); only the HTTP policy is
the tests' (recorded sleeps, no pacing), so retries cost no time.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hosts.fake_git import GitRemote
from hosts.fake_gitea import FakeGitea
from hosts.fake_github import FakeGitHub
from hosts.fake_gitlab import FakeGitLab
from hosts.fake_pulls import FakePull, PullStore
from hosts.fake_server import FakeServer

import gitops_rollout
from gitops_rollout import reconcile, repository
from gitops_rollout.composition import snapshot_source
from gitops_rollout.gitops.hosts import HostConfig, git_credentials, make_host
from gitops_rollout.gitops.hosts.base import GitHost
from gitops_rollout.gitops.hosts.local import LocalHost
from gitops_rollout.gitops.hosts.transport import HttpPolicy
from gitops_rollout.gitops.repo import Workspace
from gitops_rollout.tree import GitTree

EXAMPLE = Path(gitops_rollout.__file__).resolve().parents[1]
KINDS = ("local", "github", "gitlab", "gitea")
FORGES = KINDS[1:]
CLUSTERS = ("staging", "prod-east")
NAMESPACE = "modelmesh-serving"
T0 = datetime(2026, 2, 2, 9, 0, tzinfo=UTC)
PASS_EVERY = timedelta(minutes=2)

BOT_TOKEN = "glpat-e2eB0tT0ken-d0-not-leak-0123456789"
REVIEWER_TOKEN = "ghp_e2eReviewerT0ken-d0-not-leak-98765"
BOT = "gitops-rollout-bot"
REVIEWER = "reviewer"

FAKES: dict[str, type[FakeServer]] = {
    "github": FakeGitHub,
    "gitlab": FakeGitLab,
    "gitea": FakeGitea,
}


def git(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


@dataclass
class Sleeps:
    waits: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@dataclass(frozen=True)
class Pull:
    """A pull request as the test sees it, whichever host holds it."""

    number: int
    head: str
    state: str
    """open, merged or closed."""
    title: str
    body: str
    labels: tuple[str, ...]
    reviewers: tuple[str, ...]
    comments: tuple[str, ...]
    merged_by: str | None

    @property
    def kind(self) -> str:
        """The transition kind from the ``rollout:<kind>`` label."""
        return next((x.split(":", 1)[1] for x in self.labels if x.startswith("rollout:")), "")


class World:
    """One host kind in front of one bare GitOps repository, on a simulated clock."""

    def __init__(self, root: Path, kind: str) -> None:
        self.root = root
        self.kind = kind
        self.now = T0
        self.bare = root / "git" / "acme" / "gitops.git"
        self.work = root / "human"
        self.inventory = root / "inventory"
        self.cache = root / "cache"
        self.sleeps = Sleeps()
        self.not_ready: set[tuple[str, str]] = set()
        """(cluster, object name) that the clusters report as not Ready."""
        self.fake: FakeServer | None = None
        self.caches = repository.Caches()
        self.reports: list[reconcile.PassReport] = []
        self.outputs: list[str] = []
        """What commands run by the test printed (stdout and stderr)."""
        self.seed()
        if kind != "local":
            fake = FAKES[kind](tokens={BOT_TOKEN, REVIEWER_TOKEN})
            fake.logins = {BOT_TOKEN: BOT, REVIEWER_TOKEN: REVIEWER}
            fake.git = GitRemote(self.bare, "/acme/gitops.git", clock=lambda: self.now)
            fake.store.repo = fake.git  # type: ignore[attr-defined]
            self.fake = fake.start()

    def stop(self) -> None:
        if self.fake is not None:
            self.fake.stop()

    # -- the repository and the human -----------------------------------------------------

    def seed(self) -> None:
        """Scenario 1 before its candidate: wisdom-0 (v0) in staging and prod-east."""
        git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        git("init", "--quiet", "--initial-branch=main", str(self.work))
        (self.work / "policies").mkdir()
        policy = (EXAMPLE / "policies" / "wisdom.yaml").read_text()
        policy = policy.replace(
            "    labels: [ml-platform]", "    labels: [ml-platform]\n    reviewers: [alice]"
        )
        assert "reviewers: [alice]" in policy
        (self.work / "policies" / "wisdom.yaml").write_text(policy)
        for cluster in CLUSTERS:
            source = EXAMPLE / "clusters" / cluster / NAMESPACE
            target = self.work / "clusters" / cluster / NAMESPACE
            shutil.copytree(source, target)
            (target / "wisdom" / "wisdom-1.yaml").unlink()
            kustomization = target / "kustomization.yaml"
            kustomization.write_text(
                kustomization.read_text().replace("  - wisdom/wisdom-1.yaml\n", "")
            )
        git("remote", "add", "origin", str(self.bare), cwd=self.work)
        self._commit("GitOps repository: wisdom on ModelMesh", author="platform-team")
        git("push", "--quiet", "origin", "main", cwd=self.work)

    def _env(self, author: str) -> dict[str, str]:
        stamp = f"{int(self.now.timestamp())} +0000"
        return {
            "GIT_AUTHOR_NAME": author,
            "GIT_AUTHOR_EMAIL": f"{author}@example.com",
            "GIT_COMMITTER_NAME": author,
            "GIT_COMMITTER_EMAIL": f"{author}@example.com",
            "GIT_AUTHOR_DATE": stamp,
            "GIT_COMMITTER_DATE": stamp,
        }

    def _commit(self, message: str, *, author: str) -> None:
        git("add", "-A", cwd=self.work)
        git("commit", "--quiet", "-m", message, cwd=self.work, env=self._env(author))

    def human_change(
        self, message: str, edit: Callable[[Path], object], *, author: str = "ml-engineer"
    ) -> None:
        """A person edits main and pushes (straight to the remote, as with a merged PR)."""
        git("fetch", "--quiet", "origin", cwd=self.work)
        git("checkout", "--quiet", "-B", "main", "origin/main", cwd=self.work)
        edit(self.work)
        self._commit(message, author=author)
        git("push", "--quiet", "origin", "main", cwd=self.work)

    def human_push_to(self, branch: str, path: str, line: str, *, author: str = "alice") -> str:
        """A person adds `line` to a file on a bot branch and pushes; the new head."""
        git("fetch", "--quiet", "origin", cwd=self.work)
        git("checkout", "--quiet", "-B", "hand-edit", f"origin/{branch}", cwd=self.work)
        target = self.work / path
        target.write_text(target.read_text() + line)
        self._commit(f"hand edit of {path}", author=author)
        git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        git("checkout", "--quiet", "main", cwd=self.work)
        return self.head(branch) or ""

    def add_candidate(self) -> None:
        """The human adds wisdom-1 (v1) to both clusters, as SCENARIOS.md 1 says."""

        def edit(root: Path) -> None:
            for cluster in CLUSTERS:
                source = EXAMPLE / "clusters" / cluster / NAMESPACE / "wisdom" / "wisdom-1.yaml"
                folder = root / "clusters" / cluster / NAMESPACE
                shutil.copy(source, folder / "wisdom" / "wisdom-1.yaml")
                kustomization = folder / "kustomization.yaml"
                kustomization.write_text(
                    kustomization.read_text().rstrip("\n") + "\n  - wisdom/wisdom-1.yaml\n"
                )

        self.human_change("wisdom: candidate v1 (retrained SVM)", edit)

    def delete_policy(self) -> None:
        self.human_change(
            "wisdom: stop managing its rollouts",
            lambda root: (root / "policies" / "wisdom.yaml").unlink(),
            author="platform-team",
        )

    def head(self, branch: str) -> str | None:
        out = git(
            "--git-dir",
            str(self.bare),
            "for-each-ref",
            "--format=%(objectname)",
            f"refs/heads/{branch}",
        )
        return out.strip() or None

    def main(self) -> GitTree:
        return GitTree(self.bare, self.head("main") or "")

    def files(self, prefix: str = "clusters") -> dict[str, str]:
        tree = self.main()
        return {p: tree.read(p).decode() for p in tree.paths(prefix)}

    # -- the clusters -----------------------------------------------------------------------

    def write_inventory(self) -> None:
        """What Argo CD applied from main: every watched object, Ready unless listed."""
        view = repository.load(self.main(), caches=self.caches)
        self.inventory.mkdir(exist_ok=True)
        for cluster in CLUSTERS:
            items = [
                _isvc(
                    v.ref.namespace,
                    v.ref.name,
                    v.version,
                    ready=(cluster, v.ref.name) not in self.not_ready,
                )
                for cluster_name, models in view.inventory.clusters.items()
                if cluster_name == cluster
                for versions in models.models.values()
                for v in versions
            ]
            doc = {"apiVersion": "v1", "kind": "List", "items": items}
            (self.inventory / f"{cluster}.json").write_text(json.dumps(doc))

    # -- the bot and the reviewer -----------------------------------------------------------

    @property
    def remote(self) -> str:
        """What ``--remote`` says: the bare path (local) or the clone URL on the fake."""
        if self.fake is None:
            return str(self.bare)
        return f"{self.fake.url}/acme/gitops.git"

    def http_policy(self) -> HttpPolicy:
        """Recorded sleeps, no write pacing, small pages (listings span several)."""
        return HttpPolicy(
            timeout=5.0, write_interval=0.0, sleep=self.sleeps, jitter=lambda: 0.5, page_size=3
        )

    def host(self, token: str = BOT_TOKEN, *, user: str = "gitops-rollout") -> GitHost:
        """The host as the registry builds it, with the token from the environment."""
        environ = {f"GITOPS_ROLLOUT_{self.kind.upper()}_TOKEN": token}
        config = HostConfig(
            remote=self.remote,
            api_url=self.fake.url if self.fake else None,
            user=user,
            clock=lambda: self.now,
            environ=environ,
            http=self.http_policy(),
        )
        return make_host(self.kind, config)

    def reviewer(self) -> GitHost:
        return self.host(REVIEWER_TOKEN, user=REVIEWER)

    def workspace(self, cache: Path | None = None, host: GitHost | None = None) -> Workspace:
        return Workspace.open(
            self.remote,
            cache_dir=cache or self.cache,
            credentials=git_credentials(host or self.host(), self.remote),
        )

    def reconcile(self, *, cache: Path | None = None) -> reconcile.PassReport:
        """One pass at `now`, then the clock moves on."""
        self.write_inventory()
        host = self.host()
        with self.workspace(cache, host) as workspace:
            report = reconcile.run_once(
                workspace=workspace,
                host=host,
                options=reconcile.PassOptions(now=self.now),
                inventory=snapshot_source([str(self.inventory)]),
                caches=self.caches,
            )
        self.reports.append(report)
        self.now += PASS_EVERY
        return report

    # -- what the host holds ----------------------------------------------------------------

    @property
    def store(self) -> PullStore:
        assert self.fake is not None
        return self.fake.store  # type: ignore[attr-defined,no-any-return]

    def pulls(self) -> list[Pull]:
        """Every pull request, oldest first."""
        if self.fake is None:
            records = LocalHost(self.bare).list_pulls()
            return [
                Pull(
                    r.number,
                    r.head,
                    r.state.value,
                    r.title,
                    r.body,
                    r.labels,
                    r.reviewers,
                    tuple(c.body for c in r.comments),
                    r.merged_by,
                )
                for r in sorted(records, key=lambda r: r.number)
            ]
        with self.fake._lock:  # a consistent read of the records
            self.store.sync()
            return [_pull(p) for p in sorted(self.store.pulls.values(), key=lambda p: p.number)]

    def open_pulls(self) -> list[Pull]:
        return [p for p in self.pulls() if p.state == "open"]

    @property
    def bot_login(self) -> str:
        return "gitops-rollout" if self.fake is None else BOT

    def texts(self) -> Iterable[str]:
        """Everything the bot wrote or reported where people read it."""
        for pull in self.pulls():
            yield pull.title
            yield pull.body
            yield from pull.comments
        for report in self.reports:
            for messages in report.errors.values():
                yield from messages
            for d in report.decisions:
                yield d.reason
        yield from self.outputs


def _pull(p: FakePull) -> Pull:
    return Pull(
        p.number,
        p.head,
        p.state,
        p.title,
        p.body,
        tuple(p.labels),
        tuple(p.reviewers),
        tuple(p.comments),
        p.merged_by,
    )


def _isvc(namespace: str, name: str, version: str, *, ready: bool) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "generation": 1,
            "labels": {"app.kubernetes.io/version": version},
        },
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "message": "" if ready else "loading the model",
                }
            ],
        },
    }


def git_recorder(directory: Path, log: Path) -> Path:
    """A ``git`` on PATH that appends its argument list to `log`, then runs the real git."""
    real = shutil.which("git")
    assert real is not None
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "git"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec "{real}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return directory
