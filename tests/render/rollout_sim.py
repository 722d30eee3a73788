"""Drive a rollout end to end on a fixture repository: scan, assess, advance, render, apply.

Each fixture under ``fixtures/<name>/`` has ``base/`` (the repository with the primary only and
the policies) and ``candidate/`` (what a human adds or changes to start a rollout). `run` plays
one policy through adoption, a candidate that is not Ready, every step, promotion and cleanup,
plus two side branches from the first step (a rollback verdict and an operator pause), keeping
a `Snapshot` of every pass. Only the real stages run: inventory.manifests.scan, transitions,
render; readiness and verdicts are what a scenario says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from gitops_rollout.inventory.manifests import scan, with_status
from gitops_rollout.inventory.model import ModelVersion, ObjectRef, Readiness, Status
from gitops_rollout.policy import LoadedPolicy, load_policy_text
from gitops_rollout.render import Rendered, render
from gitops_rollout.state import ROUTING_FILE, Phase, read_stored, rollout_dir
from gitops_rollout.transitions import Action, Command, Situation, Transition, advance, assess
from gitops_rollout.tree import blob_id

FIXTURES = Path(__file__).parent / "fixtures"
CLUSTER = "prod"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MAX_PASSES = 20


class MemTree:
    """A repository state held in memory (implements `gitops_rollout.tree.Tree`)."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.files = dict(sorted(files.items()))

    def paths(self, prefix: str = "") -> list[str]:
        head = prefix.rstrip("/") + "/" if prefix else ""
        return [p for p in self.files if p.startswith(head)]

    def read(self, path: str) -> bytes:
        try:
            return self.files[path]
        except KeyError:
            raise FileNotFoundError(path) from None

    def blob_id(self, path: str) -> str:
        return blob_id(self.read(path))

    def apply(self, changes: Mapping[str, bytes | None]) -> MemTree:
        files = dict(self.files)
        for path, content in changes.items():
            if content is None:
                files.pop(path, None)
            else:
                files[path] = content
        return MemTree(files)

    def write_to(self, root: Path) -> None:
        for path, content in self.files.items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)


def load_dir(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


class VerdictAction(StrEnum):
    ADVANCE = "advance"
    HOLD = "hold"
    ROLLBACK = "rollback"
    PROMOTE = "promote"


@dataclass(frozen=True)
class Verdict:
    """What the analysis stage would say (implements transitions.VerdictLike)."""

    action: VerdictAction
    reasons: tuple[str, ...] = ()
    suggested_weights: Mapping[str, int] | None = None
    winner: str | None = None


VerdictOf = Callable[[Situation], Verdict | None]


@dataclass(frozen=True)
class Scenario:
    name: str
    fixture: str
    policy: str
    """File name under ``base/policies/``."""
    verdicts: VerdictOf | None = None
    """Verdicts for a progressing rollout (policies with analysis); None: time and approvals."""

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Snapshot:
    label: str
    transition: Transition
    rendered: Rendered
    before: MemTree
    after: MemTree


@dataclass
class Sim:
    scenario: Scenario
    loaded: LoadedPolicy
    tree: MemTree
    candidate_files: frozenset[str]
    not_ready: set[ObjectRef] = field(default_factory=set)
    clock: int = 0

    @property
    def routing_path(self) -> str:
        policy = self.loaded.policy
        folder = rollout_dir(
            cluster=CLUSTER, namespace=policy.routing_namespace, model=policy.model
        )
        return f"{folder}/{ROUTING_FILE}"

    def versions(self, tree: MemTree) -> list[ModelVersion]:
        inventory, problems = scan(tree)
        assert not problems, problems
        refs = {v.ref for v in inventory.versions(CLUSTER, self.loaded.policy.model)}
        statuses = {
            (CLUSTER, ref): Status(Readiness.NOT_READY, "Ready=False: pulling the model")
            if ref in self.not_ready
            else Status(Readiness.READY)
            for ref in refs
        }
        with_status(inventory, statuses)
        return inventory.versions(CLUSTER, self.loaded.policy.model)

    def step(
        self, label: str, *, verdict: Verdict | None = None, command: Command | None = None
    ) -> Snapshot:
        """One pass on the current tree; the tree moves on to its result."""
        snapshot = self.peek(label, verdict=verdict, command=command)
        self.tree = snapshot.after
        self.clock += 1
        return snapshot

    def peek(
        self, label: str, *, verdict: Verdict | None = None, command: Command | None = None
    ) -> Snapshot:
        """One pass without moving the tree (for side branches)."""
        tree = self.tree
        stored = (
            read_stored(tree.read(self.routing_path)) if self.routing_path in tree.files else None
        )
        now = T0 + timedelta(minutes=self.clock + 1)
        situation = assess(
            self.loaded,
            cluster=CLUSTER,
            versions=self.versions(tree),
            stored=stored,
            step_started=T0 + timedelta(minutes=self.clock) if stored else None,
        )
        if verdict is None and self.scenario.verdicts and situation.needs_verdict:
            verdict = self.scenario.verdicts(situation)
        transition = advance(situation, now=now, verdict=verdict, command=command)
        rendered = render(transition, tree=tree)
        assert not rendered.problems, [str(p) for p in rendered.problems]
        return Snapshot(label, transition, rendered, tree, tree.apply(rendered.files))


def _slug(transition: Transition) -> str:
    action = transition.action
    if action in (Action.START, Action.ADVANCE):
        return f"step-{transition.state.step}"
    return {
        Action.ROLLBACK: "rolled-back",
        Action.PAUSE: "paused",
        Action.NONE: "idle",
    }.get(action, action.value)


def start(scenario: Scenario) -> Sim:
    root = FIXTURES / scenario.fixture
    base = load_dir(root / "base")
    candidate = load_dir(root / "candidate")
    policy_path = f"policies/{scenario.policy}"
    loaded, problems = load_policy_text(base[policy_path], file=policy_path)
    assert not problems and len(loaded) == 1, [str(p) for p in problems]
    return Sim(scenario, loaded[0], MemTree(base), frozenset(candidate))


def run(scenario: Scenario) -> list[Snapshot]:
    """Every pass of the scenario: the main path to a finished promotion, then the branches."""
    sim = start(scenario)
    snapshots = [sim.step("00-adopt")]
    candidate = load_dir(FIXTURES / scenario.fixture / "candidate")
    sim.tree = sim.tree.apply(candidate)
    sim.not_ready = {v.ref for v in sim.versions(sim.tree) if v.file in candidate}
    snapshots.append(sim.step("01-candidate-not-ready"))
    sim.not_ready = set()
    promoted = False
    for index in range(2, MAX_PASSES):
        snapshot = sim.step("")
        transition = snapshot.transition
        promoted = promoted or transition.action is Action.PROMOTE
        snapshots.append(
            Snapshot(
                f"{index:02d}-{_slug(transition)}",
                transition,
                snapshot.rendered,
                snapshot.before,
                snapshot.after,
            )
        )
        if promoted and transition.state.phase is Phase.IDLE:
            break
    else:
        raise AssertionError(f"{scenario}: no promotion after {MAX_PASSES} passes")
    # The side branches start from the first step's result.
    after_start = Sim(scenario, sim.loaded, snapshots[2].after, sim.candidate_files, clock=3)
    rollback = Verdict(VerdictAction.ROLLBACK, ("error rate 4.1% > 1% (e-value 212 > 100)",))
    snapshots.append(after_start.peek("branch-rolled-back", verdict=rollback))
    snapshots.append(after_start.peek("branch-paused", command=Command.PAUSE))
    snapshots.append(sim.peek("steady"))
    return snapshots
