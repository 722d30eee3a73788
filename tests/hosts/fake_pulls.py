"""The pull requests a fake Git host holds, with the host-neutral rules the three fakes share.

Each fake (fake_github, fake_gitlab, fake_gitea) renders these records in its own API's JSON
and status codes; tests arrange states here (checks pending, conflicts, a human closing a PR).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


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

    def add(self, head: str, base: str = "main", **fields: object) -> FakePull:
        number = max(self.pulls, default=0) + 1
        pull = FakePull(
            number=number,
            head=head,
            base=base,
            title=str(fields.pop("title", f"rollout {head}")),
            body=str(fields.pop("body", "")),
            head_sha=fake_sha(f"{head}-{number}"),
        )
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

    def merge(self, pull: FakePull, message: str) -> str:
        pull.state = "merged"
        pull.merge_sha = fake_sha(f"merge-{pull.number}")
        pull.merge_message = message
        return pull.merge_sha

    def by_sha(self, sha: str) -> FakePull | None:
        return next((p for p in self.pulls.values() if p.head_sha == sha), None)
