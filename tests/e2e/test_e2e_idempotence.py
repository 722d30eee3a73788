"""Idempotence and crash recovery on the example repository.

The same inputs twice change nothing: no commit on any ref, no new pull request, no pull request
touched. A reconciler killed (SIGKILL, through tests/e2e/killer.py) between building its commits
and pushing them, between the push and recording it, before opening a pull request or before
merging one, and then started again, ends where an uninterrupted reconciler ends: the same files
on main, the same pull requests, none twice, and no bot branch without its pull request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from e2e_world import PASS_EVERY, World, git, kind_of

from gitops_rollout.composition import SNAPSHOT_CACHE
from gitops_rollout.gitops.hosts.base import PullState
from gitops_rollout.inventory.snapshot import SnapshotCache

KILLER = Path(__file__).with_name("killer.py")


def outcomes(report: Any) -> Counter[str]:
    return Counter(d.outcome for d in report.decisions)


def test_the_same_inputs_twice_change_nothing(tmp_path: Path) -> None:
    world = World(tmp_path)
    first = world.reconcile()
    assert outcomes(first)["merged"] >= 3 and outcomes(first)["opened"] >= 1
    world.reconcile()  # the first pass's merges moved main: settle them
    before = world.snapshot()
    again = world.reconcile()
    assert not again.errors and not again.problems
    assert set(outcomes(again)) <= {"none", "unchanged"}, again.decisions
    assert world.snapshot() == before
    # The real command, later, with the same inputs: still nothing (no body rewritten either).
    for delay in (timedelta(seconds=30), timedelta(minutes=1)):
        world.tick(delay)
        done = world.cli("reconcile", *world.pass_flags())
        assert done.returncode == 0, done.stderr
        assert world.snapshot() == before


def test_the_command_keeps_the_readiness_it_parsed_beside_its_clone(tmp_path: Path) -> None:
    """`reconcile` keeps what it parsed from --inventory files that read the same twice in a
    row beside its clone; a pass over the same files again reads it back and writes nothing."""
    world = World(tmp_path)
    flags = world.pass_flags()
    for _ in range(2):
        done = world.cli("reconcile", *flags)
        assert done.returncode == 0, done.stderr
    [kept] = world.cache.glob(f"*{SNAPSHOT_CACHE}")
    read = {(path, cluster) for path, cluster, _ in SnapshotCache.read(kept).kept}
    assert read == {(str(p), p.stem) for p in world.inventory_dir.iterdir()}
    written = kept.stat()

    again = world.cli("reconcile", *flags)

    assert again.returncode == 0, again.stderr
    assert (kept.stat().st_ino, kept.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)


def test_waiting_for_a_person_is_not_an_update(tmp_path: Path) -> None:
    """Pull requests a person must merge stay exactly as they are, however long they wait."""
    world = World(tmp_path, policies={"scoring", "wisdom"})
    world.reconcile()
    world.tick(timedelta(minutes=12))  # the staging canary ran its 10 minutes
    world.reconcile()
    opened = world.pulls(PullState.OPEN)
    assert [(kind_of(p), p.head.split("/")[-1]) for p in opened] == [
        ("step", "scoring"),
        ("promote", "wisdom"),
    ]
    before = world.snapshot()
    for hours in (1, 6, 30):
        world.now += timedelta(hours=hours)
        report = world.reconcile()
        waiting = [d for d in report.decisions if d.pr in {p.number for p in opened}]
        assert [d.outcome for d in waiting] == ["unchanged", "unchanged"]
        assert set(outcomes(report)) <= {"none", "unchanged"}
        assert world.snapshot() == before


# -- killed mid-pass ----------------------------------------------------------------------------


def killed_pass(world: World, point: str, nth: int) -> subprocess.CompletedProcess[str]:
    """`gitops-rollout reconcile` SIGKILLed at `point` (the `nth` time it is reached)."""
    env = {**os.environ, "E2E_KILL_AT": point, "E2E_KILL_NTH": str(nth), "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, str(KILLER), "reconcile", *world.pass_flags()],
        capture_output=True,
        text=True,
        env=env,
        cwd=world.human,
        timeout=120,
        check=False,
    )


def outcome_of(world: World) -> dict[str, Any]:
    """What a user sees: files on main, pull requests, and every bot branch's files."""
    pulls = world.pulls()
    branches = git(
        "--git-dir",
        str(world.remote),
        "for-each-ref",
        "--format=%(refname:short)",
        "refs/heads/gitops-rollout/",
    ).split()
    waiting = {p.head for p in pulls if p.state is PullState.OPEN}
    return {
        "main": world.rev("main^{tree}"),
        "pulls": [(p.number, p.head, kind_of(p), p.title, p.state) for p in pulls],
        "branches": set(branches),
        "proposed": {b: world.rev(f"{b}^{{tree}}") for b in branches if b in waiting},
    }


FIRST_PASS_BRANCHES = 5
"""Bot branches the example's first pass pushes: four rollouts and prod-east's adoption."""

KILL_POINTS = [
    # (where, which time, bot branches on the remote after the kill, pull requests by then)
    pytest.param("commit", 1, 0, 0, id="after-commit-before-push"),
    pytest.param("push", 1, FIRST_PASS_BRANCHES, 0, id="after-push-before-recording-it"),
    pytest.param("pull-request", 1, FIRST_PASS_BRANCHES, 0, id="before-any-pull-request"),
    # The batch of pull requests is one transaction: killed part-way, it recorded none.
    pytest.param("pull-request", 3, FIRST_PASS_BRANCHES, 0, id="between-two-pull-requests"),
    pytest.param(
        "merge", 1, FIRST_PASS_BRANCHES, FIRST_PASS_BRANCHES, id="after-pull-requests-before-merge"
    ),
    pytest.param(
        "merged", 1, FIRST_PASS_BRANCHES, FIRST_PASS_BRANCHES, id="after-merge-before-recording-it"
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("point", "nth", "branches", "pulls"), KILL_POINTS)
def test_a_killed_pass_rerun_ends_where_an_uninterrupted_one_ends(
    tmp_path: Path, point: str, nth: int, branches: int, pulls: int
) -> None:
    control = World(tmp_path / "control")
    world = World(tmp_path / "killed")
    killed = killed_pass(world, point, nth)
    assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr)
    assert len(outcome_of(world)["branches"]) == branches
    assert len(world.pulls()) == pulls
    # Restarted: the next passes, as in a world where nothing was killed.
    for w in (control, world):
        w.reconcile()
        w.tick(PASS_EVERY)
        report = w.reconcile()
        assert not report.errors, report.errors
    assert outcome_of(world) == outcome_of(control)
    after = world.pulls()
    # No pull request twice, no bot branch left without one.
    heads = Counter(p.head for p in after if p.state is PullState.OPEN)
    assert all(n == 1 for n in heads.values()), heads
    assert outcome_of(world)["branches"] <= {p.head for p in after}
