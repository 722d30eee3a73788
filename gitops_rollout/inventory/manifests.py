"""Model versions from the human-owned manifests under ``clusters/<cluster>/<namespace>/``.

Versions are objects labelled ``app.kubernetes.io/name: <model>`` with a version label and
opted in with ``gitops-rollout.dev/watch: "true"``, or labelled the Iter8 way
(``iter8.tools/watch: "true"``, names ``<model>-0`` primary and ``<model>-1..n`` candidates).
Bot-owned ``rollout/`` folders are skipped. Parsing is cached by blob id, so a pass re-reads only
files that changed. Readiness is not known here; `snapshot` and `live` add it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gitops_rollout.errors import Problem
from gitops_rollout.inventory.model import (
    ITER8_WATCH_LABEL,
    MODELMESH_ANNOTATION,
    NAME_LABEL,
    ROLE_LABEL,
    VERSION_LABEL,
    WATCH_LABEL,
    ClusterModels,
    Inventory,
    Kind,
    ModelVersion,
    ObjectRef,
    Role,
    ServicePort,
    Status,
)
from gitops_rollout.tree import Tree, read_all
from gitops_rollout.yamlsource import YamlProblem, load_documents, load_fast

log = logging.getLogger(__name__)

CLUSTERS = "clusters"
ROLLOUT_DIR = "rollout"
_ITER8_NAME = re.compile(r"^(?P<model>.+)-(?P<index>\d+)$")
_YAML = (".yaml", ".yml")


@dataclass(frozen=True)
class _Parsed:
    """What one manifest file holds, as far as the inventory cares (cached by blob id)."""

    versions: tuple[ModelVersion, ...]
    services: tuple[tuple[str, str, dict[str, str], tuple[ServicePort, ...]], ...]
    """(namespace, name, selector, ports) of every Service in the file."""
    problems: tuple[Problem, ...] = ()


@dataclass
class ManifestCache:
    """Parsed manifest files by (path, blob id); kept across passes by long-running callers."""

    entries: dict[tuple[str, str], _Parsed] = field(default_factory=dict)


def digest(value: Any) -> str:
    """A short, stable digest of a JSON-able value."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_bot_owned(path: str) -> bool:
    """True for files in a ``rollout/`` folder the reconciler writes."""
    return f"/{ROLLOUT_DIR}/" in f"/{path}"


def cluster_of(path: str) -> str | None:
    """The cluster folder of a path below one (``clusters/<cluster>/...``); None for others."""
    top, _, rest = path.partition("/")
    cluster, below, _ = rest.partition("/")
    return cluster if top == CLUSTERS and below else None


def _labels(meta: Mapping[str, Any]) -> dict[str, str]:
    labels = meta.get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}


def _watched(labels: Mapping[str, str]) -> bool:
    return labels.get(WATCH_LABEL) == "true" or labels.get(ITER8_WATCH_LABEL) == "true"


def _version_from(
    obj: Mapping[str, Any], *, file: str, index: int, default_ns: str
) -> list[ModelVersion]:
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    namespace = str(meta.get("namespace") or default_ns)
    labels = _labels(meta)
    if not _watched(labels):
        return []
    iter8 = _ITER8_NAME.match(name) if labels.get(ITER8_WATCH_LABEL) == "true" else None
    model = labels.get(NAME_LABEL) or (iter8.group("model") if iter8 else "")
    if not model:
        return []
    iter8_index = int(iter8.group("index")) if iter8 else None
    role_label = labels.get(ROLE_LABEL)
    if role_label in (Role.PRIMARY, Role.CANDIDATE):
        role = Role(role_label)
    elif iter8_index is not None:
        role = Role.PRIMARY if iter8_index == 0 else Role.CANDIDATE
    else:
        role = Role.UNKNOWN
    version = labels.get(VERSION_LABEL) or name
    kind = str(obj.get("kind"))
    spec = obj.get("spec") or {}
    ref = ObjectRef(kind, namespace, name)
    base = ModelVersion(
        ref=ref,
        model=model,
        version=version,
        role=role,
        file=file,
        doc_index=index,
        iter8_index=iter8_index,
    )
    if kind == Kind.INFERENCE_SERVICE:
        annotations = meta.get("annotations") or {}
        predictor = spec.get("predictor") or {}
        traffic = predictor.get("canaryTrafficPercent") if isinstance(predictor, dict) else None
        return [
            replace(
                base,
                # The traffic field is the rollout's own output, not part of what is served.
                spec_digest=digest(
                    {k: v for k, v in predictor.items() if k != "canaryTrafficPercent"}
                    if isinstance(predictor, dict)
                    else predictor
                ),
                modelmesh=annotations.get(MODELMESH_ANNOTATION) == "ModelMesh",
                traffic=traffic if isinstance(traffic, int) else None,
            )
        ]
    if kind == Kind.SELDON_DEPLOYMENT:
        predictors = [p for p in spec.get("predictors") or [] if isinstance(p, Mapping)]
        out = []
        for pred in predictors:
            pred_name = str(pred.get("name", "default"))
            pred_labels = pred.get("labels") or {}
            pred_version = (
                pred_labels.get(VERSION_LABEL) or pred_labels.get("version")
                if isinstance(pred_labels, Mapping)
                else None
            )
            traffic = pred.get("traffic")
            out.append(
                replace(
                    base,
                    version=version if len(predictors) == 1 else str(pred_version or pred_name),
                    predictor=pred_name,
                    spec_digest=digest(pred.get("graph")),
                    traffic=traffic if isinstance(traffic, int) else None,
                )
            )
        return out
    if kind == Kind.DEPLOYMENT:
        template = spec.get("template") or {}
        return [replace(base, spec_digest=digest(template.get("spec")))]
    return []


def _parse_file(data: bytes, *, file: str, namespace: str) -> _Parsed:
    try:
        docs = load_fast(data)
    except Exception:
        docs = None
    if docs is None:
        try:
            load_documents(data, file=file)
        except YamlProblem as err:
            return _Parsed((), (), (err.problem,))
        return _Parsed((), (), (Problem(file, None, "", "could not parse YAML"),))
    versions: list[ModelVersion] = []
    services = []
    for index, obj in enumerate(docs):
        if not isinstance(obj, Mapping):
            continue
        objs = obj.get("items") if obj.get("kind") == "List" else [obj]
        for item in objs or []:
            if not isinstance(item, Mapping):
                continue
            kind = item.get("kind")
            if kind in (Kind.INFERENCE_SERVICE, Kind.SELDON_DEPLOYMENT, Kind.DEPLOYMENT):
                versions.extend(_version_from(item, file=file, index=index, default_ns=namespace))
            elif kind == Kind.SERVICE:
                meta = item.get("metadata") or {}
                spec = item.get("spec") or {}
                selector = spec.get("selector") or {}
                ports = tuple(
                    ServicePort(str(p.get("name", "")), int(p["port"]))
                    for p in spec.get("ports") or []
                    if isinstance(p, Mapping) and isinstance(p.get("port"), int)
                )
                services.append(
                    (
                        str(meta.get("namespace") or namespace),
                        str(meta.get("name", "")),
                        {str(k): str(v) for k, v in selector.items()},
                        ports,
                    )
                )
    return _Parsed(tuple(versions), tuple(services))


def scan(
    tree: Tree,
    *,
    cache: ManifestCache | None = None,
    files: list[tuple[str, str, str, tuple[str, str]]] | None = None,
    statuses: Mapping[tuple[str, ObjectRef], Status] | None = None,
) -> tuple[Inventory, list[Problem]]:
    """Every watched version under ``clusters/``, by cluster and model, with readiness from
    `statuses` as `with_status` attaches it (unknown without). `files`: the manifest files
    when the caller listed them already (`Prefetch.files`)."""
    cache = cache if cache is not None else ManifestCache()
    inventory = Inventory()
    problems: list[Problem] = []
    for cluster_dir in sorted({c for p in tree.paths(CLUSTERS) if (c := cluster_of(p))}):
        inventory.clusters[cluster_dir] = ClusterModels(cluster_dir)
    service_index: dict[tuple[str, str], _Services] = {}
    pending: list[tuple[str, ModelVersion]] = []
    files = _manifest_files(tree) if files is None else files
    texts = read_all(tree, [path for path, _, _, key in files if key not in cache.entries])
    for path, cluster, namespace, key in files:
        parsed = cache.entries.get(key)
        if parsed is None:
            parsed = _parse_file(texts[path], file=path, namespace=namespace)
            cache.entries[key] = parsed
        problems.extend(parsed.problems)
        for version in parsed.versions:
            pending.append((cluster, version))
        for ns, name, selector, ports in parsed.services:
            if (services := service_index.get((cluster, ns))) is None:
                services = service_index[(cluster, ns)] = _Services()
            services.add(name, selector, ports)
    statuses = statuses or {}
    for cluster, version in pending:
        services = service_index.get((cluster, version.ref.namespace))
        found = (
            services.of(version)
            if services is not None and version.ref.kind == Kind.DEPLOYMENT
            else {}
        )
        status = statuses.get((cluster, version.ref)) or statuses.get(("", version.ref))
        if status is not None:
            found["status"] = status
        if found:
            version = _with(version, found)
        models = inventory.clusters[cluster].models
        models.setdefault(version.model, []).append(version)
    for cluster_models in inventory.clusters.values():
        for versions in cluster_models.models.values():
            versions.sort(key=lambda v: (v.iter8_index is None, v.iter8_index or 0, v.key))
    return inventory, problems


def manifest_place(path: str) -> tuple[str, str] | None:
    """(cluster, namespace folder) of a path the scan reads as a manifest; None for others."""
    if not path.endswith(_YAML):
        return None
    parts = path.split("/")
    if len(parts) < 4 or parts[0] != CLUSTERS or ROLLOUT_DIR in parts[1:-1]:
        return None  # `ROLLOUT_DIR` as a folder: bot-owned (`is_bot_owned`)
    if parts[-1] in ("kustomization.yaml", "kustomization.yml"):
        return None
    return parts[1], parts[2]


def _manifest_files(tree: Tree) -> list[tuple[str, str, str, tuple[str, str]]]:
    """(path, cluster, namespace folder, cache key) of every manifest file the scan reads."""
    files = []
    for path in tree.paths(CLUSTERS):
        if (place := manifest_place(path)) is not None:
            files.append((path, *place, (path, tree.blob_id(path))))
    return files


PARALLEL_MIN = 2_000
"""Unparsed manifest files from which `Prefetch` parses them in a second process."""


class Prefetch:
    """Manifest files parsed in another process while this one does other work.

    A cold pass over a large repository parses ten thousand manifests and as many policies,
    each a second or more of libyaml and Python on one core. With `PARALLEL_MIN` or more
    manifests not in `cache`, their texts go to a worker (a fresh interpreter running
    `_worker`: no fork, as the daemon has threads, and no multiprocessing, which would run the
    caller's main module again) and `wait` puts what it parsed into the cache, for `scan` to
    find. A worker that fails only costs the time: `scan` parses whatever is missing itself.
    """

    def __init__(self, tree: Tree, cache: ManifestCache) -> None:
        self._cache = cache
        self._keys: list[tuple[str, str]] = []
        self._worker: subprocess.Popen[bytes] | None = None
        self._input: Path | None = None
        self.files = _manifest_files(tree)
        """Every manifest file (for `scan`, so that it does not list them again)."""
        files = [f for f in self.files if f[3] not in cache.entries]
        if len(files) < PARALLEL_MIN or (os.cpu_count() or 1) < 2:
            return
        texts = read_all(tree, [path for path, _, _, _ in files])
        self._keys = [key for _, _, _, key in files]
        with tempfile.NamedTemporaryFile(prefix="gitops-rollout-", suffix=".in", delete=False) as f:
            pickle.dump([(texts[path], path, ns) for path, _, ns, _ in files], f, protocol=5)
            self._input = Path(f.name)
        try:
            self._worker = subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(self._input)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as err:
            log.warning("could not start a second process to parse manifests: %s", err)
            self._done()

    @property
    def started(self) -> bool:
        return self._worker is not None

    def wait(self) -> None:
        """The worker's results in the cache (nothing when none was started or it failed)."""
        worker = self._worker
        if worker is None:
            return
        try:
            out, err = worker.communicate()
            if worker.returncode != 0:
                raise RuntimeError(err.decode(errors="replace").strip()[-500:])
            parsed = pickle.loads(out)  # noqa: S301 (written by our own worker just now)
            self._cache.entries.update(zip(self._keys, parsed, strict=True))
        except Exception as error:  # any failure: the scan parses the files here instead
            log.warning("parsing manifests in a second process failed, parsing here: %s", error)
        finally:
            self._done()

    def _done(self) -> None:
        self._worker = None
        if self._input is not None:
            self._input.unlink(missing_ok=True)
            self._input = None


_WORKER = "from gitops_rollout.inventory.manifests import _worker; _worker()"


def _worker() -> None:
    """The second process: (text, path, namespace folder) triples from the file named on the
    command line, `_parse_file` of each, pickled to stdout."""
    with open(sys.argv[1], "rb") as f:
        files: list[tuple[bytes, str, str]] = pickle.load(f)  # noqa: S301 (our own file)
    parsed = [_parse_file(text, file=path, namespace=ns) for text, path, ns in files]
    sys.stdout.buffer.write(pickle.dumps(parsed, protocol=5))
    sys.stdout.flush()


class _Services:
    """The Services of one namespace of a cluster, in the order `scan` met them, found for a
    Deployment version the way the documentation says: the Service named like the
    Deployment, else the first whose selector names the version (and the model, or no
    model). Two look-ups per version, where trying every Service of a namespace of fifty
    models took a twentieth of a second per pass."""

    def __init__(self) -> None:
        self._by_name: dict[str, tuple[str, tuple[ServicePort, ...]]] = {}
        self._by_selector: dict[
            tuple[str | None, str | None], tuple[int, str, tuple[ServicePort, ...]]
        ] = {}
        self._added = 0

    def add(self, name: str, selector: dict[str, str], ports: tuple[ServicePort, ...]) -> None:
        self._by_name.setdefault(name, (name, ports))
        key = (selector.get(VERSION_LABEL), selector.get(NAME_LABEL))
        self._by_selector.setdefault(key, (self._added, name, ports))
        self._added += 1

    def of(self, version: ModelVersion) -> dict[str, Any]:
        """The fields `version` takes from its Service: name and ports; none when no Service
        is its."""
        named = self._by_name.get(version.ref.name)
        if named is not None:
            return {"services": named[1], "service_name": named[0]}
        found = [
            match
            for key in ((version.version, version.model), (version.version, None))
            if (match := self._by_selector.get(key)) is not None
        ]
        if not found:
            return {}
        _, name, ports = min(found)
        return {"services": ports, "service_name": name}


def version_key(version: ModelVersion, blob: str) -> tuple[object, ...]:
    """A value that tells `version` from any other version `scan` could give, where `blob` is
    the blob id of `version.file` in the scanned tree. Cheaper than the dataclass's repr, and
    the memo takes one per version and pass.

    Everything `_parse_file` sets follows from the file's path and content (the key of the
    parse cache too); the document and predictor say which of the file's versions it is.
    After parsing, `scan` sets only the Services and `with_status` the status: a new field
    set after parsing belongs here as well.
    """
    status = version.status
    return (
        version.file,
        blob,
        version.doc_index,
        version.ref.kind,
        version.ref.name,
        version.predictor,
        tuple((port.name, port.port) for port in version.services),
        version.service_name,
        status.readiness.value,
        status.reason,
        status.version,
    )


def with_status(inventory: Inventory, statuses: Mapping[tuple[str, ObjectRef], Status]) -> None:
    """Attach readiness to every version in place; `statuses` is keyed by (cluster, ref).

    A key with an empty cluster applies to every cluster (a snapshot that names none).
    """
    for cluster, models in inventory.clusters.items():
        for model, versions in models.models.items():
            updated = []
            for v in versions:
                status = statuses.get((cluster, v.ref)) or statuses.get(("", v.ref))
                updated.append(_with(v, {"status": status}) if status is not None else v)
            models.models[model] = updated


def _with(version: ModelVersion, changes: Mapping[str, Any]) -> ModelVersion:
    """`replace(version, **changes)` at a sixth of its cost (ten thousand per pass): a
    shallow copy of the instance's fields with `changes` set, as the frozen dataclass (which
    has no `__post_init__`) allows only this way; `copy.copy` costs four times as much."""
    copied: ModelVersion = object.__new__(ModelVersion)
    fields = copied.__dict__
    fields.update(version.__dict__)
    fields.update(changes)
    return copied
