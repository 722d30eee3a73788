"""The local host in batches: many pull requests opened, and merged, for a few git processes.

`open_many` and `merge_many` must mean exactly what `open_or_update` and `merge` one after
another mean (the reconcile pass uses them through `hosts.base.open_all` / `merge_all`).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from typing import Any

import pytest
from gitops_helpers import T0, Clock, Remote, git, identity_env

from gitops_rollout.errors import HostError, RolloutError
from gitops_rollout.gitops.hosts import local
from gitops_rollout.gitops.hosts.base import (
    BatchingHost,
    MergeResult,
    PullRequest,
    PullRequestDraft,
    PullState,
    merge_all,
    open_all,
)
from gitops_rollout.gitops.hosts.local import HOST_IDENTITY, LocalHost

MODELS = ("wisdom", "iris", "scoring")


def head_of(model: str) -> str:
    return f"gitops-rollout/prod/ml/{model}"


def routing_of(model: str) -> str:
    return f"clusters/prod/ml/{model}/rollout/routing.yaml"


def draft(model: str, body: str = "first") -> PullRequestDraft:
    return PullRequestDraft(
        head=head_of(model),
        base="main",
        title=f"rollout({model}): prod step 1",
        body=body,
        labels=("gitops-rollout",),
    )


def push(remote: Remote, model: str, content: str = "spec: {w: 10}\n") -> str:
    """A bot branch changing only `model`'s routing file, on top of main."""
    return remote.commit(
        {routing_of(model): content}, branch=head_of(model), author=("gitops-rollout", "bot@x")
    )


def test_the_local_host_batches_and_other_hosts_go_one_by_one(host: LocalHost) -> None:
    assert isinstance(host, BatchingHost)

    class OneByOne:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def open_or_update(self, d: PullRequestDraft) -> PullRequest:
            self.calls.append(f"open {d.head}")
            if d.head.endswith("iris"):
                raise HostError("iris refused")
            return PullRequest(1, d.head, d.base, d.title, d.body, PullState.OPEN, "0" * 40)

        def merge(self, number: int, *, message: str) -> MergeResult:
            self.calls.append(f"merge {number}")
            if number == 2:
                raise HostError("no")
            return MergeResult(True, "1" * 40)

    one = OneByOne()
    assert not isinstance(one, BatchingHost)
    opened = open_all(one, [draft(m) for m in MODELS])  # type: ignore[arg-type]
    assert [type(o).__name__ for o in opened] == ["PullRequest", "HostError", "PullRequest"]
    merged = merge_all(one, [(1, "a"), (2, "b"), (3, "c")])  # type: ignore[arg-type]
    assert [type(m).__name__ for m in merged] == ["MergeResult", "HostError", "MergeResult"]
    assert one.calls == [*(f"open {head_of(m)}" for m in MODELS), "merge 1", "merge 2", "merge 3"]


def test_open_many_means_open_or_update_for_each(
    host: LocalHost, remote: Remote, git_calls: list[str]
) -> None:
    push(remote, "wisdom")
    assert host.open_or_update(draft("wisdom")).number == 1
    iris = push(remote, "iris")
    scoring = push(remote, "scoring")
    git(
        "--git-dir",
        str(remote.path),
        "update-ref",
        "refs/heads/gitops-rollout/prod/ml/stale",
        "main",
    )
    git_calls.clear()

    results = host.open_many(
        [
            draft("wisdom", body="second"),
            draft("iris"),
            PullRequestDraft("gitops-rollout/prod/ml/stale", "main", "t", "b"),
            PullRequestDraft("gitops-rollout/prod/ml/never-pushed", "main", "t", "b"),
            draft("scoring"),
        ]
    )

    wisdom, opened_iris, stale, missing, opened_scoring = results
    assert isinstance(wisdom, PullRequest) and (wisdom.number, wisdom.body) == (1, "second")
    assert isinstance(opened_iris, PullRequest) and isinstance(opened_scoring, PullRequest)
    assert (opened_iris.number, opened_iris.head_sha) == (2, iris)
    assert (opened_scoring.number, opened_scoring.head_sha) == (3, scoring)
    assert isinstance(stale, HostError) and "nothing to review" in str(stale)
    assert isinstance(missing, HostError) and "push it first" in str(missing)
    refs = remote.refs()
    assert (refs["refs/pull/2/head"], refs["refs/pull/3/head"]) == (iris, scoring)
    # One look-up, one ancestry query, one ref transaction for the five drafts.
    assert git_calls == ["cat-file", "for-each-ref", "update-ref"]
    # The same answers as one at a time: nothing new is opened the second time round.
    again = host.open_many([draft("iris"), draft("scoring")])
    assert [p.number for p in again if isinstance(p, PullRequest)] == [2, 3]
    assert [p.number for p in host.list_pulls()] == [3, 2, 1]


def test_one_draft_twice_in_a_batch_opens_one_pull_request(host: LocalHost, remote: Remote) -> None:
    push(remote, "wisdom")
    first, second = host.open_many([draft("wisdom"), draft("wisdom", body="again")])
    assert isinstance(first, PullRequest) and isinstance(second, PullRequest)
    assert (first.number, second.number, second.body) == (1, 1, "again")


def test_merge_many_chains_merges_and_moves_main_once(
    host: LocalHost, remote: Remote, clock: Clock, git_calls: list[str]
) -> None:
    base = remote.sha("main")
    heads = {m: push(remote, m) for m in MODELS}
    numbers = [
        p.number for p in host.open_many([draft(m) for m in MODELS]) if isinstance(p, PullRequest)
    ]
    clock.tick()
    git_calls.clear()

    results = host.merge_many([(n, f"merge #{n}") for n in numbers])

    assert all(isinstance(r, MergeResult) and r.merged for r in results)
    shas = [r.merge_sha for r in results if isinstance(r, MergeResult)]
    assert remote.sha("main") == shas[-1]
    # As if merged one after another: each merge commit on top of the one before.
    chain = remote.log("main", "%H %P", "--first-parent", f"{base}..main")
    assert chain == [
        f"{shas[2]} {shas[1]} {heads['scoring']}",
        f"{shas[1]} {shas[0]} {heads['iris']}",
        f"{shas[0]} {base} {heads['wisdom']}",
    ]
    for m in MODELS:
        assert remote.show("main", routing_of(m)) == b"spec: {w: 10}\n"
    for n, sha in zip(numbers, shas, strict=True):
        record = host.show(n)
        assert (record.state, record.merge_sha, record.merged_at, record.merging) == (
            PullState.MERGED,
            sha,
            clock.now,
            None,
        )
    # No trial merge: each branch is one commit on main changing its own files, so merging
    # is applying it (`treemerge`). One look-up, one ancestry query, one question about the
    # object format, one reader of objects, one diff of every head, and one swap.
    assert sorted(git_calls) == sorted(
        ["cat-file", "for-each-ref", "rev-parse", "cat-file --batch", "diff-tree", "update-ref"]
    )
    # The commits written without git are sound objects, and exactly what commit-tree makes.
    git("--git-dir", str(remote.path), "fsck", "--strict", "--no-dangling")
    for sha in shas:
        tree, parents = git(
            "--git-dir", str(remote.path), "show", "-s", "--format=%T %P", sha
        ).split(" ", 1)
        message = git("--git-dir", str(remote.path), "cat-file", "commit", sha).split("\n\n", 1)[1]
        again = (
            subprocess.run(
                [
                    "git",
                    "--git-dir",
                    str(remote.path),
                    "commit-tree",
                    tree.strip(),
                    *(a for p in parents.split() for a in ("-p", p)),
                    "-F",
                    "-",
                ],
                input=message.encode(),
                env={**os.environ, **HOST_IDENTITY.env(clock.now)},
                capture_output=True,
                check=True,
            )
            .stdout.decode()
            .strip()
        )
        assert again == sha
    # Merging again says so and makes nothing.
    again = host.merge_many([(numbers[0], "x")])
    assert again == [MergeResult(True, shas[0], reason="already merged")]


def test_a_conflict_in_a_batch_leaves_the_others_merged(host: LocalHost, remote: Remote) -> None:
    for m in MODELS:
        push(remote, m)
    numbers = [
        p.number for p in host.open_many([draft(m) for m in MODELS]) if isinstance(p, PullRequest)
    ]
    human = remote.commit({routing_of("iris"): "spec: {w: 99} # hand edit\n"})

    wisdom, iris, scoring = host.merge_many([(n, f"merge #{n}") for n in numbers])

    assert isinstance(iris, MergeResult) and not iris.merged
    assert iris.reason.startswith(f"merge conflict with main in {routing_of('iris')}")
    assert isinstance(wisdom, MergeResult) and isinstance(scoring, MergeResult)
    assert wisdom.merged and scoring.merged and remote.sha("main") == scoring.merge_sha
    assert remote.show("main", routing_of("iris")) == b"spec: {w: 99} # hand edit\n"
    assert [line.split()[1] for line in remote.log("main", "%H %P", "--first-parent", "-2")] == [
        wisdom.merge_sha,
        human,
    ]
    assert host.show(numbers[1]).state is PullState.OPEN


def test_a_push_during_a_batch_merge_has_the_whole_chain_made_again(
    host: LocalHost, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    for m in MODELS:
        push(remote, m)
    numbers = [
        p.number for p in host.open_many([draft(m) for m in MODELS]) if isinstance(p, PullRequest)
    ]
    pushed: list[str] = []
    run = host._git.run

    def racing(*args: str, **kwargs: Any) -> tuple[int, str, str]:
        # A human's push lands after the chain was made, just before main is swapped.
        if args[:2] == ("update-ref", "-m") and not pushed:
            pushed.append(remote.commit({"README.md": "hello\n"}))
        return run(*args, **kwargs)

    monkeypatch.setattr(host._git, "run", racing)
    results = host.merge_many([(n, f"merge #{n}") for n in numbers])

    assert all(isinstance(r, MergeResult) and r.merged for r in results)
    # Three merge commits on top of the human's commit, not beside it.
    chain = remote.log("main", "%H %P", "--first-parent", "-4")
    assert [line.split()[0] for line in chain] == [
        *(r.merge_sha for r in reversed(results) if isinstance(r, MergeResult)),
        pushed[0],
    ]
    assert chain[2].split()[1] == pushed[0]
    assert remote.show("main", "README.md") == b"hello\n"
    for m in MODELS:
        assert remote.show("main", routing_of(m)) == b"spec: {w: 10}\n"


def test_unknown_and_closed_numbers_answer_in_place(host: LocalHost, remote: Remote) -> None:
    push(remote, "wisdom")
    push(remote, "iris")
    wisdom, iris = (
        p.number
        for p in host.open_many([draft("wisdom"), draft("iris")])
        if isinstance(p, PullRequest)
    )
    host.close(iris, comment="no")
    merged, closed, unknown = host.merge_many([(wisdom, "m"), (iris, "m"), (99, "m")])
    assert isinstance(merged, MergeResult) and merged.merged
    assert closed == MergeResult(False, reason=f"pull request #{iris} is closed")
    assert isinstance(unknown, HostError) and "no pull request #99" in str(unknown)


def test_mergeable_many_asks_git_once_per_batch_and_once_for_all_trial_merges(
    host: LocalHost, remote: Remote, git_calls: list[str]
) -> None:
    for m in MODELS:
        push(remote, m)
    wisdom, iris, scoring = (
        p.number for p in host.open_many([draft(m) for m in MODELS]) if isinstance(p, PullRequest)
    )
    host.close(scoring, comment="no")
    remote.commit({routing_of("iris"): "spec: {w: 99} # hand edit\n"})
    git_calls.clear()

    answers = host.mergeable_many([wisdom, iris, scoring, 99])

    assert answers[:3] == [True, False, None]
    assert isinstance(answers[3], HostError) and "no pull request #99" in str(answers[3])
    assert sorted(git_calls) == sorted(["cat-file", "for-each-ref", "merge-tree"])
    assert [host.mergeable(n) for n in (wisdom, iris, scoring)] == [True, False, None]


MANY = (*MODELS, "churn", "forecast")


def open_all_of(host: LocalHost, remote: Remote, models: tuple[str, ...]) -> list[int]:
    for m in models:
        push(remote, m)
    return [
        p.number for p in host.open_many([draft(m) for m in models]) if isinstance(p, PullRequest)
    ]


def test_mergeable_many_answers_as_mergeable_does_one_at_a_time(
    host: LocalHost, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "TRIAL_MERGES_AT_ONCE", 4)
    wisdom, iris, scoring, churn, forecast = open_all_of(host, remote, MANY)
    host.close(scoring, comment="no")
    remote.commit({routing_of("iris"): "spec: {w: 99} # hand edit\n"})  # iris conflicts now
    numbers = [wisdom, iris, scoring, 99, churn, wisdom, forecast]

    answers = host.mergeable_many(numbers)

    def one(number: int) -> bool | str | None:
        try:
            return host.mergeable(number)
        except HostError as err:
            return f"HostError: {err}"

    def shown(answer: bool | RolloutError | None) -> bool | str | None:
        return f"{type(answer).__name__}: {answer}" if isinstance(answer, Exception) else answer

    assert [shown(a) for a in answers] == [one(n) for n in numbers]
    assert [shown(a) for a in answers] == [
        True,
        False,
        None,
        f"HostError: no pull request #99 in {remote.path}",
        True,
        True,
        True,
    ]


EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
"""The tree every git repository has without storing it."""


def unrelated(remote: Remote, model: str) -> None:
    """`model`'s bot branch moved to a commit sharing no history with main: no merge of it
    can be made at all."""
    where = ("--git-dir", str(remote.path))
    lone = git(*where, "commit-tree", EMPTY_TREE, "-m", "lone", env=identity_env(T0)).strip()
    git(*where, "update-ref", f"refs/heads/{head_of(model)}", lone)


def test_when_git_cannot_make_one_trial_merge_each_is_made_alone_its_error_in_its_place(
    host: LocalHost, remote: Remote, git_calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "TRIAL_MERGES_AT_ONCE", 2)
    numbers = open_all_of(host, remote, MANY)
    unrelated(remote, MANY[1])
    git_calls.clear()

    answers = host.mergeable_many(numbers)

    assert answers[0] is True and answers[2:] == [True, True, True]
    assert isinstance(answers[1], HostError)
    assert "refusing to merge unrelated histories" in str(answers[1])
    # Two batches side by side (git gives up on one), then one per pull request.
    assert git_calls.count("merge-tree") == 2 + len(MANY)


def test_without_merge_tree_stdin_the_trial_merges_run_alone_at_once_each_error_in_its_place(
    host: LocalHost, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with a git older than ``merge-tree --stdin`` (2.38): it refuses the option."""
    numbers = open_all_of(host, remote, MANY)
    broken = host.show(numbers[1]).head_sha
    events: list[str] = []
    trial_merge = LocalHost._trial_merge
    run_bytes = local._Repo.run_bytes

    def old_git(self: Any, *args: str, **kwargs: Any) -> tuple[int, bytes, str]:
        if "--stdin" in args:
            return 129, b"", "error: unknown option `stdin'"
        return run_bytes(self, *args, **kwargs)

    def slow(self: LocalHost, base: str, head: str) -> tuple[str, list[str] | None]:
        events.append("start")
        try:
            time.sleep(0.05)  # long enough for the other threads to start theirs meanwhile
            if head == broken:
                raise HostError("git merge-tree failed: bad object")
            return trial_merge(self, base, head)
        finally:
            events.append("end")

    monkeypatch.setattr(local._Repo, "run_bytes", old_git)
    monkeypatch.setattr(LocalHost, "_trial_merge", slow)
    monkeypatch.setattr(local, "TRIAL_MERGES_AT_ONCE", 2)

    answers = host.mergeable_many(numbers)

    assert answers[0] is True and answers[2:] == [True, True, True]
    assert isinstance(answers[1], HostError) and "bad object" in str(answers[1])
    running = list(itertools.accumulate(1 if e == "start" else -1 for e in events))
    assert len(events) == 2 * len(MANY)
    assert max(running) == 2  # two at once, never more than allowed


@pytest.mark.parametrize(
    ("out", "count", "read"),
    [
        (b"1\x00t1\x00\x00", 1, [("t1", None)]),
        (b"0\x00t1\x00b\x00a\x00b\x00\x001\x00t2\x00\x00", 2, [("t1", ["a", "b"]), ("t2", None)]),
        (b"1\x00t1\x00\x00", 2, None),  # a merge missing
        (b"1\x00t1\x00\x001\x00t2\x00\x00", 1, None),  # one too many
        (b"1\x00t1\x00a\x00\x00", 1, None),  # files after a clean merge
        (b"0\x00t1\x00a\x00", 1, None),  # the files' end cut off
        (b"2\x00t1\x00\x00", 1, None),  # no such status
        (b"", 1, None),
    ],
)
def test_batched_trial_merges_are_read_only_in_the_shape_git_writes(
    out: bytes, count: int, read: list[tuple[str, list[str] | None]] | None
) -> None:
    assert local._merges_read(out, count) == read
