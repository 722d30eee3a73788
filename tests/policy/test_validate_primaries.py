"""`validate` reports two versions labelled primary before a pass would hold the rollout, and
stays quiet once the rollout's recorded state names the primary."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from gitops_rollout.cli import main
from gitops_rollout.state import ROUTING_FILE, RolloutState, VersionMark, rollout_dir

from .repos import DEPLOYMENT, MANIFESTS, POLICY, POLICY_FILE, SERVICE, write_repo

PRIMARY_LABEL = '    gitops-rollout.dev/watch: "true"\n'
V2_FILE = "clusters/prod/serving/demo/demo-v2.yaml"


def _labelled_primary(text: str) -> str:
    return text.replace(PRIMARY_LABEL, PRIMARY_LABEL + "    gitops-rollout.dev/role: primary\n")


def _two_primaries(root: Path) -> None:
    v1 = _labelled_primary(DEPLOYMENT)
    v2 = (v1 + "---\n" + SERVICE).replace("demo-v1", "demo-v2").replace("v1", "v2")
    write_repo(root, {**MANIFESTS, POLICY_FILE: POLICY, V2_FILE: v2})
    first = root / next(iter(MANIFESTS))
    first.write_text(_labelled_primary(first.read_text()))


def _validate(root: Path) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(main, ["validate", "--repo", str(root), "--json"])
    return result.exit_code, json.loads(result.output)


def test_two_versions_labelled_primary_fail_validation_with_the_fix(tmp_path: Path) -> None:
    _two_primaries(tmp_path)

    code, report = _validate(tmp_path)

    assert code == 1
    assert report["problems"] == [
        {
            "file": POLICY_FILE,
            "line": 15,
            "path": "spec.clusters[0].name",
            "reason": "2 versions of model 'demo' in prod are labelled primary (v1, v2, in "
            f"{next(iter(MANIFESTS))}, {V2_FILE}) and no rollout state names one",
            "fix": "label only the version serving now gitops-rollout.dev/role: primary, the "
            "others candidate",
        }
    ]


def test_a_recorded_primary_settles_it(tmp_path: Path) -> None:
    _two_primaries(tmp_path)
    state = RolloutState(primary=VersionMark("serving/demo-v1", "v1"))
    routing = tmp_path / rollout_dir(cluster="prod", namespace="serving", model="demo")
    routing.mkdir(parents=True)
    annotations = "".join(f"    {k}: '{v}'\n" for k, v in state.annotations().items())
    (routing / ROUTING_FILE).write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\n  annotations:\n" + annotations
    )

    code, report = _validate(tmp_path)

    assert report["problems"] == [], report
    assert code == 0
