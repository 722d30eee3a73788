"""The reconciler's own deployment: least-privilege RBAC, sharding wiring, schemas, image."""

from __future__ import annotations

import copy
import functools
import importlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gitops_rollout.inventory.sync import APP_NAME
from gitops_rollout.lease import SHARDS_ENV

from .schemas import schemas

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = ("prod-east", "staging")
READ_VERBS = frozenset({"get", "list", "watch"})
LEASE_VERBS = frozenset({"get", "create", "update"})
READS = frozenset(
    {
        ("serving.kserve.io", "inferenceservices"),
        ("machinelearning.seldon.io", "seldondeployments"),
        ("apps", "deployments"),
        ("", "services"),
        ("networking.istio.io", "virtualservices"),
        ("argoproj.io", "applications"),
        ("kustomize.toolkit.fluxcd.io", "kustomizations"),
    }
)
"""Exactly the (API group, resource) pairs the reconciler lists, watches or gets."""


def build(folder: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` output as objects (a fresh copy; the build runs once per folder)."""
    return copy.deepcopy(_build(str(folder)))


@functools.cache
def _build(folder: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is required in CI")
        pytest.skip("kubectl not installed")
    result = subprocess.run(
        [kubectl, "kustomize", folder], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(params=CLUSTERS)
def cluster(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def built(cluster: str) -> list[dict[str, Any]]:
    return build(ROOT / "clusters" / cluster / "gitops-system")


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def rbac_violations(objs: list[dict[str, Any]]) -> list[str]:
    """Every grant beyond read-only access to READS and get/create/update on our Leases."""
    problems: list[str] = []
    granted: dict[tuple[str, str], set[str]] = {}
    for obj in objs:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind not in ("ClusterRole", "Role"):
            continue
        if obj.get("aggregationRule"):
            problems.append(f"{kind} {name}: aggregationRule pulls in other roles' rules")
        for index, rule in enumerate(obj.get("rules") or []):
            where = f"{kind} {name} rule {index}"
            groups = set(rule.get("apiGroups") or [])
            resources = set(rule.get("resources") or [])
            verbs = set(rule.get("verbs") or [])
            if rule.get("nonResourceURLs"):
                problems.append(f"{where}: nonResourceURLs {rule['nonResourceURLs']}")
            if "*" in groups | resources | verbs:
                problems.append(
                    f"{where}: wildcard in {sorted(groups)} {sorted(resources)} {sorted(verbs)}"
                )
            if kind == "ClusterRole":
                for group in sorted(groups):
                    for resource in sorted(resources):
                        if (group, resource) not in READS:
                            problems.append(
                                f"{where}: {resource} in API group {group!r} is not a kind "
                                "the reconciler reads"
                            )
                        granted.setdefault((group, resource), set()).update(verbs)
                if verbs - READ_VERBS:
                    problems.append(
                        f"{where}: verbs beyond get, list, watch: {sorted(verbs - READ_VERBS)}"
                    )
            else:
                if groups != {"coordination.k8s.io"} or resources != {"leases"}:
                    problems.append(f"{where}: a Role may only cover coordination.k8s.io leases")
                if verbs - LEASE_VERBS:
                    problems.append(
                        f"{where}: lease verbs beyond get, create, update: "
                        f"{sorted(verbs - LEASE_VERBS)}"
                    )
                if obj["metadata"].get("namespace") != "gitops-system":
                    problems.append(f"{where}: Role outside the reconciler's namespace")
    for read in sorted(READS):
        missing = READ_VERBS - granted.get(read, set())
        if missing:
            problems.append(f"ClusterRole: {read[1]} in {read[0]!r} lacks {sorted(missing)}")
    return problems


def test_folder_builds_with_kubectl_kustomize(built: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in built)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Namespace",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
        "StatefulSet",
    ]
    namespaced = [
        o for o in built if o["kind"] not in ("ClusterRole", "ClusterRoleBinding", "Namespace")
    ]
    assert {o["metadata"].get("namespace") for o in namespaced} == {"gitops-system"}


def test_rbac_is_read_only_except_leases(built: list[dict[str, Any]]) -> None:
    assert rbac_violations(built) == []
    role = one(built, "Role")
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "update"],
        }
    ]
    for binding in ("ClusterRoleBinding", "RoleBinding"):
        subjects = one(built, binding)["subjects"]
        assert subjects == [
            {"kind": "ServiceAccount", "name": "gitops-rollout", "namespace": "gitops-system"}
        ]


def _mutate(objs: list[dict[str, Any]], kind: str, change: Any) -> list[dict[str, Any]]:
    copied = copy.deepcopy(objs)
    change(one(copied, kind))
    return copied


@pytest.mark.parametrize(
    ("kind", "change", "expected"),
    [
        (
            "ClusterRole",
            lambda r: r["rules"][2]["verbs"].append("patch"),
            "ClusterRole gitops-rollout-read rule 2: verbs beyond get, list, watch: ['patch']",
        ),
        (
            "ClusterRole",
            lambda r: r["rules"].append(
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
            ),
            "ClusterRole gitops-rollout-read rule 7: secrets in API group '' is not a kind the "
            "reconciler reads",
        ),
        (
            "ClusterRole",
            lambda r: r["rules"].append(
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"]}
            ),
            "ClusterRole gitops-rollout-read rule 7: leases in API group 'coordination.k8s.io' is "
            "not a kind the reconciler reads",
        ),
        (
            "ClusterRole",
            lambda r: r["rules"][0].update(resources=["*"]),
            "ClusterRole gitops-rollout-read rule 0: wildcard in ['serving.kserve.io'] ['*'] "
            "['get', 'list', 'watch']",
        ),
        (
            "ClusterRole",
            lambda r: r["rules"][4]["verbs"].remove("watch"),
            "ClusterRole: virtualservices in 'networking.istio.io' lacks ['watch']",
        ),
        (
            "Role",
            lambda r: r["rules"][0]["verbs"].append("delete"),
            "Role gitops-rollout-leases rule 0: lease verbs beyond get, create, update: ['delete']",
        ),
        (
            "Role",
            lambda r: r["rules"].append(
                {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["update"]}
            ),
            "Role gitops-rollout-leases rule 1: a Role may only cover coordination.k8s.io leases",
        ),
    ],
    ids=[
        "patch-deployments",
        "read-secrets",
        "lease-cluster-wide",
        "wildcard",
        "no-watch",
        "delete-leases",
        "role-writes-deployments",
    ],
)
def test_rbac_check_fails_on_extra_grants(
    built: list[dict[str, Any]], kind: str, change: Any, expected: str
) -> None:
    assert expected in rbac_violations(_mutate(built, kind, change))


def test_statefulset_shards_by_ordinal_and_takes_secrets_by_reference(
    built: list[dict[str, Any]], cluster: str
) -> None:
    sts = one(built, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert sts["spec"]["replicas"] == 2
    assert int(env[SHARDS_ENV]["value"]) == sts["spec"]["replicas"]
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # The token under the name the configured host reads (git over HTTPS uses it too).
    host = importlib.import_module(
        f"gitops_rollout.gitops.hosts.{one(built, 'ConfigMap')['data']['GITOPS_ROLLOUT_HOST']}"
    )
    for name in (f"{host.ENV_PREFIX}_TOKEN",):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "gitops-rollout-credentials"
    secretish = [e for e in env.values() if any(w in e["name"] for w in ("TOKEN", "PASSWORD"))]
    assert all("value" not in e for e in secretish), "no literal credentials"
    assert not [o for o in built if o["kind"] == "Secret"], "no Secret objects in Git"

    settings = one(built, "ConfigMap")
    assert container["envFrom"] == [{"configMapRef": {"name": settings["metadata"]["name"]}}]
    assert settings["data"]["GITOPS_ROLLOUT_CLUSTER"] == cluster
    assert settings["data"]["GITOPS_ROLLOUT_LISTEN"] == "0.0.0.0:8080"

    assert pod["serviceAccountName"] == "gitops-rollout"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    assert pod["terminationGracePeriodSeconds"] > 30, "longer than the scheduler's grace"


def test_service_and_servicemonitor_reach_the_pods(built: list[dict[str, Any]]) -> None:
    sts, service, monitor = (one(built, k) for k in ("StatefulSet", "Service", "ServiceMonitor"))
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert all(
        service["metadata"]["labels"].get(k) == v
        for k, v in monitor["spec"]["selector"]["matchLabels"].items()
    )
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_objects_with_a_schema_are_valid(built: list[dict[str, Any]], cluster: str) -> None:
    checker = schemas()
    folder = ROOT / "clusters" / cluster / "gitops-system"
    for path in (folder / "kustomization.yaml", folder / "gitops-rollout" / "kustomization.yaml"):
        assert checker.validate_text(path.read_text()) == [], path
    for obj in built:
        if obj["kind"] in ("Service", "ConfigMap", "Namespace", "ServiceAccount"):
            assert checker.validate(obj) == [], obj["kind"]


def test_argocd_applicationset_is_valid_and_names_apps_like_the_sync_reader() -> None:
    text = (ROOT / "deploy" / "argocd" / "applicationset.yaml").read_text()
    assert schemas().validate_text(text) == []
    (appset,) = yaml.safe_load_all(text)
    (generator,) = appset["spec"]["generators"]
    assert generator["git"]["directories"] == [{"path": "clusters/*"}]
    template = appset["spec"]["template"]
    assert template["metadata"]["name"] == APP_NAME.format(cluster="{{.path.basename}}")
    assert template["spec"]["source"]["path"] == "{{.path.path}}"
    assert template["spec"]["destination"] == {"name": "{{.path.basename}}"}


def test_flux_kustomizations_are_valid_and_cover_every_cluster() -> None:
    text = (ROOT / "deploy" / "flux" / "kustomization.yaml").read_text()
    assert schemas().validate_text(text) == []
    docs = [d for d in yaml.safe_load_all(text) if d]
    by_path = {d["spec"]["path"]: d["metadata"]["name"] for d in docs}
    clusters = sorted(p.name for p in (ROOT / "clusters").iterdir() if p.is_dir())
    assert by_path == {f"./clusters/{c}": APP_NAME.format(cluster=c) for c in clusters}, (
        "every folder under clusters/ needs a Flux Kustomization in deploy/flux"
    )
    assert all(not d["spec"].get("wait") for d in docs), "a failing candidate must not block"


def test_dockerfile_builds_a_non_root_image_that_runs_the_daemon() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms and all(f == "python:3.11-slim" for f in froms)
    assert any("pip install ." in line for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert lines[-1] == 'ENTRYPOINT ["gitops-rollout", "run"]'
    assert any("GITOPS_ROLLOUT_LISTEN=0.0.0.0:8080" in line for line in lines)
    copied = [
        p
        for line in lines
        if line.startswith("COPY ") and "--from" not in line
        for p in line.split()[1:-1]
    ]
    assert copied and all((ROOT / p).exists() for p in copied), copied
