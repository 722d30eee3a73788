"""Scale-out: each replica owns a shard of the policies, guarded by a Kubernetes Lease.

A policy belongs to shard ``sha256(name) mod count``; a replica learns its shard from
``GITOPS_ROLLOUT_SHARD`` / ``GITOPS_ROLLOUT_SHARDS`` or, like Argo CD's application controller,
from its StatefulSet pod ordinal. It acts on the shard only while it holds the Lease
``gitops-rollout-shard-<n>``, so two replicas (say, a partitioned old pod and its replacement)
never write the same rollout. The protocol is client-go's leader election: take a free or
expired Lease (expiry judged on our own monotonic clock, immune to node clock skew), renew it,
stop acting once the renew deadline passes, and treat 409 Conflict as a lost race.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from gitops_rollout.errors import RolloutError

log = logging.getLogger(__name__)

SHARD_ENV = "GITOPS_ROLLOUT_SHARD"
"""This replica's shard index (0-based); overrides the pod name ordinal."""
SHARDS_ENV = "GITOPS_ROLLOUT_SHARDS"
"""How many shards (replicas) there are; default 1 (one replica owns every policy)."""
POD_NAME_ENV = "POD_NAME"
"""The pod name (downward API); falls back to HOSTNAME, which a StatefulSet sets to it."""

_ORDINAL = re.compile(r"^(?P<set>.+)-(?P<ordinal>\d+)$")
_GROUP, _VERSION, _PLURAL = "coordination.k8s.io", "v1", "leases"


class ShardingError(RolloutError):
    """The shard configuration is invalid (bad environment); fix the deployment."""

    exit_code = 1


def shard_of(policy: str, shards: int) -> int:
    """The shard a policy belongs to: a stable hash, the same on every replica and release."""
    digest = hashlib.sha256(policy.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


@dataclass(frozen=True)
class ShardAssignment:
    """Which shard this replica owns, out of how many."""

    index: int
    count: int

    def owns(self, policy: str) -> bool:
        return shard_of(policy, self.count) == self.index

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, hostname: str | None = None
    ) -> ShardAssignment:
        """Read ``GITOPS_ROLLOUT_SHARD(S)``, else the pod name ordinal; raises ShardingError."""
        env = os.environ if env is None else env
        count = _int_env(env, SHARDS_ENV, default=1)
        if count < 1:
            raise ShardingError(f"{SHARDS_ENV}={count}: must be at least 1")
        if env.get(SHARD_ENV, "").strip():
            index = _int_env(env, SHARD_ENV, default=0)
            source = f"{SHARD_ENV}={index}"
        elif count == 1:
            return cls(0, 1)
        else:
            pod = env.get(POD_NAME_ENV) or env.get("HOSTNAME") or hostname or socket.gethostname()
            match = _ORDINAL.match(pod)
            if match is None:
                raise ShardingError(
                    f"{SHARDS_ENV}={count} but the shard index is unknown: set {SHARD_ENV}, "
                    f"or run as a StatefulSet pod named <name>-<ordinal> (pod name {pod!r})"
                )
            index = int(match.group("ordinal"))
            source = f"pod {pod}"
        if not 0 <= index < count:
            raise ShardingError(
                f"shard index {index} (from {source}) is outside 0..{count - 1}: set "
                f"{SHARDS_ENV} to the StatefulSet's replica count"
            )
        return cls(index, count)


def _int_env(env: Mapping[str, str], name: str, *, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ShardingError(f"{name}={text!r}: must be an integer") from None


def identity(env: Mapping[str, str] | None = None) -> str:
    """This process's holder identity: pod name plus a random suffix (a restart is a new holder)."""
    env = os.environ if env is None else env
    pod = env.get(POD_NAME_ENV) or env.get("HOSTNAME") or socket.gethostname()
    return f"{pod}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LeaseSettings:
    """Where the Leases live and how long a claim lasts."""

    namespace: str = "gitops-system"
    """Namespace of the Leases: the reconciler's own (its Role grants access there only)."""
    name_prefix: str = "gitops-rollout-shard-"
    lease_duration: float = 15.0
    """Seconds without renewal after which another replica may take the shard over."""
    renew_deadline: float = 10.0
    """Seconds after the last successful renewal at which we stop acting on the shard; shorter
    than `lease_duration`, so we stop before anyone else may start."""
    retry_period: float = 2.0
    """Seconds between acquire/renew attempts."""
    request_timeout: float = 5.0
    """Seconds per API request; shorter than `renew_deadline`."""

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ShardingError(
                "lease timing must satisfy 0 < retry_period < renew_deadline < lease_duration "
                f"(got {self.retry_period}, {self.renew_deadline}, {self.lease_duration})"
            )


def _micro_time(value: datetime) -> str:
    # The API server parses MicroTime with exactly six fractional digits; the client's model
    # serialiser drops them when they are zero, so Leases are sent as plain dicts.
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class _Record:
    holder: str
    duration: float
    renew_time: str
    resource_version: str
    transitions: int
    acquire_time: str


class _LeaseFailed(Exception):
    """A Lease request failed for a reason other than a lost race."""


class ShardLease:
    """The Lease of one shard, as seen and claimed by this replica. Not thread-safe."""

    def __init__(
        self,
        api_client: Any,
        *,
        shard: int,
        holder: str,
        settings: LeaseSettings | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._api = k8s.CustomObjectsApi(api_client)
        self.shard, self.holder = shard, holder
        self.settings = settings or LeaseSettings()
        self.name = f"{self.settings.name_prefix}{shard}"
        self._monotonic, self._clock = monotonic, clock
        self._renewed_at: float | None = None
        """Monotonic time at which our last successful write was *sent* (conservative)."""
        self._observed: _Record | None = None
        self._observed_at = 0.0

    def holds(self) -> bool:
        """True while our last successful acquire/renew is younger than the renew deadline."""
        return (
            self._renewed_at is not None
            and self._monotonic() - self._renewed_at < self.settings.renew_deadline
        )

    @property
    def observed_holder(self) -> str:
        """The holder the Lease named when we last read it ("" when free or never read)."""
        return self._observed.holder if self._observed else ""

    def try_acquire_or_renew(self) -> bool:
        """One attempt; returns `holds()` afterwards. API failures keep the old claim until the
        renew deadline passes, never longer."""
        started = self._monotonic()
        try:
            current = self._get()
            if current is None:
                body = self._body(None, transitions=0, acquire=self._clock())
                if self._write(body, create=True):
                    self._won(started, "created")
                return self.holds()
            record = self._record(current)
            if record != self._observed:
                self._observed, self._observed_at = record, started
            ours = record.holder == self.holder
            if record.holder and not ours and started < self._observed_at + record.duration:
                self._renewed_at = None
                return False
            body = self._body(
                record,
                transitions=record.transitions + (0 if ours else 1),
                acquire=None if ours else self._clock(),
            )
            if self._write(body, create=False):
                self._won(started, "renewed" if ours else f"took over from {record.holder!r}")
            else:
                # Someone wrote since we read: only a replica that judged our claim expired
                # would, so stop acting on the shard at once.
                self._renewed_at = None
        except _LeaseFailed as err:
            log.warning("lease %s/%s: %s", self.settings.namespace, self.name, err)
        return self.holds()

    def release(self) -> None:
        """Give the shard up now (on shutdown) so the next replica need not wait for expiry."""
        if not self.holds():
            return
        self._renewed_at = None
        try:
            current = self._get()
            if current is None or self._record(current).holder != self.holder:
                return
            record = self._record(current)
            body = self._body(record, transitions=record.transitions, acquire=None)
            body["spec"].pop("holderIdentity", None)
            body["spec"]["leaseDurationSeconds"] = 1
            self._write(body, create=False)
        except _LeaseFailed as err:
            log.warning("lease %s/%s: release failed: %s", self.settings.namespace, self.name, err)

    def _won(self, started: float, how: str) -> None:
        if self._renewed_at is None:
            log.info(
                "lease %s/%s: %s, now holding shard %d",
                self.settings.namespace,
                self.name,
                how,
                self.shard,
            )
        self._renewed_at = started

    def _record(self, obj: Mapping[str, Any]) -> _Record:
        spec = obj.get("spec") or {}
        meta = obj.get("metadata") or {}
        return _Record(
            holder=str(spec.get("holderIdentity") or ""),
            duration=float(spec.get("leaseDurationSeconds") or self.settings.lease_duration),
            renew_time=str(spec.get("renewTime") or ""),
            resource_version=str(meta.get("resourceVersion") or ""),
            transitions=int(spec.get("leaseTransitions") or 0),
            acquire_time=str(spec.get("acquireTime") or ""),
        )

    def _body(
        self, record: _Record | None, *, transitions: int, acquire: datetime | None
    ) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.settings.namespace}
        if record is not None:
            metadata["resourceVersion"] = record.resource_version
        acquire_time = _micro_time(acquire) if acquire else (record.acquire_time if record else "")
        spec: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": max(1, round(self.settings.lease_duration)),
            "renewTime": _micro_time(self._clock()),
            "leaseTransitions": transitions,
        }
        if acquire_time:
            spec["acquireTime"] = acquire_time
        return {
            "apiVersion": f"{_GROUP}/{_VERSION}",
            "kind": "Lease",
            "metadata": metadata,
            "spec": spec,
        }

    def _get(self) -> dict[str, Any] | None:
        try:
            resp: Any = self._api.get_namespaced_custom_object(
                _GROUP,
                _VERSION,
                self.settings.namespace,
                _PLURAL,
                self.name,
                _preload_content=False,
                _request_timeout=self.settings.request_timeout,
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise _LeaseFailed(f"get failed: HTTP {err.status} {_message(err)}") from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise _LeaseFailed(f"get failed: {type(err).__name__}") from err
        try:
            body = json.loads(resp.data)
        except ValueError as err:
            raise _LeaseFailed("get returned invalid JSON") from err
        finally:
            resp.release_conn()
        if not isinstance(body, dict):
            raise _LeaseFailed("get returned a non-object")
        return body

    def _write(self, body: dict[str, Any], *, create: bool) -> bool:
        """Create or update; False when another replica wrote first (409)."""
        ns = self.settings.namespace
        resp: Any
        try:
            if create:
                resp = self._api.create_namespaced_custom_object(
                    _GROUP,
                    _VERSION,
                    ns,
                    _PLURAL,
                    body,
                    _preload_content=False,
                    _request_timeout=self.settings.request_timeout,
                )
            else:
                resp = self._api.replace_namespaced_custom_object(
                    _GROUP,
                    _VERSION,
                    ns,
                    _PLURAL,
                    self.name,
                    body,
                    _preload_content=False,
                    _request_timeout=self.settings.request_timeout,
                )
            resp.release_conn()
        except ApiException as err:
            if err.status == 409:
                log.debug("lease %s/%s: conflict, another replica wrote first", ns, self.name)
                return False
            verb = "create" if create else "update"
            raise _LeaseFailed(f"{verb} failed: HTTP {err.status} {_message(err)}") from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise _LeaseFailed(f"write failed: {type(err).__name__}") from err
        return True


def _message(err: ApiException) -> str:
    try:
        body = json.loads(err.body or "")
    except ValueError:
        return str(err.reason or "")
    return str(body.get("message") or err.reason or "") if isinstance(body, dict) else ""


class ShardLeases:
    """Keeps the Leases of this replica's shards: a thread acquires and renews them.

    `holds(shard)` is what the scheduler asks before each pass.
    """

    def __init__(
        self,
        api_client: Any,
        *,
        shards: Iterable[int],
        holder: str | None = None,
        settings: LeaseSettings | None = None,
    ) -> None:
        self.settings = settings or LeaseSettings()
        self.holder = holder or identity()
        self._leases = {
            shard: ShardLease(api_client, shard=shard, holder=self.holder, settings=self.settings)
            for shard in shards
        }
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holds(self, shard: int) -> bool:
        """Never blocks: reads the time of the last successful renewal (a renewal in flight
        does not delay a pass)."""
        lease = self._leases.get(shard)
        return lease is not None and lease.holds()

    def renew_all(self) -> dict[int, bool]:
        """One acquire/renew round over every shard; returns what we hold afterwards."""
        out = {}
        for shard, lease in self._leases.items():
            with self._lock:
                out[shard] = lease.try_acquire_or_renew()
        return out

    def start(self) -> None:
        """Acquire once now, then renew every `retry_period` seconds in a thread."""
        self.renew_all()
        self._thread = threading.Thread(target=self._loop, name="shard-leases", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.retry_period):
            self.renew_all()

    def stop(self, release: bool = True) -> None:
        """Stop renewing; with `release`, give the shards up so another replica can start now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.settings.request_timeout * 2)
        if release:
            for lease in self._leases.values():
                with self._lock:
                    lease.release()
