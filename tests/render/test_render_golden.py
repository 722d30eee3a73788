"""Golden directories: every target x strategy played through every state of a rollout.

Each scenario runs the real stages (manifest scan, transitions.assess/advance, render) on a
fixture repository (rollout_sim.py). For every pass, the files the render writes (its pull
request) are compared with ``golden/<scenario>/<pass>/``, with extra, missing and different files
reported; ``_transition.txt`` there summarises the decision and lists deleted files. Run with
``UPDATE_GOLDEN=1`` to rewrite them, then review the diff against ROUTING.md before committing.

Each pass is also checked for what a cluster would reject or a reader would miss: every
rendered manifest validates against the upstream CRD schemas, ``kubectl kustomize`` builds the
cluster folder and includes the routing, the routing keeps ROUTING.md's invariants, the state
reads back from the file, and one more pass after the end changes nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from rollout_sim import (
    CLUSTER,
    MemTree,
    Scenario,
    Snapshot,
    Verdict,
    VerdictAction,
    run,
)
from schema_check import schemas

from gitops_rollout.state import HASH_KEY, PREFIX, read_stored
from gitops_rollout.targets.kserve import BRANCH_HEADER
from gitops_rollout.transitions import Situation

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def ab_verdicts(situation: Situation) -> Verdict:
    """The A/B analysis: traffic first moves toward the candidate, then the candidate wins."""
    assert situation.primary is not None and situation.candidates
    primary, candidate = situation.primary, situation.candidates[0]
    share = dict(situation.state.weights).get(candidate.key, 0)
    if share < 80:
        return Verdict(
            VerdictAction.ADVANCE,
            (f"{candidate.version} leads on user-engagement",),
            {primary.version: 20, candidate.version: 80},
        )
    return Verdict(
        VerdictAction.PROMOTE,
        (f"{candidate.version} meets every objective with the best user-engagement",),
        winner=candidate.version,
    )


SCENARIOS = [
    Scenario("modelmesh-canary", "modelmesh", "canary.yaml"),
    Scenario("modelmesh-progressive", "modelmesh", "progressive.yaml"),
    Scenario("modelmesh-mirror", "modelmesh", "mirror.yaml"),
    Scenario("modelmesh-blue-green", "modelmesh", "blue-green.yaml"),
    Scenario("modelmesh-ab", "modelmesh", "ab.yaml", verdicts=ab_verdicts),
    Scenario("kserve-canary", "kserve", "canary.yaml"),
    Scenario("kserve-progressive", "kserve", "progressive.yaml"),
    Scenario("kserve-mirror", "kserve", "mirror.yaml"),
    Scenario("kserve-blue-green", "kserve", "blue-green.yaml"),
    Scenario("kserve-ab", "kserve", "ab.yaml", verdicts=ab_verdicts),
    Scenario("kserve-native-progressive", "kserve-native", "progressive.yaml"),
    Scenario("kserve-native-blue-green", "kserve-native", "blue-green.yaml"),
    Scenario("seldon-canary", "seldon", "canary.yaml"),
    Scenario("seldon-progressive", "seldon", "progressive.yaml"),
    Scenario("seldon-mirror", "seldon", "mirror.yaml"),
    Scenario("seldon-blue-green", "seldon", "blue-green.yaml"),
    Scenario("seldon-ab", "seldon", "ab.yaml", verdicts=ab_verdicts),
    Scenario("seldon-native-progressive", "seldon-native", "progressive.yaml"),
    Scenario("seldon-native-mirror", "seldon-native", "mirror.yaml"),
    Scenario("seldon-native-blue-green", "seldon-native", "blue-green.yaml"),
    Scenario("seldon-native-ab", "seldon-native", "ab.yaml", verdicts=ab_verdicts),
    Scenario("deployment-canary", "fashionmnist", "canary.yaml"),
    Scenario("deployment-progressive", "fashionmnist", "progressive.yaml"),
    Scenario("deployment-mirror", "fashionmnist", "mirror.yaml"),
    Scenario("deployment-blue-green", "abtesting", "blue-green.yaml"),
    Scenario("deployment-ab", "fashionmnist", "ab.yaml", verdicts=ab_verdicts),
    Scenario("gateway-api-canary", "abtesting", "gateway-api-canary.yaml"),
    Scenario("gateway-api-progressive", "abtesting", "gateway-api-progressive.yaml"),
    Scenario("gateway-api-blue-green", "abtesting", "gateway-api.yaml"),
]
"""Every target x strategy the policy model allows (kserve native has no canary, mirror or A/B;
seldon native no canary; Gateway API no mirror)."""


@pytest.fixture(scope="module", params=SCENARIOS, ids=str)
def played(request: pytest.FixtureRequest) -> tuple[Scenario, list[Snapshot]]:
    scenario: Scenario = request.param
    return scenario, run(scenario)


# ---------------------------------------------------------------------------------------------
# Golden directories


def _summary(snapshot: Snapshot) -> str:
    t = snapshot.transition
    state = t.state
    lines = [
        f"action: {t.action.value}",
        f"kind: {t.kind.value}",
        f"title: {t.title}",
        f"phase: {state.phase.value}" + (f" (step {state.step})" if state.step else ""),
        f"route: {t.plan.describe() if t.plan else '-'}",
        f"auto-merge: {'yes' if t.auto_merge else 'no (needs review)'}",
        "reasons:",
        *(f"- {r}" for r in t.reasons),
        "edits:",
        *(
            f"- {e.kind.value} {e.version.key}" + (f" = {e.value}" if e.value is not None else "")
            for e in t.edits
        ),
        "deleted:",
        *(f"- {p}" for p, c in snapshot.rendered.files.items() if c is None),
    ]
    return "\n".join(lines) + "\n"


def _expected_files(snapshot: Snapshot) -> dict[str, bytes]:
    files = {p: c for p, c in snapshot.rendered.files.items() if c is not None}
    files["_transition.txt"] = _summary(snapshot).encode()
    return files


def _read_dir(root: Path) -> dict[str, bytes]:
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def compare(actual: Mapping[str, bytes], golden: Mapping[str, bytes]) -> list[str]:
    """Differences between rendered files and a golden directory, one line each."""
    out = [f"extra (not in golden): {p}" for p in sorted(set(actual) - set(golden))]
    out += [f"missing (only in golden): {p}" for p in sorted(set(golden) - set(actual))]
    out += [f"different: {p}" for p in sorted(set(actual) & set(golden)) if actual[p] != golden[p]]
    return out


def test_golden(played: tuple[Scenario, list[Snapshot]]) -> None:
    scenario, snapshots = played
    root = GOLDEN / scenario.name
    recorded = [s for s in snapshots if s.label != "steady"]
    if UPDATE:
        shutil.rmtree(root, ignore_errors=True)
        for snapshot in recorded:
            for path, content in _expected_files(snapshot).items():
                target = root / snapshot.label / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
    problems = []
    labels = {s.label for s in recorded}
    stale = sorted(p.name for p in root.iterdir() if p.name not in labels) if root.is_dir() else []
    problems += [f"{label}: golden pass no longer rendered" for label in stale]
    for snapshot in recorded:
        diffs = compare(_expected_files(snapshot), _read_dir(root / snapshot.label))
        problems += [f"{snapshot.label}: {d}" for d in diffs]
    assert not problems, "\n".join(problems) + "\n(UPDATE_GOLDEN=1 regenerates; review the diff)"


# ---------------------------------------------------------------------------------------------
# What a cluster would reject


def test_every_rendered_manifest_validates(played: tuple[Scenario, list[Snapshot]]) -> None:
    _, snapshots = played
    checker = schemas()
    problems = []
    for snapshot in snapshots:
        for path, content in snapshot.rendered.files.items():
            if content is not None and path.endswith((".yaml", ".yml")):
                problems += [
                    f"{snapshot.label} {path}: {e}" for e in checker.validate_text(content)
                ]
    assert not problems, "\n".join(problems)


def _build_targets(tree: MemTree) -> list[str]:
    top = f"clusters/{CLUSTER}"
    if f"{top}/kustomization.yaml" in tree.files:
        return [top]
    return sorted({p.rsplit("/", 1)[0] for p in tree.paths(top) if "/rollout/" in p})


def test_kustomize_builds_every_cluster_folder(played: tuple[Scenario, list[Snapshot]]) -> None:
    _, snapshots = played
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is not installed")
        pytest.skip("kubectl is not installed")
    built: set[tuple[tuple[str, bytes], ...]] = set()
    for snapshot in snapshots:
        key = tuple(sorted(snapshot.after.files.items()))
        if key in built:
            continue
        built.add(key)
        with tempfile.TemporaryDirectory() as tmp:
            snapshot.after.write_to(Path(tmp))
            output = ""
            for target in _build_targets(snapshot.after):
                result = subprocess.run(
                    [kubectl, "kustomize", str(Path(tmp) / target)],
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=60,
                )
                assert result.returncode == 0, f"{snapshot.label}: {target}: {result.stderr}"
                output += result.stdout
        assert f"{PREFIX}phase" in output, f"{snapshot.label}: the build lacks the routing object"


# ---------------------------------------------------------------------------------------------
# ROUTING.md invariants and the state round trip


def _routing(snapshot: Snapshot) -> tuple[str, list[dict[str, Any]]]:
    paths = [p for p in snapshot.rendered.files if p.endswith("/rollout/routing.yaml")]
    assert len(paths) == 1, f"{snapshot.label}: expected one routing file, got {paths}"
    content = snapshot.rendered.files[paths[0]]
    assert content is not None
    return content.decode(), [d for d in yaml.safe_load_all(content) if d]


def _check_http_rules(label: str, rules: list[dict[str, Any]], version_header: str) -> None:
    assert rules, f"{label}: a VirtualService without rules"
    for rule in rules:
        route = rule.get("route") or []
        assert route, f"{label}: rule {rule.get('name')} routes nowhere"
        weights = [d.get("weight") for d in route]
        if len(route) > 1:
            assert all(isinstance(w, int) and w > 0 for w in weights), f"{label}: {weights}"
            assert sum(weights) == 100, f"{label}: weights {weights} do not sum to 100"
        for destination in route:
            request = (destination.get("headers") or {}).get("request") or {}
            if BRANCH_HEADER in (request.get("set") or {}):
                continue  # the kserve first hop: the tagged rule names the version
            response = ((destination.get("headers") or {}).get("response") or {}).get("set")
            assert version_header in (response or {}), f"{label}: {destination} lacks the header"
        rule_set = ((rule.get("headers") or {}).get("request") or {}).get("set") or {}
        for destination in route:
            dest_set = ((destination.get("headers") or {}).get("request") or {}).get("set") or {}
            both = set(rule_set) & set(dest_set)
            assert not both, f"{label}: {both} set at rule and destination level"


def test_routing_invariants(played: tuple[Scenario, list[Snapshot]]) -> None:
    _, snapshots = played
    for snapshot in snapshots:
        transition = snapshot.transition
        policy = transition.situation.policy
        text, objects = _routing(snapshot)
        assert text.startswith("# Generated by gitops-rollout from policies/")
        first = objects[0]
        annotations = first["metadata"]["annotations"]
        assert annotations[f"{PREFIX}phase"] == transition.state.phase.value
        assert HASH_KEY in annotations
        for obj in objects:
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/managed-by"] == "gitops-rollout", obj["kind"]
            if obj is not first:
                assert HASH_KEY not in (obj["metadata"].get("annotations") or {})
            if obj["kind"] == "VirtualService":
                _check_http_rules(
                    snapshot.label, obj["spec"]["http"], policy.spec.routing.version_header
                )
            if obj["kind"] == "HTTPRoute":
                for rule in obj["spec"]["rules"]:
                    refs = rule["backendRefs"]
                    if len(refs) > 1:
                        assert sum(r["weight"] for r in refs) == 100
        stored = read_stored(text.encode())
        assert not stored.hand_edited, f"{snapshot.label}: the sealed hash does not match"
        assert stored.state == transition.state, f"{snapshot.label}: state does not read back"


def test_one_more_pass_changes_nothing(played: tuple[Scenario, list[Snapshot]]) -> None:
    _, snapshots = played
    steady = next(s for s in snapshots if s.label == "steady")
    changed = {p for p, c in steady.rendered.files.items() if steady.before.files.get(p) != c}
    assert not changed, f"a pass after the rollout ended still changes {sorted(changed)}"
