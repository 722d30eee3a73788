"""Sync awareness: when did a merged change actually reach a cluster?

A step's clock starts when its change is applied, not when its pull request merged. Witnesses,
each parsed here into `Applied` (a commit and a time at or after the apply): Argo CD's
``Application`` (history, a succeeded operation, a Synced revision), Flux's ``Kustomization``
(``lastAppliedRevision`` at the Ready transition, history), and the live routing object whose
content-hash annotation equals its Git file's. The earliest such time wins, so a step never
starts early. Whether a revision contains a commit is Git's question: the caller passes
`is_ancestor`. What to do while a change is pending or overdue is reconcile's call.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from gitops_rollout.errors import InventoryError
from gitops_rollout.inventory.live import (
    ClusterConnection,
    LiveObject,
    LiveSettings,
    Resource,
    read_object,
)
from gitops_rollout.inventory.model import ObjectRef
from gitops_rollout.state import HASH_KEY

log = logging.getLogger(__name__)

APPLICATION = Resource("Application", "argoproj.io", "v1alpha1", "applications", ())
KUSTOMIZATION = Resource("Kustomization", "kustomize.toolkit.fluxcd.io", "v1", "kustomizations", ())
APP_NAME = "clusters-{cluster}"
"""Name of the Argo CD Application / Flux Kustomization of a cluster (see deploy/)."""

_SHA = re.compile(r"^[0-9a-f]{7,64}$")

IsAncestor = Callable[[str, str], bool]
"""``is_ancestor(commit, revision)``: True when `commit` is `revision` or one of its ancestors."""


@dataclass(frozen=True)
class Applied:
    """A revision a GitOps agent reports applied to a cluster, and when (at the latest)."""

    revision: str
    at: datetime


def commit_of(revision: object) -> str | None:
    """The commit sha in a revision string: ``main@sha1:<sha>``, ``sha1:<sha>`` or ``<sha>``."""
    if not isinstance(revision, str):
        return None
    text = revision.rsplit("@", 1)[-1]
    text = text.split(":", 1)[1] if ":" in text else text
    text = text.strip().lower()
    return text if _SHA.match(text) else None


def _time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


def _applied(revisions: Iterable[object], at: object) -> list[Applied]:
    when = _time(at)
    if when is None:
        return []
    return [Applied(sha, when) for r in revisions if (sha := commit_of(r))]


def _revisions(entry: Mapping[str, Any]) -> list[object]:
    """``revision`` or, for multi-source Applications, every one of ``revisions``."""
    many = entry.get("revisions")
    return [entry.get("revision"), *(many if isinstance(many, list) else [])]


def argocd_applied(app: Mapping[str, Any]) -> list[Applied]:
    """What an Argo CD Application says it applied (argoproj.io/v1alpha1)."""
    status = app.get("status")
    if not isinstance(status, Mapping):
        return []
    out: list[Applied] = []
    for entry in status.get("history") or []:
        if isinstance(entry, Mapping):
            out += _applied(_revisions(entry), entry.get("deployedAt"))
    operation = status.get("operationState")
    if isinstance(operation, Mapping) and operation.get("phase") == "Succeeded":
        result = operation.get("syncResult")
        if isinstance(result, Mapping):
            out += _applied(_revisions(result), operation.get("finishedAt"))
    sync = status.get("sync")
    if isinstance(sync, Mapping) and sync.get("status") == "Synced":
        # Synced without an operation (nothing to change here): live state matched the
        # revision when Argo CD last compared.
        out += _applied(_revisions(sync), status.get("reconciledAt"))
    return out


def flux_applied(kustomization: Mapping[str, Any]) -> list[Applied]:
    """What a Flux Kustomization says it applied (kustomize.toolkit.fluxcd.io/v1)."""
    status = kustomization.get("status")
    if not isinstance(status, Mapping):
        return []
    out: list[Applied] = []
    ready = next(
        (
            c
            for c in status.get("conditions") or []
            if isinstance(c, Mapping) and c.get("type") == "Ready"
        ),
        None,
    )
    if ready is not None:
        # Flux turns Ready to Unknown when it starts on a new revision and back when done, so
        # the transition time is at or after the apply of lastAppliedRevision.
        out += _applied([status.get("lastAppliedRevision")], ready.get("lastTransitionTime"))
    for entry in status.get("history") or []:
        if not isinstance(entry, Mapping):
            continue
        meta = entry.get("metadata")
        if entry.get("lastReconciledStatus") in (None, "ReconciliationSucceeded") and isinstance(
            meta, Mapping
        ):
            out += _applied([meta.get("revision")], entry.get("firstReconciled"))
    return out


def applied_at(
    applied: Iterable[Applied], *, commit: str, is_ancestor: IsAncestor
) -> datetime | None:
    """The earliest time a revision containing `commit` was reported applied; None if never."""
    sha = commit.lower()
    times = [
        a.at
        for a in applied
        if a.revision == sha
        or a.revision.startswith(sha)
        or sha.startswith(a.revision)
        or is_ancestor(sha, a.revision)
    ]
    return min(times) if times else None


class SyncSource(Protocol):
    """A GitOps agent's report for one cluster."""

    @property
    def description(self) -> str:
        """What is read, for messages (``Argo CD Application argocd/clusters-prod``)."""
        ...

    def applied(self) -> Sequence[Applied]:
        """Revisions reported applied, with times; raises InventoryError when unreadable."""
        ...


class ArgoCDApplication:
    """The Argo CD Application that syncs one cluster (read from where Argo CD runs)."""

    def __init__(
        self,
        connection: ClusterConnection,
        *,
        name: str,
        namespace: str = "argocd",
        settings: LiveSettings | None = None,
    ) -> None:
        self.connection, self.name, self.namespace, self.settings = (
            connection,
            name,
            namespace,
            settings,
        )

    @property
    def description(self) -> str:
        return f"Argo CD Application {self.namespace}/{self.name}"

    def applied(self) -> Sequence[Applied]:
        obj = read_object(
            self.connection,
            APPLICATION,
            namespace=self.namespace,
            name=self.name,
            settings=self.settings,
        )
        if obj is None:
            raise InventoryError(
                f"{self.description} not found in cluster {self.connection.name} (fix: check "
                "the ApplicationSet, or the Application name the reconciler is given)"
            )
        return argocd_applied(obj)


class FluxKustomization:
    """The Flux Kustomization that syncs one cluster."""

    def __init__(
        self,
        connection: ClusterConnection,
        *,
        name: str,
        namespace: str = "flux-system",
        settings: LiveSettings | None = None,
    ) -> None:
        self.connection, self.name, self.namespace, self.settings = (
            connection,
            name,
            namespace,
            settings,
        )

    @property
    def description(self) -> str:
        return f"Flux Kustomization {self.namespace}/{self.name}"

    def applied(self) -> Sequence[Applied]:
        obj = read_object(
            self.connection,
            KUSTOMIZATION,
            namespace=self.namespace,
            name=self.name,
            settings=self.settings,
        )
        if obj is None:
            raise InventoryError(
                f"{self.description} not found in cluster {self.connection.name} (fix: check "
                "deploy/flux, or the Kustomization name the reconciler is given)"
            )
        return flux_applied(obj)


class LiveObjects(Protocol):
    """Where live routing objects are read from (`LiveInventory`, `LiveSnapshot`)."""

    def object(self, cluster: str, ref: ObjectRef) -> LiveObject | None: ...


@dataclass(frozen=True)
class RoutingExpectation:
    """The routing object a change writes, and the content hash its Git file carries."""

    ref: ObjectRef
    content_hash: str


class SyncState(StrEnum):
    APPLIED = "Applied"
    PENDING = "Pending"
    """Merged, not applied yet, within the deadline: the rollout waits."""
    OVERDUE = "Overdue"
    """Merged longer than the deadline ago and still not applied: the rollout waits, loudly."""
    UNKNOWN = "Unknown"
    """The witness could not be read: the rollout waits."""
    UNTRACKED = "Untracked"
    """No witness is configured for the cluster: use the merge time (DESIGN.md's fallback)."""


@dataclass(frozen=True)
class SyncStatus:
    state: SyncState
    applied_at: datetime | None = None
    message: str = ""


class SyncTracker:
    """Answers "is commit X applied to cluster C, and since when?" from every witness.

    The earliest time seen for a (cluster, commit) is remembered, so the answer does not move
    later when Argo CD trims its history or a later sync happens. Thread-safe.
    """

    def __init__(
        self,
        *,
        is_ancestor: IsAncestor,
        sources: Mapping[str, SyncSource] | None = None,
        live: LiveObjects | None = None,
        deadline: timedelta = timedelta(minutes=10),
    ) -> None:
        self._is_ancestor = is_ancestor
        self._sources = dict(sources or {})
        self._live = live
        self.deadline = deadline
        self._known: dict[tuple[str, str], datetime] = {}
        self._lock = threading.Lock()

    def applied_at(
        self, *, cluster: str, commit: str, routing: RoutingExpectation | None = None
    ) -> datetime | None:
        """When `commit` took effect in `cluster`; None while not applied.

        Raises InventoryError when the cluster's agent cannot be read and the routing object
        does not settle the question.
        """
        times: list[datetime] = []
        with self._lock:
            if (known := self._known.get((cluster, commit))) is not None:
                times.append(known)
        if routing is not None and self._live is not None:
            obj = self._live.object(cluster, routing.ref)
            if obj is not None and obj.annotations.get(HASH_KEY) == routing.content_hash:
                times.append(obj.changed_by)
        failure: InventoryError | None = None
        source = self._sources.get(cluster)
        if source is not None:
            try:
                reported = applied_at(
                    source.applied(), commit=commit, is_ancestor=self._is_ancestor
                )
            except InventoryError as err:
                failure = err
            else:
                if reported is not None:
                    times.append(reported)
        if not times:
            if failure is not None:
                raise failure
            return None
        earliest = min(times)
        with self._lock:
            self._known[(cluster, commit)] = earliest
        return earliest

    def tracks(self, cluster: str, *, routing: RoutingExpectation | None = None) -> bool:
        """Whether anything can witness an apply in `cluster`."""
        return cluster in self._sources or (routing is not None and self._live is not None)

    def status(
        self,
        *,
        cluster: str,
        commit: str,
        merged_at: datetime,
        now: datetime,
        routing: RoutingExpectation | None = None,
    ) -> SyncStatus:
        """`applied_at` plus the verdict a pass acts on (wait, wait and warn, or go)."""
        short = commit[:12]
        if not self.tracks(cluster, routing=routing):
            return SyncStatus(
                SyncState.UNTRACKED,
                merged_at,
                f"no sync status source for cluster {cluster}: using the merge time",
            )
        try:
            at = self.applied_at(cluster=cluster, commit=commit, routing=routing)
        except InventoryError as err:
            return SyncStatus(SyncState.UNKNOWN, None, f"cannot tell if {short} is applied: {err}")
        if at is not None:
            return SyncStatus(SyncState.APPLIED, at, f"{short} applied to {cluster} at {at}")
        waited = now - merged_at
        source = self._sources.get(cluster)
        witness = source.description if source is not None else "the live routing object"
        if waited > self.deadline:
            return SyncStatus(
                SyncState.OVERDUE,
                None,
                f"commit {short} merged {_minutes(waited)} ago is not applied to {cluster} yet "
                f"(deadline {_minutes(self.deadline)}; per {witness}): check that the GitOps "
                "agent syncs this cluster",
            )
        return SyncStatus(
            SyncState.PENDING, None, f"waiting for {cluster} to apply {short} (per {witness})"
        )


def _minutes(delta: timedelta) -> str:
    minutes = delta.total_seconds() / 60
    return f"{minutes:.0f}m" if minutes >= 1 else f"{delta.total_seconds():.0f}s"
