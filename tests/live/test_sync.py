"""Sync awareness: applied-at from Argo CD, Flux and the live routing object."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gitops_rollout.inventory.live import LiveSettings, from_kubeconfig, snapshot_statuses
from gitops_rollout.inventory.model import ObjectRef
from gitops_rollout.inventory.sync import (
    Applied,
    ArgoCDApplication,
    FluxKustomization,
    RoutingExpectation,
    SyncState,
    SyncTracker,
    argocd_applied,
    commit_of,
    flux_applied,
)

from . import objects as o
from .fake_apiserver import FakeApiServer

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
FAST = LiveSettings(connect_timeout=1.0, read_timeout=5.0)


class History:
    """A real Git history (three commits on main) and its ancestry check."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        self._git("init", "-q", "-b", "main")
        self.commits = []
        for i in range(3):
            self._git("commit", "-q", "--allow-empty", "-m", f"step {i}")
            self.commits.append(self._git("rev-parse", "HEAD").strip())

    def _git(self, *args: str) -> str:
        env = {
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
            "HOME": str(self.root),
            "PATH": "/usr/bin:/bin",
        }
        return subprocess.run(
            ["git", "-C", str(self.root), *args],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout

    def is_ancestor(self, commit: str, revision: str) -> bool:
        return (
            subprocess.run(
                ["git", "-C", str(self.root), "merge-base", "--is-ancestor", commit, revision],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )


@pytest.fixture
def history(tmp_path: Path) -> History:
    return History(tmp_path / "repo")


def argo_app(*, history: list[tuple[str, datetime]], synced: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "history": [
            {"id": i, "revision": rev, "deployedAt": at.isoformat().replace("+00:00", "Z")}
            for i, (rev, at) in enumerate(history)
        ],
    }
    if synced:
        status["sync"] = {"status": "Synced", "revision": synced}
        status["reconciledAt"] = "2025-03-01T13:00:00Z"
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": "clusters-prod-east", "namespace": "argocd"},
        "spec": {"destination": {"name": "prod-east"}, "project": "default"},
        "status": status,
    }


def flux_ks(*, revision: str, ready_at: datetime) -> dict[str, Any]:
    return {
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": "clusters-prod-east", "namespace": "flux-system"},
        "spec": {
            "interval": "1m",
            "path": "./clusters/prod-east",
            "prune": True,
            "sourceRef": {"kind": "GitRepository", "name": "gitops-rollout"},
        },
        "status": {
            "lastAppliedRevision": revision,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "ReconciliationSucceeded",
                    "message": f"Applied revision: {revision}",
                    "lastTransitionTime": ready_at.isoformat(),
                }
            ],
        },
    }


@pytest.mark.parametrize(
    ("revision", "commit"),
    [
        ("main@sha1:" + "a" * 40, "a" * 40),
        ("sha1:" + "b" * 40, "b" * 40),
        ("C" * 40, "c" * 40),
        ("refs/heads/main@sha256:" + "d" * 64, "d" * 64),
        ("main", None),
        ("", None),
        (None, None),
    ],
    ids=["flux-branch", "flux-bare", "argo-sha", "sha256", "branch-name", "empty", "none"],
)
def test_commit_of_revision_strings(revision: str | None, commit: str | None) -> None:
    assert commit_of(revision) == commit


def test_argocd_history_operation_and_sync_are_all_witnesses() -> None:
    app = argo_app(history=[("a" * 40, T0)], synced="b" * 40)
    app["status"]["operationState"] = {
        "phase": "Succeeded",
        "finishedAt": "2025-03-01T12:30:00Z",
        "syncResult": {"revision": "c" * 40},
    }
    assert argocd_applied(app) == [
        Applied("a" * 40, T0),
        Applied("c" * 40, T0 + timedelta(minutes=30)),
        Applied("b" * 40, T0 + timedelta(hours=1)),
    ]
    app["status"]["operationState"]["phase"] = "Failed"
    assert Applied("c" * 40, T0 + timedelta(minutes=30)) not in argocd_applied(app)


def test_flux_last_applied_revision_at_ready_transition() -> None:
    ks = flux_ks(revision="main@sha1:" + "e" * 40, ready_at=T0)
    assert flux_applied(ks) == [Applied("e" * 40, T0)]


def test_argocd_application_read_from_the_cluster(
    api: FakeApiServer, kubeconfig: Path, history: History
) -> None:
    first, second, third = history.commits
    api.put(argo_app(history=[(first, T0)]))
    (connection,) = from_kubeconfig(["prod-east"], kubeconfig=kubeconfig)
    tracker = SyncTracker(
        is_ancestor=history.is_ancestor,
        sources={"prod-east": ArgoCDApplication(connection, name="clusters-prod-east")},
    )
    merged = T0 + timedelta(minutes=1)

    pending = tracker.status(cluster="prod-east", commit=second, merged_at=merged, now=merged)
    assert pending.state is SyncState.PENDING
    assert pending.message == (
        f"waiting for prod-east to apply {second[:12]} "
        "(per Argo CD Application argocd/clusters-prod-east)"
    )

    late = merged + timedelta(minutes=11)
    overdue = tracker.status(cluster="prod-east", commit=second, merged_at=merged, now=late)
    assert overdue.state is SyncState.OVERDUE
    assert overdue.message.startswith(f"commit {second[:12]} merged 11m ago is not applied")

    # Argo CD syncs the commit after it (third): second is its ancestor, so it is applied too.
    synced_at = T0 + timedelta(minutes=5)
    api.put(argo_app(history=[(first, T0), (third, synced_at)]))
    applied = tracker.status(cluster="prod-east", commit=second, merged_at=merged, now=late)
    assert (applied.state, applied.applied_at) == (SyncState.APPLIED, synced_at)

    # History trimmed later: the first answer stands.
    api.put(argo_app(history=[]))
    assert tracker.applied_at(cluster="prod-east", commit=second) == synced_at


def test_flux_kustomization_read_from_the_cluster(
    api: FakeApiServer, kubeconfig: Path, history: History
) -> None:
    first, second, _ = history.commits
    (connection,) = from_kubeconfig(["prod-east"], kubeconfig=kubeconfig)
    tracker = SyncTracker(
        is_ancestor=history.is_ancestor,
        sources={"prod-east": FluxKustomization(connection, name="clusters-prod-east")},
    )
    api.put(flux_ks(revision=f"main@sha1:{first}", ready_at=T0))
    assert tracker.applied_at(cluster="prod-east", commit=second) is None
    assert tracker.applied_at(cluster="prod-east", commit=first) == T0

    api.put(flux_ks(revision=f"main@sha1:{second}", ready_at=T0 + timedelta(minutes=2)))
    assert tracker.applied_at(cluster="prod-east", commit=second) == T0 + timedelta(minutes=2)


def test_unreadable_agent_is_unknown_and_waits(
    api: FakeApiServer, kubeconfig: Path, history: History
) -> None:
    api.deny("applications", "get")
    (connection,) = from_kubeconfig(["prod-east"], kubeconfig=kubeconfig)
    tracker = SyncTracker(
        is_ancestor=history.is_ancestor,
        sources={"prod-east": ArgoCDApplication(connection, name="clusters-prod-east")},
    )
    status = tracker.status(cluster="prod-east", commit=history.commits[0], merged_at=T0, now=T0)
    assert status.state is SyncState.UNKNOWN
    assert "cannot get Application (applications.argoproj.io) in namespace argocd" in status.message


def test_live_routing_object_matching_git_is_applied(
    api: FakeApiServer, kubeconfig: Path, history: History
) -> None:
    ref = ObjectRef("VirtualService", "models", "iris")
    api.put(
        o.virtual_service(
            "iris", content_hash="1111111111111111", managed_at="2025-03-01T12:03:00Z"
        )
    )
    connections = from_kubeconfig(["prod-east"], kubeconfig=kubeconfig)
    commit = history.commits[2]

    def tracker_for_now() -> SyncTracker:
        live = snapshot_statuses(connections, settings=FAST)
        return SyncTracker(is_ancestor=history.is_ancestor, live=live)

    old = RoutingExpectation(ref, "1111111111111111")
    new = RoutingExpectation(ref, "2222222222222222")
    assert tracker_for_now().applied_at(cluster="prod-east", commit=commit, routing=new) is None
    status = tracker_for_now().status(
        cluster="prod-east", commit=commit, merged_at=T0, now=T0, routing=old
    )
    assert status.state is SyncState.APPLIED
    # The API server's record of the last write is earlier than our first sight of it.
    assert status.applied_at == datetime(2025, 3, 1, 12, 3, tzinfo=UTC)


def test_cluster_without_a_witness_falls_back_to_the_merge_time(history: History) -> None:
    tracker = SyncTracker(is_ancestor=history.is_ancestor)
    status = tracker.status(cluster="staging", commit=history.commits[0], merged_at=T0, now=T0)
    assert (status.state, status.applied_at) == (SyncState.UNTRACKED, T0)
