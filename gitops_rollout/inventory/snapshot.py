"""Readiness from a kubectl-style snapshot (``--inventory FILE``), standing in for live clusters.

Accepts what ``kubectl get isvc,sdep,deploy -A -o yaml`` (a ``v1 List``) or ``-o json`` prints,
or a multi-document YAML stream. One file applies to every cluster; ``CLUSTER=FILE`` or a
directory of ``<cluster>.yaml`` files gives each cluster its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gitops_rollout.errors import ManifestError, Problem
from gitops_rollout.fingerprint import code_fingerprint
from gitops_rollout.inventory.model import Kind, ObjectRef, Status
from gitops_rollout.inventory.readiness import status_of
from gitops_rollout.yamlsource import YamlProblem, load_documents

log = logging.getLogger(__name__)

_KINDS = {Kind.INFERENCE_SERVICE, Kind.SELDON_DEPLOYMENT, Kind.DEPLOYMENT}

_EXPORT = "kubectl get isvc,sdep,deploy -A -o yaml"


def _items(value: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        if value.get("kind") == "List" or (
            isinstance(value.get("kind"), str) and value["kind"].endswith("List")
        ):
            for item in value.get("items") or []:
                yield from _items(item)
        else:
            yield value
    elif isinstance(value, list):
        for item in value:
            yield from _items(item)


def parse_snapshot(
    text: bytes, *, file: str, cluster: str = ""
) -> dict[tuple[str, ObjectRef], Status]:
    """Readiness of every model object in a snapshot, keyed by (cluster, ref)."""
    stripped = text.lstrip()
    docs: list[Any]
    if stripped.startswith(b"{"):
        try:
            docs = [json.loads(text)]
        except json.JSONDecodeError as err:
            raise ManifestError(
                [
                    Problem(
                        file,
                        err.lineno,
                        "",
                        f"invalid JSON at column {err.colno}: {err.msg[:1].lower()}{err.msg[1:]}",
                        f"fix the JSON at that line, or export it again with {_EXPORT[:-4]}json",
                    )
                ]
            ) from err
    else:
        try:
            found = load_documents(text, file=file)
        except YamlProblem as err:
            raise ManifestError([err.problem]) from err
        not_objects = [d for d in found if not isinstance(d.value, Mapping | list)]
        if not_objects:
            raise ManifestError(
                [
                    Problem(
                        file,
                        d.start_line,
                        "",
                        f"expected Kubernetes objects or a List, got {type(d.value).__name__} "
                        f"{d.value!r:.40}",
                        f"export the inventory with {_EXPORT}",
                    )
                    for d in not_objects
                ]
            )
        docs = [d.value for d in found]
    out: dict[tuple[str, ObjectRef], Status] = {}
    for obj in _items(docs):
        kind = obj.get("kind")
        if kind not in _KINDS:
            continue
        meta = obj.get("metadata") or {}
        name, namespace = meta.get("name"), meta.get("namespace") or "default"
        if not isinstance(name, str):
            continue
        out[(cluster, ObjectRef(str(kind), str(namespace), name))] = status_of(obj)
    return out


def load_snapshots(
    specs: list[str], *, cache: Path | None = None
) -> dict[tuple[str, ObjectRef], Status]:
    """Read every ``--inventory`` argument: FILE, CLUSTER=FILE, or a directory of cluster files.

    `cache`: a file that keeps each snapshot file's readiness by its content (`SnapshotCache`),
    for the next process: a pass whose snapshots did not change does not parse them again.
    """
    kept = SnapshotCache.read(cache) if cache is not None else SnapshotCache()
    seen: dict[tuple[str, str], str] = {}
    keep: dict[tuple[str, str, str], dict[tuple[str, ObjectRef], Status]] = {}
    out: dict[tuple[str, ObjectRef], Status] = {}
    for path, cluster in _snapshot_files(specs):
        text = path.read_bytes()
        key = (str(path), cluster, hashlib.sha256(text).hexdigest())
        statuses = kept.statuses(key)
        if statuses is None:
            statuses = parse_snapshot(text, file=str(path), cluster=cluster)
        if key in kept.kept or kept.seen.get(key[:2]) == key[2]:
            keep[key] = statuses
        seen[key[:2]] = key[2]
        out.update(statuses)
    if cache is not None and (seen != kept.seen or keep.keys() != kept.kept or kept.damaged):
        SnapshotCache.write(cache, seen, keep)
    return out


def _snapshot_files(specs: list[str]) -> list[tuple[Path, str]]:
    """(file, cluster) of every ``--inventory`` argument, in order; "" for a file that names no
    cluster."""
    files: list[tuple[Path, str]] = []
    for spec in specs:
        cluster, sep, path_text = spec.partition("=")
        if not sep or "/" in cluster or Path(spec).exists():
            cluster, path_text = "", spec
        path = Path(path_text)
        if path.is_dir():
            found = sorted([*path.glob("*.yaml"), *path.glob("*.yml"), *path.glob("*.json")])
            files.extend((child, child.stem) for child in found)
        elif path.is_file():
            files.append((path, cluster))
        else:
            raise ManifestError(
                [
                    Problem(
                        str(path),
                        None,
                        "",
                        "inventory file not found",
                        "check the --inventory path",
                    )
                ]
            )
    return files


class SnapshotCache:
    """Readiness parsed from snapshot files, by (path, cluster, SHA-256 of the content).

    Parsing ten snapshot files of a thousand objects each (JSON, then `status_of` per object)
    takes a twentieth of a second that a no-op pass would otherwise spend every time; reading
    it back takes a fifth of that (the statuses are shared between objects, most being Ready).

    A file's readiness is kept once the same content has been read twice in a row: a snapshot
    exported anew for every pass would otherwise cost a write each time and never be read
    back. The cache file holds two pickles: what the last pass read (`seen`) with the keys
    whose readiness is kept (`kept`), then that readiness, unpickled only at the first hit. It
    is written anew, atomically, when either changes, and marked with `FORMAT` and the code's
    fingerprint, so that a new release parses again. A cache that cannot be read is ignored;
    one that cannot be written only costs the time.
    """

    FORMAT = 2

    def __init__(
        self,
        seen: dict[tuple[str, str], str] | None = None,
        kept: frozenset[tuple[str, str, str]] = frozenset(),
        rest: io.BytesIO | None = None,
    ) -> None:
        self.seen = seen or {}
        """(path, cluster) of every file the last pass read, with the digest of its content."""
        self.kept = kept
        """The (path, cluster, digest) whose readiness the cache holds."""
        self._rest = rest
        self._files: dict[tuple[str, str, str], dict[tuple[str, ObjectRef], Status]] | None = None
        self.damaged = False
        """A key in `kept` had no readiness to read back: the file is to be written anew."""

    @classmethod
    def read(cls, path: Path) -> SnapshotCache:
        try:
            stream = io.BytesIO(path.read_bytes())
            # Written by this program into its own cache directory (`write`), which only
            # whoever runs it can change.
            header, seen, kept = pickle.load(stream)  # noqa: S301
        except FileNotFoundError:
            return cls()
        except Exception as err:  # a damaged or foreign file is only a miss
            log.info("snapshot cache %s not used: %s", path, err)
            return cls()
        if (
            header != (cls.FORMAT, code_fingerprint())
            or not isinstance(seen, dict)
            or not isinstance(kept, frozenset)
        ):
            return cls()
        return cls(seen, kept, stream)

    def statuses(self, key: tuple[str, str, str]) -> dict[tuple[str, ObjectRef], Status] | None:
        """The readiness kept for `key`; None when there is none."""
        if key not in self.kept or self._rest is None:
            return None
        if self._files is None:
            try:
                files = pickle.load(self._rest)  # noqa: S301 (as in `read`)
            except Exception as err:  # a damaged file is only a miss
                log.info("snapshot cache not used: %s", err)
                files = None
            self._files = files if isinstance(files, dict) else {}
        found = self._files.get(key)
        self.damaged = self.damaged or found is None
        return found

    @classmethod
    def write(
        cls,
        path: Path,
        seen: dict[tuple[str, str], str],
        files: dict[tuple[str, str, str], dict[tuple[str, ObjectRef], Status]],
    ) -> None:
        shared: dict[Status, Status] = {}
        files = {
            key: {ref: shared.setdefault(status, status) for ref, status in statuses.items()}
            for key, statuses in files.items()
        }
        written: Path | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                dir=path.parent, prefix=path.name, suffix=".tmp", delete=False
            ) as out:
                written = Path(out.name)
                header = (cls.FORMAT, code_fingerprint())
                pickle.dump((header, seen, frozenset(files)), out, protocol=5)
                pickle.dump(files, out, protocol=5)
            os.replace(written, path)
        except OSError as err:
            if written is not None:
                written.unlink(missing_ok=True)
            log.info("snapshot cache %s not written: %s", path, err)
