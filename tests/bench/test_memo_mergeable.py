"""The memo remembers whether a waiting pull request merges, by (head commit, base commit).

Whether two commits merge cleanly never changes, so asking the host again while neither moved
only costs a git process (local host) or an API read (forges) per waiting pull request and
pass. A base that moved only in files the pull request does not touch keeps a clean merge
clean; anything else that moves either commit, or a host that cannot say, asks again.
"""

from __future__ import annotations

import pytest

from gitops_rollout.gitops.hosts.base import PullRequest, PullState
from gitops_rollout.memo import _ListedOnce

KEY = ("gitops-rollout/", "main")


class CountingHost:
    def __init__(self, answer: bool | None) -> None:
        self.answer = answer
        self.asked: list[int] = []

    def mergeable(self, number: int) -> bool | None:
        self.asked.append(number)
        return self.answer


def _pull(number: int, head_sha: str, state: PullState = PullState.OPEN) -> PullRequest:
    return PullRequest(
        number=number,
        head=f"gitops-rollout/prod/ns/model-{number}",
        base="main",
        title="t",
        body="b",
        state=state,
        head_sha=head_sha,
    )


def _listed(
    host: CountingHost,
    pulls: list[PullRequest],
    checks: dict[int, tuple[str, str, bool]],
    base_rev: str | None,
) -> _ListedOnce:
    return _ListedOnce(host, KEY, pulls, checks=checks, base_rev=base_rev)  # type: ignore[arg-type]


def test_an_answer_is_asked_once_then_remembered_while_nothing_moves() -> None:
    host = CountingHost(True)
    first = _listed(host, [_pull(5, "h1")], {}, "b1")
    assert first.mergeable(5) is True
    assert host.asked == [5]
    assert first.current_checks() == {5: ("h1", "b1", True)}

    second = _listed(host, [_pull(5, "h1")], first.current_checks(), "b1")
    assert second.mergeable(5) is True
    assert host.asked == [5]  # not asked again


def test_a_moved_base_or_head_asks_again() -> None:
    remembered = {5: ("h1", "b1", True)}
    host = CountingHost(False)
    assert _listed(host, [_pull(5, "h1")], remembered, "b2").mergeable(5) is False
    assert _listed(host, [_pull(5, "h2")], remembered, "b1").mergeable(5) is False
    assert host.asked == [5, 5]


def test_no_base_commit_or_no_answer_is_never_remembered() -> None:
    host = CountingHost(True)
    unknown_base = _listed(host, [_pull(5, "h1")], {}, None)
    assert unknown_base.mergeable(5) is True
    assert unknown_base.current_checks() == {}

    silent = CountingHost(None)
    undecided = _listed(silent, [_pull(5, "h1")], {}, "b1")
    assert undecided.mergeable(5) is None
    assert undecided.mergeable(5) is None
    assert silent.asked == [5, 5]
    assert undecided.current_checks() == {}


def test_answers_for_pull_requests_no_longer_open_are_dropped() -> None:
    remembered = {5: ("h1", "b1", True), 6: ("h6", "b1", True)}
    host = CountingHost(True)
    listed = _listed(host, [_pull(5, "h1"), _pull(6, "h6", PullState.MERGED)], remembered, "b1")
    assert listed.current_checks() == {5: ("h1", "b1", True)}
    assert listed.mergeable(6) is True  # not open at the start of the pass: the host decides
    assert host.asked == [6]


def _moved(
    host: CountingHost, changed: frozenset[str] | None, paths: tuple[str, ...] = ("a/x.yaml",)
) -> _ListedOnce:
    return _ListedOnce(
        host,  # type: ignore[arg-type]
        KEY,
        [_pull(5, "h1")],
        checks={5: ("h1", "b1", True)},
        base_rev="b2",
        paths={5: paths},
        changed_since=lambda older: changed if older == "b1" else None,
    )


def test_a_base_that_moved_elsewhere_keeps_a_clean_merge_clean() -> None:
    host = CountingHost(False)
    listed = _moved(host, frozenset({"b/y.yaml", "a/other.yaml"}))
    assert listed.mergeable(5) is True
    assert host.asked == []
    assert listed.current_checks() == {5: ("h1", "b2", True)}


@pytest.mark.parametrize(
    "changed",
    [
        frozenset({"a/x.yaml"}),  # the same file
        frozenset({"a"}),  # a file where the pull request has a folder
        frozenset({"a/x.yaml/z"}),  # a folder where the pull request has a file
    ],
)
def test_a_base_that_moved_in_the_pull_requests_files_asks_the_host(
    changed: frozenset[str],
) -> None:
    host = CountingHost(False)
    assert _moved(host, changed).mergeable(5) is False
    assert host.asked == [5]


def test_without_its_files_or_a_known_history_the_host_is_asked() -> None:
    host = CountingHost(True)
    assert _moved(host, None).mergeable(5) is True  # the old base is not an earlier commit
    assert _moved(host, frozenset(), paths=()).mergeable(5) is True  # files never recorded
    assert host.asked == [5, 5]


def test_a_pull_request_opened_this_pass_has_its_files_remembered() -> None:
    listed = _listed(CountingHost(True), [_pull(5, "h1")], {}, "b1")
    listed.touches(7, ["c/z.yaml"])
    assert listed.current_paths() == {7: ("c/z.yaml",)}
