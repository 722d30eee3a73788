"""The rollout state machine, walked step by step without Git: the same inputs, the same moves."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import pytest

from gitops_rollout.inventory.model import (
    Kind,
    ModelVersion,
    ObjectRef,
    Readiness,
    Role,
    Status,
)
from gitops_rollout.policy import LoadedPolicy, RolloutPolicy, TransitionKind
from gitops_rollout.state import Phase, RolloutState, StoredState
from gitops_rollout.transitions import (
    Action,
    Command,
    EditKind,
    Situation,
    Transition,
    advance,
    assess,
)

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def make_policy(strategy: dict[str, Any], **spec: Any) -> LoadedPolicy:
    body = {
        "apiVersion": "gitops-rollout.dev/v1alpha1",
        "kind": "RolloutPolicy",
        "metadata": {"name": "wisdom"},
        "spec": {
            "namespace": "ns",
            "target": {"kind": "deployment"},
            "strategy": strategy,
            "clusters": [{"name": "prod"}],
            **spec,
        },
    }
    return LoadedPolicy(RolloutPolicy.model_validate(body), "policies/wisdom.yaml", 1)


def version(
    name: str, label: str, *, role: Role, ready: bool = True, digest: str = ""
) -> ModelVersion:
    return ModelVersion(
        ref=ObjectRef(Kind.DEPLOYMENT, "ns", name),
        model="wisdom",
        version=label,
        role=role,
        file=f"clusters/prod/ns/{name}.yaml",
        doc_index=0,
        status=Status(
            Readiness.READY if ready else Readiness.NOT_READY,
            "" if ready else "pulling image",
            label,
        ),
        spec_digest=digest or f"d-{label}",
        service_name=name,
    )


V0 = version("m-0", "v0", role=Role.PRIMARY)
V1 = version("m-1", "v1", role=Role.CANDIDATE)


@dataclass
class Walk:
    """Drives one rollout through passes, feeding each transition's state back as 'merged'."""

    loaded: LoadedPolicy
    versions: list[ModelVersion]
    state: RolloutState | None = None
    started: datetime | None = None

    def situation(self) -> Situation:
        stored = StoredState(self.state) if self.state is not None else None
        return assess(
            self.loaded,
            cluster="prod",
            versions=self.versions,
            stored=stored,
            step_started=self.started,
        )

    def step(self, now: datetime, **kwargs: Any) -> Transition:
        return advance(self.situation(), now=now, **kwargs)

    def merge(self, t: Transition, at: datetime) -> None:
        self.state = t.state
        self.started = at


def test_canary_walk_start_hold_promote_finalize_cleanup() -> None:
    walk = Walk(make_policy({"type": "canary", "minDuration": "10m"}), [V0, V1])
    t = walk.step(T0)
    assert (t.action, t.kind, t.state.phase, t.state.step) == (
        Action.START,
        TransitionKind.STEP,
        Phase.PROGRESSING,
        1,
    )
    assert t.plan is not None and [v.key for v in t.plan.matched] == ["ns/m-1"]
    assert t.auto_merge
    walk.merge(t, T0)

    held = walk.step(T0 + timedelta(minutes=4))
    assert held.action is Action.HOLD
    assert held.state == walk.state
    assert "6m00s to go" in held.reasons[0]

    promote = walk.step(T0 + timedelta(minutes=10))
    assert (promote.action, promote.kind) == (Action.PROMOTE, TransitionKind.PROMOTE)
    assert not promote.auto_merge, "promotion needs a human by default"
    assert [(e.kind, e.version.key, e.source.key if e.source else None) for e in promote.edits] == [
        (EditKind.ADOPT_SPEC, "ns/m-0", "ns/m-1")
    ]
    assert promote.plan is not None
    assert [(v.key, w) for v, w in promote.plan.weighted] == [("ns/m-1", 100)]
    walk.merge(promote, T0 + timedelta(minutes=11))

    # The primary's manifest now carries v1; until it is Ready with v1 traffic stays put.
    rolled = replace(V0, version="v1", status=Status(Readiness.NOT_READY, "rolling", "v0"))
    walk.versions = [rolled, V1]
    waiting = walk.step(T0 + timedelta(minutes=12))
    assert waiting.action is Action.HOLD and "not Ready yet with v1" in waiting.reasons[0]

    walk.versions = [replace(V0, version="v1", status=Status(Readiness.READY, "", "v1")), V1]
    final = walk.step(T0 + timedelta(minutes=13))
    assert (final.action, final.kind, final.state.step) == (
        Action.FINALIZE,
        TransitionKind.FINALIZE,
        2,
    )
    assert final.plan is not None and final.plan.weighted == ()
    walk.merge(final, T0 + timedelta(minutes=13))

    cleanup = walk.step(T0 + timedelta(minutes=14))
    assert (cleanup.action, cleanup.kind, cleanup.state.phase) == (
        Action.CLEANUP,
        TransitionKind.CLEANUP,
        Phase.IDLE,
    )
    assert [(e.kind, e.version.key) for e in cleanup.edits] == [(EditKind.REMOVE, "ns/m-1")]
    walk.merge(cleanup, T0 + timedelta(minutes=15))
    walk.versions = [walk.versions[0]]

    idle = walk.step(T0 + timedelta(minutes=16))
    assert idle.action is Action.NONE and idle.state.phase is Phase.IDLE
    assert idle.state.primary is not None and idle.state.primary.version == "v1"


PROGRESSIVE = {
    "type": "progressive",
    "steps": [
        {"weight": 10, "minDuration": "1m"},
        {"weight": 50, "minDuration": "1m", "approval": True},
        {"weight": 100},
    ],
}


def test_progressive_steps_weights_and_approval() -> None:
    walk = Walk(make_policy(PROGRESSIVE, promotion={"mode": "route-only"}), [V0, V1])
    seen = []
    now = T0
    for _ in range(3):
        t = walk.step(now)
        assert t.plan is not None
        seen.append(([(v.version, w) for v, w in t.plan.weighted], t.title, t.approval))
        walk.merge(t, now)
        now += timedelta(minutes=2)
    assert seen == [
        ([("v0", 90), ("v1", 10)], "step 1/3 -> 10%", False),
        ([("v0", 50), ("v1", 50)], "step 2/3 -> 50%", True),
        ([("v0", 0), ("v1", 100)], "step 3/3 -> 100%", False),
    ]
    promote = walk.step(now)
    assert promote.action is Action.PROMOTE
    assert promote.state.primary is not None and promote.state.primary.key == "ns/m-1"
    assert {(e.kind, e.version.key, e.value) for e in promote.edits} == {
        (EditKind.SET_ROLE, "ns/m-1", "primary"),
        (EditKind.SET_ROLE, "ns/m-0", "candidate"),
    }
    walk.merge(promote, now)
    cleanup = walk.step(now + timedelta(minutes=1))
    assert cleanup.action is Action.CLEANUP
    assert [(e.kind, e.version.key) for e in cleanup.edits] == [(EditKind.REMOVE, "ns/m-0")]


@dataclass(frozen=True)
class FakeVerdict:
    action: StrEnum
    reasons: tuple[str, ...] = ("evidence",)
    suggested_weights: dict[str, int] | None = None
    winner: str | None = None


class A(StrEnum):
    ADVANCE = "advance"
    HOLD = "hold"
    ROLLBACK = "rollback"
    PROMOTE = "promote"


def test_verdict_rollback_then_same_candidate_stays_rolled_back_and_new_one_starts_fresh() -> None:
    walk = Walk(
        make_policy(PROGRESSIVE, analysis={"objectives": [{"metric": "error-rate"}]}), [V0, V1]
    )
    walk.merge(walk.step(T0), T0)
    no_verdict = walk.step(T0 + timedelta(minutes=5))
    assert no_verdict.action is Action.HOLD and "no verdict" in no_verdict.reasons[0]
    rb = walk.step(
        T0 + timedelta(minutes=5), verdict=FakeVerdict(A.ROLLBACK, ("error rate 2.1x baseline",))
    )
    assert (rb.action, rb.kind, rb.state.phase) == (
        Action.ROLLBACK,
        TransitionKind.ROLLBACK,
        Phase.ROLLED_BACK,
    )
    assert rb.plan is not None and rb.plan.weighted == () and rb.edits == ()
    assert rb.reasons == ("error rate 2.1x baseline",)
    walk.merge(rb, T0 + timedelta(minutes=6))
    again = walk.step(T0 + timedelta(minutes=7))
    assert again.action is Action.NONE and again.state.phase is Phase.ROLLED_BACK
    walk.versions = [V0, version("m-1", "v1.1", role=Role.CANDIDATE)]
    fresh = walk.step(T0 + timedelta(minutes=8))
    assert (fresh.action, fresh.state.phase, fresh.state.step) == (
        Action.START,
        Phase.PROGRESSING,
        1,
    )


def test_candidate_not_ready_gets_no_traffic_and_says_why() -> None:
    walk = Walk(
        make_policy(PROGRESSIVE), [V0, version("m-1", "v1", role=Role.CANDIDATE, ready=False)]
    )
    t = walk.step(T0)
    assert t.action is Action.NONE and t.state.phase is Phase.IDLE
    assert t.plan is not None and t.plan.weighted == ()
    assert t.reasons == (
        "candidate v1 (ns/m-1) is not Ready: pulling image; it gets no traffic until it is",
    )


def test_candidate_losing_readiness_mid_rollout_returns_its_traffic() -> None:
    walk = Walk(make_policy(PROGRESSIVE), [V0, V1])
    walk.merge(walk.step(T0), T0)
    walk.versions = [V0, replace(V1, status=Status(Readiness.NOT_READY, "crashloop"))]
    t = walk.step(T0 + timedelta(minutes=5))
    assert t.action is Action.HOLD and t.state == walk.state
    assert t.plan is not None and t.plan.weighted == ()
    assert "crashloop" in t.reasons[0]


@pytest.mark.parametrize(
    ("command", "action", "kind", "phase"),
    [
        pytest.param(Command.PAUSE, Action.PAUSE, TransitionKind.PAUSE, Phase.PAUSED, id="pause"),
        pytest.param(
            Command.ABORT, Action.ROLLBACK, TransitionKind.ROLLBACK, Phase.ROLLED_BACK, id="abort"
        ),
        pytest.param(
            Command.PROMOTE, Action.PROMOTE, TransitionKind.PROMOTE, Phase.PROMOTING, id="promote"
        ),
    ],
)
def test_operator_commands(
    command: Command, action: Action, kind: TransitionKind, phase: Phase
) -> None:
    walk = Walk(make_policy(PROGRESSIVE), [V0, V1])
    walk.merge(walk.step(T0), T0)
    t = walk.step(T0, command=command)
    assert (t.action, t.kind, t.state.phase) == (action, kind, phase)


def test_pause_holds_until_resume_restores_the_phase() -> None:
    walk = Walk(make_policy(PROGRESSIVE), [V0, V1])
    walk.merge(walk.step(T0), T0)
    walk.merge(walk.step(T0, command=Command.PAUSE), T0)
    later = walk.step(T0 + timedelta(hours=1))
    assert later.action is Action.HOLD and later.state.phase is Phase.PAUSED
    assert later.plan is not None and [w for _, w in later.plan.weighted] == [90, 10], (
        "paused keeps routing"
    )
    resumed = walk.step(T0 + timedelta(hours=1), command=Command.RESUME)
    assert (resumed.kind, resumed.state.phase, resumed.state.step) == (
        TransitionKind.RESUME,
        Phase.PROGRESSING,
        1,
    )


def test_hand_edited_routing_pauses_without_writing() -> None:
    walk = Walk(make_policy(PROGRESSIVE), [V0, V1])
    first = walk.step(T0)
    walk.merge(first, T0)
    t = advance(
        assess(
            walk.loaded,
            cluster="prod",
            versions=walk.versions,
            stored=StoredState(first.state, hand_edited=True),
            step_started=T0,
        ),
        now=T0 + timedelta(hours=1),
    )
    assert t.action is Action.HOLD and t.state == first.state
    assert "edited by hand" in t.reasons[0]


def test_ambiguous_primary_is_a_clear_problem() -> None:
    a = version("a", "v1", role=Role.UNKNOWN)
    b = version("b", "v2", role=Role.UNKNOWN)
    t = Walk(make_policy(PROGRESSIVE), [a, b]).step(T0)
    assert t.action is Action.HOLD and t.plan is None
    assert t.reasons == (
        "cannot tell the primary among ns/a, ns/b: label it gitops-rollout.dev/role: primary "
        "(or name versions <model>-0, <model>-1)",
    )


def test_changed_candidate_restarts_at_step_one() -> None:
    walk = Walk(make_policy(PROGRESSIVE), [V0, V1])
    walk.merge(walk.step(T0), T0)
    walk.merge(walk.step(T0 + timedelta(minutes=2)), T0 + timedelta(minutes=2))
    assert walk.state is not None and walk.state.step == 2
    walk.versions = [V0, replace(V1, spec_digest="retrained")]
    t = walk.step(T0 + timedelta(minutes=3))
    assert t.state.step == 1 and "candidate changed" in t.reasons[0]


def test_ab_moves_weights_then_promotes_the_winner() -> None:
    walk = Walk(
        make_policy(
            {"type": "ab", "iterations": 2},
            analysis={"rewards": [{"metric": "user-engagement"}]},
        ),
        [V0, V1],
    )
    start = walk.step(T0)
    assert start.plan is not None and [w for _, w in start.plan.weighted] == [50, 50]
    walk.merge(start, T0)
    move = walk.step(
        T0 + timedelta(minutes=1),
        verdict=FakeVerdict(A.ADVANCE, suggested_weights={"v0": 30, "v1": 70}),
    )
    assert move.plan is not None and [(v.version, w) for v, w in move.plan.weighted] == [
        ("v0", 30),
        ("v1", 70),
    ]
    walk.merge(move, T0 + timedelta(minutes=1))
    win = walk.step(T0 + timedelta(minutes=2), verdict=FakeVerdict(A.PROMOTE, winner="v1"))
    assert (
        win.action is Action.PROMOTE
        and win.state.primary is not None
        and win.state.primary.version == "v1"
    )
    no_winner = walk.step(T0 + timedelta(minutes=2), verdict=FakeVerdict(A.PROMOTE, winner=None))
    assert no_winner.action is Action.ROLLBACK and "inconclusive" in no_winner.reasons[0]


def test_override_header_routes_by_object_name() -> None:
    walk = Walk(
        make_policy(
            {"type": "blue-green"},
            routing={
                "overrideHeader": {
                    "name": "x-api-version",
                    "values": {"blue": "m-1", "green": "m-0"},
                }
            },
        ),
        [V0, V1],
    )
    t = walk.step(T0)
    assert t.plan is not None
    assert [(value, v.ref.name) for value, v in t.plan.overrides] == [
        ("blue", "m-1"),
        ("green", "m-0"),
    ]
    assert t.approval and not t.auto_merge and t.title.startswith("Blue_0")
