"""Scenario 1 (wisdom: canary by header on ModelMesh, staging then prod-east) on every host.

The same reconcile passes run against the local host and, through the real client libraries,
against the fake GitHub, GitLab and Gitea, each in front of a real bare repository that git
reaches over smart HTTP with the bot's token. A reviewer approves promotions by merging them
through the host's API under their own token. Every test also checks that no token leaked
(conftest). The failure tests need an HTTP API to fail, so they run on the three forges.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from gitops_rollout import reconcile
from gitops_rollout.gitops.hosts import git_credentials
from gitops_rollout.gitops.repo import Workspace, branch_name

from .world import BOT_TOKEN, CLUSTERS, FORGES, NAMESPACE, REVIEWER, T0, World

STAGING = branch_name(cluster="staging", namespace=NAMESPACE, model="wisdom")
ROUTING = "clusters/{}/modelmesh-serving/wisdom/rollout/routing.yaml"
CANDIDATE = "clusters/{}/modelmesh-serving/wisdom/wisdom-1.yaml"
PRIMARY = "clusters/{}/modelmesh-serving/wisdom/wisdom-0.yaml"
ATTEMPTS = 5
"""The default HttpPolicy's tries per request: failing this many times fails the call."""

Until = Callable[[World], bool]

pytestmark = pytest.mark.slow


def one_open_pull_per_branch(world: World) -> None:
    heads = Counter(p.head for p in world.open_pulls())
    assert all(n == 1 for n in heads.values()), f"duplicate open pull requests: {heads}"


def drive(
    world: World, until: Until, *, approve: bool = True, max_passes: int = 25
) -> list[reconcile.PassReport]:
    """Reconcile passes until `until(world)` holds. A reviewer merges each promotion that has
    been open for a whole pass, as a person would after reading it."""
    reports = []
    seen_open: set[int] = set()
    for _ in range(max_passes):
        report = world.reconcile()
        reports.append(report)
        assert not report.errors, report.errors
        one_open_pull_per_branch(world)
        if until(world):
            return reports
        for pull in world.open_pulls():
            if approve and pull.kind == "promote" and pull.number in seen_open:
                result = world.reviewer().merge(
                    pull.number, message=f"{pull.title} (#{pull.number})"
                )
                assert result.merged, result.reason
            seen_open.add(pull.number)
    summary = [(p.number, p.head, p.kind, p.state, p.merged_by) for p in world.pulls()]
    raise AssertionError(f"not reached in {max_passes} passes; pull requests: {summary}")


def promotion_open(branch: str) -> Until:
    return lambda w: any(p.head == branch and p.kind == "promote" for p in w.open_pulls())


def candidate_gone(cluster: str) -> Until:
    return lambda w: CANDIDATE.format(cluster) not in w.files()


def start(world: World, *, until: Until) -> None:
    """Adopt both clusters, add the candidate (not Ready on its first pass), drive on."""
    world.reconcile()
    world.add_candidate()
    world.not_ready = {(c, "wisdom-1") for c in CLUSTERS}
    report = world.reconcile()
    world.not_ready = set()
    staging = next(d for d in report.decisions if d.cluster == "staging")
    assert "not Ready" in staging.reason and staging.pr is None
    drive(world, until)


# -- the scenario, on every host -------------------------------------------------------------


def test_wisdom_canary_staging_then_prod_east(world: World, git_argv: Path) -> None:
    world.reconcile()
    adopted = world.pulls()
    assert sorted(p.kind for p in adopted) == ["adopt", "adopt"]
    assert all(p.state == "merged" and p.merged_by == world.bot_login for p in adopted)
    assert all(ROUTING.format(c) in world.files() for c in CLUSTERS)

    world.add_candidate()
    world.not_ready = {(c, "wisdom-1") for c in CLUSTERS}
    world.reconcile()
    assert [p.kind for p in world.pulls()] == ["adopt", "adopt"], "nothing moves until Ready"
    world.not_ready = set()

    drive(world, promotion_open(STAGING), approve=False)
    canary = world.files()[ROUTING.format("staging")]
    assert "traffic:" in canary and "exact: test" in canary and "wisdom-1" in canary
    assert "wisdom-1" not in world.files()[ROUTING.format("prod-east")], "prod-east waits"
    [promotion] = [p for p in world.open_pulls() if p.kind == "promote"]
    world.reconcile()
    world.reconcile()
    [still] = [p for p in world.open_pulls() if p.kind == "promote"]
    assert still == promotion, "the bot never merges a promotion, nor touches it while it waits"

    drive(world, candidate_gone("staging"))
    drive(world, candidate_gone("prod-east"))
    files = world.files()
    for cluster in CLUSTERS:
        primary = files[PRIMARY.format(cluster)]
        assert "app.kubernetes.io/version: v1" in primary
        assert "mnist-svm-v1.joblib" in primary
        routing = files[ROUTING.format(cluster)].splitlines()
        # Nothing routes to the removed object; the recorded reason names it.
        assert [line for line in routing if "wisdom-1" in line] == [
            "    gitops-rollout.dev/reason: v1 promoted; wisdom-1 (v1) removed"
        ]

    world.delete_policy()
    drive(world, lambda w: not any("/rollout/" in path for path in w.files()))

    pulls = world.pulls()
    steps = [(p.head.split("/")[1], p.kind, p.state) for p in pulls]
    assert steps[:10] == [
        ("_adopt", "adopt", "merged"),
        ("_adopt", "adopt", "merged"),
        ("staging", "step", "merged"),
        ("staging", "promote", "merged"),
        ("staging", "finalize", "merged"),
        ("staging", "cleanup", "merged"),
        ("prod-east", "step", "merged"),
        ("prod-east", "promote", "merged"),
        ("prod-east", "finalize", "merged"),
        ("prod-east", "cleanup", "merged"),
    ]
    # The policy deleted: its routing goes, one PR per rollout.
    assert sorted(steps[10:]) == [
        ("prod-east", "cleanup", "merged"),
        ("staging", "cleanup", "merged"),
    ]
    for p in pulls:
        expected = REVIEWER if p.kind == "promote" else world.bot_login
        assert p.merged_by == expected, f"#{p.number} ({p.kind}) merged by {p.merged_by}"
        assert {"gitops-rollout", f"rollout:{p.kind}"} <= set(p.labels)
        assert '<!-- gitops-rollout: {"' in p.body
        assert p.comments == ()
    # Labels and reviewers come from the policy.
    for p in pulls[2:10]:
        assert "ml-platform" in p.labels and p.reviewers == ("alice",)
    if world.fake is not None:
        # git really went over HTTP to the fake, authenticated by the header.
        pushes = [r for r in world.fake.requests if r.path.endswith("/git-receive-pack")]
        assert pushes and all(r.headers["authorization"].startswith("Basic ") for r in pushes)
        assert f"push --porcelain {world.remote}" in git_argv.read_text()


def test_closing_a_pull_request_is_a_veto(world: World) -> None:
    start(world, until=promotion_open(STAGING))
    [promotion] = [p for p in world.open_pulls() if p.kind == "promote"]

    world.reviewer().close(promotion.number, comment="not this week")
    reports = [world.reconcile() for _ in range(3)]

    assert [p.number for p in world.pulls() if p.head == STAGING][-1] == promotion.number
    assert world.open_pulls() == []
    for report in reports:
        [staging] = [d for d in report.decisions if d.cluster == "staging"]
        assert (staging.outcome, staging.pr) == ("vetoed", promotion.number)
        assert "closed unmerged (a veto)" in staging.reason
    assert "wisdom-1" in world.files()[ROUTING.format("staging")], "nothing was promoted"


def test_a_pull_request_the_bot_closed_is_no_veto(world: World) -> None:
    """A candidate that stops being Ready while its first step waits for a human: the bot
    closes the PR as no longer needed, and proposes it again once the candidate is back."""
    world.human_change(
        "wisdom: a human merges steps",
        lambda root: (root / "policies" / "wisdom.yaml").write_text(
            (root / "policies" / "wisdom.yaml")
            .read_text()
            .replace("autoMerge: [adopt, step,", "autoMerge: [adopt,")
        ),
    )
    world.reconcile()
    world.add_candidate()
    world.reconcile()
    [first] = [p for p in world.open_pulls() if p.head == STAGING]

    world.not_ready = {("staging", "wisdom-1")}
    world.reconcile()
    world.not_ready = set()
    report = world.reconcile()

    [staging] = [d for d in report.decisions if d.cluster == "staging"]
    assert staging.outcome == "opened" and staging.pr != first.number
    states = {p.number: p.state for p in world.pulls() if p.head == STAGING}
    assert states == {first.number: "closed", staging.pr: "open"}


def test_a_human_push_to_the_bot_branch_is_reported_once(world: World) -> None:
    start(world, until=promotion_open(STAGING))
    [promotion] = [p for p in world.open_pulls() if p.kind == "promote"]
    path = PRIMARY.format("staging")
    theirs = world.human_push_to(STAGING, path, "# reviewed by hand\n", author="alice")

    reports = [world.reconcile() for _ in range(3)]

    for report in reports:
        [staging] = [d for d in report.decisions if d.cluster == "staging"]
        assert (staging.outcome, staging.pr) == ("human-edited", promotion.number)
        assert "alice@example.com" in staging.reason
    assert world.head(STAGING) == theirs, "the human's commit is never overwritten"
    [pull] = [p for p in world.pulls() if p.number == promotion.number]
    notes = [c for c in pull.comments if "stopped updating" in c]
    assert len(notes) == 1, pull.comments
    assert "alice@example.com" in notes[0] and theirs[:12] in notes[0]
    assert pull.state == "open" and len(world.open_pulls()) == 1

    # The reviewer takes the human's version; the rollout carries on from main.
    result = world.reviewer().merge(promotion.number, message="promote, tuned by hand")
    assert result.merged
    drive(world, candidate_gone("staging"))


def test_a_hold_is_a_comment_on_the_open_pull_request_once(world: World) -> None:
    """With steps left to a human, a candidate that stops being Ready while its promotion waits
    turns that PR into the hold (routing back to the primary) and says so once."""
    world.human_change(
        "wisdom: a human merges steps and promotions",
        lambda root: (root / "policies" / "wisdom.yaml").write_text(
            (root / "policies" / "wisdom.yaml")
            .read_text()
            .replace("autoMerge: [adopt, step,", "autoMerge: [adopt,")
        ),
    )
    world.reconcile()
    world.add_candidate()
    world.reconcile()
    [step] = world.open_pulls()
    assert step.kind == "step"
    assert world.reviewer().merge(step.number, message="canary").merged
    drive(world, promotion_open(STAGING), approve=False)
    [promotion] = world.open_pulls()

    world.not_ready = {("staging", "wisdom-1")}
    reports = [world.reconcile() for _ in range(3)]

    [pull] = world.open_pulls()
    assert pull.number == promotion.number, "a hold updates the open PR, never opens another"
    holds = [c for c in pull.comments if "<!-- gitops-rollout-hold: " in c]
    assert len(holds) == 1, pull.comments
    assert "`staging/wisdom`: candidate v1 is not Ready" in holds[0]
    for report in reports:
        [staging] = [d for d in report.decisions if d.cluster == "staging"]
        assert staging.action == "hold" and staging.pr == promotion.number

    world.not_ready = set()
    world.reconcile()
    [pull] = world.open_pulls()
    assert pull.number == promotion.number and pull.kind == "promote"


def test_a_restart_with_a_fresh_clone_adopts_the_open_pull_request(
    world: World, tmp_path: Path
) -> None:
    start(world, until=promotion_open(STAGING))
    [promotion] = world.open_pulls()

    report = world.reconcile(cache=tmp_path / "new-cache")

    [staging] = [d for d in report.decisions if d.cluster == "staging"]
    assert (staging.outcome, staging.pr) == ("unchanged", promotion.number)
    assert world.open_pulls() == [promotion]


# -- failures of the forges' APIs --------------------------------------------------------------

forges = pytest.mark.parametrize("world", FORGES, indirect=True)

CREATE = {"github": r"/pulls$", "gitlab": r"/merge_requests$", "gitea": r"/pulls$"}
LIST = CREATE


@forges
def test_a_502_on_open_after_the_push_leaves_no_orphan_branch(world: World) -> None:
    world.reconcile()
    world.add_candidate()
    assert world.fake is not None
    world.fake.fail(
        "POST", CREATE[world.kind], 502, body={"message": "Bad Gateway"}, times=ATTEMPTS
    )

    failed = world.reconcile()

    assert "502" in " ".join(failed.errors["host"])
    assert world.head(STAGING) is not None, "the branch was pushed"
    assert [p for p in world.pulls() if p.head == STAGING] == []

    healed = world.reconcile()

    assert not healed.errors
    [pull] = [p for p in world.pulls() if p.head == STAGING]
    assert (pull.kind, pull.state) == ("step", "merged")
    assert "wisdom-1" in world.files()[ROUTING.format("staging")]


@forges
def test_a_single_502_is_retried_within_the_pass(world: World) -> None:
    world.reconcile()
    world.add_candidate()
    assert world.fake is not None
    world.fake.fail("POST", CREATE[world.kind], 502, body={"message": "Bad Gateway"})

    report = world.reconcile()

    assert not report.errors
    assert world.sleeps.waits == [0.75]
    [pull] = [p for p in world.pulls() if p.head == STAGING]
    assert pull.state == "merged"


@forges
def test_rate_limited_waits_then_succeeds(world: World) -> None:
    assert world.fake is not None
    world.fake.fail(
        "GET",
        LIST[world.kind],
        429,
        body={"message": "Too Many Requests"},
        headers={"Retry-After": "7"},
    )

    report = world.reconcile()

    assert not report.errors
    assert world.sleeps.waits == [7.0]
    assert [p.kind for p in world.pulls()] == ["adopt", "adopt"]


@forges
def test_rate_limited_past_the_pass_fails_it_and_the_next_pass_catches_up(world: World) -> None:
    assert world.fake is not None
    world.fake.fail(
        "GET",
        LIST[world.kind],
        429,
        body={"message": "Too Many Requests"},
        headers={"Retry-After": "3600"},
    )

    failed = world.reconcile()

    assert "rate limited for another 3600 s" in " ".join(failed.errors["host"])
    assert world.pulls() == []
    assert not world.reconcile().errors
    assert [p.state for p in world.pulls()] == ["merged", "merged"]


@forges
def test_an_already_open_pull_request_is_adopted_not_duplicated(world: World) -> None:
    world.reconcile()
    world.add_candidate()
    world.store.racing_heads.add(STAGING)

    report = world.reconcile()

    [staging] = [d for d in report.decisions if d.cluster == "staging"]
    [pull] = [p for p in world.pulls() if p.head == STAGING]
    assert staging.pr == pull.number and pull.state == "merged"
    assert pull.title == "rollout(wisdom): staging canary: matched requests to v1"
    assert "<!-- gitops-rollout: " in pull.body


# -- the command line -------------------------------------------------------------------------


@forges
def test_reconcile_command_with_a_token_from_the_environment(world: World) -> None:
    env = {
        **os.environ,
        f"GITOPS_ROLLOUT_{world.kind.upper()}_TOKEN": BOT_TOKEN,
        "GITOPS_ROLLOUT_HOST": world.kind,
        "GITOPS_ROLLOUT_REMOTE": world.remote,
    }
    assert world.fake is not None
    world.write_inventory()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gitops_rollout",
            "-vv",
            "reconcile",
            "--api-url",
            world.fake.url,
            "--cache-dir",
            str(world.cache),
            "--inventory",
            str(world.inventory),
            "--now",
            T0.isoformat(),
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=world.root,
        timeout=120,
    )

    world.outputs += [done.stdout, done.stderr]  # scanned for the token (conftest)
    assert done.returncode == 0, done.stderr
    assert [p.state for p in world.pulls()] == ["merged", "merged"]
    assert [d["outcome"] for d in json.loads(done.stdout)["decisions"]] == ["merged", "merged"]
    assert f"pushed 2 of 2 bot branch(es) to {world.remote}" in done.stderr


def test_an_ssh_remote_gets_no_token_and_uses_git_ssh_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """git over SSH is left to ssh: keys, ssh-agent and GIT_SSH_COMMAND from the environment."""
    world = World(tmp_path / "world", "local")
    remote = "ssh://git@forge.invalid/acme/gitops.git"
    assert git_credentials(world.host(), remote) is None
    served = world.bare.parent.parent
    fake_ssh = tmp_path / "fake-ssh"
    # git runs: fake-ssh git@forge.invalid "git-upload-pack '/acme/gitops.git'"
    fake_ssh.write_text(
        "#!/bin/sh\n"
        "for last; do :; done\n"
        f'cd "{served}" && exec sh -c "$(printf %s "$last" | sed "s#\'/#\'#")"\n'
    )
    fake_ssh.chmod(0o755)
    monkeypatch.setenv("GIT_SSH_COMMAND", str(fake_ssh))
    monkeypatch.setenv("GIT_SSH_VARIANT", "simple")

    with Workspace.open(remote, cache_dir=tmp_path / "cache") as ws:
        assert ws.fetch() == world.head("main")


@forges
def test_the_bot_merges_only_when_the_host_says_checks_passed(world: World) -> None:
    world.reconcile()
    world.add_candidate()
    world.store.new_checks = "pending"

    reports = [world.reconcile() for _ in range(2)]

    [pull] = world.open_pulls()
    assert pull.kind == "step"
    assert [d.outcome for r in reports for d in r.decisions if d.cluster == "staging"] == [
        "opened",
        "unchanged",
    ]
    assert world.store.pulls[pull.number].auto_merge, "queued on the host, not merged"
    assert "wisdom-1" not in world.files()[ROUTING.format("staging")]

    [merged] = world.store.finish_checks("success")  # the host merges the queued PR

    assert merged.number == pull.number
    world.reconcile()
    assert "wisdom-1" in world.files()[ROUTING.format("staging")]
    assert world.open_pulls() == []


@forges
def test_failed_checks_keep_the_pull_request_open(world: World) -> None:
    world.reconcile()
    world.add_candidate()
    world.store.new_checks = "failure"

    for _ in range(2):
        world.reconcile()

    [pull] = world.open_pulls()
    assert not world.store.pulls[pull.number].auto_merge
    assert "wisdom-1" not in world.files()[ROUTING.format("staging")]
