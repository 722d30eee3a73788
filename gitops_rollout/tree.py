"""Read-only views of a repository's files: a directory on disk, or a commit of a Git repository.

Every stage that reads the GitOps repository (policies, manifests, bot-owned routing files) reads
through a `Tree`, so `plan` can run on a plain checkout and `reconcile` on the exact commit it
will build on. Each file has a stable content id (the Git blob id), which lets callers cache
parsed results across passes: a 10,000-model repository re-parses only what changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from gitops_rollout.errors import GitWriteError


def blob_id(data: bytes) -> str:
    """Git's object id of a blob with this content (so disk and Git trees agree)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


class Tree(Protocol):
    """Files of one repository state, addressed by POSIX paths relative to its root."""

    def paths(self, prefix: str = "") -> list[str]:
        """Every file path under `prefix` (a folder, no trailing slash), sorted."""
        ...

    def read(self, path: str) -> bytes:
        """The content of `path`; raises FileNotFoundError when it does not exist."""
        ...

    def blob_id(self, path: str) -> str:
        """The Git blob id of `path`'s content; raises FileNotFoundError when missing."""
        ...


class DirTree:
    """A directory on disk (a working copy, or any folder laid out like the GitOps repo)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._ids: dict[str, str] = {}

    def paths(self, prefix: str = "") -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        out = []
        for p in base.rglob("*"):
            rel = p.relative_to(self.root)
            if rel.parts and rel.parts[0] == ".git":
                continue
            if p.is_file() and not p.is_symlink():
                out.append(rel.as_posix())
        return sorted(out)

    def read(self, path: str) -> bytes:
        full = self.root / path
        if full.is_symlink() or not full.is_file():
            raise FileNotFoundError(path)
        return full.read_bytes()

    def blob_id(self, path: str) -> str:
        if path not in self._ids:
            self._ids[path] = blob_id(self.read(path))
        return self._ids[path]


class GitTree:
    """The tree of one commit, read with ``git ls-tree`` and ``git cat-file --batch``.

    Reading goes through two long-lived git processes rather than one call per file, which
    matters at 10,000 models.
    """

    def __init__(self, git_dir: Path, rev: str) -> None:
        self.git_dir = git_dir
        self.rev = rev
        self._entries: dict[str, str] = {}
        out = self._git("ls-tree", "-r", "-z", "--full-tree", rev)
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, path = record.partition(b"\t")
            mode, kind, oid = meta.split(b" ")
            if kind == b"blob" and mode != b"120000":
                self._entries[path.decode()] = oid.decode()
        self._sorted = sorted(self._entries)
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def _git(self, *args: str) -> bytes:
        try:
            return subprocess.run(
                ["git", "--git-dir", str(self.git_dir), *args],
                check=True,
                capture_output=True,
            ).stdout
        except subprocess.CalledProcessError as err:
            raise GitWriteError(
                f"git {' '.join(args[:2])} failed: {err.stderr.decode(errors='replace').strip()}"
            ) from err

    def paths(self, prefix: str = "") -> list[str]:
        if not prefix:
            return list(self._sorted)
        head = prefix.rstrip("/") + "/"
        return [p for p in self._sorted if p.startswith(head)]

    def blob_id(self, path: str) -> str:
        try:
            return self._entries[path]
        except KeyError:
            raise FileNotFoundError(path) from None

    def read(self, path: str) -> bytes:
        oid = self.blob_id(path)
        with self._lock:
            proc = self._batch()
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(oid.encode() + b"\n")
            proc.stdin.flush()
            header = proc.stdout.readline()
            parts = header.split()
            if len(parts) != 3:
                raise GitWriteError(f"git cat-file could not read {path} ({header!r})")
            data = proc.stdout.read(int(parts[2]))
            proc.stdout.read(1)  # the newline after each object
            return data

    def _batch(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                ["git", "--git-dir", str(self.git_dir), "cat-file", "--batch"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        return self._proc

    def close(self) -> None:
        """Stop the reader process (also stopped when the tree is garbage-collected)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()

    def __del__(self) -> None:
        # At interpreter shutdown anything may already be gone; there is nothing left to do.
        with contextlib.suppress(Exception):
            self.close()

    def read_many(self, paths: Iterable[str]) -> dict[str, bytes]:
        """Contents of many files (one long-lived ``git cat-file --batch`` reader)."""
        return {path: self.read(path) for path in paths}


class OverlayTree:
    """A tree with some files replaced or deleted in memory (renders that build on each other)."""

    def __init__(self, base: Tree) -> None:
        self.base = base
        self.overrides: dict[str, bytes | None] = {}

    def update(self, files: dict[str, bytes | None]) -> None:
        self.overrides.update(files)

    def paths(self, prefix: str = "") -> list[str]:
        head = prefix.rstrip("/") + "/" if prefix else ""
        found = set(self.base.paths(prefix))
        for path, data in self.overrides.items():
            if data is None:
                found.discard(path)
            elif path.startswith(head):
                found.add(path)
        return sorted(found)

    def read(self, path: str) -> bytes:
        if path in self.overrides:
            data = self.overrides[path]
            if data is None:
                raise FileNotFoundError(path)
            return data
        return self.base.read(path)

    def blob_id(self, path: str) -> str:
        if path in self.overrides:
            return blob_id(self.read(path))
        return self.base.blob_id(path)
