"""Merges with nothing to merge: the local host's plain path must make exactly what git makes.

`LocalHost` merges a batch's "plain" pull requests (one commit on the base, deleting nothing,
touching no path an earlier merge of the chain changed) by applying their changes to the base
tree in Python (`treemerge`), and asks ``git merge-tree`` about the rest. Here real
repositories are merged both ways (the plain path disabled by raising `local.PLAIN_FROM`):
every tree, parent, commit and answer must be the same. How many pull requests go to git is
bounded rather than pinned: at most every one from the first that is not one commit on the
base's tip; at least those not plain even on a looser reading (one commit on any commit of the
base, apart from what the base changed since), and every one after a merge git made.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from gitops_helpers import T0, Clock, Remote, git

from gitops_rollout.errors import GitWriteError, RolloutError
from gitops_rollout.gitops import treemerge
from gitops_rollout.gitops.hosts import local
from gitops_rollout.gitops.hosts.base import MergeResult, PullRequest, PullRequestDraft
from gitops_rollout.gitops.hosts.local import TRIAL_MERGES_AT_ONCE, LocalHost
from gitops_rollout.gitops.objects import ObjectReader, PackBuffer
from gitops_rollout.gitops.treemerge import Change

GIT_ONLY = 10**9
"""`local.PLAIN_FROM` that no batch reaches: every merge goes to ``git merge-tree``."""

Entry = tuple[str, bytes]
"""A file in a tree: its mode (100644, 100755, 120000) and contents (a symlink's target)."""
Files = dict[str, Entry]


def raw(path: str) -> bytes:
    """A path as git stores it (str paths carry non-UTF-8 bytes as surrogates)."""
    return path.encode(errors="surrogateescape")


def blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


class Stream:
    """Commits for ``git fast-import``: a whole repository history made with one git process."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._marks = 0
        self._when = int(T0.timestamp())

    def commit(
        self,
        branch: str,
        parent: str | None,
        changes: Mapping[str, Entry | None],
        message: str = "change",
        *,
        merging: str | None = None,
    ) -> str:
        """A commit on `branch` on top of `parent` (a mark or a sha; None: a root commit)
        making `changes` (None deletes a path) to the parent's tree, a merge of commit
        `merging` too when given; its mark."""
        self._marks += 1
        self._when += 60
        mark = f":{self._marks}"
        out = [
            f"commit refs/heads/{branch}\nmark {mark}\n".encode(),
            f"committer A <a@x> {self._when} +0000\n".encode(),
            b"data %d\n%s\n" % (len(message), message.encode()),
        ]
        if parent is not None:
            out.append(f"from {parent}\n".encode())
        if merging is not None:
            out.append(f"merge {merging}\n".encode())
        for path, entry in changes.items():
            if entry is None:
                out.append(b"D " + raw(path) + b"\n")
            else:
                mode, content = entry
                out.append(b"M %s inline %s\n" % (mode.encode(), raw(path)))
                out.append(b"data %d\n%s\n" % (len(content), content))
        self._chunks.append(b"".join(out) + b"\n")
        return mark

    def branch(self, branch: str, at: str) -> None:
        """`branch` pointing at commit `at` (a mark or a sha)."""
        self._chunks.append(f"reset refs/heads/{branch}\nfrom {at}\n\n".encode())

    def run(self, bare: Path) -> dict[str, str]:
        """Import the commits into `bare`: {mark: sha}."""
        marks = bare / "fast-import.marks"
        subprocess.run(
            ["git", "--git-dir", str(bare), "fast-import", "--quiet", f"--export-marks={marks}"],
            input=b"".join(self._chunks),
            check=True,
            capture_output=True,
        )
        shas = dict(line.split(" ") for line in marks.read_text().splitlines())
        marks.unlink()
        return shas


def bare_repository(path: Path, *, object_format: str = "sha1") -> Path:
    options = ["--quiet", "--bare", "--initial-branch=main", f"--object-format={object_format}"]
    git("init", *options, str(path))
    return path


def open_pulls(host: LocalHost, branches: Sequence[str]) -> list[int]:
    opened = host.open_many(
        [PullRequestDraft(head=b, base="main", title=f"change {b}", body="") for b in branches]
    )
    assert all(isinstance(p, PullRequest) for p in opened), opened
    return [p.number for p in opened if isinstance(p, PullRequest)]


def git_only_copy(bare: Path, clock: Clock) -> LocalHost:
    """A host on a copy of `bare` (its pull requests too), to merge with git alone."""
    copy = bare.with_name(f"{bare.stem}-git-only.git")
    shutil.copytree(bare, copy, symlinks=True)
    return LocalHost(copy, clock=clock)


def merged_with_git_only(
    host: LocalHost, merges: Sequence[tuple[int, str]], monkeypatch: pytest.MonkeyPatch
) -> list[MergeResult | RolloutError]:
    with monkeypatch.context() as patch:
        patch.setattr(local, "PLAIN_FROM", GIT_ONLY)
        return host.merge_many(merges)


Outcome = tuple[str, ...]


def outcomes(bare: Path, results: Sequence[MergeResult | RolloutError]) -> list[Outcome]:
    """What each merge made: ("merged", merge sha, tree, parents...), or why it did not."""
    shas = [r.merge_sha for r in results if isinstance(r, MergeResult) and r.merge_sha]
    made: dict[str, Outcome] = {}
    if shas:
        log = git("--git-dir", str(bare), "log", "--no-walk=unsorted", "--format=%H %T %P", *shas)
        for line in log.splitlines():
            sha, *tree_and_parents = line.split()
            made[sha] = ("merged", sha, *tree_and_parents)
    shown: list[Outcome] = []
    for result in results:
        if isinstance(result, MergeResult) and result.merge_sha:
            assert result.merged
            shown.append(made[result.merge_sha])
        elif isinstance(result, MergeResult):
            shown.append(("not merged", result.reason))
        else:
            shown.append((type(result).__name__, str(result).replace(str(bare), "<bare>")))
    return shown


def fsck(bare: Path) -> None:
    git("--git-dir", str(bare), "fsck", "--strict", "--no-dangling", "--no-progress")


@dataclass(frozen=True)
class BothWays:
    """A batch merged on the plain path, and on a git-only copy of the repository."""

    results: list[MergeResult | RolloutError]
    git_results: list[MergeResult | RolloutError]
    trials: int
    """How many ``git merge-tree`` the plain path's batch started."""
    git_host: LocalHost


MergeBoth = Callable[[Sequence[str]], BothWays]


@pytest.fixture
def merge_both(
    host: LocalHost,
    remote: Remote,
    clock: Clock,
    git_calls: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> MergeBoth:
    """Open pull requests for some branches and merge them, in order, with the plain path and
    on a git-only copy: every merge and refusal must be the same, the repository sound."""

    def merge(branches: Sequence[str]) -> BothWays:
        numbers = open_pulls(host, branches)
        git_host = git_only_copy(remote.path, clock)
        merges = [(n, f"merge #{n}") for n in numbers]
        git_calls.clear()
        results = host.merge_many(merges)
        trials = git_calls.count("merge-tree")
        git_results = merged_with_git_only(git_host, merges, monkeypatch)
        assert outcomes(remote.path, results) == outcomes(git_host.bare, git_results)
        fsck(remote.path)
        return BothWays(results, git_results, trials, git_host)

    return merge


# -- 1. random batches, merged both ways ---------------------------------------------------------

FOLDERS = ("", "a", "a/b", "a/b/c", "d", "d/e f", "x", "x/ü ñ")
NAMES = ("f.txt", "g h", "é", "x-y", "x.y", "lat\udce9")  # the last one is not UTF-8
CLASHES = ("clash", "a/b/clash")
"""Fresh names that one side makes a file and the other a folder."""
LINES = 8
KINDS = {
    "edit": 30,  # a file of its own
    "add": 20,  # in a folder of the base, or in new nested ones
    "chmod": 10,  # the executable bit
    "symlink": 10,  # a new one, or a file of its own turned into one
    "delete": 6,
    "contested": 14,  # a file other branches change too (often the same way)
    "clash": 10,  # a fresh name: a file, or a folder (other branches may make the other)
}
"""The changes a branch makes, by weight."""


def text(tag: str) -> bytes:
    return "".join(f"{tag}: line {i}\n" for i in range(LINES)).encode(errors="surrogateescape")


def edited(content: bytes, line: int, tag: str) -> bytes:
    lines = content.decode(errors="surrogateescape").splitlines(keepends=True)
    lines[line] = f"{tag} was here\n"
    return "".join(lines).encode(errors="surrogateescape")


def regular(files: Files) -> list[str]:
    """The paths of `files` that are no symlinks."""
    return sorted(p for p, (mode, _) in files.items() if mode != "120000")


def fits(files: Files, path: str) -> bool:
    """Whether a file may be added at `path` without replacing a file or folder."""
    folders = {path[:i] for i, c in enumerate(path) if c == "/"}
    below = any(f.startswith(f"{path}/") for f in files)
    return path not in files and not folders & files.keys() and not below


def touching(ours: set[str], theirs: set[str]) -> bool:
    """Whether a path of `ours` is one of `theirs`, or a folder above one, or below one."""
    return any(
        a == b or a.startswith(f"{b}/") or b.startswith(f"{a}/") for a in ours for b in theirs
    )


@dataclass
class MainCommit:
    mark: str
    paths: set[str]
    deletes: bool


@dataclass
class Branch:
    name: str
    parent: str
    """The mark of its (first) commit's parent."""
    head: str
    on_main: bool
    """One commit on top of a commit of main (else stacked, two commits or a merge)."""
    paths: set[str] = field(default_factory=set)
    deletes: bool = False
    features: set[str] = field(default_factory=set)


@dataclass
class Scenario:
    stream: Stream
    main: list[MainCommit]
    """Main's commits, oldest first; the last is main's tip."""
    branches: list[Branch]
    order: list[int]
    """The order the pull requests (of `branches`, by index) are merged in."""

    def plain(self, branch: Branch, merged: set[str], *, strict: bool) -> bool:
        """Whether `branch` merges plainly into main's tip after plain merges that changed
        `merged` (this knows every path each commit changed: it asks git nothing). Strict:
        only a commit on the tip itself is. Else one on any commit of main is, unless main
        deleted anything since or changed a path it touches (a file where it makes a folder
        too, or the other way round)."""
        if not branch.on_main or branch.deletes:
            return False
        if strict and branch.parent != self.main[-1].mark:
            return False
        since = self.main[[c.mark for c in self.main].index(branch.parent) + 1 :]
        if any(c.deletes for c in since):
            return False
        return not touching(branch.paths, set().union(*(c.paths for c in since)) | merged)

    def plain_chain(self, *, strict: bool) -> int:
        """How many pull requests at the head of the merge order merge plainly, one after
        another (git is asked about none of them)."""
        merged: set[str] = set()
        for position, index in enumerate(self.order):
            branch = self.branches[index]
            if not self.plain(branch, merged, strict=strict):
                return position
            merged |= branch.paths
        return len(self.order)

    def fewest_trials(self, outcomes: Sequence[bool]) -> int:
        """The fewest pull requests of the batch git must be asked about, given whether each
        merges (`outcomes`, in merge order): those not plain even on the loose reading, and
        every one after git made a merge (the chain builds on a tree git made then)."""
        merged: set[str] = set()
        trials = 0
        git_merged = False
        for index, outcome in zip(self.order, outcomes, strict=True):
            branch = self.branches[index]
            if not git_merged and self.plain(branch, merged, strict=False):
                merged |= branch.paths
            else:
                trials += 1
                git_merged = git_merged or outcome
        return trials


class Generator:
    """A random history: a base tree of nested folders, a human commit, 6-10 branches of
    random changes (most on main's tip, some on the commit before it), and often a human
    commit on main while the branches are made: the branches made before it are on an
    older commit of main then. Every file's contents are unique, so a diff between two
    commits shows exactly the paths the commits between them changed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.stream = Stream()
        self.main: list[MainCommit] = []
        self.branches: list[Branch] = []
        self.trees: dict[str, Files] = {}
        """The files of each commit, by mark."""
        self._fresh = 0
        self.contested: list[str] = []
        self.claimed: set[str] = set()
        """Files a branch changed: the others leave them alone (save the contested ones)."""

    def fresh(self, prefix: str) -> str:
        self._fresh += 1
        return f"{prefix} {self._fresh}"

    def commit_main(self, changes: Mapping[str, Entry | None], deletes: bool = False) -> None:
        parent = self.main[-1].mark if self.main else None
        mark = self.stream.commit("main", parent, changes, "human change")
        self.trees[mark] = changed(self.trees[parent] if parent else {}, changes)
        self.main.append(MainCommit(mark, set(changes), deletes))

    def scenario(self) -> Scenario:
        rng = self.rng
        base: Files = {}
        for folder in FOLDERS:
            for name in rng.sample(NAMES, 3):
                path = f"{folder}/{name}".lstrip("/")
                base[path] = ("100755" if rng.random() < 0.2 else "100644", text(path))
        base["d/link"] = ("120000", b"../a/b")
        self.commit_main(base)
        # A human change before the branches: some branches are on the commit before it.
        human: dict[str, Entry | None] = {
            p: ("100644", edited(base[p][1], 1, "human")) for p in rng.sample(regular(base), 2)
        }
        human[self.fresh(f"{rng.choice(FOLDERS[1:])}/human")] = ("100644", text("human"))
        self.commit_main(human)
        self.contested = rng.sample(regular(base), 2)
        self.claimed |= set(self.contested)
        count = rng.randint(6, 10)
        late = rng.randrange(1, count // 2 + 1) if rng.random() < 0.6 else None
        for number in range(count):
            if number == late:
                self.late_human_commit()
            self.branches.append(self.branch(f"feature/{number}"))
        scenario = Scenario(self.stream, self.main, self.branches, list(range(count)))

        def lean(index: int) -> float:
            branch = self.branches[index]
            if scenario.plain(branch, set(), strict=True):
                return 0.0
            return 0.3 if scenario.plain(branch, set(), strict=False) else 0.6

        # A random order, but those plain on their own mostly first: long plain chains, then git.
        leaning = {i: rng.random() + lean(i) for i in scenario.order}
        scenario.order.sort(key=leaning.__getitem__)
        return scenario

    def branch(self, name: str) -> Branch:
        rng = self.rng
        roll = rng.random()
        if self.branches and roll < 0.08:
            twin = rng.choice(self.branches)  # the same commit as an earlier branch
            self.stream.branch(name, twin.head)
            return replace(twin, name=name, features={"twin"})
        if self.branches and roll < 0.18:
            parent, on_main, features = rng.choice(self.branches).head, False, {"stacked"}
        elif roll < 0.35:
            parent, on_main, features = self.main[-2].mark, True, {"older main"}
        else:
            parent, on_main, features = self.main[-1].mark, True, set()
        merging = None
        if rng.random() < 0.08:
            # A merge of another branch (or of main's first commit) into its own commit.
            merging = rng.choice([*(b.head for b in self.branches), self.main[0].mark])
            on_main = False
            features.add("merge head")
        tree = dict(self.trees[parent])
        changes: dict[str, Entry | None] = {}
        for _ in range(rng.randint(1, 3)):
            kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
            made = self.change(kind, tree, name)
            if made is not None and made[0] not in changes:
                features.add(kind)
                changes[made[0]] = made[1]
                tree = changed(tree, {made[0]: made[1]})
        if not changes:
            path = self.fresh("alone")
            changes[path] = ("100644", text(path))
        head = self.stream.commit(name, parent, changes, f"change {name}", merging=merging)
        self.trees[head] = tree = changed(self.trees[parent], changes)
        deletes = any(entry is None for entry in changes.values())
        branch = Branch(name, parent, head, on_main, set(changes), deletes, features)
        if rng.random() < 0.08:
            path = self.fresh("second")  # a second commit: its parent is not on main
            second: dict[str, Entry | None] = {path: ("100644", text(path))}
            branch.head = self.stream.commit(name, head, second, "more")
            self.trees[branch.head] = changed(tree, second)
            branch.on_main = False
            branch.features.add("two commits")
        return branch

    def change(self, kind: str, tree: Files, tag: str) -> tuple[str, Entry | None] | None:
        """One change of `kind` to `tree` by branch `tag`: (path, new entry), or None when
        there is nothing left to make it on."""
        rng = self.rng
        if kind == "add":
            folder = rng.choice([*FOLDERS, f"{self.fresh('new')}/deeper é/deepest"])
            path = self.fresh(f"{folder}/file").lstrip("/")
            return path, ("100644", text(path))
        if kind == "contested":
            path = rng.choice(self.contested)
            if rng.random() < 0.3:
                return path, ("100644", text(f"agreed on {path}"))  # what other branches make
            return path, (tree[path][0], edited(tree[path][1], rng.randrange(LINES), tag))
        if kind == "clash":
            clash = rng.choice(CLASHES)
            path = clash if rng.random() < 0.5 else self.fresh(f"{clash}/inner")
            return (path, ("100644", text(path))) if fits(tree, path) else None
        if kind == "symlink" and rng.random() < 0.5:
            return self.fresh("d/link"), ("120000", self.fresh("../target").encode())
        free = [p for p in regular(tree) if p not in self.claimed]
        if not free:
            return None
        path = rng.choice(free)
        self.claimed.add(path)
        mode, content = tree[path]
        if kind == "edit":
            return path, (mode, edited(content, rng.randrange(LINES), tag))
        if kind == "chmod":
            return path, ("100644" if mode == "100755" else "100755", content)
        if kind == "symlink":
            return path, ("120000", self.fresh("../target").encode())  # a file becomes one
        return path, None  # delete

    def late_human_commit(self) -> None:
        """A human commit on main after branches were made: edits anywhere, a file or a
        folder where branches may make the other, sometimes a deletion."""
        rng = self.rng
        tip = self.trees[self.main[-1].mark]
        changes: dict[str, Entry | None] = {
            p: (tip[p][0], edited(tip[p][1], rng.randrange(LINES), "late"))
            for p in rng.sample(regular(tip), 2)
        }
        clash = rng.choice(CLASHES)
        added = clash if rng.random() < 0.5 else f"{clash}/human"
        added = added if fits(tip, added) else self.fresh("late")
        changes[added] = ("100644", text(added))
        deletes = rng.random() < 0.15
        if deletes:
            # A file of the base no commit changed: the diff since any commit deletes it.
            untouched = [p for p in regular(self.trees[self.main[0].mark]) if p not in changes]
            untouched = [p for p in untouched if p not in {*self.main[1].paths, *self.contested}]
            changes[rng.choice(untouched)] = None
        self.commit_main(changes, deletes)


def changed(files: Files, changes: Mapping[str, Entry | None]) -> Files:
    kept = {p: e for p, e in files.items() if p not in changes}
    return {**kept, **{p: e for p, e in changes.items() if e is not None}}


def generate(seed: int) -> Scenario:
    return Generator(seed).scenario()


SEEDS = range(20)


def test_the_seeds_cover_every_kind_of_change() -> None:
    """The random batches below must keep exercising what they are there for."""
    scenarios = [generate(seed) for seed in SEEDS]
    features = set().union(*(b.features for s in scenarios for b in s.branches))
    assert features >= {*KINDS, "older main", "stacked", "twin", "two commits", "merge head"}
    late = [s.main[-1].deletes for s in scenarios if len(s.main) == 3]
    assert True in late and False in late
    # Most batches merge some pull requests plainly (a chain of them, even when only those on
    # main's tip are plain), then hand the rest to git.
    chains = [s.plain_chain(strict=True) for s in scenarios]
    assert sum(n >= 2 for n in chains) >= len(scenarios) // 2
    assert sum(n < len(s.order) for n, s in zip(chains, scenarios, strict=True)) >= 10
    # And some pull requests are plain only on the loose reading.
    assert any(s.plain_chain(strict=False) > s.plain_chain(strict=True) for s in scenarios)


@pytest.mark.parametrize("seed", SEEDS)
def test_plain_merges_make_exactly_what_git_makes(
    seed: int,
    tmp_path: Path,
    clock: Clock,
    git_calls: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario = generate(seed)
    bare = bare_repository(tmp_path / "remote.git")
    scenario.stream.run(bare)
    host = LocalHost(bare, clock=clock)
    numbers = open_pulls(host, [b.name for b in scenario.branches])
    git_host = git_only_copy(bare, clock)
    merges = [(numbers[i], f"merge #{numbers[i]}") for i in scenario.order]

    with monkeypatch.context() as patch:
        patch.setattr(local, "PLAIN_FROM", GIT_ONLY)
        git_answers = git_host.mergeable_many(numbers)
        git_calls.clear()
        git_results = git_host.merge_many(merges)
        assert git_calls.count("merge-tree") == len(merges)

    git_calls.clear()
    assert host.mergeable_many(numbers) == git_answers
    # Every trial merge made, in as many ``merge-tree --stdin`` processes as run at once.
    assert 1 <= git_calls.count("merge-tree") <= min(len(numbers), TRIAL_MERGES_AT_ONCE)
    git_calls.clear()
    results = host.merge_many(merges)
    # The pull requests plain on main's tip (one commit on it, deleting nothing, apart from
    # the plain merges before) merge without git. Those not plain even on the loose reading
    # (one commit on main, apart from what main changed since too) go to git, and so does
    # every one after a merge git made.
    trials = git_calls.count("merge-tree")
    merged = [isinstance(r, MergeResult) and r.merged for r in git_results]
    most = len(merges) - scenario.plain_chain(strict=True)
    assert scenario.fewest_trials(merged) <= trials <= most

    # The same pull requests merged (each merge commit with the same tree and parents) or
    # refused for the same files; the commits are byte for byte the same, main too.
    assert outcomes(bare, results) == outcomes(git_host.bare, git_results)
    assert results == git_results
    assert git("--git-dir", str(bare), "rev-parse", "main") == git(
        "--git-dir", str(git_host.bare), "rev-parse", "main"
    )
    fsck(bare)


# -- 2. what a batch costs ----------------------------------------------------------------------


def nested_branches(remote: Remote, count: int, *, deleting: int | None = None) -> list[str]:
    """`count` branches each adding its own file in new nested folders (and editing a file of
    its own), one commit on main; the one at `deleting` deletes a file too."""
    stream = Stream()
    tip = remote.sha("main")
    names = []
    for i in range(count):
        name = f"feature/{i}"
        changes: dict[str, Entry | None] = {
            f"apps/app {i}/config é/values.yaml": ("100644", f"replicas: {i}\n".encode()),
            f"clusters/prod/ml/wisdom/extra-{i}.yaml": ("100755", b"kind: ConfigMap\n"),
        }
        if i == deleting:
            changes["clusters/prod/ml/iris/v1.yaml"] = None
        stream.commit(name, tip, changes, f"change {i}")
        names.append(name)
    stream.run(remote.path)
    return names


def test_a_batch_of_plain_pull_requests_starts_no_merge_tree(
    host: LocalHost, remote: Remote, git_calls: list[str]
) -> None:
    base = remote.sha("main")
    numbers = open_pulls(host, nested_branches(remote, 10))
    heads = [host.show(n).head_sha for n in numbers]
    git_calls.clear()

    results = host.merge_many([(n, f"merge #{n}") for n in numbers])

    assert all(isinstance(r, MergeResult) and r.merged for r in results)
    assert "merge-tree" not in git_calls
    # A handful of processes for the whole batch, however many pull requests it has.
    assert len(git_calls) <= 7, git_calls
    shas = [r.merge_sha for r in results if isinstance(r, MergeResult)]
    chain = remote.log("main", "%H %P", "--first-parent", f"{base}..main")
    assert chain == [
        f"{sha} {parent} {head}"
        for sha, parent, head in reversed(list(zip(shas, [base, *shas], heads, strict=False)))
    ]
    for i in range(10):
        values = remote.show("main", f"apps/app {i}/config é/values.yaml")
        assert values == f"replicas: {i}\n".encode()
    fsck(remote.path)


def test_a_deletion_sends_its_pull_request_and_every_later_one_to_git(
    remote: Remote, merge_both: MergeBoth
) -> None:
    branches = nested_branches(remote, 10, deleting=4)

    both = merge_both(branches)

    assert both.trials == 6  # the fifth and the five after it
    assert all(isinstance(r, MergeResult) and r.merged for r in both.results)
    assert remote.sha("main") == both.git_host._git.check("rev-parse", "main").strip()
    with pytest.raises(subprocess.CalledProcessError):
        remote.show("main", "clusters/prod/ml/iris/v1.yaml")


def test_a_pull_request_meeting_an_earlier_plain_merge_goes_to_git(
    remote: Remote, merge_both: MergeBoth
) -> None:
    iris = "clusters/prod/ml/iris/v1.yaml"
    changes: list[dict[str, Entry | None]] = [
        {"apps/x/values.yaml": ("100644", b"x\n")},  # a folder apps/x
        {"apps/y": ("100644", b"y\n")},  # a file apps/y
        {iris: ("100644", b"first\n")},
        {"apps/x": ("100644", b"x\n")},  # a file where the first made a folder
        {"apps/y/values.yaml": ("100644", b"y\n")},  # a folder where the second made a file
        {iris: ("100644", b"second\n")},  # the file the third changed
        {"apps/z/values.yaml": ("100644", b"z\n")},
    ]
    stream = Stream()
    tip = remote.sha("main")
    for i, change in enumerate(changes):
        stream.commit(f"feature/{i}", tip, change)
    stream.run(remote.path)
    branches = [f"feature/{i}" for i in range(len(changes))]

    both = merge_both(branches)

    merged = [isinstance(r, MergeResult) and r.merged for r in both.results]
    assert merged == [True, True, True, False, False, False, True]
    assert 3 <= both.trials <= 4  # the last may merge plainly
    assert both.results == both.git_results


def test_a_folder_renamed_after_a_plain_merge_added_to_it_goes_to_git(
    remote: Remote, merge_both: MergeBoth
) -> None:
    # Why a deletion goes to git: git sees the folder renamed, and the file added to it then.
    stream = Stream()
    tip = remote.sha("main")
    wisdom = "clusters/prod/ml/wisdom"
    stream.commit("feature/0", tip, {f"{wisdom}/new.yaml": ("100644", b"new\n")})
    stream.commit("feature/1", tip, {"apps/a.yaml": ("100644", b"a\n")})
    old = git("--git-dir", str(remote.path), "ls-tree", "-r", "--name-only", tip, wisdom).split()
    renamed: dict[str, Entry | None] = dict.fromkeys(old)
    for path in old:  # the same files in wisdom-v2
        renamed[path.replace(wisdom, f"{wisdom}-v2")] = ("100644", remote.show(tip, path))
    stream.commit("feature/2", tip, renamed)
    stream.commit("feature/3", tip, {"apps/b.yaml": ("100644", b"b\n")})
    stream.run(remote.path)
    branches = [f"feature/{i}" for i in range(4)]

    both = merge_both(branches)

    assert both.results == both.git_results
    assert both.trials >= 1


def test_a_head_that_is_a_merge_goes_to_git(remote: Remote, merge_both: MergeBoth) -> None:
    # diff-tree shows a merge commit as no change at all: the merge must not be taken as one.
    stream = Stream()
    tip = remote.sha("main")
    side = stream.commit("side", tip, {"apps/side.yaml": ("100644", b"side\n")})
    for i in range(5):
        changes: dict[str, Entry | None] = {f"apps/{i}/values.yaml": ("100644", b"x\n")}
        if i == 2:
            changes["apps/side.yaml"] = ("100644", b"side\n")  # what merging side brings
        stream.commit(f"feature/{i}", tip, changes, merging=side if i == 2 else None)
    stream.run(remote.path)
    branches = [f"feature/{i}" for i in range(5)]

    both = merge_both(branches)

    assert both.trials == 3  # the merge and the two after it
    assert remote.show("main", "apps/side.yaml") == b"side\n"


def test_a_push_during_a_plain_batch_has_the_chain_made_again_on_it(
    host: LocalHost, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    numbers = open_pulls(host, nested_branches(remote, 5))
    pushed: list[str] = []
    run = host._git.run

    def racing(*args: str, **kwargs: Any) -> tuple[int, str, str]:
        if args[:2] == ("update-ref", "-m") and not pushed:
            pushed.append(remote.commit({"clusters/prod/ml/wisdom/extra-3.yaml": "mine\n"}))
        return run(*args, **kwargs)

    monkeypatch.setattr(host._git, "run", racing)
    results = host.merge_many([(n, f"merge #{n}") for n in numbers])

    # The human's file is the fourth pull request's too: git finds the conflict on retry.
    merged = [isinstance(r, MergeResult) and r.merged for r in results]
    assert merged == [True, True, True, False, True]
    assert remote.show("main", "clusters/prod/ml/wisdom/extra-3.yaml") == b"mine\n"
    assert remote.log("main", "%P", "--first-parent", "-4")[-1].split()[0] == pushed[0]
    fsck(remote.path)


def test_a_sha256_repository_merges_through_git(
    tmp_path: Path, clock: Clock, git_calls: list[str]
) -> None:
    bare = bare_repository(tmp_path / "remote.git", object_format="sha256")
    stream = Stream()
    base = stream.commit("main", None, {"README": ("100644", b"hi\n")})
    for i in range(5):
        stream.commit(f"feature/{i}", base, {f"apps/{i}/values.yaml": ("100644", b"x\n")})
    stream.run(bare)
    host = LocalHost(bare, clock=clock)
    numbers = open_pulls(host, [f"feature/{i}" for i in range(5)])
    git_calls.clear()

    results = host.merge_many([(n, f"merge #{n}") for n in numbers])

    assert all(isinstance(r, MergeResult) and r.merged for r in results)
    assert git_calls.count("merge-tree") == 5
    listing = git("--git-dir", str(bare), "ls-tree", "-r", "--name-only", "main").split("\n")
    assert [p for p in listing if p] == ["README", *(f"apps/{i}/values.yaml" for i in range(5))]
    fsck(bare)


# -- 3. mergeable_many --------------------------------------------------------------------------


def test_mergeable_many_answers_as_git_does_for_every_kind_of_pull_request(
    host: LocalHost,
    remote: Remote,
    clock: Clock,
    git_calls: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notes = "".join(f"note {i}\n" for i in range(10))
    start = remote.commit({"notes.txt": notes})
    stream = Stream()
    tip = stream.commit(
        "main",
        start,
        {
            "clusters/prod/ml/iris/v1.yaml": ("100644", b"theirs\n"),
            "notes.txt": ("100644", notes.replace("note 1", "one").encode()),
        },
    )

    def branch(name: str, changes: Mapping[str, Entry | None], *, on: str = start) -> str:
        stream.commit(name, on, changes)
        return name

    def values(i: int) -> dict[str, Entry | None]:
        return {f"apps/{i}/deep/values.yaml": ("100644", b"x\n")}

    names = [
        branch("plain/0", values(0)),  # on the commit before main's tip
        branch("plain/1", values(1)),
        branch("plain/2", values(2), on=tip),
        branch("plain/3", values(3), on=tip),
        branch("conflicting", {"clusters/prod/ml/iris/v1.yaml": ("100644", b"mine\n")}),
        branch("clean-overlap", {"notes.txt": ("100644", notes.replace("8", "eight").encode())}),
        branch("deleting", {"policies/wisdom.yaml": None, "apps/new.yaml": ("100644", b"y\n")}),
        branch("closed", {"apps/closed.yaml": ("100644", b"z\n")}),
    ]
    stream.run(remote.path)
    *plain, conflicting, clean_overlap, deleting, closed = open_pulls(host, names)
    host.close(closed, comment="not this one")
    git_host = git_only_copy(remote.path, clock)
    numbers = [*plain, conflicting, clean_overlap, deleting, closed, 99, plain[0]]

    def shown(answers: list[bool | RolloutError | None], bare: Path) -> list[object]:
        return [
            f"{type(a).__name__}: {a}".replace(str(bare), "<bare>")
            if isinstance(a, Exception)
            else a
            for a in answers
        ]

    git_calls.clear()
    answers = shown(host.mergeable_many(numbers), host.bare)
    # Every open one's trial merge, in as many ``merge-tree --stdin`` processes as run at once.
    assert 1 <= git_calls.count("merge-tree") <= TRIAL_MERGES_AT_ONCE
    with monkeypatch.context() as patch:
        patch.setattr(local, "PLAIN_FROM", GIT_ONLY)
        assert shown(git_host.mergeable_many(numbers), git_host.bare) == answers
    refused = "HostError: no pull request #99 in <bare>"
    assert answers == [True, True, True, True, False, True, True, None, refused, True]


# -- 4. treemerge --------------------------------------------------------------------------------


@dataclass
class Odb:
    """Trees read and written by git itself."""

    bare: Path

    def read(self, oid: str) -> bytes:
        return subprocess.run(
            ["git", "--git-dir", str(self.bare), "cat-file", "tree", oid],
            check=True,
            capture_output=True,
        ).stdout

    def blob(self, content: bytes) -> str:
        out = subprocess.run(
            ["git", "--git-dir", str(self.bare), "hash-object", "-w", "--stdin"],
            input=content,
            check=True,
            capture_output=True,
        )
        return out.stdout.decode().strip()

    def write(self, body: bytes) -> str:
        # Stored as given (not re-sorted as mktree would): a wrong order is a wrong id.
        out = subprocess.run(
            ["git", "--git-dir", str(self.bare), "hash-object", "-t", "tree", "-w", "--stdin"],
            input=body,
            check=True,
            capture_output=True,
        )
        return out.stdout.decode().strip()

    def write_tree(self, tree: str, changes: Sequence[Change], index: Path) -> str:
        """`tree` with `changes` made, by ``git read-tree``, ``update-index``, ``write-tree``."""
        env = {**os.environ, "GIT_INDEX_FILE": str(index)}
        base = ["git", "--git-dir", str(self.bare)]
        subprocess.run([*base, "read-tree", tree], env=env, check=True)
        # "<mode> <object>\t<path>", mode 0 removes the path.
        records = [f"{c.mode or 0} {c.oid or '0' * 40}\t{c.path}\0" for c in changes]
        update = [*base, "update-index", "-z", "--index-info"]
        subprocess.run(update, input=raw("".join(records)), env=env, check=True)
        out = subprocess.run([*base, "write-tree"], env=env, capture_output=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.decode().strip()


def test_parse_diffs_reads_what_diff_tree_writes(tmp_path: Path) -> None:
    bare = bare_repository(tmp_path / "repo.git")
    stream = Stream()
    c0 = stream.commit(
        "main",
        None,
        {
            "dir/old.txt": ("100644", b"old\n"),
            "gone.txt": ("100644", b"gone\n"),
            "keep.txt": ("100644", b"keep\n"),
            "typed": ("100644", b"file\n"),
        },
    )
    spaced = "dir/with space é ñ.txt"
    latin = "dir/caf\udce9"  # not UTF-8
    c1 = stream.commit("main", c0, {spaced: ("100644", b"new\n"), latin: ("100644", b"l\n")})
    c2 = stream.commit("main", c1, {})  # an empty diff
    c3 = stream.commit(
        "main",
        c2,
        {
            "dir/old.txt": ("100755", b"old\n"),
            "gone.txt": None,
            "keep.txt": ("100644", b"kept\n"),
            "typed": ("120000", b"keep.txt"),
        },
    )
    shas = stream.run(bare)
    lines = [shas[c1], shas[c2], shas[c3], f"{shas[c3]} {shas[c0]}"]
    out = subprocess.run(
        ["git", "--git-dir", str(bare), "diff-tree", "--stdin", "--always", "-r", "-z"],
        input="".join(f"{line}\n" for line in lines).encode(),  # git skips an unended line
        check=True,
        capture_output=True,
    ).stdout

    diffs = treemerge.parse_diffs(out, len(lines))

    added = [Change(latin, "100644", blob_id(b"l\n")), Change(spaced, "100644", blob_id(b"new\n"))]
    later = [
        Change("dir/old.txt", "100755", blob_id(b"old\n")),
        Change("gone.txt", "", ""),
        Change("keep.txt", "100644", blob_id(b"kept\n")),
        Change("typed", "120000", blob_id(b"keep.txt")),
    ]
    assert diffs == [added, [], later, sorted([*added, *later], key=lambda c: raw(c.path))]
    assert [c.deleted for c in later] == [False, True, False, False]
    with pytest.raises(ValueError, match="5 lines"):
        treemerge.parse_diffs(out, 5)


@pytest.mark.parametrize(
    ("ours", "theirs", "apart"),
    [
        (["a/b"], ["a/b"], False),
        (["a"], ["a/b"], False),  # a file where the other side has a folder
        (["a/b"], ["a"], False),  # and the other way round
        (["a/b/c/d"], ["a/b"], False),
        (["a/b"], ["a/b/c/d"], False),
        (["a/b"], ["a/bc"], True),  # siblings with a common prefix
        (["a/bc"], ["a/b"], True),
        (["a/b"], ["a/b.txt", "a/b-c", "ab"], True),
        (["a b/c"], ["a"], True),
        (["x", "y/z"], ["q", "y"], False),
        ([], ["a"], True),
        (["a"], [], True),
    ],
)
def test_apart(ours: list[str], theirs: list[str], apart: bool) -> None:
    assert treemerge.Touched(theirs).meets(ours) is not apart
    assert treemerge.Touched(ours).meets(theirs) is not apart


def test_touched_keeps_track_of_paths_added_later() -> None:
    touched = treemerge.Touched(["a/b/c"])
    assert touched.meets(["a"]) and touched.meets(["a/b"]) and touched.meets(["a/b/c/d"])
    assert not touched.meets(["a/bc", "a/b.c", "a/c", "b", "a b/c"])
    assert not touched.meets(["q/r"]) and not touched.meets([])
    touched.add(["q/r"])
    assert touched.meets(["q"]) and touched.meets(["q/r"]) and touched.meets(["x", "q/r/s"])
    assert not touched.meets(["q/rs", "qq"])
    assert not treemerge.Touched().meets(["a", "a/b"])


@pytest.fixture
def odb(tmp_path: Path) -> Iterator[tuple[Odb, str]]:
    """A repository, and a tree of nested folders in it."""
    bare = bare_repository(tmp_path / "repo.git")
    stream = Stream()
    stream.commit(
        "main",
        None,
        {
            "x-y": ("100644", b"1\n"),
            "x.txt": ("100644", b"2\n"),  # sorts before the folder x: "x/" > "x."
            "x/a": ("100644", b"3\n"),
            "x/ü ñ/b": ("100755", b"4\n"),
            "x/caf\udce9": ("100644", b"5\n"),
            "lonely/only/file": ("100644", b"6\n"),
            "link": ("120000", b"x/a"),
        },
    )
    stream.run(bare)
    yield Odb(bare), git("--git-dir", str(bare), "rev-parse", "main^{tree}").strip()


Edit = tuple[str, bytes | None, str]
"""A change to make: its path, the new contents (None deletes it) and mode."""


def edit(path: str, content: bytes | None, mode: str = "100644") -> Edit:
    return path, content, mode


@pytest.mark.parametrize(
    "edits",
    [
        pytest.param([edit("new/deeper/deepest é/f", b"n\n"), edit("x/new", b"m\n")], id="add"),
        pytest.param(
            [
                edit("x/a", b"changed\n"),
                edit("x/ü ñ/b", b"4\n", "100644"),  # no longer executable
                edit("x.txt", b"x/a", "120000"),  # a file becomes a symlink
                edit("link", b"changed\n", "100755"),  # and a symlink an executable
                edit("x/caf\udce9", b"not UTF-8\n"),
            ],
            id="modify",
        ),
        pytest.param([edit("lonely/only/file", None)], id="delete-empties-folders"),
        pytest.param([edit("x/caf\udce9", None), edit("x/a", None)], id="delete-keeps-folder"),
        pytest.param([], id="nothing"),
    ],
)
def test_apply_makes_the_tree_write_tree_makes(
    odb: tuple[Odb, str], edits: list[Edit], tmp_path: Path
) -> None:
    repo, tree = odb
    changes = [
        Change(path, "", "") if content is None else Change(path, mode, repo.blob(content))
        for path, content, mode in edits
    ]
    expected = repo.write_tree(tree, changes, tmp_path / "index")
    assert treemerge.apply(tree, changes, read=repo.read, write=repo.write) == expected
    fsck(repo.bare)


def test_apply_refuses_a_folder_where_the_tree_has_a_file(odb: tuple[Odb, str]) -> None:
    repo, tree = odb
    for path in ("x.txt/inner", "x/a/deeper/file"):
        with pytest.raises(ValueError, match="is a file where a change needs a folder"):
            new = Change(path, "100644", repo.blob(b"n\n"))
            treemerge.apply(tree, [new], read=repo.read, write=repo.write)


@pytest.mark.parametrize(
    "paths",
    [
        pytest.param(["new/deeper/deepest é/f", "x/new"], id="new-folders"),
        pytest.param(["x/a", "x/ü ñ/b", "x.txt", "link", "x/caf\udce9"], id="existing"),
        pytest.param(["lonely/only/file", "x/ü ñ/b/under-a-file"], id="deep-and-through-a-file"),
        pytest.param([], id="nothing"),
    ],
)
def test_trees_along_reads_the_trees_apply_reads_a_level_at_a_time(
    odb: tuple[Odb, str], paths: list[str]
) -> None:
    repo, tree = odb
    changes = [Change(path, "100644", repo.blob(b"n\n")) for path in paths]
    read: list[str] = []

    def recording(oid: str) -> bytes:
        read.append(oid)
        return repo.read(oid)

    with contextlib.suppress(ValueError):  # a file where a folder is needed: read up to there
        treemerge.apply(tree, changes, read=recording, write=repo.write)
    calls: list[list[str]] = []

    def read_many(oids: Sequence[str]) -> dict[str, bytes]:
        calls.append(list(oids))
        return {oid: repo.read(oid) for oid in oids}

    found = treemerge.trees_along(tree, paths, read_many=read_many)

    assert found == {oid: repo.read(oid) for oid in read}
    deepest = max((p.count("/") for p in paths), default=0)
    assert len(calls) <= deepest + 1
    assert sum(len(c) for c in calls) == len(set(read))


def test_object_reader_reads_many_objects_in_one_go(odb: tuple[Odb, str]) -> None:
    repo, tree = odb
    listed = git("--git-dir", str(repo.bare), "rev-list", "--objects", "--no-object-names", "--all")
    oids = listed.split()
    assert tree in oids and len(oids) > 10
    reader = ObjectReader(repo.bare)
    try:
        many = reader.read_many([*oids, *oids])  # asked twice, read once
        assert many == {oid: reader.read(oid) for oid in oids}
    finally:
        reader.close()


def test_object_reader_fails_on_a_missing_object_without_waiting_for_the_rest(
    odb: tuple[Odb, str],
) -> None:
    """Far more requests than a pipe holds follow the missing object: reading stops there,
    and the helper writing the requests is not left waiting for ever."""
    repo, tree = odb
    missing = "0" * 40
    fillers = [f"{i + 1:040x}" for i in range(20_000)]
    reader = ObjectReader(repo.bare)
    failures: list[BaseException] = []

    def ask() -> None:
        try:
            reader.read_many([tree, missing, *fillers])
        except GitWriteError as err:
            failures.append(err)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(timeout=30)

    assert not asking.is_alive()  # (before `close`, which would wait as long)
    reader.close()
    assert [str(f) for f in failures] == [f"object {missing} cannot be read in {repo.bare}"]


def test_packed_objects_of_every_size_read_back_as_git_reads_them(tmp_path: Path) -> None:
    """Small objects are deflated with a window of their own size (`objects._deflate`):
    git reads them, and the pack passes `git fsck`."""
    bare = bare_repository(tmp_path / "repo.git")
    rng = random.Random(3)
    sizes = [0, 1, 255, 256, 511, 512, 4095, 4096, 4097, 70_000]
    bodies = [
        bytes(rng.choice(b"kind: Deployment\n") for _ in range(n)) if i % 2 else rng.randbytes(n)
        for i, n in enumerate(sizes)
        for _ in range(2)
    ]
    store = PackBuffer()
    oids = [store.add(b"blob", body) for body in bodies]
    store.write(bare / "objects")

    for oid, body in zip(oids, bodies, strict=True):
        assert oid == blob_id(body)
        out = subprocess.run(
            ["git", "--git-dir", str(bare), "cat-file", "blob", oid],
            check=True,
            capture_output=True,
        ).stdout
        assert out == body
    fsck(bare)
