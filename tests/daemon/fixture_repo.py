"""A small GitOps repository for the daemon tests, pushed to a bare remote on disk.

One policy, ``wisdom``: a progressive rollout (20 %, 60 %, 100 %, one second each) of a KServe
ModelMesh model in clusters ``prod-east`` and ``staging``; steps merge themselves, the promotion
waits for a human. Each cluster has the primary ``wisdom-0`` (v0) and the candidate ``wisdom-1``
(v1).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

CLUSTERS = ("prod-east", "staging")
NAMESPACE = "modelmesh-serving"

POLICY = """\
apiVersion: gitops-rollout.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: wisdom
spec:
  namespace: modelmesh-serving
  target:
    kind: kserve-modelmesh
  strategy:
    type: progressive
    steps:
      - {weight: 20, minDuration: 1s}
      - {weight: 60, minDuration: 1s}
      - {weight: 100, minDuration: 1s}
  clusters:
    - name: prod-east
    - name: staging
  gitops:
    autoMerge: [adopt, step, finalize, cleanup, rollback]
"""

ISVC = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: {name}
  namespace: modelmesh-serving
  labels:
    app.kubernetes.io/name: wisdom
    app.kubernetes.io/version: {version}
    gitops-rollout.dev/watch: "true"{role}
  annotations:
    serving.kserve.io/deploymentMode: ModelMesh
spec:
  predictor:
    model:
      modelFormat:
        name: sklearn
      storageUri: s3://models/sklearn/{name}.joblib
"""

VERSIONS = {"wisdom-0": "v0", "wisdom-1": "v1"}
ROUTING = "clusters/{cluster}/modelmesh-serving/wisdom/rollout/routing.yaml"


def files() -> dict[str, str]:
    out = {"policies/wisdom.yaml": POLICY}
    for cluster in CLUSTERS:
        out[f"clusters/{cluster}/kustomization.yaml"] = (
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            "resources:\n  - modelmesh-serving\n"
        )
        out[f"clusters/{cluster}/{NAMESPACE}/kustomization.yaml"] = (
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            "resources:\n  - wisdom/wisdom-0.yaml\n  - wisdom/wisdom-1.yaml\n"
        )
        for name, version in VERSIONS.items():
            role = "\n    gitops-rollout.dev/role: primary" if name == "wisdom-0" else ""
            out[f"clusters/{cluster}/{NAMESPACE}/wisdom/{name}.yaml"] = ISVC.format(
                name=name, version=version, role=role
            )
    return out


def git(*args: str, cwd: Path | None = None) -> str:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
        "GIT_AUTHOR_NAME": "platform-team",
        "GIT_AUTHOR_EMAIL": "platform@example.com",
        "GIT_COMMITTER_NAME": "platform-team",
        "GIT_COMMITTER_EMAIL": "platform@example.com",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def seed(workdir: Path) -> Path:
    """Push the repository to ``workdir/remote.git`` (created); returns the bare remote."""
    remote, checkout = workdir / "remote.git", workdir / "seed"
    git("init", "--bare", "--quiet", "--initial-branch=main", str(remote))
    git("init", "--quiet", "--initial-branch=main", str(checkout))
    for path, text in files().items():
        target = checkout / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git("add", "-A", cwd=checkout)
    git("commit", "--quiet", "-m", "wisdom: progressive rollout of v1", cwd=checkout)
    git("push", "--quiet", str(remote), "main", cwd=checkout)
    return remote


def main_sha(remote: Path) -> str:
    return git("--git-dir", str(remote), "rev-parse", "refs/heads/main").strip()


def read_main(remote: Path, path: str) -> str:
    return git("--git-dir", str(remote), "show", f"main:{path}")


def snapshot(path: Path, *, candidate_ready: bool) -> Path:
    """A kubectl-style snapshot of one cluster: the primary Ready, the candidate as asked."""
    items: list[dict[str, Any]] = []
    for name, version in VERSIONS.items():
        ready = candidate_ready or name == "wisdom-0"
        items.append(
            {
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": {
                    "name": name,
                    "namespace": NAMESPACE,
                    "generation": 1,
                    "labels": {"app.kubernetes.io/version": version},
                },
                "status": {
                    "observedGeneration": 1,
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                },
            }
        )
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    return path
