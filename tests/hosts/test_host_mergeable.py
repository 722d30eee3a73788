"""`GitHost.mergeable`: one read of one pull request, and what the reconciler does with it.

Listings do not say whether a pull request merges (GitHub's and the local host's compute
nothing for them), so the reconciler asks `mergeable` about the pull requests it would leave
waiting for a reviewer, and rebuilds one only when the host says it conflicts with its base.
The forges' answers are checked against their fakes through the real client libraries; the
reconciler's use of them on every host, with a real bare repository behind each.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hosts_e2e.world import FORGES, KINDS, World

from gitops_rollout import reconcile, render
from gitops_rollout.errors import HostError
from gitops_rollout.gitops.repo import branch_name
from gitops_rollout.transitions import Transition
from gitops_rollout.tree import Tree

from .conftest import HEAD, HostCase

SINGLE_READ = {
    "github": r"/repos/acme/gitops/pulls/{}$",
    "gitlab": r"/projects/acme%2Fgitops/merge_requests/{}$",
    "gitea": r"/repos/acme/gitops/pulls/{}$",
}

# The pull request's state on the fake, the answer, and a host's own answer where it differs.
MERGEABILITY = [
    pytest.param({}, True, {}, id="merges-cleanly"),
    pytest.param({"mergeable": False}, False, {}, id="conflicts"),
    # Gitea says false while it is still checking, as for a conflict.
    pytest.param({"mergeable": None}, None, {"gitea": False}, id="still-computing"),
    pytest.param({"checks": "pending"}, True, {}, id="checks-pending-still-merges"),
    pytest.param({"approved": False}, True, {}, id="approval-missing-still-merges"),
    pytest.param({"state": "closed"}, None, {}, id="closed"),
    pytest.param({"state": "merged"}, None, {}, id="merged"),
]


@pytest.mark.parametrize(("state", "expected", "host_says"), MERGEABILITY)
def test_mergeable_is_one_read_of_one_pull_request(
    case: HostCase, state: dict[str, object], expected: bool | None, host_says: dict[str, bool]
) -> None:
    pull = case.store.add(HEAD, **state)
    before = len(case.fake.requests)

    answer = case.host.mergeable(pull.number)

    assert answer is host_says.get(case.kind, expected)
    [read] = case.fake.requests[before:]
    assert read.method == "GET"
    assert re.search(SINGLE_READ[case.kind].format(pull.number), read.path), read.path


def test_mergeable_of_a_missing_pull_request_is_a_host_error(case: HostCase) -> None:
    with pytest.raises(HostError, match=r"read (pull|merge) request [#!]404: HTTP 404"):
        case.host.mergeable(404)


# -- the reconciler: a promotion waiting for a reviewer ----------------------------------------

STAGING = branch_name(cluster="staging", namespace="modelmesh-serving", model="wisdom")
PRIMARY = "clusters/staging/modelmesh-serving/wisdom/wisdom-0.yaml"
ATTEMPTS = 5
"""The default HttpPolicy's tries per request: failing this many times fails the call."""


@pytest.fixture(params=KINDS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "world", request.param)
    try:
        yield w
    finally:
        w.stop()
    if w.fake is not None:
        assert not w.fake.errors, f"the fake API failed: {w.fake.errors!r}"


def waiting_promotion(world: World) -> int:
    """Scenario 1 up to staging's promotion, which waits for a reviewer: its number."""
    world.reconcile()
    world.add_candidate()
    for _ in range(10):
        report = world.reconcile()
        assert not report.errors, report.errors
        promotions = [p for p in world.open_pulls() if p.kind == "promote"]
        if promotions:
            return promotions[0].number
    raise AssertionError(f"no promotion opened: {world.pulls()}")


def staging(report: reconcile.PassReport) -> tuple[str, int | None]:
    """The outcome of staging's decision in a pass, and its pull request."""
    [d] = [d for d in report.decisions if d.cluster == "staging"]
    return d.outcome, d.pr


def push_unrelated_change(world: World) -> None:
    def edit(root: Path) -> None:
        (root / "docs").mkdir()
        (root / "docs" / "runbook.md").write_text("# Runbook\n")

    world.human_change("docs: a runbook for the on-call", edit)


def push_conflicting_change(world: World) -> None:
    """A label beside the line the promotion changes: the same decision, but a conflict."""

    def edit(root: Path) -> None:
        path = root / PRIMARY
        version = "    app.kubernetes.io/version: v0\n"
        text = path.read_text()
        assert version in text
        path.write_text(
            text.replace(version, "    app.kubernetes.io/part-of: assistants\n" + version)
        )

    world.human_change("wisdom: part of the assistants", edit)


@pytest.mark.slow
def test_a_waiting_promotion_that_still_merges_is_left_alone(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    number = waiting_promotion(world)
    head = world.head(STAGING)
    push_unrelated_change(world)
    rendered: list[str] = []
    real_render = render.render

    def recording(transition: Transition, *, tree: Tree) -> render.Rendered:
        rendered.append(transition.situation.cluster)
        return real_render(transition, tree=tree)

    monkeypatch.setattr(render, "render", recording)

    report = world.reconcile()

    assert not report.errors, report.errors
    assert staging(report) == ("unchanged", number)
    assert world.head(STAGING) == head, "no new commit: the reviewer's approval stands"
    # The open pull request proposes this very decision: its files are not even rendered.
    assert "staging" not in rendered


@pytest.mark.slow
def test_a_main_that_moved_elsewhere_is_not_a_question_for_the_host(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    number = waiting_promotion(world)
    world.reconcile()  # the host is asked once; the memo keeps its answer and the PR's files
    asked: list[int] = []
    real_host = world.host

    def counting_host() -> object:
        host: Any = real_host()
        real = host.mergeable

        def mergeable(n: int) -> bool | None:
            asked.append(n)
            answer: bool | None = real(n)
            return answer

        host.mergeable = mergeable
        if hasattr(host, "mergeable_many"):  # a batching host (local) is asked in batches
            real_many = host.mergeable_many

            def mergeable_many(numbers: list[int]) -> list[object]:
                asked.extend(numbers)
                answers: list[object] = real_many(numbers)
                return answers

            host.mergeable_many = mergeable_many
        return host

    monkeypatch.setattr(world, "host", counting_host)
    push_unrelated_change(world)

    report = world.reconcile()

    assert staging(report) == ("unchanged", number)
    assert asked == [], "main moved only in files the pull request does not touch"
    push_conflicting_change(world)
    report = world.reconcile()
    assert number in asked, "main moved in the pull request's files: the host decides"
    assert staging(report) == ("updated", number)


@pytest.mark.slow
def test_a_waiting_promotion_that_conflicts_is_rebuilt_on_the_new_base(world: World) -> None:
    number = waiting_promotion(world)
    head = world.head(STAGING)
    push_conflicting_change(world)

    report = world.reconcile()

    assert not report.errors, report.errors
    assert staging(report) == ("updated", number)
    assert world.head(STAGING) != head
    assert world.reviewer().merge(number, message="promote wisdom v1 in staging").merged
    primary = world.files()[PRIMARY]
    assert "app.kubernetes.io/part-of: assistants" in primary, "the person's change is kept"
    assert "app.kubernetes.io/version: v1" in primary


@pytest.mark.slow
@pytest.mark.parametrize("world", FORGES, indirect=True)
def test_a_host_that_cannot_say_leaves_a_waiting_promotion_alone(world: World) -> None:
    number = waiting_promotion(world)
    head = world.head(STAGING)
    push_conflicting_change(world)
    assert world.fake is not None
    world.fake.fail(
        "GET",
        SINGLE_READ[world.kind].format(number),
        502,
        body={"message": "Bad Gateway"},
        times=ATTEMPTS,
    )

    report = world.reconcile()

    assert staging(report) == ("unchanged", number)
    assert world.head(STAGING) == head
    [error] = report.errors["host"]
    assert error.startswith(f"asking whether #{number} still merges: ")
    assert "HTTP 502" in error
    # The next pass asks again, and rebuilds it.
    assert staging(world.reconcile()) == ("updated", number)
