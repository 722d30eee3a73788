"""The write stage end to end, the way a pass drives it: change set -> commit -> push -> PR.

A pass can die between any two steps; the next one must reach the same state, with one PR.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gitops_helpers import BOT, Clock, Remote, transition

from gitops_rollout.gitops import pr_body
from gitops_rollout.gitops.changeset import ChangeSet
from gitops_rollout.gitops.hosts.base import PullRequest, PullState
from gitops_rollout.gitops.hosts.local import LocalHost
from gitops_rollout.gitops.repo import (
    BRANCH_PREFIX,
    CommitRequest,
    PushOutcome,
    PushResult,
    Workspace,
    branch_name,
)

ROUTING = "clusters/prod-east/default/fashionmnist/rollout/routing.yaml"
BRANCH = branch_name(cluster="prod-east", namespace="default", model="fashionmnist")


def routing(weight: int) -> dict[str, bytes | None]:
    return {ROUTING: f"kind: VirtualService\nspec: {{candidate: {weight}}}\n".encode()}


@dataclass
class Pass:
    """The write half of one reconcile pass, split into steps a test can stop between."""

    ws: Workspace
    host: LocalHost
    now: datetime
    step: int = 1

    def plan(self, desired: dict[str, bytes | None]) -> tuple[CommitRequest, str]:
        self.ws.fetch()
        t = transition(step=self.step)
        digest = pr_body.decision_digest(t)
        changes = ChangeSet.build(self.ws.tree(), desired)
        message = pr_body.commit_message(t, changes, digest=digest)
        return CommitRequest(BRANCH, changes, message), digest

    def open_pr(self, request: CommitRequest, digest: str) -> PullRequest:
        t = transition(step=self.step)
        draft = pr_body.render(t, request.changes, head=BRANCH, base=self.ws.base, digest=digest)
        return self.host.open_or_update(draft)

    def run(self, desired: dict[str, bytes | None]) -> tuple[PushResult, PullRequest | None]:
        request, digest = self.plan(desired)
        [result] = self.ws.publish([request], now=self.now)
        wants_pr = result.outcome in (PushOutcome.PUSHED, PushOutcome.UNCHANGED)
        return result, self.open_pr(request, digest) if wants_pr else None


def open_workspace(remote: Remote, tmp_path: Path) -> Workspace:
    return Workspace.open(str(remote.path), cache_dir=tmp_path / "cache", identity=BOT)


def pulls(host: LocalHost) -> list[PullRequest]:
    return host.pulls_for_prefix(BRANCH_PREFIX, base="main")


def test_nothing_to_change_means_no_commit_no_push_no_pr(
    remote: Remote, host: LocalHost, clock: Clock, tmp_path: Path
) -> None:
    remote.commit(routing(5))
    before = remote.refs()
    with open_workspace(remote, tmp_path) as ws:
        result, pr = Pass(ws, host, clock.now).run(routing(5))
    assert (result.outcome, pr) == (PushOutcome.EMPTY, None)
    assert remote.refs() == before
    assert pulls(host) == []


def test_rerun_opens_no_second_pull_request(
    remote: Remote, host: LocalHost, clock: Clock, tmp_path: Path
) -> None:
    with open_workspace(remote, tmp_path) as ws:
        first, pr1 = Pass(ws, host, clock.now).run(routing(10))
        again, pr2 = Pass(ws, host, clock.tick()).run(routing(10))
    assert (first.outcome, again.outcome) == (PushOutcome.PUSHED, PushOutcome.UNCHANGED)
    assert pr1 is not None and pr2 is not None and pr1.number == pr2.number
    assert [p.number for p in pulls(host)] == [pr1.number]
    assert remote.head(BRANCH) == first.sha


def test_killed_between_commit_and_push(
    remote: Remote, host: LocalHost, clock: Clock, tmp_path: Path
) -> None:
    with open_workspace(remote, tmp_path) as ws:
        p = Pass(ws, host, clock.now)
        request, _ = p.plan(routing(10))
        ws.commit([request], now=clock.now)
    assert remote.head(BRANCH) is None and pulls(host) == []
    with open_workspace(remote, tmp_path) as ws:
        result, pr = Pass(ws, LocalHost(remote.path, clock=clock), clock.tick()).run(routing(10))
    assert result.outcome is PushOutcome.PUSHED and pr is not None
    assert remote.show(BRANCH, ROUTING) == routing(10)[ROUTING]
    assert [p.number for p in pulls(host)] == [pr.number]


def test_killed_between_push_and_pull_request(
    remote: Remote, host: LocalHost, clock: Clock, tmp_path: Path
) -> None:
    with open_workspace(remote, tmp_path) as ws:
        p = Pass(ws, host, clock.now)
        request, _ = p.plan(routing(10))
        [pushed] = ws.publish([request], now=clock.now)
    assert pushed.outcome is PushOutcome.PUSHED and pulls(host) == []
    with open_workspace(remote, tmp_path) as ws:
        result, pr = Pass(ws, LocalHost(remote.path, clock=clock), clock.tick()).run(routing(10))
        _, again = Pass(ws, LocalHost(remote.path, clock=clock), clock.tick()).run(routing(10))
    assert result.outcome is PushOutcome.UNCHANGED
    assert remote.head(BRANCH) == pushed.sha  # not force-pushed again
    assert pr is not None and again is not None and pr.number == again.number
    assert pr.head_sha == pushed.sha
    assert len(pulls(host)) == 1


def test_a_restart_keeps_branches_records_and_pull_requests(
    remote: Remote, host: LocalHost, clock: Clock, tmp_path: Path
) -> None:
    with open_workspace(remote, tmp_path) as ws:
        _, pr = Pass(ws, host, clock.now).run(routing(10))
    assert pr is not None
    # The bot's identity, but not the bot's push: only the restarted cache's records tell.
    remote.commit({ROUTING: "spec: {candidate: 12}\n"}, branch=BRANCH, author=(BOT.name, BOT.email))
    with open_workspace(remote, tmp_path) as ws:
        result, again = Pass(ws, LocalHost(remote.path, clock=clock), clock.tick()).run(routing(20))
    assert result.outcome is PushOutcome.HUMAN_EDITED and again is None
    assert [p.number for p in pulls(LocalHost(remote.path, clock=clock))] == [pr.number]


def test_merged_step_starts_the_clock_and_leaves_nothing_to_do(
    remote: Remote, host: LocalHost, clock: Clock, tmp_path: Path
) -> None:
    with open_workspace(remote, tmp_path) as ws:
        p = Pass(ws, host, clock.now)
        request, digest = p.plan(routing(10))
        ws.publish([request], now=clock.now)
        pr = p.open_pr(request, digest)
        merged_at = clock.tick(300)
        result = host.merge(pr.number, message=f"Merge pull request #{pr.number}\n\n{pr.title}")
        assert result.merged
        ws.fetch()
        assert ws.merge_time([ROUTING]) == {ROUTING: merged_at}
        found = ws.merged_with_trailer(pr_body.TRAILER_DECISION, [digest])
        assert found[digest].sha == result.merge_sha and found[digest].time == merged_at
        after, next_pr = Pass(ws, host, clock.tick()).run(routing(10))
    assert (after.outcome, next_pr) == (PushOutcome.EMPTY, None)
    assert [(p.number, p.state) for p in pulls(host)] == [(pr.number, PullState.MERGED)]


def test_next_step_after_a_merge_opens_a_new_pull_request(
    remote: Remote, host: LocalHost, clock: Clock, tmp_path: Path
) -> None:
    with open_workspace(remote, tmp_path) as ws:
        _, pr = Pass(ws, host, clock.now).run(routing(10))
        assert pr is not None
        host.merge(pr.number, message="merge")
        result, second = Pass(ws, host, clock.tick(600), step=2).run(routing(20))
    assert result.outcome is PushOutcome.PUSHED and second is not None
    assert second.number == pr.number + 1
    # The new step is one commit on top of the merged one, not a pile of stale commits.
    assert remote.log(f"main..{BRANCH}", "%P") == [remote.sha("main")]
    assert host.show(pr.number).state is PullState.MERGED
