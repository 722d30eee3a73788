"""Analysis sections no decision could come from fail `validate`, each with its exact message.

Every case is a policy that loads (the schema accepts it) but names a metric nobody defines,
one its target does not export, a margin no candidate could meet, a limit in the wrong unit,
a reward that cannot rank versions, or a custom metric whose kind does not fit its queries.
The message is ``file:line: field: reason (fix: ...)``, and a pass holds such a policy with the
same message. Rejected PromQL is `test_e2e_metrics_failures`' business (it needs Prometheus).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner
from metrics_repos import example, shop
from metrics_world import MakeWorld

from gitops_rollout import repository
from gitops_rollout.cli import main
from gitops_rollout.tree import DirTree

AB = """\
apiVersion: gitops-rollout.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: iris
spec:
  namespace: default
  target:
    kind: seldon
    predictor: default
    servicePort: 8000
  strategy:
    type: ab
  routing:
    hosts: [iris.example.com]
  clusters:
    - name: prod-east
  analysis:
    interval: 10s
{analysis}"""

ENGAGEMENT = """\
    metrics:
      - name: user-engagement
        kind: counter
        query: sum by (kubernetes_namespace) (seldon_feedback_total{namespace="$namespace"})
        versionLabel: kubernetes_namespace
"""


def ranker(analysis: str) -> dict[str, str]:
    return shop({"ranker": analysis})


def iris(analysis: str) -> dict[str, str]:
    return {**example("iris"), "policies/iris.yaml": AB.format(analysis=analysis)}


def line_of(files: Mapping[str, str], path: str, text: str) -> int:
    """The 1-based line of `path` where `text` first appears."""
    return next(i for i, line in enumerate(files[path].splitlines(), 1) if text in line)


def problems_of(files: Mapping[str, str], tmp_path: Path) -> list[str]:
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    return [str(p) for p in repository.load(DirTree(tmp_path)).problems]


R = "policies/ranker.yaml"
I = "policies/iris.yaml"  # noqa: E741 - the file of the iris cases

CASES = [
    pytest.param(
        ranker("    objectives:\n      - metric: latency-p50\n        upperLimit: 100\n"),
        R,
        "latency-p50",
        "spec.analysis.objectives[0].metric: unknown metric 'latency-p50': it is not built in "
        "(error-rate, mean-latency, p95-latency, p99-latency) and not defined under "
        "spec.analysis.metrics (defined: none) (fix: use a built-in metric, or define "
        "latency-p50 under analysis.metrics with its PromQL)",
        id="objective-on-an-unknown-metric",
    ),
    pytest.param(
        iris("    rewards:\n      - metric: engagement\n" + ENGAGEMENT),
        I,
        "metric: engagement",
        "spec.analysis.rewards[0].metric: unknown metric 'engagement': it is not built in "
        "(error-rate, mean-latency, p95-latency, p99-latency) and not defined under "
        "spec.analysis.metrics (defined: user-engagement) (fix: use a built-in metric, or "
        "define engagement under analysis.metrics with its PromQL)",
        id="reward-on-an-unknown-metric",
    ),
    pytest.param(
        ranker("    objectives:\n      - metric: error-rate\n        maxIncrease: 0\n"),
        R,
        "maxIncrease",
        "spec.analysis.objectives[0].maxIncrease: maxIncrease 0 is not above the rollback "
        "margin of 0: a rate rolls back at any proven increase, so a candidate as good as the "
        "baseline could never be shown within a margin of 0 (fix: use a margin above 0, e.g. "
        "the default 0.5)",
        id="rate-margin-of-zero",
    ),
    pytest.param(
        ranker("    objectives:\n      - metric: mean-latency\n        maxIncrease: 0.01\n"),
        R,
        "maxIncrease",
        "spec.analysis.objectives[0].maxIncrease: maxIncrease 0.01 is not above the rollback "
        "margin of 0.02: mean-latency rolls back above +0.02, so a candidate as good as the "
        "baseline could never be shown within it (fix: use a margin above 0.02, e.g. the "
        "default 0.05)",
        id="mean-margin-inside-the-rollback-margin",
    ),
    pytest.param(
        ranker("    objectives:\n      - metric: error-rate\n        upperLimit: 5\n"),
        R,
        "upperLimit",
        "spec.analysis.objectives[0].upperLimit: upperLimit 5 is above 1, but error-rate is a "
        "fraction of requests (0.01 = 1 %) (fix: write 0.05 for 5 %)",
        id="error-rate-limit-in-percent",
    ),
    pytest.param(
        ranker("    objectives:\n      - metric: p99-latency\n        upperLimit: 0\n"),
        R,
        "upperLimit",
        "spec.analysis.objectives[0].upperLimit: upperLimit 0 can never be met: p99-latency is "
        "milliseconds, never below 0 (fix: use a positive limit)",
        id="latency-limit-of-zero",
    ),
    pytest.param(
        ranker("    objectives:\n      - metric: feedback\n        lowerLimit: 0.01\n"),
        R,
        "metric: feedback",
        "spec.analysis.objectives[0].metric: target deployment exports no feedback count: only "
        "Seldon's executor counts feedback requests (fix: define feedback under "
        "analysis.metrics with the PromQL of your feedback counter, or use target seldon)",
        id="feedback-on-a-target-without-it",
    ),
    pytest.param(
        ranker(
            "    objectives:\n      - metric: conversion\n        lowerLimit: 0.01\n"
            "    metrics:\n      - name: conversion\n        kind: ratio\n"
            "        query: sum by (version) (app_conversions_total)\n"
        ),
        R,
        "kind: ratio",
        "spec.analysis.metrics[0].kind: kind ratio divides bad events by all events, but "
        "conversion has no denominator (fix: add denominator: <PromQL counting all events>, "
        "or use kind: counter to count events per request)",
        id="ratio-without-denominator",
    ),
    pytest.param(
        ranker(
            "    objectives:\n      - metric: conversion\n        lowerLimit: 0.01\n"
            "    metrics:\n      - name: conversion\n        kind: counter\n"
            "        query: sum by (version) (app_conversions_total)\n"
            "        denominator: sum by (version) (app_visits_total)\n"
        ),
        R,
        "denominator:",
        "spec.analysis.metrics[0].denominator: kind counter counts events per request, so "
        "this denominator would be ignored (fix: use kind: ratio to divide by it, or remove "
        "denominator)",
        id="counter-with-denominator",
    ),
    pytest.param(
        ranker(
            "    metrics:\n      - name: error-rate\n        kind: counter\n"
            "        query: sum by (version) (app_errors_total)\n"
        ),
        R,
        "name: error-rate",
        "spec.analysis.metrics[0].name: error-rate is a built-in metric; this definition "
        "would never be used (fix: give your metric another name, and use that name in "
        "objectives)",
        id="custom-metric-shadows-a-built-in",
    ),
    pytest.param(
        ranker(
            "    metrics:\n      - name: conversion\n        kind: counter\n"
            '        query: sum(app_conversions_total{version="$verison"})\n'
        ),
        R,
        "query:",
        "spec.analysis.metrics[0].query: $verison is not a placeholder gitops-rollout fills "
        "in (fix: use $version, $namespace, $model, or write the value itself)",
        id="misspelt-placeholder",
    ),
    pytest.param(
        iris("    rewards:\n      - metric: p95-latency\n        preferHigher: false\n"),
        I,
        "metric: p95-latency",
        "spec.analysis.rewards[0].metric: p95-latency is a latency quantile, which cannot rank "
        "versions as a reward: a reward is a count or a mean per request (fix: use a counter "
        "defined under analysis.metrics (e.g. user-engagement), or mean-latency with "
        "preferHigher: false)",
        id="reward-on-a-quantile",
    ),
    pytest.param(
        iris("    rewards:\n      - metric: error-rate\n"),
        I,
        "metric: error-rate",
        "spec.analysis.rewards[0].preferHigher: preferHigher is true, so the version with the "
        "highest error-rate would win (fix: set preferHigher: false)",
        id="reward-on-errors-preferring-more",
    ),
]


@pytest.mark.parametrize(("files", "path", "marker", "expected"), CASES)
def test_bad_analysis_fails_validate_with_its_location(
    files: dict[str, str], path: str, marker: str, expected: str, tmp_path: Path
) -> None:
    assert problems_of(files, tmp_path) == [f"{path}:{line_of(files, path, marker)}: {expected}"]


@pytest.mark.parametrize(
    "files",
    [
        pytest.param(iris("    rewards:\n      - metric: feedback\n"), id="seldon-feedback"),
        pytest.param(
            iris("    rewards:\n      - metric: user-engagement\n" + ENGAGEMENT),
            id="custom-reward",
        ),
        pytest.param(
            iris("    rewards:\n      - metric: mean-latency\n        preferHigher: false\n"),
            id="fastest-wins",
        ),
        pytest.param(ranker(""), id="default-objectives"),
        pytest.param(example("fashionmnist", "iris"), id="the-example-repository"),
    ],
)
def test_sound_analysis_passes_validate(files: dict[str, str], tmp_path: Path) -> None:
    assert problems_of(files, tmp_path) == []


def test_validate_exits_1_and_a_pass_holds_the_policy_with_the_same_message(
    make_world: MakeWorld, tmp_path: Path
) -> None:
    files = shop(
        {
            "ranker": "    objectives:\n      - metric: latency-p50\n        upperLimit: 100\n",
            "scorer": "",
        }
    )
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    result = CliRunner().invoke(main, ["validate", "--repo", str(tmp_path)])
    assert result.exit_code == 1
    problem = f"policies/ranker.yaml:{line_of(files, R, 'latency-p50')}: "
    printed = [line for line in result.output.splitlines() if line.startswith(problem)]
    assert len(printed) == 1

    world = make_world(files)
    for _ in range(3):
        report = world.step()
        assert [str(p) for p in report.problems] == printed
        assert [d.model for d in report.decisions] == ["scorer"]  # ranker decides nothing
    assert {p.title.split(":")[0] for p in world.pulls()} == {"rollout(scorer)"}
