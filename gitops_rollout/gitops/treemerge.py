"""Merges with nothing to merge: applying a pull request's changes to its base in Python.

A pull request whose changes (its one commit against its parent) touch no path that its base
branch changed since that parent merges to exactly the base's tree with those changes applied:
no file needs a three-way merge. `git merge-tree` would answer the same at the cost of a git
process per pull request, which was most of what merging a pass's fifty pull requests cost the
local host. Anything less plain goes to `git merge-tree` (`LocalHost`): a path touched on both
sides (or a file on one side where the other has a folder), and any deletion, since git may
take a deletion and an addition for a rename (of a file or a whole folder) and merge
accordingly.

`apply` also builds the bot's own commits on the base (`Workspace`): a pass's few change sets
applied to the base's trees.

Pure: trees are read and written through the functions the caller passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

TREE_MODE = "40000"
"""How git writes a folder's mode inside a tree object."""


@dataclass(frozen=True)
class Change:
    """One path a diff changes: its new mode and object, both empty when it is deleted."""

    path: str
    mode: str
    oid: str

    @property
    def deleted(self) -> bool:
        return not self.oid


def parse_diffs(out: bytes, count: int) -> list[list[Change]]:
    """The changes of each of `count` diffs in ``git diff-tree --stdin --always -r -z``
    output (one diff per input line, each after its commit id), in input order."""
    tokens = out.split(b"\0")
    diffs: list[list[Change]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith(b":"):
            if token.strip():
                diffs.append([])  # the commit id heading the next diff
            i += 1
            continue
        # ":<old mode> <new mode> <old oid> <new oid> <status>", then the path.
        _, mode, _, oid, status = token[1:].decode().split(" ")
        path = tokens[i + 1].decode(errors="surrogateescape")
        gone = status == "D"
        diffs[-1].append(Change(path, "" if gone else mode, "" if gone else oid))
        i += 2
    if len(diffs) != count:
        raise ValueError(f"git diff-tree gave {len(diffs)} diffs for {count} lines")
    return diffs


class Touched:
    """The paths one side changed, to tell whether another side's paths keep apart from them
    (`meets`) without comparing every pair: a base may have changed ten thousand paths."""

    def __init__(self, paths: Iterable[str] = ()) -> None:
        self.paths: set[str] = set()
        self.folders: set[str] = set()
        self.add(paths)

    def add(self, paths: Iterable[str]) -> None:
        for path in paths:
            self.paths.add(path)
            self.folders.update(_folders(path))

    def meets(self, paths: Iterable[str]) -> bool:
        """True when one of `paths` is a changed path, or lies below or above one."""
        return any(
            path in self.paths
            or path in self.folders
            or any(folder in self.paths for folder in _folders(path))
            for path in paths
        )


def _folders(path: str) -> Iterable[str]:
    """The folders `path` lies in: ``a``, ``a/b`` for ``a/b/c``."""
    return (path[:i] for i, c in enumerate(path) if c == "/")


def apply(
    tree: str,
    changes: Sequence[Change],
    *,
    read: Callable[[str], bytes],
    write: Callable[[bytes], str],
) -> str:
    """The id of `tree` with `changes` made, writing each new tree object with `write` and
    reading existing ones with `read` (their raw contents). ValueError when a change needs a
    folder where the tree has a file."""
    entries = dict(_entries(read(tree))) if tree else {}
    below: dict[str, list[Change]] = {}
    for change in changes:
        name, sep, rest = change.path.partition("/")
        if sep:
            below.setdefault(name, []).append(Change(rest, change.mode, change.oid))
        elif change.deleted:
            entries.pop(name, None)
        else:
            entries[name] = (change.mode, change.oid)
    for name, inner in below.items():
        mode, oid = entries.get(name, (TREE_MODE, ""))
        if mode != TREE_MODE:
            raise ValueError(f"{name} is a file where a change needs a folder")
        sub = apply(oid, inner, read=read, write=write)
        if sub:
            entries[name] = (TREE_MODE, sub)
        else:
            entries.pop(name, None)
    if not entries:
        return ""  # an empty folder is no entry at all
    return write(_serialise(entries))


def trees_along(
    tree: str,
    paths: Iterable[str],
    *,
    read_many: Callable[[Sequence[str]], Mapping[str, bytes]],
) -> dict[str, bytes]:
    """{id: contents} of every existing tree `apply` reads to change `paths` in `tree`: the
    folders of each path, read a level at a time with one `read_many` per level (a few calls
    instead of one per tree for `apply`'s `read`)."""
    below: dict[str, set[str]] = {}
    for path in paths:
        parts = path.split("/")
        for depth in range(len(parts) - 1):
            below.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
    found: dict[str, bytes] = {}
    level = {"": tree} if tree else {}
    while level:
        found.update(read_many([oid for oid in level.values() if oid not in found]))
        deeper = {}
        for folder, oid in level.items():
            names = below.get(folder)
            if not names:
                continue
            entries = dict(_entries(found[oid]))
            for name in names:
                mode, sub = entries.get(name, ("", ""))
                if mode == TREE_MODE:
                    deeper[f"{folder}/{name}" if folder else name] = sub
        level = deeper
    return found


def _entries(raw: bytes) -> Iterable[tuple[str, tuple[str, str]]]:
    """(name, (mode, hex id)) of each entry of a tree object's contents."""
    i = 0
    while i < len(raw):
        space = raw.index(b" ", i)
        nul = raw.index(b"\0", space)
        end = nul + 21  # SHA-1: 20 bytes
        name = raw[space + 1 : nul].decode(errors="surrogateescape")
        yield name, (raw[i:space].decode(), raw[nul + 1 : end].hex())
        i = end


def _serialise(entries: dict[str, tuple[str, str]]) -> bytes:
    """A tree object's contents, in git's order: by name, a folder as if its name ended in /."""

    def order(name: str) -> bytes:
        raw = name.encode(errors="surrogateescape")
        return raw + b"/" if entries[name][0] == TREE_MODE else raw

    return b"".join(
        entries[name][0].encode()
        + b" "
        + name.encode(errors="surrogateescape")
        + b"\0"
        + bytes.fromhex(entries[name][1])
        for name in sorted(entries, key=order)
    )
