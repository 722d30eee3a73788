"""decide(): one table row per branch of ANALYSIS.md's "decision each pass"."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

import numpy as np
import pytest

from gitops_rollout.analysis import Action, CheckVerdict, Comparison, Verdict
from gitops_rollout.analysis.decide import decide
from gitops_rollout.metrics.evidence import Evidence
from gitops_rollout.policy import (
    Analysis,
    CustomMetric,
    InconclusiveAction,
    MetricKind,
    NoDataAction,
    Objective,
    Reward,
)

from . import simdata
from .simdata import MINUTE, T0


def run(
    ev: Evidence,
    analysis: Analysis | None = None,
    *,
    last_step: bool = True,
    weights: Mapping[str, int] | None = None,
    step_started: datetime = T0,
    now: datetime | None = None,
    candidates: tuple[str, ...] = ("v2",),
    **kw: object,
) -> Verdict:
    return decide(
        analysis or Analysis(),
        ev,
        baseline="v1",
        candidates=candidates,
        weights=weights or {"v1": 50, "v2": 50},
        step_started=step_started,
        now=now or ev.boundaries[-1],
        last_step=last_step,
        **kw,  # type: ignore[arg-type]
    )


def checks_of(verdict: Verdict, metric: str) -> list[CheckVerdict]:
    return [c.verdict for c in verdict.checks if c.metric == metric]


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------
# 1. Data gates


def test_no_metrics_for_the_candidate_holds():
    ev = simdata.canary(rng(1), intervals=5)
    del ev.series["v2"]
    verdict = run(ev)
    assert verdict.action is Action.HOLD
    assert "no metrics were found for v2" in verdict.reasons[0]
    assert "neither a pass nor a failure" in verdict.reasons[0]


@pytest.mark.parametrize(
    ("no_data", "minutes_later", "action"),
    [
        pytest.param(NoDataAction.HOLD, 0, Action.HOLD, id="missing-scrape-holds"),
        pytest.param(NoDataAction.ROLLBACK, 0, Action.HOLD, id="rollback-policy-waits"),
        pytest.param(NoDataAction.HOLD, 30, Action.HOLD, id="timeout-hold-policy"),
        pytest.param(NoDataAction.ROLLBACK, 30, Action.ROLLBACK, id="timeout-rollback-policy"),
    ],
)
def test_missing_latest_scrape_holds_until_the_no_data_timeout(no_data, minutes_later, action):
    # A 2x-error candidate: the data so far would roll it back, but the gate comes first.
    ev = simdata.canary(rng(2), intervals=20, error_ratio=3.0, missing=(19,))
    analysis = Analysis(no_data=no_data, no_data_timeout=timedelta(minutes=10))
    verdict = run(ev, analysis, now=ev.boundaries[-1] + minutes_later * MINUTE)
    assert verdict.action is action
    assert "10:19-10:20 is missing" in verdict.reasons[0] or "too long ago" in verdict.reasons[0]
    assert verdict.checks == ()


def test_sample_ratio_mismatch_holds_and_reports_the_split():
    ev = simdata.canary(rng(3), intervals=5, share=0.4)
    verdict = run(ev, weights={"v1": 50, "v2": 50})
    assert verdict.action is Action.HOLD
    assert "sample-ratio mismatch" in verdict.reasons[0]
    (srm,) = verdict.checks
    assert srm.comparison is Comparison.TRAFFIC_SPLIT and srm.verdict is CheckVerdict.FAIL
    assert srm.candidate == pytest.approx(0.6, abs=0.01)


def test_sample_ratio_is_only_checked_on_the_current_step():
    # The first 5 minutes ran at 10 %, the current step (from 10:05) at 40 %.
    early = simdata.canary(rng(4), intervals=5, share=0.1)
    late = simdata.canary(rng(5), intervals=5, share=0.4, start=T0 + 5 * MINUTE)
    ev = _concat(early, late)
    verdict = run(ev, weights={"v1": 60, "v2": 40}, step_started=T0 + 5 * MINUTE, last_step=False)
    assert verdict.action is Action.ADVANCE
    assert checks_of(verdict, "traffic-split") == [CheckVerdict.PASS]


# ---------------------------------------------------------------------------------------------
# 2. Rollback


@pytest.mark.parametrize(
    ("kwargs", "metric", "phrase"),
    [
        pytest.param(
            {"error_ratio": 2.0, "intervals": 15},
            "error-rate",
            "v2's error-rate is worse than v1's",
            id="2x-errors",
        ),
        pytest.param(
            {"latency": 1.3, "intervals": 3},
            "mean-latency",
            "v2's mean-latency is worse than v1's",
            id="30%-slower",
        ),
        pytest.param(
            {"error_ratio": 10.0, "intervals": 1, "share": 0.05},
            "error-rate",
            "rollback margin of 1.00x",
            id="catastrophe-first-pass",
        ),
    ],
)
def test_a_worse_candidate_is_rolled_back(kwargs, metric, phrase):
    share = kwargs.get("share", 0.5)
    ev = simdata.canary(rng(6), **kwargs)
    weight = round(100 * share)
    verdict = run(ev, weights={"v1": 100 - weight, "v2": weight}, last_step=False)
    assert verdict.action is Action.ROLLBACK
    assert CheckVerdict.FAIL in checks_of(verdict, metric)
    assert phrase in verdict.reasons[0]
    assert verdict.reasons[-1] == "Rolling back."


def test_the_tail_test_catches_a_slow_path():
    ev = simdata.canary(rng(7), intervals=5, slow=0.05)
    analysis = Analysis(objectives=(Objective(metric="p99-latency"),))
    verdict = run(ev, analysis)
    assert verdict.action is Action.ROLLBACK
    (tail,) = verdict.checks[1:]
    assert tail.metric == "p99-latency" and tail.verdict is CheckVerdict.FAIL
    assert "the bucket edge nearest the p99" in tail.note


@pytest.mark.parametrize(
    ("objective", "kwargs", "action", "phrase"),
    [
        pytest.param(
            Objective(metric="error-rate", upper_limit=0.01),
            {"base_error": 0.02},
            Action.ROLLBACK,
            "breaks its upper limit",
            id="error-rate-above-limit",
        ),
        pytest.param(
            Objective(metric="error-rate", upper_limit=0.02),
            {"base_error": 0.005},
            Action.PROMOTE,
            "error-rate at most",
            id="error-rate-within-limit",
        ),
        pytest.param(
            Objective(metric="mean-latency", upper_limit=50.0),
            {},
            Action.ROLLBACK,
            "breaks its upper limit",
            id="mean-latency-above-limit",
        ),
        pytest.param(
            Objective(metric="mean-latency", upper_limit=2000.0),
            {},
            Action.PROMOTE,
            "mean-latency at most",
            id="mean-latency-within-limit",
        ),
        pytest.param(
            Objective(metric="p95-latency", upper_limit=100.0),
            {},
            Action.ROLLBACK,
            "breaks its upper limit",
            id="p95-above-limit",
        ),
        pytest.param(
            Objective(metric="p95-latency", upper_limit=5000.0),
            {},
            Action.PROMOTE,
            "p95-latency at most",
            id="p95-within-limit",
        ),
        pytest.param(
            Objective(metric="mean-latency", lower_limit=70.0),
            {},
            Action.ROLLBACK,
            "breaks its lower limit",
            id="below-lower-limit",
        ),
    ],
)
def test_absolute_objectives_roll_back_when_broken_and_are_needed_to_pass(
    objective, kwargs, action, phrase
):
    ev = simdata.canary(rng(8), intervals=20, **kwargs)
    verdict = run(ev, Analysis(objectives=(objective,)))
    assert verdict.action is action
    assert phrase in verdict.reasons[0]
    limits = [c for c in verdict.checks if c.comparison is not Comparison.TRAFFIC_SPLIT]
    assert [c.comparison for c in limits] == [
        Comparison.UPPER_LIMIT if objective.upper_limit is not None else Comparison.LOWER_LIMIT
    ]


def test_custom_ratio_and_counter_metrics_are_tested():
    r = rng(9)
    n = simdata.split(r, 20, traffic=100.0, shares=(0.5, 0.5))
    good = r.binomial(n.astype(np.int64), [[0.95], [0.80]]).astype(float)
    events = r.poisson(n * np.array([[0.01], [0.01]])).astype(float)
    series = {
        f"v{i + 1}": simdata.version_series(
            r,
            f"v{i + 1}",
            n[i],
            custom={"accuracy": good[i], "accuracy/denominator": n[i], "retries": events[i]},
        )
        for i in range(2)
    }
    ev = Evidence(tuple(T0 + i * MINUTE for i in range(21)), MINUTE, series)
    analysis = Analysis(
        metrics=(
            CustomMetric(name="accuracy", kind=MetricKind.RATIO, query="a", denominator="b"),
            CustomMetric(name="retries", kind=MetricKind.COUNTER, query="c"),
        ),
        objectives=(
            Objective(metric="accuracy", lower_limit=0.9),
            Objective(metric="retries"),
        ),
    )
    verdict = run(ev, analysis)
    assert verdict.action is Action.ROLLBACK
    assert checks_of(verdict, "accuracy") == [CheckVerdict.FAIL]
    assert checks_of(verdict, "retries") != [CheckVerdict.FAIL]
    assert "v2's accuracy breaks its lower limit" in verdict.reasons[0]


# ---------------------------------------------------------------------------------------------
# 3-4. Promote, advance, hold


@pytest.mark.parametrize(
    ("intervals", "last_step", "action", "phrase"),
    [
        pytest.param(40, True, Action.PROMOTE, "Every guardrail passed", id="proven-last-step"),
        pytest.param(40, False, Action.ADVANCE, "Every guardrail passed", id="proven-earlier"),
        pytest.param(
            2,
            False,
            Action.ADVANCE,
            "No guardrail shows a deterioration",
            id="undecided-earlier-advances",
        ),
        pytest.param(2, True, Action.HOLD, "Waiting for evidence", id="undecided-last-holds"),
    ],
)
def test_a_good_candidate_advances_and_is_promoted_once_proven(
    intervals, last_step, action, phrase
):
    ev = simdata.canary(rng(10), intervals=intervals, error_ratio=0.8, latency=0.95)
    verdict = run(ev, last_step=last_step)
    assert verdict.action is action
    assert phrase in verdict.reasons[0]
    assert not verdict.inconclusive
    if intervals == 40:
        relative = [c for c in verdict.checks if c.comparison is Comparison.RELATIVE]
        assert [c.metric for c in relative] == ["error-rate", "mean-latency"]
        assert all(c.verdict is CheckVerdict.PASS for c in relative)
        assert all(c.upper is not None and c.limit and c.upper < c.limit for c in relative)


def test_an_unknown_metric_blocks_promotion_and_says_why():
    ev = simdata.canary(rng(11), intervals=40)
    verdict = run(ev, Analysis(objectives=(Objective(metric="made-up"),)), last_step=False)
    assert verdict.action is Action.HOLD
    assert checks_of(verdict, "made-up") == [CheckVerdict.NO_DATA]
    assert "made-up of v2 has no data (unknown metric)" in verdict.reasons[0]


@pytest.mark.parametrize(
    ("minimums", "phrase"),
    [
        pytest.param(
            {"min_duration": timedelta(minutes=60)},
            "minimum duration is not reached",
            id="min-duration",
        ),
        pytest.param(
            {"min_requests": 10**6}, "fewer than the step's minimum of 1000000", id="min-requests"
        ),
    ],
)
def test_step_minimums_hold_back_advance_and_promotion(minimums, phrase):
    ev = simdata.canary(rng(12), intervals=40)
    assert run(ev).action is Action.PROMOTE
    verdict = run(ev, **minimums)
    assert verdict.action is Action.HOLD
    assert phrase in verdict.reasons[-1]


def test_step_minimums_never_delay_a_rollback():
    ev = simdata.canary(rng(13), intervals=3, latency=1.5)
    verdict = run(ev, min_duration=timedelta(hours=1), min_requests=10**6)
    assert verdict.action is Action.ROLLBACK


# ---------------------------------------------------------------------------------------------
# 5. Deadline


@pytest.mark.parametrize(
    ("choice", "last_step", "action"),
    [
        pytest.param(InconclusiveAction.ROLLBACK, True, Action.ROLLBACK, id="rollback"),
        pytest.param(InconclusiveAction.HOLD, True, Action.HOLD, id="hold"),
        pytest.param(InconclusiveAction.PROMOTE, True, Action.PROMOTE, id="promote"),
    ],
)
def test_deadline_without_verdict_follows_on_inconclusive(choice, last_step, action):
    ev = simdata.canary(rng(14), intervals=3)
    analysis = Analysis(deadline=timedelta(minutes=3), on_inconclusive=choice)
    before = run(ev, analysis, now=ev.boundaries[-1] - timedelta(seconds=1))
    assert before.action is Action.HOLD and not before.inconclusive
    verdict = run(ev, analysis, last_step=last_step)
    assert verdict.action is action
    assert verdict.inconclusive
    assert verdict.reasons[0].startswith("Inconclusive: the step's deadline of 3 min passed")
    assert f"onInconclusive is {choice.value}" in verdict.reasons[0]


# ---------------------------------------------------------------------------------------------
# Warm-up


def _warming(seed: int) -> Evidence:
    # 50 % slower for the first 3 minutes (cold caches), then the same as the baseline.
    latency = np.r_[np.full(3, 1.5), np.ones(37)]
    return simdata.canary(rng(seed), intervals=40, latency=latency)


@pytest.mark.parametrize(
    ("analysis", "excluded"),
    [
        pytest.param(Analysis(), 0, id="no-warmup-declared"),
        pytest.param(Analysis(warmup=timedelta(minutes=3)), 3, id="3-minutes"),
        pytest.param(Analysis(warmup_requests=8000), 3, id="8000-requests"),
        pytest.param(Analysis(warmup_requests=3000), 1, id="too-few-requests"),
    ],
)
def test_declared_warmup_is_excluded(analysis, excluded):
    ev = _warming(15)
    # Looked at every minute, as the reconciler does, the cold start must not roll back...
    actions = [run(_head(ev, k), analysis).action for k in range(1, ev.intervals + 1)]
    rolled_back = Action.ROLLBACK in actions
    assert rolled_back is (excluded < 3)
    # ...and once warm, the candidate is judged on warm data alone.
    final = run(ev, analysis)
    assert final.excluded_intervals == excluded
    if excluded == 3:
        assert final.action is Action.PROMOTE


def _head(ev: Evidence, k: int) -> Evidence:
    from gitops_rollout.metrics.evidence import VersionSeries

    return Evidence(
        ev.boundaries[: k + 1],
        ev.interval,
        {
            name: VersionSeries(
                name,
                s.requests[:k],
                s.errors[:k],
                s.latency_sum_ms[:k],
                s.bucket_bounds_ms,
                s.buckets[:k],
                {key: v[:k] for key, v in s.custom.items()},
                s.missing[:k],
            )
            for name, s in ev.series.items()
        },
    )


def test_holds_while_the_whole_window_is_warm_up():
    ev = simdata.canary(rng(16), intervals=2, latency=1.5)
    verdict = run(ev, Analysis(warmup=timedelta(minutes=5)), last_step=False)
    assert verdict.action is Action.HOLD
    assert "still warming up (2 interval(s) excluded)" in verdict.reasons[0]


# ---------------------------------------------------------------------------------------------
# A/B/n


REWARD = Analysis(
    metrics=(CustomMetric(name="clicks", kind=MetricKind.COUNTER, query="q"),),
    rewards=(Reward(metric="clicks"),),
    objectives=(Objective(metric="error-rate", upper_limit=0.05),),
)
ARMS = ("v2", "v3", "v4")
EVEN = {"v1": 25, "v2": 25, "v3": 25, "v4": 25}


def run_abn(ev: Evidence, analysis: Analysis = REWARD, **kw: object) -> Verdict:
    return run(ev, analysis, candidates=ARMS, weights=EVEN, reward_mode=True, **kw)


def test_abn_picks_the_best_arm_and_promotes_it_on_the_last_step():
    ev = simdata.abn(
        rng(17), intervals=40, ctr=(0.05, 0.05, 0.058, 0.045), shares=(0.25, 0.25, 0.25, 0.25)
    )
    verdict = run_abn(ev)
    assert verdict.action is Action.PROMOTE
    assert verdict.winner == "v3"
    assert "v3 has the best clicks, proven against every other arm" in verdict.reasons[-1]
    rewards = {c.version: c.verdict for c in verdict.checks if c.comparison is Comparison.REWARD}
    assert rewards["v3"] is CheckVerdict.PASS
    early = run_abn(ev, last_step=False)
    assert early.action is Action.ADVANCE and early.winner == "v3"


def test_abn_moves_traffic_toward_the_leader_above_the_floor():
    ev = simdata.abn(
        rng(18), intervals=4, ctr=(0.05, 0.05, 0.052, 0.03), shares=(0.25, 0.25, 0.25, 0.25)
    )
    verdict = run_abn(ev, last_step=False, exploration_floor=0.10)
    assert verdict.action is Action.ADVANCE
    assert verdict.winner is None
    weights = verdict.suggested_weights
    assert weights is not None and sum(weights.values()) == 100
    assert weights["v4"] == 0  # 40 % fewer clicks: eliminated
    assert all(weights[v] >= 10 for v in ("v1", "v2", "v3"))
    assert weights["v3"] == max(weights.values())
    assert "Eliminated: v4" in " ".join(verdict.reasons)


def test_abn_eliminates_an_arm_that_breaks_a_guardrail():
    ev = simdata.abn(
        rng(19),
        intervals=10,
        ctr=(0.05, 0.05, 0.07, 0.05),
        shares=(0.25, 0.25, 0.25, 0.25),
        error_rates=(0.005, 0.005, 0.2, 0.005),
    )
    verdict = run_abn(ev, last_step=False)
    assert verdict.winner != "v3"
    assert verdict.suggested_weights is not None and verdict.suggested_weights["v3"] == 0
    assert "v3's error-rate breaks its upper limit" in verdict.reasons[0]


def test_abn_rolls_back_when_the_baseline_is_best():
    ev = simdata.abn(
        rng(20), intervals=40, ctr=(0.06, 0.05, 0.05, 0.05), shares=(0.25, 0.25, 0.25, 0.25)
    )
    verdict = run_abn(ev)
    assert verdict.action is Action.ROLLBACK
    assert verdict.winner == "v1"


def test_abn_rolls_back_when_every_candidate_breaks_a_guardrail():
    ev = simdata.abn(
        rng(21),
        intervals=5,
        ctr=(0.05, 0.05, 0.05, 0.05),
        shares=(0.25, 0.25, 0.25, 0.25),
        error_rates=(0.005, 0.2, 0.2, 0.2),
    )
    verdict = run_abn(ev, last_step=False)
    assert verdict.action is Action.ROLLBACK
    assert "No candidate is left; rolling back to v1." in verdict.reasons


def test_abn_arm_taken_out_earlier_may_be_gone_from_the_metrics():
    ev = simdata.abn(
        rng(25), intervals=40, ctr=(0.05, 0.05, 0.058, 0.045), shares=(0.34, 0.33, 0.33, 0.0)
    )
    del ev.series["v4"]
    verdict = run(
        ev,
        REWARD,
        candidates=ARMS,
        reward_mode=True,
        weights={"v1": 34, "v2": 33, "v3": 33, "v4": 0},
    )
    assert verdict.action is Action.PROMOTE and verdict.winner == "v3"
    assert verdict.suggested_weights is not None
    assert set(verdict.suggested_weights) == {"v1", "v2", "v3"}


def test_mirrored_candidate_is_judged_without_a_sample_ratio_check():
    # Mirroring: the candidate sees copies of requests; its configured weight is 0.
    ev = simdata.canary(rng(26), intervals=3, latency=1.5)
    verdict = run(ev, weights={"v1": 100, "v2": 0})
    assert verdict.action is Action.ROLLBACK
    assert checks_of(verdict, "traffic-split") == []


def test_abn_without_the_reward_in_the_metrics_holds():
    ev = simdata.abn(
        rng(22),
        intervals=5,
        ctr=(0.05, 0.05, 0.05, 0.05),
        shares=(0.25, 0.25, 0.25, 0.25),
        reward="views",
    )
    verdict = run_abn(ev)
    assert verdict.action is Action.HOLD
    assert "The reward clicks is not in the metrics" in verdict.reasons[-1]


# ---------------------------------------------------------------------------------------------
# The result


def test_verdict_serialises_with_lower_case_wire_values():
    ev = simdata.canary(rng(23), intervals=3, latency=1.5)
    data = run(ev).as_dict()
    assert data["action"] == "rollback"
    assert {c["verdict"] for c in data["checks"]} <= {"pass", "fail", "undecided", "no-data"}
    mean = next(c for c in data["checks"] if c["metric"] == "mean-latency")
    assert mean["comparison"] == "relative"
    assert mean["tally"]["candidateRequests"] > 0
    assert mean["lower"] > 1.02


def test_decide_needs_a_candidate():
    ev = simdata.canary(rng(24), intervals=1)
    with pytest.raises(ValueError, match="at least one candidate"):
        run(ev, candidates=())


def _concat(a: Evidence, b: Evidence) -> Evidence:
    from gitops_rollout.metrics.evidence import VersionSeries

    series = {}
    for name, sa in a.series.items():
        sb = b.series[name]
        series[name] = VersionSeries(
            name,
            np.r_[sa.requests, sb.requests],
            np.r_[sa.errors, sb.errors],
            np.r_[sa.latency_sum_ms, sb.latency_sum_ms],
            sa.bucket_bounds_ms,
            np.r_[sa.buckets, sb.buckets],
            {},
            np.r_[sa.missing, sb.missing],
        )
    return Evidence((*a.boundaries, *b.boundaries[1:]), a.interval, series)
