"""The local host: pull requests in a bare repository, merged server-side like a real forge."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from gitops_helpers import T0, Clock, Remote, git

from gitops_rollout.errors import HostError
from gitops_rollout.gitops.hosts import HOSTS, HostConfig, UnknownHostError, local, make_host
from gitops_rollout.gitops.hosts.base import PullRequest, PullRequestDraft, PullState
from gitops_rollout.gitops.hosts.local import (
    INDEX_DIR,
    INDEX_MARK,
    MERGING_FILE,
    PULLS_DIR,
    LocalHost,
    PullRecord,
)

ROUTING = "clusters/prod/ml/wisdom/rollout/routing.yaml"
HEAD = "gitops-rollout/prod/ml/wisdom"


def draft(head: str = HEAD, body: str = "first") -> PullRequestDraft:
    return PullRequestDraft(
        head=head,
        base="main",
        title="rollout(wisdom): prod step 1",
        body=body,
        labels=("gitops-rollout",),
        reviewers=("ml-team",),
    )


def bot_branch(remote: Remote, content: str = "spec: {w: 10}\n", head: str = HEAD) -> str:
    return remote.commit({ROUTING: content}, branch=head, author=("gitops-rollout", "bot@x"))


def test_open_records_a_ref_and_metadata(host: LocalHost, remote: Remote) -> None:
    sha = bot_branch(remote)
    pr = host.open_or_update(draft())
    assert (pr.number, pr.state, pr.head_sha, pr.labels) == (
        1,
        PullState.OPEN,
        sha,
        ("gitops-rollout",),
    )
    assert remote.refs()["refs/pull/1/head"] == sha
    record = json.loads((remote.path / PULLS_DIR / "1.json").read_text())
    assert record["state"] == "open" and record["reviewers"] == ["ml-team"]
    assert record["created_at"] == T0.isoformat()


def test_never_two_open_pull_requests_for_one_head(
    host: LocalHost, remote: Remote, clock: Clock
) -> None:
    bot_branch(remote)
    first = host.open_or_update(draft())
    clock.tick()
    newer = bot_branch(remote, "spec: {w: 25}\n")
    second = host.open_or_update(draft(body="second"))
    assert second.number == first.number
    assert second.body == "second" and second.head_sha == newer
    assert [p.number for p in host.pulls_for_prefix("gitops-rollout/", base="main")] == [1]
    assert remote.refs()["refs/pull/1/head"] == newer


def test_concurrent_openers_share_one_pull_request(remote: Remote, clock: Clock) -> None:
    bot_branch(remote)
    for i in range(4):
        bot_branch(remote, head=f"gitops-rollout/prod/ml/m{i}")
    numbers: list[int] = []

    def open_some(head: str) -> None:
        numbers.append(LocalHost(remote.path, clock=clock).open_or_update(draft(head)).number)

    threads = [threading.Thread(target=open_some, args=(HEAD,)) for _ in range(6)]
    threads += [
        threading.Thread(target=open_some, args=(f"gitops-rollout/prod/ml/m{i}",)) for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    host = LocalHost(remote.path, clock=clock)
    assert sorted(p.number for p in host.list_pulls()) == [1, 2, 3, 4, 5]
    assert len(set(numbers)) == 5


def test_opening_needs_a_pushed_branch_with_commits(host: LocalHost, remote: Remote) -> None:
    with pytest.raises(HostError, match="branch 'gitops-rollout/prod/ml/wisdom' does not exist"):
        host.open_or_update(draft())
    git("--git-dir", str(remote.path), "update-ref", f"refs/heads/{HEAD}", remote.sha("main"))
    with pytest.raises(HostError, match="no commits between 'main' and"):
        host.open_or_update(draft())


def test_merge_makes_a_merge_commit_on_the_base(
    host: LocalHost, remote: Remote, clock: Clock
) -> None:
    head = bot_branch(remote)
    base = remote.sha("main")
    pr = host.open_or_update(draft())
    clock.tick(600)
    result = host.merge(pr.number, message="Merge pull request #1\n\nrollout(wisdom): prod step 1")
    assert result.merged and result.merge_sha == remote.sha("main")
    [line] = remote.log("main", "%P|%cn|%ct|%s", "-1")
    when = int(clock.now.timestamp())
    assert line == f"{base} {head}|gitops-rollout local host|{when}|Merge pull request #1"
    assert remote.show("main", ROUTING) == b"spec: {w: 10}\n"
    record = host.show(pr.number)
    assert (record.state, record.merge_sha, record.merged_at, record.merged_by) == (
        PullState.MERGED,
        result.merge_sha,
        clock.now,
        "gitops-rollout",
    )
    assert host.merge(pr.number, message="again").merge_sha == result.merge_sha


def test_merge_retries_when_a_human_pushes_to_main_meanwhile(
    host: LocalHost, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = bot_branch(remote)
    pr = host.open_or_update(draft())
    pushed: list[str] = []
    swaps: list[str] = []
    run = host._git.run

    def racing(*args: str, **kwargs: object) -> tuple[int, str, str]:
        # A human's push lands after the merge was computed, just before main is moved.
        if args[:3] == ("update-ref", "-m", "merge pull request #1"):
            swaps.append(args[-1])
            if not pushed:
                pushed.append(remote.commit({"README.md": "hello\n"}))
        return run(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(host._git, "run", racing)
    result = host.merge(pr.number, message="merge #1")
    assert result.merged
    assert len(swaps) == 2 and swaps[1] == pushed[0]  # the second swap expected the human's commit
    [parents] = remote.log("main", "%P", "-1")
    assert parents.split() == [pushed[0], head]
    assert remote.show("main", "README.md") == b"hello\n"


def test_conflict_is_reported_never_forced(host: LocalHost, remote: Remote) -> None:
    bot_branch(remote)
    pr = host.open_or_update(draft())
    human = remote.commit({ROUTING: "spec: {w: 99} # hand edit\n"})
    assert host.conflicts(pr.number) == [ROUTING]
    result = host.merge(pr.number, message="merge #1")
    assert not result.merged
    assert result.reason.startswith(f"merge conflict with main in {ROUTING}")
    assert remote.sha("main") == human
    assert host.show(pr.number).state is PullState.OPEN


def test_close_is_recorded_with_its_comment(host: LocalHost, remote: Remote, clock: Clock) -> None:
    bot_branch(remote)
    pr = host.open_or_update(draft())
    host.comment(pr.number, "looks odd", by="alice")
    clock.tick()
    host.close(pr.number, comment="vetoed: latency looks off", by="alice")
    record = host.show(pr.number)
    assert (record.state, record.closed_by, record.closed_at) == (
        PullState.CLOSED,
        "alice",
        clock.now,
    )
    assert [(c.author, c.body) for c in record.comments] == [
        ("alice", "looks odd"),
        ("alice", "vetoed: latency looks off"),
    ]
    assert host.merge(pr.number, message="x").reason == "pull request #1 is closed"
    # A closed PR is history: the next decision for the head gets a new number.
    bot_branch(remote, "spec: {w: 20}\n")
    assert host.open_or_update(draft()).number == 2


def test_pull_requests_follow_their_branch(host: LocalHost, remote: Remote) -> None:
    head = bot_branch(remote)
    pr = host.open_or_update(draft())
    # Someone merges the branch with plain git: the PR shows as merged, as on GitHub.
    git("--git-dir", str(remote.path), "update-ref", "refs/heads/main", head)
    assert host.show(pr.number).state is PullState.MERGED
    other = bot_branch(remote, head="gitops-rollout/prod/ml/iris")
    second = host.open_or_update(draft("gitops-rollout/prod/ml/iris"))
    assert second.head_sha == other
    git("--git-dir", str(remote.path), "update-ref", "-d", "refs/heads/gitops-rollout/prod/ml/iris")
    assert host.show(second.number).state is PullState.CLOSED


def test_a_merge_interrupted_after_moving_main_is_completed_on_read(
    host: LocalHost, remote: Remote, clock: Clock
) -> None:
    bot_branch(remote)
    pr = host.open_or_update(draft())
    real_save = host._save

    def dying_save(record: PullRecord) -> None:
        if record.state is PullState.MERGED:  # the process dies before recording it
            raise KeyboardInterrupt
        real_save(record)

    host._save = dying_save  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        host.merge(pr.number, message="merge #1")
    merged_main = remote.sha("main")
    assert (remote.path / MERGING_FILE).is_file()
    fresh = LocalHost(remote.path, clock=clock)
    record = fresh.show(pr.number)
    assert (record.state, record.merge_sha) == (PullState.MERGED, merged_main)
    # The next merge forgets it.
    bot_branch(remote, "spec: {w: 20}\n", head="gitops-rollout/prod/ml/iris")
    second = fresh.open_or_update(draft(head="gitops-rollout/prod/ml/iris"))
    assert fresh.merge(second.number, message="merge #2").merged
    assert not (remote.path / MERGING_FILE).exists()


def test_records_survive_a_restart(host: LocalHost, remote: Remote, clock: Clock) -> None:
    bot_branch(remote)
    first = host.open_or_update(draft())
    again = LocalHost(remote.path, clock=clock)
    assert [p.number for p in again.pulls_for_prefix("gitops-rollout/prod/", base="main")] == [
        first.number
    ]
    assert again.open_or_update(draft(body="after restart")).number == first.number
    assert "after restart" in again.show(first.number).body
    assert (
        again.diffstat(first.number)
        .strip()
        .endswith("1 file changed, 1 insertion(+), 2 deletions(-)")
    )


def test_prefix_and_base_filter_newest_first(host: LocalHost, remote: Remote) -> None:
    for name in ("a", "b", "c"):
        bot_branch(remote, head=f"gitops-rollout/prod/ml/{name}")
        host.open_or_update(draft(f"gitops-rollout/prod/ml/{name}"))
    bot_branch(remote, head="gitops-rollout/staging/ml/a")
    host.open_or_update(draft("gitops-rollout/staging/ml/a"))
    assert [p.head for p in host.pulls_for_prefix("gitops-rollout/prod/", base="main")] == [
        "gitops-rollout/prod/ml/c",
        "gitops-rollout/prod/ml/b",
        "gitops-rollout/prod/ml/a",
    ]
    assert host.pulls_for_prefix("gitops-rollout/", base="release") == []


def test_registry_builds_the_local_host_and_refuses_unknown_kinds(remote: Remote) -> None:
    assert sorted(HOSTS) == ["gitea", "github", "gitlab", "local"]
    host = make_host("local", HostConfig(remote=str(remote.path)))
    assert isinstance(host, LocalHost)
    with pytest.raises(
        UnknownHostError,
        match="unknown host kind 'gitbucket'; use one of: gitea, github, gitlab, local",
    ) as err:
        make_host("gitbucket", HostConfig(remote=str(remote.path)))
    assert err.value.exit_code == 1
    with pytest.raises(HostError, match="is not a bare Git repository"):
        make_host("local", HostConfig(remote=str(Path(remote.path).parent)))


# -- cost at scale: the index, and no mergeability in listings ---------------------------------


def bot_branches(
    remote: Remote, count: int, *, prefix: str = "gitops-rollout/prod/ml/m"
) -> list[str]:
    """`count` bot branches, one commit each on top of main (plumbing: many pushes are slow)."""
    bare = str(remote.path)
    lines = []
    for i in range(count):
        sha = git(
            "--git-dir", bare, "commit-tree", "main^{tree}", "-p", "main", "-m", f"{prefix}{i}"
        ).strip()
        lines.append(f"create refs/heads/{prefix}{i} {sha}\n")
    subprocess.run(
        ["git", "--git-dir", bare, "update-ref", "--stdin"],
        input="".join(lines).encode(),
        check=True,
    )
    return [f"{prefix}{i}" for i in range(count)]


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the pull request records every LocalHost reads from now on."""
    seen: list[str] = []
    read = LocalHost._read

    def counting(path: Path) -> PullRecord | None:
        seen.append(path.name)
        return read(path)

    monkeypatch.setattr(LocalHost, "_read", staticmethod(counting))
    return seen


def test_open_or_update_reads_only_its_own_record(
    remote: Remote, clock: Clock, reads: list[str], git_calls: list[str]
) -> None:
    heads = bot_branches(remote, 40)
    host = LocalHost(remote.path, clock=clock)
    for head in heads:
        host.open_or_update(draft(head))
    reads.clear()
    git_calls.clear()

    updated = LocalHost(remote.path, clock=clock).open_or_update(draft(heads[17], body="second"))

    assert (updated.number, updated.body) == (18, "second")
    assert reads == ["18.json"], "the other 39 records are not read"
    # Two git calls, neither reading every ref or every branch: a look-up of its refs, and
    # whether its head is on main already (for-each-ref --merged naming that branch only).
    assert git_calls == ["cat-file", "for-each-ref"]
    # A branch without a pull request yet: no record read at all, one claimed number.
    [new] = bot_branches(remote, 1, prefix="gitops-rollout/staging/ml/m")
    reads.clear()
    assert host.open_or_update(draft(new)).number == 41
    assert reads == []


def test_listings_and_updates_compute_no_mergeability(
    host: LocalHost, remote: Remote, git_calls: list[str]
) -> None:
    bot_branch(remote)
    opened = host.open_or_update(draft())
    remote.commit({ROUTING: "spec: {w: 99} # hand edit\n"})
    git_calls.clear()

    updated = host.open_or_update(draft(body="second"))
    [listed] = host.pulls_for_prefix("gitops-rollout/", base="main")

    assert opened.mergeable is updated.mergeable is listed.mergeable is None
    assert "merge-tree" not in git_calls
    assert host.mergeable(opened.number) is False


MERGEABILITY = [
    pytest.param("open", True, id="merges-cleanly"),
    pytest.param("conflicting", False, id="conflicts-with-a-push-to-main"),
    pytest.param("merged", None, id="merged"),
    pytest.param("closed", None, id="closed"),
    pytest.param("merged-outside", None, id="head-reached-main-outside-the-host"),
]


@pytest.mark.parametrize(("state", "expected"), MERGEABILITY)
def test_mergeable_answers_for_one_pull_request_now(
    host: LocalHost, remote: Remote, state: str, expected: bool | None
) -> None:
    head = bot_branch(remote)
    pr = host.open_or_update(draft())
    if state == "conflicting":
        remote.commit({ROUTING: "spec: {w: 99} # hand edit\n"})
    elif state == "merged":
        assert host.merge(pr.number, message="merge #1").merged
    elif state == "closed":
        host.close(pr.number)
    elif state == "merged-outside":
        git("--git-dir", str(remote.path), "update-ref", "refs/heads/main", head)

    assert host.mergeable(pr.number) is expected


def test_mergeable_of_an_unknown_number_is_a_host_error(host: LocalHost) -> None:
    with pytest.raises(HostError, match=r"no pull request #9 in "):
        host.mergeable(9)


def entry_of(remote: Remote, head: str) -> Path:
    """The index file of `head` (found by its content: the file name is a hash)."""
    for path in (remote.path / INDEX_DIR).glob("*.json"):
        if json.loads(path.read_text())["head"] == head:
            return path
    raise AssertionError(f"{head} is not in the index")


OTHER = "gitops-rollout/prod/ml/iris"


def damage(remote: Remote, how: str) -> None:
    index, mark = remote.path / INDEX_DIR, remote.path / INDEX_MARK
    if how == "no-index":
        shutil.rmtree(index)
        mark.unlink()
    elif how == "no-mark":
        mark.unlink()
    elif how == "garbled-mark":
        mark.write_text("{not json")
    elif how == "garbled-entry":
        entry_of(remote, HEAD).write_text("")
    elif how == "entry-names-another-branch":
        path = entry_of(remote, HEAD)
        path.write_text(json.dumps({"format": 1, "head": HEAD, "latest": {"main": 2}}))
    elif how == "entry-names-a-missing-record":
        path = entry_of(remote, HEAD)
        path.write_text(json.dumps({"format": 1, "head": HEAD, "latest": {"main": 7}}))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("no-index", id="a-repository-from-before-the-index"),
        pytest.param("no-mark", id="mark-lost"),
        pytest.param("garbled-mark", id="mark-unreadable"),
        pytest.param("garbled-entry", id="entry-unreadable"),
        pytest.param("entry-names-another-branch", id="entry-names-another-branch"),
        pytest.param("entry-names-a-missing-record", id="entry-names-a-missing-record"),
    ],
)
def test_a_missing_or_stale_index_is_rebuilt_from_the_records(
    host: LocalHost, remote: Remote, clock: Clock, reads: list[str], how: str
) -> None:
    # HEAD: #1 closed, #3 open; OTHER: #2 open.
    bot_branch(remote)
    host.close(host.open_or_update(draft()).number)
    bot_branch(remote, head=OTHER)
    host.open_or_update(draft(OTHER))
    bot_branch(remote, "spec: {w: 20}\n")
    assert host.open_or_update(draft()).number == 3
    damage(remote, how)

    fresh = LocalHost(remote.path, clock=clock)
    again = fresh.open_or_update(draft(body="after the damage"))

    assert (again.number, again.body) == (3, "after the damage")
    assert [(r.number, r.head) for r in fresh.list_pulls(state=PullState.OPEN)] == [
        (3, HEAD),
        (2, OTHER),
    ]
    assert fresh.open_or_update(draft(OTHER)).number == 2
    # Rebuilt for good: the next look-up reads one record again.
    reads.clear()
    fresh.open_or_update(draft(body="later"))
    assert reads == ["3.json"]


CRASHES = [
    # (the step that dies, the number the retry ends with)
    pytest.param("_save", 3, id="after-claiming-a-number-before-writing-the-record"),
    pytest.param("_index_record", 2, id="after-writing-the-record-before-indexing-it"),
]


@pytest.mark.parametrize(("step", "number"), CRASHES)
def test_a_crash_while_opening_loses_nothing_and_opens_nothing_twice(
    host: LocalHost,
    remote: Remote,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    number: int,
) -> None:
    bot_branch(remote)
    host.close(host.open_or_update(draft()).number)
    head = bot_branch(remote, "spec: {w: 20}\n")

    def dies(*args: object) -> None:
        raise KeyboardInterrupt  # the process is killed here

    monkeypatch.setattr(host, step, dies)
    with pytest.raises(KeyboardInterrupt):
        host.open_or_update(draft(body="first try"))

    fresh = LocalHost(remote.path, clock=clock)
    retried = fresh.open_or_update(draft(body="retry"))
    assert retried.number == number
    assert [r.number for r in fresh.list_pulls(state=PullState.OPEN)] == [number]
    assert remote.refs()[f"refs/pull/{number}/head"] == head
    assert [p.number for p in fresh.pulls_for_prefix("gitops-rollout/", base="main")] == [
        number,
        1,
    ]


def test_records_are_replaced_whole_and_leave_no_temp_files(
    host: LocalHost, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    heads = [f"gitops-rollout/prod/ml/{name}" for name in ("a", "b", "c")]
    for head in heads:
        bot_branch(remote, head=head)
    opened = host.open_many([draft(head) for head in heads])
    numbers = [p.number for p in opened if isinstance(p, PullRequest)]
    assert len(numbers) == len(heads)
    first = remote.path / PULLS_DIR / f"{numbers[0]}.json"
    inode = first.stat().st_ino
    # A temp file a dead process with our pid left where the next one would go is stepped over.
    monkeypatch.setattr(local, "_temp_names", itertools.count())
    stale = first.with_name(f".{first.name}.{os.getpid()}.0.tmp")
    stale.write_text("left by a dead process")

    host.merge_many([(n, f"merge #{n}") for n in numbers])

    # Renamed over, not rewritten in place: a reader sees the old record or the new, whole.
    assert first.stat().st_ino != inode
    for n in numbers:
        path = remote.path / PULLS_DIR / f"{n}.json"
        assert PullRecord.from_json(json.loads(path.read_text())) == host.show(n)
        assert host.show(n).state is PullState.MERGED
    assert stale.read_text() == "left by a dead process"
    stale.unlink()
    assert [p.name for p in (remote.path / "gitops-rollout").rglob("*.tmp")] == []
