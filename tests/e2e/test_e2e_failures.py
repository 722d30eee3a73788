"""Failure paths, end to end on the example repository and the local host (no metrics needed).

A candidate that never gets Ready, a pull request a person closes unmerged, a hand edit of a
generated file on main, a person pushing to main while the bot merges, a person committing to
the bot's branch, and Prometheus down: what the remote ends up holding, and what the user is
told (pass report, ``status``, pull request comments).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from e2e_world import EXAMPLE, World, check_main_history, kind_of, primary_only

from gitops_rollout.gitops.hosts.base import GitHost, MergeResult, PullState
from gitops_rollout.reconcile import Decision, PassReport
from gitops_rollout.state import is_hand_edited

STAGING_WISDOM = "clusters/staging/modelmesh-serving/wisdom"
STAGING_BRANCH = "gitops-rollout/staging/modelmesh-serving/wisdom"
SCORING = "clusters/prod-east/abtesting/scoring"
SCORING_BRANCH = "gitops-rollout/prod-east/abtesting/scoring"


def without_wisdom_candidates(root: Path) -> None:
    """The example before anyone added wisdom-1: one version per cluster."""
    for cluster in ("staging", "prod-east"):
        folder = root / "clusters" / cluster / "modelmesh-serving"
        (folder / "wisdom" / "wisdom-1.yaml").unlink()
        kustomization = folder / "kustomization.yaml"
        kustomization.write_text(
            kustomization.read_text().replace("  - wisdom/wisdom-1.yaml\n", "")
        )


def add_staging_candidate(world: World) -> None:
    """A person adds wisdom-1 (v1) to staging, as the example has it."""
    source = (EXAMPLE / STAGING_WISDOM / "wisdom-1.yaml").read_text()
    kustomization = (EXAMPLE / "clusters/staging/modelmesh-serving/kustomization.yaml").read_text()
    world.push_files(
        "wisdom: add candidate v1 in staging",
        {
            f"{STAGING_WISDOM}/wisdom-1.yaml": source,
            "clusters/staging/modelmesh-serving/kustomization.yaml": kustomization,
        },
    )


def decision(report: PassReport, cluster: str, model: str) -> Decision:
    found = [d for d in report.decisions if (d.cluster, d.model) == (cluster, model)]
    assert len(found) == 1, report.decisions
    return found[0]


# -- a candidate that is never Ready -----------------------------------------------------------


def test_a_candidate_never_ready_gets_no_traffic_and_no_pull_request(tmp_path: Path) -> None:
    world = World(tmp_path, policies={"wisdom"}, edit=without_wisdom_candidates)
    first = world.reconcile()
    assert [(kind_of(p), p.state) for p in world.pulls()] == [
        ("adopt", PullState.MERGED),
        ("adopt", PullState.MERGED),
    ]
    assert decision(first, "staging", "wisdom").outcome == "merged"
    world.not_ready[("staging", "wisdom-1")] = 'Back-off pulling image "kserve/sklearnserver:v9"'
    add_staging_candidate(world)
    before = world.snapshot()
    for _ in range(4):
        world.tick(timedelta(minutes=15))
        report = world.reconcile()
        assert not report.errors and not report.problems
        staging = decision(report, "staging", "wisdom")
        assert (staging.action, staging.outcome, staging.pr) == ("none", "none", None)
        assert "candidate v1" in staging.reason and "is not Ready" in staging.reason
        assert "Back-off pulling image" in staging.reason
        assert "no traffic" in staging.reason
    # Nothing moved: no commit on any ref, no pull request, all traffic on the primary.
    assert world.snapshot() == before
    assert primary_only(world.routing_docs("staging", "wisdom"), "wisdom-0") == []
    # What a user sees: the pass report of the real command, and `status`.
    done = world.cli("reconcile", *world.pass_flags())
    assert done.returncode == 0, done.stderr
    assert "is not Ready" in done.stdout and "Back-off pulling image" in done.stdout
    assert world.snapshot() == before
    world.pull_human()
    status = world.cli(
        "status", "--repo", str(world.human), "--inventory", str(world.inventory_dir), "--json"
    )
    assert status.returncode == 0, status.stderr
    rows = {(r["cluster"], r["model"]): r for r in json.loads(status.stdout)}
    assert rows[("staging", "wisdom")]["phase"] == "Idle"
    assert "is not Ready" in rows[("staging", "wisdom")]["next"]
    assert "no traffic" in rows[("staging", "wisdom")]["next"]
    table = world.cli("status", "--repo", str(world.human), "--inventory", str(world.inventory_dir))
    assert table.returncode == 0 and "Back-off pulling image" in table.stdout


# -- a pull request closed unmerged ------------------------------------------------------------


def bump_blue(world: World, version: str) -> None:
    """A person ships a new scoring image as model-blue."""
    text = (world.show(f"{SCORING}/model-blue.yaml") or b"").decode()
    text = text.replace('version: "1.1.0"', f'version: "{version}"').replace(
        "scoring:1.1.0", f"scoring:{version}"
    )
    world.push_files(f"scoring: blue runs {version}", {f"{SCORING}/model-blue.yaml": text})


def test_a_closed_pull_request_pauses_the_rollout_until_its_inputs_change(tmp_path: Path) -> None:
    world = World(tmp_path, policies={"scoring"})
    world.reconcile()
    [stage] = world.pulls()
    assert (kind_of(stage), stage.state, stage.head) == ("step", PullState.OPEN, SCORING_BRANCH)
    assert "Blue_0" in stage.title
    closed = world.cli(
        "pr", "close", str(stage.number), "--remote", str(world.remote), "--comment", "not today"
    )
    assert closed.returncode == 0, closed.stderr
    before = world.snapshot()
    for _ in range(3):
        world.tick(timedelta(minutes=10))
        report = world.reconcile()
        scoring = decision(report, "prod-east", "scoring")
        assert (scoring.outcome, scoring.pr) == ("vetoed", stage.number)
        assert f"#{stage.number}" in scoring.reason and "closed unmerged" in scoring.reason
    done = world.cli("reconcile", *world.pass_flags())
    assert done.returncode == 0, done.stderr
    assert "vetoed" in done.stdout and "closed unmerged" in done.stdout
    # Not reopened, not pushed again, no second pull request.
    assert world.snapshot() == before
    assert world.bot.show(stage.number).state is PullState.CLOSED
    # `status` says so as well.
    world.pull_human()
    status = world.cli(
        "status", "--repo", str(world.human), "--inventory", str(world.inventory_dir), "--json"
    )
    assert status.returncode == 0, status.stderr
    [row] = json.loads(status.stdout)
    assert row["next"].startswith(f"vetoed: #{stage.number} ") and "closed unmerged" in row["next"]
    assert row["pr"] == f"#{stage.number} (closed)"
    # A changed input (a new candidate spec) is a new decision: a new pull request.
    bump_blue(world, "1.2.0")
    world.tick()
    report = world.reconcile()
    scoring = decision(report, "prod-east", "scoring")
    assert scoring.outcome == "opened" and scoring.pr == stage.number + 1
    fresh = world.bot.show(stage.number + 1)
    assert fresh.state is PullState.OPEN and "Blue_0" in fresh.title and "1.2.0" in fresh.title
    assert world.bot.show(stage.number).state is PullState.CLOSED
    assert [p.number for p in world.pulls(PullState.OPEN)] == [fresh.number]


# -- a hand edit of a generated file on main ---------------------------------------------------


def test_a_hand_edit_of_generated_routing_pauses_and_resume_restores_it(tmp_path: Path) -> None:
    world = World(tmp_path, policies={"wisdom"})
    world.reconcile()
    canary = world.state("staging", "wisdom")
    assert canary is not None and canary.phase.value == "Progressing"
    routing = f"{STAGING_WISDOM}/rollout/routing.yaml"
    generated = world.show(routing) or b""
    edited = generated.replace(b"exact: test", b"exact: qa-team")
    assert edited != generated
    world.push_files("route the QA team's header to the candidate", {routing: edited}, author="sre")
    hand_edit = world.rev("main")
    before = world.snapshot()
    for _ in range(3):
        world.tick(timedelta(minutes=10))  # the canary's 10 minutes pass: it would promote
        report = world.reconcile()
        assert not report.errors
        staging = decision(report, "staging", "wisdom")
        assert staging.action == "hold", staging
        assert "edited by hand" in staging.reason and "gitops-rollout resume" in staging.reason
    # Never overwritten: main still holds the person's edit, no pull request touched it.
    assert world.snapshot() == before
    assert world.show(routing) == edited and world.rev("main") == hand_edit
    done = world.cli("reconcile", *world.pass_flags())
    assert done.returncode == 0, done.stderr
    assert "edited by hand" in done.stdout
    assert world.snapshot() == before
    world.pull_human()
    status = world.cli(
        "status", "--repo", str(world.human), "--inventory", str(world.inventory_dir), "--json"
    )
    rows = {r["cluster"]: r for r in json.loads(status.stdout)}
    assert rows["staging"]["next"].startswith("hold: the generated routing file was edited")
    # resume (the real command): a pull request that regenerates the file.
    resumed = world.cli("resume", "wisdom", "--cluster", "staging", *world.pass_flags(), "--json")
    assert resumed.returncode == 0, resumed.stderr
    [row] = [d for d in json.loads(resumed.stdout)["decisions"] if d["cluster"] == "staging"]
    assert (row["action"], row["kind"]) == ("resume", "resume")
    [pull] = world.pulls(PullState.OPEN)
    assert (pull.head, kind_of(pull), row["pr"]) == (STAGING_BRANCH, "resume", pull.number)
    restored = world.show(routing, pull.head_sha) or b""
    assert not is_hand_edited(restored)
    assert b"exact: test" in restored and b"qa-team" not in restored
    # prod-east was not part of the command: nothing proposed there.
    assert [p.head for p in world.pulls(PullState.OPEN)] == [STAGING_BRANCH]
    # Merged by a person, the rollout carries on from where it was: the canary step's clock
    # starts again with the regenerated routing, and the promotion follows.
    assert world.reviewer.merge(pull.number, message=pull.title).merged
    state = world.state("staging", "wisdom")
    assert state is not None and (state.phase.value, state.step) == ("Progressing", 1)
    world.tick()
    held = decision(world.reconcile(), "staging", "wisdom")
    assert held.action == "hold" and "of its 10m00s" in held.reason
    world.tick(timedelta(minutes=10))
    promoted = decision(world.reconcile(), "staging", "wisdom")
    assert (promoted.action, promoted.kind, promoted.outcome) == ("promote", "promote", "opened")


# -- a person pushing to main while the bot merges ---------------------------------------------


class RacingHost:
    """The local host, with a person pushing to main just before the bot merges `head`."""

    def __init__(self, inner: GitHost, *, head: str, race: Callable[[], None]) -> None:
        self.inner = inner
        self.head = head
        self.race: Callable[[], None] | None = race
        self.merges: list[tuple[int, MergeResult]] = []

    def pulls_for_prefix(self, prefix: str, *, base: str) -> Any:
        return self.inner.pulls_for_prefix(prefix, base=base)

    def open_or_update(self, draft: Any) -> Any:
        return self.inner.open_or_update(draft)

    def comment(self, number: int, body: str) -> None:
        self.inner.comment(number, body)

    def comments(self, number: int) -> list[str]:
        return self.inner.comments(number)

    def close(self, number: int, *, comment: str = "") -> None:
        self.inner.close(number, comment=comment)

    def merge(self, number: int, *, message: str) -> MergeResult:
        pulls = self.inner.pulls_for_prefix("gitops-rollout/", base="main")
        if self.race is not None and any(p.number == number and p.head == self.head for p in pulls):
            self.race()
            self.race = None
        result = self.inner.merge(number, message=message)
        self.merges.append((number, result))
        return result


def test_a_push_to_main_before_the_merge_is_merged_around(tmp_path: Path) -> None:
    world = World(tmp_path, policies={"wisdom"})
    notes = "docs/runbook.md"

    def race() -> None:
        world.push_files("runbook for the on-call", {notes: "# Runbook\n"}, author="sre")

    host = RacingHost(world.bot, head=STAGING_BRANCH, race=race)
    report = world.reconcile(host=host)
    assert not report.errors
    staging = decision(report, "staging", "wisdom")
    assert staging.outcome == "merged"
    # The merge was made on top of the person's commit: both changes are on main, none forced.
    merge = world.rev("main")
    human = world.rev(":/runbook for the on-call")
    assert world.show(notes) == b"# Runbook\n"
    parents = world.first_parents()
    assert human in parents and parents.index(human) < parents.index(merge)
    state = world.state("staging", "wisdom")
    assert state is not None and state.phase.value == "Progressing"


def test_a_conflicting_push_to_main_is_reported_and_never_forced(tmp_path: Path) -> None:
    world = World(tmp_path, policies={"wisdom"})
    kustomization = "clusters/staging/modelmesh-serving/kustomization.yaml"
    extra = "clusters/staging/modelmesh-serving/wisdom/wisdom-config.yaml"

    def race() -> None:
        text = (world.show(kustomization) or b"").decode()
        world.push_files(
            "wisdom: a config map for the runtime",
            {
                kustomization: text + "  - wisdom/wisdom-config.yaml\n",
                extra: "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: wisdom-config\n"
                "  namespace: modelmesh-serving\ndata:\n  threads: '4'\n",
            },
            author="ml-engineer",
        )

    host = RacingHost(world.bot, head=STAGING_BRANCH, race=race)
    report = world.reconcile(host=host)
    human = world.rev("main")
    staging = decision(report, "staging", "wisdom")
    [(number, result)] = [(n, r) for n, r in host.merges if n == staging.pr]
    assert not result.merged and "conflict" in result.reason and kustomization in result.reason
    # Reported: in the pass report and on the pull request; main holds only the person's work.
    assert staging.outcome != "merged"
    assert "conflict" in staging.reason and kustomization in staging.reason
    pull = world.bot.show(number)
    assert pull.state is PullState.OPEN
    assert any("conflict" in c.body for c in pull.comments)
    assert world.state("staging", "wisdom") is None
    assert b"wisdom/rollout" not in (world.show(kustomization) or b"")
    # A person cannot force it either.
    forced = world.cli("pr", "merge", str(number), "--remote", str(world.remote))
    assert forced.returncode == 1
    assert f"#{number} not merged: merge conflict with main in {kustomization}" in forced.stderr
    assert world.rev("main") == human
    # The next pass rebuilds the branch on the new main and merges it: both changes kept.
    world.tick()
    report = world.reconcile()
    again = decision(report, "staging", "wisdom")
    assert (again.outcome, again.pr) == ("merged", number)
    merged = (world.show(kustomization) or b"").decode()
    assert "wisdom/wisdom-config.yaml" in merged and "wisdom/rollout" in merged
    assert human in world.first_parents()
    assert [p.number for p in world.pulls() if p.head == STAGING_BRANCH] == [number]


# -- a person committing to the bot's branch ---------------------------------------------------


def test_a_human_commit_on_the_bot_branch_stops_its_updates(tmp_path: Path) -> None:
    world = World(tmp_path, policies={"scoring"})
    world.reconcile()
    [stage] = world.pulls()
    assert stage.head == SCORING_BRANCH and "Blue_0" in stage.title
    gateway = (world.show(f"{SCORING}/gateway.yaml", stage.head_sha) or b"").decode()
    human = world.push_to_branch(
        SCORING_BRANCH,
        "scoring: the reviewer notes the gateway was checked",
        {
            f"{SCORING}/gateway.yaml": gateway.replace(
                "name: scoring-gateway", "name: scoring-gateway  # reviewed"
            )
        },
        author="reviewer",
    )
    # New inputs would update the pull request: the person's commit is kept instead.
    bump_blue(world, "1.2.0")
    for _ in range(2):
        world.tick()
        report = world.reconcile()
        assert not report.errors
        scoring = decision(report, "prod-east", "scoring")
        assert (scoring.outcome, scoring.pr) == ("human-edited", stage.number)
        assert "reviewer@example.com" in scoring.reason and "will not overwrite" in scoring.reason
        assert world.rev(f"refs/heads/{SCORING_BRANCH}") == human
    pull = world.bot.show(stage.number)
    assert pull.state is PullState.OPEN and pull.head_sha == human
    assert "1.2.0" not in pull.title
    assert [p.number for p in world.pulls()] == [stage.number]
    notes = [c.body for c in pull.comments if c.author == "gitops-rollout"]
    assert len(notes) == 1 and "reviewer@example.com" in notes[0]
    # The real command says so too.
    done = world.cli("reconcile", *world.pass_flags())
    assert done.returncode == 0, done.stderr
    assert "human-edited" in done.stdout and "will not overwrite" in done.stdout
    assert world.rev(f"refs/heads/{SCORING_BRANCH}") == human


# -- metrics unreachable -----------------------------------------------------------------------


def test_unreachable_metrics_hold_the_analysed_rollout_and_nothing_else(tmp_path: Path) -> None:
    world = World(tmp_path, policies={"fashionmnist", "wisdom"})
    world.reconcile()
    fashion = "clusters/prod-east/default/fashionmnist/rollout/routing.yaml"
    routed = world.show(fashion)
    world.tick(timedelta(minutes=12))
    # Prometheus is down: nothing listens on its port any more.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        down = f"127.0.0.1:{probe.getsockname()[1]}"
    done = world.cli("reconcile", *world.pass_flags(), "--prometheus", f"http://{down}", "--json")
    assert done.returncode == 0, done.stderr
    rows = {(d["cluster"], d["model"]): d for d in json.loads(done.stdout)["decisions"]}
    held = rows[("prod-east", "fashionmnist")]
    assert (held["action"], held["outcome"], held["pr"]) == ("hold", "none", None)
    assert "metrics unavailable" in held["reason"] and down in held["reason"]
    assert world.show(fashion) == routed  # still 5 %: nothing advances without evidence
    # A rollout that needs no evidence goes on.
    staging = rows[("staging", "wisdom")]
    assert (staging["action"], staging["outcome"]) == ("promote", "opened")


# -- adoption, with nothing Ready to roll out --------------------------------------------------


def test_models_with_nothing_ready_are_adopted_together_and_the_pr_says_why(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    for name in ("wisdom-1", "fashionmnist-v2", "model-blue"):
        world.not_ready[("prod-east", name)] = "ImagePullBackOff"
    world.not_ready[("staging", "wisdom-1")] = "ImagePullBackOff"
    world.not_ready[("prod-east", "iris")] = "Creating"  # both of iris's namespaces
    report = world.reconcile()
    assert not report.errors and not report.problems
    assert {d.outcome for d in report.decisions} == {"merged"}
    pulls = world.pulls()
    # One pull request per cluster, however many models it adopts.
    assert [(p.head, kind_of(p), p.state) for p in pulls] == [
        ("gitops-rollout/_adopt/prod-east", "adopt", PullState.MERGED),
        ("gitops-rollout/_adopt/staging", "adopt", PullState.MERGED),
    ]
    prod = pulls[0]
    for model in ("wisdom", "fashionmnist", "iris", "scoring"):
        assert f"| {model} |" in prod.body, prod.body
    # ... and says why nothing moved.
    assert "candidate v2 (default/fashionmnist-v2) is not Ready" in prod.body
    assert "ImagePullBackOff" in prod.body
    # All traffic stays on each primary; every cluster still builds.
    assert (
        primary_only(
            world.routing_docs("prod-east", "fashionmnist"),
            "fashionmnist-v1.default.svc.cluster.local",
        )
        == []
    )
    assert primary_only(world.routing_docs("staging", "wisdom"), "wisdom-0") == []
    builds, problems = check_main_history(world, world.first_parents()[1:])
    assert not problems and builds == 2, problems
