"""The GitHost contract, checked the same way on GitHub, GitLab and Gitea against their fakes."""

from __future__ import annotations

import pytest

from gitops_rollout.errors import HostError
from gitops_rollout.gitops.hosts.base import PullState

from .conftest import HEAD, PREFIX, HostCase, draft


def test_open_applies_labels_and_reviewers(case: HostCase) -> None:
    pull = case.host.open_or_update(draft())

    stored = case.store.pulls[pull.number]
    assert (stored.head, stored.base, stored.title) == (HEAD, "main", draft().title)
    assert stored.body == draft().body
    assert stored.labels == ["gitops-rollout", "model:wisdom"]
    assert stored.reviewers == ["alice"]
    assert pull.state is PullState.OPEN
    assert pull.head_sha == stored.head_sha
    assert set(pull.labels) == {"gitops-rollout", "model:wisdom"}


def test_a_reviewer_the_host_rejects_does_not_fail_the_open(case: HostCase) -> None:
    if case.kind == "github":
        case.fake.unknown_reviewers.add("nobody")  # type: ignore[attr-defined]

    pull = case.host.open_or_update(draft(reviewers=("nobody",)))

    assert case.store.pulls[pull.number].state == "open"
    assert case.store.pulls[pull.number].reviewers == []


def test_pulls_for_prefix_lists_every_state_newest_first_across_pages(case: HostCase) -> None:
    store = case.store
    first = store.add(f"{PREFIX}a/one", state="merged")
    store.add("feature/unrelated")
    second = store.add(f"{PREFIX}b/two", state="closed")
    store.add(f"{PREFIX}c/fork", fork=True)
    store.add(f"{PREFIX}d/other-base", base="release")
    third = store.add(f"{PREFIX}e/three")

    pulls = case.host.pulls_for_prefix(PREFIX, base="main")

    assert [p.number for p in pulls] == [third.number, second.number, first.number]
    assert [p.state for p in pulls] == [PullState.OPEN, PullState.CLOSED, PullState.MERGED]
    assert pulls[2].merge_sha == first.merge_sha
    assert pulls[0].merge_sha is None and pulls[1].merge_sha is None
    # page_size is 2 in the tests: the listing needed several pages.
    lists = [
        r
        for r in case.fake.requests
        if r.method == "GET"
        and r.path.endswith("/merge_requests" if case.kind == "gitlab" else "/pulls")
    ]
    assert len(lists) >= 3


def test_open_or_update_updates_the_open_pull_request(case: HostCase) -> None:
    opened = case.host.open_or_update(draft())
    case.store.pulls[opened.number].labels.append("human-added")

    updated = case.host.open_or_update(
        draft(
            title="rollout(wisdom): prod step 2/4 -> 25%",
            body="Now 25%.",
            labels=("gitops-rollout", "step:canary"),
        )
    )

    assert updated.number == opened.number
    assert len(case.store.open_pulls(HEAD)) == 1
    stored = case.store.pulls[opened.number]
    assert (stored.title, stored.body) == ("rollout(wisdom): prod step 2/4 -> 25%", "Now 25%.")
    assert stored.labels == ["gitops-rollout", "model:wisdom", "human-added", "step:canary"]
    assert updated.body == "Now 25%."
    assert stored.reviewers == ["alice"], "reviewers are requested once, on open"


def test_unchanged_draft_sends_no_write(case: HostCase) -> None:
    case.host.open_or_update(draft())
    writes_before = [r for r in case.fake.requests if r.method != "GET"]

    case.host.open_or_update(draft())

    assert [r for r in case.fake.requests if r.method != "GET"] == writes_before


def test_already_exists_is_adopted_not_duplicated(case: HostCase) -> None:
    case.store.racing_heads.add(HEAD)

    pull = case.host.open_or_update(draft())

    open_pulls = case.store.open_pulls(HEAD)
    assert len(open_pulls) == 1
    assert pull.number == open_pulls[0].number
    assert open_pulls[0].body == draft().body, "the adopted pull request says what we want"
    assert open_pulls[0].title == draft().title


def test_comment(case: HostCase) -> None:
    pull = case.host.open_or_update(draft())

    case.host.comment(pull.number, "Paused: candidate error rate above bound.")

    assert case.store.pulls[pull.number].comments == ["Paused: candidate error rate above bound."]


def test_comments_are_read_back_oldest_first_across_pages(case: HostCase) -> None:
    pull = case.host.open_or_update(draft())
    for n in range(5):
        case.host.comment(pull.number, f"note {n} <!-- marker {n} -->")

    assert case.host.comments(pull.number) == [f"note {n} <!-- marker {n} -->" for n in range(5)]


def test_merge_when_ready_returns_the_merge_commit(case: HostCase) -> None:
    pull = case.host.open_or_update(draft())

    result = case.host.merge(pull.number, message="rollout(wisdom): step 1\n\nRollout-Step: 1")

    stored = case.store.pulls[pull.number]
    assert result.merged and not result.queued
    assert result.merge_sha == stored.merge_sha is not None
    assert stored.state == "merged"
    assert stored.merge_message.startswith("rollout(wisdom): step 1")
    [seen] = case.host.pulls_for_prefix(PREFIX, base="main")
    assert (seen.state, seen.merge_sha) == (PullState.MERGED, stored.merge_sha)


def test_merging_an_already_merged_pull_request_reports_it(case: HostCase) -> None:
    merged = case.store.add(HEAD, state="merged")

    result = case.host.merge(merged.number, message="again")

    assert result.merged and result.merge_sha == merged.merge_sha


# One row per reason a host must not merge now: the pull request's state on the fake, whether
# the host should queue an auto-merge, and a word the reason must contain (per host when a host
# cannot tell two cases apart: Gitea reports "still checking" as not mergeable).
REFUSALS = [
    pytest.param({"mergeable": False}, True, False, {}, "conflict", id="conflict"),
    pytest.param(
        {"mergeable": None}, True, False, {"gitea": "conflict"}, "computing", id="still-computing"
    ),
    pytest.param({"checks": "pending"}, True, True, {}, "pending", id="checks-pending-queued"),
    pytest.param({"checks": "pending"}, False, False, {}, "pending", id="checks-pending-no-auto"),
    pytest.param({"checks": "failure"}, True, False, {}, "failed", id="checks-failed"),
    pytest.param({"approved": False}, True, False, {}, "approval", id="approval-missing"),
    pytest.param({"draft": True}, True, False, {}, "draft", id="draft"),
    pytest.param({"state": "closed"}, True, False, {}, "closed", id="closed"),
]


@pytest.mark.parametrize(("state", "auto_merge", "queued", "word_for", "word"), REFUSALS)
def test_merge_refused_with_a_reason(
    case: HostCase,
    state: dict[str, object],
    auto_merge: bool,
    queued: bool,
    word_for: dict[str, str],
    word: str,
) -> None:
    pull = case.store.add(HEAD, **state)
    host = case.build(auto_merge=auto_merge)

    result = host.merge(pull.number, message="rollout(wisdom): step 1")

    assert not result.merged and result.merge_sha is None
    assert result.queued is queued
    assert word_for.get(case.kind, word) in result.reason.lower()
    assert case.store.pulls[pull.number].state == state.get("state", "open")
    assert case.store.pulls[pull.number].auto_merge is queued


def test_queued_merge_is_not_requested_twice(case: HostCase) -> None:
    pull = case.store.add(HEAD, checks="pending")
    case.host.merge(pull.number, message="m")
    writes = len([r for r in case.fake.requests if r.method != "GET"])

    again = case.host.merge(pull.number, message="m")

    assert again.queued and not again.merged
    if case.kind != "gitea":  # Gitea's pull request does not say it is scheduled; it answers 409
        assert len([r for r in case.fake.requests if r.method != "GET"]) == writes


def test_new_content_cancels_a_merge_queued_for_the_old(case: HostCase) -> None:
    """A step's auto-merge must not merge the promotion that replaced it in the same PR."""
    pull = case.host.open_or_update(draft(title="rollout(wisdom): prod step 1/4 -> 10%"))
    case.store.pulls[pull.number].checks = "pending"
    assert case.host.merge(pull.number, message="step").queued
    assert case.store.pulls[pull.number].auto_merge

    case.host.open_or_update(draft(title="rollout(wisdom): prod promote v2", body="Promote."))

    assert not case.store.pulls[pull.number].auto_merge
    # Labels alone are no new content: a queued merge stays.
    case.host.merge(pull.number, message="promote")
    case.host.open_or_update(
        draft(title="rollout(wisdom): prod promote v2", body="Promote.", labels=("extra",))
    )
    assert case.store.pulls[pull.number].auto_merge


def test_head_moved_since_judged_is_refused(case: HostCase) -> None:
    pull = case.store.add(HEAD)
    path = {"github": r"/merge$", "gitlab": r"/merge$", "gitea": r"/merge$"}[case.kind]
    status, body = {
        "github": (409, {"message": "Head branch was modified. Review and try the merge again."}),
        "gitlab": (409, {"message": "SHA does not match HEAD of source branch"}),
        "gitea": (409, {"message": "head out of date"}),
    }[case.kind]
    case.fake.fail("PUT" if case.kind != "gitea" else "POST", path, status, body=body)

    result = case.host.merge(pull.number, message="m")

    assert not result.merged and "refused" in result.reason.lower()


def test_closed_unmerged_reads_closed(case: HostCase) -> None:
    pull = case.host.open_or_update(draft())
    case.store.pulls[pull.number].state = "closed"  # a human closed it: a veto

    [seen] = case.host.pulls_for_prefix(PREFIX, base="main")

    assert seen.state is PullState.CLOSED and seen.merge_sha is None


def test_close_comments_then_closes(case: HostCase) -> None:
    pull = case.host.open_or_update(draft())

    case.host.close(pull.number, comment="Superseded by a rollback.")

    stored = case.store.pulls[pull.number]
    assert stored.state == "closed"
    assert stored.comments == ["Superseded by a rollback."]


def test_missing_pull_request_is_a_host_error(case: HostCase) -> None:
    with pytest.raises(HostError, match=r"#404|!404") as caught:
        case.host.merge(404, message="m")

    assert "404" in str(caught.value)
