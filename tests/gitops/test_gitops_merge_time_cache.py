"""`Workspace.merge_time` keeps its answers in the cache clone and reads only what is new.

Every answer is checked against a reference built from plumbing (``rev-list --first-parent``
and ``diff-tree`` of each commit against its first parent) and against a call without the kept
file, so the kept answers never differ from a walk over the whole history.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from gitops_helpers import BOT, T0, Remote, git, identity_env

from gitops_rollout.gitops import repo
from gitops_rollout.gitops.repo import Workspace

ROUTING = "clusters/prod/ml/wisdom/rollout/routing.yaml"
IRIS = "clusters/prod/ml/iris/v1.yaml"
LATE = "clusters/prod/ml/late/rollout/routing.yaml"
SIDE = "clusters/prod/ml/side/rollout/routing.yaml"

PATHS = [
    ROUTING,
    "clusters/prod/ml/wisdom/rollout",
    "clusters/prod/ml/wisdom",
    "clusters/prod/ml",
    "clusters",
    "policies/wisdom.yaml",
    IRIS,
    "clusters/prod/ml/iris",
    LATE,  # absent at first, added later
    "clusters/prod/ml/late",
    SIDE,  # changed on a side branch, merged later
    "clusters/prod/ml/side",
    "clusters/prod/ml/nothing-here/rollout",  # never exists
    "clusters/prod/ml/wisdom/rollout/",  # a trailing slash matches nothing, as ever
    "clusters/prod/m",  # a prefix of a folder name is not a folder
]


def reference(git_dir: Path, ref: str, paths: Iterable[str]) -> dict[str, datetime]:
    """The newest first-parent commit whose diff against its first parent touches each path,
    computed commit by commit with plumbing (no ``git log``)."""
    wanted = set(paths)
    found: dict[str, datetime] = {}
    gd = ("--git-dir", str(git_dir))
    for line in git(*gd, "rev-list", "--first-parent", "--parents", ref).splitlines():
        sha, *parents = line.split()
        against = [parents[0], sha] if parents else ["--root", sha]
        out = git(*gd, "diff-tree", "-r", "--no-renames", "--name-only", "-z", *against)
        when = datetime.fromtimestamp(int(git(*gd, "show", "-s", "--format=%ct", sha)), UTC)
        for name in out.split("\0"):
            if not name or name == sha:
                continue
            while name:
                if name in wanted and name not in found:
                    found[name] = when
                name = name.rpartition("/")[0]
    return found


def without_kept(ws: Workspace, paths: Iterable[str]) -> dict[str, datetime]:
    """`merge_time` as if nothing was kept (a whole-history walk); the kept file is restored."""
    file = ws.git_dir / repo._MERGE_TIMES
    saved = file.read_bytes() if file.exists() else None
    file.unlink(missing_ok=True)
    try:
        return ws.merge_time(paths)
    finally:
        file.unlink(missing_ok=True)
        if saved is not None:
            file.write_bytes(saved)


def check(ws: Workspace, paths: Sequence[str]) -> dict[str, datetime]:
    ws.fetch()
    expected = reference(ws.git_dir, f"refs/remotes/origin/{ws.base}", paths)
    assert without_kept(ws, paths) == expected
    got = ws.merge_time(paths)
    assert got == expected
    return got


class Logs:
    """Records each ``git log`` that `merge_time` streams, and the commits it read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[list[str]] = []
        self.commits: list[int] = []
        original = Workspace._stream_tokens

        def recording(ws: Workspace, args: Sequence[str]) -> Iterator[bytes]:
            self.calls.append(list(args))
            self.commits.append(0)
            for token in original(ws, args):
                if token.lstrip(b"\n").startswith(b"\x1e"):
                    self.commits[-1] += 1
                yield token

        monkeypatch.setattr(Workspace, "_stream_tokens", recording)

    def clear(self) -> None:
        self.calls.clear()
        self.commits.clear()

    @property
    def ranges(self) -> list[bool]:
        return [any(a.startswith("^") for a in call) for call in self.calls]


def merge(remote: Remote, branch: str, when: datetime, *, into: str = "main") -> str:
    """Merge origin/`branch` into `into` with a merge commit (first parent: `into`), push."""
    work = remote.work
    env = identity_env(when)
    git("fetch", "--quiet", "origin", cwd=work)
    git("checkout", "--quiet", "-B", into, f"origin/{into}", cwd=work)
    git(
        "merge",
        "--quiet",
        "--no-ff",
        "-m",
        f"merge {branch}",
        f"origin/{branch}",
        cwd=work,
        env=env,
    )
    git("push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{into}", cwd=work)
    return remote.sha(f"refs/heads/{into}")


def reopen(ws: Workspace, remote: Remote, tmp_path: Path) -> Workspace:
    """A new process's workspace on the same cache directory."""
    ws.close()
    fresh = Workspace.open(
        str(remote.path), cache_dir=tmp_path / "cache", identity=BOT, rng=random.Random(7)
    )
    fresh.fetch()
    return fresh


def test_kept_answers_match_a_whole_history_walk_as_main_moves(
    workspace: Workspace, remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = Logs(monkeypatch)
    some = PATHS[::2]
    check(workspace, some)
    remote.commit({ROUTING: "spec: {w: 10}\n"}, when=T0)
    check(workspace, some)
    # New paths asked while main moved: the kept ones come forward, the new ones are walked for.
    remote.commit({"clusters/prod/ml/wisdom/v2.yaml": "x\n"}, when=T0 + timedelta(minutes=1))
    check(workspace, PATHS)
    # A side branch touches SIDE (written early) and main moves on meanwhile; the merge brings
    # SIDE in at the merge's time, through the merge's second parent.
    remote.commit({SIDE: "spec: {w: 1}\n"}, branch="side", when=T0 + timedelta(minutes=2))
    remote.commit({"policies/wisdom.yaml": "kind: X\n"}, when=T0 + timedelta(minutes=3))
    check(workspace, PATHS)
    merge(remote, "side", T0 + timedelta(minutes=30))
    got = check(workspace, PATHS)
    assert got[SIDE] == T0 + timedelta(minutes=30)
    assert got["clusters/prod/ml/side"] == T0 + timedelta(minutes=30)
    assert got["policies/wisdom.yaml"] == T0 + timedelta(minutes=3)
    # Deleted, then added back.
    remote.commit({IRIS: None}, when=T0 + timedelta(minutes=40))
    got = check(workspace, PATHS)
    assert got[IRIS] == got["clusters/prod/ml/iris"] == T0 + timedelta(minutes=40)
    remote.commit({"README": "x\n"}, when=T0 + timedelta(minutes=45))
    check(workspace, PATHS)
    remote.commit({IRIS: "kind: Deployment\n"}, when=T0 + timedelta(minutes=50))
    got = check(workspace, PATHS)
    assert got[IRIS] == T0 + timedelta(minutes=50)
    # A path known to be absent appears.
    assert LATE not in got
    remote.commit({LATE: "spec: {w: 0}\n"}, when=T0 + timedelta(minutes=55))
    got = check(workspace, PATHS)
    assert got[LATE] == got["clusters/prod/ml/late"] == T0 + timedelta(minutes=55)
    # An empty commit, then a new process: nothing kept changes, and only new commits are read.
    remote.commit({}, when=T0 + timedelta(minutes=56))
    check(workspace, PATHS)
    remote.commit({ROUTING: "spec: {w: 20}\n"}, when=T0 + timedelta(minutes=57))
    ws = reopen(workspace, remote, tmp_path)
    try:
        logs.clear()
        got = ws.merge_time(PATHS)
        assert logs.ranges == [True] and logs.commits == [1]
        assert got == reference(ws.git_dir, "refs/remotes/origin/main", PATHS)
        assert got[ROUTING] == T0 + timedelta(minutes=57)
    finally:
        ws.close()


def test_an_unmoved_main_is_answered_without_git_log(
    workspace: Workspace, remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(20):
        remote.commit({f"clusters/prod/ml/m{i}/rollout/routing.yaml": "w\n"}, when=T0)
    workspace.fetch()
    logs = Logs(monkeypatch)
    first = workspace.merge_time(PATHS)
    assert logs.ranges == [False]
    logs.clear()
    assert workspace.merge_time(PATHS) == first
    assert workspace.merge_time(PATHS[:3]) == {p: t for p, t in first.items() if p in PATHS[:3]}
    assert logs.calls == []
    ws = reopen(workspace, remote, tmp_path)
    try:
        assert ws.merge_time(PATHS) == first
        assert logs.calls == []
        # One new path: one walk, for it alone, from main.
        assert ws.merge_time([*PATHS, "clusters/prod/ml/m3"]) == {
            **first,
            "clusters/prod/ml/m3": T0,
        }
        assert logs.ranges == [False]
        logs.clear()
        assert ws.merge_time(["clusters/prod/ml/m3", PATHS[0]]) == {
            "clusters/prod/ml/m3": T0,
            PATHS[0]: first[PATHS[0]],
        }
        assert logs.calls == []
    finally:
        ws.close()


def test_a_main_moved_by_one_commit_reads_that_commit_only(
    workspace: Workspace, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(10):
        remote.commit({f"clusters/prod/ml/m{i}/v1.yaml": "x\n"}, when=T0 + timedelta(minutes=i))
    check(workspace, PATHS)
    logs = Logs(monkeypatch)
    remote.commit({"clusters/prod/ml/m4/v1.yaml": "y\n"}, when=T0 + timedelta(hours=1))
    workspace.fetch()
    got = workspace.merge_time(PATHS)
    assert logs.ranges == [True] and logs.commits == [1]
    assert got == reference(workspace.git_dir, "refs/remotes/origin/main", PATHS)


def test_a_rewritten_main_is_walked_again(workspace: Workspace, remote: Remote) -> None:
    remote.commit({ROUTING: "spec: {w: 1}\n"}, when=T0)
    check(workspace, PATHS)
    # main force-pushed to an unrelated history.
    work = remote.work
    git("checkout", "--quiet", "--orphan", "fresh", cwd=work)
    git("rm", "--quiet", "-r", "-f", ".", cwd=work)
    (work / "clusters/prod/ml/late/rollout").mkdir(parents=True)
    (work / LATE).write_text("spec: {w: 5}\n")
    date = f"{int((T0 + timedelta(hours=5)).timestamp())} +0000"
    env = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", "start again", cwd=work, env=env)
    git("push", "--quiet", "--force", "origin", "HEAD:refs/heads/main", cwd=work)
    got = check(workspace, PATHS)
    assert got == {
        LATE: T0 + timedelta(hours=5),
        "clusters/prod/ml/late": T0 + timedelta(hours=5),
        "clusters/prod/ml": T0 + timedelta(hours=5),
        "clusters": T0 + timedelta(hours=5),
    }
    # ... and moves on from there.
    remote.commit({ROUTING: "spec: {w: 2}\n"}, when=T0 + timedelta(hours=6))
    check(workspace, PATHS)


def test_main_moved_to_a_merge_that_took_it_as_second_parent(
    workspace: Workspace, remote: Remote
) -> None:
    """The kept commit is an ancestor of main but not a first parent of it: its first-parent
    history is no longer main's, so nothing kept can stand. (A policy changed and changed back
    on the old main is not in the merge's diff: main's answer for it is the seed's.)"""
    base = remote.commit({"README": "0\n"}, when=T0)
    remote.commit({ROUTING: "spec: {w: 1}\n"}, when=T0 + timedelta(minutes=1))
    remote.commit({IRIS: "kind: Deployment\n"}, when=T0 + timedelta(minutes=2))
    policy = remote.show("main", "policies/wisdom.yaml").decode()
    remote.commit({"policies/wisdom.yaml": "changed\n"}, when=T0 + timedelta(minutes=4))
    remote.commit({"policies/wisdom.yaml": policy}, when=T0 + timedelta(minutes=5))
    assert check(workspace, PATHS)["policies/wisdom.yaml"] == T0 + timedelta(minutes=5)
    git("push", "--quiet", "origin", f"{base}:refs/heads/feature", cwd=remote.work)
    remote.commit({LATE: "x\n"}, branch="feature", when=T0 + timedelta(minutes=3))
    merged = merge(remote, "main", T0 + timedelta(hours=1), into="feature")
    git("push", "--quiet", "origin", f"{merged}:refs/heads/main", cwd=remote.work)  # fast-forward
    got = check(workspace, PATHS)
    assert got[ROUTING] == got[IRIS] == T0 + timedelta(hours=1)
    assert got[LATE] == T0 + timedelta(minutes=3)
    assert got["policies/wisdom.yaml"] == T0 - timedelta(days=1)


@pytest.mark.parametrize(
    "damage",
    [
        b"not a pickle",
        b"",
        b"\x80\x05garbage",
        None,  # a truncated file
    ],
)
def test_a_damaged_file_is_ignored(
    workspace: Workspace, remote: Remote, damage: bytes | None
) -> None:
    remote.commit({ROUTING: "spec: {w: 1}\n"}, when=T0)
    check(workspace, PATHS)
    file = workspace.git_dir / repo._MERGE_TIMES
    data = file.read_bytes()
    damaged = data[: len(data) // 2] if damage is None else damage
    file.write_bytes(damaged)
    remote.commit({IRIS: None}, when=T0 + timedelta(minutes=1))
    check(workspace, PATHS)
    assert file.read_bytes() != damaged  # written afresh


@pytest.mark.parametrize(
    "content",
    [
        {"format": 99, "commit": "0" * 40, "changes": {}},
        {"format": repo._MERGE_TIMES_FORMAT, "commit": "--output=x", "changes": {}},
        {"format": repo._MERGE_TIMES_FORMAT, "commit": "0" * 40, "changes": []},
        ["format", 1],
    ],
)
def test_a_foreign_file_is_ignored(workspace: Workspace, remote: Remote, content: object) -> None:
    (workspace.git_dir / repo._MERGE_TIMES).write_bytes(pickle.dumps(content))
    remote.commit({ROUTING: "spec: {w: 1}\n"}, when=T0)
    check(workspace, PATHS)


def test_a_kept_commit_missing_from_the_clone_reads_all(
    workspace: Workspace, remote: Remote
) -> None:
    check(workspace, PATHS)
    bogus = repo._MergeTimes("1" * 40, dict.fromkeys(PATHS, ("1" * 40, 0)))
    repo._write_merge_times(workspace.git_dir / repo._MERGE_TIMES, bogus)
    remote.commit({ROUTING: "spec: {w: 1}\n"}, when=T0)
    check(workspace, PATHS)


def test_a_file_that_cannot_be_written_does_not_fail_the_call(
    workspace: Workspace, remote: Remote
) -> None:
    (workspace.git_dir / repo._MERGE_TIMES).mkdir()
    remote.commit({ROUTING: "spec: {w: 1}\n"}, when=T0)
    workspace.fetch()
    got = workspace.merge_time(PATHS)
    assert got == reference(workspace.git_dir, "refs/remotes/origin/main", PATHS)
    assert got == workspace.merge_time(PATHS)
    assert [p.name for p in workspace.git_dir.glob(f".{repo._MERGE_TIMES}*")] == []


def test_the_least_recently_asked_paths_are_dropped(
    workspace: Workspace, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repo, "_MERGE_TIMES_KEPT", 4)
    remote.commit({ROUTING: "spec: {w: 1}\n"}, when=T0)
    check(workspace, PATHS[:3])
    check(workspace, PATHS[3:6])
    kept = repo._read_merge_times(workspace.git_dir / repo._MERGE_TIMES)
    assert kept is not None
    kept = kept.changes
    assert len(kept) == 4 and set(PATHS[3:6]) <= set(kept) and set(kept) <= set(PATHS[:6])
    remote.commit({IRIS: None}, when=T0 + timedelta(minutes=1))
    check(workspace, PATHS)
