"""The `local` Git host: pull requests kept inside a bare repository on disk.

It behaves like a small GitHub. Each pull request has a ref ``refs/pull/<n>/head`` and a JSON
record in ``<bare>/gitops-rollout/pulls/<n>.json``. Numbers are claimed with O_EXCL and records
are replaced atomically (temp file + rename), under one lock file, so two processes (the
reconciler and a human running ``gitops-rollout pr merge``) never clash. An open pull request
follows its head branch; one whose head reached the base outside the host counts as merged, and
one whose branch was deleted counts as closed. Merging happens server-side, as on a real host:
``git merge-tree --write-tree`` (git >= 2.38), a merge commit, and a compare-and-swap of the base
branch. A conflict is reported, never forced. Pushing branches is `gitops.repo`'s job.

Opening or updating the pull request of one branch costs the same however many records there
are: an index under ``<bare>/gitops-rollout/heads/`` names each head branch's newest pull
request, and only that record is read and brought up to date. Listings compute no mergeability,
like GitHub's; `LocalHost.mergeable` answers for one pull request.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
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

PULLS_DIR = "gitops-rollout/pulls"
"""Where pull request records live, relative to the bare repository."""
INDEX_DIR = "gitops-rollout/heads"
"""The index: one file per head branch naming its newest pull request into each base."""
INDEX_MARK = "gitops-rollout/heads.json"
"""Up to which number every record is in the index (records above it are indexed on read)."""
MERGING_FILE = "gitops-rollout/merging.json"
"""The merges of a batch while it moves their base (one file for the batch, not a record
rewrite per pull request)."""

_LOCK = "gitops-rollout/pulls.lock"
_FORMAT = 1

HOST_IDENTITY = Identity("gitops-rollout local host", "local-host@gitops-rollout.invalid")
"""Committer of merge commits, like the host's own account on a real forge."""

PLAIN_FROM = 3
"""Pull requests from which a merge batch looks for merges that need no merge (`treemerge`)."""

TRIAL_MERGES_AT_ONCE = min(4, os.cpu_count() or 1)
"""How many trial merges (``git merge-tree`` processes) `LocalHost.mergeable_many` runs at once."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Comment:
    author: str
    body: str
    created_at: datetime


@dataclass(frozen=True)
class PullRecord:
    """Everything the local host knows about one pull request (its JSON record)."""

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
        data = asdict(self)
        data["format"] = _FORMAT
        data["state"] = self.state.value
        return json.loads(json.dumps(data, default=_iso))  # type: ignore[no-any-return]

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


class _StaleIndex(Exception):
    """The index disagrees with the records (or cannot be read): it is rebuilt from them."""


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
        self._dir = self.bare / PULLS_DIR
        self._merging_file = self.bare / MERGING_FILE
        self._journal: dict[int, str] | None = None
        """`_merging` as read under the lock, until it is released."""
        self._index = self.bare / INDEX_DIR
        self._mark = self.bare / INDEX_MARK
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
        that draft met. One lock, one look-up of every branch, one ancestry query per base and
        one transaction for the pull refs serve the whole batch (three git processes, where
        one pull request at a time took three or four each).

        Only each head's newest record is read: an open one is always the newest, since a new
        pull request is opened only when none is open. Dying part-way is safe: a record
        written without its index entry is indexed by the next look-up, one without its pull
        ref gets it when it is next brought up to date.
        """
        if not drafts:
            return []
        with self._locked():
            latest, through = self._latest_all([(d.head, d.base) for d in drafts])
            names = {f"refs/heads/{d.head}" for d in drafts} | {
                f"refs/heads/{d.base}" for d in drafts
            }
            names |= {f"refs/pull/{r.number}/head" for r in latest.values() if r is not None}
            refs = self._git.resolve(*sorted(names))
            merged = self._reached(refs, {(d.head, d.base) for d in drafts})
            pending: dict[str, str] = {}
            mark = through
            results: list[PullRequest | RolloutError] = []
            for draft in drafts:
                key = (draft.head, draft.base)
                try:
                    record, mark = self._open_one(
                        draft, latest[key], refs, key in merged, pending, mark=mark
                    )
                except HostError as err:
                    results.append(err)
                    continue
                latest[key] = record
                results.append(self._pull(record))
            if mark != through:
                _write_json(self._mark, {"format": _FORMAT, "through": mark})
            self._git.update_refs(pending)
        return results

    def _open_one(
        self,
        draft: PullRequestDraft,
        latest: PullRecord | None,
        refs: dict[str, str],
        reached: bool,
        pending: dict[str, str],
        *,
        mark: int,
    ) -> tuple[PullRecord, int]:
        """One draft of `open_many`: its open pull request updated, or a new one. `refs` holds
        its branches, `reached` says its head is on its base already, `pending` collects pull
        refs to set and `mark` is the index mark so far; returns the record and the new mark."""
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
            return updated, mark
        if reached:
            raise HostError(
                f"no commits between {draft.base!r} and {draft.head!r}: nothing to review"
            )
        number = self._claim_number(after=mark)
        record = PullRecord(
            number=number,
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
        # Dying before this is safe: the next look-up indexes records above the mark.
        self._index_record(record)
        pending[f"refs/pull/{number}/head"] = head_sha
        return record, number if number == mark + 1 else mark

    def mergeable(self, number: int) -> bool | None:
        """Whether open pull request `number` merges cleanly into its base now (a trial merge
        with ``git merge-tree``); None when it is not open."""
        [answer] = self.mergeable_many([number])
        if isinstance(answer, RolloutError):
            raise answer
        return answer

    def mergeable_many(self, numbers: Sequence[int]) -> list[bool | RolloutError | None]:
        """`mergeable` for each number, in order: one look-up of every branch and one
        ancestry query for the batch, then a trial merge per open pull request. The trial
        merges are independent of each other: up to `TRIAL_MERGES_AT_ONCE` run at once."""
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
            self._git.update_refs(pending)
            clean = each_at_once(synced, self._merges_cleanly, at_once=TRIAL_MERGES_AT_ONCE)
            answers.update(zip(records, clean, strict=True))
        return [answers[number] for number in numbers]

    def _merges_cleanly(self, record: PullRecord) -> bool | None:
        """Whether `record` merges cleanly into its base now (a trial merge); None when it is
        not open. Safe to call from several threads at once: it only reads."""
        return self._conflicts_of(record) is None if record.state is PullState.OPEN else None

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
        a time took six each.
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
            self._git.update_refs(pending)
            if not made:
                return results
            # Should the process die once the base moved, the next look sees these merged.
            merging = self._merging()
            self._write_merging(merging, adding={r.number: sha for _, r, _, sha, _ in made})
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
        # One lock for every change to records, the index and pull refs; reentrant within
        # this object.
        if self._held:
            self._held += 1
            try:
                yield
            finally:
                self._held -= 1
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        with (self.bare / _LOCK).open("ab") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._held = 1
            try:
                yield
            finally:
                self._held = 0
                self._journal = None
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _path(self, number: int) -> Path:
        return self._dir / f"{number}.json"

    def _claim_number(self, *, after: int) -> int:
        """The first free number above `after`, the index's mark (every number up to it is
        taken), claimed with O_EXCL."""
        number = after + 1
        while True:
            try:
                fd = os.open(self._path(number), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                number += 1
                continue
            os.close(fd)
            return number

    def _merging(self) -> dict[int, str]:
        """{number: merge commit} of merges a batch was making when it last moved a base
        (`merge_many`); whether each landed is for `_sync` to find out. Read once while the
        lock is held (a batch asks for each of its pull requests)."""
        if self._held and self._journal is not None:
            return dict(self._journal)
        try:
            data = json.loads(self._merging_file.read_text())
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as err:
            raise HostError(
                f"{self._merging_file} cannot be read ({err}); it names merges that may have "
                "landed: fix or delete it (each pull request's next look decides anew)"
            ) from err
        journal = {int(number): str(sha) for number, sha in data.get("merging", {}).items()}
        if self._held:
            self._journal = journal
        return dict(journal)

    def _write_merging(self, merging: dict[int, str], adding: dict[int, str] | None = None) -> None:
        """Keep `merging` (without entries whose pull request is no longer open) and `adding`."""
        kept = {
            n: sha
            for n, sha in merging.items()
            if (r := self._record(n)) is not None and r.state is PullState.OPEN
        }
        kept.update(adding or {})
        if kept:
            _write_json(self._merging_file, {"format": _FORMAT, "merging": kept})
        else:
            self._merging_file.unlink(missing_ok=True)
        if self._held:
            self._journal = kept

    def _save(self, record: PullRecord) -> None:
        _write_json(self._path(record.number), record.to_json())

    def _load(self, number: int) -> PullRecord:
        record = self._record(number)
        if record is None:
            raise HostError(f"no pull request #{number} in {self.bare}")
        return record

    def _record(self, number: int) -> PullRecord | None:
        """Record `number`; None when there is none (or its number was claimed, never written)."""
        try:
            return self._read(self._path(number))
        except FileNotFoundError:
            return None

    @staticmethod
    def _read(path: Path) -> PullRecord | None:
        text = path.read_text()
        if not text.strip():
            return None  # a number claimed by a process that died before writing
        try:
            return PullRecord.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as err:
            raise HostError(f"{path} is not a pull request record: {err}") from err

    def _record_paths(self) -> list[Path]:
        if not self._dir.is_dir():
            return []
        return [p for p in self._dir.glob("*.json") if p.stem.isdigit()]

    def _all(self) -> list[PullRecord]:
        return [r for r in (self._read(p) for p in self._record_paths()) if r is not None]

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

    # -- the index: head branch -> number of its newest pull request ---------------------------
    #
    # ``heads/<sha256 of the branch name>.json`` says {"head": name, "latest": {base: number}};
    # ``heads.json`` says {"through": n}: every record numbered up to n is in the index. A new
    # record is indexed right after it is written. Records above the mark (a process that died
    # in between, or a version that kept no index) are indexed by the next look-up, which costs
    # one stat when there are none. A missing mark, or an entry the records contradict, makes
    # the look-up rebuild the index from the records. Everything here runs under the lock.
    # Entries are the host's own: deleting heads.json has the whole index rebuilt; an entry
    # deleted by hand goes unnoticed (its branch would get a second pull request).

    def _latest_all(
        self, keys: Sequence[tuple[str, str]]
    ) -> tuple[dict[tuple[str, str], PullRecord | None], int]:
        """The newest pull request from each (head, base) of `keys` (reading no other record),
        and the number up to which every record is indexed."""

        def look_up() -> dict[tuple[str, str], PullRecord | None]:
            return {key: self._lookup(*key) for key in keys}

        try:
            through = self._read_mark()
            through = self._catch_up(through) if through is not None else self._rebuild_index()
            return look_up(), through
        except _StaleIndex as err:
            log.warning("%s: %s; rebuilding the pull request index", self.bare, err)
            through = self._rebuild_index()
        try:
            return look_up(), through
        except _StaleIndex as err:
            raise HostError(
                f"the pull request index of {self.bare} is inconsistent: {err}"
            ) from err

    def _lookup(self, head: str, base: str) -> PullRecord | None:
        path = self._entry_path(head)
        number = self._read_entry(path, head).get(base)
        if number is None:
            return None
        record = self._record(number)
        if record is None or (record.head, record.base) != (head, base):
            found = (
                "no record" if record is None else f"the record of {record.head} -> {record.base}"
            )
            raise _StaleIndex(f"{path} names #{number} for {head} -> {base}, but that is {found}")
        return record

    def _catch_up(self, through: int) -> int:
        """Index the records numbered above the mark `through` (normally none); the new mark."""
        number = through
        while self._path(number + 1).exists():
            number += 1
            record = self._record(number)
            if record is not None:
                self._index_record(record)
        if number != through:
            _write_json(self._mark, {"format": _FORMAT, "through": number})
        return number

    def _index_record(self, record: PullRecord) -> None:
        path = self._entry_path(record.head)
        latest = self._read_entry(path, record.head)
        if latest.get(record.base, 0) < record.number:
            self._write_entry(path, record.head, {**latest, record.base: record.number})

    def _rebuild_index(self) -> int:
        """The index made anew from every record (a repository without one yet, or one that
        disagrees with the records); the new mark."""
        # Without a mark the index is rebuilt again, should this one be interrupted.
        self._mark.unlink(missing_ok=True)
        latest: dict[str, dict[str, int]] = {}
        through = 0
        for path in self._record_paths():
            through = max(through, int(path.stem))
            record = self._read(path)
            if record is not None:
                bases = latest.setdefault(record.head, {})
                bases[record.base] = max(bases.get(record.base, 0), record.number)
        if self._index.exists():
            shutil.rmtree(self._index)
        for head, bases in latest.items():
            self._write_entry(self._entry_path(head), head, bases)
        _write_json(self._mark, {"format": _FORMAT, "through": through})
        if latest:
            log.info("%s: indexed the pull requests of %d branches", self.bare, len(latest))
        return through

    def _read_mark(self) -> int | None:
        try:
            data = json.loads(self._mark.read_text())
        except FileNotFoundError:
            return None
        except ValueError as err:
            raise _StaleIndex(f"{self._mark} cannot be read: {err}") from err
        if (
            not isinstance(data, dict)
            or data.get("format") != _FORMAT
            or not isinstance(data.get("through"), int)
        ):
            raise _StaleIndex(f"{self._mark} is not an index mark of format {_FORMAT}")
        return int(data["through"])

    def _entry_path(self, head: str) -> Path:
        # Hashed: branch names have slashes and may be longer than a file name may be.
        return self._index / f"{hashlib.sha256(head.encode()).hexdigest()}.json"

    @staticmethod
    def _read_entry(path: Path, head: str) -> dict[str, int]:
        """{base: number of the newest pull request from `head`}; empty when there is none."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as err:
            raise _StaleIndex(f"{path} cannot be read: {err}") from err
        latest = data.get("latest") if isinstance(data, dict) else None
        if (
            not isinstance(latest, dict)
            or data.get("head") != head
            or not all(isinstance(n, int) for n in latest.values())
        ):
            raise _StaleIndex(f"{path} is not the index entry of {head}")
        return latest

    def _write_entry(self, path: Path, head: str, latest: dict[str, int]) -> None:
        self._index.mkdir(parents=True, exist_ok=True)
        _write_json(path, {"format": _FORMAT, "head": head, "latest": latest})


_temp_names = itertools.count()
"""Numbers the temp files of `_write_json` within this process."""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` with `data` in one step: a temp file beside it, renamed over it.

    No fsync: a record describes refs (``refs/pull/<n>/head``, the base branch) that git
    itself writes without one by default (git 2.39's ``core.fsync`` default leaves references
    out), so a record is as durable as what it describes. An fsync cost an ext4 journal
    commit per record, which slowed the next file creations too. The rename still keeps every
    reader from seeing a half-written file, and a crash of the process loses nothing (the
    data is in the page cache).
    """
    text = json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new empty file beside `path` (mode 0600, like mkstemp's), open for writing, named
    for this process and a counter: cheaper than mkstemp's random names. One left behind by
    a dead process that had the same pid is stepped over."""
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{next(_temp_names)}.tmp"
        try:
            return os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), tmp
        except FileExistsError:
            continue


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
