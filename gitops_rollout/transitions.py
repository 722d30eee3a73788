"""The rollout state machine: from what Git, the inventory and the analysis say, to the next state.

Pure: no I/O and no clock (``now`` is an argument). A pass calls `assess` per (policy, cluster)
to learn the phase, primary and candidates; gathers a verdict for progressing rollouts (the
analysis stage, or time and approvals when the policy has no analysis); then calls `advance`,
which returns a `Transition`: the state to record, the routing to render, the human-owned
manifest edits a promotion needs, and the kind and reasons of the pull request.

Phases: Idle -> Progressing(1..n) -> Promoting(1[, 2]) -> Idle, with RolledBack and Paused on
the side. A promotion never removes a manifest in the same change that moves traffic away from
it: replace-primary is promote (primary takes the candidate's spec, traffic on the candidate),
finalize (traffic back to the primary once it is Ready with the new version), cleanup (the
candidate's manifest goes); route-only is promote (winner takes all, becomes primary), cleanup.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from gitops_rollout.inventory.model import ModelVersion, Role
from gitops_rollout.policy import (
    ABStrategy,
    BlueGreenStrategy,
    CanaryStrategy,
    InconclusiveAction,
    LoadedPolicy,
    MirrorStrategy,
    ProgressiveStrategy,
    PromotionMode,
    RolloutPolicy,
    StrategyKind,
    TargetKind,
    TargetMode,
    TransitionKind,
)
from gitops_rollout.state import Phase, RolloutState, StoredState, VersionMark


class Action(StrEnum):
    """What a pass decided for one rollout."""

    NONE = "none"
    START = "start"
    ADVANCE = "advance"
    HOLD = "hold"
    ROLLBACK = "rollback"
    PROMOTE = "promote"
    FINALIZE = "finalize"
    CLEANUP = "cleanup"
    PAUSE = "pause"
    RESUME = "resume"
    REMOVE = "remove"


class Command(StrEnum):
    """Operator actions (``gitops-rollout promote|abort|pause|resume``)."""

    PROMOTE = "promote"
    ABORT = "abort"
    PAUSE = "pause"
    RESUME = "resume"


class VerdictLike(Protocol):
    """What the analysis stage returns; `action.value` is advance, hold, rollback or promote."""

    @property
    def action(self) -> StrEnum: ...

    @property
    def reasons(self) -> tuple[str, ...]: ...

    @property
    def suggested_weights(self) -> Mapping[str, int] | None: ...

    @property
    def winner(self) -> str | None: ...


class EditKind(StrEnum):
    ADOPT_SPEC = "adopt-spec"
    """The primary's manifest takes the candidate's spec and version label."""
    REMOVE = "remove"
    """The version's manifest (or its predictor, in native Seldon) is removed."""
    SET_ROLE = "set-role"
    """The version's role label is set to `value`."""
    SET_TRAFFIC = "set-traffic"
    """Native modes: the version's traffic field is set to `value` (None removes it)."""


@dataclass(frozen=True)
class ManifestEdit:
    kind: EditKind
    version: ModelVersion
    source: ModelVersion | None = None
    value: int | str | None = None


@dataclass(frozen=True)
class RoutePlan:
    """Who gets which requests; the targets render it into their objects."""

    primary: ModelVersion
    weighted: tuple[tuple[ModelVersion, int], ...] = ()
    """Weighted destinations summing to 100; empty means the primary takes everything."""
    matched: tuple[ModelVersion, ...] = ()
    """Canary by match: each gets a rule with the policy's match clauses, before the default."""
    mirror: ModelVersion | None = None
    mirror_percent: float = 100.0
    overrides: tuple[tuple[str, ModelVersion], ...] = ()
    """(header value, version): requests with the override header go straight there."""

    def weight_of(self, version: ModelVersion) -> int:
        if not self.weighted:
            return 100 if version.key == self.primary.key else 0
        return sum(w for v, w in self.weighted if v.key == version.key)

    def describe(self) -> str:
        """``wisdom-0 90% / wisdom-1 10%`` style summary for titles and tables."""
        if self.weighted:
            return " / ".join(f"{v.version} {w}%" for v, w in self.weighted)
        text = f"{self.primary.version} 100%"
        if self.matched:
            text += "; matched requests to " + ", ".join(v.version for v in self.matched)
        if self.mirror is not None:
            text += f"; {self.mirror_percent:g}% mirrored to {self.mirror.version}"
        return text


@dataclass(frozen=True)
class Situation:
    """A rollout as a pass finds it, before deciding."""

    loaded: LoadedPolicy
    cluster: str
    stored: StoredState | None
    """None when the rollout has no routing file yet."""
    primary: ModelVersion | None
    candidates: tuple[ModelVersion, ...]
    step_started: datetime | None
    """When the current state's change took effect (merge time, or sync time when known)."""
    problems: tuple[str, ...] = ()
    rollout_started: datetime | None = None
    """When the rollout's first step took effect: the evidence window starts there."""
    """Why the rollout cannot proceed at all (no primary, ambiguous roles, broken manifest)."""

    @property
    def policy(self) -> RolloutPolicy:
        return self.loaded.policy

    @property
    def state(self) -> RolloutState:
        return self.stored.state if self.stored else RolloutState(policy=self.loaded.file)

    @property
    def needs_verdict(self) -> bool:
        """True when the next move depends on the evidence (a progressing, healthy rollout)."""
        return (
            self.state.phase is Phase.PROGRESSING
            and not self.problems
            and self.primary is not None
            and any(c.ready for c in self.candidates)
            and not (self.stored and self.stored.hand_edited)
        )


@dataclass(frozen=True)
class Transition:
    """The outcome of one pass for one rollout."""

    situation: Situation
    action: Action
    state: RolloutState
    plan: RoutePlan | None
    """None when there is nothing to route (no primary) or the routing file was edited by hand
    (it is never overwritten but by `resume`): nothing is rendered."""
    kind: TransitionKind
    """The pull request kind if this changes anything."""
    title: str
    reasons: tuple[str, ...]
    edits: tuple[ManifestEdit, ...] = ()
    approval: bool = False
    """A human must merge this change even if the policy lets the bot merge its kind."""
    verdict: VerdictLike | None = None

    @property
    def auto_merge(self) -> bool:
        return not self.approval and self.situation.policy.auto_merges(self.kind)


# ---------------------------------------------------------------------------------------------
# assess


def assess(
    loaded: LoadedPolicy,
    *,
    cluster: str,
    versions: Sequence[ModelVersion],
    stored: StoredState | None,
    step_started: datetime | None,
    blocking: Sequence[str] = (),
    rollout_started: datetime | None = None,
) -> Situation:
    """Find the primary and the candidates of one rollout in one cluster."""
    policy = loaded.policy
    state = stored.state if stored else None
    problems = list(blocking)
    if (
        policy.spec.target.kind is TargetKind.KSERVE
        and policy.spec.target.mode is TargetMode.NATIVE
    ):
        primary, candidates, found = _native_kserve(versions, state)
        problems.extend(found)
    else:
        primary, candidates, found = _split_roles(policy, versions, state)
        problems.extend(found)
    return Situation(
        loaded=loaded,
        cluster=cluster,
        stored=stored,
        primary=primary,
        candidates=tuple(candidates),
        step_started=step_started,
        problems=tuple(problems),
        rollout_started=rollout_started,
    )


def _split_roles(
    policy: RolloutPolicy, versions: Sequence[ModelVersion], state: RolloutState | None
) -> tuple[ModelVersion | None, list[ModelVersion], list[str]]:
    if not versions:
        return (
            None,
            [],
            [
                f"no version of model {policy.model!r} found: label its manifests "
                f'app.kubernetes.io/name: {policy.model} and gitops-rollout.dev/watch: "true"'
            ],
        )
    primary: ModelVersion | None = None
    if state and state.primary:
        primary = next((v for v in versions if v.key == state.primary.key), None)
    if primary is None:
        labelled = [v for v in versions if v.role is Role.PRIMARY]
        if len(labelled) > 1:
            names = ", ".join(v.key for v in labelled)
            return None, [], [f"more than one primary ({names}): label exactly one as primary"]
        if labelled:
            primary = labelled[0]
        elif policy.spec.target.mode is TargetMode.NATIVE and any(
            v.traffic is not None for v in versions
        ):
            primary = max(versions, key=lambda v: v.traffic or 0)
        elif len(versions) == 1:
            primary = versions[0]
        else:
            names = ", ".join(v.key for v in versions)
            return (
                None,
                [],
                [
                    f"cannot tell the primary among {names}: label it "
                    "gitops-rollout.dev/role: primary (or name versions <model>-0, <model>-1)"
                ],
            )
    candidates = [v for v in versions if v.key != primary.key]
    return primary, candidates, []


def _native_kserve(
    versions: Sequence[ModelVersion], state: RolloutState | None
) -> tuple[ModelVersion | None, list[ModelVersion], list[str]]:
    # One InferenceService holds both revisions. The state remembers the primary's version
    # and spec digest; a manifest that differs from it is the candidate, and the primary is
    # the previous revision KServe keeps serving.
    if len(versions) != 1:
        return None, [], [f"kserve native mode expects one InferenceService, found {len(versions)}"]
    isvc = versions[0]
    if state is None or state.primary is None or state.primary.digest in ("", isvc.spec_digest):
        return isvc, [], []
    previous = replace(isvc, version=state.primary.version, spec_digest=state.primary.digest)
    return previous, [isvc], []


# ---------------------------------------------------------------------------------------------
# advance


def rollout_id(cluster: str, primary: ModelVersion, candidates: Sequence[ModelVersion]) -> str:
    """A stable id for one rollout: the same cluster, primary and candidates give the same id."""
    marks = [cluster, _mark(primary).encode(), *(_mark(c).encode() for c in candidates)]
    return hashlib.sha256("\n".join(marks).encode()).hexdigest()[:12]


def _mark(version: ModelVersion) -> VersionMark:
    return VersionMark(version.key, version.version, version.spec_digest)


def _steps(policy: RolloutPolicy) -> int:
    strategy = policy.spec.strategy
    if isinstance(strategy, ProgressiveStrategy):
        return len(strategy.steps)
    if isinstance(strategy, BlueGreenStrategy):
        return len(strategy.stages)
    if isinstance(strategy, ABStrategy):
        return strategy.iterations
    return 1


def _step_rules(policy: RolloutPolicy, step: int) -> tuple[timedelta, bool, str]:
    """(minimum duration, approval needed, label) of 1-based `step`."""
    strategy = policy.spec.strategy
    if isinstance(strategy, ProgressiveStrategy | BlueGreenStrategy):
        steps = strategy.steps if isinstance(strategy, ProgressiveStrategy) else strategy.stages
        s = steps[min(step, len(steps)) - 1]
        label = s.name if hasattr(s, "name") else f"step {step}/{len(steps)}"
        return s.min_duration, s.approval, str(label)
    if isinstance(strategy, ABStrategy):
        return strategy.min_duration, False, f"iteration {step}/{strategy.iterations}"
    assert isinstance(strategy, CanaryStrategy | MirrorStrategy)
    return strategy.min_duration, False, strategy.type.value


def _split(total: int, versions: Sequence[ModelVersion]) -> list[tuple[ModelVersion, int]]:
    if not versions:
        return []
    share, extra = divmod(total, len(versions))
    return [(v, share + (1 if i < extra else 0)) for i, v in enumerate(versions)]


def _overrides(
    policy: RolloutPolicy, versions: Sequence[ModelVersion]
) -> tuple[tuple[str, ModelVersion], ...]:
    header = policy.spec.routing.override_header
    if header is None:
        return ()
    ready = {v.version: v for v in versions if v.ready}
    ready.update({v.ref.name: v for v in versions if v.ready})
    if header.values:
        return tuple(
            (value, ready[name]) for value, name in sorted(header.values.items()) if name in ready
        )
    return tuple((v.version, v) for v in versions if v.ready)


def plan_for(
    policy: RolloutPolicy,
    *,
    primary: ModelVersion,
    candidates: Sequence[ModelVersion],
    phase: Phase,
    step: int,
    weights: Mapping[str, int] | None = None,
) -> RoutePlan:
    """The routing of a phase and step; versions that are not Ready get no route."""
    ready = [c for c in candidates if c.ready]
    overrides = _overrides(policy, [primary, *candidates])
    strategy = policy.spec.strategy
    if phase is Phase.PROMOTING and step == 1:
        if policy.promotion_mode is PromotionMode.REPLACE_PRIMARY and ready:
            return RoutePlan(primary, weighted=tuple(_split(100, ready)), overrides=overrides)
        return RoutePlan(primary, overrides=overrides)
    if phase is not Phase.PROGRESSING or not ready:
        return RoutePlan(primary, overrides=overrides)
    if isinstance(strategy, CanaryStrategy):
        return RoutePlan(primary, matched=tuple(ready), overrides=overrides)
    if isinstance(strategy, MirrorStrategy):
        return RoutePlan(
            primary, mirror=ready[0], mirror_percent=strategy.mirror_percent, overrides=overrides
        )
    if isinstance(strategy, ABStrategy):
        arms = [primary, *ready]
        if weights and all(v.key in weights for v in arms):
            given = [(v, int(weights[v.key])) for v in arms]
            total = sum(w for _, w in given)
            if total != 100 and total > 0:
                given = _normalise(given)
            return RoutePlan(primary, weighted=tuple(given), overrides=overrides)
        if strategy.initial_candidate_weight is not None:
            cand = _split(strategy.initial_candidate_weight, ready)
            base = 100 - strategy.initial_candidate_weight
            return RoutePlan(primary, weighted=((primary, base), *cand), overrides=overrides)
        return RoutePlan(primary, weighted=tuple(_split(100, arms)), overrides=overrides)
    assert isinstance(strategy, ProgressiveStrategy | BlueGreenStrategy)
    steps = strategy.steps if isinstance(strategy, ProgressiveStrategy) else strategy.stages
    weight = steps[min(max(step, 1), len(steps)) - 1].weight
    weighted = [(primary, 100 - weight), *_split(weight, ready)]
    return RoutePlan(primary, weighted=tuple(weighted), overrides=overrides)


def _normalise(given: list[tuple[ModelVersion, int]]) -> list[tuple[ModelVersion, int]]:
    total = sum(w for _, w in given)
    scaled = [(v, w * 100 // total) for v, w in given]
    short = 100 - sum(w for _, w in scaled)
    first, w0 = scaled[0]
    return [(first, w0 + short), *scaled[1:]]


def _weights_of(plan: RoutePlan) -> tuple[tuple[str, int], ...]:
    return tuple((v.key, w) for v, w in plan.weighted)


def _native_edits(
    policy: RolloutPolicy, plan: RoutePlan, versions: Sequence[ModelVersion]
) -> tuple[ManifestEdit, ...]:
    """Native modes carry the weights in the human-owned manifest instead of a routing object."""
    if policy.spec.target.mode is not TargetMode.NATIVE:
        return ()
    edits = []
    if policy.spec.target.kind is TargetKind.KSERVE:
        # The candidate is the InferenceService itself (its latest revision); the primary is
        # the previous revision, so the candidate's share is canaryTrafficPercent.
        isvc = next((v for v in versions if v is not plan.primary), None)
        if isvc is None:
            return ()
        weight = sum(w for v, w in plan.weighted if v is isvc)
        if isvc.traffic != weight:
            return (ManifestEdit(EditKind.SET_TRAFFIC, isvc, value=weight),)
        return ()
    for version in versions:
        wanted = plan.weight_of(version)
        shadow = plan.mirror is not None and plan.mirror.key == version.key
        if shadow:
            edits.append(ManifestEdit(EditKind.SET_TRAFFIC, version, value="shadow"))
        elif version.traffic != wanted:
            edits.append(ManifestEdit(EditKind.SET_TRAFFIC, version, value=wanted))
    return tuple(edits)


def advance(
    situation: Situation,
    *,
    now: datetime,
    verdict: VerdictLike | None = None,
    command: Command | None = None,
    gate: str | None = None,
) -> Transition:
    """Decide the next state of one rollout.

    `verdict` is the analysis stage's answer for a progressing rollout (None when the policy has
    no analysis: steps then advance on time and approvals). `gate` is why this cluster may not
    start yet (an earlier cluster in the policy's order has not promoted the candidate).
    """
    s = situation
    state = s.state
    policy = s.policy
    primary = s.primary

    def hold(reason: str, *extra: str) -> Transition:
        plan = None
        if primary is not None:
            plan = plan_for(
                policy,
                primary=primary,
                candidates=s.candidates,
                phase=state.phase,
                step=state.step,
                weights=dict(state.weights),
            )
            if state.phase is Phase.PAUSED and state.paused_from is not None:
                plan = plan_for(
                    policy,
                    primary=primary,
                    candidates=s.candidates,
                    phase=state.paused_from,
                    step=state.step,
                    weights=dict(state.weights),
                )
        title = f"routing: {plan.describe()}" if plan else "no routing"
        if s.stored and s.stored.hand_edited:
            # Rendering would overwrite the person's edit: nothing is rendered until `resume`.
            plan, title = None, "hand-edited routing left as it is"
        elif s.problems:
            # The cluster cannot be trusted now (unreachable, a manifest that does not parse):
            # readiness reads Unknown, and re-rendering would move the candidate's traffic (or
            # write a first routing file). Holding writes nothing; main keeps what it has.
            plan, title = None, "routing left as it is while held"
        return Transition(s, Action.HOLD, state, plan, TransitionKind.STEP, title, (reason, *extra))

    if s.problems:
        return hold(*s.problems)
    assert primary is not None
    if s.stored and s.stored.hand_edited and command is not Command.RESUME:
        return hold(
            "the generated routing file was edited by hand; the rollout is paused. Revert the "
            "edit, or run `gitops-rollout resume` to regenerate it"
        )

    if command is Command.PAUSE:
        if state.phase is Phase.PAUSED:
            return hold("already paused")
        new = replace(
            state, phase=Phase.PAUSED, paused_from=state.phase, reason="paused by operator"
        )
        t = hold("paused by operator")
        return replace(
            t,
            action=Action.PAUSE,
            state=new,
            kind=TransitionKind.PAUSE,
            title="pause",
            reasons=("paused by an operator; `gitops-rollout resume` continues",),
        )
    if command is Command.RESUME:
        base = state
        if state.phase is Phase.PAUSED:
            base = replace(state, phase=state.paused_from or Phase.IDLE, paused_from=None)
        new = replace(base, reason="resumed by operator")
        plan = plan_for(
            policy,
            primary=primary,
            candidates=s.candidates,
            phase=new.phase,
            step=new.step,
            weights=dict(new.weights),
        )
        return Transition(
            s,
            Action.RESUME,
            new,
            plan,
            TransitionKind.RESUME,
            "resume",
            ("resumed by an operator; the generated files are rewritten",),
            edits=_native_edits(policy, plan, [primary, *s.candidates]),
        )
    if state.phase is Phase.PAUSED:
        return hold(f"paused: {state.reason or 'by operator'}")

    candidate = s.candidates[0] if s.candidates else None
    if command is Command.ABORT:
        if state.phase not in (Phase.PROGRESSING, Phase.PROMOTING) or candidate is None:
            return hold("nothing to abort: no rollout in progress")
        return _rollback(s, primary, candidate, ("aborted by an operator",), None)
    if command is Command.PROMOTE:
        if candidate is None or not candidate.ready:
            return hold("cannot promote: no Ready candidate")
        if state.phase is Phase.PROMOTING:
            return hold("already promoting")
        return _promote(s, primary, ("promoted by an operator",), None, winner=candidate)

    if state.phase in (Phase.IDLE, Phase.ROLLED_BACK):
        return _from_idle(s, primary, candidate, now=now, gate=gate)
    if state.phase is Phase.PROMOTING:
        return _promoting(s, primary, candidate)
    return _progressing(s, primary, candidate, now=now, verdict=verdict)


def _from_idle(
    s: Situation,
    primary: ModelVersion,
    candidate: ModelVersion | None,
    *,
    now: datetime,
    gate: str | None,
) -> Transition:
    state = s.state
    policy = s.policy
    idle_plan = plan_for(policy, primary=primary, candidates=(), phase=Phase.IDLE, step=0)
    if state.phase is Phase.IDLE:
        idle_state = replace(state, primary=_mark(primary), candidates=(), weights=(), step=0)
    else:
        idle_state = replace(state, primary=_mark(primary))
    kind = TransitionKind.ADOPT if s.stored is None else TransitionKind.STEP

    def stay(reason: str) -> Transition:
        return Transition(
            s, Action.NONE, idle_state, idle_plan, kind, _idle_title(s, idle_plan), (reason,)
        )

    if candidate is None:
        return stay(f"no candidate; all traffic to {primary.version}")
    rolled = state.candidate
    if (
        state.phase is Phase.ROLLED_BACK
        and rolled
        and rolled.key == candidate.key
        and (rolled.digest == candidate.spec_digest and rolled.version == candidate.version)
    ):
        if s.policy.spec.target.delete_candidate_on_rollback:
            return Transition(
                s,
                Action.CLEANUP,
                replace(state, reason="rolled-back candidate removed"),
                idle_plan,
                TransitionKind.CLEANUP,
                f"remove rolled-back {candidate.version}",
                (f"policy deletes rolled-back candidates; removing {candidate.key}",),
                edits=(ManifestEdit(EditKind.REMOVE, candidate),),
            )
        return stay(
            f"{candidate.version} was rolled back ({state.reason or 'see history'}); "
            "a changed candidate starts a new rollout"
        )
    if not candidate.ready:
        return stay(
            f"candidate {candidate.version} ({candidate.key}) is not Ready"
            + (f": {candidate.status.reason}" if candidate.status.reason else "")
            + "; it gets no traffic until it is"
        )
    if gate:
        return stay(gate)
    new = RolloutState(
        phase=Phase.PROGRESSING,
        step=1,
        primary=_mark(primary),
        candidates=tuple(_mark(c) for c in s.candidates),
        policy=s.loaded.file,
        reason=f"candidate {candidate.version} is Ready",
        rollout=rollout_id(s.cluster, primary, s.candidates),
    )
    plan = plan_for(policy, primary=primary, candidates=s.candidates, phase=new.phase, step=1)
    new = replace(new, weights=_weights_of(plan))
    _, approval, label = _step_rules(policy, 1)
    return Transition(
        s,
        Action.START,
        new,
        plan,
        TransitionKind.STEP,
        _progress_title(policy, 1, plan, label),
        (f"candidate {candidate.version} is Ready; starting {policy.spec.strategy.type.value}",),
        edits=_native_edits(policy, plan, [primary, *s.candidates]),
        approval=approval,
    )


def _idle_title(s: Situation, plan: RoutePlan) -> str:
    return "adopt" if s.stored is None else f"routing: {plan.describe()}"


def _progress_title(policy: RolloutPolicy, step: int, plan: RoutePlan, label: str) -> str:
    strategy = policy.spec.strategy.type
    if strategy is StrategyKind.CANARY:
        return "canary: matched requests to " + ", ".join(v.version for v in plan.matched)
    if strategy is StrategyKind.MIRROR and plan.mirror is not None:
        return f"mirror {plan.mirror_percent:g}% to {plan.mirror.version}"
    cand = sum(w for v, w in plan.weighted if v.key != plan.primary.key)
    if strategy is StrategyKind.AB:
        return f"A/B start: {plan.describe()}"
    if strategy is StrategyKind.BLUE_GREEN:
        return f"{label} ({plan.describe()})"
    return f"{label} -> {cand}%"


def _progressing(
    s: Situation,
    primary: ModelVersion,
    candidate: ModelVersion | None,
    *,
    now: datetime,
    verdict: VerdictLike | None,
) -> Transition:
    state = s.state
    policy = s.policy
    marked = state.candidate
    if candidate is None:
        return _rollback(s, primary, None, ("the candidate's manifest was removed from Git",), None)
    if marked and (marked.key != candidate.key or marked.digest != candidate.spec_digest):
        restart = replace(s, stored=None)
        t = _from_idle(restart, primary, candidate, now=now, gate=None)
        return replace(
            t,
            kind=TransitionKind.STEP,
            reasons=(
                f"the candidate changed ({marked.version} -> {candidate.version}); "
                "starting again at the first step",
                *t.reasons,
            ),
        )
    plan = plan_for(
        policy,
        primary=primary,
        candidates=s.candidates,
        phase=Phase.PROGRESSING,
        step=state.step,
        weights=dict(state.weights),
    )
    if not candidate.ready:
        return Transition(
            s,
            Action.HOLD,
            state,
            plan,
            TransitionKind.STEP,
            f"{candidate.version} not Ready: traffic to {primary.version}",
            (
                f"candidate {candidate.version} is not Ready"
                + (f" ({candidate.status.reason})" if candidate.status.reason else "")
                + "; its traffic goes to the primary until it is",
            ),
            edits=_native_edits(policy, plan, [primary, *s.candidates]),
        )
    steps = _steps(policy)
    last = state.step >= steps
    if isinstance(policy.spec.strategy, ABStrategy):
        done, planned = ab_looks(s, now)
        last = done >= planned
    min_duration, _, _ = _step_rules(policy, state.step)
    if verdict is None:
        if policy.spec.analysis is not None:
            return _hold(s, plan, "no verdict from the analysis yet (metrics unavailable)")
        if s.step_started is None:
            return _hold(s, plan, "waiting for this step's change to take effect")
        elapsed = now - s.step_started
        if elapsed < min_duration:
            left = min_duration - elapsed
            return _hold(
                s,
                plan,
                f"step {state.step}/{steps} has run {_fmt(elapsed)} of its {_fmt(min_duration)}; "
                f"{_fmt(left)} to go",
            )
        reasons: tuple[str, ...] = (
            f"step {state.step}/{steps} ran its minimum {_fmt(min_duration)} (no analysis "
            "configured: steps advance on time and approvals)",
        )
        action = "promote" if last else "advance"
    else:
        action = verdict.action.value
        reasons = verdict.reasons
        if (
            s.step_started is not None
            and now - s.step_started < min_duration
            and action in ("advance", "promote")
        ):
            return _hold(
                s,
                plan,
                f"evidence passes, but the step's minimum {_fmt(min_duration)} has not elapsed",
                verdict=verdict,
            )
    if action == "rollback":
        return _rollback(s, primary, candidate, reasons, verdict)
    if isinstance(policy.spec.strategy, ABStrategy):
        done, planned = ab_looks(s, now)
        if action == "promote" or (done >= planned and action != "hold"):
            winner = _winner(s, primary, verdict)
            if winner is None:
                return _inconclusive(s, primary, candidate, verdict)
            return _promote(s, primary, reasons, verdict, winner=winner)
        if verdict is not None and action in ("advance", "hold"):
            return _ab_move(s, primary, verdict, now)
    if action == "hold":
        return _hold(s, plan, *reasons, verdict=verdict)
    if action == "promote" or last:
        return _promote(s, primary, reasons, verdict, winner=candidate)
    nxt = state.step + 1
    plan = plan_for(
        policy, primary=primary, candidates=s.candidates, phase=Phase.PROGRESSING, step=nxt
    )
    _, approval, label = _step_rules(policy, nxt)
    new = replace(state, step=nxt, weights=_weights_of(plan), reason=reasons[0] if reasons else "")
    return Transition(
        s,
        Action.ADVANCE,
        new,
        plan,
        TransitionKind.STEP,
        _progress_title(policy, nxt, plan, label),
        reasons,
        edits=_native_edits(policy, plan, [primary, *s.candidates]),
        approval=approval,
        verdict=verdict,
    )


def _winner(
    s: Situation, primary: ModelVersion, verdict: VerdictLike | None
) -> ModelVersion | None:
    if verdict is None or verdict.winner is None:
        return None
    for v in (primary, *s.candidates):
        if verdict.winner in (v.version, v.key):
            return v
    return None


AB_MIN_MOVE = 5
"""Percentage points the suggested A/B split must move before it is worth a pull request."""


def ab_looks(situation: Situation, now: datetime) -> tuple[int, int]:
    """(looks done, looks planned) of an A/B test: one look per analysis interval (or the
    strategy's minimum duration, if longer) since the rollout's first step took effect."""
    strategy = situation.policy.spec.strategy
    assert isinstance(strategy, ABStrategy)
    analysis = situation.policy.spec.analysis
    every = max(analysis.interval if analysis else timedelta(minutes=1), strategy.min_duration)
    since = situation.rollout_started or situation.step_started
    done = int((now - since) / every) if since is not None else 0
    return done, strategy.iterations


def _ab_move(
    s: Situation, primary: ModelVersion, verdict: VerdictLike, now: datetime
) -> Transition:
    state = s.state
    current = dict(state.weights)
    by_version = {v.version: v.key for v in (primary, *s.candidates)}
    weights = {by_version.get(k, k): w for k, w in (verdict.suggested_weights or {}).items()}
    plan = plan_for(
        s.policy,
        primary=primary,
        candidates=s.candidates,
        phase=Phase.PROGRESSING,
        step=state.step,
        weights=weights,
    )
    moved = max((abs(w - current.get(v.key, 0)) for v, w in plan.weighted), default=0)
    if not weights or moved < AB_MIN_MOVE:
        held = plan_for(
            s.policy,
            primary=primary,
            candidates=s.candidates,
            phase=Phase.PROGRESSING,
            step=state.step,
            weights=current,
        )
        return _hold(s, held, *verdict.reasons, verdict=verdict)
    done, planned = ab_looks(s, now)
    new = replace(
        state,
        step=state.step + 1,
        weights=_weights_of(plan),
        reason=verdict.reasons[0] if verdict.reasons else "",
    )
    return Transition(
        s,
        Action.ADVANCE,
        new,
        plan,
        TransitionKind.STEP,
        f"A/B look {min(done, planned)}/{planned}: {plan.describe()}",
        verdict.reasons,
        edits=_native_edits(s.policy, plan, [primary, *s.candidates]),
        verdict=verdict,
    )


def _inconclusive(
    s: Situation, primary: ModelVersion, candidate: ModelVersion, verdict: VerdictLike | None
) -> Transition:
    analysis = s.policy.spec.analysis
    default = analysis.on_inconclusive if analysis else InconclusiveAction.ROLLBACK
    reason = (
        f"no winner after {_steps(s.policy)} iterations: inconclusive; policy says {default.value}"
    )
    if default is InconclusiveAction.PROMOTE:
        return _promote(s, primary, (reason,), verdict, winner=candidate)
    if default is InconclusiveAction.HOLD:
        plan = plan_for(
            s.policy,
            primary=primary,
            candidates=s.candidates,
            phase=Phase.PROGRESSING,
            step=s.state.step,
            weights=dict(s.state.weights),
        )
        return _hold(s, plan, reason, verdict=verdict)
    return _rollback(s, primary, candidate, (reason,), verdict)


def _hold(
    s: Situation, plan: RoutePlan, *reasons: str, verdict: VerdictLike | None = None
) -> Transition:
    return Transition(
        s,
        Action.HOLD,
        s.state,
        plan,
        TransitionKind.STEP,
        f"routing: {plan.describe()}",
        tuple(reasons),
        edits=_native_edits(s.policy, plan, [plan.primary, *s.candidates]),
        verdict=verdict,
    )


def _rollback(
    s: Situation,
    primary: ModelVersion,
    candidate: ModelVersion | None,
    reasons: Sequence[str],
    verdict: VerdictLike | None,
) -> Transition:
    plan = plan_for(s.policy, primary=primary, candidates=(), phase=Phase.IDLE, step=0)
    marks = (_mark(candidate),) if candidate else s.state.candidates
    new = RolloutState(
        phase=Phase.ROLLED_BACK,
        primary=_mark(primary),
        candidates=marks,
        policy=s.loaded.file,
        reason=reasons[0] if reasons else "rolled back",
    )
    name = candidate.version if candidate else (marks[0].version if marks else "candidate")
    return Transition(
        s,
        Action.ROLLBACK,
        new,
        plan,
        TransitionKind.ROLLBACK,
        f"roll back {name}: all traffic to {primary.version}",
        tuple(reasons),
        edits=_native_edits(s.policy, plan, [primary, *s.candidates]),
        verdict=verdict,
    )


def _promote(
    s: Situation,
    primary: ModelVersion,
    reasons: Sequence[str],
    verdict: VerdictLike | None,
    *,
    winner: ModelVersion,
) -> Transition:
    policy = s.policy
    state = s.state
    if (
        policy.spec.target.kind is TargetKind.KSERVE
        and policy.spec.target.mode is TargetMode.NATIVE
    ):
        # KServe promotes by itself once canaryTrafficPercent is gone.
        done = RolloutState(
            phase=Phase.IDLE,
            primary=_mark(winner),
            policy=s.loaded.file,
            reason=f"{winner.version} promoted",
        )
        return Transition(
            s,
            Action.PROMOTE,
            done,
            RoutePlan(winner),
            TransitionKind.PROMOTE,
            f"promote {winner.version}: remove canaryTrafficPercent",
            tuple(reasons),
            edits=(ManifestEdit(EditKind.SET_TRAFFIC, winner, value=None),),
            verdict=verdict,
        )
    if winner.key == primary.key:
        # The baseline won an A/B test: nothing to promote, the candidates go.
        plan = plan_for(policy, primary=primary, candidates=(), phase=Phase.IDLE, step=0)
        new = replace(
            state,
            phase=Phase.PROMOTING,
            step=1,
            weights=_weights_of(plan),
            reason=f"{primary.version} (baseline) won",
        )
        return Transition(
            s,
            Action.PROMOTE,
            new,
            plan,
            TransitionKind.PROMOTE,
            f"promote: {primary.version} (baseline) keeps all traffic",
            tuple(reasons),
            edits=_native_edits(policy, plan, [primary, *s.candidates]),
            verdict=verdict,
        )
    if policy.promotion_mode is PromotionMode.ROUTE_ONLY:
        plan = RoutePlan(winner, overrides=_overrides(policy, [winner]))
        new = replace(
            state,
            phase=Phase.PROMOTING,
            step=1,
            primary=_mark(winner),
            candidates=tuple(_mark(v) for v in (primary, *s.candidates) if v.key != winner.key),
            weights=(),
            reason=reasons[0] if reasons else f"{winner.version} promoted",
        )
        edits: list[ManifestEdit] = list(_native_edits(policy, plan, [primary, *s.candidates]))
        if winner.role is Role.CANDIDATE:
            edits.append(ManifestEdit(EditKind.SET_ROLE, winner, value=Role.PRIMARY.value))
        if primary.role is Role.PRIMARY:
            edits.append(ManifestEdit(EditKind.SET_ROLE, primary, value=Role.CANDIDATE.value))
        return Transition(
            s,
            Action.PROMOTE,
            new,
            plan,
            TransitionKind.PROMOTE,
            f"promote {winner.version}: all traffic to it",
            tuple(reasons),
            edits=tuple(edits),
            verdict=verdict,
        )
    others = [c for c in s.candidates if c.key != winner.key]
    plan = plan_for(policy, primary=primary, candidates=[winner], phase=Phase.PROMOTING, step=1)
    new = replace(
        state,
        phase=Phase.PROMOTING,
        step=1,
        weights=_weights_of(plan),
        candidates=(_mark(winner), *(_mark(c) for c in others)),
        primary=VersionMark(primary.key, winner.version, winner.spec_digest),
        reason=reasons[0] if reasons else f"{winner.version} promoted",
    )
    title = f"promote {winner.version}: {primary.ref.name} takes its spec"
    if isinstance(policy.spec.strategy, BlueGreenStrategy):
        stage = policy.spec.strategy.promote_stage
        title = f"{stage} ({primary.ref.name} takes {winner.version}'s spec)"
    edits = [ManifestEdit(EditKind.ADOPT_SPEC, primary, source=winner)]
    edits.extend(_native_edits(policy, plan, [primary, *s.candidates]))
    return Transition(
        s,
        Action.PROMOTE,
        new,
        plan,
        TransitionKind.PROMOTE,
        title,
        tuple(reasons),
        edits=tuple(edits),
        verdict=verdict,
    )


def _promoting(s: Situation, primary: ModelVersion, candidate: ModelVersion | None) -> Transition:
    state = s.state
    policy = s.policy
    idle_plan = plan_for(policy, primary=primary, candidates=(), phase=Phase.IDLE, step=0)
    leftovers = [c for c in s.candidates if c.key in {m.key for m in state.candidates}]
    if policy.promotion_mode is PromotionMode.ROUTE_ONLY or state.step >= 2:
        if not leftovers:
            done = RolloutState(
                phase=Phase.IDLE,
                primary=_mark(primary),
                policy=s.loaded.file,
                reason=f"{primary.version} promoted",
            )
            return Transition(
                s,
                Action.NONE,
                done if state.step >= 2 else state,
                idle_plan,
                TransitionKind.CLEANUP,
                "promotion complete",
                ("promotion complete",),
            )
        done = RolloutState(
            phase=Phase.IDLE,
            primary=_mark(primary),
            policy=s.loaded.file,
            reason=f"{primary.version} promoted; {_objects(leftovers)} removed",
        )
        return Transition(
            s,
            Action.CLEANUP,
            done,
            idle_plan,
            TransitionKind.CLEANUP,
            f"remove {_objects(leftovers)}",
            ("traffic left these versions in an earlier, merged change; their manifests go now",),
            edits=tuple(ManifestEdit(EditKind.REMOVE, c) for c in leftovers),
        )
    # replace-primary, promote merged: wait for the primary to run the new spec, then route back.
    target = state.primary.version if state.primary else primary.version
    current_plan = plan_for(
        policy, primary=primary, candidates=s.candidates, phase=Phase.PROMOTING, step=1
    )
    live_version = primary.status.version or primary.version
    if primary.version != target or not primary.ready or live_version != target:
        why = f"{primary.ref.name} is not Ready yet with {target}" + (
            f" ({primary.status.reason})" if primary.status.reason else ""
        )
        return _hold(s, current_plan, why + "; traffic stays on the candidate")
    new = replace(state, step=2, weights=(), reason=f"{primary.ref.name} is Ready with {target}")
    title = f"finalize: all traffic back to {primary.ref.name} ({target})"
    if isinstance(policy.spec.strategy, BlueGreenStrategy):
        title = f"{policy.spec.strategy.finalize_stage} ({primary.ref.name} {target} 100%)"
    # The candidate still runs until the cleanup removes it: its override header keeps working.
    final_plan = plan_for(
        policy, primary=primary, candidates=s.candidates, phase=Phase.IDLE, step=0
    )
    return Transition(
        s,
        Action.FINALIZE,
        new,
        final_plan,
        TransitionKind.FINALIZE,
        title,
        (f"{primary.ref.name} now runs {target} and is Ready; traffic returns to it",),
        edits=_native_edits(policy, final_plan, [primary, *s.candidates]),
    )


def _fmt(value: timedelta) -> str:
    total = max(0, int(value.total_seconds()))
    minutes, seconds = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


def _objects(versions: Sequence[ModelVersion]) -> str:
    """``wisdom-1 (1.1)``: the objects a cleanup removes, by name (after a replace-primary
    promotion the primary runs the same version the removed object did)."""
    return ", ".join(f"{v.ref.name} ({v.version})" for v in versions)
