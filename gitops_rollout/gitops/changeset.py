"""Change sets: which files a pass would change in the GitOps repository, old and new bytes.

The render stage says what every file it owns should contain; this module compares that with a
`Tree` (the commit the pass builds on) and keeps only what differs. An empty change set means no
commit, no push and no pull request. Commits are built from change sets by `gitops.repo`; PR
bodies show their JSON patches (`gitops.pr_body`). Nothing here touches Git or the network.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any, TypeVar

import jsonpatch

from gitops_rollout.tree import Tree, blob_id
from gitops_rollout.yamlsource import YamlProblem, load_documents

K = TypeVar("K", bound=Hashable)

YAML_SUFFIXES = (".yaml", ".yml")


class ChangeKind(StrEnum):
    ADDED = "added"
    MODIFIED = "modified"
    DELETED = "deleted"


@dataclass(frozen=True)
class FileChange:
    """One file's content before and after; None means the file is absent."""

    path: str
    old: bytes | None
    new: bytes | None

    @property
    def kind(self) -> ChangeKind:
        if self.old is None:
            return ChangeKind.ADDED
        if self.new is None:
            return ChangeKind.DELETED
        return ChangeKind.MODIFIED

    @property
    def is_yaml(self) -> bool:
        return self.path.endswith(YAML_SUFFIXES)

    def json_patch(self) -> list[dict[str, Any]] | None:
        """RFC 6902 operations turning the old documents into the new ones.

        The documents of a multi-document file are a JSON array, so ``/0/spec/...`` addresses
        the first document. None when the file is not YAML or one side does not parse.
        """
        if not self.is_yaml:
            return None
        try:
            old = _documents(self.path, self.old)
            new = _documents(self.path, self.new)
        except YamlProblem:
            return None
        ops: list[dict[str, Any]] = jsonpatch.make_patch(old, new).patch
        return ops


@dataclass(frozen=True)
class ChangeSet:
    """The files that differ, sorted by path (so everything rendered from it is stable)."""

    changes: tuple[FileChange, ...] = ()

    @classmethod
    def build(cls, tree: Tree, desired: Mapping[str, bytes | None]) -> ChangeSet:
        """Compare `desired` ({path: content, or None to delete}) with `tree`."""
        return build_many(tree, {0: desired})[0]

    def __bool__(self) -> bool:
        return bool(self.changes)

    def __len__(self) -> int:
        return len(self.changes)

    def __iter__(self) -> Iterator[FileChange]:
        return iter(self.changes)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(c.path for c in self.changes)

    def new_contents(self) -> dict[str, bytes | None]:
        """{path: new content or None}: what a commit writes."""
        return {c.path: c.new for c in self.changes}

    def digest(self) -> str:
        """A short stable id of the resulting content (not of the old one)."""
        h = hashlib.sha256()
        for c in self.changes:
            h.update(c.path.encode() + b"\0")
            h.update((blob_id(c.new) if c.new is not None else "-").encode() + b"\n")
        return h.hexdigest()[:16]

    def json_patches(self) -> dict[str, list[dict[str, Any]] | None]:
        """{path: JSON patch (None when not YAML)} for every changed file, in path order."""
        return {c.path: c.json_patch() for c in self.changes}

    def summary(self) -> str:
        """``3 files (1 added, 2 modified)`` for logs and commit bodies."""
        counts = dict.fromkeys(ChangeKind, 0)
        for c in self.changes:
            counts[c.kind] += 1
        parts = ", ".join(f"{n} {kind.value}" for kind, n in counts.items() if n)
        noun = "file" if len(self.changes) == 1 else "files"
        return f"{len(self.changes)} {noun} ({parts})" if self.changes else "no changes"


def build_many(tree: Tree, desired: Mapping[K, Mapping[str, bytes | None]]) -> dict[K, ChangeSet]:
    """One change set per key (e.g. per rollout), reading every old file in one batch.

    Unchanged files are recognised by blob id, so only files that really differ are read;
    a pass over 10,000 rollouts reads a handful of blobs, in one ``git cat-file`` call.
    """
    pending: dict[K, list[tuple[str, bytes | None, bool]]] = {}
    to_read: set[str] = set()
    for key, files in desired.items():
        rows: list[tuple[str, bytes | None, bool]] = []
        for path in sorted(files):
            check_path(path)
            new = files[path]
            try:
                old_id: str | None = tree.blob_id(path)
            except FileNotFoundError:
                old_id = None
            if old_id is None and new is None:
                continue
            if old_id is not None and new is not None and old_id == blob_id(new):
                continue
            rows.append((path, new, old_id is not None))
            if old_id is not None:
                to_read.add(path)
        pending[key] = rows
    old = _read_many(tree, sorted(to_read))
    return {
        key: ChangeSet(tuple(FileChange(p, old[p] if had else None, new) for p, new, had in rows))
        for key, rows in pending.items()
    }


def check_path(path: str) -> None:
    """Refuse paths Git or the bot must not write (absolute, ``..``, ``.git``, control chars)."""
    bad = (
        not path
        or path.startswith("/")
        or path.endswith("/")
        or "\\" in path
        or any(ord(ch) < 0x20 for ch in path)
        or any(part in ("", ".", "..") or part.lower() == ".git" for part in path.split("/"))
    )
    if bad:
        raise ValueError(f"{path!r} is not a relative POSIX file path inside the repository")


def _read_many(tree: Tree, paths: list[str]) -> dict[str, bytes]:
    # GitTree reads many blobs in one process; any other Tree reads one by one.
    reader = getattr(tree, "read_many", None)
    if reader is not None and paths:
        got: dict[str, bytes] = reader(paths)
        return got
    return {p: tree.read(p) for p in paths}


def _documents(path: str, data: bytes | None) -> list[Any]:
    if data is None:
        return []
    return [_jsonable(d.value) for d in load_documents(data, file=path)]


def _jsonable(value: Any) -> Any:
    """YAML scalars JSON has no type for (timestamps, binary) as strings, so patches serialise."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, set):
        return sorted(str(v) for v in value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float) and value != value:
        return "NaN"
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.loads(json.dumps(value, default=str))
