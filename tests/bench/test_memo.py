"""The pass memo decides exactly like a full pass.

Two copies of one generated GitOps repository (bench/scale.py's generator, 40 rollouts over 3
clusters) go through the same sequence of passes and outside events, one with the memo and one
without: after every pass the reports (decisions, problems, errors), every ref of the remote
and every pull request record must be identical. The events are the ones that must invalidate
a remembered rollout: readiness changes, policy edits and deletions, a pull request opened by
hand on a quiet rollout's branch, operator commands, a hand-edited routing file, an unreachable
cluster, a manifest that does not parse, a clashing policy name and a new candidate.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gitops_rollout import memo as passmemo
from gitops_rollout import reconcile, repository
from gitops_rollout.composition import snapshot_source
from gitops_rollout.gitops.hosts.base import PullRequestDraft
from gitops_rollout.gitops.hosts.local import LocalHost
from gitops_rollout.gitops.repo import Workspace
from gitops_rollout.inventory.model import ObjectRef, Status
from gitops_rollout.transitions import Command

ROOT = Path(__file__).resolve().parents[2]


def load_scale() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


scale = load_scale()
T0: datetime = scale.T0


@dataclass
class Side:
    """One copy of the remote and the bot's cache, passes with or without the memo."""

    root: Path
    memoise: bool
    now: datetime = T0
    hits: list[int] = field(default_factory=list)

    @property
    def remote(self) -> Path:
        return self.root / "remote.git"

    def host(self) -> LocalHost:
        return LocalHost(self.remote, clock=lambda: self.now)

    def run(
        self,
        inventory: Path,
        *,
        commands: Mapping[tuple[str, str], Command] | None = None,
        unreachable: Mapping[str, str] | None = None,
    ) -> reconcile.PassReport:
        source = snapshot_source([str(inventory)])

        def read() -> tuple[Mapping[tuple[str, ObjectRef], Status], Mapping[str, str]]:
            statuses, _ = source()
            return statuses, dict(unreachable or {})

        with Workspace.open(str(self.remote), cache_dir=self.root / "cache") as ws:
            return reconcile.run_once(
                workspace=ws,
                host=self.host(),
                options=reconcile.PassOptions(now=self.now, commands=dict(commands or {})),
                inventory=read,
                memoise=self.memoise,
            )

    def state(self) -> dict[str, Any]:
        refs = scale.git("for-each-ref", "--format=%(objectname) %(refname)", cwd=self.remote)
        pulls = [r.to_json() for r in self.host().list_pulls()]
        return {"refs": refs, "pulls": pulls}

    def human(self, message: str, edit: Callable[[Path], None]) -> None:
        """A person clones the remote, edits, commits (dated now) and pushes to main."""
        checkout = self.root / "human"
        shutil.rmtree(checkout, ignore_errors=True)
        scale.git("clone", "--quiet", str(self.remote), str(checkout))
        edit(checkout)
        scale.git("add", "-A", cwd=checkout)
        scale.git("commit", "--quiet", "-m", message, cwd=checkout, env=scale._human_env(self.now))
        scale.git("push", "--quiet", "origin", "HEAD:main", cwd=checkout)


def report_of(report: reconcile.PassReport, side: Side) -> dict[str, Any]:
    text = json.dumps(
        {
            "decisions": [d.as_json() for d in report.decisions],
            "problems": [str(p) for p in report.problems],
            "errors": report.errors,
        }
    )
    return json.loads(text.replace(side.remote.as_uri(), "REMOTE"))


@pytest.fixture
def world(tmp_path: Path) -> Any:
    rng = scale.random.Random(11)
    models, clusters = scale.plan_models(40, 3, rng)
    # Make sure the interesting shapes are there, whatever the draw.
    models[0].candidate, models[0].candidate_ready = True, False
    models[1].candidate, models[1].candidate_ready, models[1].review_steps = True, True, True
    models[2].clusters = (clusters[0], clusters[1])
    w = scale.World(tmp_path / "world", models, clusters, rng)
    w.root.mkdir()
    scale.seed(w)
    return w


@pytest.fixture
def sides(world: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Side]]:
    out = []
    for name, memoise in (("memo", True), ("full", False)):
        root = tmp_path / name
        root.mkdir()
        shutil.copytree(world.remote, root / "remote.git")
        out.append(Side(root, memoise))
    real = passmemo.PassMemo.decisions
    counts: list[int] = []

    def spy(self: passmemo.PassMemo, *args: Any, **kwargs: Any) -> Any:
        counts.append(len(self._hits))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(passmemo.PassMemo, "decisions", spy)
    out[0].hits = counts
    yield out


def both(sides: list[Side], world: Any, **kwargs: Any) -> int:
    """One pass on each side; they must agree. Returns how many policy files the memo took."""
    memo, full = sides
    before = len(memo.hits)
    got = report_of(memo.run(world.inventory, **kwargs), memo)
    want = report_of(full.run(world.inventory, **kwargs), full)
    if got != want:
        a = [(d["cluster"], d["model"]) for d in got["decisions"]]
        b = [(d["cluster"], d["model"]) for d in want["decisions"]]
        print("only memo", sorted(set(a) - set(b)), "only full", sorted(set(b) - set(a)))
        print("problems", got["problems"], want["problems"])
        for x, y in zip(got["decisions"], want["decisions"], strict=False):
            if x != y:
                print("first diff", x, y)
                break
    assert got == want
    assert memo.state() == full.state()
    for side in sides:
        side.now += timedelta(minutes=1)
    return memo.hits[before] if len(memo.hits) > before else 0


def on_both(sides: list[Side], message: str, edit: Callable[[Path], None]) -> None:
    for side in sides:
        side.human(message, edit)


def test_memoised_passes_decide_like_full_passes(world: Any, sides: list[Side]) -> None:
    idle = [m for m in world.models if not m.candidate and len(m.clusters) == 1]
    for _ in range(4):
        both(sides, world)
    assert both(sides, world) > 0, "the memo took no policy in a pass where nothing changed"

    # Readiness: an Idle model's primary stops being Ready.
    m = idle[0]
    path = world.inventory / f"{m.clusters[0]}.json"
    doc = json.loads(path.read_text())
    for item in doc["items"]:
        if item["metadata"]["name"] == f"{m.name}-v1":
            item["status"]["conditions"][0]["status"] = "False"
    path.write_text(json.dumps(doc))
    both(sides, world)

    # A policy edit (routing changes), and a policy deleted (its routing is removed).
    def edit_policies(root: Path) -> None:
        policy = root / "policies" / f"{idle[1].name}.yaml"
        text = policy.read_text()
        if "    hosts: [" in text:
            text = text.replace("    hosts: [", "    hosts: [x.example.com, ", 1)
        else:
            text = text.replace(
                "  clusters:\n", "  routing:\n    hosts: [x.example.com]\n  clusters:\n"
            )
        policy.write_text(text)
        (root / "policies" / f"{idle[2].name}.yaml").unlink()

    on_both(sides, "edit one policy, delete another", edit_policies)
    both(sides, world)
    both(sides, world)

    # Someone opens a pull request by hand on a quiet rollout's branch: a full pass closes it.
    target = idle[3]
    branch = f"gitops-rollout/{target.clusters[0]}/{target.namespace}/{target.name}"

    def hand_branch(side: Side) -> None:
        checkout = side.root / "hand"
        shutil.rmtree(checkout, ignore_errors=True)
        scale.git("clone", "--quiet", str(side.remote), str(checkout))
        (checkout / "NOTES.md").write_text("by hand\n")
        scale.git("add", "-A", cwd=checkout)
        scale.git(
            "commit", "--quiet", "-m", "by hand", cwd=checkout, env=scale._human_env(side.now)
        )
        scale.git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", cwd=checkout)
        side.host().open_or_update(PullRequestDraft(branch, "main", "by hand", "a human's PR"))

    for side in sides:
        hand_branch(side)
    both(sides, world)
    both(sides, world)

    # Operator commands (no memo for that pass), then the paused rollout holds (remembered).
    paused = idle[4]
    both(sides, world, commands={(paused.name, paused.clusters[0]): Command.PAUSE})
    for _ in range(3):
        both(sides, world)
    both(sides, world, commands={(paused.name, paused.clusters[0]): Command.RESUME})
    for _ in range(2):
        both(sides, world)

    # A hand edit of a generated routing file on main: that rollout holds.
    edited = idle[5]

    def hand_edit(root: Path) -> None:
        routing = (
            root
            / "clusters"
            / edited.clusters[0]
            / edited.namespace
            / edited.name
            / "rollout"
            / "routing.yaml"
        )
        routing.write_text(routing.read_text() + "# tuned by hand\n")

    on_both(sides, "tune the routing by hand", hand_edit)
    both(sides, world)
    both(sides, world)

    # A Deployment's Service changes port, from a file of its own: the Deployment's file is
    # unchanged, yet its routing is not.
    served = next(m for m in idle[9:] if m.target == "deployment")

    def new_port(root: Path) -> None:
        folder = root / "clusters" / served.clusters[0] / served.namespace / served.name
        text = (folder / f"{served.name}-v1.yaml").read_text()
        service = "apiVersion: v1\nkind: Service\n" + text.split("kind: Service\n", 1)[1]
        (folder / "aaa-service.yaml").write_text(service.replace("8080", "9090"))

    on_both(sides, "serve on another port", new_port)
    both(sides, world)
    both(sides, world)

    # A cluster cannot be reached; then it can again.
    both(sides, world, unreachable={world.clusters[1]: "connection refused"})
    both(sides, world, unreachable={world.clusters[1]: "connection refused"})
    both(sides, world)

    # A manifest that does not parse holds its cluster; fixing it releases it.
    broken = idle[6]
    manifest = (
        f"clusters/{broken.clusters[0]}/{broken.namespace}/{broken.name}/{broken.name}-v1.yaml"
    )
    saved = (world.human / manifest).read_text()
    on_both(sides, "break a manifest", lambda root: (root / manifest).write_text("a: [b\n"))
    both(sides, world)
    both(sides, world)
    on_both(sides, "fix it", lambda root: (root / manifest).write_text(saved))
    both(sides, world)
    both(sides, world)

    # Two policies with one name: uniqueness is decided over every policy.
    twin = idle[7]

    def clash(root: Path) -> None:
        text = (root / "policies" / f"{twin.name}.yaml").read_text()
        (root / "policies" / "aaa-twin.yaml").write_text(
            text.replace("  clusters:", "  model: nobody\n  clusters:")
        )

    on_both(sides, "a second policy named like another", clash)
    both(sides, world)
    both(sides, world)

    # A new, Ready candidate: the rollout starts.
    fresh = idle[8]

    def candidate(root: Path) -> None:
        for cluster in fresh.clusters:
            folder = root / "clusters" / cluster / fresh.namespace
            (folder / fresh.name / f"{fresh.name}-v2.yaml").write_text(
                scale.manifest_text(fresh, 2, role="candidate")
            )
            kust = folder / "kustomization.yaml"
            kust.write_text(kust.read_text() + f"  - {fresh.name}/{fresh.name}-v2.yaml\n")

    on_both(sides, "a new candidate", candidate)
    fresh.candidate, fresh.candidate_ready = True, True
    scale.write_inventory(world)
    both(sides, world)
    both(sides, world)
    assert both(sides, world) > 0
    print("policy files taken from the memo, pass by pass:", sides[0].hits)


def _settled_cache(sides: list[Side], world: Any) -> Path:
    """The memo side's cache folder after four passes on both sides (the memo in use)."""
    for _ in range(4):
        both(sides, world)
    return sides[0].root / "cache"


def test_memo_survives_a_new_process_and_ignores_a_damaged_file(
    world: Any, sides: list[Side]
) -> None:
    [stored] = list(_settled_cache(sides, world).glob("*" + passmemo.SUFFIX))
    assert both(sides, world) > 0
    stored.write_bytes(b"not a pickle")
    assert both(sides, world) == 0
    assert both(sides, world) > 0


def test_remembered_decisions_go_in_by_keyword_to_a_maker_without_positions(
    world: Any, sides: list[Side], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values go in by position only to a maker whose parameters are the stored fields."""
    for _ in range(3):
        both(sides, world)
    made: list[dict[str, Any]] = []

    def by_keyword(**fields: Any) -> reconcile.Decision:
        made.append(fields)
        return reconcile.Decision(**fields)

    spied = passmemo.PassMemo.decisions

    def keywords(
        self: passmemo.PassMemo, view: Any, planned: Any, decisions: Any, make: Any
    ) -> Any:
        return spied(self, view, planned, decisions, by_keyword)

    monkeypatch.setattr(passmemo.PassMemo, "decisions", keywords)
    assert both(sides, world) > 0
    assert made and all(tuple(m) == reconcile.Decision.__match_args__ for m in made)


def test_the_parse_log_is_written_on_its_own_thread_while_git_pushes(
    world: Any, sides: list[Side], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pickling the parse results needs the interpreter, pushing mostly waits for git: the
    log is written beside the push, and complete when the pass ends."""
    memo, _ = sides
    events: list[tuple[str, str]] = []
    keep, publish = passmemo._ParseLog.keep, reconcile.publish

    def keeping(self: passmemo._ParseLog, wanted: Mapping[Any, Any]) -> bool:
        events.append(("keep begins", threading.current_thread().name))
        try:
            return keep(self, wanted)
        finally:
            events.append(("keep ends", threading.current_thread().name))

    def publishing(*args: Any, **kwargs: Any) -> None:
        events.append(("publish begins", threading.current_thread().name))
        publish(*args, **kwargs)
        events.append(("publish ends", threading.current_thread().name))

    monkeypatch.setattr(passmemo._ParseLog, "keep", keeping)
    monkeypatch.setattr(reconcile, "publish", publishing)
    report = memo.run(world.inventory)
    assert [e for e, _ in events].count("keep begins") == 1
    assert ("keep begins", "gitops-rollout-parse-log") in events
    assert events.index(("keep begins", "gitops-rollout-parse-log")) < events.index(
        ("publish ends", "MainThread")
    )
    # Every policy was planned (nothing is remembered yet): each one's parse is in the log.
    [log_file] = (memo.root / "cache").glob("*" + passmemo.PARSED_SUFFIX)
    kept = {key[1] for key in passmemo._ParseLog.read(log_file)[1] if key[0] == "p"}
    assert kept == {f"policies/{d.policy}.yaml" for d in report.decisions}


def test_the_parse_log_keeps_the_policies_planned_again_not_those_remembered(
    world: Any, sides: list[Side], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(passmemo, "COMPACT_MIN", 0)  # entries no longer wanted are dropped
    memo, _ = sides
    for _ in range(2):
        both(sides, world)
    [memo_file] = (memo.root / "cache").glob("*" + passmemo.SUFFIX)
    [log_file] = (memo.root / "cache").glob("*" + passmemo.PARSED_SUFFIX)
    stored, _ = passmemo._read(memo_file)
    assert stored is not None
    remembered = set(stored["files"])
    kept = {key[1] for key in passmemo._ParseLog.read(log_file)[1] if key[0] == "p"}
    assert remembered and kept
    assert not kept & remembered
    assert kept | remembered == {f"policies/{m.name}.yaml" for m in world.models}


def test_policies_planned_again_are_not_parsed_again_in_the_next_process(
    world: Any, sides: list[Side], monkeypatch: pytest.MonkeyPatch
) -> None:
    memo, full = sides
    for _ in range(3):
        both(sides, world)
    parsed: list[str] = []
    real = repository.load_policy_text

    def counting(text: bytes, *, file: str) -> Any:
        parsed.append(file)
        return real(text, file=file)

    monkeypatch.setattr(repository, "load_policy_text", counting)
    # Each pass is a new Workspace and new parse caches, as in a new process.
    full.run(world.inventory)
    assert len(parsed) == len(world.models), "a pass without the memo parses every policy"
    parsed.clear()
    memo.run(world.inventory)
    remembered = memo.hits[-1]
    assert 0 < remembered < len(world.models), "some policies are planned again"
    assert parsed == [], "their parse results were kept with the memo"


def test_the_parse_log_appends_what_is_new_and_compacts_what_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "cache.parsed"
    first = {("m", f"f{i}.yaml", f"b{i}"): [i] for i in range(10)}
    log, read = passmemo._ParseLog.read(path)
    assert read == {}
    log.keep(first)
    inode = path.stat().st_ino
    # One file changed: its new entry is appended, the file is not written anew.
    second = dict(first) | {("m", "f0.yaml", "b0-new"): ["new"]}
    del second[("m", "f0.yaml", "b0")]
    log, read = passmemo._ParseLog.read(path)
    assert read == first
    size = path.stat().st_size
    log.keep(second)
    assert path.stat().st_ino == inode and path.stat().st_size > size
    log, read = passmemo._ParseLog.read(path)
    assert read == first | second
    # Nothing new: nothing written.
    size = path.stat().st_size
    log.keep(second)
    assert path.stat().st_size == size
    # Once more stale entries are held than allowed, the file holds only what is wanted.
    third = {("p", f"p{i}.yaml", "b"): i for i in range(passmemo.COMPACT_MIN + 1)}
    log.keep(third)
    log.keep({k: third[k] for k in list(third)[:1]})
    assert path.stat().st_ino != inode
    assert passmemo._ParseLog.read(path)[1] == {k: third[k] for k in list(third)[:1]}


def test_the_parse_log_keeps_what_it_read_before_a_damaged_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cache.parsed"
    log, _ = passmemo._ParseLog.read(path)
    log.keep({("m", "a.yaml", "1"): "a"})
    log.keep({("m", "a.yaml", "1"): "a", ("m", "b.yaml", "2"): "b"})
    path.write_bytes(path.read_bytes()[:-3])  # the last append was cut short
    log, read = passmemo._ParseLog.read(path)
    assert read == {("m", "a.yaml", "1"): "a"}
    # The next keep writes the file anew, whole.
    log.keep({("m", "a.yaml", "1"): "a", ("m", "b.yaml", "2"): "b"})
    assert passmemo._ParseLog.read(path)[1] == {
        ("m", "a.yaml", "1"): "a",
        ("m", "b.yaml", "2"): "b",
    }
    # Another release of the code: nothing it parsed is used.
    monkeypatch.setattr(passmemo, "_code", lambda: "another release")
    assert passmemo._ParseLog.read(path)[1] == {}


def _entry(i: int, note: str = "") -> tuple[Any, ...]:
    """A memo entry shaped like the real ones (`memo._File` fields as plain tuples)."""
    summary = (f"m{i}", f"m{i}", ("c1",), "ns", f"policies/m{i}.yaml", 1)
    decision = (f"m{i}", "c1", "ns", f"m{i}", "none", "", "", note, "Idle", "", "none", None, "")
    return (f"{i:040x}", ((summary, f"{i:064x}", (decision,)),))


def _save(path: Path, files: dict[str, Any]) -> None:
    """What a pass does with the memo's files: read them at the start, write at the end."""
    _, entry_log = passmemo._read(path)
    small = {"fields": ("policy",), "standing": None, "merge_checks": {}, "merge_paths": {}}
    passmemo._write(path, entry_log, files, small)


def _entries(path: Path) -> dict[str, Any] | None:
    stored, _ = passmemo._read(path)
    return None if stored is None else stored["files"]


def _frames(path: Path) -> int:
    return passmemo._read(path)[1].mark[1]


def _memo_files(folder: Path) -> tuple[Path, Path]:
    """A memo file in `folder` and its entry log."""
    path = folder / "cache.memo"
    return path, path.with_suffix(passmemo.ENTRIES_SUFFIX)


def test_a_save_appends_the_entries_that_changed_and_a_removal_reads_back_as_gone(
    tmp_path: Path,
) -> None:
    path, entries = _memo_files(tmp_path)
    first = {f"policies/m{i}.yaml": _entry(i) for i in range(100)}
    _save(path, first)
    assert _entries(path) == first and _frames(path) == 1
    before = entries.stat()
    # One entry changed, one gone, one new: a small frame is appended.
    second = dict(first) | {"policies/m1.yaml": _entry(1, "moved"), "new.yaml": _entry(100)}
    del second["policies/m2.yaml"]
    _save(path, second)
    after = entries.stat()
    assert after.st_ino == before.st_ino
    assert before.st_size < after.st_size < before.st_size + before.st_size // 10
    assert _entries(path) == second and _frames(path) == 2
    # The same entries again: nothing appended.
    _save(path, second)
    assert entries.stat().st_size == after.st_size and _frames(path) == 2
    # Gone again after coming back.
    _save(path, first)
    _save(path, second)
    assert _entries(path) == second and _frames(path) == 4


def test_the_entry_log_is_written_anew_once_more_is_superseded_than_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(passmemo, "COMPACT_MIN", 10)
    path, entries = _memo_files(tmp_path)
    files = {f"p{i}": _entry(i) for i in range(40)}  # a quarter of them: 10
    _save(path, files)
    inode = entries.stat().st_ino
    for n in range(5):  # two superseded a save: ten, not more than allowed
        files = files | {"p0": _entry(0, str(n)), "p1": _entry(1, str(n))}
        _save(path, files)
        assert entries.stat().st_ino == inode
    assert _frames(path) == 6
    size = entries.stat().st_size
    files = files | {"p0": _entry(0, "last"), "p1": _entry(1, "last")}
    _save(path, files)
    assert entries.stat().st_ino != inode and entries.stat().st_size < size
    assert _entries(path) == files and _frames(path) == 1


def test_a_save_cut_short_leaves_the_entries_before_it_and_the_next_writes_anew(
    tmp_path: Path,
) -> None:
    path, entries = _memo_files(tmp_path)
    first = {f"p{i}": _entry(i) for i in range(20)}
    second = first | {"p0": _entry(0, "second")}
    third = second | {"p1": _entry(1, "third")}
    _save(path, first)
    _save(path, second)
    memo_file = path.read_bytes()
    for cut in (3, 0):
        # The process died in the append (cut short by a few bytes) or right after it
        # (the frame is whole), before it wrote the memo file.
        _save(path, third)
        path.write_bytes(memo_file)
        entries.write_bytes(entries.read_bytes()[: -cut or None])
        assert _entries(path) == second
        # The next save writes the log anew, whole.
        inode = entries.stat().st_ino
        _save(path, third)
        assert entries.stat().st_ino != inode
        assert _entries(path) == third and _frames(path) == 1
        _save(path, first)
        _save(path, second)
        memo_file = path.read_bytes()


def test_a_memo_file_whose_entries_are_not_in_the_log_uses_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, entries = _memo_files(tmp_path)
    first = {f"p{i}": _entry(i) for i in range(20)}
    second = first | {"p0": _entry(0, "second")}
    _save(path, first)
    _save(path, second)
    # The frame the memo file names was cut short after it was written.
    entries.write_bytes(entries.read_bytes()[:-3])
    assert _entries(path) == {}
    _save(path, second)
    assert _entries(path) == second
    # The log was written anew and the process died before it wrote the memo file.
    memo_file = path.read_bytes()
    passmemo._write(path, passmemo._EntryLog(entries, {}), first, {})
    assert _entries(path) == first
    path.write_bytes(memo_file)
    assert _entries(path) == {}
    # Another release of the code: neither file is used.
    _save(path, second)
    monkeypatch.setattr(passmemo, "_code", lambda: "another release")
    assert _entries(path) is None
    assert passmemo._EntryLog.read(entries, upto=("", 1))[1] == {}


def test_a_pass_that_changed_nothing_writes_nothing_and_one_that_did_appends(
    world: Any, sides: list[Side]
) -> None:
    cache = _settled_cache(sides, world)
    [memo_file] = list(cache.glob("*" + passmemo.SUFFIX))
    [entries] = list(cache.glob("*" + passmemo.ENTRIES_SUFFIX))

    def stats() -> list[tuple[int, int, int]]:
        return [(s.st_ino, s.st_size, s.st_mtime_ns) for s in map(Path.stat, (memo_file, entries))]

    before = stats()
    assert both(sides, world) > 0
    assert stats() == before, "a pass that changed nothing wrote the memo"
    # A policy edit: its entry is written again, appended.
    name = next(m for m in world.models if not m.candidate and len(m.clusters) == 1).name

    def edit(root: Path) -> None:
        policy = root / "policies" / f"{name}.yaml"
        policy.write_text(policy.read_text() + "# edited\n")

    on_both(sides, "edit a policy", edit)
    both(sides, world)
    both(sides, world)
    after = entries.stat()
    assert after.st_ino == before[1][0]
    assert before[1][1] < after.st_size < before[1][1] + before[1][1] // 4


def test_after_a_small_change_only_what_it_touched_is_checked_again(
    world: Any, sides: list[Side], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit moved (a new candidate for one model) and its readiness came with it: the
    remembered rollouts of other models keep their digests unread, and the passes still
    decide like full ones."""
    for _ in range(4):
        both(sides, world)
    checked: list[str] = []
    real = passmemo.PassMemo._inputs

    def counting(self: passmemo.PassMemo, s: Any, facts: Any) -> str:
        checked.append(s.model)
        return real(self, s, facts)

    monkeypatch.setattr(passmemo.PassMemo, "_inputs", counting)
    idle = [m for m in world.models if not m.candidate and len(m.clusters) == 1]
    fresh = idle[0]

    def candidate(root: Path) -> None:
        folder = root / "clusters" / fresh.clusters[0] / fresh.namespace
        (folder / fresh.name / f"{fresh.name}-v2.yaml").write_text(
            scale.manifest_text(fresh, 2, role="candidate")
        )

    on_both(sides, "a new candidate", candidate)
    fresh.candidate, fresh.candidate_ready = True, True
    scale.write_inventory(world)
    took = both(sides, world)
    assert took > 0
    # Only the rollouts the change touched had their inputs read again (the candidate's
    # model, and those whose folders the pass before changed), not every remembered one.
    assert fresh.name not in checked or checked.count(fresh.name) <= len(fresh.clusters)
    assert len(checked) < took / 2, checked


def _standing(versions: dict[tuple[str, str, str, str], Any]) -> Any:
    return passmemo._Standing("rest", "rev", versions)


def _parsed(*models: str, services: tuple[str, ...] = ()) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(
        versions=[SimpleNamespace(model=m) for m in models],
        services=[(ns, "svc", {}, ()) for ns in services],
        problems=(),
    )


def test_quiet_moves_exactly_what_a_change_can_reach() -> None:
    """`_Quiet` is what lets a remembered rollout keep its digest unread: every input of the
    digest that moved must move the rollout."""
    from gitops_rollout.inventory.manifests import ManifestCache

    ready = ("Ready", "", None, None, ())
    before = _standing(
        {
            ("c1", "Deployment", "ns", "a-v1"): ("a", *ready),
            ("c1", "Deployment", "ns", "b-v1"): ("b", *ready),
            ("c1", "Deployment", "other", "c-v1"): ("c", *ready),
            ("c1", "Deployment", "other", "y-v1"): ("y", *ready),
            ("c2", "Deployment", "ns", "d-v1"): ("d", *ready),
            ("c2", "Deployment", "ns", "e-v1"): ("e", *ready),
        }
    )
    now = _standing(
        {
            **before.versions,
            ("c2", "Deployment", "ns", "d-v1"): ("d", "NotReady", "crash", None, None, ()),
            ("c2", "Deployment", "ns", "f-v2"): ("f", *ready),  # a new version
            # The new Service attaches to c's version (and to no other of its namespace).
            ("c1", "Deployment", "other", "c-v1"): ("c", *ready[:3], "svc", (("http", 80),)),
        }
    )
    cache = ManifestCache(
        {
            ("clusters/c1/ns/a/a-v1.yaml", "old"): _parsed("a"),
            ("clusters/c1/ns/a/a-v1.yaml", "new"): _parsed("a", "g"),  # now names g too
            ("clusters/c1/other/svc.yaml", "new"): _parsed(services=("other",)),
        }
    )
    changes = [
        ("clusters/c1/ns/a/a-v1.yaml", "old", "new"),
        ("clusters/c1/other/svc.yaml", None, "new"),  # a Service: the versions it attaches to
        ("clusters/c3/ns/x/x.yaml", "gone", None),  # no parse at hand: the whole cluster
        ("clusters/c2/ns/h/rollout/routing.yaml", "r1", "r2"),  # a rollout folder
        ("policies/p.yaml", "p1", "p2"),  # not a manifest
    ]
    quiet = passmemo._Quiet.of(changes, before, now, cache)
    moved = {
        (cluster, model)
        for cluster in ("c1", "c2", "c3")
        for model in "abcdefghxy"
        if not quiet.untouched(cluster, "ns", model)
    }
    assert moved == {
        ("c1", "a"),
        ("c1", "g"),
        ("c1", "c"),  # the Service now attached to its version; not y, in that namespace too
        ("c2", "d"),
        ("c2", "f"),
        ("c2", "h"),
        *{("c3", m) for m in "abcdefghxy"},
    }


def test_an_unreadable_inventory_holds_every_cluster_and_a_failed_fetch_says_only_that(
    world: Any, sides: list[Side], tmp_path: Path
) -> None:
    """The inventory is read before the fetch is waited for; its failure is reported once the
    repository could be read (every cluster then counts as unreachable), and not at all when
    the fetch failed: the pass stops at git."""
    from gitops_rollout.errors import RolloutError

    _, full = sides
    calls: list[str] = []

    def unreadable() -> Any:
        calls.append("inventory")
        raise RolloutError("the snapshot cannot be read")

    def run(remote: Path, cache: Path) -> reconcile.PassReport:
        with Workspace.open(str(remote), cache_dir=cache) as ws:
            options = reconcile.PassOptions(now=full.now)
            return reconcile.run_once(
                workspace=ws, host=full.host(), options=options, inventory=unreadable, memoise=False
            )

    before = full.state()
    report = run(full.remote, full.root / "cache")
    assert report.errors == {"inventory": ["the snapshot cannot be read"]}
    assert report.decisions and all(d.outcome == "none" for d in report.decisions)
    assert full.state() == before  # nothing proposed from clusters it could not see

    (tmp_path / "gone.git").mkdir()
    report = run(tmp_path / "gone.git", tmp_path / "cache")
    assert list(report.errors) == ["git"] and not report.decisions
    assert calls == ["inventory", "inventory"]
