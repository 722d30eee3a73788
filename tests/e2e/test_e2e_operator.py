"""Operator actions as pull requests, through the real command line: promote, abort, pause, resume.

Each is run the way an operator runs it: from a directory that is not a checkout, naming the
remote (``gitops-rollout promote POLICY --remote BARE --inventory SNAP ...``). Each yields one
pull request of its own kind on the rollout's branch; merging it is what takes effect.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from e2e_world import World, default_split, kind_of, primary_only

from gitops_rollout.gitops.hosts.base import PullState
from gitops_rollout.state import Phase

FASHION_BRANCH = "gitops-rollout/prod-east/default/fashionmnist"
STAGING_BRANCH = "gitops-rollout/staging/modelmesh-serving/wisdom"


def operator(world: World, *args: str) -> dict[str, Any]:
    """Run an operator command from outside any checkout; its JSON pass report."""
    elsewhere = world.workdir / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    flags = world.pass_flags()
    done = world.cli(*args, *flags, "--json", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def only(report: dict[str, Any], cluster: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [d for d in report["decisions"] if d["cluster"] == cluster]
    assert len(rows) == 1, rows
    return rows[0]


def test_promote_opens_a_promotion_pull_request_and_the_rollout_finishes(tmp_path: Path) -> None:
    world = World(tmp_path, policies={"fashionmnist"})
    world.reconcile()
    state = world.state("prod-east", "fashionmnist")
    assert state is not None and (state.phase, state.step) == (Phase.PROGRESSING, 1)
    world.tick()
    # Without metrics the analysis holds at 5 %; the operator promotes now.
    report = operator(world, "promote", "fashionmnist")
    row = only(report, "prod-east")
    assert (row["action"], row["kind"], row["outcome"]) == ("promote", "promote", "opened")
    assert "promoted by an operator" in row["reason"]
    pull = world.bot.show(row["pr"])
    assert (pull.head, pull.state, kind_of(pull)) == (FASHION_BRANCH, PullState.OPEN, "promote")
    proposed = world.routing_docs("prod-east", "fashionmnist", pull.head_sha)
    assert primary_only(proposed, "fashionmnist-v2.default.svc.cluster.local") == []
    # Main is untouched until a person merges (promotion needs a review in this policy).
    assert default_split(world.routing_docs("prod-east", "fashionmnist")) == {
        "fashionmnist-v1.default.svc.cluster.local": 95,
        "fashionmnist-v2.default.svc.cluster.local": 5,
    }
    # The reviewer reads it and merges it with the local host's commands.
    shown = world.cli("pr", "show", str(pull.number), "--remote", str(world.remote))
    assert shown.returncode == 0, shown.stderr
    assert f"#{pull.number} [open] {pull.title}" in shown.stdout
    assert "routing.yaml" in shown.stdout and "promoted by an operator" in shown.stdout
    merged = world.cli("pr", "merge", str(pull.number), "--remote", str(world.remote))
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout.startswith(f"#{pull.number} merged as ")
    world.tick()
    cleanup = world.reconcile()
    assert [(d.kind, d.outcome) for d in cleanup.decisions] == [("cleanup", "merged")]
    state = world.state("prod-east", "fashionmnist")
    assert state is not None and state.phase is Phase.IDLE
    assert state.primary is not None and state.primary.version == "v2"
    assert world.show("clusters/prod-east/default/fashionmnist/fashionmnist-v1.yaml") is None


def test_abort_rolls_back_in_its_own_pull_request(tmp_path: Path) -> None:
    world = World(tmp_path, policies={"wisdom"})
    world.reconcile()
    state = world.state("staging", "wisdom")
    assert state is not None and state.phase is Phase.PROGRESSING
    world.tick()
    report = operator(world, "abort", "wisdom", "--cluster", "staging")
    row = only(report, "staging")
    assert (row["action"], row["kind"], row["outcome"]) == ("rollback", "rollback", "merged")
    assert "aborted by an operator" in row["reason"]
    assert kind_of(world.bot.show(row["pr"])) == "rollback"
    state = world.state("staging", "wisdom")
    assert state is not None and state.phase is Phase.ROLLED_BACK
    assert primary_only(world.routing_docs("staging", "wisdom"), "wisdom-0") == []
    # The same candidate does not start again; prod-east was not touched by the command.
    before = world.snapshot()
    world.tick(timedelta(minutes=30))
    again = world.reconcile()
    staging = next(d for d in again.decisions if d.cluster == "staging")
    assert staging.action == "none" and "was rolled back" in staging.reason
    assert world.snapshot() == before


def test_pause_holds_the_rollout_and_resume_continues_it(tmp_path: Path) -> None:
    world = World(tmp_path, policies={"wisdom"})
    world.reconcile()
    world.tick()
    paused = only(operator(world, "pause", "wisdom", "--cluster", "staging"), "staging")
    assert (paused["action"], paused["kind"], paused["outcome"]) == ("pause", "pause", "opened")
    pull = world.bot.show(paused["pr"])
    assert (pull.head, kind_of(pull)) == (STAGING_BRANCH, "pause")
    assert world.reviewer.merge(pull.number, message=pull.title).merged
    state = world.state("staging", "wisdom")
    assert state is not None and (state.phase, state.paused_from) == (
        Phase.PAUSED,
        Phase.PROGRESSING,
    )
    # Paused, the canary keeps its routing and does not promote, however long it runs.
    before = world.snapshot()
    for _ in range(2):
        world.tick(timedelta(minutes=30))
        report = world.reconcile()
        staging = next(d for d in report.decisions if d.cluster == "staging")
        assert staging.action == "hold" and "paused" in staging.reason
    assert world.snapshot() == before
    rules = world.routing_docs("staging", "wisdom")
    assert any("match" in r for r in rules[0]["spec"]["http"])
    resumed = only(operator(world, "resume", "wisdom", "--cluster", "staging"), "staging")
    assert (resumed["action"], resumed["kind"], resumed["outcome"]) == (
        "resume",
        "resume",
        "opened",
    )
    pull = world.bot.show(resumed["pr"])
    assert kind_of(pull) == "resume"
    assert world.reviewer.merge(pull.number, message=pull.title).merged
    state = world.state("staging", "wisdom")
    assert state is not None and (state.phase, state.step) == (Phase.PROGRESSING, 1)
    world.tick(timedelta(minutes=11))
    report = world.reconcile()
    staging = next(d for d in report.decisions if d.cluster == "staging")
    assert (staging.action, staging.outcome) == ("promote", "opened")
