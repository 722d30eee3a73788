"""The GitHost protocol: what the reconciler asks of a Git host about pull requests.

Every host (local bare remote, GitHub, GitLab, Gitea) implements these few methods with the same
meaning, so the reconcile pass never knows which host it talks to. Branches are pushed by
`gitops.repo` with plain git; a host only manages the pull request that points at a branch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, TypeVar, runtime_checkable

from gitops_rollout.errors import RolloutError

_T = TypeVar("_T")
_R = TypeVar("_R")


class PullState(StrEnum):
    OPEN = "open"
    MERGED = "merged"
    CLOSED = "closed"
    """Closed without merging: a human veto."""


@dataclass(frozen=True)
class PullRequest:
    """A pull (merge) request as the host reports it."""

    number: int
    head: str
    """The head branch name, e.g. ``gitops-rollout/prod/modelmesh-serving/wisdom``."""
    base: str
    title: str
    body: str
    state: PullState
    head_sha: str
    """Commit the head branch pointed at when the host last saw it."""
    merge_sha: str | None = None
    """The merge (or squash) commit on the base branch, when merged."""
    url: str = ""
    labels: tuple[str, ...] = ()
    mergeable: bool | None = None
    """What the host said when it reported this pull request; None when it did not compute
    it (listings on GitHub and the local host never do). Ask `GitHost.mergeable` for now."""
    checks_passed: bool | None = None
    """Required checks and approvals met; None when the host does not say."""


@dataclass(frozen=True)
class PullRequestDraft:
    """What the reconciler wants a pull request to say."""

    head: str
    base: str
    title: str
    body: str
    labels: tuple[str, ...] = ()
    reviewers: tuple[str, ...] = ()


@dataclass(frozen=True)
class MergeResult:
    merged: bool
    merge_sha: str | None = None
    reason: str = ""
    """Why it was not merged (not mergeable, checks pending, conflict), for the log and PR."""
    queued: bool = False
    """The host accepted an auto-merge that completes later (GitHub auto-merge, GitLab MWPS)."""


@dataclass
class HostCapabilities:
    comments: bool = True
    auto_merge: bool = False
    extra: dict[str, str] = field(default_factory=dict)


class GitHost(Protocol):
    """Pull requests on one repository of one Git host.

    Every method raises `errors.HostError` when the host cannot be reached or refuses; HTTP
    libraries' own exceptions never escape an implementation.
    """

    def pulls_for_prefix(self, prefix: str, *, base: str) -> list[PullRequest]:
        """Every pull request (open, merged or closed) whose head starts with `prefix`.

        Newest first. Used once per pass to learn the state of all of the bot's branches.
        """
        ...

    def open_or_update(self, draft: PullRequestDraft) -> PullRequest:
        """Open a pull request for `draft.head`, or update the open one's title, body, labels.

        Never opens a second open pull request for the same head ("already exists" is adopted).
        Changing an open pull request cancels a merge queued on the host for its old content
        (`merge` queues again when the new content may be merged).
        """
        ...

    def mergeable(self, number: int) -> bool | None:
        """Whether open pull request `number` merges cleanly into its base now; None when the
        host has not computed it yet or the pull request is not open.

        One read of one pull request: listings do not say (GitHub computes it on a single
        read only), so the reconciler asks only about pull requests it means to leave alone.
        """
        ...

    def comment(self, number: int, body: str) -> None:
        """Add a comment to pull request `number`."""
        ...

    def comments(self, number: int) -> list[str]:
        """The bodies of pull request `number`'s comments, oldest first (every author).

        How the reconciler reports a hold or a human push once, not on every pass: it looks
        for the marker it left in its own last comment.
        """
        ...

    def merge(self, number: int, *, message: str) -> MergeResult:
        """Merge pull request `number` if the host allows it now (mergeable, checks, approvals).

        Returns merged=False with a reason, rather than raising, when the host says not yet.
        """
        ...

    def close(self, number: int, *, comment: str = "") -> None:
        """Close pull request `number` without merging (superseded or no longer needed)."""
        ...


@runtime_checkable
class BatchingHost(Protocol):
    """A host that opens, and merges, many pull requests at once for less than one at a time
    (the local host: a few git processes per batch instead of several per pull request).
    Results come in the order asked, with the error an item met in its place."""

    def open_many(self, drafts: Sequence[PullRequestDraft]) -> list[PullRequest | RolloutError]:
        """`GitHost.open_or_update` for each draft."""
        ...

    def merge_many(self, merges: Sequence[tuple[int, str]]) -> list[MergeResult | RolloutError]:
        """`GitHost.merge` for each (number, message), as if one after another."""
        ...

    def mergeable_many(self, numbers: Sequence[int]) -> list[bool | RolloutError | None]:
        """`GitHost.mergeable` for each number."""
        ...


def open_all(host: GitHost, drafts: Sequence[PullRequestDraft]) -> list[PullRequest | RolloutError]:
    """`host.open_or_update` for each draft, in one batch where the host offers it; a draft's
    error stands in its place and does not stop the others."""
    if isinstance(host, BatchingHost):
        return host.open_many(drafts)
    return _each(drafts, host.open_or_update)


def merge_all(host: GitHost, merges: Sequence[tuple[int, str]]) -> list[MergeResult | RolloutError]:
    """`host.merge` for each (number, message), in one batch where the host offers it; an
    error stands in its place and does not stop the others."""
    if isinstance(host, BatchingHost):
        return host.merge_many(merges)
    return _each(merges, lambda merge: host.merge(merge[0], message=merge[1]))


def mergeable_all(host: GitHost, numbers: Sequence[int]) -> list[bool | RolloutError | None]:
    """`host.mergeable` for each number, in one batch where the host offers it; an error
    stands in its place and does not stop the others."""
    if isinstance(host, BatchingHost):
        return host.mergeable_many(numbers)
    return _each(numbers, host.mergeable)


def _each(items: Sequence[_T], ask: Callable[[_T], _R]) -> list[_R | RolloutError]:
    """`ask` about each item in turn; an error stands in the item's place."""
    answers: list[_R | RolloutError] = []
    for item in items:
        try:
            answers.append(ask(item))
        except RolloutError as err:
            answers.append(err)
    return answers


def each_at_once(
    items: Sequence[_T], ask: Callable[[_T], _R], *, at_once: int
) -> list[_R | RolloutError]:
    """`_each` with up to `at_once` items asked at the same time, on threads: for questions
    that mostly wait for a git process (a wait that releases the GIL). Answers come in the
    order of `items`, an error in its item's place."""
    if at_once < 2 or len(items) < 2:
        return _each(items, ask)
    with ThreadPoolExecutor(max_workers=min(at_once, len(items))) as pool:
        answers = pool.map(lambda item: _each([item], ask), items)
        return [answer for [answer] in answers]
