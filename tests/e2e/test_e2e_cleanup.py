"""Cleanup when a policy is deleted: its generated routing goes, by pull request; a policy that
is merely broken never tears its routing down."""

from __future__ import annotations

import json
from pathlib import Path

from e2e_world import World, check_main_history, kind_of

from gitops_rollout.gitops.hosts.base import PullState

WISDOM = "clusters/{cluster}/modelmesh-serving"


def test_deleting_a_policy_removes_its_routing_by_pull_request(tmp_path: Path) -> None:
    world = World(tmp_path, policies={"wisdom", "scoring"})
    world.reconcile()  # staging's canary starts, prod-east is adopted
    for cluster in ("staging", "prod-east"):
        assert world.state(cluster, "wisdom") is not None
    start = world.rev("main")
    manifests = {
        path: world.show(path)
        for path in world.files()
        if "/wisdom/" in path and "/rollout/" not in path
    }
    # A dry run says what will go.
    world.push_files("wisdom is retired", {"policies/wisdom.yaml": None}, author="platform-team")
    world.tick()
    planned = world.cli(
        "plan", "--repo", str(world.pull_human()), "--output", str(tmp_path / "plan"), "--json"
    )
    assert planned.returncode == 0, planned.stderr
    removals = [d for d in json.loads(planned.stdout)["decisions"] if d["kind"] == "cleanup"]
    assert sorted(d["cluster"] for d in removals) == ["prod-east", "staging"]
    deleted = set((tmp_path / "plan" / "DELETED.txt").read_text().split())
    assert deleted == {
        f"{WISDOM.format(cluster=c)}/wisdom/rollout/{f}"
        for c in ("staging", "prod-east")
        for f in ("routing.yaml", "kustomization.yaml")
    }
    report = world.reconcile()
    assert not report.errors and not report.problems
    cleanups = [d for d in report.decisions if d.kind == "cleanup"]
    assert sorted((d.cluster, d.model, d.outcome) for d in cleanups) == [
        ("prod-east", "wisdom", "merged"),
        ("staging", "wisdom", "merged"),
    ]
    for d in cleanups:
        pull = world.bot.show(d.pr or 0)
        assert (kind_of(pull), pull.state) == ("cleanup", PullState.MERGED)
        assert "policy deleted" in pull.title
    # The routing folders and their kustomization entries are gone; the models stay.
    for cluster in ("staging", "prod-east"):
        folder = WISDOM.format(cluster=cluster)
        assert world.routing_path(cluster, "wisdom") is None
        assert not [p for p in world.files() if p.startswith(f"{folder}/wisdom/rollout/")]
        assert b"wisdom/rollout" not in (world.show(f"{folder}/kustomization.yaml") or b"")
    assert {path: world.show(path) for path in manifests} == manifests
    # Scoring, another policy, is untouched; main validates and builds after each merge.
    assert [kind_of(p) for p in world.pulls(PullState.OPEN)] == ["step"]
    commits = world.first_parents()
    builds, problems = check_main_history(world, commits[commits.index(start) + 1 :])
    assert not problems and builds >= 2, problems
    # Nothing more to do.
    before = world.snapshot()
    world.tick()
    world.reconcile()
    assert world.snapshot() == before


def test_a_broken_policy_keeps_its_routing(tmp_path: Path) -> None:
    world = World(tmp_path, policies={"wisdom"})
    world.reconcile()
    routed = {c: world.routing_path(c, "wisdom") for c in ("staging", "prod-east")}
    assert all(routed.values())
    text = (world.show("policies/wisdom.yaml") or b"").decode()
    world.push_files(
        "wisdom: typo", {"policies/wisdom.yaml": text.replace("type: canary", "type: canery")}
    )
    before = world.snapshot()
    world.tick()
    report = world.reconcile()
    assert [p.file for p in report.problems] == ["policies/wisdom.yaml"]
    assert not [d for d in report.decisions if d.kind == "cleanup"]
    assert world.snapshot() == before
    assert {c: world.routing_path(c, "wisdom") for c in routed} == routed
    # The command says why, with exit code 1 (bad input), and changes nothing either.
    done = world.cli("reconcile", *world.pass_flags())
    assert done.returncode == 1
    assert "policies/wisdom.yaml:" in done.stderr and "canery" in done.stderr
    assert world.snapshot() == before
