"""The pull requests a fake Git host holds, with the host-neutral rules the three fakes share.

Each fake (fake_github, fake_gitlab, fake_gitea) renders these records in its own API's JSON
and status codes; tests arrange states here (checks pending, conflicts, a human closing a PR).
With a `fake_git.GitRemote` (`PullStore.repo`) the records follow a real repository: head shas
and mergeability come from its branches, and a merge is a real merge commit on the base.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .fake_git import GitRemote


def fake_sha(seed: str) -> str:
    return hashlib.sha1(seed.encode(), usedforsecurity=False).hexdigest()


@dataclass
class FakePull:
    number: int
    head: str
    base: str
    title: str
    body: str
    head_sha: str
    state: str = "open"
    """open, closed or merged."""
    merge_sha: str | None = None
    merge_message: str = ""
    merged_by: str | None = None
    labels: list[str] = field(default_factory=list)
    reviewers: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    mergeable: bool | None = True
    """None while the host is still computing it."""
    checks: str = "none"
    """none, pending, success or failure."""
    approved: bool = True
    draft: bool = False
    fork: bool = False
    auto_merge: bool = False

    def blocked(self) -> str:
        """Why the host would refuse a merge now ('' when it would merge)."""
        if self.state != "open":
            return "closed"
        if self.draft:
            return "draft"
        if self.mergeable is None:
            return "checking"
        if not self.mergeable:
            return "conflict"
        if self.checks in ("pending", "failure"):
            return self.checks
        if not self.approved:
            return "approval"
        return ""


class PullStore:
    def __init__(self) -> None:
        self.pulls: dict[int, FakePull] = {}
        self.racing_heads: set[str] = set()
        """Heads for which another writer opens a pull request just before our create."""
        self.repo: GitRemote | None = None
        self.new_checks = "none"
        """The checks state of pull requests opened from now on (CI starting on a new PR)."""

    def sync(self) -> None:
        """Open pull requests as the host sees them now in `repo`: following their branch,
        closed when it is deleted, merged when it reached the base by other means."""
        if self.repo is None:
            return
        for pull in self.pulls.values():
            if pull.state != "open" or pull.fork:
                continue
            head = self.repo.head(pull.head)
            if head is None:
                pull.state = "closed"
                continue
            pull.head_sha = head
            if self.repo.contains(pull.base, head):
                pull.state, pull.merge_sha = "merged", self.repo.head(pull.base)
            else:
                pull.mergeable = self.repo.mergeable(pull.base, head)

    def add(self, head: str, base: str = "main", **fields: object) -> FakePull:
        number = max(self.pulls, default=0) + 1
        pull = FakePull(
            number=number,
            head=head,
            base=base,
            title=str(fields.pop("title", f"rollout {head}")),
            body=str(fields.pop("body", "")),
            head_sha=(self.repo.head(head) if self.repo else None) or fake_sha(f"{head}-{number}"),
        )
        pull.checks = self.new_checks
        for name, value in fields.items():
            setattr(pull, name, value)
        if pull.state == "merged" and pull.merge_sha is None:
            pull.merge_sha = fake_sha(f"merge-{number}")
        self.pulls[number] = pull
        return pull

    def open_for(self, head: str, base: str | None = None) -> FakePull | None:
        for pull in self.pulls.values():
            if (
                pull.head == head
                and pull.state == "open"
                and not pull.fork
                and base in (None, pull.base)
            ):
                return pull
        return None

    def open_pulls(self, head: str) -> list[FakePull]:
        return [p for p in self.pulls.values() if p.head == head and p.state == "open"]

    def create(self, head: str, base: str, title: str, body: str) -> tuple[FakePull, bool]:
        """The new pull request and True, or the already open one and False."""
        if head in self.racing_heads:
            self.racing_heads.discard(head)
            self.add(head, base, title="opened by another writer", body="theirs")
        existing = self.open_for(head, base)
        if existing is not None:
            return existing, False
        return self.add(head, base, title=title, body=body), True

    def merge(self, pull: FakePull, message: str, *, by: str = "gitops-rollout-bot") -> str:
        sha = fake_sha(f"merge-{pull.number}")
        if self.repo is not None:
            merged = self.repo.merge(
                base=pull.base, head_sha=pull.head_sha, message=message or pull.title, by=by
            )
            # Callers check `blocked()` first, and `sync` keeps `mergeable` current.
            assert merged is not None, f"#{pull.number} conflicts with {pull.base}"
            sha = merged
        pull.state = "merged"
        pull.merge_sha = sha
        pull.merge_message = message
        pull.merged_by = by
        return sha

    def finish_checks(self, state: str) -> list[FakePull]:
        """CI finishes on every open pull request; those with auto-merge on merge, as the host
        does it (as the account that turned it on). The merged ones."""
        merged = []
        for pull in list(self.pulls.values()):
            if pull.state != "open":
                continue
            pull.checks = state
            if pull.auto_merge and not pull.blocked():
                self.merge(pull, pull.title)
                merged.append(pull)
        return merged

    def by_sha(self, sha: str) -> FakePull | None:
        return next((p for p in self.pulls.values() if p.head_sha == sha), None)
