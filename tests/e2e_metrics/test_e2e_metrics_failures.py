"""Failure paths decided from a real Prometheus, through `reconcile.run_once`.

No data, an unreachable Prometheus, a counter reset, a custom query Prometheus rejects, a custom
metric nobody exports, and the number of queries a pass makes as the number of models grows.
The repository is `metrics_repos.shop`: progressive canaries (10 %, 50 %, 100 %) on Deployments
with Istio's metrics.
"""

from __future__ import annotations

import logging
import subprocess
from datetime import timedelta

import pytest
from click.testing import CliRunner
from metrics_repos import shop
from metrics_world import Behaviour, MakeWorld, World
from prometheus_harness import free_port

from gitops_rollout.analysis import Action, Verdict
from gitops_rollout.cli import main
from gitops_rollout.reconcile import Decision
from gitops_rollout.state import Phase

GOOD = Behaviour(error_rate=0.004, latency_ms=55)


def decision(world: World, model: str) -> Decision:
    return next(d for d in world.reports[-1].decisions if d.model == model)


def refs(world: World) -> str:
    """Every branch and tag of the remote with its commit."""
    return subprocess.run(
        ["git", "--git-dir", str(world.remote), "for-each-ref"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_no_data_holds_without_a_commit_and_says_why(
    make_world: MakeWorld, caplog: pytest.LogCaptureFixture
) -> None:
    world = make_world(shop({"ranker": ""}), behaviour={("ranker", "v2"): Behaviour(silent=True)})
    world.step()  # starts the rollout: step 1 at 10 %
    assert [p.title for p in world.pulls()] == ["rollout(ranker): prod-east step 1/3 -> 10%"]
    before = refs(world)

    caplog.set_level(logging.INFO, logger="gitops_rollout.reconcile")
    for _ in range(4):  # 8 minutes: past the 5 min noDataTimeout, and noData is hold
        world.step()
        held = decision(world, "ranker")
        assert (held.action, held.outcome, held.pr) == ("hold", "none", None)
        assert "the scrape for" in held.reason and "is missing for v2" in held.reason
        assert "missing data is neither a pass nor a failure" in held.reason

    assert refs(world) == before  # a hold writes nothing: no commit, no branch, no PR
    assert len(world.pulls()) == 1
    assert "no usable data since" in held.reason  # the timeout passed; noData: hold holds
    logged = [
        r.getMessage() for r in caplog.records if "model=ranker action=hold" in r.getMessage()
    ]
    assert len(logged) == 4 and "is missing for v2" in logged[-1]
    assert world.state("ranker").phase is Phase.PROGRESSING


def test_unreachable_prometheus_holds_then_rolls_back_after_no_data_timeout(
    make_world: MakeWorld,
) -> None:
    world = make_world(
        shop({"ranker": "", "scorer": ""}, no_data={"ranker": "rollback"}, step="20m"),
        behaviour={("ranker", "v2"): GOOD, ("scorer", "v2"): GOOD},
    )
    for _ in range(4):  # start, then three passes that read the metrics
        world.step()
    assert all(isinstance(v, Verdict) for v in world.verdicts.by_pass[-1].values())

    world.down = True  # 2, 4 and 6 minutes after the last pass that read the metrics
    timeline = []
    for _ in range(3):
        world.step()
        timeline.append((decision(world, "ranker").action, decision(world, "scorer").action))

    # Held while the outage is shorter than noDataTimeout (5 min since the last read, not since
    # the step started 8 minutes before the outage), then rolled back as ranker's policy says;
    # scorer's says hold.
    assert timeline == [("hold", "hold"), ("hold", "hold"), ("rollback", "hold")]
    ranker, scorer = decision(world, "ranker"), decision(world, "scorer")
    assert "metrics unavailable: Prometheus at http://127.0.0.1:" in scorer.reason
    assert "cannot connect" in scorer.reason and "nothing advances or promotes" in scorer.reason
    assert "and the policy says noData: rollback" in ranker.reason
    assert ranker.outcome == "merged"
    rollback = world.pulls_of("ranker")[-1]
    assert rollback.title == "rollout(ranker): prod-east roll back v2: all traffic to v1"
    assert "noDataTimeout" in rollback.body
    assert world.state("ranker").phase is Phase.ROLLED_BACK
    assert world.state("scorer").phase is Phase.PROGRESSING


def test_counter_reset_changes_no_verdict(make_world: MakeWorld) -> None:
    behaviour = {("ranker", "v2"): GOOD}
    reset, twin = (make_world(shop({"ranker": ""}), behaviour=behaviour) for _ in range(2))
    for world in (reset, twin):
        world.step()
        world.step()
    # Both servers restart mid-interval: what they counted since the last boundary is lost,
    # and their counters fall to a few requests. Same seed, so the traffic is the same.
    reset.restart("ranker", "v1", at=reset.now + timedelta(seconds=40))
    reset.restart("ranker", "v2", at=reset.now + timedelta(seconds=100))
    for world in (reset, twin):
        for _ in range(3):
            world.step()

    # The same decisions: in particular no sample-ratio hold, which the short interval of one
    # version would cause if it were compared with the configured split.
    assert [d.action for r in reset.reports for d in r.decisions] == [
        d.action for r in twin.reports for d in r.decisions
    ]
    assert "advance" in [d.action for r in reset.reports for d in r.decisions]
    lost = {v: reset.truth[("ranker", v)].lost for v in ("v1", "v2")}
    assert lost["v1"] > 0 and lost["v2"] > 0
    judged = list(zip(reset.verdicts.of("ranker"), twin.verdicts.of("ranker"), strict=True))
    for seen, expected in judged:
        assert (seen.action, seen.excluded_intervals) == (
            expected.action,
            expected.excluded_intervals,
        )
    # Exactly what the restarted servers had counted since the interval began is missing:
    # never a negative interval, never the whole counter counted twice.
    seen, expected = (
        next(c for c in v.checks if c.metric == "error-rate")
        for v in (reset.verdicts.last("ranker"), twin.verdicts.last("ranker"))
    )
    assert expected.tally.baseline_requests - seen.tally.baseline_requests == lost["v1"]
    assert expected.tally.candidate_requests - seen.tally.candidate_requests == lost["v2"]


BROKEN_QUERY = """\
    objectives:
      - metric: error-rate
      - metric: conversion
        lowerLimit: 0.01
    metrics:
      - name: conversion
        kind: ratio
        query: sum by (version) (rate(app_conversions_total{namespace="$namespace"}[5m])
        denominator: sum by (version) (app_visits_total{namespace="$namespace"})
"""


def test_rejected_custom_query_holds_with_its_file_line_and_field(make_world: MakeWorld) -> None:
    files = shop({"ranker": BROKEN_QUERY}, no_data={"ranker": "rollback"})
    world = make_world(files, behaviour={("ranker", "v2"): GOOD})
    lines = files["policies/ranker.yaml"].splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "query: sum by (version) (rate(" in text)
    where = f"policies/ranker.yaml:{line}: spec.analysis.metrics[0].query: "
    query = 'sum by (version) (rate(app_conversions_total{namespace="shop"}[5m])'

    for _ in range(6):  # 10 minutes: twice the noDataTimeout, and noData is rollback
        world.step()

    decisions = [d for r in world.reports[1:] for d in r.decisions]
    assert {d.action for d in decisions} == {"hold"}
    assert all(d.reason.startswith(where) for d in decisions), decisions[-1].reason
    reason = decisions[-1].reason
    assert "Prometheus rejected the query (bad_data): " in reason
    assert f"query: {query} (fix: correct the PromQL" in reason
    assert [p.title for p in world.pulls()] == ["rollout(ranker): prod-east step 1/3 -> 10%"]

    # `validate --prometheus` asks the same Prometheus and reports the same problem.
    checkout = world.workdir / "checkout"
    for path, text in files.items():
        (checkout / path).parent.mkdir(parents=True, exist_ok=True)
        (checkout / path).write_text(text)
    result = CliRunner().invoke(
        main, ["validate", "--repo", str(checkout), "--prometheus", world.prometheus_url]
    )
    assert result.exit_code == 1, result.output
    problem = reason.split("; holding until the query is fixed")[0]
    assert problem in result.output
    assert CliRunner().invoke(main, ["validate", "--repo", str(checkout)]).exit_code == 0
    down = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(main, ["validate", "--repo", str(checkout), "--prometheus", down])
    assert result.exit_code == 2 and f"Prometheus at {down} failed" in result.output


UNSCRAPED = """\
    objectives:
      - metric: conversion
        lowerLimit: 0.01
    metrics:
      - name: conversion
        kind: ratio
        query: sum by (version) (app_conversions_total{namespace="$namespace"})
        denominator: sum by (version) (app_visits_total{namespace="$namespace"})
"""


def test_custom_metric_nobody_exports_is_no_data_not_zero(make_world: MakeWorld) -> None:
    world = make_world(shop({"ranker": UNSCRAPED}), behaviour={("ranker", "v2"): GOOD})
    for _ in range(4):
        world.step()

    held = decision(world, "ranker")
    assert held.action == "hold"
    assert "conversion of v2 has no data (not found in the metrics)" in held.reason
    check = next(c for c in world.verdicts.last("ranker").checks if c.metric == "conversion")
    assert check.verdict.value == "no-data" and check.candidate is None
    assert len(world.pulls()) == 1  # never advanced on a metric it cannot see


def test_queries_per_pass_do_not_grow_with_the_number_of_models(make_world: MakeWorld) -> None:
    counts = {}
    for size in (1, 30):
        models = {f"model-{i:02d}": "" for i in range(size)}
        world = make_world(
            # No namespace kustomization.yaml: 30 rollouts starting in one pass would all
            # append to it, and their pull requests would conflict with each other.
            shop(models, namespace="crowd", kustomization=False),
            behaviour={(m, "v2"): GOOD for m in models},
            rps=dict.fromkeys(models, 20.0),
        )
        for _ in range(3):
            world.step()
        found = world.verdicts.by_pass[-1]
        assert len(found) == size
        assert all(isinstance(v, Verdict) and v.checks for v in found.values())
        assert {v.action for v in found.values()} == {Action.ADVANCE}
        counts[size] = world.proxy.count("/api/v1/query_range")
        assert world.proxy.count() == counts[size]

    # istio_requests_total, the latency sum and the latency buckets, once for the namespace.
    assert counts == {1: 3, 30: 3}
