"""The decision-quality benchmark: its quick configuration meets ANALYSIS.md's targets for our
rule (within the quick run's precision) and beats Flagger-style thresholds by far at the margin;
and the benchmark's vectorised rule is the same decision as `decide` called pass by pass."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from gitops_rollout.analysis import Action
from gitops_rollout.analysis.decide import decide
from gitops_rollout.metrics.evidence import Evidence, VersionSeries

from .simdata import T0

ROOT = Path(__file__).resolve().parents[2]


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_decisions", ROOT / "bench" / "decisions.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.decisions", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "false promote" in done.stdout  # the table was printed
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def rule(data: dict[str, Any], candidate: str, name: str = "ours") -> dict[str, Any]:
    (cell,) = [c for c in data["cells"] if c["cell"]["candidate"] == candidate]
    result: dict[str, Any] = cell["rules"][name]
    return result


@pytest.mark.parametrize("candidate", ["margin-err", "margin-lat", "bad-err"])
def test_false_promotion_at_or_beyond_the_margin_is_below_one_percent(quick, candidate):
    ours = rule(quick, candidate)
    assert ours["runs"] >= 3000
    assert ours["false_promotion_ub"] <= 0.01


@pytest.mark.parametrize("candidate", ["cat-err", "cat-lat"])
def test_catastrophes_are_never_promoted_and_go_at_the_first_pass(quick, candidate):
    ours = rule(quick, candidate)
    assert ours["promote"] == 0
    assert ours["false_promotion_ub"] <= 0.001
    assert ours["rollback"] == ours["runs"]
    assert ours["pass_median"] == 0  # the first pass: 5 % of 100 rps for a minute = 300 requests
    assert ours["pass_p90"] <= 1


@pytest.mark.parametrize("candidate", ["good", "neutral"])
def test_false_rollback_is_below_one_percent(quick, candidate):
    ours = rule(quick, candidate)
    assert ours["false_rollback_ub"] <= 0.01
    assert ours["inconclusive_rate"] <= 0.05


def test_double_errors_are_rolled_back_within_minutes(quick):
    ours = rule(quick, "bad-err")
    assert ours["minutes_median"] <= 5.0
    assert ours["minutes_p90"] <= 8.0


def test_far_better_than_flagger_at_the_margin(quick):
    flagger, ours = rule(quick, "margin-err", "flagger"), rule(quick, "margin-err")
    assert flagger["false_promotion"] >= 0.5
    assert flagger["false_promotion"] >= 10 * ours["false_promotion_ub"]
    assert rule(quick, "bad-err", "flagger")["exposure"] >= 10 * rule(quick, "bad-err")["exposure"]


def test_abn_finds_the_winner_at_a_five_percent_lead(quick):
    assert quick["abn"]["correct"] >= 0.95
    assert quick["abn"]["wrong"] <= 0.01
    assert quick["abn"]["inferior_share"] <= 0.75 * quick["abn"]["uniform_inferior_share"]


def test_every_target_is_reported_and_met(quick):
    assert len(quick["targets"]) >= 8
    missed = [t for t in quick["targets"] if not t["ok"]]
    assert missed == []


# ---------------------------------------------------------------------------------------------
# The benchmark's rule is decide()


def evidence_of(bench: ModuleType, sim: Any, run: int, passes: int) -> Evidence:
    from datetime import timedelta

    boundaries = tuple(T0 + timedelta(seconds=float(s)) for s in sim.starts[run, : passes + 1])
    series = {}
    for arm, name in enumerate(("v1", "v2")):
        series[name] = VersionSeries(
            name,
            sim.req[arm][run, :passes].copy(),
            sim.err[arm][run, :passes].copy(),
            sim.lat_sum[arm][run, :passes].copy(),
            bench.BUCKETS_MS,
            sim.hist[arm][run, :passes].copy(),
            {},
            sim.missing[run, :passes].copy(),
        )
    return Evidence(boundaries, timedelta(minutes=1), series)


def decide_each_pass(bench: ModuleType, sim: Any, cell: Any, run: int, horizon: int) -> tuple:
    analysis = bench.our_policy(cell)
    for k in range(horizon):
        ev = evidence_of(bench, sim, run, k + 1)
        step = min(k, bench.LAST_STEP)
        weight = bench.SCHEDULE[step]
        verdict = decide(
            analysis,
            ev,
            baseline="v1",
            candidates=["v2"],
            weights={"v1": 100 - weight, "v2": weight},
            step_started=ev.boundaries[step],
            now=ev.boundaries[k + 1],
            last_step=k >= bench.LAST_STEP,
        )
        if verdict.action is Action.ROLLBACK:
            return -1, k
        if verdict.action is Action.PROMOTE:
            return 1, k
    return 0, horizon - 1


@pytest.mark.parametrize(
    ("traffic", "p0", "nuisance", "candidate"),
    [
        pytest.param(100.0, 0.005, "N5", "bad-err", id="missing-scrapes-2x-errors"),
        pytest.param(100.0, 0.005, "N4", "neutral", id="warmup-neutral"),
        pytest.param(100.0, 0.005, "N3", "cat-lat", id="pods-catastrophe"),
        pytest.param(1000.0, 0.005, "N2", "good", id="bursts-good"),
        pytest.param(100.0, 0.005, "N1", "bad-tail", id="slow-path"),
    ],
)
def test_vectorised_rule_matches_decide_pass_by_pass(traffic, p0, nuisance, candidate):
    bench = load_bench()
    cell = bench.Cell(traffic, p0, nuisance, candidate, 6)
    sim = bench.simulate(cell, 6, np.random.default_rng(7))
    outcome = bench.ours(sim, cell)
    horizon = 25
    for run in range(6):
        expected = (int(outcome.verdict[run]), int(outcome.at[run]))
        if expected[1] >= horizon:
            expected = (0, horizon - 1)
        assert decide_each_pass(bench, sim, cell, run, horizon) == expected, run
