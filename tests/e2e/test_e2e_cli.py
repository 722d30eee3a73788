"""``validate`` and ``plan``, as a user or a CI job runs them on the example repository."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_world import CLI, EXAMPLE, T0, World, git, iso, kubectl

from gitops_rollout.gitops.hosts.base import PullState


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={
            "PATH": str(CLI.parent) + ":/usr/bin:/bin",
            "HOME": str(cwd),
            "GITOPS_ROLLOUT_CACHE": str(cwd / "cache"),
            "COLUMNS": "400",
            "NO_COLOR": "1",
        },
        timeout=120,
        check=False,
    )


def example_copy(root: Path) -> Path:
    copy = root / "example"
    for folder in ("policies", "clusters"):
        shutil.copytree(EXAMPLE / folder, copy / folder)
    return copy


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_validate_accepts_the_example(tmp_path: Path) -> None:
    done = run("validate", "--repo", str(EXAMPLE), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    policies = len(list((EXAMPLE / "policies").glob("*.yaml")))
    assert done.stdout.strip() == f"{policies} policies valid"
    assert done.stderr == ""


def test_status_in_a_clone_of_another_checkout_shows_no_pull_request_numbers(
    tmp_path: Path,
) -> None:
    """Its origin is a checkout, not the local host's bare repository: `status` shows the
    rollouts without PR numbers, as for a forge's URL. Named as the remote, it is an error."""
    source = example_copy(tmp_path)
    git("init", "-q", str(source))
    git("-C", str(source), "add", "-A")
    git("-C", str(source), "-c", "user.name=A", "-c", "user.email=a@x", "commit", "-qm", "x")
    clone = tmp_path / "clone"
    git("clone", "-q", str(source), str(clone))
    inventory = str(EXAMPLE / "examples" / "inventory")
    done = run("status", "--inventory", inventory, "--json", cwd=clone)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert rows and all(row["pr"] == "" for row in rows)
    named = run("status", "--inventory", inventory, "--remote", str(source), cwd=clone)
    assert named.returncode != 0
    assert f"{source} is not a bare Git repository" in named.stderr


def _weight_above_100(root: Path) -> tuple[str, str]:
    policy = root / "policies" / "fashionmnist.yaml"
    policy.write_text(policy.read_text().replace("{weight: 60,", "{weight: 160,"))
    return (
        f"policies/fashionmnist.yaml:{line_of(policy, 'weight: 160')}: "
        "spec.strategy.steps[5].weight: 160 is above 100 (fix: use a percentage from 0 to 100)",
        "spec.strategy.steps[5].weight",
    )


def _unknown_cluster(root: Path) -> tuple[str, str]:
    policy = root / "policies" / "wisdom.yaml"
    policy.write_text(policy.read_text().replace("- name: staging", "- name: stagng"))
    return (
        f"policies/wisdom.yaml:{line_of(policy, 'stagng')}: spec.clusters[0].name: cluster "
        "'stagng' has no folder clusters/stagng/ (clusters found: prod-east, staging) "
        "(fix: correct the name, or add the folder clusters/stagng/)",
        "spec.clusters[0].name",
    )


def _manifest_not_yaml(root: Path) -> tuple[str, str]:
    broken = root / "clusters/prod-east/default/fashionmnist/broken.yaml"
    broken.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x\n")
    return (
        "clusters/prod-east/default/fashionmnist/broken.yaml:3: invalid YAML: a { mapping is "
        "never closed (fix: close it with '}', and separate its entries with ',')",
        "",
    )


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(_weight_above_100, id="step-weight-above-100"),
        pytest.param(_unknown_cluster, id="policy-names-a-missing-cluster"),
        pytest.param(_manifest_not_yaml, id="manifest-is-not-yaml"),
    ],
)
def test_validate_rejects_a_broken_copy_of_the_example(
    tmp_path: Path, breakage: Callable[[Path], tuple[str, str]]
) -> None:
    copy = example_copy(tmp_path)
    message, field_path = breakage(copy)
    done = run("validate", "--repo", str(copy), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == message
    assert done.stderr.splitlines()[-1].startswith("1 problem(s);")
    as_json = run("validate", "--repo", str(copy), "--json", cwd=tmp_path)
    assert as_json.returncode == 1
    answer = json.loads(as_json.stdout)
    assert answer["valid"] is False
    [problem] = answer["problems"]
    assert message.startswith(f"{problem['file']}:{problem['line']}: ")
    assert problem["path"] == field_path and problem["fix"]


def test_plan_writes_the_desired_files_and_nothing_to_git(tmp_path: Path) -> None:
    world = World(tmp_path)
    checkout = world.pull_human()
    world.snapshot_inventory()
    head = git("-C", str(checkout), "rev-parse", "HEAD")
    remote = world.snapshot()
    output = tmp_path / "desired"
    done = run(
        "plan",
        "--repo",
        str(checkout),
        "--inventory",
        str(world.inventory_dir),
        "--now",
        iso(T0),
        "--output",
        str(output),
        "--json",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    planned = {(d["cluster"], d["model"]): (d["action"], d["outcome"]) for d in answer["decisions"]}
    assert planned == {
        ("prod-east", "fashionmnist"): ("start", "planned"),
        ("prod-east", "iris"): ("start", "planned"),
        ("prod-east", "scoring"): ("start", "planned"),
        ("staging", "wisdom"): ("start", "planned"),
        ("prod-east", "wisdom"): ("none", "planned"),
    }
    # Nothing written to Git: the checkout and the remote are as they were.
    assert git("-C", str(checkout), "rev-parse", "HEAD") == head
    assert git("-C", str(checkout), "status", "--porcelain") == ""
    assert world.snapshot() == remote
    written = {str(p.relative_to(output)) for p in output.rglob("*") if p.is_file()}
    routing = {p for p in written if p.endswith("/rollout/routing.yaml")}
    assert routing == {
        "clusters/prod-east/default/fashionmnist/rollout/routing.yaml",
        "clusters/prod-east/default/iris/rollout/routing.yaml",
        "clusters/prod-east/abtesting/scoring/rollout/routing.yaml",
        "clusters/prod-east/modelmesh-serving/wisdom/rollout/routing.yaml",
        "clusters/staging/modelmesh-serving/wisdom/rollout/routing.yaml",
    }
    # The desired files are what the reconciler then brings to main, every PR merged.
    world.reconcile()
    world.reconcile()
    for pull in world.pulls(PullState.OPEN):
        assert world.reviewer.merge(pull.number, message=pull.title).merged
    for path in sorted(written):
        assert (output / path).read_bytes() == world.show(path), path
    # Laid over the checkout, they build.
    overlay = tmp_path / "overlay"
    shutil.copytree(checkout / "clusters", overlay / "clusters")
    shutil.copytree(output / "clusters", overlay / "clusters", dirs_exist_ok=True)
    for cluster in ("prod-east", "staging"):
        built = subprocess.run(
            [kubectl(), "kustomize", str(overlay / "clusters" / cluster)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert built.returncode == 0, built.stderr
        assert built.stdout.count("gitops-rollout.dev/phase") == len(
            [p for p in routing if p.startswith(f"clusters/{cluster}/")]
        )
