"""A commit's file listing is kept for the next reader of the same commit (`GitTree(listings=)`).

A pass over 10,000 models lists 40,000 files; loading a kept listing takes a sixth of the time
(bench/scale.py), and a new commit's listing is made from the last kept one and the two
commits' differences. What must hold: the same files as listing anew (links and gitlinks left
out), never a listing of another commit, and a damaged file costs only time.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from gitops_helpers import Remote, git

from gitops_rollout.tree import GitTree


@pytest.fixture
def listed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The revisions GitTree lists with git from now on."""
    seen: list[str] = []
    real = GitTree._list

    def counting(self: GitTree, rev: str) -> dict[str, str]:
        seen.append(rev)
        return real(self, rev)

    monkeypatch.setattr(GitTree, "_list", counting)
    return seen


def test_a_kept_listing_is_the_commits_listing(
    remote: Remote, tmp_path: Path, listed: list[str]
) -> None:
    first = remote.sha("main")
    kept = tmp_path / "listings"
    fresh = GitTree(remote.path, first, listings=kept)
    again = GitTree(remote.path, first, listings=kept)
    assert listed == [first], "the second reader loads the kept listing"
    assert again.paths() == fresh.paths() and again.paths()
    assert all(again.blob_id(p) == fresh.blob_id(p) for p in fresh.paths())
    assert again.read(fresh.paths()[0]) == fresh.read(fresh.paths()[0])
    # Another commit has its own listing, with its own files.
    second = remote.commit({"docs/new.md": "hello\n"})
    newer = GitTree(remote.path, second, listings=kept)
    assert listed == [first], "made from the kept listing and the commits' differences"
    assert "docs/new.md" in newer.paths() and "docs/new.md" not in again.paths()


def test_branch_names_are_never_kept(remote: Remote, tmp_path: Path, listed: list[str]) -> None:
    kept = tmp_path / "listings"
    GitTree(remote.path, "main", listings=kept)
    remote.commit({"docs/new.md": "hello\n"})
    moved = GitTree(remote.path, "main", listings=kept)
    assert listed == ["main", "main"] and "docs/new.md" in moved.paths()
    assert not kept.exists() or not list(kept.iterdir())


@pytest.mark.parametrize("damage", [b"", b"not a pickle", None])
def test_a_damaged_or_foreign_listing_is_listed_again(
    remote: Remote, tmp_path: Path, listed: list[str], damage: bytes | None
) -> None:
    rev = remote.sha("main")
    kept = tmp_path / "listings"
    expected = GitTree(remote.path, rev, listings=kept).paths()
    path = kept / f"{rev}.listing"
    if damage is None:
        # A listing written for another commit, renamed to this one's name.
        other = remote.commit({"docs/new.md": "hello\n"})
        GitTree(remote.path, other, listings=kept)
        (kept / f"{other}.listing").replace(path)
    else:
        path.write_bytes(damage)
    listed.clear()
    assert GitTree(remote.path, rev, listings=kept).paths() == expected
    assert listed == [rev]


def test_only_the_newest_listings_are_kept(remote: Remote, tmp_path: Path) -> None:
    kept = tmp_path / "listings"
    revs = [remote.commit({f"docs/{n}.md": f"{n}\n"}) for n in range(6)]
    for rev in revs:
        GitTree(remote.path, rev, listings=kept)
        time.sleep(0.02)  # newest by modification time: apart by more than its granularity
    assert sorted(p.stem for p in kept.glob("*.listing")) == sorted(revs[-4:])


def commit_of(remote: Remote, tmp_path: Path, files: dict[str, tuple[str, bytes | str]]) -> str:
    """A commit of exactly `files` ({path: (mode, content)}; a gitlink's content is the commit
    it names), made with plumbing so links and gitlinks are what the test says."""
    bare = str(remote.path)
    index = tmp_path / "index"
    index.unlink(missing_ok=True)
    env = {**os.environ, "GIT_INDEX_FILE": str(index)}
    for path, (mode, content) in files.items():
        if mode == "160000":
            oid = str(content)
        else:
            data = content.encode() if isinstance(content, str) else content
            oid = (
                subprocess.run(
                    ["git", "--git-dir", bare, "hash-object", "-w", "--stdin"],
                    input=data,
                    capture_output=True,
                    check=True,
                )
                .stdout.decode()
                .strip()
            )
        subprocess.run(
            [
                "git",
                "--git-dir",
                bare,
                "update-index",
                "--add",
                "--cacheinfo",
                f"{mode},{oid},{path}",
            ],
            env=env,
            check=True,
        )
    tree = (
        subprocess.run(
            ["git", "--git-dir", bare, "write-tree"], env=env, capture_output=True, check=True
        )
        .stdout.decode()
        .strip()
    )
    return git("--git-dir", bare, "commit-tree", tree, "-m", "plumbing").strip()


def test_a_listing_made_from_the_last_kept_one_is_the_commits_listing(
    remote: Remote, tmp_path: Path, listed: list[str]
) -> None:
    gitlink = remote.sha("main")
    before = {
        "a/kept.yaml": ("100644", "kept\n"),
        "a/changed.yaml": ("100644", "old\n"),
        "a/deleted.yaml": ("100644", "gone soon\n"),
        "b/c/deep.yaml": ("100644", "deep\n"),
        "run.sh": ("100755", "#!/bin/sh\n"),
        "link-then-file": ("120000", "a/kept.yaml"),
        "file-then-link": ("100644", "a file\n"),
        "vendor/sub": ("160000", gitlink),
    }
    after = {
        "a/kept.yaml": ("100644", "kept\n"),
        "a/changed.yaml": ("100644", "new\n"),
        "b/c/deep.yaml": ("100755", "deep\n"),  # only its mode changed
        "d/new.yaml": ("100644", "new file\n"),
        "run.sh": ("100644", "#!/bin/sh\n"),
        "link-then-file": ("100644", "now a file\n"),
        "file-then-link": ("120000", "a/kept.yaml"),
        "vendor/other": ("160000", gitlink),
        "vendor/sub/inside.yaml": ("100644", "a folder where a gitlink was\n"),
    }
    first, second = commit_of(remote, tmp_path, before), commit_of(remote, tmp_path, after)
    kept = tmp_path / "listings"
    GitTree(remote.path, first, listings=kept)
    made = GitTree(remote.path, second, listings=kept)
    assert listed == [first], "the second listing is made from the first and their diff"
    fresh = GitTree(remote.path, second)
    assert made._entries == fresh._entries and made.paths() == fresh.paths()
    assert "file-then-link" not in made.paths() and "link-then-file" in made.paths()
    assert "vendor/sub/inside.yaml" in made.paths() and "vendor/other" not in made.paths()
    # And it is kept for the next reader of that commit.
    listed.clear()
    assert GitTree(remote.path, second, listings=kept).paths() == fresh.paths()
    assert listed == []


def test_a_kept_listing_of_a_commit_git_no_longer_has_is_not_used(
    remote: Remote, tmp_path: Path, listed: list[str]
) -> None:
    kept = tmp_path / "listings"
    rev = remote.sha("main")
    expected = GitTree(remote.path, rev, listings=kept).paths()
    gone = "0123456789abcdef" * 2 + "01234567"
    (kept / f"{rev}.listing").replace(kept / f"{gone}.listing")
    (kept / f"{gone}.listing").write_bytes(
        (kept / f"{gone}.listing").read_bytes().replace(rev.encode(), gone.encode())
    )
    listed.clear()
    assert GitTree(remote.path, rev, listings=kept).paths() == expected
    assert listed == [rev]
