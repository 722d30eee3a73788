"""The `local` Git host: pull requests kept inside a bare repository on disk.

It behaves like a small GitHub. Each pull request has a ref ``refs/pull/<n>/head`` and a record
in a SQLite database, ``<bare>/gitops-rollout/pulls.sqlite3``, which also keeps the journal of
the merges a batch is making. Every change happens under one lock file and in one transaction of
the database, so two processes (the reconciler and a human running ``gitops-rollout pr merge``)
never clash, and a batch (`LocalHost.open_many`, `LocalHost.merge_many`) is written whole or not
at all. An open pull request follows its head branch; one whose head reached the base outside
the host counts as merged, and one whose branch was deleted counts as closed. Merging happens
server-side, as on a real host: ``git merge-tree --write-tree`` (git >= 2.38), a merge commit,
and a compare-and-swap of the base branch. A conflict is reported, never forced. Pushing
branches is `gitops.repo`'s job.

Opening or updating the pull request of one branch costs the same however many records there
are: the records are indexed by (head, base, number), so each branch's newest pull request is
one indexed look-up, and only that record is read and brought up to date. Listings compute no
mergeability, like GitHub's; `LocalHost.mergeable` answers for one pull request.

Records are as durable as the refs they describe: the database runs in WAL mode with
``synchronous=NORMAL``, so a commit is not fsynced (a checkpoint is), just as git 2.39 writes
refs without an fsync by default (its ``core.fsync`` default leaves references out). A killed
process loses its uncommitted transaction only; a power loss may lose the last commits, but does
not corrupt the database. A repository written by earlier versions, which kept one JSON file per
pull request, is imported on first use (`LocalHost._import_files`), and those files deleted.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import git

from gitops_rollout.errors import HostError, RolloutError
from gitops_rollout.gitops import treemerge
from gitops_rollout.gitops.hosts.base import (
    MergeResult,
    PullRequest,
    PullRequestDraft,
    PullState,
    each_at_once,
)
from gitops_rollout.gitops.objects import ObjectReader, PackBuffer
from gitops_rollout.gitops.repo import Identity

if TYPE_CHECKING:
    # The config module, not the registry: the registry imports every host, and the hosts
    # must stay independent of each other (.importlinter).
    from gitops_rollout.gitops.hosts.config import HostConfig

log = logging.getLogger(__name__)

DATABASE = "gitops-rollout/pulls.sqlite3"
"""The pull request records and the merge journal, relative to the bare repository."""

BUSY_TIMEOUT = 30.0
"""Seconds a statement waits for another connection's lock on the database. The lock file
serialises every user already: this only covers one that reads the database without it."""

_STATE = "gitops-rollout"
_LOCK = "gitops-rollout/pulls.lock"
_FORMAT = 1
_SCHEMA = 1
"""The database's ``user_version`` (0: a database not set up yet)."""

_FILES_PULLS = "gitops-rollout/pulls"
"""Where earlier versions kept one JSON record per pull request (`LocalHost._import_files`)."""
_FILES_MERGING = "gitops-rollout/merging.json"
"""Earlier versions' merge journal: {"merging": {number: merge commit}}."""
_FILES_INDEX = ("gitops-rollout/heads", "gitops-rollout/heads.json")
"""Earlier versions' index of those records: the database's own index replaces it."""

HOST_IDENTITY = Identity("gitops-rollout local host", "local-host@gitops-rollout.invalid")
"""Committer of merge commits, like the host's own account on a real forge."""

PLAIN_FROM = 3
"""Pull requests from which a merge batch looks for merges that need no merge (`treemerge`)."""

TRIAL_MERGES_AT_ONCE = min(4, os.cpu_count() or 1)
"""How many ``git merge-tree`` processes `LocalHost.mergeable_many` runs at once."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Comment:
    author: str
    body: str
    created_at: datetime


@dataclass(frozen=True)
class PullRecord:
    """Everything the local host knows about one pull request (stored as `to_json`'s JSON)."""

    number: int
    head: str
    base: str
    title: str
    body: str
    state: PullState
    head_sha: str
    created_at: datetime
    updated_at: datetime
    labels: tuple[str, ...] = ()
    reviewers: tuple[str, ...] = ()
    merge_sha: str | None = None
    merged_at: datetime | None = None
    merged_by: str | None = None
    closed_at: datetime | None = None
    closed_by: str | None = None
    comments: tuple[Comment, ...] = ()
    merging: str | None = None
    """A merge commit about to become the base head (crash recovery of `merge`)."""

    def to_json(self) -> dict[str, Any]:
        return json.loads(self.encode())  # type: ignore[no-any-return]

    def encode(self) -> str:
        """The record as the database stores it: `to_json`'s JSON."""
        data = asdict(self)
        data["format"] = _FORMAT
        data["state"] = self.state.value
        return json.dumps(data, default=_iso, sort_keys=True, separators=(",", ":"))

    @staticmethod
    def from_json(data: dict[str, Any]) -> PullRecord:
        def when(key: str) -> datetime | None:
            value = data.get(key)
            return datetime.fromisoformat(value) if value else None

        created = when("created_at")
        updated = when("updated_at")
        assert created is not None and updated is not None
        return PullRecord(
            number=int(data["number"]),
            head=str(data["head"]),
            base=str(data["base"]),
            title=str(data["title"]),
            body=str(data["body"]),
            state=PullState(data["state"]),
            head_sha=str(data["head_sha"]),
            created_at=created,
            updated_at=updated,
            labels=tuple(data.get("labels") or ()),
            reviewers=tuple(data.get("reviewers") or ()),
            merge_sha=data.get("merge_sha"),
            merged_at=when("merged_at"),
            merged_by=data.get("merged_by"),
            closed_at=when("closed_at"),
            closed_by=data.get("closed_by"),
            comments=tuple(
                Comment(c["author"], c["body"], datetime.fromisoformat(c["created_at"]))
                for c in data.get("comments") or ()
            ),
            merging=data.get("merging"),
        )


@dataclass
class _Repo:
    """git in the bare repository, through gitpython with argument lists.

    `run` may be called from several threads at once: each call starts its own process and
    spools its own input, and ``Git.execute`` only reads the shared `git.Git` (no working
    directory or environment of its own; its persistent cat-file processes are never used).
    """

    path: Path
    _git: git.Git = field(default_factory=git.Git)

    def run(
        self, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        code, out, err = self.run_bytes(*args, stdin=stdin, env=env)
        return code, out.decode(errors="replace"), err

    def run_bytes(
        self, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
    ) -> tuple[int, bytes, str]:
        """`run` with git's output as it came (paths in ``-z`` output need not be UTF-8)."""
        cmd = ["git", "--git-dir", str(self.path), *args]
        with tempfile.TemporaryFile() as spool:
            if stdin is not None:
                spool.write(stdin)
                spool.seek(0)
            try:
                code, out, err = self._git.execute(
                    cmd,
                    istream=cast(BinaryIO, spool) if stdin is not None else None,
                    with_extended_output=True,
                    with_exceptions=False,
                    stdout_as_string=False,
                    strip_newline_in_stdout=False,
                    env=env,
                )
            except git.GitCommandNotFound as err:
                raise HostError("the git executable was not found on PATH") from err
        return code, out, err

    def check(
        self, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
    ) -> str:
        code, out, err = self.run(*args, stdin=stdin, env=env)
        if code != 0:
            raise HostError(f"git {args[0]} failed in {self.path}: {err.strip()}")
        return out

    def output(self, *args: str, stdin: bytes | None = None) -> bytes:
        """`check`, with git's output as it came."""
        code, out, err = self.run_bytes(*args, stdin=stdin)
        if code != 0:
            raise HostError(f"git {args[0]} failed in {self.path}: {err.strip()}")
        return out

    def refs(self, *patterns: str) -> dict[str, str]:
        """{ref: sha} of every ref under the prefixes `patterns` (one scan of all refs)."""
        out = self.check("for-each-ref", "--format=%(objectname) %(refname)", *patterns)
        pairs = (line.split(" ", 1) for line in out.splitlines() if line)
        return {ref: sha for sha, ref in pairs}

    def resolve(self, *names: str) -> dict[str, str]:
        """{name: sha} of those of the full ref names `names` that exist. Exact look-ups:
        for-each-ref reads every loose ref, thousands of them once pull requests pile up."""
        query = "".join(f"{name}\n" for name in names).encode()
        out = self.check("cat-file", "--batch-check=%(objectname)", stdin=query)
        lines = out.splitlines()
        return {
            name: line for name, line in zip(names, lines, strict=True) if line != f"{name} missing"
        }

    def update_refs(self, refs: dict[str, str]) -> None:
        """Set every ref of `refs` (name: sha) in one transaction (one git process)."""
        if refs:
            commands = "".join(f"update {name} {sha}\n" for name, sha in sorted(refs.items()))
            self.check("update-ref", "--stdin", stdin=commands.encode())

    def is_ancestor(self, older: str, newer: str) -> bool:
        code, _, err = self.run("merge-base", "--is-ancestor", older, newer)
        if code > 1:
            raise HostError(f"git merge-base failed in {self.path}: {err.strip()}")
        return code == 0


class _PlainMerges:
    """For pull requests about to be merged one after another into one base commit, read in
    one go: which of them merge without a merge (`treemerge`), and the trees of merging them.
    Two git processes for all of them, where `git merge-tree` is one each.

    A plain merge is that of a head that is one commit on the base commit itself (a branch
    the bot built this pass, as it does), deleting nothing, whose paths keep apart from those
    of the plain merges before it. Whatever the base changed since an older parent would have
    to be read as well (tens of thousands of paths, after a busy day): those go to git.
    """

    def __init__(
        self,
        repo: _Repo,
        objects: ObjectReader,
        tip: str,
        heads: Sequence[str],
        store: PackBuffer,
    ) -> None:
        self._objects = objects
        self._store = store
        self.tree, _ = objects.commit(tip)
        """The tree of the base with the merges made so far (`merged`)."""
        on_tip = [head for head in dict.fromkeys(heads) if objects.commit(head)[1] == [tip]]
        # Each head against its parent; diff-tree gives the diffs in the order of the lines.
        out = repo.output(
            "diff-tree",
            "--stdin",
            "--always",
            "-r",
            "-z",
            stdin="".join(f"{head}\n" for head in on_tip).encode(),
        )
        diffs = treemerge.parse_diffs(out, len(on_tip))
        self._changes = {
            head: diff
            for head, diff in zip(on_tip, diffs, strict=True)
            if not any(c.deleted for c in diff)  # git might see a rename
        }
        self._merged = treemerge.Touched()
        """The paths the merges made so far changed."""
        self._trees: dict[str, bytes] = {}
        """Tree objects read or written, by id: each merge reads what the one before wrote."""

    def plain(self, head: str) -> list[treemerge.Change] | None:
        """The changes of `head` when it merges into the base as it stands without a merge.
        None: ask git."""
        changes = self._changes.get(head)
        if changes is None or self._merged.meets(c.path for c in changes):
            return None
        return changes

    def merged(self, head: str) -> str | None:
        """The tree of merging `head` into the base as it stands, when that needs no merge
        (`plain`); the next merge builds on it. Tree objects are written without git, like
        merge commits, into the pack the batch writes. None: ask git."""
        changes = self.plain(head)
        if changes is None:
            return None
        try:
            self.tree = treemerge.apply(self.tree, changes, read=self._read, write=self._write)
        except (ValueError, RolloutError):  # a file where a folder is needed; an unreadable tree
            return None
        self._merged.add(c.path for c in changes)
        return self.tree

    def _read(self, tree: str) -> bytes:
        body = self._trees.get(tree)
        if body is None:
            body = self._trees[tree] = self._objects.read(tree)
        return body

    def _write(self, body: bytes) -> str:
        tree = self._store.add(b"tree", body)
        self._trees[tree] = body
        return tree


class LocalHost:
    """Pull requests on a bare repository on disk (implements `GitHost`)."""

    def __init__(
        self,
        bare: Path,
        *,
        clock: Callable[[], datetime] = _utcnow,
        user: str = "gitops-rollout",
        identity: Identity = HOST_IDENTITY,
        max_merge_attempts: int = 5,
    ) -> None:
        """`user` is the account the bot acts as (comments, merged_by, closed_by); `clock`
        dates records and merge commits (the demo's simulated clock)."""
        if not (bare / "HEAD").is_file() or not (bare / "objects").is_dir():
            raise HostError(f"{bare} is not a bare Git repository")
        self.bare = bare.resolve()
        self._git = _Repo(self.bare)
        self._clock = clock
        self._user = user
        self._identity = identity
        self._attempts = max(1, max_merge_attempts)
        self._database = self.bare / DATABASE
        self._db: sqlite3.Connection | None = None
        """The database, opened under the lock on first use and kept (`disconnect`)."""
        self._closer: weakref.finalize[Any, Any] | None = None
        """Closes `_db` once: called by `disconnect`, or when this object is dropped."""
        self._journal: dict[int, str] | None = None
        """`_merging` as read under the lock, until it is released."""
        self._held = 0
        self._object_format: str | None = None

    @classmethod
    def from_config(cls, config: HostConfig) -> LocalHost:
        remote = config.remote.removeprefix("file://")
        if "://" in remote:
            raise HostError(f"the local host needs a path to a bare repository, not {remote!r}")
        return cls(Path(remote), clock=config.clock, user=config.user)

    # -- GitHost -------------------------------------------------------------------------------

    def pulls_for_prefix(self, prefix: str, *, base: str) -> list[PullRequest]:
        """Every pull request whose head starts with `prefix` into `base`, newest first."""
        with self._locked():
            records = self._refreshed()
        return [
            self._pull(r)
            for r in sorted(records, key=lambda r: -r.number)
            if r.head.startswith(prefix) and r.base == base
        ]

    def open_or_update(self, draft: PullRequestDraft) -> PullRequest:
        """Open a pull request for `draft.head`, or update the open one (never a second)."""
        [result] = self.open_many([draft])
        if isinstance(result, RolloutError):
            raise result
        return result

    def open_many(self, drafts: Sequence[PullRequestDraft]) -> list[PullRequest | RolloutError]:
        """`open_or_update` for each of `drafts`, in order: the pull request, or the error
        that draft met. One lock, one look-up of every branch, one ancestry query per base,
        one database transaction and one transaction for the pull refs serve the whole batch
        (three git processes, where one pull request at a time took three or four each).

        Only each head's newest record is read: an open one is always the newest, since a new
        pull request is opened only when none is open. Dying part-way is safe: before the
        records are committed nothing is written, and a record committed without its pull ref
        gets it when it is next brought up to date.
        """
        if not drafts:
            return []
        with self._locked():
            latest = self._latest_all([(d.head, d.base) for d in drafts])
            names = {f"refs/heads/{d.head}" for d in drafts} | {
                f"refs/heads/{d.base}" for d in drafts
            }
            names |= {f"refs/pull/{r.number}/head" for r in latest.values() if r is not None}
            refs = self._git.resolve(*sorted(names))
            merged = self._reached(refs, {(d.head, d.base) for d in drafts})
            pending: dict[str, str] = {}
            results: list[PullRequest | RolloutError] = []
            for draft in drafts:
                key = (draft.head, draft.base)
                try:
                    record = self._open_one(draft, latest[key], refs, key in merged, pending)
                except HostError as err:
                    results.append(err)
                    continue
                latest[key] = record
                results.append(self._pull(record))
            # The records first: a pull ref never names a number that has no record.
            self._commit_now()
            self._git.update_refs(pending)
        return results

    def _open_one(
        self,
        draft: PullRequestDraft,
        latest: PullRecord | None,
        refs: dict[str, str],
        reached: bool,
        pending: dict[str, str],
    ) -> PullRecord:
        """One draft of `open_many`: its open pull request updated, or a new one. `refs` holds
        its branches, `reached` says its head is on its base already, and `pending` collects
        pull refs to set."""
        head_sha = refs.get(f"refs/heads/{draft.head}")
        base_sha = refs.get(f"refs/heads/{draft.base}")
        if latest is not None:
            latest = self._sync(latest, refs, reached=reached, pending=pending)
        if head_sha is None:
            raise HostError(f"branch {draft.head!r} does not exist in {self.bare}; push it first")
        if base_sha is None:
            raise HostError(f"base branch {draft.base!r} does not exist in {self.bare}")
        now = self._clock()
        if latest is not None and latest.state is PullState.OPEN:
            updated = replace(
                latest,
                title=draft.title,
                body=draft.body,
                labels=tuple(draft.labels),
                reviewers=tuple(dict.fromkeys((*latest.reviewers, *draft.reviewers))),
            )
            if updated != latest:
                updated = replace(updated, updated_at=now)
                self._save(updated)
            return updated
        if reached:
            raise HostError(
                f"no commits between {draft.base!r} and {draft.head!r}: nothing to review"
            )
        record = PullRecord(
            number=self._next_number(),
            head=draft.head,
            base=draft.base,
            title=draft.title,
            body=draft.body,
            state=PullState.OPEN,
            head_sha=head_sha,
            created_at=now,
            updated_at=now,
            labels=tuple(draft.labels),
            reviewers=tuple(draft.reviewers),
        )
        self._save(record)
        pending[f"refs/pull/{record.number}/head"] = head_sha
        return record

    def mergeable(self, number: int) -> bool | None:
        """Whether open pull request `number` merges cleanly into its base now (a trial merge
        with ``git merge-tree``); None when it is not open."""
        [answer] = self.mergeable_many([number])
        if isinstance(answer, RolloutError):
            raise answer
        return answer

    def mergeable_many(self, numbers: Sequence[int]) -> list[bool | RolloutError | None]:
        """`mergeable` for each number, in order: one look-up of every branch and one
        ancestry query for the batch, then a trial merge per open pull request (`_clean_many`:
        a few git processes for them all)."""
        with self._locked():
            records: dict[int, PullRecord] = {}
            answers: dict[int, bool | RolloutError | None] = {}
            for number in dict.fromkeys(numbers):
                record = self._record(number)
                if record is None:
                    answers[number] = HostError(f"no pull request #{number} in {self.bare}")
                else:
                    records[number] = record
            names: set[str] = set()
            for r in records.values():
                names |= {f"refs/heads/{r.head}", f"refs/heads/{r.base}"}
                names.add(f"refs/pull/{r.number}/head")
            refs = self._git.resolve(*sorted(names)) if names else {}
            reached = self._reached(refs, {(r.head, r.base) for r in records.values()})
            pending: dict[str, str] = {}
            synced = [
                self._sync(r, refs, reached=(r.head, r.base) in reached, pending=pending)
                for r in records.values()
            ]
            self._commit_now()  # the records, before their pull refs move
            self._git.update_refs(pending)
            answers.update(zip(records, self._clean_many(synced), strict=True))
        return [answers[number] for number in numbers]

    def _clean_many(self, records: Sequence[PullRecord]) -> list[bool | RolloutError | None]:
        """Whether each of `records` merges cleanly into its base now; None for one that is
        not open. ``git merge-tree --stdin`` makes the trial merges, many to a process
        (`_trial_merges`): starting git costs as much as a merge does. When git cannot make
        one of them it gives up on its whole batch (and a git older than 2.40 may refuse
        ``--stdin``); then each is merged alone, up to `TRIAL_MERGES_AT_ONCE` at a time, so
        that the error lands in its own place."""
        opened = [r for r in records if r.state is PullState.OPEN]
        found = self._trial_merges([(f"refs/heads/{r.base}", r.head_sha) for r in opened])
        if found is None:
            asked = each_at_once(opened, self._conflicts_of, at_once=TRIAL_MERGES_AT_ONCE)
        else:
            asked = [files for _, files in found]
        clean = {
            id(r): a if isinstance(a, RolloutError) else a is None
            for r, a in zip(opened, asked, strict=True)
        }
        return [clean.get(id(r)) for r in records]

    def _trial_merges(
        self, pairs: Sequence[tuple[str, str]]
    ) -> list[tuple[str, list[str] | None]] | None:
        """`_trial_merge` of each (base, head), in `TRIAL_MERGES_AT_ONCE` git processes at
        most, side by side; None when git did not make them all (`_clean_many`). Reads only:
        safe beside other readers."""
        if len(pairs) < 2:
            return None
        size = -(-len(pairs) // min(TRIAL_MERGES_AT_ONCE, len(pairs) // 2 or 1))
        chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
        found: list[tuple[str, list[str] | None]] = []
        for part in each_at_once(chunks, self._merge_chunk, at_once=len(chunks)):
            if part is None or isinstance(part, RolloutError):
                return None
            found += part
        return found

    def _merge_chunk(
        self, pairs: Sequence[tuple[str, str]]
    ) -> list[tuple[str, list[str] | None]] | None:
        """The trial merges of `pairs` in one ``git merge-tree --stdin``."""
        code, out, _ = self._git.run_bytes(
            "merge-tree",
            "--write-tree",
            "-z",
            "--name-only",
            "--no-messages",
            "--stdin",
            stdin="".join(f"{base} {head}\n" for base, head in pairs).encode(),
        )
        return _merges_read(out, len(pairs)) if code == 0 else None

    def comment(self, number: int, body: str, *, by: str | None = None) -> None:
        """Add a comment to pull request `number`."""
        with self._locked():
            record = self._load(number)
            note = Comment(by or self._user, body, self._clock())
            self._save(
                replace(record, comments=(*record.comments, note), updated_at=note.created_at)
            )

    def comments(self, number: int) -> list[str]:
        """The bodies of pull request `number`'s comments, oldest first."""
        with self._locked():
            return [c.body for c in self._load(number).comments]

    def merge(self, number: int, *, message: str, by: str | None = None) -> MergeResult:
        """Merge like a host does: a merge commit made in the bare repository.

        The base branch is moved with compare-and-swap: if it moved meanwhile (a human pushed),
        the merge is recomputed on the new base. A conflict returns merged=False naming the
        files; nothing is ever forced.
        """
        [result] = self.merge_many([(number, message)], by=by)
        if isinstance(result, RolloutError):
            raise result
        return result

    def merge_many(
        self, merges: Sequence[tuple[int, str]], *, by: str | None = None
    ) -> list[MergeResult | RolloutError]:
        """`merge` for each (number, message) of `merges`, in order, as if one after another:
        each merge commit is made on top of the one before, and the base branch moves once,
        with one compare-and-swap, to the last. If the base moved meanwhile, the whole chain
        is made again on the new base. A merge that needs no merge (`_PlainMerges`) is made
        without git; any other costs a git process (its trial merge). Merge commits are
        written without git. Five processes for the batch besides, where one pull request at
        a time took six each. The merges are journalled, and the journal committed, before the
        base moves: a process that dies after has them completed by the next look (`_sync`).
        """
        with self._locked():
            results: dict[int, MergeResult | RolloutError] = {}
            todo: list[tuple[int, PullRecord, str]] = []
            for index, (number, message) in enumerate(merges):
                record = self._record(number)
                if record is None:
                    results[index] = HostError(f"no pull request #{number} in {self.bare}")
                else:
                    todo.append((index, record, message))
            for base in dict.fromkeys(record.base for _, record, _ in todo):
                chain = [item for item in todo if item[1].base == base]
                results.update(self._merge_chain(base, chain, by=by or self._user))
        return [results[index] for index in range(len(merges))]

    def _merge_chain(
        self, base: str, todo: list[tuple[int, PullRecord, str]], *, by: str
    ) -> dict[int, MergeResult | RolloutError]:
        """`merge_many` for the pull requests into one base: {index: result}."""
        base_ref = f"refs/heads/{base}"
        results: dict[int, MergeResult | RolloutError] = {}
        for _ in range(self._attempts):
            names = {base_ref}
            for _, record, _ in todo:
                names |= {f"refs/heads/{record.head}", f"refs/pull/{record.number}/head"}
            refs = self._git.resolve(*sorted(names))
            base_sha = refs.get(base_ref)
            if base_sha is None:
                gone = MergeResult(False, reason=f"base branch {base!r} is gone")
                return {**results, **{index: gone for index, _, _ in todo}}
            reached = self._reached(refs, {(record.head, base) for _, record, _ in todo})
            pending: dict[str, str] = {}
            opened: list[tuple[int, PullRecord, str]] = []
            for index, record, message in todo:
                record = self._sync(
                    record, refs, reached=(record.head, base) in reached, pending=pending
                )
                if record.state is PullState.OPEN:
                    opened.append((index, record, message))
                else:
                    results[index] = (
                        MergeResult(True, record.merge_sha, reason="already merged")
                        if record.state is PullState.MERGED
                        else MergeResult(False, reason=f"pull request #{record.number} is closed")
                    )
            tip = base_sha
            made: list[tuple[int, PullRecord, str, str, datetime]] = []
            store = PackBuffer()
            heads = [r.head_sha for _, r, _ in opened]
            with self._plain_merges(base_sha, heads, store) as plain:
                for index, record, message in opened:
                    tree = plain.merged(record.head_sha) if plain is not None else None
                    if tree is None:
                        store.write(self.bare / "objects")  # git reads the tip
                        try:
                            tree, files = self._trial_merge(tip, record.head_sha)
                        except HostError as error:
                            results[index] = MergeResult(False, reason=f"cannot merge: {error}")
                            continue
                        if files is not None:
                            results[index] = MergeResult(
                                False,
                                reason=f"merge conflict with {base} in {', '.join(files)}: "
                                f"update {record.head} on top of {base}",
                            )
                            continue
                        plain = None  # what follows builds on a merge git made
                    when = self._clock()
                    tip = self._commit(tree, (tip, record.head_sha), message, when, store)
                    made.append((index, record, message, tip, when))
            store.write(self.bare / "objects")
            merging = self._merging()
            if made:
                # Should the process die once the base moved, the next look sees these merged.
                self._write_merging(merging, adding={r.number: sha for _, r, _, sha, _ in made})
            self._commit_now()  # the journal and the records, before git moves any ref
            self._git.update_refs(pending)
            if not made:
                return results
            numbers = ", ".join(f"#{record.number}" for _, record, _, _, _ in made)
            what = "pull requests" if len(made) > 1 else "pull request"
            code, _, err = self._git.run(
                "update-ref", "-m", f"merge {what} {numbers}", base_ref, tip, base_sha
            )
            if code == 0:
                for index, record, _, merge_sha, when in made:
                    self._save(
                        replace(
                            record,
                            state=PullState.MERGED,
                            merge_sha=merge_sha,
                            merged_at=when,
                            merged_by=by,
                            updated_at=when,
                            merging=None,
                        )
                    )
                    results[index] = MergeResult(True, merge_sha)
                self._write_merging(merging)
                return results
            if self._git.resolve(base_ref).get(base_ref) == base_sha:
                refused = HostError(f"cannot update {base_ref} in {self.bare}: {err.strip()}")
                return {**results, **{index: refused for index, _, _, _, _ in made}}
            # The base moved under us (a push landed): merge them again onto the new base.
            self._write_merging(merging)
            todo = [
                (index, replace(record, merging=None), message)
                for index, record, message, _, _ in made
            ]
        kept_moving = MergeResult(
            False, reason=f"{base} kept moving during {self._attempts} merge attempts"
        )
        return {**results, **{index: kept_moving for index, _, _ in todo}}

    def close(self, number: int, *, comment: str = "", by: str | None = None) -> None:
        """Close without merging. Closing a closed pull request does nothing."""
        with self._locked():
            record = self._refresh_one(self._load(number))
            if record.state is PullState.MERGED:
                raise HostError(f"pull request #{number} is already merged")
            now = self._clock()
            who = by or self._user
            comments = record.comments + ((Comment(who, comment, now),) if comment else ())
            if record.state is PullState.OPEN:
                record = replace(
                    record, state=PullState.CLOSED, closed_at=now, closed_by=who, updated_at=now
                )
            self._save(replace(record, comments=comments))

    # -- for `gitops-rollout pr list|show|merge|close` -----------------------------------------

    def list_pulls(self, *, state: PullState | None = None) -> list[PullRecord]:
        """Every pull request (or those in `state`), newest first."""
        with self._locked():
            records = self._refreshed()
        return sorted(
            (r for r in records if state is None or r.state is state), key=lambda r: -r.number
        )

    def show(self, number: int) -> PullRecord:
        """One pull request's full record; HostError when there is no such number."""
        with self._locked():
            return self._refresh_one(self._load(number))

    def conflicts(self, number: int) -> list[str]:
        """Files that would conflict if `number` were merged now (empty: mergeable)."""
        record = self.show(number)
        if record.state is not PullState.OPEN:
            return []
        return self._conflicts_of(record) or []

    def diffstat(self, number: int) -> str:
        """``git diff --stat`` of the change the pull request brings (base...head)."""
        record = self.show(number)
        return self._git.check("diff", "--stat", f"{record.base}...{record.head_sha}")

    # -- records -------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The lock over records, the merge journal and pull refs, and one transaction of the
        database while it is held: committed when the block ends, rolled back when it raises,
        so that a batch is written whole or not at all (`_commit_now` commits part-way where
        git is about to move a ref). Reentrant within this object: an inner block is part of
        the outer one's transaction. A database that fails is a HostError saying what to do.
        """
        if self._held:
            self._held += 1
            try:
                yield
            finally:
                self._held -= 1
            return
        (self.bare / _STATE).mkdir(exist_ok=True)
        with (self.bare / _LOCK).open("ab") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                db = self._connection()  # opened under the lock: it may import the old files
                db.execute("BEGIN IMMEDIATE")
                self._held = 1
                try:
                    yield
                except BaseException:
                    self._rollback(db)
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as err:
                self.disconnect()  # the next use opens it afresh
                raise self._unusable(err) from err
            finally:
                self._held = 0
                self._journal = None
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _commit_now(self) -> None:
        """Commit what the transaction holds so far, and go on in a new one: for what must be
        on disk before git moves a ref (the lock stays held, so no one else writes between)."""
        self._sql.execute("COMMIT")
        self._sql.execute("BEGIN IMMEDIATE")

    def _rollback(self, db: sqlite3.Connection) -> None:
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error:
            self.disconnect()  # closing the connection drops its transaction as well

    @property
    def _sql(self) -> sqlite3.Connection:
        """The database, inside `_locked` only (and on the thread that holds it)."""
        assert self._held and self._db is not None, "the database is used under the lock"
        return self._db

    def _next_number(self) -> int:
        """The number of a new pull request: above every number ever given (the lock is held,
        so no other process can be given the same one before this transaction commits)."""
        [(top,)] = self._sql.execute("SELECT max(number) FROM pulls").fetchall()
        return int(top or 0) + 1

    def _save(self, record: PullRecord) -> None:
        self._sql.execute(
            "INSERT OR REPLACE INTO pulls (number, head, base, record) VALUES (?, ?, ?, ?)",
            (record.number, record.head, record.base, record.encode()),
        )

    def _load(self, number: int) -> PullRecord:
        record = self._record(number)
        if record is None:
            raise HostError(f"no pull request #{number} in {self.bare}")
        return record

    def _record(self, number: int) -> PullRecord | None:
        """Record `number`; None when there is none (or its number was claimed, never written)."""
        row = self._sql.execute("SELECT record FROM pulls WHERE number = ?", (number,)).fetchone()
        return self._decode(number, row[0]) if row is not None and row[0] is not None else None

    def _all(self) -> list[PullRecord]:
        rows = self._sql.execute(
            "SELECT number, record FROM pulls WHERE record IS NOT NULL ORDER BY number"
        )
        return [self._decode(number, text) for number, text in rows.fetchall()]

    def _latest_all(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], PullRecord | None]:
        """The newest pull request from each (head, base) of `keys`, reading no other record:
        one look-up in the index of (head, base, number) each."""
        latest: dict[tuple[str, str], PullRecord | None] = {}
        for head, base in dict.fromkeys(keys):
            row = self._sql.execute(
                "SELECT number, record FROM pulls WHERE head = ? AND base = ?"
                " ORDER BY number DESC LIMIT 1",
                (head, base),
            ).fetchone()
            latest[head, base] = self._decode(*row) if row is not None else None
        return latest

    def _decode(self, number: int, text: str) -> PullRecord:
        try:
            return PullRecord.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as err:
            raise HostError(
                f"pull request #{number} in {self._database} is not a pull request record: {err}"
            ) from err

    def _merging(self) -> dict[int, str]:
        """{number: merge commit} of merges a batch was making when it last moved a base
        (`merge_many`); whether each landed is for `_sync` to find out. Read once while the
        lock is held (a batch asks for each of its pull requests)."""
        if self._journal is None:
            rows = self._sql.execute("SELECT number, merge_sha FROM merging").fetchall()
            self._journal = {int(number): str(sha) for number, sha in rows}
        return dict(self._journal)

    def _write_merging(self, merging: dict[int, str], adding: dict[int, str] | None = None) -> None:
        """Keep `merging` (without entries whose pull request is no longer open) and `adding`."""
        kept = {
            n: sha
            for n, sha in merging.items()
            if (r := self._record(n)) is not None and r.state is PullState.OPEN
        }
        kept.update(adding or {})
        self._sql.execute("DELETE FROM merging")
        self._sql.executemany("INSERT INTO merging (number, merge_sha) VALUES (?, ?)", kept.items())
        self._journal = kept

    def _refreshed(self) -> list[PullRecord]:
        records = self._all()
        if any(r.state is PullState.OPEN for r in records):
            refs = self._git.refs("refs/heads/", "refs/pull/")
            merged = self._merged_heads({r.base for r in records if r.state is PullState.OPEN})
            records = [
                self._sync(
                    r, refs, reached=refs.get(f"refs/heads/{r.head}") in merged.get(r.base, ())
                )
                for r in records
            ]
        return records

    def _refresh_one(self, record: PullRecord, refs: dict[str, str] | None = None) -> PullRecord:
        """`record` brought up to date with the repository: two git calls, whatever the number
        of branches. `refs`, when given, holds its head branch and pull ref."""
        if record.state is not PullState.OPEN:
            return record
        if refs is None:
            refs = self._git.resolve(f"refs/heads/{record.head}", f"refs/pull/{record.number}/head")
        head = refs.get(f"refs/heads/{record.head}")
        reached = head is not None and self._git.is_ancestor(head, f"refs/heads/{record.base}")
        return self._sync(record, refs, reached=reached)

    def _merged_heads(self, bases: set[str]) -> dict[str, set[str]]:
        """{base: shas of branch heads already reachable from it}, one call per base."""
        merged: dict[str, set[str]] = {}
        for base in bases:
            out = self._git.check(
                "for-each-ref",
                f"--merged=refs/heads/{base}",
                "--format=%(objectname)",
                "refs/heads/",
            )
            merged[base] = set(out.split())
        return merged

    def _reached(self, refs: dict[str, str], keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Those (head, base) of `keys` whose head branch's commit, as `refs` has it, is on
        the base branch's already: one ``for-each-ref --merged`` per base, naming the heads
        exactly. A head pushed again between the two reads is judged by its new commit (the
        next look-up sees the push anyway)."""
        by_base: dict[str, list[str]] = {}
        for head, base in keys:
            if f"refs/heads/{head}" in refs and f"refs/heads/{base}" in refs:
                by_base.setdefault(base, []).append(f"refs/heads/{head}")
        reached: set[tuple[str, str]] = set()
        for base, heads in by_base.items():
            out = self._git.check(
                "for-each-ref",
                f"--merged={refs[f'refs/heads/{base}']}",
                "--format=%(objectname) %(refname)",
                *sorted(heads),
            )
            for line in out.splitlines():
                sha, _, ref = line.partition(" ")
                if ref in heads and (
                    sha == refs[ref] or self._git.is_ancestor(refs[ref], f"refs/heads/{base}")
                ):
                    reached.add((ref.removeprefix("refs/heads/"), base))
        return reached

    def _sync(
        self,
        record: PullRecord,
        refs: dict[str, str],
        *,
        reached: bool,
        pending: dict[str, str] | None = None,
    ) -> PullRecord:
        """An open pull request as a host would show it now: following its branch. `reached`
        says its head branch's commit is on the base branch already. A pull ref that must
        move is moved now, or added to `pending` (ref: sha) for the caller to set."""
        if record.state is not PullState.OPEN:
            return record
        head = refs.get(f"refs/heads/{record.head}")
        merging = record.merging or self._merging().get(record.number)
        landed = (
            merging
            if head is not None and merging is not None and self._landed(merging, record.base)
            else None
        )
        updated = record
        if head is None:
            now = self._clock()
            updated = replace(
                record,
                state=PullState.CLOSED,
                closed_at=now,
                closed_by=None,
                comments=(*record.comments, Comment(self._user, "head branch deleted", now)),
            )
        elif reached or landed is not None:
            updated = replace(
                record,
                state=PullState.MERGED,
                head_sha=head,
                merge_sha=landed or head,
                merged_at=self._clock(),
            )
        elif head != record.head_sha:
            updated = replace(record, head_sha=head)
        pull_ref = f"refs/pull/{record.number}/head"
        if updated.state is PullState.OPEN and refs.get(pull_ref) != head:
            if pending is None:
                self._git.check("update-ref", pull_ref, updated.head_sha)
            else:
                pending[pull_ref] = updated.head_sha
        if updated != record:
            updated = replace(updated, updated_at=self._clock(), merging=None)
            self._save(updated)
        return updated

    def _landed(self, sha: str, base: str) -> bool:
        code, _, _ = self._git.run("cat-file", "-e", f"{sha}^{{commit}}")
        return code == 0 and self._git.is_ancestor(sha, f"refs/heads/{base}")

    @contextmanager
    def _plain_merges(
        self, tip: str, heads: Sequence[str], store: PackBuffer
    ) -> Iterator[_PlainMerges | None]:
        """`_PlainMerges` of `heads` into commit `tip`; None for fewer than `PLAIN_FROM` heads
        (its two git processes would cost more than they save), in a repository with
        SHA-256 object names, or when git cannot tell (git merges them all then)."""
        if len(heads) < PLAIN_FROM or self._format() != "sha1":
            yield None
            return
        objects = ObjectReader(self.bare)
        try:
            try:
                plain: _PlainMerges | None = _PlainMerges(self._git, objects, tip, heads, store)
            except (RolloutError, ValueError) as err:
                log.info("pull requests into %s merged by git alone: %s", tip[:12], err)
                plain = None
            yield plain
        finally:
            objects.close()

    def _format(self) -> str:
        """The repository's object format: sha1 or sha256."""
        if self._object_format is None:
            self._object_format = self._git.check("rev-parse", "--show-object-format").strip()
        return self._object_format

    def _commit(
        self,
        tree: str,
        parents: Sequence[str],
        message: str,
        when: datetime,
        store: PackBuffer,
    ) -> str:
        """A merge commit by the host's identity: the object ``git commit-tree`` makes, kept
        in `store` for the batch's one pack (no git process per merge). Repositories with
        SHA-256 object names go through commit-tree."""
        if self._format() != "sha1":
            args = [arg for parent in parents for arg in ("-p", parent)]
            return self._git.check(
                "commit-tree",
                tree,
                *args,
                "-F",
                "-",
                stdin=message.encode(),
                env=self._identity.env(when),
            ).strip()
        signature = self._identity.signature(when)
        body = (
            f"tree {tree}\n"
            + "".join(f"parent {parent}\n" for parent in parents)
            + f"author {signature}\ncommitter {signature}\n\n{message}"
        )
        return store.add(b"commit", body.encode())

    def _conflicts_of(self, record: PullRecord) -> list[str] | None:
        """None when `record` merges cleanly into its base now, else the conflicting files."""
        return self._trial_merge(f"refs/heads/{record.base}", record.head_sha)[1]

    def _trial_merge(self, base: str, head: str) -> tuple[str, list[str] | None]:
        """``git merge-tree`` of `head` into `base`: the merged tree, and None or the files
        that conflict. HostError when git cannot merge them at all."""
        code, out, err = self._git.run(
            "merge-tree", "--write-tree", "-z", "--name-only", "--no-messages", base, head
        )
        if code > 1:
            raise HostError(f"git merge-tree failed in {self.bare}: {err.strip()}")
        tree, _, rest = out.partition("\0")
        return tree.strip(), (sorted({f for f in rest.split("\0") if f}) if code == 1 else None)

    def _pull(self, record: PullRecord) -> PullRequest:
        # No `mergeable`: a trial merge per pull request is what made listings slow, and real
        # hosts leave it out of listings too. `mergeable` answers for one pull request.
        return PullRequest(
            number=record.number,
            head=record.head,
            base=record.base,
            title=record.title,
            body=record.body,
            state=record.state,
            head_sha=record.head_sha,
            merge_sha=record.merge_sha,
            url=f"{self.bare.as_uri()}#pull/{record.number}",
            labels=record.labels,
        )

    # -- the database ------------------------------------------------------------------------
    #
    # ``pulls`` holds one row per number: the record as the JSON of `PullRecord.to_json`, and
    # its head and base, indexed with the number so that a branch's newest pull request is one
    # look-up. A row without a record is a number an earlier version claimed and never wrote
    # (its process died): kept so that the number is never given again. ``merging`` is the
    # merge journal: {number: merge commit} while a batch moves a base. ``user_version`` says
    # the schema (`_SCHEMA`). The connection is used only under the lock, by the thread holding
    # it; it is not tied to the thread that opened it, since the daemon runs its passes (one at
    # a time) on whichever worker thread is free. Trial merges on threads never touch it.

    def disconnect(self) -> None:
        """Close the database now (the next call opens it again); dropping the object closes
        it too. Not while a call of this object is running."""
        if self._closer is not None:
            self._closer()
        self._db = self._closer = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            db = self._open()
            self._db, self._closer = db, weakref.finalize(self, db.close)
        return self._db

    def _open(self) -> sqlite3.Connection:
        """The database, set up (and the files of earlier versions imported) if it is new."""
        db = sqlite3.connect(
            self._database,
            timeout=BUSY_TIMEOUT,
            isolation_level=None,  # transactions are `_locked`'s, begun and ended explicitly
            check_same_thread=False,
        )
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            [(version,)] = db.execute("PRAGMA user_version").fetchall()
            if version == 0:
                self._set_up(db)
            elif version != _SCHEMA:
                raise HostError(
                    f"{self._database} has pull request records of schema {version}, which "
                    f"this version of gitops-rollout does not know (it reads schema {_SCHEMA}): "
                    "run the version that wrote them"
                )
            self._delete_files()
        except BaseException:
            db.close()
            raise
        return db

    def _set_up(self, db: sqlite3.Connection) -> None:
        """The tables of a new database, with the records of earlier versions, in one
        transaction: a process that dies part-way leaves a database that is set up anew."""
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE pulls (number INTEGER PRIMARY KEY, head TEXT, base TEXT, record TEXT)"
            )
            db.execute("CREATE INDEX pulls_newest ON pulls (head, base, number)")
            db.execute("CREATE TABLE merging (number INTEGER PRIMARY KEY, merge_sha TEXT NOT NULL)")
            imported = self._import_files(db)
            db.execute(f"PRAGMA user_version = {_SCHEMA}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if imported:
            log.info("%s: imported %d pull request records into %s", self.bare, imported, DATABASE)

    def _import_files(self, db: sqlite3.Connection) -> int:
        """Copy the records and the merge journal of earlier versions into `db` (the caller's
        transaction): ``pulls/<n>.json`` each, an empty one being a number claimed by a process
        that died before writing (kept, never given again), and ``merging.json``. How many
        numbers there were. `_delete_files` deletes the files once this is committed."""
        rows: list[tuple[int, str | None, str | None, str | None]] = []
        folder = self.bare / _FILES_PULLS
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            if not path.stem.isdigit():
                continue
            try:
                text = path.read_text()
                if not text.strip():
                    rows.append((int(path.stem), None, None, None))
                    continue
                record = PullRecord.from_json(json.loads(text))
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise HostError(
                    f"{path} is not a pull request record ({err}), so the records cannot be "
                    f"moved into {self._database}: repair or delete it, then retry"
                ) from err
            if record.number != int(path.stem):
                raise HostError(
                    f"{path} holds the record of pull request #{record.number}, so the "
                    f"records cannot be moved into {self._database}: repair or delete it, "
                    "then retry"
                )
            rows.append((record.number, record.head, record.base, record.encode()))
        db.executemany("INSERT INTO pulls (number, head, base, record) VALUES (?, ?, ?, ?)", rows)
        journal = self.bare / _FILES_MERGING
        try:
            data = json.loads(journal.read_text()) if journal.exists() else {}
            merging = [(int(n), str(sha)) for n, sha in data.get("merging", {}).items()]
        except (OSError, ValueError, AttributeError) as err:
            raise HostError(
                f"{journal} cannot be read ({err}); it names merges that may have landed: "
                "repair or delete it (each pull request's next look decides anew), then retry"
            ) from err
        db.executemany("INSERT INTO merging (number, merge_sha) VALUES (?, ?)", merging)
        return len(rows)

    def _delete_files(self) -> None:
        """Delete the files of earlier versions, imported into the database by now: one stat
        each when there are none. Should deleting fail, the files are only in the way."""
        for name in (_FILES_MERGING, *_FILES_INDEX, _FILES_PULLS):
            path = self.bare / name
            try:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            except OSError as err:
                log.warning(
                    "%s: cannot delete %s, imported into %s: %s", self.bare, name, DATABASE, err
                )

    def _unusable(self, err: sqlite3.Error) -> HostError:
        """`err`, from the database, as the caller should act on it."""
        name = err.sqlite_errorname or ""
        if name.startswith(_TRANSIENT):
            return HostError(
                f"cannot use the pull request database {self._database}: {err}; check that "
                "this user may read and write it and that the disk has room, then retry"
            )
        return HostError(
            f"{self._database} is not a readable pull request database ({err}): with "
            "gitops-rollout stopped, restore it from a backup, or move it aside (with any "
            "-wal and -shm file beside it) to start again with no pull request records"
        )


_TRANSIENT = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_CANTOPEN",
    "SQLITE_IOERR",
    "SQLITE_PERM",
    "SQLITE_READONLY",
    "SQLITE_FULL",
)
"""SQLite errors of the file or the disk rather than of the data: retrying may succeed."""


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _merges_read(out: bytes, count: int) -> list[tuple[str, list[str] | None]] | None:
    """The `count` merges of ``git merge-tree --stdin -z --name-only --no-messages`` output:
    per merge, its status (1 clean, 0 conflicts), the tree and the conflicting files, each
    ended by NUL, and an empty field after the files. None for output not of that shape."""
    fields = out.split(b"\0")
    found: list[tuple[str, list[str] | None]] = []
    at = 0
    while len(found) < count:
        if at + 2 > len(fields) or fields[at] not in (b"0", b"1"):
            return None
        clean, tree = fields[at] == b"1", fields[at + 1].decode(errors="replace")
        end = at + 2
        while end < len(fields) and fields[end]:
            end += 1
        if end >= len(fields) or (clean and end != at + 2):
            return None
        files = sorted({f.decode(errors="replace") for f in fields[at + 2 : end]})
        found.append((tree, None if clean else files))
        at = end + 1
    return found if fields[at:] == [b""] else None
