"""The five scenarios of SCENARIOS.md, end to end, from the example repository to their final state.

One play of the example on a bare remote (as ``gitops-rollout demo`` plays it): reconcile passes
every two simulated minutes, the clusters report what main says as Ready (a version added by a
human is not Ready on its first pass), traffic recorded per version by the weights on main feeds
the file metrics provider, a reviewer merges what the policies leave to a person, and an ML
engineer switches ``wisdom`` to mirroring (scenario 2) once scenario 1 is done. The tests then
read the remote: every pull request's kind, in order, per rollout; who merged it; the routing at
each merge; the final primaries and removed manifests; and every commit of main validated against
the upstream schemas and built with ``kubectl kustomize``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from e2e_world import (
    PASS_EVERY,
    World,
    check_main_history,
    default_split,
    http_rules,
    kind_of,
    primary_only,
)

from gitops_rollout import demo, reconcile
from gitops_rollout.composition import make_judge
from gitops_rollout.gitops.hosts.base import PullState
from gitops_rollout.gitops.hosts.local import PullRecord
from gitops_rollout.state import Phase

pytestmark = pytest.mark.slow

MAX_PASSES = 120

BRANCH = "gitops-rollout/{cluster}/{namespace}/{model}"
WISDOM_STAGING = BRANCH.format(cluster="staging", namespace="modelmesh-serving", model="wisdom")
WISDOM_PROD = BRANCH.format(cluster="prod-east", namespace="modelmesh-serving", model="wisdom")
FASHION = BRANCH.format(cluster="prod-east", namespace="default", model="fashionmnist")
IRIS = BRANCH.format(cluster="prod-east", namespace="default", model="iris")
SCORING = BRANCH.format(cluster="prod-east", namespace="abtesting", model="scoring")
ADOPT_PROD = "gitops-rollout/_adopt/prod-east"

FINAL = {
    ("staging", "wisdom"): "v2",
    ("prod-east", "wisdom"): "v2",
    ("prod-east", "fashionmnist"): "v2",
    ("prod-east", "iris"): "iris-v2",
    ("prod-east", "scoring"): "1.1.0",
}
"""Where every rollout ends: (cluster, model) -> its primary's version, alone and Idle."""


def switch_wisdom_to_mirror(root: Path) -> None:
    """Scenario 2, by hand: the policy mirrors, and a candidate v2 is added in both clusters."""
    policy = root / "policies" / "wisdom.yaml"
    text = policy.read_text()
    start, end = text.index("  strategy:"), text.index("  clusters:")
    policy.write_text(
        text[:start] + "  strategy:\n    type: mirror\n    minDuration: 10m\n" + text[end:]
    )
    for cluster in ("staging", "prod-east"):
        folder = root / "clusters" / cluster / "modelmesh-serving"
        primary = (folder / "wisdom" / "wisdom-0.yaml").read_text()
        assert "app.kubernetes.io/version: v1" in primary, "scenario 1 must have promoted v1"
        candidate = (
            primary.replace("name: wisdom-0", "name: wisdom-1")
            .replace("app.kubernetes.io/version: v1", "app.kubernetes.io/version: v2")
            .replace("gitops-rollout.dev/role: primary", "gitops-rollout.dev/role: candidate")
            .replace("mnist-svm-v1.joblib", "mnist-svm-v2.joblib")
        )
        (folder / "wisdom" / "wisdom-1.yaml").write_text(candidate)
        kustomization = folder / "kustomization.yaml"
        kustomization.write_text(
            kustomization.read_text().rstrip("\n") + "\n  - wisdom/wisdom-1.yaml\n"
        )


def mirror_twenty_percent(root: Path) -> None:
    policy = root / "policies" / "wisdom.yaml"
    policy.write_text(
        policy.read_text().replace(
            "    type: mirror\n", "    type: mirror\n    mirrorPercent: 20\n"
        )
    )


@dataclass
class Played:
    world: World
    passes: int
    pulls: list[PullRecord]
    mirrored_at: datetime | None = None
    lowered_at: datetime | None = None
    scenario1_main: str = ""
    """main when scenario 1 ended (both clusters Idle on v1)."""
    reports: list[reconcile.PassReport] = field(default_factory=list)

    def of(self, branch: str) -> list[PullRecord]:
        return [p for p in self.pulls if p.head == branch]

    def kinds(self, branch: str) -> list[str]:
        return [kind_of(p) for p in self.of(branch)]


def _idle_on(world: World, cluster: str, model: str, version: str) -> bool:
    state = world.state(cluster, model)
    versions = world.main_view().inventory.versions(cluster, model)
    return (
        state is not None
        and state.phase is Phase.IDLE
        and state.primary is not None
        and state.primary.version == version
        and len(versions) == 1
    )


def play(root: Path) -> Played:
    world = World(root)
    played = Played(world, 0, [])
    waiting: dict[int, datetime] = {}
    for number in range(1, MAX_PASSES + 1):
        judge: reconcile.Judge = reconcile.no_verdicts
        if world.metrics_file.exists():
            judge = make_judge(metrics_file=str(world.metrics_file), prometheus=None)
        report = world.reconcile(judge=judge)
        played.reports.append(report)
        assert not report.errors, f"pass {number}: {report.errors}"
        assert not report.problems, f"pass {number}: {[str(p) for p in report.problems]}"
        # The reviewer merges what waited for a person since an earlier pass.
        for pull in world.pulls(PullState.OPEN):
            first = waiting.setdefault(pull.number, world.now)
            if world.now > first:
                result = world.reviewer.merge(pull.number, message=f"{pull.title} (#{pull.number})")
                assert result.merged, f"#{pull.number}: {result.reason}"
        played.passes = number
        if all(_idle_on(world, c, m, v) for (c, m), v in FINAL.items()):
            break
        # The ML engineer: scenario 2 starts when scenario 1 is done in both clusters.
        if played.mirrored_at is None and all(
            _idle_on(world, c, "wisdom", "v1") for c in ("staging", "prod-east")
        ):
            played.scenario1_main = world.rev("main")
            world.human_change("wisdom: mirror to a new candidate v2", switch_wisdom_to_mirror)
            world.fresh.update(
                {(c, "modelmesh-serving", "wisdom-1") for c in ("staging", "prod-east")}
            )
            played.mirrored_at = world.now
        elif played.lowered_at is None and played.mirrored_at is not None:
            staging = world.state("staging", "wisdom")
            if staging is not None and staging.phase is Phase.PROGRESSING:
                world.human_change("wisdom: mirror only 20 % of requests", mirror_twenty_percent)
                played.lowered_at = world.now
        world.advance_traffic(
            world.main_view(), until=world.now + PASS_EVERY, step=timedelta(seconds=10)
        )
        world.tick()
    played.pulls = world.pulls()
    return played


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Played]:
    yield play(tmp_path_factory.mktemp("scenarios"))


def merged_by(pulls: list[PullRecord]) -> list[str | None]:
    return [p.merged_by for p in pulls]


def test_every_rollout_reaches_its_final_state(played: Played) -> None:
    world = played.world
    assert played.passes < MAX_PASSES, "the scenarios did not finish"
    for (cluster, model), version in FINAL.items():
        state = world.state(cluster, model)
        assert state is not None and state.phase is Phase.IDLE, (cluster, model, state)
        assert state.primary is not None and state.primary.version == version
        assert not state.candidates and not state.weights
    # Every pull request was merged (none left open, none closed), and merged into main.
    assert [p.number for p in played.pulls if p.state is not PullState.MERGED] == []
    main = set(world.first_parents())
    assert all(p.merge_sha in main for p in played.pulls)
    # One more pass on the final state changes nothing.
    before = world.snapshot()
    world.tick()
    report = world.reconcile(
        judge=make_judge(metrics_file=str(world.metrics_file), prometheus=None)
    )
    assert {d.outcome for d in report.decisions} == {"none"}
    assert world.snapshot() == before


def test_every_commit_on_main_validates_and_builds(played: Played) -> None:
    world = played.world
    commits = world.first_parents()
    assert len(commits) == len(played.pulls) + 3  # the seed, and the engineer's two changes
    builds, problems = check_main_history(world, commits)
    assert not problems, "\n".join(problems)
    assert builds >= len(commits)


def test_scenario_1_canary_by_header_on_modelmesh(played: Played) -> None:
    world = played.world
    # Staging first: canary, promotion (a person merges it), finalize, cleanup.
    staging = played.of(WISDOM_STAGING)
    assert played.kinds(WISDOM_STAGING)[:4] == ["step", "promote", "finalize", "cleanup"]
    assert merged_by(staging[:4]) == [
        "gitops-rollout",
        "reviewer",
        "gitops-rollout",
        "gitops-rollout",
    ]
    canary = staging[0]
    assert canary.merge_sha is not None
    rules = http_rules(world.routing_docs("staging", "wisdom", canary.merge_sha))
    matched = [r for r in rules if "match" in r]
    assert [r["match"] for r in matched] == [[{"headers": {"traffic": {"exact": "test"}}}]]
    assert [r["route"][0]["headers"]["request"]["set"]["mm-vmodel-id"] for r in matched] == [
        "wisdom-1"
    ]
    assert default_split(world.routing_docs("staging", "wisdom", canary.merge_sha)) == {
        "wisdom-0": 100
    }
    # prod-east was adopted (all traffic to wisdom-0) and waited for staging to promote v1.
    adopt = played.of(ADOPT_PROD)
    assert [kind_of(p) for p in adopt] == ["adopt"]
    prod = played.of(WISDOM_PROD)
    assert played.kinds(WISDOM_PROD)[:4] == ["step", "promote", "finalize", "cleanup"]
    staging_finalized = staging[2].merged_at
    assert staging_finalized is not None and prod[0].created_at >= staging_finalized
    # The end of scenario 1: wisdom-0 runs v1's spec, wisdom-1 is gone, routing primary-only.
    end = played.scenario1_main
    for cluster in ("staging", "prod-east"):
        folder = f"clusters/{cluster}/modelmesh-serving"
        primary = world.show(f"{folder}/wisdom/wisdom-0.yaml", end)
        assert primary is not None
        doc = yaml.safe_load(primary)
        assert doc["metadata"]["labels"]["app.kubernetes.io/version"] == "v1"
        assert doc["spec"]["predictor"]["model"]["storageUri"].endswith("mnist-svm-v1.joblib")
        assert doc["metadata"]["annotations"]["serving.kserve.io/secretKey"] == "localMinIO"
        assert world.show(f"{folder}/wisdom/wisdom-1.yaml", end) is None
        kustomization = world.show(f"{folder}/kustomization.yaml", end)
        assert kustomization is not None and b"wisdom-1" not in kustomization
        docs = world.routing_docs(cluster, "wisdom", end)
        assert primary_only(docs, "wisdom-0") == []


def test_scenario_2_mirror_on_modelmesh(played: Played) -> None:
    world = played.world
    assert played.mirrored_at is not None and played.lowered_at is not None
    staging = played.of(WISDOM_STAGING)[4:]
    assert [kind_of(p) for p in staging] == ["step", "step", "promote", "finalize", "cleanup"]
    start, lowered = staging[0], staging[1]
    assert start.merge_sha is not None and lowered.merge_sha is not None
    rules = http_rules(world.routing_docs("staging", "wisdom", start.merge_sha))
    assert [r["mirrorPercentage"]["value"] for r in rules if "mirror" in r] == [100.0]
    assert default_split(world.routing_docs("staging", "wisdom", start.merge_sha)) == {
        "wisdom-0": 100
    }
    # Lowering the share in the policy yields a PR that changes only that number.
    changed = [
        line
        for line in world.pr_diff(lowered.number).splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---")) and "content-hash" not in line
    ]
    assert changed == ["-      value: 100.0", "+      value: 20.0"]
    # The new share applies to the next candidate's mirror in prod-east.
    prod = played.of(WISDOM_PROD)[4:]
    assert [kind_of(p) for p in prod] == ["step", "promote", "finalize", "cleanup"]
    assert prod[0].merge_sha is not None
    rules = http_rules(world.routing_docs("prod-east", "wisdom", prod[0].merge_sha))
    assert [r["mirrorPercentage"]["value"] for r in rules if "mirror" in r] == [20.0]
    for cluster in ("staging", "prod-east"):
        doc = yaml.safe_load(
            world.show(f"clusters/{cluster}/modelmesh-serving/wisdom/wisdom-0.yaml") or b""
        )
        assert doc["metadata"]["labels"]["app.kubernetes.io/version"] == "v2"
        assert doc["spec"]["predictor"]["model"]["storageUri"].endswith("mnist-svm-v2.joblib")
        assert world.show(f"clusters/{cluster}/modelmesh-serving/wisdom/wisdom-1.yaml") is None
        assert primary_only(world.routing_docs(cluster, "wisdom"), "wisdom-0") == []


def test_scenario_3_progressive_canary_on_tf_serving(played: Played) -> None:
    world = played.world
    pulls = played.of(FASHION)
    assert played.kinds(FASHION) == ["step"] * 8 + ["promote", "cleanup"]
    weights = []
    for pull in pulls[:8]:
        assert pull.merge_sha is not None
        split = default_split(world.routing_docs("prod-east", "fashionmnist", pull.merge_sha))
        weights.append(split["fashionmnist-v2.default.svc.cluster.local"])
        assert sum(split.values()) == 100
    assert weights == [5, 10, 20, 30, 40, 60, 80, 100]
    assert merged_by(pulls) == ["gitops-rollout"] * 8 + ["reviewer", "gitops-rollout"]
    # Traffic to winner: v2 alone, v1's manifests gone, both hosts still served.
    docs = world.routing_docs("prod-east", "fashionmnist")
    assert primary_only(docs, "fashionmnist-v2.default.svc.cluster.local") == []
    service = next(d for d in docs if d["kind"] == "VirtualService")
    assert service["spec"]["hosts"] == ["fashionmnist", "fashionmnist.com"]
    assert world.show("clusters/prod-east/default/fashionmnist/fashionmnist-v1.yaml") is None
    kustomization = world.show("clusters/prod-east/default/kustomization.yaml") or b""
    assert b"fashionmnist-v1" not in kustomization and b"fashionmnist-v2" in kustomization


def test_scenario_4_ab_with_a_reward_on_seldon(played: Played) -> None:
    world = played.world
    kinds = played.kinds(IRIS)
    assert kinds[0] == "step" and kinds[-2:] == ["promote", "cleanup"]
    assert set(kinds[1:-2]) <= {"step"}
    start = played.of(IRIS)[0]
    assert start.merge_sha is not None
    docs = world.routing_docs("prod-east", "iris", start.merge_sha)
    service = next(d for d in docs if d["kind"] == "VirtualService")
    assert service["metadata"]["name"] == "routing-rule"
    assert service["metadata"]["namespace"] == "default"
    assert service["spec"]["gateways"] == ["istio-system/seldon-gateway"]
    assert service["spec"]["hosts"] == ["iris.example.com"]
    routes = http_rules(docs)[-1]["route"]
    assert {
        (r["destination"]["host"], r["destination"]["port"]["number"]): r["headers"]["response"][
            "set"
        ]["version"]
        for r in routes
    } == {
        ("iris-default.ns-baseline.svc.cluster.local", 8000): "iris-v1",
        ("iris-default.ns-candidate.svc.cluster.local", 8000): "iris-v2",
    }
    # The winner (more user engagement, every objective met) takes all; the loser goes.
    final = world.routing_docs("prod-east", "iris")
    assert primary_only(final, "iris-default.ns-candidate.svc.cluster.local") == []
    baseline = world.show("clusters/prod-east/ns-baseline/iris.yaml") or b""
    assert [d["kind"] for d in yaml.safe_load_all(baseline) if d] == ["Namespace"]
    candidate = world.show("clusters/prod-east/ns-candidate/iris.yaml") or b""
    kinds_left = [d["kind"] for d in yaml.safe_load_all(candidate) if d]
    assert kinds_left == ["Namespace", "SeldonDeployment"]


def test_scenario_5_blue_green_stages_with_approvals(played: Played) -> None:
    world = played.world
    pulls = played.of(SCORING)
    assert [(kind_of(p), p.title.split(" ")[2]) for p in pulls] == [
        ("step", "Blue_0"),
        ("step", "Blue_50"),
        ("step", "Blue_100"),
        ("promote", "Blue_Green"),
        ("finalize", "Green_100"),
        ("cleanup", "remove"),
    ]
    # Every stage waits for a person; the next opens only once the previous was merged.
    assert merged_by(pulls) == ["reviewer"] * 5 + ["gitops-rollout"]
    for before, after in itertools.pairwise(pulls):
        assert before.merged_at is not None and after.created_at >= before.merged_at
    green = "model-green.abtesting.svc.cluster.local"
    blue = "model-blue.abtesting.svc.cluster.local"
    expected = [{green: 100}, {green: 50, blue: 50}, {blue: 100}]  # a 0 % route is left out
    for pull, split in zip(pulls[:3], expected, strict=True):
        assert pull.merge_sha is not None
        assert default_split(world.routing_docs("prod-east", "scoring", pull.merge_sha)) == split
    # The header override reaches each version at every stage while both exist.
    for pull in pulls[:5]:
        assert pull.merge_sha is not None
        rules = http_rules(world.routing_docs("prod-east", "scoring", pull.merge_sha))
        overrides = {
            r["match"][0]["headers"]["x-api-version"]["exact"]: r["route"][0]["destination"]["host"]
            for r in rules
            if "x-api-version" in str(r.get("match"))
        }
        assert overrides == {"blue": blue, "green": green}, pull.title
    # Blue_Green: green is rewritten with blue's image, blue keeps the traffic.
    promote = pulls[3]
    assert promote.merge_sha is not None
    green_doc = yaml.safe_load_all(
        world.show("clusters/prod-east/abtesting/scoring/model-green.yaml", promote.merge_sha)
        or b""
    )
    blue_doc = yaml.safe_load_all(
        world.show("clusters/prod-east/abtesting/scoring/model-blue.yaml", promote.merge_sha) or b""
    )
    image = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
        for d in [*green_doc, *blue_doc]
        if d and d["kind"] == "Deployment"
    }
    assert image["model-green"] == image["model-blue"]
    assert default_split(world.routing_docs("prod-east", "scoring", promote.merge_sha)) == {
        blue: 100
    }
    # Green_100 and cleanup: green alone, blue's manifests gone.
    assert primary_only(world.routing_docs("prod-east", "scoring")[:1], green) == []
    assert world.show("clusters/prod-east/abtesting/scoring/model-blue.yaml") is None
    kustomization = world.show("clusters/prod-east/abtesting/kustomization.yaml") or b""
    assert b"model-blue" not in kustomization


def test_scenario_3_a_candidate_over_the_latency_limit_is_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """v2 answers in 400 ms against a 250 ms limit: traffic goes back to v1 in a rollback pull
    request carrying the evidence, the rollout stops; a changed candidate starts afresh."""
    monkeypatch.setitem(
        demo.BEHAVIOUR,
        ("fashionmnist", "v2"),
        demo.Traffic(rps=300, error_rate=0.008, latency_ms=400),
    )
    world = World(tmp_path, policies={"fashionmnist"})
    for _ in range(30):
        judge: reconcile.Judge = reconcile.no_verdicts
        if world.metrics_file.exists():
            judge = make_judge(metrics_file=str(world.metrics_file), prometheus=None)
        report = world.reconcile(judge=judge)
        assert not report.errors and not report.problems
        state = world.state("prod-east", "fashionmnist")
        if state is not None and state.phase is Phase.ROLLED_BACK:
            break
        world.advance_traffic(
            world.main_view(), until=world.now + PASS_EVERY, step=timedelta(seconds=10)
        )
        world.tick()
    pulls = world.pulls()
    assert [kind_of(p) for p in pulls][-1] == "rollback"
    assert {kind_of(p) for p in pulls[:-1]} == {"step"}
    rollback = pulls[-1]
    assert rollback.state is PullState.MERGED and rollback.title.endswith("all traffic to v1")
    assert "mean-latency" in rollback.body and "250" in rollback.body
    assert (
        primary_only(
            world.routing_docs("prod-east", "fashionmnist"),
            "fashionmnist-v1.default.svc.cluster.local",
        )
        == []
    )
    # The rollout stops: the same candidate is not tried again.
    before = world.snapshot()
    world.tick(timedelta(minutes=30))
    report = world.reconcile(
        judge=make_judge(metrics_file=str(world.metrics_file), prometheus=None)
    )
    assert [d.action for d in report.decisions] == ["none"]
    assert "was rolled back" in report.decisions[0].reason
    assert world.snapshot() == before
    # A new build of the candidate is a new rollout, from the first step.
    path = "clusters/prod-east/default/fashionmnist/fashionmnist-v2.yaml"
    text = (world.show(path) or b"").decode().replace("cnn/v2", "cnn/v2.1")
    world.push_files("fashionmnist: v2 with the latency fix", {path: text})
    world.tick()
    report = world.reconcile()
    [fresh] = report.decisions
    assert (fresh.action, fresh.outcome) == ("start", "merged")
    assert default_split(world.routing_docs("prod-east", "fashionmnist")) == {
        "fashionmnist-v1.default.svc.cluster.local": 95,
        "fashionmnist-v2.default.svc.cluster.local": 5,
    }
