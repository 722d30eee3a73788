"""The evidence a rollout PR carries, rendered from the analysis stage's own checks.

A reviewer must be able to read, per metric and version, the estimates, the bounds and the
line they had to clear, the verdict, the counts it rests on (to recompute it) and a plain
sentence of why; and how much warm-up was left out. One verdict with every kind of check
(relative, limits, reward, traffic split; pass, fail, undecided, no data) is rendered into the
golden file ``golden/evidence.md``; review its diff, then regenerate with UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gitops_rollout.analysis import Action, Check, CheckVerdict, Comparison, Tally, Verdict
from gitops_rollout.gitops.changeset import ChangeSet
from gitops_rollout.gitops.pr_body import render_body
from gitops_rollout.inventory.model import ModelVersion, ObjectRef, Readiness, Role, Status
from gitops_rollout.policy import load_policy_text
from gitops_rollout.state import Phase, RolloutState, StoredState, VersionMark
from gitops_rollout.transitions import Transition, advance, assess

GOLDEN = Path(__file__).parent / "golden" / "evidence.md"
NOW = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
POLICY = """\
apiVersion: gitops-rollout.dev/v1alpha1
kind: RolloutPolicy
metadata: {name: ranker}
spec:
  namespace: shop
  target: {kind: deployment}
  strategy:
    type: progressive
    steps: [{weight: 10, minDuration: 2m}, {weight: 50, minDuration: 2m}]
  clusters: [{name: prod-east}]
  analysis:
    interval: 1m
    warmup: 2m
    warmupRequests: 500
    objectives:
      - {metric: error-rate}
      - {metric: mean-latency, upperLimit: 250}
      - {metric: p95-latency, upperLimit: 400}
      - {metric: conversion, lowerLimit: 0.02}
    metrics:
      - {name: conversion, kind: ratio, query: a, denominator: b}
"""

TALLY = Tally(14, 52_310.0, 5_804.0)
CHECKS = (
    Check(
        "traffic-split",
        "v1",
        Comparison.TRAFFIC_SPLIT,
        CheckVerdict.PASS,
        "fraction of requests",
        0.9,
        0.8997,
        None,
        None,
        None,
        None,
        Tally(2, 7_200.0, 801.0),
        "v1 received 90.0 % of 8001 requests this step, configured 90 %",
    ),
    Check(
        "error-rate",
        "v2",
        Comparison.RELATIVE,
        CheckVerdict.FAIL,
        "fraction of requests",
        0.0049,
        0.0121,
        1.62,
        3.4,
        1.5,
        1.0,
        Tally(14, 52_310.0, 5_804.0, 256.0, 70.0),
        "bounds are on the ratio of rates, candidate / baseline",
    ),
    Check(
        "mean-latency",
        "v2",
        Comparison.UPPER_LIMIT,
        CheckVerdict.PASS,
        "ms",
        81.2,
        72.4,
        70.9,
        74.1,
        250.0,
        250.0,
        TALLY,
    ),
    Check(
        "p95-latency",
        "v2",
        Comparison.UPPER_LIMIT,
        CheckVerdict.UNDECIDED,
        "fraction of requests",
        0.031,
        0.046,
        0.038,
        0.055,
        0.05,
        0.05,
        Tally(14, 52_310.0, 5_804.0, 1_622.0, 267.0),
        "p95 <= 400 ms means at most 5 % of requests slower than 500 ms",
    ),
    Check(
        "conversion",
        "v2",
        Comparison.LOWER_LIMIT,
        CheckVerdict.NO_DATA,
        "ratio",
        None,
        None,
        None,
        None,
        0.02,
        0.02,
        Tally(14, 0.0, 0.0),
        "not found in the metrics",
    ),
)


def transition(verdict: Verdict) -> Transition:
    loaded = load_policy_text(POLICY, file="policies/ranker.yaml")[0][0]

    def version(n: int, role: Role) -> ModelVersion:
        return ModelVersion(
            ObjectRef("Deployment", "shop", f"ranker-v{n}"),
            "ranker",
            f"v{n}",
            role,
            f"clusters/prod-east/shop/ranker/ranker-v{n}.yaml",
            0,
            Status(Readiness.READY),
            f"digest{n}",
        )

    primary, candidate = version(1, Role.PRIMARY), version(2, Role.CANDIDATE)
    state = RolloutState(
        Phase.PROGRESSING,
        1,
        VersionMark(primary.key, "v1", "digest1"),
        (VersionMark(candidate.key, "v2", "digest2"),),
        ((primary.key, 90), (candidate.key, 10)),
        policy="policies/ranker.yaml",
    )
    situation = assess(
        loaded,
        cluster="prod-east",
        versions=[primary, candidate],
        stored=StoredState(state),
        step_started=NOW - timedelta(minutes=16),
    )
    return advance(situation, now=NOW, verdict=verdict)


def evidence(body: str) -> str:
    return body[body.index("#### Evidence") : body.index("#### Traffic")]


def test_evidence_of_every_kind_of_check_matches_the_golden_file() -> None:
    verdict = Verdict(
        Action.ROLLBACK,
        ("v2's error-rate is worse than v1's.", "Rolling back."),
        CHECKS,
        excluded_intervals=3,
        alpha=0.01,
    )
    t = transition(verdict)
    assert t.kind.value == "rollback"
    found = evidence(render_body(t, ChangeSet(()), digest="d"))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(found)
    assert found == GOLDEN.read_text(), "run with UPDATE_GOLDEN=1 and review the diff"


def test_evidence_names_counts_bounds_and_why() -> None:
    t = transition(
        Verdict(Action.ROLLBACK, ("Rolling back.",), CHECKS, excluded_intervals=3, alpha=0.01)
    )
    found = evidence(render_body(t, ChangeSet(()), digest="d"))
    assert "14 intervals of 1m entered the tests; 3 intervals left out as the candidate's " in found
    assert "warm-up (policy: warmup 2m, warmupRequests 500)" in found
    assert (
        "fails (rolling back) at 99.75 % each, the policy's alpha 0.01 shared by 4 rollback"
        in found
    )
    assert (
        "| error-rate | v2 | ratio to baseline | 0.49 % | 1.21 % | 1.62x to 3.40x | passes with "
        "upper bound below 1.50x, fails with lower bound above 1.00x | ❌ fail | 14 intervals; "
        "requests 52,310 / 5,804; errors 256 / 70 |"
    ) in found
    assert (
        "- **error-rate** (v2): error-rate of v2 is at least 1.62x v1's (1.21 % against v1's "
        "0.49 %), beyond the rollback margin of 1.00x: it is worse."
    ) in found
    assert "- **conversion** (v2): no data, so it can neither pass nor fail" in found


def test_reward_evidence_names_the_winner() -> None:
    reward = Check(
        "user-engagement",
        "v2",
        Comparison.REWARD,
        CheckVerdict.PASS,
        "per unit",
        0.05,
        0.08,
        0.012,
        0.054,
        0.0,
        0.0,
        Tally(10, 7_402.0, 7_413.0, 368.0, 614.0),
    )
    t = transition(Verdict(Action.ADVANCE, ("v2 wins",), (reward,), winner="v2", alpha=0.01))
    found = evidence(render_body(t, ChangeSet(()), digest="d"))
    assert "| user-engagement | v2 | reward vs baseline | 0.05 | 0.08 | +0.012 to +0.054 |" in found
    assert "events 368 / 614 |" in found
    assert "v2 has the best user-engagement: 0.08 against v1's 0.05" in found
