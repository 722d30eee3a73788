"""A commit's file listing is kept for the next reader of the same commit (`GitTree(listings=)`).

A pass over 10,000 models lists 40,000 files; loading a kept listing takes a sixth of the time
(bench/scale.py). What must hold: the same files as listing anew, never a listing of another
commit, and a damaged file costs only time.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gitops_helpers import Remote

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
    assert listed == [first, second]
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
