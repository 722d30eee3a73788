"""Scenarios 3 and 4 end to end: the example policies decided from a real Prometheus.

Each test seeds a bare remote with the example repository's policy and manifests, lets the
simulated data plane serve with the merged weights, backfills its counters into Prometheus
and runs `reconcile.run_once` until the rollout is over, a reviewer merging what the policy
leaves to a human. The assertions are what a user sees: the pull requests, their evidence and
the final state of the main branch.
"""

from __future__ import annotations

from metrics_repos import example
from metrics_world import Behaviour, MakeWorld, World

from gitops_rollout.analysis import Action, CheckVerdict, Comparison
from gitops_rollout.state import Phase

FASHION_V1 = Behaviour(error_rate=0.01, latency_ms=80)
IRIS_V1 = Behaviour(error_rate=0.005, latency_ms=40, reward_rate=0.05)


def finished(world: World, model: str, primary: str) -> bool:
    state = world.state(model)
    return (
        state.phase is Phase.IDLE
        and state.primary is not None
        and state.primary.version == primary
        and world.versions(model) == [primary]
    )


def test_scenario_3_meets_the_latency_limit_and_is_promoted_in_eight_steps(
    make_world: MakeWorld,
) -> None:
    world = make_world(
        example("fashionmnist"),
        rps={"fashionmnist": 300},
        behaviour={
            ("fashionmnist", "v1"): FASHION_V1,
            ("fashionmnist", "v2"): Behaviour(error_rate=0.008, latency_ms=72),
        },
    )

    world.run_until(lambda: finished(world, "fashionmnist", "v2"), passes=20)

    pulls = world.pulls_of("fashionmnist")
    steps = [f"step {i}/8 -> {w}%" for i, w in enumerate((5, 10, 20, 30, 40, 60, 80, 100), 1)]
    assert [p.title.removeprefix("rollout(fashionmnist): prod-east ") for p in pulls] == [
        *steps,
        "promote v2: all traffic to it",
        "remove fashionmnist-v1 (v1)",
    ]
    assert [p.merged_by for p in pulls] == ["gitops-rollout"] * 8 + ["reviewer", "gitops-rollout"]
    # Every step after the first was decided from the evidence, and says so in its PR.
    for pull in pulls[1:9]:
        assert "#### Evidence" in pull.body
        assert "| mean-latency | v2 | upper limit | " in pull.body
        assert "| error-rate | v2 | ratio to baseline |" in pull.body
    promotion = pulls[8].body
    assert "Every guardrail passed at 99 %" in promotion
    # At 100 % there is no split left to test: both guardrails passed.
    assert promotion.count("| ✅ pass |") == 2 and "| traffic-split |" not in promotion
    assert "below its upper limit of 250.0 ms" in promotion
    verdicts = world.verdicts.of("fashionmnist")
    assert Action.ROLLBACK not in {v.action for v in verdicts}
    assert verdicts[-1].action is Action.PROMOTE


def test_scenario_3_breaks_the_latency_limit_and_is_rolled_back_with_the_evidence(
    make_world: MakeWorld,
) -> None:
    world = make_world(
        example("fashionmnist"),
        rps={"fashionmnist": 300},
        behaviour={
            ("fashionmnist", "v1"): FASHION_V1,
            ("fashionmnist", "v2"): Behaviour(error_rate=0.008, latency_ms=300),
        },
    )

    world.run_until(lambda: world.state("fashionmnist").phase is Phase.ROLLED_BACK, passes=6)
    for _ in range(2):  # the rolled-back candidate stays out; nothing more is proposed
        world.step()

    pulls = world.pulls_of("fashionmnist")
    assert [p.title for p in pulls] == [
        "rollout(fashionmnist): prod-east step 1/8 -> 5%",
        "rollout(fashionmnist): prod-east roll back v2: all traffic to v1",
    ]
    body = pulls[1].body
    assert "**Decision:** rollback (rollback)" in body
    assert "v2's mean-latency breaks its upper limit" in body
    row = next(line for line in body.splitlines() if line.startswith("| mean-latency | v2 |"))
    assert "| upper limit |" in row and "| ❌ fail |" in row and "requests" in row
    assert "mean-latency of v2 is at least" in body and "above its upper limit of 250.0 ms" in body
    assert "left out as the candidate's warm-up (policy: warmup 1m)" in body
    state = world.state("fashionmnist")
    assert state.primary is not None and state.primary.version == "v1"
    assert world.versions("fashionmnist") == ["v1", "v2"]
    failed = [
        c for c in world.verdicts.last("fashionmnist").checks if c.verdict is CheckVerdict.FAIL
    ]
    assert [(c.metric, c.comparison) for c in failed] == [("mean-latency", Comparison.UPPER_LIMIT)]
    assert failed[0].lower > 250


def test_scenario_4_ab_test_promotes_the_version_with_the_better_reward(
    make_world: MakeWorld,
) -> None:
    world = make_world(
        example("iris"),
        rps={"iris": 150},
        scrape=5,  # the policy looks every 10 s
        behaviour={
            ("iris", "iris-v1"): IRIS_V1,
            ("iris", "iris-v2"): Behaviour(error_rate=0.004, latency_ms=38, reward_rate=0.08),
        },
    )

    world.run_until(lambda: finished(world, "iris", "iris-v2"), passes=10)

    pulls = world.pulls_of("iris")
    assert [p.title.removeprefix("rollout(iris): prod-east ") for p in pulls] == [
        "A/B start: iris-v1 50% / iris-v2 50%",
        "promote iris-v2: all traffic to it",
        "remove iris (iris-v1)",
    ]
    body = pulls[1].body
    assert "iris-v2 has the best user-engagement" in body
    reward = next(line for line in body.splitlines() if line.startswith("| user-engagement |"))
    assert "| iris-v2 | reward vs baseline |" in reward and "| ✅ pass |" in reward
    for objective in ("mean-latency", "p95-latency", "error-rate"):
        row = next(line for line in body.splitlines() if line.startswith(f"| {objective} |"))
        assert "| upper limit |" in row and "| ✅ pass |" in row
    verdict = world.verdicts.of("iris")[-1]
    assert verdict.winner == "iris-v2"
    check = next(c for c in verdict.checks if c.comparison is Comparison.REWARD)
    # The reward came from the policy's own PromQL, split by namespace.
    assert check.tally.baseline_events and check.tally.candidate_events
    assert check.candidate is not None and check.baseline is not None
    assert check.candidate > check.baseline
