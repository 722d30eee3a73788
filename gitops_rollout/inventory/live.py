"""Readiness of model objects read from live clusters with the `kubernetes` client.

`LiveInventory` keeps one cache per cluster, filled by list + watch threads (one per resource
and watch label, since a label selector cannot say "or"): each resumes from the last
resourceVersion, relists after 410 Gone, asks for bookmarks, and reconnects with capped
exponential backoff. `snapshot_statuses` lists once, for a single `reconcile` without the daemon.
Readiness comes from `readiness.status_of`, the rules a snapshot file uses too.

A cluster that cannot be read (connection refused, credentials rejected, RBAC denied) is named in
`unreachable()` with the reason and contributes no statuses, so its rollouts hold; what holding
means is reconcile's business. Nothing here writes to a cluster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from gitops_rollout.errors import InventoryError
from gitops_rollout.inventory.model import (
    ITER8_WATCH_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    WATCH_LABEL,
    Kind,
    ObjectRef,
    Status,
)
from gitops_rollout.inventory.readiness import status_of

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

VIRTUAL_SERVICE = "VirtualService"
WATCH_SELECTORS = (f"{WATCH_LABEL}=true", f"{ITER8_WATCH_LABEL}=true")
ROUTING_SELECTORS = (f"{MANAGED_BY_LABEL}={MANAGED_BY}",)
_MODEL_KINDS = frozenset({Kind.INFERENCE_SERVICE, Kind.SELDON_DEPLOYMENT, Kind.DEPLOYMENT})


def utcnow() -> datetime:
    return datetime.now(UTC)


class Verb(StrEnum):
    """RBAC verbs the reconciler uses on what it reads."""

    GET = "get"
    LIST = "list"
    WATCH = "watch"


@dataclass(frozen=True)
class Resource:
    """One API resource the inventory lists and watches."""

    kind: str
    group: str
    """API group; "" for the core group."""
    version: str
    plural: str
    selectors: tuple[str, ...]
    """Label selectors, each listed and watched on its own (one selector cannot say "or")."""

    @property
    def rbac_name(self) -> str:
        """How RBAC messages name it: ``deployments.apps``, ``services``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: tuple[Resource, ...] = (
    Resource(
        Kind.INFERENCE_SERVICE, "serving.kserve.io", "v1beta1", "inferenceservices", WATCH_SELECTORS
    ),
    Resource(
        Kind.SELDON_DEPLOYMENT,
        "machinelearning.seldon.io",
        "v1",
        "seldondeployments",
        WATCH_SELECTORS,
    ),
    Resource(Kind.DEPLOYMENT, "apps", "v1", "deployments", WATCH_SELECTORS),
    Resource(Kind.SERVICE, "", "v1", "services", WATCH_SELECTORS),
    Resource(VIRTUAL_SERVICE, "networking.istio.io", "v1", "virtualservices", ROUTING_SELECTORS),
)
"""What the reconciler reads: model kinds and Services by watch label, its own routing objects."""


class AccessDenied(InventoryError):
    """The API server refused a read (HTTP 403): RBAC is missing a verb on a resource."""

    def __init__(
        self, *, cluster: str, resource: Resource, namespace: str | None, verb: Verb, detail: str
    ) -> None:
        self.cluster, self.resource, self.namespace, self.verb = cluster, resource, namespace, verb
        where = f"namespace {namespace}" if namespace else "all namespaces (cluster scope)"
        group = repr(resource.group) + ("" if resource.group else " (core)")
        super().__init__(
            f"cluster {cluster}: access denied: cannot {verb} {resource.kind} "
            f"({resource.rbac_name}) in {where}: {detail} (fix: grant {verb} on "
            f"{resource.plural} in API group {group} to the reconciler's ServiceAccount, "
            "ClusterRole gitops-rollout-read)"
        )


class ClusterUnreachable(InventoryError):
    """The API server could not be reached or did not answer usefully; retried with backoff."""

    def __init__(self, *, cluster: str, detail: str) -> None:
        self.cluster = cluster
        super().__init__(f"cluster {cluster}: {detail}")


class _Gone(Exception):
    """The resourceVersion we watch from is too old (410): relist."""


class _Absent(Exception):
    """The API answers 404 for the resource: its CRD is not installed in this cluster."""


@dataclass(frozen=True)
class LiveSettings:
    """Timeouts and pacing of list and watch requests."""

    connect_timeout: float = 5.0
    """Seconds to open a connection; a cluster that takes longer is unreachable for this try."""
    read_timeout: float = 90.0
    """Seconds of silence after which a watch is presumed dead and reopened; longer than the
    API server's bookmark interval (about a minute), so a healthy idle watch never hits it."""
    watch_timeout: int = 300
    """Seconds the API server keeps one watch open (``timeoutSeconds``); we then resume it."""
    backoff_initial: float = 0.5
    """Seconds before the first retry after a failure; doubles per failure (with jitter)."""
    backoff_max: float = 30.0
    """Upper bound of the retry delay in seconds."""
    absent_recheck: float = 300.0
    """Seconds before listing again a resource whose API is not installed (404)."""


@dataclass(frozen=True)
class ClusterConnection:
    """How to reach one cluster: an API client, or the reason none could be built."""

    name: str
    api_client: Any | None
    problem: str = ""
    """Why there is no client (missing kubeconfig context, unreadable kubeconfig)."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to read; empty reads every namespace (needs the ClusterRole)."""

    @property
    def host(self) -> str:
        return str(getattr(getattr(self.api_client, "configuration", None), "host", "") or "")


def from_kubeconfig(
    clusters: Iterable[str],
    *,
    kubeconfig: str | Path | None = None,
    contexts: Mapping[str, str] | None = None,
    namespaces: Mapping[str, Sequence[str]] | None = None,
) -> list[ClusterConnection]:
    """One connection per cluster from kubeconfig contexts (named like the cluster by default).

    A cluster without a usable context gets a connection with a `problem` instead of raising,
    so one misconfigured cluster holds only its own rollouts.
    """
    contexts = contexts or {}
    namespaces = namespaces or {}
    config_file = str(kubeconfig) if kubeconfig is not None else None
    where = config_file or "the default kubeconfig (KUBECONFIG or ~/.kube/config)"
    try:
        known, _active = k8s_config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=config_file
        )
        available = {str(c.get("name")) for c in known or []}
    except (ConfigException, OSError) as err:
        available, load_problem = set(), f"cannot read {where}: {err}"
    else:
        load_problem = ""
    out = []
    for cluster in clusters:
        context = contexts.get(cluster, cluster)
        ns = tuple(namespaces.get(cluster, ()))
        if load_problem:
            out.append(ClusterConnection(cluster, None, load_problem, ns))
            continue
        if context not in available:
            out.append(
                ClusterConnection(
                    cluster,
                    None,
                    f"{where} has no context named {context!r} (fix: add one, or map the "
                    "cluster to an existing context)",
                    ns,
                )
            )
            continue
        try:
            api = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=config_file, context=context, persist_config=False
            )
        except (ConfigException, OSError, ValueError) as err:
            out.append(ClusterConnection(cluster, None, f"context {context!r}: {err}", ns))
            continue
        out.append(ClusterConnection(cluster, api, "", ns))
    return out


def in_cluster(cluster: str, *, namespaces: Sequence[str] = ()) -> ClusterConnection:
    """The cluster this pod runs in, through its ServiceAccount token."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    except ConfigException as err:
        return ClusterConnection(cluster, None, f"in-cluster credentials: {err}", tuple(namespaces))
    return ClusterConnection(cluster, k8s.ApiClient(configuration), "", tuple(namespaces))


@dataclass(frozen=True)
class LiveObject:
    """What the reconciler reads from one live object; no raw dicts leave this module."""

    ref: ObjectRef
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    resource_version: str
    status: Status | None
    """Readiness for model kinds (InferenceService, SeldonDeployment, Deployment); else None."""
    seen_at: datetime
    """When we first saw the current labels and annotations (an upper bound of their change)."""
    written_at: datetime | None = None
    """Newest ``managedFields`` time of a write to the object itself (not its status)."""

    @property
    def changed_by(self) -> datetime:
        """The earliest moment we can vouch the current labels and annotations were in place."""
        return min(self.seen_at, self.written_at) if self.written_at else self.seen_at


def _str_map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _written_at(meta: Mapping[str, Any]) -> datetime | None:
    times = [
        t
        for entry in meta.get("managedFields") or []
        if isinstance(entry, Mapping) and not entry.get("subresource")
        if (t := _parse_time(entry.get("time"))) is not None
    ]
    return max(times) if times else None


def live_object(
    obj: Mapping[str, Any], *, kind: str, now: datetime, previous: LiveObject | None = None
) -> LiveObject | None:
    """Parse one API object; keeps `previous.seen_at` when labels and annotations are unchanged."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        return None
    ref = ObjectRef(kind, str(meta.get("namespace") or ""), meta["name"])
    labels, annotations = _str_map(meta.get("labels")), _str_map(meta.get("annotations"))
    unchanged = (
        previous is not None and previous.labels == labels and previous.annotations == annotations
    )
    seen_at = previous.seen_at if unchanged and previous is not None else now
    with_kind = obj if obj.get("kind") == kind else {**obj, "kind": kind}
    return LiveObject(
        ref=ref,
        labels=labels,
        annotations=annotations,
        resource_version=str(meta.get("resourceVersion") or ""),
        status=status_of(with_kind) if kind in _MODEL_KINDS else None,
        seen_at=seen_at,
        written_at=_written_at(meta),
    )


def _short(err: BaseException) -> str:
    """The useful part of a urllib3/socket error (``Connection refused``), without URLs."""
    cause: BaseException = err
    reason = getattr(err, "reason", None)
    if isinstance(reason, BaseException):
        cause = reason
    text = str(cause)
    for marker in ("] ", "): "):
        if marker in text:
            text = text.rsplit(marker, 1)[-1]
    return text.strip(" ')\"") or type(cause).__name__


def _status_message(err: ApiException) -> str:
    try:
        body = json.loads(err.body or "")
    except ValueError:
        body = None
    if isinstance(body, Mapping) and body.get("message"):
        return str(body["message"])
    return f"HTTP {err.status} {err.reason or ''}".strip()


def _lines(resp: Any) -> Iterator[bytes]:
    """Newline-separated records of a streamed (chunked) response body."""
    pending = b""
    for chunk in resp.stream(amt=None, decode_content=True):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending


class _Stream:
    """List + watch of one resource with one label selector (in one namespace or all).

    Used without a thread by `snapshot_statuses` (`list_once`) and with one by `LiveInventory`
    (`run`). The store is replaced whole on every list and patched by watch events.
    """

    def __init__(
        self,
        connection: ClusterConnection,
        resource: Resource,
        *,
        selector: str,
        namespace: str | None,
        settings: LiveSettings,
        clock: Clock,
        stop: threading.Event,
    ) -> None:
        self.connection, self.resource = connection, resource
        self.selector, self.namespace = selector, namespace
        self.settings, self.clock, self.stop = settings, clock, stop
        self.lock = threading.Lock()
        self.store: dict[ObjectRef, LiveObject] = {}
        self.resource_version: str | None = None
        self.synced = False
        self.error: InventoryError | None = None
        self.absent = False
        self._response: Any = None

    @property
    def cluster(self) -> str:
        return self.connection.name

    # -- requests --------------------------------------------------------------------------

    def _call(self, verb: Verb, **params: Any) -> Any:
        """Issue a list (or watch, with ``watch=True``) request; returns the raw response."""
        res, api, ns = self.resource, self.connection.api_client, self.namespace
        params.update(
            label_selector=self.selector,
            _preload_content=False,
            _request_timeout=(self.settings.connect_timeout, self.settings.read_timeout),
        )
        try:
            if res.group == "" and res.plural == "services":
                core = k8s.CoreV1Api(api)
                return (
                    core.list_namespaced_service(ns, **params)
                    if ns
                    else core.list_service_for_all_namespaces(**params)
                )
            if res.group == "apps" and res.plural == "deployments":
                apps = k8s.AppsV1Api(api)
                return (
                    apps.list_namespaced_deployment(ns, **params)
                    if ns
                    else apps.list_deployment_for_all_namespaces(**params)
                )
            custom = k8s.CustomObjectsApi(api)
            if ns:
                return custom.list_namespaced_custom_object(
                    res.group, res.version, ns, res.plural, **params
                )
            return custom.list_cluster_custom_object(res.group, res.version, res.plural, **params)
        except ApiException as err:
            raise self._api_error(err, verb) from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise ClusterUnreachable(
                cluster=self.cluster,
                detail=f"cannot reach the API server {self.connection.host}: {_short(err)}",
            ) from err

    def _api_error(self, err: ApiException, verb: Verb) -> Exception:
        detail = _status_message(err)
        if err.status == 403:
            return AccessDenied(
                cluster=self.cluster,
                resource=self.resource,
                namespace=self.namespace,
                verb=verb,
                detail=detail,
            )
        if err.status == 404:
            return _Absent(detail)
        if err.status == 410:
            return _Gone(detail)
        if err.status == 401:
            return ClusterUnreachable(
                cluster=self.cluster,
                detail=f"the API server {self.connection.host} rejected the credentials "
                f"(401): {detail} (fix: renew the token in the kubeconfig or ServiceAccount)",
            )
        return ClusterUnreachable(
            cluster=self.cluster,
            detail=f"{verb} {self.resource.rbac_name} failed: {detail}",
        )

    # -- list ------------------------------------------------------------------------------

    def list_once(self) -> None:
        """Replace the store with a fresh list; raises InventoryError (404 leaves it empty)."""
        if self.connection.api_client is None:
            raise ClusterUnreachable(cluster=self.cluster, detail=self.connection.problem)
        try:
            resp = self._call(Verb.LIST)
        except _Gone as err:  # only with continue tokens, which we do not send
            raise ClusterUnreachable(
                cluster=self.cluster, detail=f"list {self.resource.rbac_name}: {err}"
            ) from err
        except _Absent:
            with self.lock:
                self.store, self.resource_version = {}, None
                self.synced, self.absent, self.error = True, True, None
            return
        try:
            body = json.loads(resp.data)
        except ValueError as err:
            raise ClusterUnreachable(
                cluster=self.cluster, detail=f"list {self.resource.rbac_name}: invalid JSON"
            ) from err
        finally:
            resp.release_conn()
        now = self.clock()
        with self.lock:
            previous = self.store
            store = {}
            for item in body.get("items") or []:
                if not isinstance(item, Mapping):
                    continue
                key = self._ref_of(item)
                obj = live_object(
                    item,
                    kind=self.resource.kind,
                    now=now,
                    previous=previous.get(key) if key else None,
                )
                if obj is not None:
                    store[obj.ref] = obj
            self.store = store
            self.resource_version = str((body.get("metadata") or {}).get("resourceVersion") or "")
            self.synced, self.absent, self.error = True, False, None

    def _ref_of(self, obj: Mapping[str, Any]) -> ObjectRef | None:
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str):
            return None
        return ObjectRef(self.resource.kind, str(meta.get("namespace") or ""), name)

    # -- watch -----------------------------------------------------------------------------

    def _watch(self) -> None:
        """Follow one watch request until the server ends it; raises _Gone / InventoryError."""
        resp = self._call(
            Verb.WATCH,
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=self.resource_version or None,
            timeout_seconds=self.settings.watch_timeout,
        )
        with self.lock:
            self._response, self.error = resp, None
        try:
            if self.stop.is_set():  # stopped while connecting: `interrupt` saw no response
                return
            for line in _lines(resp):
                if self.stop.is_set():
                    return
                try:
                    event = json.loads(line)
                except ValueError:
                    log.warning("cluster %s: skipped a malformed watch line", self.cluster)
                    continue
                if isinstance(event, Mapping):
                    self._apply(event)
        except (urllib3.exceptions.HTTPError, OSError) as err:
            # A dropped or silent stream is routine (restarts, idle timeouts): resume from the
            # last resourceVersion; if the server is really gone, reconnecting will say so.
            log.debug("cluster %s: watch %s ended: %s", self.cluster, self.resource.plural, err)
        finally:
            with self.lock:
                self._response = None
            resp.release_conn()

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, Mapping):
            return
        if kind == "ERROR":
            code = obj.get("code")
            message = str(obj.get("message") or obj.get("reason") or "")
            if code == 410:
                raise _Gone(message)
            if code == 403:
                raise AccessDenied(
                    cluster=self.cluster,
                    resource=self.resource,
                    namespace=self.namespace,
                    verb=Verb.WATCH,
                    detail=message,
                )
            raise ClusterUnreachable(
                cluster=self.cluster,
                detail=f"watch {self.resource.rbac_name} failed ({code}): {message}",
            )
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        with self.lock:
            if kind in ("ADDED", "MODIFIED"):
                key = self._ref_of(obj)
                parsed = live_object(
                    obj,
                    kind=self.resource.kind,
                    now=self.clock(),
                    previous=self.store.get(key) if key else None,
                )
                if parsed is not None:
                    self.store[parsed.ref] = parsed
            elif kind == "DELETED":
                key = self._ref_of(obj)
                if key is not None:
                    self.store.pop(key, None)
            if rv:
                self.resource_version = rv

    def interrupt(self) -> None:
        """Unblock a thread waiting on the watch socket (used on stop)."""
        with self.lock:
            resp = self._response
        if resp is not None:
            with contextlib.suppress(OSError, AttributeError):
                resp.shutdown()

    # -- thread ----------------------------------------------------------------------------

    def run(self) -> None:
        """List, then watch from the list's resourceVersion until stopped."""
        delay = self.settings.backoff_initial
        must_list = True
        while not self.stop.is_set():
            try:
                if must_list:
                    self.list_once()
                    must_list = False
                    if self.absent:
                        self.stop.wait(self.settings.absent_recheck)
                        must_list = True
                        continue
                started = time.monotonic()
                self._watch()
                delay = self.settings.backoff_initial
                if time.monotonic() - started < 1.0:
                    # A server that ends watches at once must not be hammered.
                    self.stop.wait(self.settings.backoff_initial)
            except _Gone:
                log.info(
                    "cluster %s: %s watch expired (410), relisting",
                    self.cluster,
                    self.resource.plural,
                )
                must_list = True
            except _Absent:
                must_list = True
            except InventoryError as err:
                with self.lock:
                    first = self.error is None
                    self.error = err
                if first:
                    log.warning("%s; retrying with backoff", err)
                self.stop.wait(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
                delay = min(delay * 2, self.settings.backoff_max)


@dataclass
class _ClusterState:
    connection: ClusterConnection
    streams: list[_Stream] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def problem(self) -> InventoryError | None:
        if self.connection.api_client is None:
            return ClusterUnreachable(cluster=self.connection.name, detail=self.connection.problem)
        for stream in self.streams:
            with stream.lock:
                if stream.error is not None:
                    return stream.error
        return None

    def synced(self) -> bool:
        return all(s.synced for s in self.streams)

    def objects(self) -> dict[ObjectRef, LiveObject]:
        merged: dict[ObjectRef, LiveObject] = {}
        for stream in self.streams:
            with stream.lock:
                merged.update(stream.store)
        return merged


def _streams(
    connection: ClusterConnection,
    resources: Sequence[Resource],
    *,
    settings: LiveSettings,
    clock: Clock,
    stop: threading.Event,
) -> list[_Stream]:
    namespaces: Sequence[str | None] = connection.namespaces or (None,)
    return [
        _Stream(
            connection,
            resource,
            selector=selector,
            namespace=namespace,
            settings=settings,
            clock=clock,
            stop=stop,
        )
        for resource in resources
        for selector in resource.selectors
        for namespace in namespaces
    ]


def _statuses(
    cluster: str, objects: Mapping[ObjectRef, LiveObject]
) -> dict[tuple[str, ObjectRef], Status]:
    return {(cluster, ref): o.status for ref, o in objects.items() if o.status is not None}


class LiveInventory:
    """Per-cluster caches of watched objects, kept current by list + watch threads.

    Use as a context manager (or `start`/`stop`). Readers are thread-safe and never block on
    the network: they return what the caches hold now.
    """

    def __init__(
        self,
        connections: Sequence[ClusterConnection],
        *,
        resources: Sequence[Resource] = RESOURCES,
        settings: LiveSettings | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self._stop = threading.Event()
        self._settings = settings or LiveSettings()
        self._clusters = {
            c.name: _ClusterState(
                c,
                _streams(c, resources, settings=self._settings, clock=clock, stop=self._stop)
                if c.api_client is not None
                else [],
            )
            for c in connections
        }

    def start(self) -> None:
        """Start one list + watch thread per cluster, resource, selector and namespace."""
        for name, state in self._clusters.items():
            for stream in state.streams:
                thread = threading.Thread(
                    target=stream.run,
                    name=f"watch-{name}-{stream.resource.plural}",
                    daemon=True,
                )
                state.threads.append(thread)
                thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every watch thread, waiting up to `timeout` seconds in total."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for state in self._clusters.values():
            for stream in state.streams:
                stream.interrupt()
        for state in self._clusters.values():
            for thread in state.threads:
                thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> LiveInventory:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def wait_synced(self, timeout: float) -> bool:
        """Wait until every reachable cluster finished its first lists (or `timeout` seconds).

        Returns True when every cluster is either synced or known to be failing.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s.synced() or s.problem() for s in self._clusters.values()):
                return True
            time.sleep(0.02)
        return False

    def unreachable(self) -> dict[str, str]:
        """Clusters whose live state cannot be trusted now, with the reason; their rollouts hold."""
        out = {}
        for name, state in self._clusters.items():
            problem = state.problem()
            if problem is not None:
                out[name] = str(problem)
            elif not state.synced():
                out[name] = f"cluster {name}: first list of its objects not finished yet"
        return out

    def errors(self) -> dict[str, InventoryError]:
        """The current error of each failing cluster (`AccessDenied`, `ClusterUnreachable`)."""
        return {
            name: problem
            for name, state in self._clusters.items()
            if (problem := state.problem()) is not None
        }

    def statuses(self) -> dict[tuple[str, ObjectRef], Status]:
        """Readiness of every watched model object, keyed like `manifests.with_status` wants.

        Clusters listed by `unreachable()` contribute nothing (their objects read as Unknown).
        """
        held = self.unreachable()
        out: dict[tuple[str, ObjectRef], Status] = {}
        for name, state in self._clusters.items():
            if name not in held:
                out.update(_statuses(name, state.objects()))
        return out

    def objects(self, cluster: str) -> list[LiveObject]:
        """Every cached object of a cluster (model kinds, Services, routing objects)."""
        state = self._clusters.get(cluster)
        return sorted(state.objects().values(), key=lambda o: o.ref) if state else []

    def object(self, cluster: str, ref: ObjectRef) -> LiveObject | None:
        """One cached object, or None when it is not (or not yet) seen."""
        state = self._clusters.get(cluster)
        return state.objects().get(ref) if state else None


@dataclass
class LiveSnapshot:
    """The result of listing every cluster once."""

    statuses: dict[tuple[str, ObjectRef], Status] = field(default_factory=dict)
    objects: dict[tuple[str, ObjectRef], LiveObject] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)
    """Clusters that could not be read, with the reason; their rollouts hold."""
    errors: dict[str, InventoryError] = field(default_factory=dict)

    def object(self, cluster: str, ref: ObjectRef) -> LiveObject | None:
        return self.objects.get((cluster, ref))


def read_cluster(
    connection: ClusterConnection,
    *,
    resources: Sequence[Resource] = RESOURCES,
    settings: LiveSettings | None = None,
    clock: Clock = utcnow,
) -> dict[ObjectRef, LiveObject]:
    """List every watched object of one cluster; raises `AccessDenied` or `ClusterUnreachable`."""
    if connection.api_client is None:
        raise ClusterUnreachable(cluster=connection.name, detail=connection.problem)
    streams = _streams(
        connection,
        resources,
        settings=settings or LiveSettings(),
        clock=clock,
        stop=threading.Event(),
    )
    merged: dict[ObjectRef, LiveObject] = {}
    for stream in streams:
        stream.list_once()
        merged.update(stream.store)
    return merged


def snapshot_statuses(
    connections: Sequence[ClusterConnection],
    *,
    resources: Sequence[Resource] = RESOURCES,
    settings: LiveSettings | None = None,
    clock: Clock = utcnow,
) -> LiveSnapshot:
    """List every cluster once (in parallel); a failing cluster is reported, never raised."""
    snapshot = LiveSnapshot()
    if not connections:
        return snapshot

    def one(connection: ClusterConnection) -> dict[ObjectRef, LiveObject] | InventoryError:
        try:
            return read_cluster(connection, resources=resources, settings=settings, clock=clock)
        except InventoryError as err:
            return err

    with ThreadPoolExecutor(max_workers=min(8, len(connections))) as pool:
        results = list(pool.map(one, connections))
    for connection, result in zip(connections, results, strict=True):
        if isinstance(result, InventoryError):
            snapshot.unreachable[connection.name] = str(result)
            snapshot.errors[connection.name] = result
            continue
        snapshot.statuses.update(_statuses(connection.name, result))
        snapshot.objects.update({(connection.name, ref): o for ref, o in result.items()})
    return snapshot


def read_object(
    connection: ClusterConnection,
    resource: Resource,
    *,
    namespace: str,
    name: str,
    settings: LiveSettings | None = None,
) -> dict[str, Any] | None:
    """GET one namespaced custom object as a dict (for adapters that parse it at once).

    None when it does not exist; raises `AccessDenied` or `ClusterUnreachable`.
    """
    settings = settings or LiveSettings()
    if connection.api_client is None:
        raise ClusterUnreachable(cluster=connection.name, detail=connection.problem)
    api = k8s.CustomObjectsApi(connection.api_client)
    try:
        resp: Any = api.get_namespaced_custom_object(
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            name,
            _preload_content=False,
            _request_timeout=(settings.connect_timeout, settings.read_timeout),
        )
    except ApiException as err:
        if err.status == 404:
            return None
        if err.status == 403:
            raise AccessDenied(
                cluster=connection.name,
                resource=resource,
                namespace=namespace,
                verb=Verb.GET,
                detail=_status_message(err),
            ) from err
        raise ClusterUnreachable(
            cluster=connection.name,
            detail=f"get {resource.rbac_name} {namespace}/{name} failed: {_status_message(err)}",
        ) from err
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise ClusterUnreachable(
            cluster=connection.name,
            detail=f"cannot reach the API server {connection.host}: {_short(err)}",
        ) from err
    try:
        body = json.loads(resp.data)
    except ValueError as err:
        raise ClusterUnreachable(
            cluster=connection.name, detail=f"get {resource.rbac_name}: invalid JSON"
        ) from err
    finally:
        resp.release_conn()
    return body if isinstance(body, dict) else None
