"""Tiny GitOps repositories for policy tests: policies/ and clusters/ written from strings."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gitops_rollout import repository
from gitops_rollout.tree import DirTree

POLICY_FILE = "policies/demo.yaml"

POLICY = """\
apiVersion: gitops-rollout.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: demo
spec:
  namespace: serving
  target:
    kind: deployment
  strategy:
    type: progressive
    steps:
      - weight: 50
      - weight: 100
  clusters:
    - name: prod
"""
"""A valid policy. Its lines, for reading the expected messages: 3 metadata, 4 name,
5 spec, 6 namespace, 7 target, 8 kind, 9 strategy, 10 type, 11 steps, 12 and 13 the two steps,
14 clusters, 15 the cluster entry."""

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: demo-v1
  labels:
    app.kubernetes.io/name: demo
    app.kubernetes.io/version: v1
    gitops-rollout.dev/watch: "true"
spec:
  template:
    spec:
      containers: [{name: server, image: example/demo:1}]
"""

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: demo-v1
spec:
  selector: {app.kubernetes.io/name: demo, app.kubernetes.io/version: v1}
  ports: [{name: http, port: 8080}]
"""

MANIFEST_FILE = "clusters/prod/serving/demo/demo-v1.yaml"

MANIFESTS: Mapping[str, str] = {MANIFEST_FILE: DEPLOYMENT + "---\n" + SERVICE}
"""The model `demo` in cluster `prod`, namespace `serving`: one Deployment with its Service."""


def edit(old: str, new: str, text: str = POLICY) -> str:
    """`text` with `old` replaced once; fails loudly when `old` is not there."""
    assert text.count(old) == 1, f"{old!r} is not (exactly once) in the policy"
    return text.replace(old, new)


def write_repo(root: Path, files: Mapping[str, str | bytes]) -> DirTree:
    """Write `files` (repository path -> content) below `root` and return it as a tree."""
    for path, content in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
    return DirTree(root)


def load_repo(root: Path, files: Mapping[str, str | bytes]) -> repository.RepositoryView:
    return repository.load(write_repo(root, files))
