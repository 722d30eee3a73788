"""The bot's cached clone of the GitOps repository: fetch, read, commit without a work tree, push.

A `Workspace` keeps one bare clone per remote in a cache directory and never checks files out:
the pass reads ``origin/<base>`` as a `GitTree`, and commits are built with ``git fast-import``
straight from change sets, all of a pass's commits in two runs (one pass may write hundreds of
commits over a 20,000-file tree). Each rollout has one bot branch,
``gitops-rollout/<cluster>/<namespace>/<model>``, rebuilt on top of ``origin/<base>`` and
force-pushed with a lease on the sha we last fetched; all of a pass's branches go in one push.
A branch someone else committed to is never overwritten.

Everything the pass needs to remember survives a restart: it is in the remote, or in the cache
(one file naming the commits the bot pushed, or was about to push: `_PUSHED`). After a push
the remote-tracking refs are written on a thread of their own while the caller opens pull
requests; every method that reads or writes refs waits for it first. Pull requests are the
hosts' business (`gitops.hosts`); what the commits say is `gitops.pr_body`'s.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, TypeVar, cast
from urllib.parse import unquote, urlsplit, urlunsplit

import git

from gitops_rollout.errors import GitWriteError
from gitops_rollout.gitops.changeset import ChangeSet
from gitops_rollout.gitops.objects import ObjectReader, PackBuffer
from gitops_rollout.gitops.treemerge import Change, apply, trees_along
from gitops_rollout.tree import GitTree, blob_id

log = logging.getLogger(__name__)

_T = TypeVar("_T")

BRANCH_PREFIX = "gitops-rollout/"
"""Every bot branch starts with this; nothing else on the remote is pushed by the bot."""

_LOCAL = "refs/gitops-rollout/"
"""Cache-only refs: fast-import's `_SCRATCH`, no other (what the bot pushed is `_PUSHED`)."""

_PUSHED = "gitops-rollout-pushed"
"""Inside the cache clone: JSON ``{branch: [commit, ...]}``, the commits of each bot branch that
the remote may hold from us. Before a push each commit about to go is added beside the
branch's previous one (the push may fail and the remote keep that); afterwards the branch is
settled to what the remote has from us. A head not listed for a listed branch is someone
else's (`Workspace.human_edits`). One file replaced whole, twice a push: a ref per branch
costs git about 1 ms to write. The file keeps no commit reachable, as refs did: the
remote-tracking refs reach what was pushed once written (`Workspace._track`), and the commits
are on the remote in any case; a record only compares shas."""

_OLD_PUSHED = _LOCAL + "pushed/"
"""Where caches of earlier versions recorded pushes, one ref per branch; moved into `_PUSHED`
(and deleted) on first use, with `_OLD_PENDING` (`Workspace._migrate_records`)."""

_OLD_PENDING = "gitops-rollout-pending"
"""Earlier versions' file of a push under way: {branch: sha} about to push, not yet recorded."""

_PUSH_VIEW = "gitops-rollout-push.git"
"""Inside the cache clone: the ref-less repository pushes go from (`Workspace._push_view`)."""

_SCRATCH = _LOCAL + "scratch"
"""The one ref fast-import builds on; commits are known by their marks (10,000 refs cost 1 s)."""

_LISTINGS = "gitops-rollout-listings"
"""Inside the cache clone: the file listings of the last few fetched commits (`GitTree`)."""

_MERGE_TIMES = "gitops-rollout-merge-times"
"""Inside the cache clone: `Workspace.merge_time`'s answers as of one origin/<base> commit."""

_MERGE_TIMES_FORMAT = 1

_MERGE_TIMES_KEPT = 200_000
"""Paths the merge-time file holds at most; the least recently asked are dropped first."""

_DIRECT_MAX = 200
"""Commits a pass builds in Python at most (`Workspace._direct`): each writes its whole trees,
so ten thousand in a folder of ten thousand models would write gigabytes; fast-import's chain
stores them as deltas instead."""

_SHA1_HEX = 40
"""Length of a SHA-1 object id in hex (SHA-256 ones are 64)."""

_PUSH_CHUNK = 500
"""Leased (moved) branches per ``git push``: git's lease check costs remote refs x leases."""

_NEW_CHUNK = 2000
"""New branches per ``git push``: about 100 bytes of command line each."""

_RETRYABLE = re.compile(
    r"stale info|fetch first|non-fast-forward|cannot lock ref|incorrect old value|"
    r"failed to update ref|reference already exists"
)
"""Rejections meaning "the branch moved": fetch, rebuild, retry (GitHub/GitLab/Gitea wording)."""

_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def branch_name(*, cluster: str, namespace: str, model: str) -> str:
    """The bot's branch for one rollout; stable, so reruns find the same branch and PR."""
    for label, value in (("cluster", cluster), ("namespace", namespace), ("model", model)):
        if not _SEGMENT.match(value) or value.endswith((".lock", ".")) or ".." in value:
            raise ValueError(f"{label} {value!r} cannot be part of a branch name")
    return f"{BRANCH_PREFIX}{cluster}/{namespace}/{model}"


def origin_url(checkout: Path) -> str | None:
    """The URL of a local repository's ``origin`` remote, or None when it has none.

    A relative path (``git remote add origin ../gitops.git``) is made absolute against the
    checkout, so the answer works from any directory.
    """
    try:
        code, out, _ = git.Git().execute(
            ["git", "-C", str(checkout), "config", "--get", "remote.origin.url"],
            with_extended_output=True,
            with_exceptions=False,
        )
    except git.GitCommandNotFound as err:
        raise GitWriteError("the git executable was not found on PATH") from err
    url = out.strip() if code == 0 else ""
    if not url:
        return None
    if "://" not in url and ":" not in url.split("/", 1)[0] and not Path(url).is_absolute():
        local = (checkout / url).resolve()
        if local.exists():
            return str(local)
    return url


def _check_branch(name: str) -> None:
    parts = name.split("/")
    if not name.startswith(BRANCH_PREFIX) or not all(
        _SEGMENT.match(p) and not p.endswith((".lock", ".")) and ".." not in p for p in parts
    ):
        raise ValueError(f"{name!r} is not a bot branch name (see branch_name())")


@dataclass(frozen=True)
class Identity:
    """Who the bot commits as. Unique to the bot: any other author on its branch is a human."""

    name: str = "gitops-rollout"
    email: str = "gitops-rollout@noreply.invalid"

    def signature(self, when: datetime) -> str:
        """``Name <email> <epoch> <+hhmm>``, the raw form fast-import and commit objects use."""
        return f"{self.name} <{self.email}> {git_date(when)}"

    def env(self, when: datetime) -> dict[str, str]:
        """Environment for plumbing that reads identity and dates from it (commit-tree)."""
        date = git_date(when)
        return {
            "GIT_AUTHOR_NAME": self.name,
            "GIT_AUTHOR_EMAIL": self.email,
            "GIT_AUTHOR_DATE": date,
            "GIT_COMMITTER_NAME": self.name,
            "GIT_COMMITTER_EMAIL": self.email,
            "GIT_COMMITTER_DATE": date,
        }


def git_date(when: datetime) -> str:
    """``<epoch> <+hhmm>``; a naive time is taken as UTC (the demo's simulated clock)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    offset = when.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{int(when.timestamp())} {sign}{hours:02d}{mins:02d}"


@dataclass(frozen=True)
class CommitMessage:
    """A structured commit message: subject, body, trailers (greppable with ``git log``)."""

    subject: str
    body: str = ""
    trailers: tuple[tuple[str, str], ...] = ()

    def render(self) -> str:
        subject = " ".join(self.subject.split())
        parts = [subject]
        if self.body.strip():
            parts.append(self.body.strip())
        if self.trailers:
            parts.append("\n".join(f"{k}: {' '.join(v.split())}" for k, v in self.trailers))
        return "\n\n".join(parts) + "\n"


@dataclass(frozen=True)
class CommitRequest:
    """One bot branch to (re)build: the change set on top of the base branch."""

    branch: str
    changes: ChangeSet
    message: CommitMessage

    def __post_init__(self) -> None:
        _check_branch(self.branch)


@dataclass(frozen=True)
class BuiltCommit:
    """A commit built in the cache, not yet pushed."""

    request: CommitRequest
    sha: str
    parent: str
    tree: str
    parent_tree: str

    @property
    def branch(self) -> str:
        return self.request.branch

    @property
    def empty(self) -> bool:
        """True when it changes nothing against its parent: never pushed."""
        return self.tree == self.parent_tree


@dataclass(frozen=True)
class Prepared:
    """A pass's commits built, not yet pushed (`Workspace.prepare`)."""

    branches: tuple[str, ...]
    """Every request's branch, in order."""
    settled: tuple[PushResult, ...]
    """The results of requests that need no push."""
    built: tuple[BuiltCommit, ...]
    """The commits of the others."""

    def __add__(self, other: Prepared) -> Prepared:
        return Prepared(
            self.branches + other.branches,
            self.settled + other.settled,
            self.built + other.built,
        )


class PushOutcome(StrEnum):
    PUSHED = "pushed"
    UNCHANGED = "unchanged"
    """The remote branch already holds exactly this change on an ancestor of the base."""
    EMPTY = "empty"
    """Nothing differs from the base branch: no commit, no push."""
    HUMAN_EDITED = "human-edited"
    """Someone else committed to the branch; left alone (see `HumanEdit`)."""
    REJECTED = "rejected"
    """The remote refused (hook, protection), or the branch kept moving past the retries."""


@dataclass(frozen=True)
class PushResult:
    branch: str
    outcome: PushOutcome
    sha: str | None
    """What the remote branch points at afterwards (None when it does not exist)."""
    detail: str = ""


@dataclass(frozen=True)
class HumanEdit:
    """A bot branch with commits the bot did not make."""

    branch: str
    head: str
    commits: tuple[str, ...]
    """Commits beyond the base that were not authored and committed by the bot, newest first."""
    authors: tuple[str, ...]

    def describe(self) -> str:
        who = ", ".join(self.authors) or "someone else"
        if not self.commits:
            return (
                f"{self.branch} now points at {self.head[:12]}, not at what gitops-rollout last "
                "pushed; it is left alone"
            )
        return (
            f"{self.branch} has {len(self.commits)} commit(s) by {who} "
            f"(head {self.head[:12]}); gitops-rollout will not overwrite it"
        )


@dataclass(frozen=True)
class MergedCommit:
    """The first-parent commit of the base branch that brought a change in."""

    sha: str
    time: datetime
    """Its committer time: when the change was merged."""
    commit: str
    """The commit carrying the trailer (the bot's commit, or `sha` itself)."""


@dataclass
class _Commit:
    sha: str
    tree: str
    parents: tuple[str, ...]
    author_email: str
    committer_email: str
    committer_time: int
    message: bytes


_Change = tuple[str, int]
"""The newest first-parent commit touching a path: (sha, committer time in Unix seconds)."""


@dataclass
class _MergeTimes:
    """`Workspace.merge_time`'s answers that hold for origin/<base> at `commit`."""

    commit: str
    changes: dict[str, _Change | None]
    """{path: its newest change, or None when it never existed}, least recently asked first."""


@dataclass(frozen=True)
class _LogHeader:
    """A commit's line in `Workspace._first_parent_changes`'s log (``%H %ct %P``)."""

    sha: str
    time: int
    parent: str | None
    """The first parent; None for a root commit."""

    @classmethod
    def parse(cls, token: bytes) -> _LogHeader:
        sha, time, *parents = token.lstrip(b"\x1e").decode().split()
        return cls(sha, int(time), parents[0] if parents else None)


class SigningFormat(StrEnum):
    """git's ``gpg.format``: the kind of key that signs the bot's commits."""

    OPENPGP = "openpgp"
    SSH = "ssh"


@dataclass(frozen=True)
class Signing:
    """How the bot signs its commits, so that Flux ``verify`` or Argo CD's signature keys can
    trust them. git signs through gpg or ``ssh-keygen -Y sign``; nothing here sees the key."""

    key: str
    """git's ``-S<key>``: an OpenPGP key id or fingerprint; for ssh, the private key's file
    (or ``key::<public key>`` with the private key in ssh-agent)."""
    format: SigningFormat = SigningFormat.OPENPGP


@dataclass
class _Options:
    base: str
    identity: Identity
    env: dict[str, str] = field(default_factory=dict)
    credentials: Callable[[], Mapping[str, str]] | None = None
    """Environment that authenticates network calls (fetch, push), asked for anew each time."""
    signing: Signing | None = None
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    max_attempts: int = 5
    backoff: float = 1.0
    backoff_cap: float = 30.0
    timeout: float = 300.0


class Workspace:
    """A bare clone of one remote in a cache directory, locked for the process using it."""

    def __init__(self, git_dir: Path, remote: str, options: _Options, lock: IO[bytes]) -> None:
        self.git_dir = git_dir
        self.remote = remote
        """The remote's URL with any credentials removed (safe to log)."""
        self._o = options
        self._lock = lock
        self._git = git.Git()
        self._base_sha: str | None = None
        self._heads: dict[str, str] | None = None
        """`remote_heads` as last read, with our pushes since; dropped by a fetch."""
        self._tree: GitTree | None = None
        self._fetching: Future[str] | None = None
        self._tracking: Future[None] | None = None
        """The remote-tracking refs of the last push, written in the background (`_track`)."""
        self._ours: dict[str, list[str]] | None = None
        """`_PUSHED` as last read or written."""
        self._edits: dict[str, HumanEdit | None] = {}
        """`human_edits`' answer per branch, until a fetch or a push moves what it reads."""

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        remote: str,
        *,
        cache_dir: Path,
        base: str = "main",
        identity: Identity | None = None,
        env: Mapping[str, str] | None = None,
        credentials: Callable[[], Mapping[str, str]] | None = None,
        signing: Signing | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        max_attempts: int = 5,
        timeout: float = 300.0,
    ) -> Workspace:
        """Open (creating if needed) the cached clone of `remote`, a URL or a local path.

        Credentials in an HTTPS URL are moved into this process's environment for git
        (``http.extraHeader``), so they are never written to the cache's config, to argv or
        to logs. `env` adds variables for every git call (e.g. ``GIT_ASKPASS``);
        `credentials` adds variables to fetches and pushes only, asked for before each (a
        host's token, which may rotate: `gitops.hosts.git_credentials`). With `signing`, every
        commit is signed (`Signing`). `sleep` and `rng` are injectable so tests do not wait.
        Raises GitWriteError when another process holds the cache.
        """
        if "://" not in remote and Path(remote).exists():
            remote = str(Path(remote).resolve())
        clean, auth = _split_credentials(remote)
        options = _Options(
            base=base,
            identity=identity or Identity(),
            env={**auth, **(env or {})},
            credentials=credentials,
            signing=signing,
            sleep=sleep,
            rng=rng or random.Random(),  # noqa: S311 (backoff jitter, not secrets)
            max_attempts=max(1, max_attempts),
            timeout=timeout,
        )
        cache_dir.mkdir(parents=True, exist_ok=True)
        tail = re.sub(r"[^A-Za-z0-9_.-]", "-", clean.rstrip("/").rsplit("/", 1)[-1])[:40]
        slug = f"{tail.removesuffix('.git')}-{hashlib.sha256(clean.encode()).hexdigest()[:12]}"
        git_dir = cache_dir / f"{slug}.git"
        lock = (cache_dir / f"{slug}.lock").open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise GitWriteError(
                f"another gitops-rollout process is using the clone in {git_dir}; "
                "run one reconciler per repository, or give each its own --cache-dir"
            ) from None
        ws = cls(git_dir, clean, options, lock)
        try:
            if not (git_dir / "HEAD").exists():
                ws._create()
            ws._configure(git_dir)
        except BaseException:
            ws.close()
            raise
        return ws

    def _create(self) -> None:
        # Built under a temporary name and renamed, so a crash never leaves half a clone.
        tmp = Path(tempfile.mkdtemp(prefix=".init-", dir=self.git_dir.parent))
        self._git.execute(["git", "init", "--bare", "--quiet", str(tmp)])
        self._configure(tmp)
        tmp.rename(self.git_dir)

    def _configure(self, git_dir: Path) -> None:
        """Point origin at the remote and fetch only the base and the bot's branches.

        Checked on every open (one git process) and rewritten when it differs, so a changed
        base branch or URL takes effect.
        """
        refspecs = [
            f"+refs/heads/{self._o.base}:refs/remotes/origin/{self._o.base}",
            f"+refs/heads/{BRANCH_PREFIX}*:refs/remotes/origin/{BRANCH_PREFIX}*",
        ]
        code, out, _ = self._run_status(
            "config", "--get-regexp", r"^remote\.origin\.(url|fetch|tagopt)$", git_dir=git_dir
        )
        found: dict[str, list[str]] = {}
        for line in out.decode(errors="replace").splitlines() if code == 0 else []:
            key, _, value = line.partition(" ")
            found.setdefault(key, []).append(value)
        wanted = {
            "remote.origin.url": [self.remote],
            "remote.origin.fetch": refspecs,
            "remote.origin.tagopt": ["--no-tags"],
        }
        if found == wanted:
            return
        self._run("config", "remote.origin.url", self.remote, git_dir=git_dir)
        self._run_status("config", "--unset-all", "remote.origin.fetch", git_dir=git_dir)
        for refspec in refspecs:
            self._run("config", "--add", "remote.origin.fetch", refspec, git_dir=git_dir)
        self._run("config", "remote.origin.tagOpt", "--no-tags", git_dir=git_dir)

    def close(self) -> None:
        """Wait for a fetch begun in the background and for the remote-tracking refs of the
        last push, stop the tree reader and release the cache lock (also released if the
        process dies). A failure to write those refs is logged, not raised: the pushes went
        through, and the next fetch writes the refs (a pass's result stands)."""
        pending, self._fetching = self._fetching, None
        if pending is not None:
            with contextlib.suppress(Exception):
                pending.result()
        try:
            self._wait_refs()
        except GitWriteError as err:
            log.warning("%s", err)
        if self._tree is not None:
            self._tree.close()
            self._tree = None
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return self._o.base

    @property
    def identity(self) -> Identity:
        return self._o.identity

    def start_fetch(self) -> None:
        """Begin `fetch` in the background, for a caller with other work to do first (a
        one-shot pass imports its planning stages meanwhile): git fetches in its own process
        while this one goes on, and the next `fetch` waits for it rather than fetching again."""
        if self._fetching is not None:
            return
        self._wait_refs()
        self._fetching = _in_background("gitops-rollout-fetch", self._fetch)

    def fetch(self) -> str:
        """Fetch the base branch and the bot's branches (pruning deleted ones); the base sha.
        A fetch begun with `start_fetch` is waited for instead."""
        self._wait_refs()
        pending, self._fetching = self._fetching, None
        if pending is not None:
            return pending.result()
        return self._fetch()

    def _fetch(self) -> str:
        self._heads = None
        self._edits = {}
        code, _, err = self._run_status("fetch", "--prune", "--quiet", "origin", network=True)
        sha = self._rev(f"refs/remotes/origin/{self._o.base}") if code == 0 else None
        if code != 0 and "couldn't find remote ref" not in err:
            raise GitWriteError(f"git fetch from {self.remote} failed: {_redact(err)}")
        if sha is None:
            raise GitWriteError(
                f"{self.remote} has no branch {self._o.base!r}; create it, or pass the base "
                "branch the GitOps repository uses"
            )
        self._base_sha = sha
        return sha

    @property
    def base_sha(self) -> str:
        """origin/<base> as of the last `fetch`."""
        if self._base_sha is None:
            return self.fetch()
        return self._base_sha

    def tree(self) -> GitTree:
        """The files of origin/<base> as last fetched: one listing (and one reader) per
        commit, however many times a pass asks."""
        sha = self.base_sha
        if self._tree is None or self._tree.rev != sha:
            self._tree = GitTree(self.git_dir, sha, listings=self.git_dir / _LISTINGS)
        return self._tree

    def changed_since(self, older: str) -> frozenset[str] | None:
        """The files origin/<base> changed since its earlier commit `older`; None when `older`
        is not an earlier commit of it (unknown here, or the branch was rewritten)."""
        changes = self.changes_since(older)
        return None if changes is None else frozenset(path for path, _, _ in changes)

    def changes_since(self, older: str) -> list[tuple[str, str | None, str | None]] | None:
        """(path, blob id in `older`, blob id now; None where absent) of every file
        origin/<base> changed since its earlier commit `older`; None when `older` is not an
        earlier commit of it (unknown here, or the branch was rewritten)."""
        self._wait_refs()
        code, _, _ = self._run_status("merge-base", "--is-ancestor", older, self.base_sha)
        if code != 0:
            return None
        out = self._run("diff", "--raw", "--no-abbrev", "--no-renames", "-z", older, self.base_sha)
        fields = out.split(b"\0")
        changes = []
        for meta, path in zip(fields[::2], fields[1::2], strict=False):
            _, _, old, new, _ = meta.decode().split(" ")
            changes.append(
                (
                    path.decode(errors="surrogateescape"),
                    None if set(old) == {"0"} else old,
                    None if set(new) == {"0"} else new,
                )
            )
        return changes

    def remote_heads(self) -> dict[str, str]:
        """{bot branch: sha} on the remote as of the last fetch (or our last push)."""
        self._wait_refs()
        if self._heads is None:
            # Kept until a fetch (a push updates it): a pass asks four times.
            prefix = f"refs/remotes/origin/{BRANCH_PREFIX}"
            out = self._run("for-each-ref", "--format=%(objectname) %(refname)", prefix)
            self._heads = {}
            for line in out.decode().splitlines():
                sha, _, ref = line.partition(" ")
                self._heads[ref.removeprefix("refs/remotes/origin/")] = sha
        return dict(self._heads)

    # -- committing --------------------------------------------------------------------------

    def commit(self, requests: Sequence[CommitRequest], *, now: datetime) -> list[BuiltCommit]:
        """Build one commit per request on top of origin/<base>, without a work tree.

        Up to `_DIRECT_MAX` commits are built here (`_direct`): each request's files applied
        to the base's trees, and every new object written as one pack. More are built in two
        ``git fast-import`` runs, whatever their number. The first chains the requests' trees
        on one scratch branch, each reverting the previous request's paths to the base's
        entries before applying its own: consecutive trees then differ by one change, so
        fast-import stores them as small deltas (built each from the base instead, 10,000
        commits in a 10,000-model folder wrote 3 GB of whole trees). The second gives each
        tree its real parent (the base) and message. An empty change set gives an "empty"
        result (its parent) and writes nothing. Author and committer are the bot identity,
        dated `now`. With a signing key the commits are made by one signed ``git
        commit-tree`` each.
        """
        self._wait_refs()
        base = self.base_sha
        branches = [r.branch for r in requests]
        if len(set(branches)) != len(branches):
            raise ValueError("one commit request per branch and pass")
        todo = [(i, r) for i, r in enumerate(requests) if r.changes]
        base_tree = self._resolve([f"{base}^{{tree}}"])[f"{base}^{{tree}}"]
        assert base_tree is not None
        shas: dict[int, str] = {}
        trees: dict[int, str] = {}
        signature = self._o.identity.signature(now).encode()
        direct = (
            self._direct(base, base_tree, [r for _, r in todo], signature)
            if todo and self._o.signing is None and len(todo) <= _DIRECT_MAX
            else None
        )
        if direct is not None:
            for (i, _), (sha, tree) in zip(todo, direct, strict=True):
                shas[i], trees[i] = sha, tree
        elif todo:
            entries = self._entries(base, {c.path for _, r in todo for c in r.changes})
            with tempfile.TemporaryDirectory(prefix="gitops-rollout-") as tmp:
                chain = self._fast_import(
                    Path(tmp),
                    _chain_stream([r for _, r in todo], base=base, entries=entries),
                )
                tree_ids = self._resolve([f"{sha}^{{tree}}" for sha in chain])
                tree_list = [tree_ids[f"{sha}^{{tree}}"] or "" for sha in chain]
                if self._o.signing is None:
                    final = self._fast_import(
                        Path(tmp),
                        _commit_stream(
                            [r for _, r in todo], tree_list, base=base, signature=signature
                        ),
                    )
                else:
                    final = self._signed_commits(
                        [r for _, r in todo], tree_list, base=base, now=now, signing=self._o.signing
                    )
            for (i, _), sha, tree in zip(todo, final, tree_list, strict=True):
                shas[i], trees[i] = sha, tree
        built = [
            BuiltCommit(r, shas.get(i, base), base, trees.get(i, base_tree), base_tree)
            for i, r in enumerate(requests)
        ]
        log.debug("built %d commits on %s", len(todo), base[:12])
        return built

    def _direct(
        self, base: str, base_tree: str, requests: Sequence[CommitRequest], signature: bytes
    ) -> list[tuple[str, str]] | None:
        """(commit, tree) of each request on `base`, its files applied to the base's tree here
        (`treemerge.apply`) and every new object written as one pack: no git process but
        one reader. None where that cannot be done (SHA-256 object names, a file where a
        change needs a folder): fast-import builds them then."""
        if len(base) != _SHA1_HEX:
            return None
        store = PackBuffer()
        reader = ObjectReader(self.git_dir)
        trees: dict[str, bytes] = {}

        def read(tree: str) -> bytes:
            if tree not in trees:
                trees[tree] = reader.read(tree)
            return trees[tree]

        def write(body: bytes) -> str:
            tree = store.add(b"tree", body)
            trees[tree] = body
            return tree

        built = []
        try:
            paths = {c.path for request in requests for c in request.changes}
            trees.update(trees_along(base_tree, paths, read_many=reader.read_many))
            for request in requests:
                changes = [
                    Change(c.path, "", "")
                    if c.new is None
                    else Change(c.path, "100644", store.add(b"blob", c.new))
                    for c in request.changes
                ]
                tree = apply(base_tree, changes, read=read, write=write)
                commit = store.add(b"commit", _commit_body(request, tree, base, signature))
                built.append((commit, tree))
        except ValueError as err:
            log.debug("commits left to fast-import: %s", err)
            return None
        finally:
            reader.close()
        store.write(self.git_dir / "objects")
        return built

    def _signed_commits(
        self,
        requests: Sequence[CommitRequest],
        trees: Sequence[str],
        *,
        base: str,
        now: datetime,
        signing: Signing,
    ) -> list[str]:
        """Each tree as a signed commit on `base`: the same commit `_commit_stream` describes,
        plus a ``gpgsig`` header made by gpg or ssh-keygen (one process per commit)."""
        env = {**self._o.env, **self._o.identity.env(now)}
        shas = []
        for request, tree in zip(requests, trees, strict=True):
            cmd = ["git", "--git-dir", str(self.git_dir), "-c", f"gpg.format={signing.format}"]
            cmd += ["commit-tree", tree, "-p", base, f"-S{signing.key}", "-F", "-"]
            with tempfile.TemporaryFile() as message:
                message.write(request.message.render().encode())
                message.seek(0)
                code, out, err = self._exec(cmd, message, env)
            if code != 0:
                raise GitWriteError(
                    f"cannot sign the commit for {request.branch} with the {signing.format} key "
                    f"{signing.key!r}: {_redact(err)}; check GITOPS_ROLLOUT_SIGNING_KEY and "
                    "GITOPS_ROLLOUT_SIGNING_FORMAT"
                )
            shas.append(out.decode().strip())
        return shas

    def _fast_import(self, tmp: Path, stream: Iterable[bytes]) -> list[str]:
        """Run one fast-import over `stream`; the commit ids of marks :1..:n, in order."""
        path = tmp / "stream"
        marks = tmp / "marks"
        with path.open("wb") as out:
            out.writelines(stream)
            out.write(b"done\n")
        with path.open("rb") as stdin:
            # Uncompressed objects: 40% faster at 10,000 commits, for more disk until git's
            # automatic gc repacks the cache.
            self._run(
                "-c",
                "core.compression=0",
                "-c",
                "pack.compression=0",
                "fast-import",
                "--quiet",
                "--done",
                "--force",
                "--date-format=raw",
                f"--export-marks={marks}",
                stdin=stdin,
            )
        by_mark = {}
        for line in marks.read_text().splitlines():
            mark, _, sha = line.partition(" ")
            by_mark[int(mark[1:])] = sha
        return [by_mark[n] for n in sorted(by_mark)]

    def _entries(self, rev: str, paths: set[str]) -> dict[str, tuple[str, str]]:
        """{path: (mode, object id)} in `rev` for those of `paths` that exist there."""
        out = self._run("ls-tree", "-r", "-z", "--full-tree", rev)
        found = {}
        for record in out.split(b"\0"):
            meta, _, raw = record.partition(b"\t")
            path = raw.decode(errors="surrogateescape")
            if path in paths:
                mode, _, oid = meta.decode().split(" ")
                found[path] = (mode, oid)
        return found

    # -- human edits -------------------------------------------------------------------------

    def human_edits(self, branches: Iterable[str] | None = None) -> dict[str, HumanEdit]:
        """Bot branches (all, or `branches`) on the remote that someone else committed to.

        A branch counts as edited when a commit beyond origin/<base> is not authored and
        committed by the bot identity, or when its head is not a commit this cache pushed
        (or was about to push) while we have a record for it (`_PUSHED`). One git call for
        all branches, and none for a branch asked about since the last fetch or push.
        """
        self._wait_refs()
        heads = self.remote_heads()
        asked = sorted(heads if branches is None else set(branches) & heads.keys())
        found = self._edited([b for b in asked if b not in self._edits], heads)
        self._edits.update(found)  # after `_edited`: its first read of `_PUSHED` may reset it
        return {b: edit for b in asked if (edit := self._edits[b]) is not None}

    def _edited(self, wanted: list[str], heads: dict[str, str]) -> dict[str, HumanEdit | None]:
        """`human_edits` for the branches `wanted`, each one's answer (None: not edited)."""
        if not wanted:
            return {}
        stdin = f"^refs/remotes/origin/{self._o.base}\n" + "".join(
            f"refs/remotes/origin/{b}\n" for b in wanted
        )
        out = self._run(
            "log", "--stdin", "--format=%H%x1f%P%x1f%ae%x1f%ce%x1e", stdin=stdin.encode()
        )
        graph: dict[str, tuple[list[str], str, str]] = {}
        for record in out.decode(errors="replace").split("\x1e"):
            record = record.strip()
            if not record:
                continue
            sha, parents, author, committer = record.split("\x1f")
            graph[sha] = (parents.split(), author.lower(), committer.lower())
        records = self._pushed()
        bot = self._o.identity.email.lower()
        found: dict[str, HumanEdit | None] = dict.fromkeys(wanted)
        for branch in wanted:
            head = heads[branch]
            mine = _reachable(graph, head)
            if not mine:
                continue  # merged (or never diverged): nothing of anyone's to lose
            foreign = [c for c in mine if graph[c][1] != bot or graph[c][2] != bot]
            known = records.get(branch, [])
            if foreign or (known and head not in known):
                authors = sorted({graph[c][1] for c in foreign} | {graph[c][2] for c in foreign})
                found[branch] = HumanEdit(
                    branch, head, tuple(foreign), tuple(a for a in authors if a != bot)
                )
        return found

    def _pushed(self) -> dict[str, list[str]]:
        """{branch: commits} the remote may hold from us (`_PUSHED`): read once, and moved
        there from an earlier version's refs on first use."""
        if self._ours is None:
            path = self.git_dir / _PUSHED
            try:
                text = path.read_text()
            except FileNotFoundError:
                return self._migrate_records()
            except OSError as err:
                raise _unreadable(path, f"cannot be read ({err})") from err
            self._ours = _parse_pushed(path, text)
        return self._ours

    def _migrate_records(self) -> dict[str, list[str]]:
        """Fold an earlier version's records (a ref per pushed branch under `_OLD_PUSHED`,
        and `_OLD_PENDING`) into `_PUSHED`, then delete them: written even when there were
        none, so the next process need not look again. Without them an upgrade would take
        the heads the bot pushed for a human's."""
        out = self._run("for-each-ref", "--format=%(objectname) %(refname)", _OLD_PUSHED)
        record: dict[str, list[str]] = {}
        refs = []
        for line in out.decode().splitlines():
            sha, _, ref = line.partition(" ")
            record[ref.removeprefix(_OLD_PUSHED)] = [sha]
            refs.append(ref)
        pending = self.git_dir / _OLD_PENDING
        for branch, sha in _read_old_pending(pending).items():
            record[branch] = _with(record.get(branch, []), sha)
        self._write_pushed(record)
        self._update_refs([(ref, None) for ref in refs])
        pending.unlink(missing_ok=True)
        if record:
            log.info("moved the records of %d pushed branch(es) into %s", len(record), _PUSHED)
        return record

    def _write_pushed(self, record: dict[str, list[str]]) -> None:
        """Replace `_PUSHED` with `record` (a temporary file renamed over it: whole or not)."""
        path = self.git_dir / _PUSHED
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(record, sort_keys=True, separators=(",", ":")))
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise GitWriteError(f"could not record the commits pushed in {path}: {err}") from err
        self._ours = record
        self._edits = {}

    # -- pushing -----------------------------------------------------------------------------

    def publish(self, requests: Sequence[CommitRequest], *, now: datetime) -> list[PushResult]:
        """Commit and push a pass's change sets: `prepare`, then `send`."""
        return self.send(self.prepare(requests, now=now), now=now)

    def prepare(self, requests: Sequence[CommitRequest], *, now: datetime) -> Prepared:
        """The commits of a pass's change sets, built (`commit`) but for those that need none:
        empty, already on the remote, edited by a human (their results are known already).
        Preparations of different branches join with ``+`` into one `send`."""
        self._wait_refs()
        settled, todo = self._settle(requests)
        built = self.commit(todo, now=now)
        return Prepared(tuple(r.branch for r in requests), tuple(settled), tuple(built))

    def send(self, prepared: Prepared, *, now: datetime) -> list[PushResult]:
        """Force-push what `prepared` built to the bot branches, all in one ``git push``; a
        result per request, in their order.

        Each ref is leased on the sha we last fetched (absent: must not exist). A branch that
        moved is fetched, checked for human commits, rebuilt on the new base (dated `now`) and
        retried, up to `max_attempts` times with jittered backoff.
        """
        self._wait_refs()
        results = {r.branch: r for r in prepared.settled}
        results.update((r.branch, r) for r in self._push_loop(prepared.built, now))
        return [results[branch] for branch in prepared.branches]

    def _push_loop(self, built: Sequence[BuiltCommit], now: datetime) -> list[PushResult]:
        """Push `built` (`_push_attempts`), leaving the remote-tracking refs of what went to
        a thread (`_track`)."""
        pushed: dict[str, str] = {}
        results = self._push_attempts(built, now, pushed)
        self._track(pushed)
        return results

    def _push_attempts(
        self, built: Sequence[BuiltCommit], now: datetime, pushed: dict[str, str]
    ) -> list[PushResult]:
        """Push `built`, fetching, rebuilding and retrying what moved meanwhile; `pushed`
        learns {branch: sha} of what was pushed since the last fetch."""
        results: dict[str, PushResult] = {}
        pending = list(built)
        for attempt in range(self._o.max_attempts):
            if attempt:
                self._sleep(attempt)
                self.fetch()
                pushed.clear()  # the fetch wrote what the remote holds
                settled, todo = self._settle([b.request for b in pending])
                results.update((r.branch, r) for r in settled)
                pending = self.commit(todo, now=now)
            ready = []
            for b in pending:
                if b.empty:
                    results[b.branch] = PushResult(b.branch, PushOutcome.EMPTY, None)
                else:
                    ready.append(b)
            if not ready:
                return list(results.values())
            retry = []
            for b, (ok, detail) in zip(ready, self._push_refs(ready), strict=True):
                outcome = PushOutcome.PUSHED if ok else PushOutcome.REJECTED
                results[b.branch] = PushResult(b.branch, outcome, b.sha if ok else None, detail)
                if ok:
                    pushed[b.branch] = b.sha
                elif _RETRYABLE.search(detail):
                    retry.append(b)
            if not retry:
                return list(results.values())
            log.info("%d bot branch(es) moved during the push; fetching and retrying", len(retry))
            pending = retry
        for b in pending:
            detail = results[b.branch].detail
            results[b.branch] = PushResult(
                b.branch,
                PushOutcome.REJECTED,
                None,
                f"gave up after {self._o.max_attempts} attempts: {detail}",
            )
        return list(results.values())

    def _sleep(self, attempt: int) -> None:
        delay = min(self._o.backoff_cap, self._o.backoff * 2 ** (attempt - 1))
        self._o.sleep(delay * (0.5 + self._o.rng.random()))

    def _settle(
        self, requests: Sequence[CommitRequest]
    ) -> tuple[list[PushResult], list[CommitRequest]]:
        """Results for requests that need no push, and the requests that do."""
        heads = self.remote_heads()
        branches = [r.branch for r in requests]
        if len(set(branches)) != len(branches):
            raise ValueError("one commit request per branch and pass")
        human = self.human_edits(branches)
        settled: list[PushResult] = []
        todo: list[CommitRequest] = []
        for r in requests:
            if r.branch in human:
                edit = human[r.branch]
                settled.append(
                    PushResult(r.branch, PushOutcome.HUMAN_EDITED, edit.head, edit.describe())
                )
            elif not r.changes:
                settled.append(PushResult(r.branch, PushOutcome.EMPTY, heads.get(r.branch)))
            else:
                todo.append(r)
        unchanged = self._already_pushed([r for r in todo if r.branch in heads], heads)
        for r in todo:
            if r.branch in unchanged:
                settled.append(PushResult(r.branch, PushOutcome.UNCHANGED, heads[r.branch]))
        return settled, [r for r in todo if r.branch not in unchanged]

    def _already_pushed(self, requests: list[CommitRequest], heads: dict[str, str]) -> set[str]:
        """Branches whose remote head is our commit for this exact change on an older base.

        Rebuilding those would only move their parent: a force-push that changes nothing a
        reviewer sees, re-triggers CI, and (IU #895) loops. They are kept when the head is one
        bot commit with the same message, changing exactly these paths to the desired
        content, on a parent that is an ancestor of the base and agrees with it on those paths
        (so merging it gives the same result as a rebuilt commit). Reads no file contents.
        """
        if not requests:
            return set()
        base = self.base_sha
        commits = self._read_commits([heads[r.branch] for r in requests])
        candidates = []
        for r in requests:
            c = commits.get(heads[r.branch])
            if c is None or len(c.parents) != 1 or c.message != r.message.render().encode():
                continue
            candidates.append((r, c))
        if not candidates:
            return set()
        stdin = f"^{base}\n" + "".join(f"{c.sha}\n{c.parents[0]}\n" for _, c in candidates)
        outside = set(self._run("rev-list", "--stdin", stdin=stdin.encode()).decode().split())
        candidates = [
            (r, c) for r, c in candidates if c.sha in outside and c.parents[0] not in outside
        ]
        if not candidates:
            return set()
        # One raw diff of each head against its parent gives both sides' blob ids; the base's
        # come from one ls-tree (the change set may have been built on an older base).
        diffs = self._diffs([c.sha for _, c in candidates])
        on_base = self.tree()
        same = set()
        for r, c in candidates:
            want = {}
            for change in r.changes:
                try:
                    current: str | None = on_base.blob_id(change.path)
                except FileNotFoundError:
                    current = None
                new = blob_id(change.new) if change.new is not None else None
                want[change.path] = (current, new)
            if diffs.get(c.sha) == want:
                same.add(r.branch)
        return same

    def _track(self, pushed: Mapping[str, str]) -> None:
        """Point ``refs/remotes/origin/<branch>`` (what the next lease expects) at what was
        pushed, in one ``update-ref`` on a thread of its own: the caller opens pull requests
        meanwhile (a loose ref costs git about 1 ms to write). `remote_heads` already answers
        with them; every method that reads or writes refs waits for the thread first
        (`_wait_refs`)."""
        if not pushed:
            return
        updates = [(f"refs/remotes/origin/{branch}", sha) for branch, sha in pushed.items()]
        self._tracking = _in_background("gitops-rollout-refs", lambda: self._update_refs(updates))

    def _wait_refs(self) -> None:
        """Wait for the remote-tracking refs `_track` is writing; raise its failure, once."""
        pending, self._tracking = self._tracking, None
        if pending is None:
            return
        try:
            pending.result()
        except Exception as err:
            raise GitWriteError(
                f"the remote-tracking refs of the last push were not written ({err}); the "
                "pushes went through, and the next fetch rewrites these refs"
            ) from err

    def _push_refs(self, built: Sequence[BuiltCommit]) -> list[tuple[bool, str]]:
        """Push `built` (chunked) and return (accepted, git's words) per commit."""
        heads = self.remote_heads()
        before = self._pushed()
        # Recorded as ours before git pushes: should the process die once the push is under
        # way, the next pass does not take these commits for a human's. The previous commit
        # stays listed: the push may fail and the remote keep it.
        self._write_pushed(
            {**before, **{b.branch: _with(before.get(b.branch, []), b.sha) for b in built}}
        )
        # Each commit goes by its sha to its full branch name. A branch new to the remote is
        # not forced: if one appeared meanwhile the push is rejected, just as a lease on
        # "absent" would be. An existing branch is force-moved, leased on the sha we last
        # fetched. git compares every remote ref with every lease, so leases go in bounded
        # chunks; new branches only cost the command line.
        moves = [b for b in built if b.branch in heads]
        news = [b for b in built if b.branch not in heads]
        move_chunks = [moves[i : i + _PUSH_CHUNK] for i in range(0, len(moves), _PUSH_CHUNK)]
        new_chunks = [news[i : i + _NEW_CHUNK] for i in range(0, len(news), _NEW_CHUNK)]
        status: dict[str, tuple[bool, str]] = {}
        view = self._push_view()
        for n in range(max(len(move_chunks), len(new_chunks))):
            chunk = move_chunks[n] if n < len(move_chunks) else []
            batch = (new_chunks[n] if n < len(new_chunks) else []) + chunk
            args = ["push", "--porcelain", self.remote]
            args += [f"--force-with-lease=refs/heads/{b.branch}:{heads[b.branch]}" for b in chunk]
            args += [f"{b.sha}:refs/heads/{b.branch}" for b in batch]
            code, out, err = self._run_status(*args, network=True, git_dir=view)
            parsed = _parse_porcelain(out.decode(errors="replace"))
            for b in batch:
                ref = f"refs/heads/{b.branch}"
                if ref in parsed:
                    status[b.branch] = parsed[ref]
                elif code != 0:
                    raise GitWriteError(f"git push to {self.remote} failed: {_redact(err)}")
                else:
                    status[b.branch] = (False, "git push did not report this branch")
        # Settled to what the remote now has from us: the new commit, or the old one.
        settled = dict(self._pushed())
        done = [b for b in built if status[b.branch][0]]
        for b in built:
            if status[b.branch][0]:
                settled[b.branch] = [b.sha]
            elif b.branch in before:
                settled[b.branch] = before[b.branch]
            else:
                settled.pop(b.branch, None)
        self._write_pushed(settled)
        if self._heads is not None:  # the remote-tracking refs follow (`_track`)
            self._heads.update((b.branch, b.sha) for b in done)
        self._edits = {}
        log.info("pushed %d of %d bot branch(es) to %s", len(done), len(built), self.remote)
        return [status[b.branch] for b in built]

    def _push_view(self) -> Path:
        """A repository with no refs, borrowing the cache's objects, to push from (kept in
        the cache clone for the next push).

        git matches every explicit push refspec against every local ref with a handful of
        sprintf'd rules; with the cache's tens of thousands of refs a 500-branch push took 11 s.
        Here there is no local ref to match: every refspec names its commit by sha.
        """
        view = self.git_dir / _PUSH_VIEW
        alternates = view / "objects" / "info" / "alternates"
        borrowed = str((self.git_dir / "objects").resolve()) + "\n"
        try:
            if alternates.read_text() == borrowed:
                return view
        except OSError:
            pass
        shutil.rmtree(view, ignore_errors=True)
        self._git.execute(["git", "init", "--bare", "--quiet", str(view)])
        alternates.write_text(borrowed)
        return view

    # -- history -----------------------------------------------------------------------------

    def merge_time(self, paths: Iterable[str]) -> dict[str, datetime]:
        """When each path (a file or a folder) last changed on origin/<base>'s first parents.

        The committer time of the newest first-parent commit (merge, squash or direct commit)
        whose diff against its first parent touches the path: the moment a change took effect
        on the branch Argo CD/Flux sync. Paths that never existed are absent from the result.

        Answers are kept in the cache clone (`_MERGE_TIMES`) with the origin/<base> commit they
        hold for, so the next call (usually the next pass's process) reads only the first-parent
        commits made since: none when the branch has not moved. ``git log`` reads the whole
        history, stopping as soon as every path is found, only for paths not asked before, or
        when the kept commit is no longer on the branch's first parents (history rewritten).
        """
        wanted = set(paths)
        if not wanted:
            return {}
        self._wait_refs()
        # Only `fetch` moves origin/<base>, and it records where to: no git call when known.
        head = self._base_sha or self._rev(f"refs/remotes/origin/{self._o.base}")
        if head is None:
            return {}
        file = self.git_dir / _MERGE_TIMES
        kept = _read_merge_times(file)
        known = self._merge_times_at(head, kept)
        answers = {p: known[p] for p in wanted if p in known}
        new = wanted - answers.keys()
        if new:
            pending = set(new)
            found: dict[str, _Change] = {}
            self._first_parent_changes([head], pending, found)
            answers |= found
            answers |= dict.fromkeys(pending, None)  # never existed
        if kept is None or kept.commit != head or new:
            others = {p: c for p, c in known.items() if p not in answers}
            _write_merge_times(file, _MergeTimes(head, {**others, **answers}))
        return {p: datetime.fromtimestamp(c[1], UTC) for p, c in answers.items() if c is not None}

    def _merge_times_at(self, head: str, kept: _MergeTimes | None) -> dict[str, _Change | None]:
        """The kept answers brought forward to `head`, reading only the first-parent commits
        after the kept one; empty when nothing is kept or the kept commit is not on `head`'s
        first-parent chain (the branch was rewritten, or moved to a merge of it)."""
        if kept is None or not kept.changes:
            return {}
        if kept.commit == head:
            return kept.changes
        newer: dict[str, _Change] = {}
        last = self._first_parent_changes(
            [head, f"^{kept.commit}"], set(kept.changes), newer, until_found=False
        )
        if last != kept.commit:
            log.debug("merge times kept for %s do not hold for %s: reading all", kept.commit, head)
            return {}
        return {**kept.changes, **newer}

    def _first_parent_changes(
        self,
        revs: Sequence[str],
        pending: set[str],
        found: dict[str, _Change],
        *,
        until_found: bool = True,
    ) -> str | None:
        """Walk the first parents from ``revs[0]`` (without the commits the other, ``^``-ed,
        revs reach), newest first: each pending path that a commit's diff against its first
        parent touches moves from `pending` to `found` with that (newest) commit.

        Stops when nothing is pending, if `until_found`. Returns the first parent of the last
        commit listed when the log was read to its end and was one first-parent chain from
        ``revs[0]``: the commit the walk stopped above. Otherwise None.
        """
        if until_found and not pending:
            return None
        args = [
            "log",
            "--first-parent",
            "--diff-merges=first-parent",
            "--no-renames",
            "--name-only",
            "-z",
            "--format=\x1e%H %ct %P",
            *revs,
            "--",
        ]
        current: _LogHeader | None = None
        chained = True
        for raw in self._stream_tokens(args):
            token = raw.lstrip(b"\n")
            if token.startswith(b"\x1e"):
                header = _LogHeader.parse(token)
                chained = chained and header.sha == (current.parent if current else revs[0])
                current = header
                continue
            if current is None:
                continue
            path = token.decode(errors="replace")
            # A file matches itself and every folder above it that was asked for.
            while path:
                if path in pending:
                    pending.discard(path)
                    found[path] = (current.sha, current.time)
                path = path.rpartition("/")[0]
            if until_found and not pending:
                return None
        return current.parent if chained and current is not None else None

    def merged_with_trailer(self, key: str, values: Iterable[str]) -> dict[str, MergedCommit]:
        """For each trailer value (e.g. a decision digest), the first (oldest) first-parent
        commit of origin/<base> that brought in a commit carrying ``<key>: <value>``.

        Works for merge commits (the trailer is on the merged bot commit), squash merges and
        direct commits. Values not merged are absent.
        """
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", key):
            raise ValueError(f"{key!r} is not a trailer key")
        wanted = set(values)
        if not wanted:
            return {}
        self._wait_refs()
        fmt = f"--format=%H%x1f%P%x1f%ct%x1f%(trailers:key={key},valueonly,separator=%x1d)%x1e"
        out = self._run("log", fmt, f"refs/remotes/origin/{self._o.base}")
        graph: dict[str, tuple[list[str], int, list[str]]] = {}
        for record in out.decode(errors="replace").split("\x1e"):
            record = record.strip("\n")
            if not record:
                continue
            sha, parents, ct, trailers = record.split("\x1f")
            vals = [v.strip() for v in trailers.split("\x1d") if v.strip()]
            graph[sha] = (parents.split(), int(ct), vals)
        chain = []
        walk: str | None = self.base_sha
        while walk is not None and walk in graph:
            chain.append(walk)
            firsts = graph[walk][0]
            walk = firsts[0] if firsts else None
        found: dict[str, MergedCommit] = {}
        seen: set[str] = set()
        for first in reversed(chain):  # oldest first: a commit belongs to its first merge
            seen.add(first)
            stack = [first, *graph[first][0][1:]]
            while stack:
                c = stack.pop()
                if c != first:
                    if c in seen or c not in graph:
                        continue
                    seen.add(c)
                    stack.extend(graph[c][0])
                for value in graph[c][2]:
                    if value in wanted and value not in found:
                        found[value] = MergedCommit(
                            first, datetime.fromtimestamp(graph[first][1], UTC), c
                        )
        return found

    # -- plumbing helpers ----------------------------------------------------------------------

    def _rev(self, ref: str) -> str | None:
        return self._resolve([ref])[ref]

    def _resolve(self, specs: Sequence[str]) -> dict[str, str | None]:
        """Object ids of many ``rev:path`` / ``rev^{tree}`` specs in one cat-file call."""
        if not specs:
            return {}
        unique = list(dict.fromkeys(specs))
        out = self._run(
            "cat-file",
            "--batch-check=%(objectname)",
            stdin=("\n".join(unique) + "\n").encode(),
        )
        lines = out.decode(errors="replace").splitlines()
        return {
            spec: None if line.endswith((" missing", " ambiguous")) else line
            for spec, line in zip(unique, lines, strict=True)
        }

    def _read_commits(self, shas: Sequence[str]) -> dict[str, _Commit]:
        if not shas:
            return {}
        unique = list(dict.fromkeys(shas))
        out = self._run("cat-file", "--batch", stdin=("\n".join(unique) + "\n").encode())
        commits: dict[str, _Commit] = {}
        pos = 0
        for sha in unique:
            end = out.index(b"\n", pos)
            header = out[pos:end].split()
            if len(header) < 3 or header[1] != b"commit":
                pos = end + 1
                continue
            start, size = end + 1, int(header[2])
            commits[sha] = _parse_commit(sha, out[start : start + size])
            pos = start + size + 1
        return commits

    def _diffs(self, shas: Sequence[str]) -> dict[str, dict[str, tuple[str | None, str | None]]]:
        """{commit: {path: (blob id in parent, blob id in commit)}} in one diff-tree call;
        None stands for "absent"."""
        out = self._run(
            "diff-tree",
            "--stdin",
            "-r",
            "--no-renames",
            "-z",
            stdin=("\n".join(shas) + "\n").encode(),
        )
        wanted = set(shas)
        result: dict[str, dict[str, tuple[str | None, str | None]]] = {s: {} for s in shas}
        tokens = iter(out.decode(errors="replace").split("\0"))
        current = None
        for token in tokens:
            if token.startswith(":") and current is not None:
                _, _, old, new, _ = token[1:].split(" ", 4)
                path = next(tokens)
                result[current][path] = (
                    None if set(old) == {"0"} else old,
                    None if set(new) == {"0"} else new,
                )
            elif token in wanted:
                current = token
        return result

    def _update_refs(self, updates: Sequence[tuple[str, str | None]]) -> None:
        """Set (a sha) or delete (None) refs in one ``update-ref --stdin``; leaves `_heads`
        to the caller (this may run on `_track`'s thread)."""
        if not updates:
            return
        lines = [
            f"update {ref} {sha}\n" if sha is not None else f"delete {ref}\n"
            for ref, sha in updates
        ]
        self._run("update-ref", "--stdin", stdin="".join(lines).encode())

    def _stream_tokens(self, args: Sequence[str]) -> Iterator[bytes]:
        """NUL-separated output of a long-running git command, stopped when the caller is."""
        proc: Any = self._git.execute(
            ["git", "--git-dir", str(self.git_dir), *args],
            as_process=True,
            env=self._o.env,
        )
        try:
            buf = b""
            while chunk := proc.stdout.read(1 << 16):
                buf += chunk
                *tokens, buf = buf.split(b"\0")
                yield from (t for t in tokens if t)
            if buf:
                yield buf
        finally:
            # Stopping early is normal (every path found); the process is ours to stop.
            if proc.proc.poll() is None:
                proc.proc.kill()
            proc.proc.wait()

    def _run(
        self,
        *args: str,
        stdin: bytes | IO[bytes] | None = None,
        network: bool = False,
        git_dir: Path | None = None,
    ) -> bytes:
        code, out, err = self._run_status(*args, stdin=stdin, network=network, git_dir=git_dir)
        if code != 0:
            raise GitWriteError(f"git {_verb(args)} failed in {self.git_dir}: {_redact(err)}")
        return out

    def _run_status(
        self,
        *args: str,
        stdin: bytes | IO[bytes] | None = None,
        network: bool = False,
        git_dir: Path | None = None,
    ) -> tuple[int, bytes, str]:
        """Run git with an argument list (never a shell string); (exit code, stdout, stderr)."""
        cmd = ["git", "--git-dir", str(git_dir or self.git_dir), *args]
        env = dict(self._o.env)
        if network:
            if self._o.credentials is not None:
                env.update(self._o.credentials())
            # Fail instead of prompting for credentials on a terminal nobody watches.
            env.setdefault("GIT_TERMINAL_PROMPT", "0")
        with tempfile.TemporaryFile() as spool:
            # git reads stdin from a real file: no pipe deadlock, however large the input.
            stream: IO[bytes] | None = stdin if not isinstance(stdin, bytes) else spool
            if isinstance(stdin, bytes):
                spool.write(stdin)
                spool.seek(0)
            return self._exec(cmd, stream, env)

    def _exec(
        self, cmd: list[str], stream: IO[bytes] | None, env: dict[str, str]
    ) -> tuple[int, bytes, str]:
        try:
            result: tuple[int, bytes, str] = self._git.execute(
                cmd,
                istream=cast(BinaryIO | None, stream),
                with_extended_output=True,
                stdout_as_string=False,
                with_exceptions=False,
                strip_newline_in_stdout=False,
                kill_after_timeout=self._o.timeout,
                env=env,
            )
        except git.GitCommandNotFound as err:
            raise GitWriteError("the git executable was not found on PATH") from err
        return result


# -- module helpers --------------------------------------------------------------------------


def _in_background(name: str, work: Callable[[], _T]) -> Future[_T]:
    """Run `work` on a daemon thread named `name`; its result, or the exception it raised,
    is the future's, for whoever waits for it."""
    future: Future[_T] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as err:  # handed to whoever waits for it
            future.set_exception(err)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def _with(shas: list[str], sha: str) -> list[str]:
    """`shas` with `sha` added at the end, once."""
    return shas if sha in shas else [*shas, sha]


def _unreadable(path: Path, what: str) -> GitWriteError:
    return GitWriteError(
        f"{path} {what}; it records the commits gitops-rollout pushed: delete it to start the "
        "record afresh (until the next push, a bot branch is then judged by its commits' "
        "authors alone)"
    )


def _parse_pushed(path: Path, text: str) -> dict[str, list[str]]:
    """`_PUSHED`'s content; GitWriteError naming the file when it is not {branch: [sha]}."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise _unreadable(path, f"is not JSON ({err})") from err
    if not isinstance(data, dict) or not all(
        isinstance(shas, list) and all(isinstance(s, str) and _OID.fullmatch(s) for s in shas)
        for shas in data.values()
    ):
        raise _unreadable(path, "is not a JSON object of {branch: [commit id, ...]}")
    return cast(dict[str, list[str]], data)


def _read_old_pending(path: Path) -> dict[str, str]:
    """An earlier version's `_OLD_PENDING` file, {branch: sha}; empty when there is none."""
    fix = (
        "it names the commits of a push an earlier version may not have finished: delete it "
        "(a bot branch is then judged by its commits' authors alone)"
    )
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise GitWriteError(f"{path} cannot be read ({err}); {fix}") from err
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise GitWriteError(f"{path} is not a JSON object of {{branch: commit id}}; {fix}")
    return cast(dict[str, str], data)


def _chain_stream(
    requests: Sequence[CommitRequest], *, base: str, entries: Mapping[str, tuple[str, str]]
) -> Iterator[bytes]:
    """Stage one: every request's tree, chained on one branch (see `Workspace.commit`)."""
    signature = b"gitops-rollout <gitops-rollout@noreply.invalid> 0 +0000"
    previous: Sequence[str] = ()
    for mark, request in enumerate(requests, start=1):
        yield f"commit {_SCRATCH}\nmark :{mark}\n".encode()
        yield b"committer " + signature + b"\ndata 0\n"
        if mark == 1:
            yield f"from {base}\n".encode()
        mine = set(request.changes.paths)
        for path in previous:
            if path in mine:
                continue
            if path in entries:
                mode, oid = entries[path]
                yield f"M {mode} {oid} ".encode() + _quote(path) + b"\n"
            else:
                yield b"D " + _quote(path) + b"\n"
        for change in request.changes:
            if change.new is None:
                yield b"D " + _quote(change.path) + b"\n"
            else:
                yield b"M 100644 inline " + _quote(change.path) + b"\n"
                yield b"data %d\n" % len(change.new) + change.new + b"\n"
        yield b"\n"
        previous = request.changes.paths


def _commit_stream(
    requests: Sequence[CommitRequest], trees: Sequence[str], *, base: str, signature: bytes
) -> Iterator[bytes]:
    """Stage two: each tree as a commit on the base, with its message and identity."""
    for mark, (request, tree) in enumerate(zip(requests, trees, strict=True), start=1):
        message = request.message.render().encode()
        yield f"commit {_SCRATCH}\nmark :{mark}\n".encode()
        yield b"author " + signature + b"\ncommitter " + signature + b"\n"
        yield b"data %d\n" % len(message) + message + b"\n"
        yield f'from {base}\nM 040000 {tree} ""\n\n'.encode()


def _commit_body(request: CommitRequest, tree: str, base: str, signature: bytes) -> bytes:
    """The commit object `_commit_stream` has fast-import make for `request`."""
    head = f"tree {tree}\nparent {base}\n".encode()
    head += b"author " + signature + b"\ncommitter " + signature + b"\n\n"
    return head + request.message.render().encode()


def _quote(path: str) -> bytes:
    """A C-style quoted path, which fast-import always accepts (spaces, quotes, UTF-8)."""
    escaped = path.replace("\\", "\\\\").replace('"', '\\"')
    return b'"' + escaped.encode() + b'"'


def _verb(args: Sequence[str]) -> str:
    """The git subcommand in `args` (skipping ``-c key=value`` options), for messages."""
    skip = False
    for arg in args:
        if skip or arg == "-c":
            skip = not skip
            continue
        if not arg.startswith("-"):
            return arg
    return "command"


def _parse_commit(sha: str, raw: bytes) -> _Commit:
    head, _, message = raw.partition(b"\n\n")
    tree = ""
    parents: list[str] = []
    author = committer = ""
    when = 0
    for line in head.split(b"\n"):
        if line.startswith(b" "):
            continue  # continuation of a multi-line header (gpgsig)
        name, _, value = line.partition(b" ")
        text = value.decode(errors="replace")
        if name == b"tree":
            tree = text
        elif name == b"parent":
            parents.append(text)
        elif name in (b"author", b"committer"):
            email = text[text.find("<") + 1 : text.rfind(">")].lower()
            if name == b"author":
                author = email
            else:
                committer = email
                when = int(text[text.rfind(">") + 1 :].split()[0])
    return _Commit(sha, tree, tuple(parents), author, committer, when, message)


def _reachable(graph: Mapping[str, tuple[list[str], str, str]], head: str) -> list[str]:
    """Commits of `graph` reachable from `head`, newest first (graph holds beyond-base only)."""
    out: list[str] = []
    seen: set[str] = set()
    stack = [head]
    while stack:
        sha = stack.pop()
        if sha in seen or sha not in graph:
            continue
        seen.add(sha)
        out.append(sha)
        stack.extend(graph[sha][0])
    return out


def _read_merge_times(path: Path) -> _MergeTimes | None:
    """The merge times kept in `path`; None when there are none or they cannot be used."""
    try:
        with path.open("rb") as handle:
            # Written by this program into the cache clone it holds locked (see
            # `_write_merge_times`); whoever can change it can change the clone's refs too.
            data = pickle.load(handle)  # noqa: S301
    except FileNotFoundError:
        return None
    except Exception as err:  # damaged or foreign: read the whole history again
        log.debug("merge times in %s not used: %s", path, err)
        return None
    if not isinstance(data, dict) or data.get("format") != _MERGE_TIMES_FORMAT:
        return None
    commit, changes = data.get("commit"), data.get("changes")
    if not isinstance(commit, str) or not _OID.fullmatch(commit) or not isinstance(changes, dict):
        return None
    return _MergeTimes(commit, changes)


def _write_merge_times(path: Path, times: _MergeTimes) -> None:
    """Keep `times` in `path` (atomically), without its least recently asked paths beyond
    `_MERGE_TIMES_KEPT`. A failure only costs the next call a longer walk."""
    changes = times.changes
    if len(changes) > _MERGE_TIMES_KEPT:
        changes = dict(list(changes.items())[-_MERGE_TIMES_KEPT:])
    data = {"format": _MERGE_TIMES_FORMAT, "commit": times.commit, "changes": changes}
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                pickle.dump(data, out, protocol=5)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        log.debug("could not keep merge times in %s: %s", path, err)


def _parse_porcelain(text: str) -> dict[str, tuple[bool, str]]:
    """``git push --porcelain`` lines: ``<flag>\\t<src>:<dst>\\t<summary>``."""
    status = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or len(parts[0]) != 1:
            continue
        flag, refs, summary = parts[0], parts[1], parts[2]
        dst = refs.rpartition(":")[2]
        status[dst] = (flag in " +*=", summary.strip())
    return status


def _split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """The URL without user:password, and environment that sends them as an HTTP header.

    git reads ``GIT_CONFIG_COUNT``/``_KEY_n``/``_VALUE_n`` (git >= 2.31) as if from its
    config, so the token reaches git without touching disk or the command line.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.password:
        return url, {}
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    token = base64.b64encode(
        f"{unquote(parts.username or '')}:{unquote(parts.password)}".encode()
    ).decode()
    return clean, {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}",
    }


_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")


def _redact(text: str) -> str:
    """git's stderr with any ``user:token@`` in URLs removed."""
    return _USERINFO.sub(r"\1***@", text.strip())
