"""``gitops-rollout run``: the daemon's collaborators, built once and handed to `schedule.run`.

Part of the composition root (with `cli` and `composition`): it opens the workspace (one cached
clone, locked for the process) and the host once, builds the inventory source (live clusters
through kubeconfig contexts or in-cluster credentials, or snapshot files), the judge, the shard
leases and the sync tracker, and gives the scheduler two callables: `Daemon.list_policies`
(policy names and intervals from the fetched main branch) and `Daemon.run_pass`
(`reconcile.run_once` for the named policies). Passes share one workspace, so they run one at
a time; each policy still keeps its own rhythm.

Sync awareness: a step's clock starts when its change is applied to the cluster, not when it
merged. `SyncHistory` answers reconcile's ``History.merge_time`` for each routing file with
the time the cluster's witness says the commit that last changed the file was applied (an
Argo CD Application, a Flux Kustomization, or the live routing object whose content-hash
annotation equals the file's), never earlier than the merge; while the change is not applied
the path is left out, so the rollout waits. A change still not applied after the policy's
deadline (``analysis.deadline``, default 10 minutes) is named on the rollout's decision, logged
as a warning and exported as ``gitops_rollout_sync_overdue``. A cluster without a witness
keeps the merge time (DESIGN.md's fallback).
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import yaml
from prometheus_client import Counter, Gauge

from gitops_rollout import reconcile, repository, schedule
from gitops_rollout.composition import make_judge, signing_of, snapshot_source
from gitops_rollout.errors import GitWriteError, InventoryError, RolloutError
from gitops_rollout.gitops.hosts import HostConfig, git_credentials, make_host
from gitops_rollout.gitops.hosts.base import GitHost
from gitops_rollout.gitops.repo import Workspace
from gitops_rollout.inventory.live import (
    RESOURCES,
    ROUTING_SELECTORS,
    ClusterConnection,
    LiveInventory,
    LiveObject,
    from_kubeconfig,
    in_cluster,
)
from gitops_rollout.inventory.model import ObjectRef
from gitops_rollout.inventory.sync import (
    ArgoCDApplication,
    FluxKustomization,
    IsAncestor,
    RoutingExpectation,
    SyncSource,
    SyncState,
    SyncStatus,
    SyncTracker,
)
from gitops_rollout.lease import LeaseSettings, ShardAssignment, ShardLeases
from gitops_rollout.observability import Metrics
from gitops_rollout.planning import key_of
from gitops_rollout.settings import Settings
from gitops_rollout.state import HASH_KEY
from gitops_rollout.yamlsource import YamlProblem, load_fast

log = logging.getLogger(__name__)

DEFAULT_DEADLINE = timedelta(minutes=10)
"""How long a merged change may stay unapplied before it is reported (no analysis.deadline)."""

ROUTING_KINDS = frozenset(r.kind for r in RESOURCES if r.selectors == ROUTING_SELECTORS)
"""Kinds of routing objects the live inventory watches, so the only ones it can witness."""

Connect = Callable[[Sequence[str]], list[ClusterConnection]]


class DaemonConfigError(RolloutError):
    """The daemon's flags contradict each other or name something that cannot work."""

    exit_code = 1


@dataclass(frozen=True)
class ObjectName:
    """``NAMESPACE/NAME`` of the Argo CD Application or Flux Kustomization syncing a cluster."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> ObjectName:
        namespace, sep, name = text.strip().partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise ValueError(f"{text!r} is not NAMESPACE/NAME")
        return cls(namespace, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class DaemonConfig:
    """Everything ``gitops-rollout run`` was told; `cli` builds it from flags and environment."""

    settings: Settings
    inventory_files: tuple[str, ...] = ()
    """Snapshot files standing in for live clusters (re-read each pass); empty: live clusters."""
    kubeconfig: Path | None = None
    """Kubeconfig of the live clusters; None: KUBECONFIG or ~/.kube/config."""
    contexts: Mapping[str, str] = field(default_factory=dict)
    """Cluster -> kubeconfig context; a cluster not named here uses the context of its name."""
    in_cluster: bool = False
    """Read the one cluster this pod runs in (`clusters` names it) with its ServiceAccount."""
    clusters: frozenset[str] | None = None
    """Only these clusters (a per-cluster deployment); None: every cluster the policies name."""
    metrics_file: str | None = None
    prometheus: str | None = None
    argocd_apps: Mapping[str, ObjectName] = field(default_factory=dict)
    """Cluster -> the Argo CD Application that syncs it (read through that cluster's API)."""
    flux_kustomizations: Mapping[str, ObjectName] = field(default_factory=dict)
    """Cluster -> the Flux Kustomization that syncs it."""
    sync_context: str | None = None
    """Kubeconfig context of the cluster where Argo CD / Flux run (hub and spoke, as in
    deploy/); None: each cluster's own connection."""
    sync_from_routing: bool = True
    """With live clusters: a routing object carrying its Git file's content hash is applied."""
    leases: bool = True
    """Act on this replica's shard only while holding its Lease (off: a single replica)."""
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    lease_context: str | None = None
    """Kubeconfig context of the cluster holding the Leases; None: the current context."""
    shards: ShardAssignment = field(default_factory=lambda: ShardAssignment(0, 1))
    schedule: schedule.DaemonSettings = field(default_factory=schedule.DaemonSettings)
    sync_timeout: float = 10.0
    """Seconds to wait for the first list of newly watched clusters before passes use them."""

    @property
    def own_cluster(self) -> str | None:
        """With `in_cluster`: the cluster this pod runs in."""
        return next(iter(self.clusters)) if self.in_cluster and self.clusters else None

    def check(self) -> None:
        """Raise DaemonConfigError for flags that cannot work together."""
        if self.in_cluster:
            if self.clusters is None or len(self.clusters) != 1:
                raise DaemonConfigError(
                    "--in-cluster reads the one cluster this pod runs in: name it with exactly "
                    "one --cluster (or GITOPS_ROLLOUT_CLUSTER)"
                )
            if self.contexts or self.kubeconfig is not None or self.sync_context:
                raise DaemonConfigError(
                    "--in-cluster uses the pod's ServiceAccount; drop --kubeconfig, --context "
                    "and --sync-context"
                )
        both = sorted(self.argocd_apps.keys() & self.flux_kustomizations.keys())
        if both:
            raise DaemonConfigError(
                f"cluster {', '.join(both)} has both --argocd-app and --flux-kustomization; "
                "name the one agent that syncs it"
            )
        if self.clusters is not None:
            extra = sorted(
                (self.argocd_apps.keys() | self.flux_kustomizations.keys()) - self.clusters
            )
            if extra:
                raise DaemonConfigError(
                    f"a sync source is given for {', '.join(extra)}, which this reconciler does "
                    f"not handle (--cluster {', '.join(sorted(self.clusters))})"
                )


# -- live clusters ---------------------------------------------------------------------------


def connector(config: DaemonConfig) -> Connect:
    """How to reach clusters by name: in-cluster credentials, or kubeconfig contexts."""
    own = config.own_cluster

    def connect(clusters: Sequence[str]) -> list[ClusterConnection]:
        if own is None:
            return from_kubeconfig(clusters, kubeconfig=config.kubeconfig, contexts=config.contexts)
        return [
            in_cluster(name)
            if name == own
            else ClusterConnection(
                name, None, f"this reconciler runs in cluster {own} and reads only that one"
            )
            for name in clusters
        ]

    return connect


class LiveClusters:
    """The live inventory of the clusters the policies name; rebuilt when that set changes.

    An `InventorySource` for reconcile, `LiveObjects` for the sync tracker and a `Service` for
    the scheduler. The watches start with the first policy set (`ensure`), before any pass.
    """

    def __init__(self, connect: Connect, *, sync_timeout: float = 10.0) -> None:
        self._connect = connect
        self._sync_timeout = sync_timeout
        self._lock = threading.Lock()
        self._inventory: LiveInventory | None = None
        self._clusters: frozenset[str] | None = None
        self._stopped = False

    def start(self) -> None:
        """Nothing to do until the policies say which clusters to watch."""

    def stop(self) -> None:
        with self._lock:
            inventory, self._inventory, self._stopped = self._inventory, None, True
        if inventory is not None:
            inventory.stop()

    @property
    def clusters(self) -> frozenset[str]:
        with self._lock:
            return self._clusters or frozenset()

    def ensure(self, clusters: Iterable[str]) -> None:
        """Watch exactly these clusters; a changed set is swapped in once its first lists end."""
        wanted = frozenset(clusters)
        with self._lock:
            if self._stopped or wanted == self._clusters:
                return
        fresh = LiveInventory(self._connect(sorted(wanted)))
        fresh.start()
        if not fresh.wait_synced(self._sync_timeout):
            log.warning(
                "first lists of %s not finished after %ss; their rollouts hold until they are",
                ", ".join(sorted(wanted)),
                self._sync_timeout,
            )
        with self._lock:
            if self._stopped:
                old: LiveInventory | None = fresh
            else:
                old, self._inventory, self._clusters = self._inventory, fresh, wanted
        if old is not None:
            old.stop()
        log.info("watching clusters: %s", ", ".join(sorted(wanted)) or "(none)")
        for reason in fresh.unreachable().values():
            log.warning("%s; its rollouts hold", reason)

    def __call__(self) -> tuple[reconcile.Statuses, Mapping[str, str]]:
        with self._lock:
            inventory = self._inventory
        if inventory is None:
            raise InventoryError("the live inventory has not started watching yet")
        return inventory.statuses(), inventory.unreachable()

    def object(self, cluster: str, ref: ObjectRef) -> LiveObject | None:
        with self._lock:
            inventory = self._inventory
        return inventory.object(cluster, ref) if inventory is not None else None


def sync_sources(config: DaemonConfig, connect: Connect) -> dict[str, SyncSource]:
    """The Argo CD Applications and Flux Kustomizations named by the flags, per cluster."""
    wanted = sorted(config.argocd_apps.keys() | config.flux_kustomizations.keys())
    if not wanted:
        return {}
    connections: dict[str, ClusterConnection]
    if config.sync_context:
        context = config.sync_context
        (hub,) = from_kubeconfig(
            [context], kubeconfig=config.kubeconfig, contexts={context: context}
        )
        connections = dict.fromkeys(wanted, hub)
    else:
        connections = {c.name: c for c in connect(wanted)}
    out: dict[str, SyncSource] = {}
    for cluster, app in config.argocd_apps.items():
        out[cluster] = ArgoCDApplication(
            connections[cluster], name=app.name, namespace=app.namespace
        )
    for cluster, ks in config.flux_kustomizations.items():
        out[cluster] = FluxKustomization(connections[cluster], name=ks.name, namespace=ks.namespace)
    return out


def lease_client(config: DaemonConfig) -> Any:
    """An API client for the shard Leases: in-cluster, or a kubeconfig context."""
    own = config.own_cluster
    if own is not None:
        connection = in_cluster(own)
    else:
        context = config.lease_context or _current_context(config.kubeconfig)
        (connection,) = from_kubeconfig(
            ["leases"], kubeconfig=config.kubeconfig, contexts={"leases": context}
        )
    if connection.api_client is None:
        raise DaemonConfigError(
            f"the shard Leases need a Kubernetes API: {connection.problem} (fix: --lease-context "
            "CONTEXT, or --no-leases when a single replica runs)"
        )
    return connection.api_client


def _current_context(kubeconfig: Path | None) -> str:
    from kubernetes import config as k8s_config
    from kubernetes.config.config_exception import ConfigException

    try:
        _, active = k8s_config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig is not None else None
        )
    except (ConfigException, OSError) as err:
        raise DaemonConfigError(
            f"the shard Leases need a Kubernetes API, and the kubeconfig cannot be read: {err} "
            "(fix: --kubeconfig, or --no-leases when a single replica runs)"
        ) from err
    return str((active or {}).get("name") or "")


# -- Git: which commit last changed a path, and ancestry -------------------------------------


def _tokens(stream: IO[bytes]) -> Iterator[bytes]:
    pending = b""
    while chunk := stream.read(65536):
        pending += chunk
        *complete, pending = pending.split(b"\0")
        yield from complete
    if pending:
        yield pending


def last_changes(git_dir: Path, ref: str, paths: Iterable[str]) -> dict[str, tuple[str, datetime]]:
    """For each path (file or folder), the newest first-parent commit of `ref` whose diff
    against its first parent touches it, with that commit's committer time: the same walk as
    `Workspace.merge_time`, keeping the commit. Paths never changed are absent."""
    wanted = set(paths)
    found: dict[str, tuple[str, datetime]] = {}
    if not wanted:
        return found
    args = [
        "git",
        "--git-dir",
        str(git_dir),
        "log",
        "--first-parent",
        "--diff-merges=first-parent",
        "--no-renames",
        "--name-only",
        "-z",
        "--format=\x1e%H %ct",
        ref,
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    complete = False
    try:
        current: tuple[str, datetime] | None = None
        for raw in _tokens(proc.stdout):
            token = raw.lstrip(b"\n")
            if token.startswith(b"\x1e"):
                sha, stamp = token[1:].split()
                current = (sha.decode(), datetime.fromtimestamp(int(stamp), UTC))
                continue
            if current is None:
                continue
            path = token.decode(errors="replace")
            while path:
                if path in wanted and path not in found:
                    found[path] = current
                path = path.rpartition("/")[0]
            if len(found) == len(wanted):
                complete = True
                break
    finally:
        if complete:
            proc.kill()
        proc.stdout.close()
        error = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        code = proc.wait()
    if not complete and code != 0:
        raise GitWriteError(f"git log of {ref} failed: {error}")
    return found


def git_is_ancestor(git_dir: Path) -> IsAncestor:
    """``is_ancestor(commit, revision)`` through ``git merge-base --is-ancestor`` (cached when
    both are known; a revision we have not fetched yet is "no" for now)."""
    known: dict[tuple[str, str], bool] = {}
    lock = threading.Lock()

    def is_ancestor(commit: str, revision: str) -> bool:
        key = (commit, revision)
        with lock:
            if key in known:
                return known[key]
        done = subprocess.run(
            ["git", "--git-dir", str(git_dir), "merge-base", "--is-ancestor", commit, revision],
            capture_output=True,
            check=False,
        )
        if done.returncode in (0, 1):
            with lock:
                if len(known) > 4096:
                    known.clear()
                known[key] = done.returncode == 0
        return done.returncode == 0

    return is_ancestor


def _show(git_dir: Path, commit: str, path: str) -> bytes | None:
    done = subprocess.run(
        ["git", "--git-dir", str(git_dir), "cat-file", "blob", f"{commit}:{path}"],
        capture_output=True,
        check=False,
    )
    return done.stdout if done.returncode == 0 else None


def routing_expectation(text: bytes, *, path: str) -> RoutingExpectation | None:
    """The live routing object a generated routing file becomes, and the hash it must carry;
    None when the live inventory cannot see that kind (or the file has no hash)."""
    try:
        docs = load_fast(text)
    except (yaml.YAMLError, YamlProblem):  # the pass reports a broken file; it cannot witness
        return None
    first = docs[0] if docs else None
    if not isinstance(first, dict) or first.get("kind") not in ROUTING_KINDS:
        return None
    meta = first.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return None
    annotations = meta.get("annotations")
    digest = annotations.get(HASH_KEY) if isinstance(annotations, dict) else None
    if not digest:
        return None
    parts = path.split("/")
    namespace = str(meta.get("namespace") or (parts[2] if len(parts) > 2 else ""))
    return RoutingExpectation(ObjectRef(str(first["kind"]), namespace, meta["name"]), str(digest))


# -- sync awareness ----------------------------------------------------------------------------


def _ago(delta: timedelta) -> str:
    seconds = max(0.0, delta.total_seconds())
    return f"{seconds / 60:.0f}m" if seconds >= 60 else f"{seconds:.0f}s"


def sync_status(
    tracker: SyncTracker,
    *,
    cluster: str,
    commit: str,
    merged_at: datetime,
    now: datetime,
    deadline: timedelta,
    routing: RoutingExpectation | None,
    witness: str,
) -> SyncStatus:
    """`SyncTracker.status` with the deadline of the rollout's own policy."""
    short = commit[:12]
    if not tracker.tracks(cluster, routing=routing):
        return SyncStatus(
            SyncState.UNTRACKED,
            merged_at,
            f"no sync status source for cluster {cluster}: using the merge time",
        )
    try:
        at = tracker.applied_at(cluster=cluster, commit=commit, routing=routing)
    except InventoryError as err:
        return SyncStatus(SyncState.UNKNOWN, None, f"cannot tell if {short} is applied: {err}")
    if at is not None:
        at = max(at, merged_at)
        return SyncStatus(SyncState.APPLIED, at, f"{short} applied to {cluster} at {at}")
    waited = now - merged_at
    if waited > deadline:
        return SyncStatus(
            SyncState.OVERDUE,
            None,
            f"commit {short} merged {_ago(waited)} ago is not applied to {cluster} yet "
            f"(deadline {_ago(deadline)}; per {witness}): check that the GitOps agent syncs "
            "this cluster",
        )
    return SyncStatus(
        SyncState.PENDING,
        None,
        f"waiting for {cluster} to apply {short}, merged {_ago(waited)} ago (per {witness})",
    )


@dataclass(frozen=True)
class SyncNote:
    """What a pass learnt about one rollout's last merged change."""

    path: str
    """The routing file (``clusters/<cluster>/<namespace>/<model>/rollout/routing.yaml``)."""
    commit: str
    merged_at: datetime
    status: SyncStatus

    @property
    def rollout(self) -> tuple[str, str, str]:
        """(cluster, namespace, model)."""
        parts = self.path.split("/")
        return parts[1], parts[2], parts[3]


class SyncHistory:
    """reconcile's `History` for one pass: step clocks start when changes are applied."""

    def __init__(
        self,
        workspace: Workspace,
        tracker: SyncTracker,
        *,
        now: datetime,
        deadlines: Mapping[str, timedelta],
        witnesses: Mapping[str, str],
        use_routing: bool,
    ) -> None:
        self._workspace, self._tracker = workspace, tracker
        self._now, self._deadlines = now, deadlines
        self._witnesses, self._use_routing = witnesses, use_routing
        self.notes: list[SyncNote] = []

    def merge_time(self, paths: Iterable[str]) -> dict[str, datetime]:
        git_dir = self._workspace.git_dir
        changes = last_changes(git_dir, f"refs/remotes/origin/{self._workspace.base}", paths)
        out: dict[str, datetime] = {}
        for path, (commit, merged_at) in sorted(changes.items()):
            cluster = path.split("/")[1]
            routing = None
            if self._use_routing:
                text = _show(git_dir, commit, path)
                routing = routing_expectation(text, path=path) if text is not None else None
            status = sync_status(
                self._tracker,
                cluster=cluster,
                commit=commit,
                merged_at=merged_at,
                now=self._now,
                deadline=self._deadlines.get(path, DEFAULT_DEADLINE),
                routing=routing,
                witness=self._witnesses.get(cluster, "the live routing object"),
            )
            self.notes.append(SyncNote(path, commit, merged_at, status))
            if status.applied_at is not None:
                out[path] = status.applied_at
        return out

    def merged_with_trailer(self, key: str, values: Iterable[str]) -> Mapping[str, Any]:
        return self._workspace.merged_with_trailer(key, values)


# -- the pass ----------------------------------------------------------------------------------


@dataclass
class DaemonReport:
    """A pass's report for the scheduler (`schedule.PassReport`), with what sync said."""

    report: reconcile.PassReport
    sync: list[SyncNote] = field(default_factory=list)

    @property
    def decisions(self) -> list[reconcile.Decision]:
        return self.report.decisions

    @property
    def prs_opened(self) -> int:
        """Pull requests the pass opened or pushed to, including those it merged at once
        (`reconcile.PassReport.prs_opened` counts only the ones left open)."""
        return len({d.pr for d in self.report.decisions if d.pr and d.outcome in _WROTE})

    @property
    def prs_merged(self) -> int:
        return len({d.pr for d in self.report.decisions if d.pr and d.outcome == "merged"})

    @property
    def errors(self) -> dict[str, list[str]]:
        return self.report.errors


_WAITING = (SyncState.PENDING, SyncState.OVERDUE, SyncState.UNKNOWN)
_WROTE = frozenset({"opened", "updated", "merged"})


class DaemonMetrics:
    """What the daemon adds to the scheduler's metrics (same registry): merges, and per-rollout
    gauges of changes merged but not applied."""

    def __init__(self, metrics: Metrics) -> None:
        self.merged = Counter(
            "gitops_rollout_pull_requests_merged",
            "Pull requests the bot merged itself (the policy allows it for that transition).",
            registry=metrics.registry,
        )
        self.overdue = Gauge(
            "gitops_rollout_sync_overdue",
            "1 while a rollout's merged change is not applied after its policy's deadline.",
            ["rollout"],
            registry=metrics.registry,
        )
        self.pending = Gauge(
            "gitops_rollout_sync_pending_seconds",
            "Seconds since a rollout's change merged without being applied (0 once applied).",
            ["rollout"],
            registry=metrics.registry,
        )
        self._shown: dict[tuple[str, ...], set[str]] = {}
        self._lock = threading.Lock()

    def record(self, names: Sequence[str], notes: Sequence[SyncNote], *, now: datetime) -> None:
        shown: set[str] = set()
        for note in notes:
            label = "/".join(note.rollout)
            shown.add(label)
            waiting = note.status.state in _WAITING
            self.overdue.labels(rollout=label).set(
                1 if note.status.state is SyncState.OVERDUE else 0
            )
            self.pending.labels(rollout=label).set(
                (now - note.merged_at).total_seconds() if waiting else 0
            )
        with self._lock:
            gone = self._shown.get(tuple(names), set()) - shown
            self._shown[tuple(names)] = shown
        for label in gone:
            for gauge in (self.overdue, self.pending):
                gauge.labels(rollout=label).set(0)


class Daemon:
    """`list_policies` and `run_pass` over one workspace, host, inventory and judge."""

    def __init__(
        self,
        *,
        workspace: Workspace,
        host: GitHost,
        inventory: reconcile.InventorySource,
        judge: reconcile.Judge,
        clusters: frozenset[str] | None = None,
        shards: ShardAssignment | None = None,
        live: LiveClusters | None = None,
        tracker: SyncTracker | None = None,
        witnesses: Mapping[str, str] | None = None,
        use_routing: bool = False,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._workspace, self._host = workspace, host
        self._inventory, self._judge = inventory, judge
        self._clusters, self._live = clusters, live
        self._shards = shards
        self._tracker, self._witnesses = tracker, dict(witnesses or {})
        self._use_routing = use_routing
        self._clock = clock
        self._metrics = DaemonMetrics(metrics) if metrics is not None else None
        self._lock = threading.Lock()
        """One pass (or policy listing) at a time: they share the workspace."""
        self._caches = repository.Caches()
        self._deadlines: dict[str, timedelta] = {}
        self._problems: dict[tuple[str, ...], set[str]] = {}

    def list_policies(self) -> schedule.PolicyListing:
        """Fetch main and read its policies: names, intervals, deadlines, clusters."""
        with self._lock:
            self._workspace.fetch()
            tree = self._workspace.tree()
            try:
                policies, paths = repository.load_policies(tree, self._caches)
                digest = hashlib.sha256()
                for path in sorted(paths):
                    digest.update(f"{path}\0{tree.blob_id(path)}\n".encode())
            finally:
                tree.close()
        self._log_problems(("policies",), [str(p) for p in policies.problems])
        intervals: dict[str, timedelta] = {}
        deadlines: dict[str, timedelta] = {}
        clusters: set[str] = set()
        for loaded in policies.policies:
            spec = loaded.policy.spec
            mine = [
                c.name for c in spec.clusters if self._clusters is None or c.name in self._clusters
            ]
            if not mine:
                continue
            analysis = spec.analysis
            intervals[loaded.policy.name] = analysis.interval if analysis else timedelta(0)
            if self._shards is not None and not self._shards.owns(loaded.policy.name):
                continue  # another replica's: the scheduler gives it no job, nothing to watch
            deadline = analysis.deadline if analysis and analysis.deadline else DEFAULT_DEADLINE
            for cluster in mine:
                clusters.add(cluster)
                deadlines[key_of(loaded, cluster).routing_path] = deadline
        self._deadlines = deadlines
        if self._live is not None:
            self._live.ensure(clusters)
        return schedule.PolicyListing(version=digest.hexdigest()[:16], intervals=intervals)

    def run_pass(self, names: list[str]) -> DaemonReport:
        """One crash-safe pass over the named policies (the scheduler's `run_pass`)."""
        label = ", ".join(names)
        log.info("pass started: %s", label)
        with self._lock:
            now = self._clock()
            history = (
                SyncHistory(
                    self._workspace,
                    self._tracker,
                    now=now,
                    deadlines=self._deadlines,
                    witnesses=self._witnesses,
                    use_routing=self._use_routing,
                )
                if self._tracker is not None
                else None
            )
            report = reconcile.run_once(
                workspace=self._workspace,
                host=self._host,
                options=reconcile.PassOptions(
                    now=now, policies=frozenset(names), clusters=self._clusters
                ),
                inventory=self._inventory,
                judge=self._judge,
                caches=self._caches,
                history=history,
            )
        notes = history.notes if history is not None else []
        self._explain_waits(report, notes)
        result = DaemonReport(report, notes)
        if self._metrics is not None:
            self._metrics.record(names, notes, now=now)
            if result.prs_merged:
                self._metrics.merged.inc(result.prs_merged)
        self._log_problems(tuple(names), [str(p) for p in report.problems])
        log.info(
            "pass finished: %s in %.2fs (%d decisions, %d PRs opened or updated, %d merged, "
            "%d errors)",
            label,
            report.duration_s,
            len(report.decisions),
            result.prs_opened,
            result.prs_merged,
            sum(len(m) for m in report.errors.values()),
        )
        return result

    @staticmethod
    def _explain_waits(report: reconcile.PassReport, notes: Sequence[SyncNote]) -> None:
        """Name unapplied changes on their rollouts' decisions, and warn about overdue ones."""
        for note in notes:
            state = note.status.state
            if state not in _WAITING:
                continue
            if state is SyncState.OVERDUE:
                log.warning("sync overdue: %s", note.status.message)
            else:
                log.info("sync: %s", note.status.message)
            for d in report.decisions:
                if (d.cluster, d.namespace, d.model) == note.rollout:
                    message = note.status.message
                    d.reason = f"{d.reason}; {message}" if d.reason else message

    def _log_problems(self, key: tuple[str, ...], problems: list[str]) -> None:
        """Input problems are logged when they change, not on every pass."""
        current = set(problems)
        if self._problems.get(key) == current:
            return
        self._problems[key] = current
        for problem in sorted(current):
            log.warning("%s", problem)


# -- putting it together -------------------------------------------------------------------------


def serve(
    config: DaemonConfig,
    *,
    stop: threading.Event | None = None,
    handle_signals: bool = True,
) -> bool:
    """Build everything once and run the scheduler until SIGTERM/SIGINT (or `stop`).

    True when it stopped cleanly; False when a pass was abandoned after the grace period (the
    caller should then exit the process at once). Raises RolloutError for a bad configuration.
    """
    config.check()
    settings = config.settings
    metrics = Metrics()
    # As composition.pass_context, but on the real clock: the host dates merges with it.
    host = make_host(
        settings.host.kind,
        HostConfig(
            remote=settings.git.remote,
            api_url=settings.host.url or None,
            repository=settings.host.repository or None,
        ),
    )
    workspace = Workspace.open(
        settings.git.remote,
        cache_dir=settings.git.cache_dir,
        base=settings.git.base,
        credentials=git_credentials(host, settings.git.remote),
        signing=signing_of(settings.git),
    )
    try:
        connect = connector(config)
        services: list[schedule.Service] = []
        gate: ShardLeases | None = None
        if config.leases:
            gate = ShardLeases(
                lease_client(config), shards=[config.shards.index], settings=config.lease
            )
            services.append(gate)
        live: LiveClusters | None = None
        inventory: reconcile.InventorySource
        if config.inventory_files:
            inventory = snapshot_source(config.inventory_files)
        else:
            live = LiveClusters(connect, sync_timeout=config.sync_timeout)
            services.append(live)
            inventory = live
        sources = sync_sources(config, connect)
        use_routing = live is not None and config.sync_from_routing
        tracker = (
            SyncTracker(
                is_ancestor=git_is_ancestor(workspace.git_dir),
                sources=sources,
                live=live if use_routing else None,
            )
            if sources or use_routing
            else None
        )
        for cluster, source in sorted(sources.items()):
            log.info(
                "cluster %s: step clocks start when %s applies them", cluster, source.description
            )
        daemon = Daemon(
            workspace=workspace,
            host=host,
            inventory=inventory,
            judge=make_judge(metrics_file=config.metrics_file, prometheus=config.prometheus),
            clusters=config.clusters,
            shards=config.shards,
            live=live,
            tracker=tracker,
            witnesses={c: s.description for c, s in sources.items()},
            use_routing=use_routing,
            metrics=metrics,
        )
        log.info(
            "gitops-rollout daemon: remote %s (%s host), shard %d of %d%s",
            workspace.remote,
            settings.host.kind,
            config.shards.index,
            config.shards.count,
            "" if config.leases else ", no leases",
        )
        return schedule.run(
            run_pass=daemon.run_pass,
            list_policies=daemon.list_policies,
            settings=config.schedule,
            shards=config.shards,
            gate=gate,
            services=services,
            metrics=metrics,
            stop=stop,
            handle_signals=handle_signals,
        )
    finally:
        workspace.close()
