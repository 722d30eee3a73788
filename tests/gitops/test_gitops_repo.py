"""The bot's clone: commits without a work tree, leased pushes, human edits, merge times."""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from gitops_helpers import BOT, T0, Remote, git, identity_env

from gitops_rollout.errors import GitWriteError
from gitops_rollout.gitops import repo as repo_module
from gitops_rollout.gitops.changeset import ChangeSet
from gitops_rollout.gitops.repo import (
    BRANCH_PREFIX,
    CommitMessage,
    CommitRequest,
    PushOutcome,
    Workspace,
    _split_credentials,
    branch_name,
    origin_url,
)

ROUTING = "clusters/prod/ml/wisdom/rollout/routing.yaml"
BRANCH = branch_name(cluster="prod", namespace="ml", model="wisdom")
IRIS_ROUTING = "clusters/prod/ml/iris/rollout/routing.yaml"
IRIS = branch_name(cluster="prod", namespace="ml", model="iris")
MESSAGE = CommitMessage(
    "rollout(wisdom): prod step 1/4 -> 10%",
    "- candidate healthy",
    (
        ("Rollout-Policy", "policies/wisdom.yaml"),
        ("Rollout-Decision", "d1"),
        ("Rollout-Kind", "step"),
    ),
)


def request(
    ws: Workspace, desired: dict[str, bytes | None], message: CommitMessage = MESSAGE
) -> CommitRequest:
    return CommitRequest(BRANCH, ChangeSet.build(ws.tree(), desired), message)


def step(weight: int) -> dict[str, bytes | None]:
    return {ROUTING: f"kind: VirtualService\nspec: {{w: {weight}}}\n".encode()}


def cache_refs(ws: Workspace) -> dict[str, str]:
    """{ref: sha} of every ref in the cache clone."""
    out = git("--git-dir", str(ws.git_dir), "for-each-ref", "--format=%(refname) %(objectname)")
    return dict(line.split(" ") for line in out.splitlines())


def pushed_record(ws: Workspace) -> object:
    """The cache's record of what the bot pushed, as JSON."""
    return json.loads((ws.git_dir / "gitops-rollout-pushed").read_text())


# -- branch names ------------------------------------------------------------------------------


def test_branch_name_is_stable() -> None:
    assert BRANCH == "gitops-rollout/prod/ml/wisdom"
    assert branch_name(cluster="prod", namespace="ml", model="wisdom") == BRANCH


@pytest.mark.parametrize(
    ("cluster", "namespace", "model"),
    [("prod", "ml", "a..b"), ("prod", "m l", "x"), ("-x", "ml", "x"), ("p", "ns", "x.lock")],
    ids=["dots", "space", "leading-dash", "lock-suffix"],
)
def test_names_git_refuses_are_refused(cluster: str, namespace: str, model: str) -> None:
    with pytest.raises(ValueError, match="cannot be part of a branch name"):
        branch_name(cluster=cluster, namespace=namespace, model=model)


# -- no change, no commit ----------------------------------------------------------------------


def test_no_change_means_no_commit_and_no_push(workspace: Workspace, remote: Remote) -> None:
    before = remote.refs()
    objects = git("--git-dir", str(workspace.git_dir), "count-objects")
    req = request(workspace, {ROUTING: remote.show("main", ROUTING)})
    assert not req.changes
    [result] = workspace.publish([req], now=T0)
    assert result.outcome is PushOutcome.EMPTY
    assert remote.refs() == before
    assert git("--git-dir", str(workspace.git_dir), "count-objects") == objects


def test_commit_is_built_without_a_work_tree(workspace: Workspace, remote: Remote) -> None:
    [built] = workspace.commit([request(workspace, step(10))], now=T0)
    assert built.parent == remote.sha("main")
    assert not built.empty
    assert (
        git("--git-dir", str(workspace.git_dir), "rev-parse", "--is-bare-repository").strip()
        == "true"
    )
    assert not any(p.name == ROUTING.rsplit("/", 1)[-1] for p in workspace.git_dir.rglob("*"))
    # Nothing reached the remote yet.
    assert remote.head(BRANCH) is None


@pytest.mark.parametrize("deleting", [False, True], ids=["writes", "with-a-deletion"])
def test_commits_built_in_python_equal_fast_imports(
    workspace: Workspace, remote: Remote, monkeypatch: pytest.MonkeyPatch, deleting: bool
) -> None:
    """A pass's few commits are built here (files applied to the base's trees, one pack):
    byte for byte the commits fast-import's chain makes, and git finds them sound."""
    tree = workspace.tree()
    existing = sorted(tree.paths("clusters"))
    requests = [
        CommitRequest(
            branch_name(cluster="prod", namespace="ml", model=f"m{i}"),
            ChangeSet.build(
                tree,
                {
                    f"clusters/prod/ml/m{i}/rollout/routing.yaml": b"w: 1\n",
                    f"clusters/prod/ml/m{i}/rollout/state/x y.yaml": f"n: {i}\n".encode(),
                    ROUTING: f"spec: {{w: {i}}}\n".encode(),
                    **({existing[0]: None} if deleting and i == 2 else {}),
                },
            ),
            MESSAGE,
        )
        for i in range(5)
    ]
    folder = workspace.git_dir / "objects" / "pack"
    before = set(folder.glob("*.pack"))
    ours = [(b.sha, b.tree) for b in workspace.commit(requests, now=T0)]
    assert len(set(folder.glob("*.pack")) - before) == 1, "one pack, no fast-import"
    monkeypatch.setattr(repo_module, "_DIRECT_MAX", 0)  # fast-import's chain builds them
    assert [(b.sha, b.tree) for b in workspace.commit(requests, now=T0)] == ours
    git("--git-dir", str(workspace.git_dir), "fsck", "--strict", "--no-dangling")


def test_commit_message_trailers_identity_and_dates(workspace: Workspace, remote: Remote) -> None:
    now = T0 + timedelta(hours=3)
    [result] = workspace.publish([request(workspace, step(10))], now=now)
    assert result.outcome is PushOutcome.PUSHED
    assert remote.head(BRANCH) == result.sha
    fmt = "%an <%ae>|%cn <%ce>|%at|%ct|%P|%s"
    [line] = remote.log(BRANCH, fmt, "-1")
    author, committer, at, ct, parent, subject = line.split("|")
    assert author == committer == "gitops-rollout <bot@rollout.test>"
    assert int(at) == int(ct) == int(now.timestamp())
    assert parent == remote.sha("main")
    assert subject == "rollout(wisdom): prod step 1/4 -> 10%"
    trailers = remote.log(BRANCH, "%(trailers:only,unfold)", "-1")
    assert trailers == [
        "Rollout-Policy: policies/wisdom.yaml",
        "Rollout-Decision: d1",
        "Rollout-Kind: step",
    ]
    assert remote.show(BRANCH, ROUTING) == step(10)[ROUTING]


def test_each_commit_holds_only_its_own_change(workspace: Workspace, remote: Remote) -> None:
    """Commits are built in one batch; none may carry a neighbour's change."""
    git("update-index", "--chmod=+x", "--add", "clusters/prod/ml/iris/v1.yaml", cwd=remote.work)
    git("commit", "--quiet", "-m", "executable", cwd=remote.work)
    git("push", "--quiet", "origin", "HEAD:main", cwd=remote.work)
    workspace.fetch()
    tree = workspace.tree()
    wanted: list[dict[str, bytes | None]] = [
        {"clusters/prod/ml/iris/v1.yaml": None, ROUTING: b"w: 1\n"},
        {"clusters/prod/ml/iris/rollout/routing.yaml": b"w: 2\n"},
        {"policies/wisdom.yaml": b"edited: true\n", "clusters/prod/ml/iris/v1.yaml": b"x\n"},
        {"clusters/prod/ml/new/rollout/routing.yaml": b"w: 3\n"},
    ]
    requests = [
        CommitRequest(
            branch_name(cluster="prod", namespace="ml", model=f"m{i}"),
            ChangeSet.build(tree, desired),
            CommitMessage(f"change {i}"),
        )
        for i, desired in enumerate(wanted)
    ]
    base = remote.sha("main")
    for desired, built in zip(wanted, workspace.commit(requests, now=T0), strict=True):
        raw = git(
            "--git-dir", str(workspace.git_dir), "diff-tree", "-r", "--no-renames", base, built.sha
        )
        changed = {line.split("\t")[1] for line in raw.splitlines()}
        assert changed == set(desired)
        modes = git(
            "--git-dir",
            str(workspace.git_dir),
            "ls-tree",
            built.sha,
            "clusters/prod/ml/iris/v1.yaml",
        )
        if "clusters/prod/ml/iris/v1.yaml" not in desired:
            assert modes.startswith("100755 ")
        assert built.parent == base


# -- reruns and restarts -----------------------------------------------------------------------


def test_rerun_keeps_the_pushed_commit(workspace: Workspace, remote: Remote) -> None:
    [first] = workspace.publish([request(workspace, step(10))], now=T0)
    workspace.fetch()
    [again] = workspace.publish([request(workspace, step(10))], now=T0 + timedelta(minutes=5))
    assert again.outcome is PushOutcome.UNCHANGED
    assert remote.head(BRANCH) == first.sha == again.sha


def test_unrelated_base_change_does_not_force_push(workspace: Workspace, remote: Remote) -> None:
    [first] = workspace.publish([request(workspace, step(10))], now=T0)
    remote.commit({"clusters/prod/ml/iris/v1.yaml": "kind: Deployment # touched\n"})
    workspace.fetch()
    [again] = workspace.publish([request(workspace, step(10))], now=T0 + timedelta(minutes=5))
    assert again.outcome is PushOutcome.UNCHANGED
    assert remote.head(BRANCH) == first.sha


def test_base_change_to_the_same_file_rebuilds_on_the_new_base(
    workspace: Workspace, remote: Remote
) -> None:
    workspace.publish([request(workspace, step(10))], now=T0)
    moved = remote.commit({ROUTING: "kind: VirtualService\nspec: {w: 0} # human\n"})
    workspace.fetch()
    [again] = workspace.publish([request(workspace, step(10))], now=T0 + timedelta(minutes=5))
    assert again.outcome is PushOutcome.PUSHED
    assert remote.log(BRANCH, "%P", "-1") == [moved]


def test_a_new_decision_replaces_the_pending_one(workspace: Workspace, remote: Remote) -> None:
    workspace.publish([request(workspace, step(10))], now=T0)
    rollback = CommitMessage("rollout(wisdom): prod rollback", "", (("Rollout-Kind", "rollback"),))
    workspace.fetch()
    [result] = workspace.publish([request(workspace, step(0), rollback)], now=T0)
    # w: 0 is what main holds: the change set is empty, the branch is left as it is.
    assert result.outcome is PushOutcome.EMPTY
    workspace.fetch()
    [result] = workspace.publish([request(workspace, step(50), rollback)], now=T0)
    assert result.outcome is PushOutcome.PUSHED
    assert remote.log(BRANCH, "%s", "-1") == ["rollout(wisdom): prod rollback"]
    assert len(remote.log(f"main..{BRANCH}")) == 1


def test_killed_between_commit_and_push_then_rerun(
    workspace: Workspace, remote: Remote, tmp_path: Path
) -> None:
    workspace.commit([request(workspace, step(10))], now=T0)
    workspace.close()  # the process dies here
    with Workspace.open(str(remote.path), cache_dir=tmp_path / "cache", identity=BOT) as ws:
        ws.fetch()
        [result] = ws.publish([request(ws, step(10))], now=T0 + timedelta(minutes=1))
    assert result.outcome is PushOutcome.PUSHED
    assert remote.show(BRANCH, ROUTING) == step(10)[ROUTING]
    assert len(remote.log(f"main..{BRANCH}")) == 1


def test_a_remote_without_the_base_branch_is_explained(tmp_path: Path) -> None:
    empty = tmp_path / "empty.git"
    git("init", "--quiet", "--bare", str(empty))
    with (
        Workspace.open(str(empty), cache_dir=tmp_path / "cache") as ws,
        pytest.raises(
            GitWriteError, match="has no branch 'main'; create it, or pass the base branch"
        ),
    ):
        ws.fetch()


def test_reopening_with_another_base_fetches_that_base(remote: Remote, tmp_path: Path) -> None:
    remote.commit({"README.md": "release\n"}, branch="release")
    with Workspace.open(str(remote.path), cache_dir=tmp_path / "c") as ws:
        assert ws.fetch() == remote.sha("main")
    with Workspace.open(str(remote.path), cache_dir=tmp_path / "c", base="release") as ws:
        assert ws.fetch() == remote.sha("release")
        assert "README.md" in ws.tree().paths()


def test_the_clone_is_configured_again_only_when_the_base_or_the_remote_changed(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every open checks the clone's origin (one git process); it writes only what moved."""
    writes: list[tuple[str, ...]] = []
    run = Workspace._run

    def counting(self: Workspace, *args: str, **kwargs: Any) -> bytes:
        if args[0] == "config" and len(args) > 2 and args[1] != "--get-all":  # not ours below
            writes.append(args)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(Workspace, "_run", counting)
    remote.commit({"README.md": "release\n"}, branch="release")
    moved = tmp_path / "moved.git"
    shutil.copytree(remote.path, moved)

    def reopen(url: Path, base: str = "main") -> int:
        with Workspace.open(str(url), cache_dir=tmp_path / "c", base=base) as ws:
            assert ws.fetch() == remote.sha(base)
            fetch = ws._run("config", "--get-all", "remote.origin.fetch").decode().split()
            assert fetch == [
                f"+refs/heads/{base}:refs/remotes/origin/{base}",
                f"+refs/heads/{BRANCH_PREFIX}*:refs/remotes/origin/{BRANCH_PREFIX}*",
            ]
            assert ws._run("config", "remote.origin.url").decode().strip() == str(url)
        return len(writes)

    first = reopen(remote.path)
    assert first > 0
    assert reopen(remote.path) == first
    release = reopen(remote.path, "release")
    assert release > first
    assert reopen(remote.path, "release") == release
    assert reopen(moved, "release") > release


def test_one_process_per_cache(workspace: Workspace, remote: Remote, tmp_path: Path) -> None:
    with pytest.raises(GitWriteError, match="another gitops-rollout process is using the clone"):
        Workspace.open(str(remote.path), cache_dir=tmp_path / "cache")


# -- racing pushes -----------------------------------------------------------------------------


def test_branch_moved_after_fetch_is_fetched_rebuilt_and_retried(
    workspace: Workspace, remote: Remote, tmp_path: Path, sleeps: list[float]
) -> None:
    # Another reconciler (same bot identity, its own cache) pushes between our fetch and push.
    with Workspace.open(str(remote.path), cache_dir=tmp_path / "other", identity=BOT) as other:
        other.fetch()
        other.publish([request(other, step(5))], now=T0)
    [result] = workspace.publish([request(workspace, step(10))], now=T0)
    assert result.outcome is PushOutcome.PUSHED
    assert len(sleeps) == 1 and 0 < sleeps[0] <= 1.5
    assert remote.show(BRANCH, ROUTING) == step(10)[ROUTING]


def test_retries_are_bounded(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    ws = Workspace.open(
        str(remote.path),
        cache_dir=tmp_path / "cache",
        identity=BOT,
        sleep=sleeps.append,
        rng=random.Random(1),
        max_attempts=3,
    )
    ws.fetch()
    req = request(ws, step(10))
    with Workspace.open(str(remote.path), cache_dir=tmp_path / "other", identity=BOT) as other:
        real_fetch = ws.fetch
        weights = iter(range(1, 100))

        def racing_fetch() -> str:
            sha = real_fetch()
            other.fetch()  # the other replica wins every race right after our fetch
            other.publish([request(other, step(next(weights)))], now=T0)
            return sha

        monkeypatch.setattr(ws, "fetch", racing_fetch)
        racing_fetch()
        [result] = ws.publish([req], now=T0)
    ws.close()
    assert result.outcome is PushOutcome.REJECTED
    assert result.detail.startswith("gave up after 3 attempts: [rejected]")
    assert len(sleeps) == 2
    assert sleeps[1] > sleeps[0] * 0.6  # backoff grows (with jitter)


def test_one_push_for_many_branches(
    workspace: Workspace, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    pushes: list[tuple[str, ...]] = []
    real = workspace._run_status

    def spy(*args: str, **kwargs: object) -> tuple[int, bytes, str]:
        if args[0] == "push":
            pushes.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(workspace, "_run_status", spy)
    tree = workspace.tree()
    requests = [
        CommitRequest(
            branch_name(cluster="prod", namespace="ml", model=f"m{i}"),
            ChangeSet.build(tree, {f"clusters/prod/ml/m{i}/rollout/routing.yaml": b"w: 1\n"}),
            CommitMessage(f"rollout(m{i}): prod start"),
        )
        for i in range(25)
    ]
    results = workspace.publish(requests, now=T0)
    assert {r.outcome for r in results} == {PushOutcome.PUSHED}
    assert len(pushes) == 1
    assert sum(1 for ref in remote.refs() if ref.startswith("refs/heads/gitops-rollout/")) == 25


# -- human edits -------------------------------------------------------------------------------


def test_human_commit_on_the_bot_branch_is_reported_and_kept(
    workspace: Workspace, remote: Remote
) -> None:
    workspace.publish([request(workspace, step(10))], now=T0)
    human = remote.commit({ROUTING: "kind: VirtualService\nspec: {w: 15}\n"}, branch=BRANCH)
    workspace.fetch()
    edits = workspace.human_edits()
    assert list(edits) == [BRANCH]
    assert edits[BRANCH].authors == ("alice@example.com",)
    assert edits[BRANCH].commits == (human,)
    [result] = workspace.publish([request(workspace, step(25))], now=T0 + timedelta(minutes=5))
    assert result.outcome is PushOutcome.HUMAN_EDITED
    assert "alice@example.com" in result.detail and "will not overwrite" in result.detail
    assert remote.head(BRANCH) == human


def test_amend_that_keeps_the_bot_as_author_is_still_a_human_edit(
    workspace: Workspace, remote: Remote
) -> None:
    workspace.publish([request(workspace, step(10))], now=T0)
    remote.commit(
        {ROUTING: "spec: {w: 11}\n"},
        branch=BRANCH,
        author=(BOT.name, BOT.email),
        committer=("Bob", "bob@example.com"),
        amend=True,
    )
    workspace.fetch()
    assert workspace.human_edits()[BRANCH].authors == ("bob@example.com",)


def test_head_the_bot_did_not_push_is_a_human_edit_even_with_the_bot_identity(
    workspace: Workspace, remote: Remote
) -> None:
    workspace.publish([request(workspace, step(10))], now=T0)
    remote.commit(
        {ROUTING: "spec: {w: 12}\n"}, branch=BRANCH, author=(BOT.name, BOT.email), amend=True
    )
    workspace.fetch()
    edit = workspace.human_edits()[BRANCH]
    assert edit.commits == () and "not at what gitops-rollout last pushed" in edit.describe()


def test_human_edits_reads_each_branch_once_until_a_fetch_or_a_push(
    workspace: Workspace, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass asks before it commits and again when it pushes: one ``git log`` serves both,
    and what a fetch or a push moved is read again."""
    logs: list[bytes] = []
    run = workspace._run

    def counting(*args: str, **kwargs: Any) -> bytes:
        if args[0] == "log":
            logs.append(kwargs.get("stdin") or b"")
        return run(*args, **kwargs)

    monkeypatch.setattr(workspace, "_run", counting)
    workspace.publish([request(workspace, step(10))], now=T0)
    assert workspace.human_edits([BRANCH]) == {} and workspace.human_edits() == {}
    assert len(logs) == 1
    human = remote.commit({ROUTING: "spec: {w: 15}\n"}, branch=BRANCH)
    assert workspace.human_edits() == {}  # what the last fetch saw
    workspace.fetch()
    assert workspace.human_edits()[BRANCH].commits == (human,)
    assert len(logs) == 2
    tree = workspace.tree()
    iris = {IRIS_ROUTING: b"spec: {w: 5}\n"}
    workspace.publish([CommitRequest(IRIS, ChangeSet.build(tree, iris), MESSAGE)], now=T0)
    assert list(workspace.human_edits()) == [BRANCH]
    assert len(logs) == 3  # every branch again after the push (IRIS was new: not asked)


def test_changes_since_names_each_file_with_its_blob_before_and_now(
    workspace: Workspace, remote: Remote
) -> None:
    before = workspace.base_sha
    old = workspace.tree()
    gone = sorted(old.paths("clusters"))[0]
    remote.commit({ROUTING: "spec: {w: 99}\n", "docs/new file.md": "hi\n", gone: None})
    workspace.fetch()
    now = workspace.tree()
    changes = sorted(workspace.changes_since(before) or [])
    assert changes == sorted(
        [
            (ROUTING, old.blob_id(ROUTING), now.blob_id(ROUTING)),
            ("docs/new file.md", None, now.blob_id("docs/new file.md")),
            (gone, old.blob_id(gone), None),
        ]
    )
    assert workspace.changed_since(before) == {c[0] for c in changes}
    assert workspace.changes_since(workspace.base_sha) == []
    assert workspace.changes_since("0" * 40) is None  # not an earlier commit of the base


def test_merged_bot_branch_is_not_a_human_edit(workspace: Workspace, remote: Remote) -> None:
    [pushed] = workspace.publish([request(workspace, step(10))], now=T0)
    git("--git-dir", str(remote.path), "update-ref", "refs/heads/main", pushed.sha or "")
    workspace.fetch()
    assert workspace.human_edits() == {}


def test_a_push_that_died_before_it_was_recorded_is_still_ours(
    workspace: Workspace, remote: Remote, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The branch was pushed before (we hold a record of it), then pushed again by a process
    that died right after git pushed: the new head is the bot's, not a human's."""
    workspace.publish([request(workspace, step(10))], now=T0)
    run = workspace._run_status

    def die_after_push(*args: str, **kwargs: Any) -> tuple[int, bytes, str]:
        out = run(*args, **kwargs)
        if args[0] == "push":
            raise KeyboardInterrupt  # the process dies once git pushed, before recording it
        return out

    monkeypatch.setattr(workspace, "_run_status", die_after_push)
    with pytest.raises(KeyboardInterrupt):
        workspace.publish([request(workspace, step(25))], now=T0 + timedelta(minutes=5))
    monkeypatch.undo()
    workspace.close()
    assert b"w: 25" in remote.show(BRANCH, ROUTING)
    with Workspace.open(str(remote.path), cache_dir=tmp_path / "cache", identity=BOT) as ws:
        ws.fetch()
        assert ws.human_edits() == {}
        # The next push settles the record to the one commit the remote has from us.
        [result] = ws.publish([request(ws, step(50))], now=T0 + timedelta(minutes=9))
        assert result.outcome is PushOutcome.PUSHED
        assert ws.human_edits() == {}
    assert pushed_record(workspace) == {BRANCH: [result.sha]}
    assert not list(workspace.git_dir.glob(".gitops-rollout-pushed*"))  # no temporary file


def test_pushes_leave_one_record_file_and_the_remote_tracking_refs(
    workspace: Workspace, remote: Remote
) -> None:
    workspace.publish([request(workspace, step(10))], now=T0)
    [result] = workspace.publish([request(workspace, step(25))], now=T0 + timedelta(minutes=5))
    workspace.close()
    refs = cache_refs(workspace)
    assert [r for r in refs if r.startswith("refs/gitops-rollout/")] == []
    assert refs[f"refs/remotes/origin/{BRANCH}"] == result.sha == remote.head(BRANCH)
    assert pushed_record(workspace) == {BRANCH: [result.sha]}
    assert sorted(p.name for p in workspace.git_dir.glob("*gitops-rollout-p*")) == [
        "gitops-rollout-push.git",
        "gitops-rollout-pushed",
    ]
    view = workspace.git_dir / "gitops-rollout-push.git"
    assert git("--git-dir", str(view), "for-each-ref") == ""


def test_the_bots_own_pushes_are_not_human_edits_in_this_process_or_the_next(
    workspace: Workspace, remote: Remote, tmp_path: Path
) -> None:
    def both(ws: Workspace, weight: int) -> list[CommitRequest]:
        iris = {IRIS_ROUTING: f"spec: {{w: {weight}}}\n".encode()}
        return [
            request(ws, step(weight)),
            CommitRequest(IRIS, ChangeSet.build(ws.tree(), iris), MESSAGE),
        ]

    workspace.publish(both(workspace, 10), now=T0)
    pushed = workspace.publish(both(workspace, 25), now=T0 + timedelta(minutes=5))
    assert {r.outcome for r in pushed} == {PushOutcome.PUSHED}
    assert workspace.human_edits() == {}, "before any fetch"
    workspace.fetch()
    assert workspace.human_edits() == {}
    # A commit with the bot's identity that this cache did not push is someone else's.
    remote.commit(
        {IRIS_ROUTING: "spec: {w: 30}\n"}, branch=IRIS, author=(BOT.name, BOT.email), amend=True
    )
    workspace.close()
    with Workspace.open(str(remote.path), cache_dir=tmp_path / "cache", identity=BOT) as ws:
        ws.fetch()
        assert list(ws.human_edits()) == [IRIS]


@pytest.mark.parametrize("packed", [False, True], ids=["loose-refs", "packed-refs"])
def test_an_earlier_versions_records_are_moved_into_one_file(
    workspace: Workspace, remote: Remote, tmp_path: Path, packed: bool
) -> None:
    """A cache of an earlier version recorded pushes as refs/gitops-rollout/pushed/<branch>,
    and a push under way in gitops-rollout-pending: an upgrade keeps telling the bot's heads
    from others', and leaves neither behind."""
    tree = workspace.tree()

    def both(weight: int) -> list[CommitRequest]:
        iris = {IRIS_ROUTING: f"spec: {{w: {weight}}}\n".encode()}
        return [
            request(workspace, step(weight)),
            CommitRequest(IRIS, ChangeSet.build(tree, iris), MESSAGE),
        ]

    _, iris_first = workspace.publish(both(10), now=T0)
    ours, iris_now = workspace.publish(both(25), now=T0 + timedelta(minutes=5))
    # Someone with the bot's identity replaces the head of BRANCH; IRIS's head is the bot's,
    # pushed by a process that died before recording it (so only the pending file names it).
    remote.commit(
        {ROUTING: "spec: {w: 30}\n"}, branch=BRANCH, author=(BOT.name, BOT.email), amend=True
    )
    workspace.close()
    cache = workspace.git_dir
    (cache / "gitops-rollout-pushed").unlink()
    old = [(BRANCH, ours.sha), (IRIS, iris_first.sha)]
    for branch, sha in old:
        git(
            "--git-dir", str(cache), "update-ref", f"refs/gitops-rollout/pushed/{branch}", sha or ""
        )
    if packed:
        git("--git-dir", str(cache), "pack-refs", "--all")
    (cache / "gitops-rollout-pending").write_text(json.dumps({IRIS: iris_now.sha}))

    with Workspace.open(str(remote.path), cache_dir=tmp_path / "cache", identity=BOT) as ws:
        ws.fetch()
        assert list(ws.human_edits()) == [BRANCH]
    assert [r for r in cache_refs(workspace) if r.startswith("refs/gitops-rollout/")] == []
    assert not (cache / "gitops-rollout-pending").exists()
    assert pushed_record(workspace) == {BRANCH: [ours.sha], IRIS: [iris_first.sha, iris_now.sha]}


_FIX = (
    "it records the commits gitops-rollout pushed: delete it to start the record afresh "
    "(until the next push, a bot branch is then judged by its commits' authors alone)"
)
_OLD_FIX = (
    "it names the commits of a push an earlier version may not have finished: delete it "
    "(a bot branch is then judged by its commits' authors alone)"
)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "gitops-rollout-pushed",
            "{not json",
            "is not JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
            f"(char 1)); {_FIX}",
        ),
        (
            "gitops-rollout-pushed",
            '["gitops-rollout/prod/ml/wisdom"]',
            f"is not a JSON object of {{branch: [commit id, ...]}}; {_FIX}",
        ),
        (
            "gitops-rollout-pushed",
            '{"gitops-rollout/prod/ml/wisdom": "' + "a" * 40 + '"}',
            f"is not a JSON object of {{branch: [commit id, ...]}}; {_FIX}",
        ),
        (
            "gitops-rollout-pending",
            "{",
            "cannot be read (Expecting property name enclosed in double quotes: line 1 column 2 "
            f"(char 1)); {_OLD_FIX}",
        ),
        (
            "gitops-rollout-pending",
            '{"gitops-rollout/prod/ml/wisdom": 1}',
            f"is not a JSON object of {{branch: commit id}}; {_OLD_FIX}",
        ),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "sha-not-in-a-list",
        "old-pending-not-json",
        "old-pending-not-a-sha",
    ],
)
def test_an_unreadable_record_stops_the_push_and_says_how_to_fix_it(
    workspace: Workspace, remote: Remote, name: str, content: str, message: str
) -> None:
    path = workspace.git_dir / name
    if name == "gitops-rollout-pending":  # an earlier version's cache: no record file yet
        (workspace.git_dir / "gitops-rollout-pushed").unlink(missing_ok=True)
    path.write_text(content)
    with pytest.raises(GitWriteError) as raised:
        workspace.publish([request(workspace, step(10))], now=T0)
    assert str(raised.value) == f"{path} {message}"
    assert remote.head(BRANCH) is None, "nothing pushed"


# -- remote-tracking refs, written in the background ------------------------------------------


def _lock_tracking_ref(ws: Workspace) -> Path:
    """A lock file git leaves when killed: the next update of that ref fails."""
    lock = ws.git_dir / "refs" / "remotes" / "origin" / f"{BRANCH}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    return lock


_UPDATE_FAILED = (
    r"(?s)the remote-tracking refs of the last push were not written \(git update-ref failed .*"
    r"wisdom\.lock.*\); the pushes went through, and the next fetch rewrites these refs"
)

NEXT_CALLS: dict[str, Callable[[Workspace], object]] = {
    "fetch": lambda ws: ws.fetch(),
    "start_fetch": lambda ws: ws.start_fetch(),
    "remote_heads": lambda ws: ws.remote_heads(),
    "human_edits": lambda ws: ws.human_edits(),
    "publish": lambda ws: ws.publish([request(ws, step(25))], now=T0),
    "commit": lambda ws: ws.commit([request(ws, step(25))], now=T0),
    "changes_since": lambda ws: ws.changes_since(ws.base_sha),
    "merge_time": lambda ws: ws.merge_time([ROUTING]),
    "merged_with_trailer": lambda ws: ws.merged_with_trailer("Rollout-Decision", ["d1"]),
}


@pytest.mark.parametrize("call", NEXT_CALLS)
def test_a_failed_tracking_ref_update_is_raised_by_the_next_call(
    workspace: Workspace, remote: Remote, call: str
) -> None:
    lock = _lock_tracking_ref(workspace)
    [result] = workspace.publish([request(workspace, step(10))], now=T0)
    assert result.outcome is PushOutcome.PUSHED and remote.head(BRANCH) == result.sha
    with pytest.raises(GitWriteError, match=_UPDATE_FAILED):
        NEXT_CALLS[call](workspace)
    # Raised once; a fetch then rewrites the refs.
    lock.unlink()
    workspace.fetch()
    assert cache_refs(workspace)[f"refs/remotes/origin/{BRANCH}"] == result.sha


def test_close_logs_a_failed_tracking_ref_update_and_releases_the_cache(
    workspace: Workspace, remote: Remote, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The pushes went through: the pass's result stands, and the next fetch writes the refs."""
    _lock_tracking_ref(workspace)
    [result] = workspace.publish([request(workspace, step(10))], now=T0)
    with caplog.at_level(logging.WARNING, logger="gitops_rollout.gitops.repo"):
        workspace.close()
    assert re.search(_UPDATE_FAILED, caplog.text)
    (workspace.git_dir / f"refs/remotes/origin/{BRANCH}.lock").unlink()
    with Workspace.open(str(remote.path), cache_dir=tmp_path / "cache", identity=BOT) as again:
        again.fetch()  # the lock was released all the same
        assert again.remote_heads()[BRANCH] == result.sha


# -- history -----------------------------------------------------------------------------------


def test_merge_time_of_many_paths_in_one_pass(workspace: Workspace, remote: Remote) -> None:
    expected = {}
    for i in range(60):
        when = T0 + timedelta(minutes=i)
        files = {f"clusters/prod/ml/m{i % 20}/rollout/routing.yaml": f"w: {i}\n"}
        remote.commit(files, when=when, message=f"change {i}")
        expected[f"clusters/prod/ml/m{i % 20}/rollout/routing.yaml"] = when
        expected[f"clusters/prod/ml/m{i % 20}/rollout"] = when
    # A change made on a side branch counts from when it was merged, not when it was written.
    remote.commit({"clusters/prod/ml/side/rollout/routing.yaml": "w: 1\n"}, branch="side", when=T0)
    remote.commit({"clusters/prod/ml/m0/v1.yaml": "x\n"}, when=T0 + timedelta(hours=2))
    merge_at = T0 + timedelta(hours=3)
    work = remote.work
    git("checkout", "--quiet", "main", cwd=work)
    git("reset", "--quiet", "--hard", "origin/main", cwd=work)
    git(
        "merge",
        "--quiet",
        "--no-ff",
        "-m",
        "merge side",
        "origin/side",
        cwd=work,
        env=identity_env(merge_at),
    )
    git("push", "--quiet", "origin", "main", cwd=work)
    expected["clusters/prod/ml/side/rollout/routing.yaml"] = merge_at
    workspace.fetch()
    found = workspace.merge_time([*expected, "clusters/prod/ml/nothing-here/rollout"])
    assert found == expected


def test_merged_with_trailer_finds_the_merge_that_brought_a_decision_in(
    workspace: Workspace, remote: Remote
) -> None:
    [pushed] = workspace.publish([request(workspace, step(10))], now=T0)
    merge_at = T0 + timedelta(hours=1)
    date = f"{int(merge_at.timestamp())} +0000"
    remote.commit({"README": "x"}, when=T0 + timedelta(minutes=30))
    git("checkout", "--quiet", "main", cwd=remote.work)
    git(
        "merge",
        "--quiet",
        "--no-ff",
        "-m",
        "Merge pull request #1",
        pushed.sha or "",
        cwd=remote.work,
        env={"GIT_COMMITTER_DATE": date, "GIT_AUTHOR_DATE": date},
    )
    git("push", "--quiet", "origin", "main", cwd=remote.work)
    workspace.fetch()
    found = workspace.merged_with_trailer("Rollout-Decision", ["d1", "never-merged"])
    assert list(found) == ["d1"]
    assert found["d1"].sha == remote.sha("main")
    assert found["d1"].time == merge_at
    assert found["d1"].commit == pushed.sha


def test_origin_url_of_a_checkout(remote: Remote, tmp_path: Path) -> None:
    assert origin_url(remote.work) == str(remote.path)
    git("remote", "set-url", "origin", "../remote.git", cwd=remote.work)
    assert origin_url(remote.work) == str(remote.path.resolve())
    git("remote", "set-url", "origin", "git@github.com:org/gitops.git", cwd=remote.work)
    assert origin_url(remote.work) == "git@github.com:org/gitops.git"
    plain = tmp_path / "plain"
    plain.mkdir()
    assert origin_url(plain) is None


# -- credentials -------------------------------------------------------------------------------


def test_credentials_leave_the_url_before_git_sees_it(tmp_path: Path) -> None:
    clean, env = _split_credentials(
        "https://x-access-token:s3cr%2Ft@git.example.com/org/gitops.git"
    )
    assert clean == "https://git.example.com/org/gitops.git"
    assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
    assert "s3cr" not in env["GIT_CONFIG_VALUE_0"]  # base64 of user:token, as git sends it
    with Workspace.open(
        "https://x-access-token:s3cret@127.0.0.1:9/org/gitops.git", cache_dir=tmp_path
    ) as ws:
        assert ws.remote == "https://127.0.0.1:9/org/gitops.git"
        config = (ws.git_dir / "config").read_text()
        assert "s3cret" not in config and "127.0.0.1:9/org/gitops.git" in config
        with pytest.raises(GitWriteError) as err:
            ws.fetch()
    assert "s3cret" not in str(err.value)


# -- scale -------------------------------------------------------------------------------------


def test_thousand_commits_in_one_batch(workspace: Workspace, remote: Remote) -> None:
    """A sanity check of the batch path, not a timed assertion; prints the rate."""
    remote.commit(
        {f"clusters/c{i % 4}/ns{i % 10}/m{i}/v1.yaml": f"name: m{i}\n" for i in range(1000)},
        message="1000 models",
    )
    workspace.fetch()
    tree = workspace.tree()
    requests = [
        CommitRequest(
            branch_name(cluster=f"c{i % 4}", namespace=f"ns{i % 10}", model=f"m{i}"),
            ChangeSet.build(
                tree, {f"clusters/c{i % 4}/ns{i % 10}/m{i}/rollout/routing.yaml": b"w: 5\n"}
            ),
            CommitMessage(f"rollout(m{i}): c{i % 4} step 1/4 -> 5%"),
        )
        for i in range(1000)
    ]
    start = time.perf_counter()
    prepared = workspace.prepare(requests, now=T0)
    built_at = time.perf_counter()
    results = workspace.send(prepared, now=T0)
    done = time.perf_counter()
    assert [r.outcome for r in results] == [PushOutcome.PUSHED] * 1000
    assert len({b.sha for b in prepared.built}) == 1000
    print(
        f"\n1000 commits built in {built_at - start:.2f}s "
        f"({1000 / (built_at - start):.0f}/s), pushed in {done - built_at:.2f}s"
    )
