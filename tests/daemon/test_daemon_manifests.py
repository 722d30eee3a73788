"""The reconciler's StatefulSet runs flags `gitops-rollout run` has, with variables it reads."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import click
import pytest
from live.test_deploy_manifests import CLUSTERS, build, one

from gitops_rollout.cli import main
from gitops_rollout.gitops.hosts import gitea, github, gitlab
from gitops_rollout.lease import SHARD_ENV, SHARDS_ENV, ShardAssignment

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _run() -> click.Command:
    assert isinstance(main, click.Group)
    return main.commands["run"]


def _known_variables() -> set[str]:
    """Every GITOPS_ROLLOUT_* variable the daemon reads."""
    names = {SHARD_ENV, SHARDS_ENV}
    for param in _run().params:
        envvar = getattr(param, "envvar", None)
        names.update([envvar] if isinstance(envvar, str) else list(envvar or []))
    for host in (github, gitlab, gitea):
        names.update({f"{host.ENV_PREFIX}_TOKEN", f"{host.ENV_PREFIX}_TOKEN_FILE"})
    names.update({"GITOPS_ROLLOUT_HOST", "GITOPS_ROLLOUT_REMOTE", "GITOPS_ROLLOUT_CACHE"})
    return names


def _pod_environment(objs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it (downward API filled in)."""
    out = dict(one(objs, "ConfigMap")["data"])
    downward = {"metadata.name": "gitops-rollout-1", "metadata.namespace": "gitops-system"}
    for entry in container["env"]:
        if "value" in entry:
            out[entry["name"]] = entry["value"]
        elif "fieldRef" in entry.get("valueFrom", {}):
            out[entry["name"]] = downward[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            out[entry["name"]] = "secret"
    return out


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_statefulset_args_are_run_flags_in_the_pods_environment(
    cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objs = build(ROOT / "clusters" / cluster / "gitops-system")
    sts = one(objs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    environment = _pod_environment(objs, container)

    unknown = sorted(
        n for n in environment if n.startswith("GITOPS_ROLLOUT_") and n not in _known_variables()
    )
    assert unknown == [], f"set in the manifests but read by nothing: {unknown}"
    missing = sorted(
        {m for a in container["args"] for m in REFERENCE.findall(a)} - environment.keys()
    )
    assert missing == [], f"$(...) references the container does not define: {missing}"
    args = [REFERENCE.sub(lambda m: environment[m.group(1)], a) for a in container["args"]]

    for name in list(os.environ):
        if name.startswith("GITOPS_ROLLOUT_") or name in ("POD_NAME", "POD_NAMESPACE"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    params = _run().make_context("run", args).params  # raises on an unknown flag or value

    assert params["in_cluster"] is True
    assert params["clusters"] == (cluster,)
    assert params["remote"] == environment["GITOPS_ROLLOUT_REMOTE"]
    assert params["host"] == environment["GITOPS_ROLLOUT_HOST"] == "github"
    assert params["listen"].rsplit(":", 1)[1] == str(container["ports"][0]["containerPort"])
    assert params["lease_namespace"] == "gitops-system"
    assert params["no_leases"] is False
    assert params["grace"] < pod["terminationGracePeriodSeconds"]
    assert ShardAssignment.from_env(environment) == ShardAssignment(1, sts["spec"]["replicas"])
    assert f"{github.ENV_PREFIX}_TOKEN" in environment
