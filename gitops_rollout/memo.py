"""The pass memo: a rollout standing still is not planned again while nothing it depends on moved.

Most of a large fleet is Idle with one version most of the time, yet every pass would parse its
policy, read its routing file, decide, render and compare the result with the main branch, only
to find nothing to do. After a pass, each policy whose every rollout stood still is remembered
with the pass's decisions and a digest of everything those decisions were made from; a later
pass (in any process: the memo is a file next to the workspace's clone) that finds the same
digest reports the remembered decisions instead of making them again.

Standing still means, for every cluster of the policy: the recorded phase and the decided one are
time-independent (Idle, RolledBack, Paused), the decision is to do nothing or to hold, the
rollout has no problems and is not waiting for a verdict, the rendered files equal the main
branch's (no change set), and no pull request is open on its branch. Its digest covers:

- the policy file's blob id (so its content and line numbers), the policy's name and clusters;
- per cluster: whether the cluster can be reached (and why not), its manifest problems, every
  version of the model as the inventory sees it (manifest fields and readiness), and the blob ids
  of the rollout's bot-owned folder (its recorded state);
- the set of cluster folders, and a fingerprint of this package's code (a new release or a local
  change decides anew).

An entry is also dropped when a pull request is open on the rollout's branch, and every
remembered policy takes part in the uniqueness check of names and (cluster, model) pairs (a clash
loads everything again). Time is not an input: the eligible phases do not read the clock. The
memo is used only for a pass over every policy or a named subset of them, without operator
commands and cluster filters; `tests/bench/test_memo.py` checks that memoised passes and full
passes decide alike.

The memo is three files next to the clone. The memo file proper (`SUFFIX`) is small and
written whole: what the entries were decided from (`_Standing`), remembered mergeability, and
the mark of the entry log (`ENTRIES_SUFFIX`), which holds the entries by policy file: a pass
appends a frame with the entries that changed (`_EntryLog`, whose docstring says why a crash
between the two writes at worst leaves the entries unused). A parse log (`PARSED_SUFFIX`) keeps
parse results by blob id, so the next process does not parse them again: every manifest, and
the policies that are planned again (not remembered); a pass appends what it parsed anew
(`_ParseLog`), on a thread while git pushes (`keep_parses`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import pickle
import tempfile
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol, Self, TypeVar

from gitops_rollout import planning, repository
from gitops_rollout.errors import RolloutError
from gitops_rollout.fingerprint import code_fingerprint as _code
from gitops_rollout.gitops.changeset import ChangeSet
from gitops_rollout.gitops.hosts.base import (
    GitHost,
    MergeResult,
    PullRequest,
    PullRequestDraft,
    PullState,
    mergeable_all,
)
from gitops_rollout.gitops.repo import BRANCH_PREFIX
from gitops_rollout.inventory.manifests import ManifestCache, manifest_place, version_key
from gitops_rollout.planning import Planned, RolloutKey
from gitops_rollout.repository import Facts, PolicySummary
from gitops_rollout.state import Phase, rollout_dir
from gitops_rollout.transitions import Action
from gitops_rollout.tree import Tree

log = logging.getLogger(__name__)

FORMAT = 7
"""Bumped when the files' layout changes."""

STILL = (Phase.IDLE, Phase.ROLLED_BACK, Phase.PAUSED)
"""Phases whose next decision does not depend on the time."""

SUFFIX = ".memo"
"""The memo file: what the entries were decided from, and the mark of the entry log."""

ENTRIES_SUFFIX = ".entries"
"""Beside the memo: its entries, by policy file (`_EntryLog`)."""

PARSED_SUFFIX = ".parsed"
"""Beside the memo: the parse caches' entries (`_ParseLog`)."""

COMPACT_MIN = 1_000
"""Records that no longer count (entries overwritten or removed since, removals, keys no
longer wanted) that a log (`_Log`) keeps at most, or a quarter of the entries wanted if more,
before it is written anew."""


class DecisionLike(Protocol):
    """`reconcile.Decision`, as far as the memo reads it."""

    cluster: str
    namespace: str
    model: str
    action: str
    outcome: str
    pr: int | None

    def as_json(self) -> dict[str, Any]: ...


D = TypeVar("D", bound=DecisionLike)


class _Doc(NamedTuple):
    """One remembered policy: what it was decided from, and its decisions in cluster order."""

    summary: tuple[str, str, tuple[str, ...], str, str, int]
    """`PolicySummary` fields."""
    inputs: str
    decisions: tuple[tuple[Any, ...], ...]
    """Decision field values, in the order of the memo's `fields`."""


class _File(NamedTuple):
    """A policy file all of whose policies stood still."""

    blob: str
    docs: tuple[_Doc, ...]


class PassMemo:
    """The memo of one workspace for one pass (a `repository.Skipper`)."""

    def __init__(
        self,
        path: Path | None,
        caches: repository.Caches,
        stored: Mapping[str, Any] | None = None,
        open_heads: frozenset[str] | None = None,
        only: frozenset[str] | None = None,
    ) -> None:
        self.path = path
        self.caches = caches
        """Parse caches for `repository.load` (manifests persisted with the memo)."""
        stored = stored or {}
        self._files: dict[str, tuple[Any, ...]] = stored.get("files", {})
        """Plain tuples as stored (`_File` fields, `_Doc` fields): cheap to read."""
        self._fields: tuple[str, ...] = stored.get("fields", ())
        self._stored_standing: tuple[str, str | None, bytes] | None = stored.get("standing")
        """What the stored entries were decided from, part by part (`_Standing.kept`): its
        versions are unpickled only when the commit read is the same or `_quiet` needs them
        (`_before`)."""
        self._stored_before: _Standing | None = None
        self._stored_checks: dict[int, tuple[str, str, bool]] = stored.get("merge_checks", {})
        self._stored_paths: dict[int, tuple[str, ...]] = stored.get("merge_paths", {})
        self._open = open_heads
        self._only = only
        self._hits: dict[str, tuple[Any, ...]] = {}
        """The entries this pass took, as stored (`_File` fields)."""
        self._planned: list[Any] | None = None
        self._standing: _Standing | None = None
        self._standing_of: int | None = None
        self._quiet_of: int | None = None
        self._quiet_now: _Quiet | None = None
        self._changes_since: Callable[[str], Sequence[_Change] | None] | None = None
        self._key_of: tuple[int, str] | None = None
        self._listed: _ListedOnce | None = None
        self._parse_log: _ParseLog | None = None
        """Where the parse caches' entries are kept for the next process (`open` sets it)."""
        self._entry_log: _EntryLog | None = None
        """The file the entries (`_files`) were read from (`open` sets it)."""
        self._keeping: threading.Thread | None = None
        """Writing the parse log (`keep_parses`)."""

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def disabled(cls, caches: repository.Caches | None = None) -> PassMemo:
        """A memo that skips nothing and remembers nothing."""
        return cls(None, caches if caches is not None else repository.Caches())

    @classmethod
    def open(
        cls,
        git_dir: Path,
        *,
        host: GitHost,
        base: str,
        caches: repository.Caches | None = None,
        only: frozenset[str] | None = None,
        base_rev: str | None = None,
        changed_since: Callable[[str], frozenset[str] | None] | None = None,
        changes_since: Callable[[str], Sequence[_Change] | None] | None = None,
    ) -> PassMemo:
        """The memo kept next to the workspace clone `git_dir` (empty when there is none or it
        cannot be read), for a pass over every policy or those named in `only`. Lists the
        host's open pull requests: a rollout with one is planned. `base_rev`, the commit the
        pass reads the base branch at, keys remembered mergeability (`_ListedOnce`), and
        `changed_since` says what the base changed since an earlier commit, and
        `changes_since` with the blob ids on either side."""
        path = git_dir.parent / (git_dir.name.removesuffix(".git") + SUFFIX)
        caches = caches if caches is not None else repository.Caches()
        stored, entry_log = _read(path)
        parse_log, parsed = _ParseLog.read(path.with_suffix(PARSED_SUFFIX))
        for (kind, *rest), value in parsed.items():
            target: dict[Any, Any] = caches.manifests.entries if kind == "m" else caches.policies
            target.setdefault(tuple(rest), value)
        key = (BRANCH_PREFIX, base)
        try:
            pulls = host.pulls_for_prefix(BRANCH_PREFIX, base=base)
        except RolloutError as err:
            # The pass's own listing (in `publish`) fails with this same error, as it would
            # have without the memo; the host is not asked twice.
            log.info("pass memo not used: listing pull requests failed: %s", err)
            memo = cls(path, caches, stored, None, only)
            memo._listed = _ListedOnce(host, key, error=err)
            memo._parse_log, memo._entry_log = parse_log, entry_log
            return memo
        heads = frozenset(p.head for p in pulls if p.state is PullState.OPEN)
        memo = cls(path, caches, stored, heads, only)
        memo._parse_log, memo._entry_log = parse_log, entry_log
        memo._changes_since = changes_since
        memo._listed = _ListedOnce(
            host,
            key,
            pulls,
            checks=(stored or {}).get("merge_checks", {}),
            base_rev=base_rev,
            paths=(stored or {}).get("merge_paths", {}),
            changed_since=changed_since,
        )
        return memo

    def host(self, host: GitHost) -> GitHost:
        """`host`, answering the pass's one listing of pull requests with the list the memo
        read at the start (one listing per pass, as `GitHost` expects)."""
        return self._listed if self._listed is not None else host

    def touches(self, number: int, paths: Sequence[str]) -> None:
        """Pull request `number`, opened or updated this pass, changes `paths`."""
        if self._listed is not None:
            self._listed.touches(number, paths)

    def open_pulls(self) -> list[PullRequest]:
        """The pull requests open at the start of the pass (none when the listing failed or
        the memo is disabled)."""
        if self._listed is None:
            return []
        return self._listed.open_pulls()

    # -- skipping (repository.Skipper) --------------------------------------------------------

    def skip(self, files: Mapping[str, str], facts: Facts) -> dict[str, list[PolicySummary]]:
        taken: dict[str, list[PolicySummary]] = {}
        if self._open is None:
            return taken
        # Nothing moved since the pass that remembered the entries (same commit, inventory,
        # code): every entry holds, and only pull requests need a look.
        unmoved = self._unmoved(facts)
        quiet = None if unmoved else self._quiet(facts)
        busy = _rollouts_of(self._open)
        only = self._only
        for path, blob in files.items():
            raw = self._files.get(path)
            if raw is None or raw[0] != blob:
                continue
            docs: list[tuple[Any, ...]] = raw[1]
            summaries = [PolicySummary._make(doc[0]) for doc in docs]
            if only is not None and any(s.name not in only for s in summaries):
                continue
            if all(
                self._holds(s, inputs, facts, busy, quiet, unmoved)
                for s, (_, inputs, _) in zip(summaries, docs, strict=True)
            ):
                self._hits[path] = raw
                taken[path] = summaries
        return taken

    def _holds(
        self,
        s: PolicySummary,
        inputs: str,
        facts: Facts,
        busy: set[tuple[str, str, str]],
        quiet: _Quiet | None,
        unmoved: bool,
    ) -> bool:
        """Whether the remembered decisions of policy `s` (made from `inputs`) still hold: no
        pull request of its rollouts is open, and none of their inputs moved (`unmoved`: the
        world did not; `quiet`: what did cannot reach them; else their digest says so)."""
        ns, model = s.routing_namespace, s.model
        if any((cluster, ns, model) in busy for cluster in s.clusters):
            return False
        if unmoved or (
            quiet is not None and all(quiet.untouched(c, ns, model) for c in s.clusters)
        ):
            return True
        return self._inputs(s, facts) == inputs

    def _inputs(self, s: PolicySummary, facts: Facts) -> str:
        """Digest of everything the policy's decisions are made from, besides its file."""
        tree, inventory = facts.tree, facts.inventory
        parts: list[object] = [self._pass_key(facts), s.name, s.model, s.clusters]
        parts += [s.routing_namespace, s.line]
        for cluster in s.clusters:
            folder = RolloutKey(cluster, s.routing_namespace, s.model).folder
            versions = inventory.versions(cluster, s.model)
            parts.append(
                (
                    cluster,
                    inventory.unreachable.get(cluster),
                    facts.broken.get(cluster, []),
                    [version_key(v, tree.blob_id(v.file)) for v in versions],
                    [(p, tree.blob_id(p)) for p in tree.paths(folder)],
                )
            )
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    def _pass_key(self, facts: Facts) -> str:
        """The memo's format, the code and the set of clusters (once per inventory)."""
        if self._key_of is None or self._key_of[0] != id(facts.inventory):
            clusters = ",".join(sorted(facts.inventory.clusters))
            self._key_of = (id(facts.inventory), f"{FORMAT}:{_code()}:{clusters}")
        return self._key_of[1]

    def _unmoved(self, facts: Facts) -> bool:
        """Whether every input of every rollout is what the stored entries were decided from:
        the commit (policies, manifests, routing files), the inventory (versions, readiness,
        reachability), the manifest problems and the code. Never for a tree not a commit."""
        return self._same_standing(self._standing_now(facts))

    def _same_standing(self, now: _Standing) -> bool:
        kept = self._stored_standing
        return (
            kept is not None
            and now.rev is not None
            and (kept[0], kept[1]) == (now.rest, now.rev)
            and self._before().versions == now.versions
        )

    def _before(self) -> _Standing:
        """The stored `_Standing`, read once (only when there is one)."""
        if self._stored_before is None:
            assert self._stored_standing is not None
            self._stored_before = _Standing.from_kept(self._stored_standing)
        return self._stored_before

    def _standing_now(self, facts: Facts) -> _Standing:
        """This pass's `_Standing` (once per inventory)."""
        if self._standing is None or self._standing_of != id(facts.inventory):
            self._standing_of = id(facts.inventory)
            self._standing = _Standing.of(self._pass_key(facts), facts)
        return self._standing

    def _quiet(self, facts: Facts) -> _Quiet | None:
        """What moved since the pass that remembered the entries, when only the commit and the
        readiness of some versions did (once per inventory); None: every entry is checked by
        its digest."""
        if self._quiet_of != id(facts.inventory):
            self._quiet_of = id(facts.inventory)
            self._quiet_now = None
            kept, now = self._stored_standing, self._standing_now(facts)
            if (
                kept is not None
                and kept[0] == now.rest
                and kept[1] is not None
                and now.rev is not None
                and self._changes_since is not None
            ):
                changes = self._changes_since(kept[1])
                if changes is not None:
                    self._quiet_now = _Quiet.of(changes, self._before(), now, self.caches.manifests)
        return self._quiet_now

    # -- reporting -----------------------------------------------------------------------------

    def decisions(
        self,
        view: repository.RepositoryView,
        planned: Sequence[Planned],
        decisions: list[D],
        make: Callable[..., D],
    ) -> list[D]:
        """The pass's decisions with the remembered ones in the places a full pass gives them
        (policies by file and line, clusters in policy order, removals last). `decisions` are
        the planned rollouts', one per `planned` entry in its order."""
        # What `load` finally skipped (it loads everything when skipped policies clash).
        skipped = {s.file for s in view.skipped}
        self._hits = {path: e for path, e in self._hits.items() if path in skipped}
        if len(decisions) != len(planned):
            # One decision per planned rollout is what `reconcile` builds; anything else is a
            # change this memo does not understand: remember nothing from this pass.
            self._planned = None
            self.path = None
            return decisions
        self._planned = list(zip(planned, decisions, strict=True))
        if not self._hits:
            return decisions
        ranked: list[tuple[tuple[int, str, int, int], D]] = []
        for index, (p, d) in enumerate(self._planned):
            t = p.transition
            if t is None:
                ranked.append(((1, "", 0, index), d))
                continue
            loaded = t.situation.loaded
            names = [c.name for c in loaded.policy.spec.clusters]
            ranked.append(((0, loaded.file, loaded.line, names.index(t.situation.cluster)), d))
        # Stored in the order of `make`'s parameters (a dataclass's `__match_args__`), the
        # values go in by position: ten thousand keyword dicts cost a hundredth of a second.
        fields = self._fields
        positional = fields == getattr(make, "__match_args__", None)
        for raw in self._hits.values():
            for doc in map(_Doc._make, raw[1]):
                _, _, _, _, file, line = doc.summary
                for i, values in enumerate(doc.decisions):
                    made = (
                        make(*values)
                        if positional
                        else make(**dict(zip(fields, values, strict=True)))
                    )
                    ranked.append(((0, file, line, i), made))
        ranked.sort(key=lambda item: item[0])
        return [d for _, d in ranked]

    # -- remembering ---------------------------------------------------------------------------

    def keep_parses(
        self, view: repository.RepositoryView, changesets: Mapping[RolloutKey, ChangeSet]
    ) -> None:
        """Begin writing this pass's parse results to the parse log, on a thread: they are
        known once the rollouts are planned, and while git pushes (`reconcile.publish`) the
        interpreter has time for the log's pickling (half a second for ten thousand parsed
        policies). `save` waits for it, or keeps them itself when nothing was pushed.

        Left out, as `save` leaves them out, are the policy files the memo is about to
        remember (their rollouts stand still, as far as is known before publishing: a pull
        request noted on one of them after all only costs the next pass its parse)."""
        if self._parse_log is None or self._planned is None or self._keeping is not None:
            return
        files: dict[str, bool] = {}
        for p, _ in self._planned:
            if p.transition is not None:
                file = p.transition.situation.loaded.file
                files[file] = files.get(file, True) and _standing(p, changesets, self._open)
        kept = {id(lp) for lp in view.policies.policies}
        remembered = set()
        for file, still in files.items():
            # As `save` asks too: every policy of the file planned, none with a problem.
            cached = self.caches.policies.get((file, view.tree.blob_id(file)))
            if still and cached and not cached[1] and all(id(lp) in kept for lp in cached[0]):
                remembered.add(file)
        parsed = self._parses(view, remembered)
        self._keeping = threading.Thread(
            target=self._parse_log.keep, args=(parsed,), name="gitops-rollout-parse-log"
        )
        self._keeping.start()

    def _parses(
        self, view: repository.RepositoryView, remembered: Collection[str]
    ) -> dict[tuple[str, ...], Any]:
        """What the parse log keeps for the next process: parse results by ("m"|"p", path,
        blob) of the tree's manifests and of the policy files planned this pass and not
        `remembered` (the next pass plans them again)."""
        parsed: dict[tuple[str, ...], Any] = {
            ("m", *k): v for k, v in _current_manifests(view.tree, self.caches.manifests).items()
        }
        for p, _ in self._planned or ():
            path = p.transition.situation.loaded.file if p.transition is not None else None
            if path is None or path in remembered:
                continue
            key = (path, view.tree.blob_id(path))
            if key in self.caches.policies:
                parsed[("p", *key)] = self.caches.policies[key]
        return parsed

    def _parses_kept(self, view: repository.RepositoryView, remembered: Collection[str]) -> None:
        """Wait for `keep_parses`' thread, or keep the parses now when none was begun. Parse
        results are kept whatever became of the pass: they are facts about blobs."""
        if self._keeping is not None:
            self._keeping.join()
        elif self._parse_log is not None and self._planned is not None:
            self._parse_log.keep(self._parses(view, remembered))

    def save(
        self,
        view: repository.RepositoryView,
        changesets: Mapping[RolloutKey, ChangeSet],
        *,
        failed: bool,
    ) -> None:
        """Remember the policies of this pass that stood still (nothing when the pass failed
        somewhere: a decision cut short by an error is no evidence). Writes nothing when
        nothing changed; else appends the entries that did to the entry log, and writes the
        small memo file anew (`_write`)."""
        if self.path is None or self._planned is None or failed:
            self._parses_kept(view, ())  # nothing is remembered: all are planned again
            return
        facts = Facts(view.tree, view.inventory, view.broken)
        groups: dict[int, list[tuple[Planned, DecisionLike]]] = {}
        for p, d in self._planned:
            if p.transition is not None:
                groups.setdefault(id(p.transition.situation.loaded), []).append((p, d))
        kept = {id(lp) for lp in view.policies.policies}
        planned_files = {
            p.transition.situation.loaded.file for p, _ in self._planned if p.transition
        }
        files: dict[str, tuple[Any, ...]] = dict(self._hits)
        if self._only is not None:
            # A pass over some policies: the others' entries stay, checked when they are used.
            for path, raw in self._files.items():
                if path not in planned_files and path in view.policy_paths:
                    files.setdefault(path, raw)
        fields = self._fields
        for path in planned_files:
            blob = view.tree.blob_id(path)
            cached = self.caches.policies.get((path, blob))
            if cached is None or cached[1] or not cached[0]:
                continue
            docs = []
            for loaded in cached[0]:
                group = groups.get(id(loaded), [])
                if (
                    id(loaded) not in kept
                    or len(group) != len(loaded.policy.spec.clusters)
                    or not all(_still(p, d, changesets, self._open) for p, d in group)
                ):
                    break
                summary = PolicySummary.of(loaded)
                rows = [d.as_json() for _, d in group]
                if not fields:
                    fields = tuple(rows[0])
                if any(tuple(row) != fields for row in rows):
                    break
                docs.append(
                    _Doc(
                        (*summary,),
                        self._inputs(summary, facts),
                        tuple(tuple(row.values()) for row in rows),
                    )
                )
            else:
                files[path] = _plain(_File(blob, tuple(docs)))
        self._parses_kept(view, files.keys())
        standing = self._standing_now(facts) if self._only is None else None
        checks = self._listed.current_checks() if self._listed is not None else {}
        paths = self._listed.current_paths() if self._listed is not None else {}
        if (
            files == self._files
            and standing is not None
            and self._same_standing(standing)
            and checks == self._stored_checks
            and paths == self._stored_paths
        ):
            return
        entry_log = self._entry_log
        if entry_log is None:
            entry_log = _EntryLog(self.path.with_suffix(ENTRIES_SUFFIX), {})
        _write(
            self.path,
            entry_log,
            files,
            {
                "fields": fields,
                "standing": standing.kept() if standing is not None else None,
                "merge_checks": checks,
                "merge_paths": paths,
            },
        )


_Change = tuple[str, str | None, str | None]
"""(path, blob id before, blob id now; None where absent): `gitops.repo.Workspace.changes_since`."""


_VersionNow = tuple[str, str, str, str | None, str | None, tuple[tuple[str, int], ...]]
"""A version's model, readiness, reason, live version, attached Service and its ports."""


@dataclass(frozen=True)
class _Standing:
    """What every remembered decision is made from, besides the policy files, in parts."""

    rest: str
    """Digest of the pass key (format, code, clusters), unreachable clusters and manifest
    problems."""
    rev: str | None
    """The commit read; None for a tree that is not one."""
    versions: dict[tuple[str, str, str, str], _VersionNow]
    """{(cluster, kind, namespace, name): (model, readiness, reason, live version, Service,
    ports)} of every version in the inventory: what `scan` and `with_status` set besides what
    a version's own manifest says."""

    @classmethod
    def of(cls, pass_key: str, facts: Facts) -> _Standing:
        inventory = facts.inventory
        rest = hashlib.sha256(pass_key.encode())
        rest.update(repr(sorted(inventory.unreachable.items())).encode())
        rest.update(repr(sorted(facts.broken.items())).encode())
        versions = {
            (cluster, v.ref.kind, v.ref.namespace, v.ref.name): (
                v.model,
                v.status.readiness.value,
                v.status.reason,
                v.status.version,
                v.service_name,
                tuple((port.name, port.port) for port in v.services),
            )
            for cluster, models in sorted(inventory.clusters.items())
            for found in models.models.values()
            for v in found
        }
        rev = getattr(facts.tree, "rev", None)
        return cls(rest.hexdigest(), rev if isinstance(rev, str) else None, versions)

    def kept(self) -> tuple[str, str | None, bytes]:
        """What the memo file keeps: the versions pickled apart, read only when needed."""
        return (self.rest, self.rev, pickle.dumps(self.versions, protocol=5))

    @classmethod
    def from_kept(cls, kept: tuple[str, str | None, bytes]) -> _Standing:
        # Written by this program into its own cache directory (see `_read`).
        return cls(kept[0], kept[1], pickle.loads(kept[2]))  # noqa: S301


def _rollouts_of(heads: frozenset[str]) -> set[tuple[str, str, str]]:
    """(cluster, namespace, model) of each bot branch among `heads` (`RolloutKey.branch`)."""
    found: set[tuple[str, str, str]] = set()
    for head in heads:
        parts = head.removeprefix(BRANCH_PREFIX).split("/")
        if head.startswith(BRANCH_PREFIX) and len(parts) == 3:
            found.add((parts[0], parts[1], parts[2]))
    return found


@dataclass(frozen=True)
class _Quiet:
    """What moved between two passes whose only differences are the commit and the readiness
    of some versions: a remembered rollout none of whose inputs moved keeps its digest.

    A rollout's digest covers, per cluster, its own folder's files and the versions of its
    model (`_inputs`). Versions come from the cluster's manifest files, parsed by blob id:
    a changed manifest moves the models its old and new contents name. What is set on a
    version from outside its own manifest (the Service `scan` attaches from any file of the
    namespace, the status) is in `_Standing.versions`: a version whose value there moved
    moves its model. A manifest whose parse is not at hand moves its whole cluster. Manifest
    problems and unreachable clusters are in `_Standing.rest`, which must not move.
    """

    folders: frozenset[str]
    """Every folder a changed file lies in."""
    models: frozenset[tuple[str, str]]
    """(cluster, model) whose versions may have moved."""
    clusters: frozenset[str]
    """Clusters every rollout of which may have moved."""

    @classmethod
    def of(
        cls, changes: Sequence[_Change], before: _Standing, now: _Standing, parsed: ManifestCache
    ) -> _Quiet:
        folders: set[str] = set()
        models: set[tuple[str, str]] = set()
        clusters: set[str] = set()
        for path, old, new in changes:
            parts = path.split("/")
            folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
            place = manifest_place(path)
            if place is None:
                continue
            cluster = place[0]
            for blob in (old, new):
                found = parsed.entries.get((path, blob)) if blob is not None else None
                if blob is None:
                    continue
                if found is None:
                    clusters.add(cluster)
                    continue
                models.update((cluster, v.model) for v in found.versions)
        was_all, now_all = before.versions, now.versions
        for key, is_ in now_all.items():
            was = was_all.get(key)
            if was != is_:
                models.add((key[0], is_[0]))
                if was is not None:
                    models.add((key[0], was[0]))
        models.update((key[0], was_all[key][0]) for key in was_all.keys() - now_all.keys())
        return cls(frozenset(folders), frozenset(models), frozenset(clusters))

    def untouched(self, cluster: str, namespace: str, model: str) -> bool:
        """Whether nothing the rollout of `model` in `namespace` of `cluster` is decided from
        moved."""
        return (
            cluster not in self.clusters
            and (cluster, model) not in self.models
            and rollout_dir(cluster=cluster, namespace=namespace, model=model) not in self.folders
        )


class _Log:
    """A dict kept in a file of pickled frames, so that a pass that changed a few of its
    entries does not write them all again: ten thousand entries take from a fiftieth to a
    tenth of a second to pickle, and a pass that changed one percent of them should not pay
    that.

    The file is a header (`KIND`, `FORMAT`, `_code()` and a token naming this writing of the
    file), then frames `(changed, removed)`: the entries set and the keys dropped since the
    frame before. `keep` appends one frame with what changed, in one `write` (a frame cut
    short is where the next `read` stops). The file is written anew, whole (a temporary file,
    then `os.replace`, under a new token), only when it was missing, foreign or could not be
    read to its end, or when the records its frames hold that no longer count (entries
    overwritten or removed since, removals, keys no longer wanted) outnumber `COMPACT_MIN`
    and a quarter of the entries wanted.

    `EXACT`: a read gives back exactly the dict last kept; a changed value is written again
    and a key no longer wanted is written as removed. Otherwise a key names one value for
    good (parse results by blob id): only new keys are written, and keys no longer wanted are
    read back (where they are never asked for) until the file is written anew.
    """

    KIND: ClassVar[str]
    EXACT: ClassVar[bool]

    def __init__(
        self,
        path: Path,
        held: dict[Any, Any],
        *,
        records: int = 0,
        token: str = "",
        frames: int = 0,
        whole: bool = False,
    ) -> None:
        self.path = path
        self._held = held
        """What a read of the file gives."""
        self._records = records
        """Entries and removals in the file's frames, counting those that no longer count."""
        self._token = token
        self._frames = frames
        self._whole = whole
        """False: the file is missing, foreign or damaged, and is written anew."""

    @property
    def mark(self) -> tuple[str, int]:
        """The writing of the file and the number of its frames that hold what was last kept
        or read (what `read`'s `upto` takes)."""
        return (self._token, self._frames)

    @classmethod
    def read(cls, path: Path, upto: tuple[str, int] | None = None) -> tuple[Self, dict[Any, Any]]:
        """The log in `path` and the entries it holds. With `upto` (a `mark`), the entries of
        that many frames of that writing of the file, or none at all when the file is not
        that writing or ends before (frames beyond are left out, and the file is written anew
        by the next `keep`). Without, those of every frame up to a damaged one."""
        fresh = cls(path, {})
        entries: dict[Any, Any] = {}
        frames = records = 0
        token = ""
        try:
            with path.open("rb") as handle:
                # Written by this program into its own cache directory, under the workspace
                # lock; whoever can change it can change the clone next to it.
                header = pickle.load(handle)  # noqa: S301
                if (
                    not isinstance(header, tuple)
                    or len(header) != 4
                    or header[:3] != (cls.KIND, FORMAT, _code())
                ):
                    return fresh, {}
                token = header[3]
                if upto is not None and upto[0] != token:
                    return fresh, {}
                while handle.peek(1) and (upto is None or frames < upto[1]):
                    changed, removed = pickle.load(handle)  # noqa: S301
                    entries.update(changed)
                    for key in removed:
                        entries.pop(key, None)
                    frames += 1
                    records += len(changed) + len(removed)
                whole = not handle.peek(1)
        except FileNotFoundError:
            return fresh, {}
        except Exception as err:  # a damaged frame (a write cut short): keep what came before
            log.info("%s read up to a damaged frame: %s", path, err)
            whole = False
        if upto is not None and frames != upto[1]:
            return fresh, {}
        held = cls(path, entries, records=records, token=token, frames=frames, whole=whole)
        return held, entries

    def keep(self, wanted: Mapping[Any, Any]) -> bool:
        """Have the file hold `wanted` (as `EXACT` says); False when it could not be written
        (the file is then written anew next time)."""
        held = self._held
        removed: list[Any] = []
        if self.EXACT:
            changed = {
                k: v
                for k, v in wanted.items()
                if (old := held.get(k, _ABSENT)) is not v and old != v
            }
            removed = [k for k in held if k not in wanted]
        else:
            changed = {k: v for k, v in wanted.items() if k not in held}
        records = self._records + len(changed) + len(removed)
        try:
            if not self._whole or records - len(wanted) > max(COMPACT_MIN, len(wanted) // 4):
                self._rewrite(dict(wanted))
            elif changed or removed:
                with self.path.open("ab") as out:
                    # One write; a frame cut short is where the next `read` stops.
                    out.write(pickle.dumps((changed, removed), protocol=5))
                self._held = dict(wanted) if self.EXACT else held | changed
                self._records, self._frames = records, self._frames + 1
        except OSError as err:
            log.warning("could not write %s: %s", self.path, err)
            self._whole = False
            return False
        return True

    def _rewrite(self, wanted: dict[Any, Any]) -> None:
        token = os.urandom(8).hex()
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                pickle.dump((self.KIND, FORMAT, _code(), token), out, protocol=5)
                pickle.dump((wanted, []), out, protocol=5)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._held, self._records, self._whole = wanted, len(wanted), True
        self._token, self._frames = token, 1


_ABSENT = object()


class _ParseLog(_Log):
    """Parse results by key (("m", path, blob) for manifests, ("p", path, blob) for policies),
    kept for the next process. A key names one parse for good; those no longer wanted are read
    back into the parse caches, where they are never asked for."""

    KIND = "gitops-rollout parse log"
    EXACT = False


class _EntryLog(_Log):
    """The memo's entries (`_File` fields by policy file path), beside the memo file that says
    what they were decided from.

    The two files are written one after the other, so a crash can leave either one from the
    save before. The memo file (written whole, atomically, after the log) names the `mark` of
    the log that holds its entries, and `read` takes exactly the frames it names, or no
    entries at all:

    - a crash in or after the append, before the memo file is written: the log holds a frame
      (whole or cut short) that the memo file does not name; it is left out, and the entries
      are those the memo file's standing was decided with; the next save writes the log anew;
    - a crash after the log was written anew (a new token), before the memo file: the memo
      file names the earlier writing: no entry is used (the pass plans everything);
    - a log that ends before the frames named (a frame lost or cut short later, by the file
      system or by hand): no entry is used either.

    So a memo file is only ever read with the very entries it was written with, which the
    `unmoved` and `_Quiet` shortcuts rely on (they trust every entry decided under the stored
    standing without looking at its digest); at worst, entries are not used. Neither file is
    synced to disk, and nothing relies on the order in which the writes reach it: whichever
    of them a power loss keeps, the memo file finds the frames it names, or no entries.
    """

    KIND = "gitops-rollout memo entries"
    EXACT = True


def _plain(entry: _File) -> tuple[Any, ...]:
    """`entry` as the plain tuples the memo file holds (no classes to look up on reading)."""
    return (entry.blob, tuple(tuple(doc) for doc in entry.docs))


def _still(
    p: Planned,
    d: DecisionLike,
    changesets: Mapping[RolloutKey, ChangeSet],
    open_heads: frozenset[str] | None,
) -> bool:
    """True for a rollout that stands still (see the module docstring)."""
    return _standing(p, changesets, open_heads) and d.outcome == "none" and d.pr is None


def _standing(
    p: Planned, changesets: Mapping[RolloutKey, ChangeSet], open_heads: frozenset[str] | None
) -> bool:
    """`_still`, as far as it is known before publishing (which may note a pull request)."""
    t = p.transition
    if t is None or p.problems or changesets.get(p.key) is None or changesets[p.key]:
        return False
    s = t.situation
    return (
        t.action in (Action.NONE, Action.HOLD)
        and t.state.phase in STILL
        and s.stored is not None
        and not s.stored.hand_edited
        and not s.stored.problems
        and s.stored.state.phase in STILL
        and not s.problems
        and not s.needs_verdict
        and (open_heads is None or p.key.branch(BRANCH_PREFIX) not in open_heads)
    )


def orphans(view: repository.RepositoryView) -> list[Planned]:
    """`planning.orphans` for a view whose skipped policies still own their rollouts."""
    return planning.orphans(
        view.tree,
        view.policies,
        policy_paths=view.policy_paths,
        claimed=((c, s.routing_namespace, s.model) for s in view.skipped for c in s.clusters),
    )


class _ListedOnce:
    """A host whose first listing of pull requests is one already made (the memo's).

    Everything else goes to the host; attributes it does not define (a batching host's
    `open_many`, `merge_many`) are the host's own, so it batches when the host does."""

    def __init__(
        self,
        host: GitHost,
        key: tuple[str, str],
        pulls: list[PullRequest] | None = None,
        *,
        error: RolloutError | None = None,
        checks: Mapping[int, tuple[str, str, bool]] | None = None,
        base_rev: str | None = None,
        paths: Mapping[int, tuple[str, ...]] | None = None,
        changed_since: Callable[[str], frozenset[str] | None] | None = None,
    ) -> None:
        self._host = host
        self._key: tuple[str, str] | None = key
        self._pulls = pulls or []
        self._error = error
        self._heads = {p.number: p.head_sha for p in self._pulls if p.state is PullState.OPEN}
        self._base_rev = base_rev
        self._checks = {n: c for n, c in (checks or {}).items() if n in self._heads}
        self._paths = {n: ps for n, ps in (paths or {}).items() if n in self._heads}
        self._changed_since = functools.cache(changed_since) if changed_since else None

    def pulls_for_prefix(self, prefix: str, *, base: str) -> list[PullRequest]:
        if self._key == (prefix, base):
            self._key = None
            if self._error is not None:
                raise self._error
            return self._pulls
        return self._host.pulls_for_prefix(prefix, base=base)

    def open_or_update(self, draft: PullRequestDraft) -> PullRequest:
        return self._host.open_or_update(draft)

    def mergeable(self, number: int) -> bool | None:
        """The host's answer, remembered across passes by (head commit, base commit): whether
        two commits merge cleanly never changes, so a waiting pull request costs the host
        nothing while neither its branch nor the base branch moves (one git process on the
        local host, one API read on a forge, per waiting pull request and pass otherwise)."""
        [answer] = self.mergeable_many([number])
        if isinstance(answer, RolloutError):
            raise answer
        return answer

    def mergeable_many(self, numbers: Sequence[int]) -> list[bool | RolloutError | None]:
        """`mergeable` for each number: the remembered answers, and the host asked about the
        rest in one batch (`hosts.base.mergeable_all`)."""
        known: dict[int, bool | RolloutError | None] = {}
        ask: list[int] = []
        for number in dict.fromkeys(numbers):
            remembered = self._remembered(number)
            if remembered is None:
                ask.append(number)
            else:
                known[number] = remembered
        asked = mergeable_all(self._host, ask) if ask else []
        for number, answer in zip(ask, asked, strict=True):
            known[number] = answer
            head = self._heads.get(number)
            if head and self._base_rev and isinstance(answer, bool):
                self._checks[number] = (head, self._base_rev, answer)
        return [known[number] for number in numbers]

    def _remembered(self, number: int) -> bool | None:
        """The answer for `number` without asking the host, when it is known."""
        head = self._heads.get(number)
        known = self._checks.get(number)
        if not head or not self._base_rev or known is None:
            return None
        if known[:2] == (head, self._base_rev):
            return known[2]
        if self._still_clean(number, known, head):
            self._checks[number] = (head, self._base_rev, True)
            return True
        return None

    def _still_clean(self, number: int, known: tuple[str, str, bool], head: str) -> bool:
        """True when `number` merged cleanly onto an earlier base and the base has changed
        since only in files the pull request does not touch: a three-way merge can only
        conflict in files both sides changed (and a file and a folder of one name)."""
        paths = self._paths.get(number)
        if not known[2] or known[0] != head or not paths or self._changed_since is None:
            return False
        changed = self._changed_since(known[1])
        return changed is not None and not _overlap(changed, paths)

    def touches(self, number: int, paths: Sequence[str]) -> None:
        """Pull request `number`'s commit changes `paths` (what `_still_clean` compares)."""
        self._paths[number] = tuple(paths)

    def open_pulls(self) -> list[PullRequest]:
        return [p for p in self._pulls if p.state is PullState.OPEN]

    def current_checks(self) -> dict[int, tuple[str, str, bool]]:
        """Remembered answers for the pull requests open at the start of this pass."""
        return dict(self._checks)

    def current_paths(self) -> dict[int, tuple[str, ...]]:
        """The files each pull request open at the start of this pass (or opened in it)
        changes, where known."""
        return dict(self._paths)

    def comment(self, number: int, body: str) -> None:
        self._host.comment(number, body)

    def comments(self, number: int) -> list[str]:
        return self._host.comments(number)

    def merge(self, number: int, *, message: str) -> MergeResult:
        return self._host.merge(number, message=message)

    def close(self, number: int, *, comment: str = "") -> None:
        self._host.close(number, comment=comment)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


# -- the file ------------------------------------------------------------------------------------


def _current_manifests(tree: Tree, cache: ManifestCache) -> dict[tuple[str, str], Any]:
    """The parse cache's entries for files in `tree` (older versions are dropped)."""
    out = {}
    for key, parsed in cache.entries.items():
        try:
            current = tree.blob_id(key[0])
        except FileNotFoundError:
            continue
        if current == key[1]:
            out[key] = parsed
    return out


def _read(path: Path) -> tuple[dict[str, Any] | None, _EntryLog]:
    """The memo file at `path` with its entries under "files" (None when it is missing,
    foreign or damaged), and the entry log they were read from."""
    entry_log = _EntryLog(path.with_suffix(ENTRIES_SUFFIX), {})
    try:
        with path.open("rb") as handle:
            # The memo is written by this program into its own cache directory, under the
            # workspace lock; whoever can change it can change the clone next to it.
            data = pickle.load(handle)  # noqa: S301
    except FileNotFoundError:
        return None, entry_log
    except Exception as err:  # a damaged or foreign file: start afresh
        log.info("pass memo %s not used: %s", path, err)
        return None, entry_log
    if (
        not isinstance(data, dict)
        or data.get("format") != (FORMAT, _code())
        or not isinstance(data.get("entries"), tuple)
    ):
        return None, entry_log
    # The entries the memo file was written with, or none (`_EntryLog`).
    entry_log, files = _EntryLog.read(entry_log.path, upto=data["entries"])
    return {**data, "files": files}, entry_log


def _write(
    path: Path, entry_log: _EntryLog, files: Mapping[str, Any], data: dict[str, Any]
) -> None:
    """Have the memo file at `path` hold `data`, and `entry_log` the entries `files`: the
    entries first, then the memo file naming them (`_EntryLog`); nothing more when the
    entries could not be written (the memo file still names those it was written with)."""
    if not entry_log.keep(files):
        return
    data = {"format": (FORMAT, _code()), "entries": entry_log.mark, **data}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            pickle.dump(data, handle, protocol=5)
        os.replace(tmp, path)
    except OSError as err:
        log.warning("could not write the pass memo %s: %s", path, err)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _overlap(changed: frozenset[str], paths: Sequence[str]) -> bool:
    """True when a changed file is one of `paths`, or lies below or above one of them."""
    for path in paths:
        if path in changed:
            return True
        prefix = path + "/"
        parts = path.split("/")
        above = {"/".join(parts[:i]) for i in range(1, len(parts))}
        if above & changed or any(c.startswith(prefix) for c in changed):
            return True
    return False
