"""Verdicts for progressing rollouts: evidence from the metrics stage, judged by the analysis stage.

For every rollout whose next move depends on the evidence, this asks the metrics provider for
per-interval counts since the rollout's first step took effect (one query per metric and
namespace for all of them) and calls `analysis.decide` with the step's rules. The evidence
starts at the rollout's start itself, warm-up included: `decide` leaves the warm-up out and
says how much it left out (the PR shows it), so it must see it.

A rollout whose metrics cannot be read holds, or rolls back once the policy's no-data timeout
has passed and its ``noData`` says so. The timeout runs from the last pass that read its
metrics, as far as this judge remembers (a daemon keeps one judge), else from the step's start.
A custom query Prometheus rejects is bad input, not missing data: the rollout holds, with the
policy's file, line and field, until the query is fixed; it never rolls back or promotes for
it. Nothing here writes anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from gitops_rollout import analysis
from gitops_rollout.analysis.decide import decide
from gitops_rollout.errors import MetricsError
from gitops_rollout.metrics import ProviderConfig, create_provider
from gitops_rollout.metrics.base import MetricsProvider, QueryError, RolloutRef, VersionRef, utc
from gitops_rollout.metrics.collect import collect
from gitops_rollout.metrics.evidence import Evidence
from gitops_rollout.planning import RolloutKey, key_of
from gitops_rollout.policy import (
    ABStrategy,
    BlueGreenStrategy,
    NoDataAction,
    ProgressiveStrategy,
    StrategyKind,
)
from gitops_rollout.state import Phase
from gitops_rollout.transitions import Situation, VerdictLike, ab_looks
from gitops_rollout.validation import query_problem


def _versions(s: Situation) -> tuple[VersionRef, ...]:
    assert s.primary is not None
    return tuple(
        VersionRef(
            version=v.version,
            name=v.ref.name,
            namespace=v.ref.namespace,
            predictor=v.predictor or s.policy.spec.target.predictor,
        )
        for v in (s.primary, *s.candidates)
    )


def _step_rules(s: Situation, now: datetime) -> tuple[timedelta, int, int, bool]:
    """(minimum duration, minimum requests, number of steps, is last step) of the current step."""
    strategy = s.policy.spec.strategy
    step = max(s.state.step, 1)
    if isinstance(strategy, ProgressiveStrategy | BlueGreenStrategy):
        steps = strategy.steps if isinstance(strategy, ProgressiveStrategy) else strategy.stages
        current = steps[min(step, len(steps)) - 1]
        return current.min_duration, current.min_requests, len(steps), step >= len(steps)
    if isinstance(strategy, ABStrategy):
        done, planned = ab_looks(s, now)
        return strategy.min_duration, 0, planned, done >= planned
    return strategy.min_duration, strategy.min_requests, 1, True


def _weights(s: Situation) -> dict[str, int]:
    """Configured share per version label (empty for header-matched and mirrored traffic)."""
    if s.policy.spec.strategy.type in (StrategyKind.CANARY, StrategyKind.MIRROR):
        return {}
    labels = {v.key: v.version for v in (s.primary, *s.candidates) if v is not None}
    return {labels[k]: w for k, w in s.state.weights if k in labels}


def _hold(reason: str) -> analysis.Verdict:
    return analysis.Verdict(action=analysis.Action.HOLD, reasons=(reason,))


@dataclass
class Judge:
    """Turns situations into verdicts with one metrics backend."""

    provider: MetricsProvider
    last_read: dict[RolloutKey, datetime] = field(default_factory=dict)
    """When each rollout's metrics were last read, for the no-data timeout of an outage."""

    @staticmethod
    def from_source(*, metrics_file: str | None, prometheus: str | None) -> Judge:
        if metrics_file:
            return Judge(create_provider("file", ProviderConfig(metrics_file)))
        assert prometheus
        return Judge(create_provider("prometheus", ProviderConfig(prometheus)))

    def __call__(
        self, situations: Sequence[Situation], *, now: datetime
    ) -> Mapping[RolloutKey, VerdictLike]:
        judged = [s for s in situations if s.policy.spec.analysis is not None]
        refs: dict[str, tuple[RolloutKey, Situation]] = {}
        requests = []
        verdicts: dict[RolloutKey, VerdictLike] = {}
        for s in judged:
            key = key_of(s.loaded, s.cluster)
            started = s.rollout_started or s.step_started
            if started is None or s.step_started is None:
                verdicts[key] = _hold("waiting for this step's change to take effect")
                continue
            refs[str(key)] = (key, s)
            ref = RolloutRef.from_policy(
                s.policy, key=str(key), versions=_versions(s), step_start=started
            )
            # From the start itself: decide excludes the warm-up and reports it.
            requests.append(replace(ref, since=utc(started)))
        if not requests:
            return verdicts
        try:
            collected = collect(self.provider, requests, now=now)
        except MetricsError as err:
            for key, s in refs.values():
                verdicts[key] = self._unavailable(key, s, now=now, error=err)
            return verdicts
        for name, (key, s) in refs.items():
            if name in collected.errors:
                verdicts[key] = self._unavailable(key, s, now=now, error=collected.errors[name])
                continue
            self.last_read[key] = now
            verdicts[key] = self._decide(s, collected.evidence[name], now=now)
        return verdicts

    def _unavailable(
        self, key: RolloutKey, s: Situation, *, now: datetime, error: MetricsError
    ) -> VerdictLike:
        spec = s.policy.spec.analysis
        assert spec is not None
        if isinstance(error, QueryError) and error.field:
            problem = query_problem(s.loaded, error)
            return _hold(
                f"{problem}; holding until the query is fixed (a rejected query is neither "
                "a pass nor a failure)"
            )
        reason = f"metrics unavailable: {error}"
        seen = [t for t in (s.step_started, self.last_read.get(key)) if t is not None]
        waited = now - max(seen) if seen else timedelta(0)
        if spec.no_data is NoDataAction.ROLLBACK and waited >= spec.no_data_timeout:
            return analysis.Verdict(
                action=analysis.Action.ROLLBACK,
                reasons=(
                    f"{reason}; no evidence for {waited} (noDataTimeout {spec.no_data_timeout}) "
                    "and the policy says noData: rollback",
                ),
            )
        return _hold(f"{reason}; holding (nothing advances or promotes without evidence)")

    @staticmethod
    def _decide(s: Situation, evidence: Evidence, *, now: datetime) -> VerdictLike:
        spec = s.policy.spec.analysis
        assert spec is not None and s.primary is not None and s.step_started is not None
        min_duration, min_requests, _, last = _step_rules(s, now)
        strategy = s.policy.spec.strategy
        floor = strategy.exploration_floor if isinstance(strategy, ABStrategy) else 0.10
        ready = [c.version for c in s.candidates if c.ready]
        return decide(
            spec,
            evidence,
            baseline=s.primary.version,
            candidates=ready,
            weights=_weights(s),
            step_started=s.step_started,
            now=now,
            last_step=last or s.state.phase is not Phase.PROGRESSING,
            reward_mode=isinstance(strategy, ABStrategy),
            min_duration=min_duration,
            min_requests=min_requests,
            exploration_floor=floor,
        )
