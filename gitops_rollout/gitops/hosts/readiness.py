"""Whether a pull request may be merged now, decided the same way on every host.

Each host reads its own wire fields (GitHub's mergeable_state and checks, GitLab's
detailed_merge_status and pipeline, Gitea's mergeable flag and commit status) into a
`Readiness`; `judge` turns it into one verdict worded the same everywhere, so a refusal reads
alike whichever host is behind it. Talking to the host stays in the host modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gitops_rollout.gitops.hosts.base import PullState


class Checks(StrEnum):
    """The combined state of the required checks (CI pipelines, commit statuses, check runs)."""

    PASSED = "passed"
    PENDING = "pending"
    FAILED = "failed"
    NONE = "none"
    """No checks reported for the head commit."""


class Action(StrEnum):
    MERGE = "merge"
    QUEUE = "queue"
    """Ask the host to merge once the pending checks pass (auto-merge, MWPS)."""
    WAIT = "wait"
    """Do not merge now; the reason says what is missing."""


@dataclass(frozen=True)
class Readiness:
    """What a host says about an open pull request, in host-neutral terms."""

    base: str
    state: PullState = PullState.OPEN
    draft: bool = False
    conflicts: bool | None = False
    """None while the host is still computing mergeability."""
    behind: bool = False
    """The base moved and the host requires the head to be up to date before merging."""
    checks: Checks = Checks.NONE
    approved: bool | None = True
    """False when required approvals are missing; None when the host only says so at merge."""
    queued: bool = False
    """An auto-merge is already requested on the host."""
    blocked_by: str = ""
    """Any other rule of the host that blocks the merge, in the host's words."""
    detail: str = ""
    """The host's own status words, appended to reasons for whoever debugs a refusal."""


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str = ""


def judge(readiness: Readiness, *, auto_merge: bool) -> Verdict:
    """Merge, queue or wait, with the reason a human reads in the log or the PR comment."""
    r = readiness
    suffix = f" ({r.detail})" if r.detail else ""

    def wait(reason: str) -> Verdict:
        return Verdict(Action.WAIT, reason + suffix)

    if r.state is PullState.CLOSED:
        return wait("the pull request is closed without merging")
    if r.state is PullState.MERGED:
        return wait("the pull request is already merged")
    if r.draft:
        return wait("the pull request is a draft")
    if r.conflicts is None:
        return wait("the host is still computing mergeability; the next pass will look again")
    if r.conflicts:
        return wait(
            f"the head branch conflicts with {r.base}; it must be rendered again on {r.base}"
        )
    if r.behind:
        return wait(f"the head branch is behind {r.base} and the host requires it up to date")
    if r.checks is Checks.FAILED:
        return wait("checks failed")
    if r.blocked_by:
        return wait(f"blocked by the host: {r.blocked_by}")
    if r.checks is Checks.PENDING:
        if r.queued:
            return Verdict(Action.QUEUE, "checks pending; the merge is already queued on the host")
        if auto_merge:
            return Verdict(Action.QUEUE, "checks pending; asked the host to merge when they pass")
        return wait("checks pending")
    if r.approved is False:
        return wait("waiting for a required approval")
    return Verdict(Action.MERGE)
