"""The daemon's pieces in one process: step clocks that wait for the apply, overdue reports,
the policy listing, the live routing witness, and the flags of ``gitops-rollout run``."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from live.fake_apiserver import FakeApiServer
from live.objects import isvc, model_labels

from gitops_rollout import reconcile
from gitops_rollout.cli import main
from gitops_rollout.composition import snapshot_source
from gitops_rollout.daemon import (
    Daemon,
    DaemonConfig,
    LiveClusters,
    SyncHistory,
    connector,
    git_is_ancestor,
    last_changes,
)
from gitops_rollout.errors import InventoryError
from gitops_rollout.gitops.hosts.base import PullState
from gitops_rollout.gitops.hosts.local import LocalHost
from gitops_rollout.gitops.repo import Workspace
from gitops_rollout.inventory.model import ObjectRef
from gitops_rollout.inventory.sync import Applied, SyncState, SyncTracker
from gitops_rollout.lease import ShardAssignment, shard_of
from gitops_rollout.observability import Metrics
from gitops_rollout.settings import Settings
from gitops_rollout.state import HASH_KEY

from .fixture_repo import ROUTING, git, main_sha, read_main, seed, snapshot

PATH = ROUTING.format(cluster="prod-east")
ROLLOUT = "prod-east/modelmesh-serving/wisdom"
ONLY_PROD = frozenset({"prod-east"})
VS = ObjectRef("VirtualService", "modelmesh-serving", "wisdom")


@dataclass
class Argo:
    """A stand-in for an Argo CD Application: what it reports applied, or that it is unreadable."""

    applied_list: list[Applied] = field(default_factory=list)
    broken: bool = False
    description: str = "Argo CD Application argocd/clusters-prod-east"

    def applied(self) -> Sequence[Applied]:
        if self.broken:
            raise InventoryError("cluster prod-east: cannot reach the API server: refused")
        return list(self.applied_list)


@dataclass
class Repo:
    remote: Path
    workspace: Workspace
    host: LocalHost
    inventory: Path


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    """The fixture repository with step 1 of prod-east merged (by a plain pass)."""
    remote = seed(tmp_path)
    inventory = snapshot(tmp_path / "prod-east.json", candidate_ready=True)
    with Workspace.open(str(remote), cache_dir=tmp_path / "cache") as workspace:
        host = LocalHost(remote)
        report = reconcile.run_once(
            workspace=workspace,
            host=host,
            options=reconcile.PassOptions(now=datetime.now(UTC), clusters=ONLY_PROD),
            inventory=snapshot_source([f"prod-east={inventory}"]),
        )
        assert [(d.action, d.outcome) for d in report.decisions] == [("start", "merged")]
        workspace.fetch()  # the host merged on the remote; passes fetch first, as here
        yield Repo(remote, workspace, host, inventory)


def _merged(repo: Repo) -> datetime:
    """When the routing file last changed on main (the merge of step 1)."""
    ((_, merged),) = last_changes(
        repo.workspace.git_dir, "refs/remotes/origin/main", [PATH]
    ).values()
    return merged


def _history(
    repo: Repo,
    tracker: SyncTracker,
    *,
    now: datetime,
    deadlines: dict[str, timedelta] | None = None,
    routing: bool = False,
) -> SyncHistory:
    """A pass's history; with `routing`, the live routing object is the only witness."""
    return SyncHistory(
        repo.workspace,
        tracker,
        now=now,
        deadlines=deadlines or {},
        witnesses={} if routing else {"prod-east": Argo().description},
        use_routing=routing,
    )


def test_last_changes_names_the_commit_and_agrees_with_merge_time(repo: Repo) -> None:
    folder = PATH.rsplit("/", 1)[0]
    found = last_changes(
        repo.workspace.git_dir, "refs/remotes/origin/main", [PATH, folder, "clusters/nowhere"]
    )
    assert set(found) == {PATH, folder}
    commit, when = found[PATH]
    assert commit == main_sha(repo.remote), "the merge of step 1 is main's head"
    assert repo.workspace.merge_time([PATH]) == {PATH: when}


def test_step_clock_waits_for_the_apply_and_never_starts_before_the_merge(repo: Repo) -> None:
    head = main_sha(repo.remote)
    merged = _merged(repo)
    argo = Argo()
    tracker = SyncTracker(
        is_ancestor=git_is_ancestor(repo.workspace.git_dir), sources={"prod-east": argo}
    )
    now = merged + timedelta(minutes=2)

    pending = _history(repo, tracker, now=now)
    assert pending.merge_time([PATH]) == {}, "not applied: the step has not started"
    (note,) = pending.notes
    assert note.status.state is SyncState.PENDING
    assert note.status.message == (
        f"waiting for prod-east to apply {head[:12]}, merged 2m ago "
        "(per Argo CD Application argocd/clusters-prod-east)"
    )

    # Argo CD reports a later revision (a descendant) applied: the clock starts then.
    argo.applied_list = [Applied(head, merged + timedelta(seconds=40))]
    applied = _history(repo, tracker, now=now)
    assert applied.merge_time([PATH]) == {PATH: merged + timedelta(seconds=40)}
    assert applied.notes[0].status.state is SyncState.APPLIED


def test_an_apply_reported_before_the_merge_counts_from_the_merge(repo: Repo) -> None:
    head = main_sha(repo.remote)
    merged = _merged(repo)
    tracker = SyncTracker(
        is_ancestor=git_is_ancestor(repo.workspace.git_dir),
        sources={"prod-east": Argo([Applied(head, merged - timedelta(hours=1))])},
    )
    history = _history(repo, tracker, now=merged + timedelta(minutes=1))
    assert history.merge_time([PATH]) == {PATH: merged}


@pytest.mark.parametrize(
    ("deadline", "waited", "state"),
    [
        (None, timedelta(minutes=9), SyncState.PENDING),
        (None, timedelta(minutes=11), SyncState.OVERDUE),
        (timedelta(seconds=30), timedelta(minutes=1), SyncState.OVERDUE),
    ],
    ids=["default-deadline-pending", "default-deadline-overdue", "policy-deadline-overdue"],
)
def test_overdue_follows_the_policy_deadline(
    repo: Repo, deadline: timedelta | None, waited: timedelta, state: SyncState
) -> None:
    merged = _merged(repo)
    tracker = SyncTracker(
        is_ancestor=git_is_ancestor(repo.workspace.git_dir), sources={"prod-east": Argo()}
    )
    history = _history(
        repo, tracker, now=merged + waited, deadlines={PATH: deadline} if deadline else None
    )
    assert history.merge_time([PATH]) == {}
    assert history.notes[0].status.state is state
    if state is SyncState.OVERDUE:
        limit = "30s" if deadline else "10m"
        message = history.notes[0].status.message
        assert f"is not applied to prod-east yet (deadline {limit};" in message


def test_an_unreadable_agent_holds_and_an_untracked_cluster_uses_the_merge_time(
    repo: Repo,
) -> None:
    merged = _merged(repo)
    ancestor = git_is_ancestor(repo.workspace.git_dir)
    broken = SyncTracker(is_ancestor=ancestor, sources={"prod-east": Argo(broken=True)})
    history = _history(repo, broken, now=merged)
    assert history.merge_time([PATH]) == {}
    assert history.notes[0].status.state is SyncState.UNKNOWN
    assert "cannot reach the API server" in history.notes[0].status.message

    untracked = SyncTracker(is_ancestor=ancestor, sources={"staging": Argo()})
    history = _history(repo, untracked, now=merged)
    assert history.merge_time([PATH]) == {PATH: merged}
    assert history.notes[0].status.state is SyncState.UNTRACKED


def test_the_live_routing_object_witnesses_the_apply(repo: Repo, tmp_path: Path) -> None:
    routing = next(yaml.safe_load_all(read_main(repo.remote, PATH)))
    digest = routing["metadata"]["annotations"][HASH_KEY]
    merged = _merged(repo)
    with FakeApiServer() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", contexts={"prod-east": api.url})
        live = LiveClusters(
            connector(DaemonConfig(settings=Settings(), kubeconfig=kubeconfig)), sync_timeout=5
        )
        try:
            live.ensure(["prod-east"])
            tracker = SyncTracker(is_ancestor=git_is_ancestor(repo.workspace.git_dir), live=live)
            before = _history(repo, tracker, now=merged, routing=True)
            assert before.merge_time([PATH]) == {}
            assert "per the live routing object" in before.notes[0].status.message

            # Argo CD applies the file: the live VirtualService carries the same hash.
            api.put(
                {
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "VirtualService",
                    "metadata": routing["metadata"],
                    "spec": routing["spec"],
                }
            )
            deadline = time.monotonic() + 5
            while live.object("prod-east", VS) is None and time.monotonic() < deadline:
                time.sleep(0.02)
            after = _history(repo, tracker, now=datetime.now(UTC), routing=True)
            started = after.merge_time([PATH])
            assert set(started) == {PATH} and started[PATH] >= merged
            assert after.notes[0].status.state is SyncState.APPLIED
            live_vs = live.object("prod-east", VS)
            assert live_vs is not None and live_vs.annotations[HASH_KEY] == digest
        finally:
            live.stop()


def _metric(metrics: Metrics, line_start: str) -> float:
    for line in metrics.render().decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {line_start}")


def test_a_pass_holds_while_unapplied_reports_overdue_then_advances(repo: Repo) -> None:
    head = main_sha(repo.remote)
    merged = _merged(repo)
    argo = Argo()
    metrics = Metrics()
    clock = [merged + timedelta(minutes=11)]
    daemon = Daemon(
        workspace=repo.workspace,
        host=repo.host,
        inventory=snapshot_source([f"prod-east={repo.inventory}"]),
        judge=reconcile.no_verdicts,
        clusters=ONLY_PROD,
        tracker=SyncTracker(
            is_ancestor=git_is_ancestor(repo.workspace.git_dir), sources={"prod-east": argo}
        ),
        witnesses={"prod-east": argo.description},
        metrics=metrics,
        clock=lambda: clock[0],
    )
    listing = daemon.list_policies()
    assert listing.intervals == {"wisdom": timedelta(0)}, "no analysis: the daemon's default"

    held = daemon.run_pass(["wisdom"])
    (decision,) = held.decisions
    assert decision.action == "hold"
    assert decision.reason.startswith("waiting for this step's change to take effect; commit ")
    assert "merged 11m ago is not applied to prod-east yet (deadline 10m;" in decision.reason
    assert [n.status.state for n in held.sync] == [SyncState.OVERDUE]
    assert held.prs_opened == 0 and not held.errors
    assert _metric(metrics, f'gitops_rollout_sync_overdue{{rollout="{ROLLOUT}"}}') == 1
    assert len(repo.host.list_pulls()) == 1, "still only the PR of step 1"

    argo.applied_list = [Applied(head, clock[0] - timedelta(seconds=5))]
    advanced = daemon.run_pass(["wisdom"])
    (decision,) = advanced.decisions
    assert (decision.action, decision.outcome) == ("advance", "merged")
    assert advanced.prs_opened == 1 and advanced.prs_merged == 1
    assert _metric(metrics, f'gitops_rollout_sync_overdue{{rollout="{ROLLOUT}"}}') == 0
    assert _metric(metrics, "gitops_rollout_pull_requests_merged_total") == 1
    titles = [p.title for p in repo.host.list_pulls(state=PullState.MERGED)]
    assert any("step 2/3 -> 60%" in t for t in titles), titles


def test_a_cluster_that_becomes_unreachable_holds_its_rollout(repo: Repo, tmp_path: Path) -> None:
    """Live readiness moves the rollout; once the API server is gone, it holds (no PR)."""
    with FakeApiServer() as api:
        for name, version in (("wisdom-0", "v0"), ("wisdom-1", "v1")):
            labels = model_labels("wisdom", version)
            api.put(isvc(name, namespace="modelmesh-serving", ready=True, labels=labels))
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", contexts={"prod-east": api.url})
        live = LiveClusters(
            connector(DaemonConfig(settings=Settings(), kubeconfig=kubeconfig)), sync_timeout=5
        )
        clock = [_merged(repo) + timedelta(minutes=1)]
        daemon = Daemon(
            workspace=repo.workspace,
            host=repo.host,
            inventory=live,
            judge=reconcile.no_verdicts,
            clusters=ONLY_PROD,
            live=live,
            clock=lambda: clock[0],
        )
        try:
            daemon.list_policies()  # starts watching prod-east
            (moved,) = daemon.run_pass(["wisdom"]).decisions
            assert (moved.action, moved.outcome) == ("advance", "merged")

            api.stop()
            deadline = time.monotonic() + 10
            while "prod-east" not in live()[1] and time.monotonic() < deadline:
                time.sleep(0.05)
            clock[0] += timedelta(minutes=5)
            pulls = len(repo.host.list_pulls())
            (held,) = daemon.run_pass(["wisdom"]).decisions
            assert held.action == "hold"
            assert held.reason.startswith("cluster 'prod-east' cannot be reached (cluster ")
            assert held.reason.endswith("); holding its rollouts")
            assert len(repo.host.list_pulls()) == pulls, "a hold opens no pull request"
        finally:
            live.stop()


def test_list_policies_follows_the_main_branch_and_the_cluster_filter(repo: Repo) -> None:
    def daemon(clusters: frozenset[str] | None) -> Daemon:
        return Daemon(
            workspace=repo.workspace,
            host=repo.host,
            inventory=reconcile.no_inventory,
            judge=reconcile.no_verdicts,
            clusters=clusters,
        )

    first = daemon(None).list_policies()
    assert daemon(None).list_policies().version == first.version
    assert daemon(frozenset({"eu-west"})).list_policies().intervals == {}

    checkout = repo.remote.parent / "seed"
    git("pull", "--quiet", "--ff-only", str(repo.remote), "main", cwd=checkout)
    policy = checkout / "policies" / "wisdom.yaml"
    policy.write_text(
        policy.read_text().replace("  gitops:", "  analysis:\n    interval: 30s\n  gitops:")
    )
    git("commit", "--quiet", "-am", "wisdom: analysis every 30s", cwd=checkout)
    git("push", "--quiet", str(repo.remote), "main", cwd=checkout)
    changed = daemon(None).list_policies()
    assert changed.version != first.version
    assert changed.intervals == {"wisdom": timedelta(seconds=30)}


class Watched:
    """Records which clusters the daemon asks the live inventory to watch."""

    def __init__(self) -> None:
        self.clusters: set[str] | None = None

    def ensure(self, clusters: Iterable[str]) -> None:
        self.clusters = set(clusters)


@pytest.mark.parametrize("owner", [True, False], ids=["own-shard", "other-shard"])
def test_only_this_replicas_policies_are_watched(repo: Repo, owner: bool) -> None:
    index = shard_of("wisdom", 2) if owner else 1 - shard_of("wisdom", 2)
    watched = Watched()
    daemon = Daemon(
        workspace=repo.workspace,
        host=repo.host,
        inventory=reconcile.no_inventory,
        judge=reconcile.no_verdicts,
        shards=ShardAssignment(index, 2),
        live=watched,  # type: ignore[arg-type]
    )
    listing = daemon.list_policies()
    assert listing.intervals == {"wisdom": timedelta(0)}, "the scheduler filters by shard"
    assert watched.clusters == ({"prod-east", "staging"} if owner else set())


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--argocd-app", "prod-east"], 2, "'prod-east' is not CLUSTER=VALUE"),
        (["--argocd-app", "prod-east=clusters-prod"], 2, "is not NAMESPACE/NAME"),
        (["--in-cluster"], 1, "--in-cluster reads the one cluster this pod runs in"),
        (
            ["--cluster", "prod-east", "--flux-kustomization", "staging=flux-system/x"],
            1,
            "a sync source is given for staging, which this reconciler does not handle",
        ),
        (["--shards", "2", "--shard", "2"], 1, "shard index 2 (from GITOPS_ROLLOUT_SHARD=2)"),
    ],
    ids=["context-pair", "sync-ref", "in-cluster-name", "foreign-sync-source", "shard-range"],
)
def test_run_refuses_flags_that_cannot_work(
    repo: Repo, args: list[str], code: int, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("GITOPS_ROLLOUT_CLUSTER", "GITOPS_ROLLOUT_SHARD", "GITOPS_ROLLOUT_SHARDS"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(
        main, ["run", "--remote", str(repo.remote), "--no-leases", "--listen", "", *args]
    )
    assert result.exit_code == code, result.output
    assert message in result.output
