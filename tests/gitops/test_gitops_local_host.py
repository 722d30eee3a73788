"""The local host: pull requests in a bare repository, merged server-side like a real forge."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sqlite3
import subprocess
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from gitops_helpers import T0, Clock, Remote, git

from gitops_rollout.errors import HostError
from gitops_rollout.gitops.hosts import HOSTS, HostConfig, UnknownHostError, make_host
from gitops_rollout.gitops.hosts.base import PullRequest, PullRequestDraft, PullState
from gitops_rollout.gitops.hosts.local import DATABASE, LocalHost, PullRecord

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


Stored = tuple[dict[int, dict[str, Any] | None], dict[int, str]]


def stored(remote: Remote) -> Stored:
    """The records ({number: JSON}, None for a number without one) and the merge journal as
    the database holds them, read without a host (which would bring them up to date)."""
    uri = f"{(remote.path / DATABASE).as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as db:
        rows = db.execute("SELECT number, record FROM pulls").fetchall()
        journal = dict(db.execute("SELECT number, merge_sha FROM merging").fetchall())
    return {n: json.loads(text) if text is not None else None for n, text in rows}, journal


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
    records, journal = stored(remote)
    assert list(records) == [1] and journal == {}
    record = records[1]
    assert record is not None and record == host.show(1).to_json()
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
    # The journal was committed before main moved; the record was not written.
    records, journal = stored(remote)
    assert journal == {pr.number: merged_main}
    assert [(r or {}).get("state") for r in records.values()] == ["open"]
    fresh = LocalHost(remote.path, clock=clock)
    record = fresh.show(pr.number)
    assert (record.state, record.merge_sha) == (PullState.MERGED, merged_main)
    # The next merge forgets it.
    bot_branch(remote, "spec: {w: 20}\n", head="gitops-rollout/prod/ml/iris")
    second = fresh.open_or_update(draft(head="gitops-rollout/prod/ml/iris"))
    assert fresh.merge(second.number, message="merge #2").merged
    assert stored(remote)[1] == {}


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
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The numbers of the pull request records every LocalHost decodes from now on."""
    seen: list[int] = []
    decode = LocalHost._decode

    def counting(self: LocalHost, number: int, text: str) -> PullRecord:
        seen.append(number)
        return decode(self, number, text)

    monkeypatch.setattr(LocalHost, "_decode", counting)
    return seen


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL every LocalHost opening its database from now on runs, values filled in."""
    seen: list[str] = []
    open_ = LocalHost._open

    def tracing(self: LocalHost) -> sqlite3.Connection:
        db = open_(self)
        db.set_trace_callback(seen.append)
        return db

    monkeypatch.setattr(LocalHost, "_open", tracing)
    return seen


def scans(remote: Remote, statements: list[str]) -> list[str]:
    """Those of `statements` reading the records that go through all of them, as SQLite
    plans them (not through the index of (head, base, number) or a number)."""
    uri = f"{(remote.path / DATABASE).as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as db:
        return [
            sql
            for sql in statements
            if sql.startswith("SELECT")
            and " pulls" in sql
            and any("SCAN pulls" in row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}"))
        ]


def test_open_or_update_reads_only_its_own_record(
    remote: Remote,
    clock: Clock,
    reads: list[int],
    statements: list[str],
    git_calls: list[str],
) -> None:
    heads = bot_branches(remote, 40)
    host = LocalHost(remote.path, clock=clock)
    for head in heads:
        host.open_or_update(draft(head))
    reads.clear()
    git_calls.clear()
    statements.clear()

    updated = LocalHost(remote.path, clock=clock).open_or_update(draft(heads[17], body="second"))

    assert (updated.number, updated.body) == (18, "second")
    assert reads == [18], "the other 39 records are not read"
    assert [s for s in statements if "pulls" in s] != []
    assert scans(remote, statements) == [], "nor looked through"
    # Two git calls, neither reading every ref or every branch: a look-up of its refs, and
    # whether its head is on main already (for-each-ref --merged naming that branch only).
    assert git_calls == ["cat-file", "for-each-ref"]
    # A branch without a pull request yet: no record read at all, the next number.
    [new] = bot_branches(remote, 1, prefix="gitops-rollout/staging/ml/m")
    reads.clear()
    statements.clear()
    assert host.open_or_update(draft(new)).number == 41
    assert reads == []
    assert scans(remote, statements) == []
    # What a scan looks like, so that the check above can fail: a listing reads them all.
    statements.clear()
    assert len(host.list_pulls()) == 41
    assert len(scans(remote, statements)) == 1


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


# -- storage: one SQLite database; the files of earlier versions imported ---------------------

OTHER = "gitops-rollout/prod/ml/iris"


def write_files(bare: Path, records: dict[int, PullRecord | None], merging: dict[int, str]) -> None:
    """What a version that kept one JSON file per pull request left, as it wrote it: a record
    per number (empty: a number claimed by a process that died before writing), a temp file,
    an index entry per head branch with its mark, and the merge journal."""
    state = bare / "gitops-rollout"
    (state / "pulls").mkdir(parents=True)
    (state / "heads").mkdir()
    latest: dict[str, dict[str, int]] = {}
    for number, record in records.items():
        text = "" if record is None else json.dumps(record.to_json(), indent=2, sort_keys=True)
        (state / "pulls" / f"{number}.json").write_text(text + "\n" if text else "")
        if record is not None:
            latest.setdefault(record.head, {})[record.base] = number
    (state / "pulls" / f".3.json.{os.getpid()}.0.tmp").write_text("left by a dead process")
    for head, bases in latest.items():
        entry = {"format": 1, "head": head, "latest": bases}
        (state / "heads" / f"{hashlib.sha256(head.encode()).hexdigest()}.json").write_text(
            json.dumps(entry)
        )
    (state / "heads.json").write_text(json.dumps({"format": 1, "through": max(records)}))
    if merging:
        journal = {"format": 1, "merging": {str(n): sha for n, sha in merging.items()}}
        (state / "merging.json").write_text(json.dumps(journal))
    (state / "pulls.lock").touch()


def record_of(number: int, head: str, sha: str, state: PullState, **more: Any) -> PullRecord:
    return PullRecord(
        number=number,
        head=head,
        base="main",
        title=f"change #{number}",
        body="",
        state=state,
        head_sha=sha,
        created_at=T0,
        updated_at=T0,
        labels=("gitops-rollout",),
        **more,
    )


def files_of_earlier_versions(remote: Remote) -> dict[int, PullRecord | None]:
    """HEAD: #1 closed, #3 open. OTHER: #2 open, being merged when its process died (main
    moved to the merge commit, the record does not say so yet). #4 claimed, never written."""
    bare = str(remote.path)
    first = bot_branch(remote)
    other = bot_branch(remote, head=OTHER)
    head = bot_branch(remote, "spec: {w: 20}\n")
    main = remote.sha("main")
    merge = git(
        "--git-dir", bare, "commit-tree", f"{other}^{{tree}}", "-p", main, "-p", other, "-m", "#2"
    ).strip()
    git("--git-dir", bare, "update-ref", "refs/heads/main", merge)
    for number, sha in ((2, other), (3, head)):
        git("--git-dir", bare, "update-ref", f"refs/pull/{number}/head", sha)
    records: dict[int, PullRecord | None] = {
        1: record_of(1, HEAD, first, PullState.CLOSED, closed_at=T0, closed_by="alice"),
        2: record_of(2, OTHER, other, PullState.OPEN),
        3: record_of(3, HEAD, head, PullState.OPEN, reviewers=("ml-team",)),
        4: None,
    }
    write_files(remote.path, records, merging={2: merge})
    return records


def test_records_of_an_earlier_version_are_imported_and_their_files_deleted(
    remote: Remote, clock: Clock
) -> None:
    records = files_of_earlier_versions(remote)
    merged_main = remote.sha("main")

    host = LocalHost(remote.path, clock=clock)

    assert host.show(1) == records[1]
    assert host.show(3) == records[3]
    # The journal came along: the merge that landed is completed.
    assert (host.show(2).state, host.show(2).merge_sha) == (PullState.MERGED, merged_main)
    with pytest.raises(HostError, match="no pull request #4 in "):
        host.show(4)
    # HEAD's newest pull request is found, and updated.
    updated = host.open_or_update(draft(body="after the move"))
    assert (updated.number, updated.body) == (3, "after the move")
    # The claimed number is never given again.
    bot_branch(remote, head="gitops-rollout/prod/ml/new")
    assert host.open_or_update(draft("gitops-rollout/prod/ml/new")).number == 5
    assert [(r.number, r.state) for r in host.list_pulls()] == [
        (5, PullState.OPEN),
        (3, PullState.OPEN),
        (2, PullState.MERGED),
        (1, PullState.CLOSED),
    ]
    left = sorted(p.name for p in (remote.path / "gitops-rollout").iterdir())
    assert [name for name in left if not name.startswith("pulls.sqlite3")] == ["pulls.lock"]
    numbers, _ = stored(remote)
    assert sorted(numbers) == [1, 2, 3, 4, 5] and numbers[4] is None
    # Imported once: a host opening the database later reads it as it is.
    host.disconnect()
    assert [r.number for r in LocalHost(remote.path, clock=clock).list_pulls()] == [5, 3, 2, 1]


def garbage(remote: Remote) -> None:
    (remote.path / DATABASE).parent.mkdir()
    (remote.path / DATABASE).write_bytes(b"not a database\n" * 512)


def a_folder(remote: Remote) -> None:
    (remote.path / DATABASE).mkdir(parents=True)


def newer_schema(remote: Remote) -> None:
    (remote.path / DATABASE).parent.mkdir()
    with closing(sqlite3.connect(remote.path / DATABASE)) as db:
        db.execute("PRAGMA user_version = 2")


def unreadable_record(remote: Remote) -> None:
    files_of_earlier_versions(remote)
    (remote.path / "gitops-rollout/pulls/2.json").write_text("{not json")


def unreadable_journal(remote: Remote) -> None:
    files_of_earlier_versions(remote)
    (remote.path / "gitops-rollout/merging.json").write_text("[]")


RETRY = "check that this user may read and write it and that the disk has room, then retry"
RESTORE = (
    "with gitops-rollout stopped, restore it from a backup, or move it aside (with any -wal "
    "and -shm file beside it) to start again with no pull request records"
)

UNUSABLE = [
    # (damage, the message; {db} is the database, {state} the folder it is in)
    pytest.param(
        garbage,
        f"{{db}} is not a readable pull request database (file is not a database): {RESTORE}",
        id="a-file-of-garbage",
    ),
    pytest.param(
        a_folder,
        f"cannot use the pull request database {{db}}: unable to open database file; {RETRY}",
        id="a-folder-in-its-place",
    ),
    pytest.param(
        newer_schema,
        "{db} has pull request records of schema 2, which this version of gitops-rollout does "
        "not know (it reads schema 1): run the version that wrote them",
        id="written-by-a-newer-version",
    ),
    pytest.param(
        unreadable_record,
        "{state}/pulls/2.json is not a pull request record (Expecting property name enclosed "
        "in double quotes: line 1 column 2 (char 1)), so the records cannot be moved into "
        "{db}: repair or delete it, then retry",
        id="an-earlier-version's-record-unreadable",
    ),
    pytest.param(
        unreadable_journal,
        "{state}/merging.json cannot be read ('list' object has no attribute 'get'); it names "
        "merges that may have landed: repair or delete it (each pull request's next look "
        "decides anew), then retry",
        id="an-earlier-version's-journal-unreadable",
    ),
]


@pytest.mark.parametrize(("damage", "message"), UNUSABLE)
def test_a_database_that_cannot_be_used_is_a_host_error_saying_what_to_do(
    remote: Remote, clock: Clock, damage: Callable[[Remote], None], message: str
) -> None:
    bot_branch(remote)
    damage(remote)
    refs = remote.refs()
    state = remote.path.resolve() / "gitops-rollout"
    expected = message.format(db=state / "pulls.sqlite3", state=state)
    host = LocalHost(remote.path, clock=clock)

    for ask in (host.list_pulls, lambda: host.open_or_update(draft(body="second"))):
        with pytest.raises(HostError) as err:
            ask()
        assert str(err.value) == expected
    assert remote.refs() == refs
    # Nothing was imported from files that could not all be read: they are all still there.
    if (state / "pulls").is_dir():
        assert sorted(p.name for p in (state / "pulls").glob("*.json")) == [
            f"{n}.json" for n in (1, 2, 3, 4)
        ]
        with closing(sqlite3.connect(state / "pulls.sqlite3")) as db:
            assert db.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_a_database_moved_aside_as_the_message_says_starts_again(
    remote: Remote, clock: Clock
) -> None:
    bot_branch(remote)
    garbage(remote)
    with pytest.raises(HostError, match="move it aside"):
        LocalHost(remote.path, clock=clock).list_pulls()
    (remote.path / DATABASE).rename(remote.path / "pulls.sqlite3.damaged")
    assert LocalHost(remote.path, clock=clock).open_or_update(draft()).number == 1


def open_files(path: Path) -> list[str]:
    """The files this process has open whose names start with `path`."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile (the one iterdir read)
        if target.startswith(str(path)):
            found.append(target)
    return found


def test_the_database_is_opened_on_use_and_closed_with_the_host(
    remote: Remote, clock: Clock
) -> None:
    bot_branch(remote)
    db = remote.path.resolve() / DATABASE
    host = LocalHost(remote.path, clock=clock)
    assert open_files(db) == []
    host.open_or_update(draft())
    assert open_files(db) != []
    host.disconnect()
    assert open_files(db) == []
    # Opened again on the next call, on whichever thread makes it (the daemon's workers).
    shown: list[PullRecord] = []
    worker = threading.Thread(target=lambda h: shown.append(h.show(1)), args=(host,))
    worker.start()
    worker.join()
    assert [r.number for r in shown] == [1]
    assert host.show(1) == shown[0]
    assert open_files(db) != []
    del host
    gc.collect()
    assert open_files(db) == []


CRASHES = [
    # (the step that dies, and in which object; the pull request the dead batch left)
    pytest.param("_save", "host", None, id="before-the-records-are-committed"),
    pytest.param("update_refs", "git", 2, id="after-committing-the-records-before-the-pull-refs"),
]


@pytest.mark.parametrize(("step", "owner", "left"), CRASHES)
def test_a_crash_while_opening_loses_nothing_and_opens_nothing_twice(
    host: LocalHost,
    remote: Remote,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    owner: str,
    left: int | None,
) -> None:
    bot_branch(remote)
    host.close(host.open_or_update(draft()).number)
    head = bot_branch(remote, "spec: {w: 20}\n")

    def dies(*args: object) -> None:
        raise KeyboardInterrupt  # the process is killed here

    monkeypatch.setattr(host if owner == "host" else host._git, step, dies)
    with pytest.raises(KeyboardInterrupt):
        host.open_or_update(draft(body="first try"))

    assert sorted(stored(remote)[0]) == ([1] if left is None else [1, left])
    assert "refs/pull/2/head" not in remote.refs()
    fresh = LocalHost(remote.path, clock=clock)
    retried = fresh.open_or_update(draft(body="retry"))
    assert (retried.number, retried.body) == (2, "retry")
    assert [r.number for r in fresh.list_pulls(state=PullState.OPEN)] == [2]
    assert remote.refs()["refs/pull/2/head"] == head
    assert [p.number for p in fresh.pulls_for_prefix("gitops-rollout/", base="main")] == [2, 1]


def transactions(statements: list[str]) -> list[list[str]]:
    """The tables each transaction of `statements` wrote to, per statement, for those that
    wrote (a transaction ends at COMMIT or ROLLBACK)."""
    done: list[list[str]] = []
    current: list[str] = []
    for sql in statements:
        words = sql.split()
        if words[0] in {"COMMIT", "ROLLBACK"}:
            if current:
                done.append(current)
            current = []
        elif words[0] in {"INSERT", "DELETE", "UPDATE"}:
            current.append(words[words.index("INTO" if words[0] == "INSERT" else "FROM") + 1])
    return done


def test_a_batch_is_one_transaction(host: LocalHost, remote: Remote, statements: list[str]) -> None:
    heads = [f"gitops-rollout/prod/ml/{name}" for name in ("a", "b", "c")]
    for head in heads:
        bot_branch(remote, head=head)

    opened = host.open_many([draft(head) for head in heads])
    numbers = [p.number for p in opened if isinstance(p, PullRequest)]
    assert transactions(statements) == [["pulls", "pulls", "pulls"]]
    statements.clear()

    merged = host.merge_many([(n, f"merge #{n}") for n in numbers])
    assert all(m.merged for m in merged if not isinstance(m, Exception))
    # The journal, committed before main moves; then the three records, and the journal
    # cleared.
    assert transactions(statements) == [
        ["merging", "merging", "merging", "merging"],
        ["pulls", "pulls", "pulls", "merging"],
    ]


def test_a_batch_killed_part_way_leaves_nothing_half_written(
    host: LocalHost, remote: Remote, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    heads = [f"gitops-rollout/prod/ml/{name}" for name in ("a", "b", "c")]
    for head in heads:
        bot_branch(remote, head=head)
    saved: list[int] = []
    save = host._save

    def dies_at(state: PullState) -> Callable[[PullRecord], None]:
        def save_or_die(record: PullRecord) -> None:
            if record.state is state and len(saved) == 2:
                raise KeyboardInterrupt  # the process is killed here
            saved.append(record.number)
            save(record)

        return save_or_die

    with monkeypatch.context() as patch:
        patch.setattr(host, "_save", dies_at(PullState.OPEN))
        with pytest.raises(KeyboardInterrupt):
            host.open_many([draft(head) for head in heads])
    assert saved == [1, 2]  # written in the transaction that died with the process
    assert stored(remote) == ({}, {})
    assert [ref for ref in remote.refs() if ref.startswith("refs/pull/")] == []

    opened = host.open_many([draft(head) for head in heads])
    numbers = [p.number for p in opened if isinstance(p, PullRequest)]
    assert numbers == [1, 2, 3]
    saved.clear()
    with monkeypatch.context() as patch:
        patch.setattr(host, "_save", dies_at(PullState.MERGED))
        with pytest.raises(KeyboardInterrupt):
            host.merge_many([(n, f"merge #{n}") for n in numbers])
    # Main moved once, for the three; no record says merged, the journal names all three.
    records, journal = stored(remote)
    assert [(r or {}).get("state") for r in records.values()] == ["open"] * 3
    assert sorted(journal) == numbers and journal[3] == remote.sha("main")
    fresh = LocalHost(remote.path, clock=clock)
    assert [(fresh.show(n).state, fresh.show(n).merge_sha) for n in numbers] == [
        (PullState.MERGED, journal[n]) for n in numbers
    ]


def test_a_database_error_part_way_fails_the_whole_batch(host: LocalHost, remote: Remote) -> None:
    heads = [f"gitops-rollout/prod/ml/{name}" for name in ("a", "b", "c")]
    for head in heads:
        bot_branch(remote, head=head)
    assert host.list_pulls() == []  # the database, set up
    with closing(sqlite3.connect(remote.path / DATABASE)) as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON pulls WHEN NEW.number = 3"
            " BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
        db.commit()

    with pytest.raises(HostError, match=r"pulls.sqlite3 is not a readable .* \(disk I/O error\)"):
        host.open_many([draft(head) for head in heads])

    assert stored(remote) == ({}, {})
    assert [ref for ref in remote.refs() if ref.startswith("refs/pull/")] == []
    with closing(sqlite3.connect(remote.path / DATABASE)) as db:
        db.execute("DROP TRIGGER refuse")
        db.commit()
    opened = host.open_many([draft(head) for head in heads])
    assert [p.number for p in opened if isinstance(p, PullRequest)] == [1, 2, 3]
