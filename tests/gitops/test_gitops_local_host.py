"""The local host: pull requests in a bare repository, merged server-side like a real forge."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from gitops_helpers import T0, Clock, Remote, git

from gitops_rollout.errors import HostError
from gitops_rollout.gitops.hosts import HOSTS, HostConfig, UnknownHostError, make_host
from gitops_rollout.gitops.hosts.base import PullRequestDraft, PullState
from gitops_rollout.gitops.hosts.local import PULLS_DIR, LocalHost

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
    saves = []

    def dying_save(record: object) -> None:
        saves.append(record)
        if len(saves) == 2:  # the record that says "merged": the process dies first
            raise KeyboardInterrupt
        real_save(record)  # type: ignore[arg-type]

    host._save = dying_save  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        host.merge(pr.number, message="merge #1")
    merged_main = remote.sha("main")
    fresh = LocalHost(remote.path, clock=clock)
    record = fresh.show(pr.number)
    assert (record.state, record.merge_sha) == (PullState.MERGED, merged_main)


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
