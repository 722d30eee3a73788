"""Change sets: only what differs, in path order, with a JSON patch per YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gitops_helpers import Remote

from gitops_rollout.gitops.changeset import ChangeKind, ChangeSet, FileChange, build_many
from gitops_rollout.tree import DirTree, GitTree

ROUTING = "clusters/prod/ml/wisdom/rollout/routing.yaml"


@pytest.fixture
def tree(remote: Remote) -> GitTree:
    return GitTree(remote.path, "main")


def test_identical_content_is_an_empty_change_set(tree: GitTree, remote: Remote) -> None:
    cs = ChangeSet.build(tree, {ROUTING: remote.show("main", ROUTING), "no/such/file": None})
    assert not cs
    assert cs.summary() == "no changes"
    assert cs.json_patches() == {}


def test_kinds_old_and_new_bytes_in_path_order(tree: GitTree, remote: Remote) -> None:
    cs = ChangeSet.build(
        tree,
        {
            ROUTING: b"kind: VirtualService\nspec: {w: 10}\n",
            "clusters/prod/ml/wisdom/rollout/kustomization.yaml": b"resources: [routing.yaml]\n",
            "clusters/prod/ml/iris/v1.yaml": None,
        },
    )
    assert [(c.path, c.kind) for c in cs] == [
        ("clusters/prod/ml/iris/v1.yaml", ChangeKind.DELETED),
        ("clusters/prod/ml/wisdom/rollout/kustomization.yaml", ChangeKind.ADDED),
        (ROUTING, ChangeKind.MODIFIED),
    ]
    modified = cs.changes[2]
    assert modified.old == remote.show("main", ROUTING)
    assert modified.new == b"kind: VirtualService\nspec: {w: 10}\n"
    assert cs.summary() == "3 files (1 added, 1 modified, 1 deleted)"


def test_same_desired_state_gives_the_same_change_set_and_digest(tree: GitTree) -> None:
    desired = {ROUTING: b"spec: {w: 25}\n", "a/b.yaml": b"x: 1\n"}
    first = ChangeSet.build(tree, desired)
    again = ChangeSet.build(tree, dict(reversed(list(desired.items()))))
    assert first == again
    assert first.digest() == again.digest()
    assert first.digest() != ChangeSet.build(tree, {ROUTING: b"spec: {w: 50}\n"}).digest()


def test_git_and_directory_trees_agree(tree: GitTree, remote: Remote, tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    for path in tree.paths():
        (checkout / path).parent.mkdir(parents=True, exist_ok=True)
        (checkout / path).write_bytes(tree.read(path))
    desired = {ROUTING: b"spec: {w: 5}\n", "clusters/prod/ml/iris/v1.yaml": None}
    assert ChangeSet.build(DirTree(checkout), desired) == ChangeSet.build(tree, desired)


def test_build_many_reads_changed_files_once_in_one_batch(tree: GitTree) -> None:
    reads: list[list[str]] = []

    class Counting:
        def paths(self, prefix: str = "") -> list[str]:
            return tree.paths(prefix)

        def read(self, path: str) -> bytes:
            raise AssertionError("read one by one")

        def blob_id(self, path: str) -> str:
            return tree.blob_id(path)

        def read_many(self, paths: list[str]) -> dict[str, bytes]:
            reads.append(list(paths))
            return tree.read_many(paths)

    unchanged = tree.read("clusters/prod/ml/iris/v1.yaml")
    sets = build_many(
        Counting(),
        {
            "wisdom": {ROUTING: b"spec: {w: 5}\n"},
            "iris": {"clusters/prod/ml/iris/v1.yaml": unchanged},
            "fresh": {"clusters/prod/ml/new/rollout/routing.yaml": b"a: 1\n"},
        },
    )
    assert reads == [[ROUTING]]
    assert [len(sets[k]) for k in ("wisdom", "iris", "fresh")] == [1, 0, 1]


PATCH_CASES: list[tuple[str, bytes | None, bytes | None, list[dict[str, Any]] | None]] = [
    (
        "weight change in the second document",
        b"kind: A\n---\nkind: VirtualService\nspec: {w: 10}\n",
        b"kind: A\n---\nkind: VirtualService\nspec: {w: 25}\n",
        [{"op": "replace", "path": "/1/spec/w", "value": 25}],
    ),
    ("new file", None, b"a: 1\n", [{"op": "add", "path": "/0", "value": {"a": 1}}]),
    ("deleted file", b"a: 1\n", None, [{"op": "remove", "path": "/0"}]),
    (
        "timestamps become strings",
        b"at: 1\n",
        b"at: 2025-03-01T09:00:00Z\n",
        [{"op": "replace", "path": "/0/at", "value": "2025-03-01T09:00:00+00:00"}],
    ),
    ("not YAML", b"x", b"y", None),
    ("unparseable YAML", b"a: 1\n", b"a: [1\n", None),
]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [case[1:] for case in PATCH_CASES],
    ids=[case[0] for case in PATCH_CASES],
)
def test_json_patch(
    old: bytes | None, new: bytes | None, expected: list[dict[str, Any]] | None
) -> None:
    path = "x.txt" if expected is None and old == b"x" else "f.yaml"
    assert FileChange(path, old, new).json_patch() == expected


@pytest.mark.parametrize(
    "path",
    ["", "/etc/passwd", "a/../b", "./a", "a//b", ".git/config", "a/.GIT/x", "a\\b", "a\nb", "a/"],
    ids=repr,
)
def test_paths_outside_the_repository_are_refused(tree: GitTree, path: str) -> None:
    with pytest.raises(ValueError, match="is not a relative POSIX file path inside the repository"):
        ChangeSet.build(tree, {path: b"x"})
