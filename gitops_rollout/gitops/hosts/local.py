"""The `local` Git host: pull requests kept inside a bare repository on disk.

It behaves like a small GitHub. Each pull request has a ref ``refs/pull/<n>/head`` and a JSON
record in ``<bare>/gitops-rollout/pulls/<n>.json``. Numbers are claimed with O_EXCL and records
are replaced atomically (temp file + rename), under one lock file, so two processes (the
reconciler and a human running ``gitops-rollout pr merge``) never clash. An open pull request
follows its head branch; one whose head reached the base outside the host counts as merged, and
one whose branch was deleted counts as closed. Merging happens server-side, as on a real host:
``git merge-tree --write-tree`` (git >= 2.38), a merge commit, and a compare-and-swap of the base
branch. A conflict is reported, never forced. Pushing branches is `gitops.repo`'s job.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import git

from gitops_rollout.errors import HostError
from gitops_rollout.gitops.hosts.base import MergeResult, PullRequest, PullRequestDraft, PullState
from gitops_rollout.gitops.repo import Identity

if TYPE_CHECKING:
    # The config module, not the registry: the registry imports every host, and the hosts
    # must stay independent of each other (.importlinter).
    from gitops_rollout.gitops.hosts.config import HostConfig

PULLS_DIR = "gitops-rollout/pulls"
"""Where pull request records live, relative to the bare repository."""

_LOCK = "gitops-rollout/pulls.lock"
_FORMAT = 1

HOST_IDENTITY = Identity("gitops-rollout local host", "local-host@gitops-rollout.invalid")
"""Committer of merge commits, like the host's own account on a real forge."""


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
    """git in the bare repository, through gitpython with argument lists."""

    path: Path
    _git: git.Git = field(default_factory=git.Git)

    def run(
        self, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
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
        return code, out.decode(errors="replace"), err

    def check(
        self, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
    ) -> str:
        code, out, err = self.run(*args, stdin=stdin, env=env)
        if code != 0:
            raise HostError(f"git {args[0]} failed in {self.path}: {err.strip()}")
        return out

    def refs(self, *patterns: str) -> dict[str, str]:
        out = self.check("for-each-ref", "--format=%(objectname) %(refname)", *patterns)
        pairs = (line.split(" ", 1) for line in out.splitlines() if line)
        return {ref: sha for sha, ref in pairs}

    def is_ancestor(self, older: str, newer: str) -> bool:
        code, _, err = self.run("merge-base", "--is-ancestor", older, newer)
        if code > 1:
            raise HostError(f"git merge-base failed in {self.path}: {err.strip()}")
        return code == 0


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
        self._held = 0

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
        with self._locked():
            records = self._refreshed()
            heads = self._git.refs(f"refs/heads/{draft.head}", f"refs/heads/{draft.base}")
            head_sha = heads.get(f"refs/heads/{draft.head}")
            base_sha = heads.get(f"refs/heads/{draft.base}")
            if head_sha is None:
                raise HostError(
                    f"branch {draft.head!r} does not exist in {self.bare}; push it first"
                )
            if base_sha is None:
                raise HostError(f"base branch {draft.base!r} does not exist in {self.bare}")
            now = self._clock()
            for record in sorted(records, key=lambda r: r.number):
                if record.state is PullState.OPEN and (record.head, record.base) == (
                    draft.head,
                    draft.base,
                ):
                    updated = replace(
                        record,
                        title=draft.title,
                        body=draft.body,
                        labels=tuple(draft.labels),
                        reviewers=tuple(dict.fromkeys((*record.reviewers, *draft.reviewers))),
                    )
                    if updated != record:
                        updated = replace(updated, updated_at=now)
                        self._save(updated)
                    return self._pull(updated)
            if self._git.is_ancestor(head_sha, base_sha):
                raise HostError(
                    f"no commits between {draft.base!r} and {draft.head!r}: nothing to review"
                )
            number = self._claim_number()
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
            self._git.check("update-ref", f"refs/pull/{number}/head", head_sha)
            return self._pull(record)

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
        with self._locked():
            record = self._refresh_one(self._load(number))
            if record.state is PullState.MERGED:
                return MergeResult(True, record.merge_sha, reason="already merged")
            if record.state is PullState.CLOSED:
                return MergeResult(False, reason=f"pull request #{number} is closed")
            for _ in range(self._attempts):
                base_ref = f"refs/heads/{record.base}"
                base_sha = self._git.refs(base_ref).get(base_ref)
                if base_sha is None:
                    return MergeResult(False, reason=f"base branch {record.base!r} is gone")
                code, out, err = self._git.run(
                    "merge-tree",
                    "--write-tree",
                    "-z",
                    "--name-only",
                    "--no-messages",
                    base_sha,
                    record.head_sha,
                )
                if code == 1:
                    files = sorted({f for f in out.split("\0")[1:] if f})
                    return MergeResult(
                        False,
                        reason=f"merge conflict with {record.base} in {', '.join(files)}: "
                        f"update {record.head} on top of {record.base}",
                    )
                if code != 0:
                    return MergeResult(False, reason=f"cannot merge: {err.strip()}")
                tree = out.split("\0", 1)[0].strip()
                when = self._clock()
                merge_sha = self._git.check(
                    "commit-tree",
                    tree,
                    "-p",
                    base_sha,
                    "-p",
                    record.head_sha,
                    "-F",
                    "-",
                    stdin=message.encode(),
                    env=self._identity.env(when),
                ).strip()
                self._save(replace(record, merging=merge_sha))
                code, _, err = self._git.run(
                    "update-ref",
                    "-m",
                    f"merge pull request #{number}",
                    base_ref,
                    merge_sha,
                    base_sha,
                )
                if code == 0:
                    merged = replace(
                        record,
                        state=PullState.MERGED,
                        merge_sha=merge_sha,
                        merged_at=when,
                        merged_by=by or self._user,
                        updated_at=when,
                        merging=None,
                    )
                    self._save(merged)
                    return MergeResult(True, merge_sha)
                if self._git.refs(base_ref).get(base_ref) == base_sha:
                    raise HostError(f"cannot update {base_ref} in {self.bare}: {err.strip()}")
                # The base moved under us (a push landed): merge again onto the new base.
                record = self._refresh_one(replace(record, merging=None))
                if record.state is not PullState.OPEN:
                    return MergeResult(record.state is PullState.MERGED, record.merge_sha)
            return MergeResult(
                False, reason=f"{record.base} kept moving during {self._attempts} merge attempts"
            )

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
        code, out, err = self._git.run(
            "merge-tree",
            "--write-tree",
            "-z",
            "--name-only",
            "--no-messages",
            f"refs/heads/{record.base}",
            record.head_sha,
        )
        if code > 1:
            raise HostError(f"git merge-tree failed in {self.bare}: {err.strip()}")
        return sorted({f for f in out.split("\0")[1:] if f}) if code == 1 else []

    def diffstat(self, number: int) -> str:
        """``git diff --stat`` of the change the pull request brings (base...head)."""
        record = self.show(number)
        return self._git.check("diff", "--stat", f"{record.base}...{record.head_sha}")

    # -- records -------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # One lock for every change to records and pull refs; reentrant within this object.
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
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _path(self, number: int) -> Path:
        return self._dir / f"{number}.json"

    def _claim_number(self) -> int:
        numbers = [int(p.stem) for p in self._dir.glob("*.json") if p.stem.isdigit()]
        number = max(numbers, default=0) + 1
        while True:
            try:
                fd = os.open(self._path(number), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                number += 1
                continue
            os.close(fd)
            return number

    def _save(self, record: PullRecord) -> None:
        data = json.dumps(record.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{record.number}.", suffix=".tmp", dir=self._dir)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self._path(record.number))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _load(self, number: int) -> PullRecord:
        path = self._path(number)
        record = self._read(path) if path.is_file() else None
        if record is None:
            raise HostError(f"no pull request #{number} in {self.bare}")
        return record

    @staticmethod
    def _read(path: Path) -> PullRecord | None:
        text = path.read_text()
        if not text.strip():
            return None  # a number claimed by a process that died before writing
        try:
            return PullRecord.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as err:
            raise HostError(f"{path} is not a pull request record: {err}") from err

    def _all(self) -> list[PullRecord]:
        if not self._dir.is_dir():
            return []
        paths = (p for p in self._dir.glob("*.json") if p.stem.isdigit())
        return [r for r in (self._read(p) for p in paths) if r is not None]

    def _refreshed(self) -> list[PullRecord]:
        records = self._all()
        if any(r.state is PullState.OPEN for r in records):
            refs = self._git.refs("refs/heads/", "refs/pull/")
            merged = self._merged_heads({r.base for r in records if r.state is PullState.OPEN})
            records = [self._sync(r, refs, merged) for r in records]
        return records

    def _refresh_one(self, record: PullRecord) -> PullRecord:
        if record.state is not PullState.OPEN:
            return record
        refs = self._git.refs(f"refs/heads/{record.head}", f"refs/pull/{record.number}/head")
        return self._sync(record, refs, self._merged_heads({record.base}))

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

    def _sync(
        self, record: PullRecord, refs: dict[str, str], merged: dict[str, set[str]]
    ) -> PullRecord:
        """An open pull request as a host would show it now: following its branch."""
        if record.state is not PullState.OPEN:
            return record
        head = refs.get(f"refs/heads/{record.head}")
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
        elif head in merged.get(record.base, set()) or (
            record.merging and self._landed(record.merging, record.base)
        ):
            landed = head
            if record.merging and self._landed(record.merging, record.base):
                landed = record.merging
            updated = replace(
                record,
                state=PullState.MERGED,
                head_sha=head,
                merge_sha=landed,
                merged_at=self._clock(),
            )
        elif head != record.head_sha:
            updated = replace(record, head_sha=head)
        if updated.state is PullState.OPEN and refs.get(f"refs/pull/{record.number}/head") != head:
            self._git.check("update-ref", f"refs/pull/{record.number}/head", updated.head_sha)
        if updated != record:
            updated = replace(updated, updated_at=self._clock(), merging=None)
            self._save(updated)
        return updated

    def _landed(self, sha: str, base: str) -> bool:
        code, _, _ = self._git.run("cat-file", "-e", f"{sha}^{{commit}}")
        return code == 0 and self._git.is_ancestor(sha, f"refs/heads/{base}")

    def _pull(self, record: PullRecord) -> PullRequest:
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
            mergeable=self._mergeable(record),
        )

    def _mergeable(self, record: PullRecord) -> bool | None:
        """Whether an open pull request merges cleanly into its base now (as real hosts say)."""
        if record.state is not PullState.OPEN:
            return None
        code, _, _ = self._git.run(
            "merge-tree",
            "--write-tree",
            "--no-messages",
            f"refs/heads/{record.base}",
            record.head_sha,
        )
        return {0: True, 1: False}.get(code)


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
