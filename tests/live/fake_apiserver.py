"""A small Kubernetes API server on 127.0.0.1 for driving the real `kubernetes` client.

No real API server can run on the test machines, so this one answers the HTTP API for the kinds
gitops-rollout reads and the Leases it writes, following the API conventions the client relies
on: list with ``resourceVersion`` and server-side ``labelSelector``, watch streams (chunked JSON
lines: ADDED, MODIFIED, DELETED, BOOKMARK), ``410 Gone`` for a compacted resourceVersion,
``403 Forbidden`` Status bodies for denied verbs, ``409 Conflict`` for stale updates, bearer
token authentication, and MicroTime validation of Lease times.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

TOKEN = "fake-token-for-tests"
USER = "system:serviceaccount:gitops-system:gitops-rollout"

# (group, version, plural) -> kind; group "" is the core API.
RESOURCES: dict[tuple[str, str, str], str] = {
    ("", "v1", "services"): "Service",
    ("apps", "v1", "deployments"): "Deployment",
    ("serving.kserve.io", "v1beta1", "inferenceservices"): "InferenceService",
    ("machinelearning.seldon.io", "v1", "seldondeployments"): "SeldonDeployment",
    ("networking.istio.io", "v1", "virtualservices"): "VirtualService",
    ("argoproj.io", "v1alpha1", "applications"): "Application",
    ("kustomize.toolkit.fluxcd.io", "v1", "kustomizations"): "Kustomization",
    ("coordination.k8s.io", "v1", "leases"): "Lease",
}
_BY_KIND = {(g, v, k): p for (g, v, p), k in RESOURCES.items()}
_MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")
_TYPED_GROUPS = {"", "apps"}  # built-in kinds: list items carry no kind/apiVersion


def _split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Equality-based label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@dataclass
class _Event:
    rv: int
    resource: tuple[str, str, str]
    type: str
    old: dict[str, Any] | None
    new: dict[str, Any]


class _Gone(Exception):
    pass


class FakeApiServer:
    """The fake API server. Start it with `start()` or as a context manager."""

    def __init__(self, *, token: str = TOKEN) -> None:
        self.token = token
        self._lock = threading.Condition()
        self._rv = itertools.count(100)
        self.current_rv = next(self._rv)
        self._objects: dict[tuple[str, str, str], dict[tuple[str, str], dict[str, Any]]] = {
            r: {} for r in RESOURCES
        }
        self._events: list[_Event] = []
        self._compacted_rv = 0
        self._denied: set[tuple[str, str]] = set()
        self._absent: set[str] = set()
        self._bookmark_generation = 0
        self._drop_generation = 0
        self._stopping = False
        self.gone_as_http = False
        """Answer a stale watch with HTTP 410 instead of an ERROR event in a 200 stream."""
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.responses: list[tuple[str, str, int]] = []
        """(method, path, status code) of every answer."""
        self._sockets: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, port: int = 0) -> FakeApiServer:
        server = self

        class Handler(_Handler):
            api = server

        self._stopping = False
        self._server = _Server(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (watches and keep-alive ones)."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- test controls ---------------------------------------------------------------------

    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace an object (as a controller would); returns it with metadata set."""
        with self._lock:
            return self._store(copy.deepcopy(dict(obj)), expect_rv=None, create=None)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        group, version = _split_api_version(api_version)
        resource = (group, version, _BY_KIND[(group, version, kind)])
        with self._lock:
            old = self._objects[resource].pop((namespace, name))
            rv = next(self._rv)
            self.current_rv = rv
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(rv)
            self._events.append(_Event(rv, resource, "DELETED", old, gone))
            self._lock.notify_all()

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        group, version = _split_api_version(api_version)
        resource = (group, version, _BY_KIND[(group, version, kind)])
        with self._lock:
            found = self._objects[resource].get((namespace, name))
            return copy.deepcopy(found) if found else None

    def compact(self) -> None:
        """Forget the event history: watches resuming from an older resourceVersion get 410."""
        with self._lock:
            self._compacted_rv = self.current_rv
            self._events.clear()

    def drop_watches(self) -> None:
        """Cut every open watch stream abruptly (as a restarting API server or proxy does)."""
        with self._lock:
            self._drop_generation += 1
            self._lock.notify_all()

    def bookmark(self) -> None:
        """Send a BOOKMARK with the current resourceVersion to watches that allow them."""
        with self._lock:
            self._bookmark_generation += 1
            self._lock.notify_all()

    def deny(self, plural: str, *verbs: str) -> None:
        """Answer 403 Forbidden for these verbs on a resource."""
        self._denied.update((plural, v) for v in verbs)

    def uninstall(self, plural: str) -> None:
        """Answer 404 for a resource, as a cluster without its CRD does."""
        self._absent.add(plural)

    def frozen(self) -> threading.Condition:
        """Hold the server still: ``with api.frozen(): ...`` changes are seen all at once."""
        return self._lock

    def watch_count(self, plural: str) -> int:
        return sum(
            1
            for m, path, q in self.requests
            if m == "GET" and path.endswith("/" + plural) and q.get("watch") in ("true", "1")
        )

    def write_kubeconfig(self, path: Path, *, contexts: Mapping[str, str]) -> Path:
        """A kubeconfig with one context per name, each pointing at the given server URL."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": n, "cluster": {"server": url}} for n, url in contexts.items()],
            "users": [{"name": "gitops-rollout", "user": {"token": self.token}}],
            "contexts": [
                {"name": n, "context": {"cluster": n, "user": "gitops-rollout"}} for n in contexts
            ],
            "current-context": next(iter(contexts)),
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # -- storage ---------------------------------------------------------------------------

    def _resource_of(self, obj: Mapping[str, Any]) -> tuple[str, str, str]:
        group, version = _split_api_version(str(obj.get("apiVersion", "")))
        plural = _BY_KIND.get((group, version, str(obj.get("kind"))))
        if plural is None:
            raise KeyError(f"unknown kind {obj.get('apiVersion')} {obj.get('kind')}")
        return group, version, plural

    def _store(
        self, obj: dict[str, Any], *, expect_rv: str | None, create: bool | None
    ) -> dict[str, Any]:
        """Caller holds the lock. create=None means upsert (test control)."""
        resource = self._resource_of(obj)
        meta = obj.setdefault("metadata", {})
        key = (str(meta.get("namespace") or ""), str(meta["name"]))
        old = self._objects[resource].get(key)
        if create is True and old is not None:
            raise _Conflict(
                "AlreadyExists", f'{resource[2]}.{resource[0]} "{key[1]}" already exists'
            )
        if create is False:
            if old is None:
                raise _NotFound(f'{resource[2]}.{resource[0]} "{key[1]}" not found')
            if expect_rv != old["metadata"]["resourceVersion"]:
                raise _Conflict(
                    "Conflict",
                    f'Operation cannot be fulfilled on {resource[2]}.{resource[0]} "{key[1]}": '
                    "the object has been modified; please apply your changes to the latest "
                    "version and try again",
                )
        rv = next(self._rv)
        self.current_rv = rv
        meta["resourceVersion"] = str(rv)
        if old is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        else:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        self._objects[resource][key] = obj
        self._events.append(
            _Event(rv, resource, "ADDED" if old is None else "MODIFIED", old, copy.deepcopy(obj))
        )
        self._lock.notify_all()
        return copy.deepcopy(obj)

    def _select(
        self, resource: tuple[str, str, str], namespace: str | None, selector: str
    ) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o)
            for (ns, _), o in sorted(self._objects[resource].items())
            if (namespace is None or ns == namespace)
            and matches(selector, o["metadata"].get("labels") or {})
        ]

    def _events_after(
        self, rv: int, resource: tuple[str, str, str], namespace: str | None, selector: str
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """Events after `rv` as one watcher sees them (label filtering turns moves into
        ADDED/DELETED, as the API server's watch cache does). Caller holds the lock."""
        if rv < self._compacted_rv:
            raise _Gone(f"too old resource version: {rv} ({self._compacted_rv})")
        for event in self._events:
            if event.rv <= rv or event.resource != resource:
                continue
            ns = event.new["metadata"].get("namespace") or ""
            if namespace is not None and ns != namespace:
                continue
            now = matches(selector, event.new["metadata"].get("labels") or {})
            before = event.old is not None and matches(
                selector, event.old["metadata"].get("labels") or {}
            )
            if event.type == "DELETED":
                kind = "DELETED" if before else None
            elif now and before:
                kind = "MODIFIED"
            elif now:
                kind = "ADDED"
            elif before:
                kind = "DELETED"
            else:
                kind = None
            if kind:
                yield event.rv, {"type": kind, "object": copy.deepcopy(event.new)}


class _Server(ThreadingHTTPServer):
    # Many watch threads reconnect at once; the default backlog of 5 drops SYNs (1 s retries).
    request_queue_size = 128


class _Conflict(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class _NotFound(Exception):
    pass


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _Handler(BaseHTTPRequestHandler):
    api: FakeApiServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small JSON answers must not wait for delayed ACKs

    def setup(self) -> None:
        super().setup()
        with self.api._lock:
            self.api._sockets.add(self.connection)

    def finish(self) -> None:
        with self.api._lock:
            self.api._sockets.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing --------------------------------------------------------------------------

    def _send_json(self, code: int, body: Mapping[str, Any]) -> None:
        self.api.responses.append((self.command, urlsplit(self.path).path, code))
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, code: int, reason: str, message: str) -> None:
        self._send_json(code, _status(code, reason, message))

    def _route(self) -> tuple[tuple[str, str, str], str | None, str | None] | None:
        parts = [p for p in urlsplit(self.path).path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or (group, version, rest[0]) not in RESOURCES or rest[0] in self.api._absent:
            return None
        return (group, version, rest[0]), namespace, rest[1] if len(rest) > 1 else None

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.api.token}":
            return True
        self._fail(401, "Unauthorized", "Unauthorized")
        return False

    def _denied(self, resource: tuple[str, str, str], verb: str, namespace: str | None) -> bool:
        group, _, plural = resource
        if (plural, verb) not in self.api._denied:
            return False
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        name = f"{plural}.{group}" if group else plural
        self._fail(
            403,
            "Forbidden",
            f'{name} is forbidden: User "{USER}" cannot {verb} resource "{plural}" in API group '
            f'"{group}" {scope}',
        )
        return True

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        data = json.loads(self.rfile.read(length) or b"{}")
        return data if isinstance(data, dict) else {}

    # -- verbs -----------------------------------------------------------------------------

    def do_GET(self) -> None:
        query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
        self.api.requests.append(("GET", urlsplit(self.path).path, query))
        if not self._authorized():
            return
        route = self._route()
        if route is None:
            self._fail(404, "NotFound", "the server could not find the requested resource")
            return
        resource, namespace, name = route
        watch = query.get("watch") in ("true", "1")
        verb = "get" if name else "watch" if watch else "list"
        if self._denied(resource, verb, namespace):
            return
        if name:
            with self.api._lock:
                obj = self.api._objects[resource].get((namespace or "", name))
                obj = copy.deepcopy(obj) if obj else None
            if obj is None:
                self._fail(404, "NotFound", f'{resource[2]}.{resource[0]} "{name}" not found')
            else:
                self._send_json(200, obj)
            return
        selector = query.get("labelSelector", "")
        if watch:
            self._watch(resource, namespace, selector, query)
            return
        with self.api._lock:
            items = self.api._select(resource, namespace, selector)
            rv = self.api.current_rv
        group, version, _ = resource
        if group in _TYPED_GROUPS:
            for item in items:
                item.pop("kind", None)
                item.pop("apiVersion", None)
        self._send_json(
            200,
            {
                "apiVersion": f"{group}/{version}" if group else version,
                "kind": RESOURCES[resource] + "List",
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            },
        )

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(
        self,
        resource: tuple[str, str, str],
        namespace: str | None,
        selector: str,
        query: Mapping[str, str],
    ) -> None:
        api = self.api
        timeout = float(query.get("timeoutSeconds") or 30)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        start_rv = query.get("resourceVersion", "")
        with api._lock:
            if start_rv in ("", "0"):
                # No resourceVersion: synthetic ADDED for the current state, then follow.
                initial = [
                    {"type": "ADDED", "object": o}
                    for o in api._select(resource, namespace, selector)
                ]
                rv = api.current_rv
            else:
                initial, rv = [], int(start_rv)
                if rv < api._compacted_rv:
                    expired = _status(
                        410, "Expired", f"too old resource version: {rv} ({api._compacted_rv})"
                    )
                    if api.gone_as_http:
                        self._send_json(410, expired)
                        return
                    initial = [{"type": "ERROR", "object": expired}]
            drops, marks = api._drop_generation, api._bookmark_generation
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + timeout
        try:
            for event in initial:
                self._write_chunk(json.dumps(event).encode() + b"\n")
                if event["type"] == "ERROR":
                    self._write_chunk(b"")
                    return
            while time.monotonic() < deadline:
                with api._lock:
                    if api._stopping or api._drop_generation != drops:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    gone = ""
                    try:
                        pending = list(api._events_after(rv, resource, namespace, selector))
                    except _Gone as err:
                        pending, gone = [], str(err)
                    send_mark = bookmarks and api._bookmark_generation != marks
                    marks = api._bookmark_generation
                    current = api.current_rv
                    if not pending and not send_mark and not gone:
                        api._lock.wait(0.05)
                        continue
                if gone:
                    event = {"type": "ERROR", "object": _status(410, "Expired", gone)}
                    self._write_chunk(json.dumps(event).encode() + b"\n")
                    break
                for event_rv, event in pending:
                    self._write_chunk(json.dumps(event).encode() + b"\n")
                    rv = event_rv
                if send_mark:
                    group, version, _ = resource
                    mark = {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": RESOURCES[resource],
                            "apiVersion": f"{group}/{version}" if group else version,
                            "metadata": {"resourceVersion": str(current)},
                        },
                    }
                    self._write_chunk(json.dumps(mark).encode() + b"\n")
                    rv = max(rv, current)
            self._write_chunk(b"")
        except OSError:
            self.close_connection = True

    def do_POST(self) -> None:
        self._write(create=True)

    def do_PUT(self) -> None:
        self._write(create=False)

    def _write(self, *, create: bool) -> None:
        self.api.requests.append(("POST" if create else "PUT", urlsplit(self.path).path, {}))
        body = self._body()
        if not self._authorized():
            return
        route = self._route()
        if route is None:
            self._fail(404, "NotFound", "the server could not find the requested resource")
            return
        resource, namespace, name = route
        verb = "create" if create else "update"
        if self._denied(resource, verb, namespace):
            return
        if resource[2] == "leases":
            spec = body.get("spec") or {}
            for key in ("renewTime", "acquireTime"):
                value = spec.get(key)
                if value is not None and not _MICRO_TIME.match(str(value)):
                    self._fail(
                        400,
                        "BadRequest",
                        f'Lease in version "v1" cannot be handled as a Lease: parsing time '
                        f'"{value}" as "2006-01-02T15:04:05.000000Z07:00": cannot parse',
                    )
                    return
        meta = body.setdefault("metadata", {})
        meta.setdefault("namespace", namespace or "")
        if name is not None:
            meta["name"] = name
        body.setdefault("apiVersion", f"{resource[0]}/{resource[1]}" if resource[0] else "v1")
        body.setdefault("kind", RESOURCES[resource])
        try:
            with self.api._lock:
                stored = self.api._store(
                    body, expect_rv=str(meta.get("resourceVersion") or ""), create=create
                )
        except _Conflict as err:
            self._fail(409, err.reason, err.message)
            return
        except _NotFound as err:
            self._fail(404, "NotFound", str(err))
            return
        self._send_json(201 if create else 200, stored)
