"""The scale benchmark's quick run (500 rollouts) is correct: every rollout got its routing, the
first pass leaves nothing to settle, the no-op pass commits nothing and decides as the pass
before, and a 1 % change moves refs. Speed is the full benchmark's business (bench/scale.py),
not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("scale") / "quick.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "floor: git add -A && git commit" in done.stdout  # the table was printed
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_every_rollout_got_its_routing(quick: dict[str, Any]) -> None:
    checks = quick["checks"]
    assert quick["rollouts"] == 500
    assert checks["b_missing_routing"] == []
    assert checks["d_missing_routing"] == []
    assert checks["plan_routing_files"] == 500


def test_the_first_pass_leaves_nothing_to_settle(quick: dict[str, Any]) -> None:
    # Its pull requests list their models apart in each namespace's kustomization.yaml, so
    # merging one does not make the next conflict: the pass after it changes nothing.
    checks = quick["checks"]
    assert checks["settled"]
    assert checks["settling_passes"] == 1


def test_the_no_op_pass_commits_nothing(quick: dict[str, Any]) -> None:
    checks = quick["checks"]
    assert checks["settled"]
    assert checks["c_changed_refs"] == []
    assert set(checks["c_outcomes"]) <= {"none", "unchanged"}
    assert checks["c_same_decisions_as_previous"]


def test_a_one_percent_change_is_proposed(quick: dict[str, Any]) -> None:
    checks = quick["checks"]
    assert checks["d_moved_refs"] > 0
    assert checks["d_candidates_without_pr"] == []
    assert all(quick["correct"].values()), quick["correct"]


def test_every_measurement_ran_in_its_own_process(quick: dict[str, Any]) -> None:
    for m in quick["measurements"]:
        if m["name"].startswith("("):
            assert m["exit_code"] in (0, 1), m
            assert m["peak_mb"] > 0
