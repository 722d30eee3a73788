"""GitOps repositories the decision tests start from.

`example` takes scenarios 3 and 4 from the project's example repository as they ship (policies
and manifests), so the tests run what users run. `shop` builds a small repository of
progressive canaries on plain Deployments, one policy per model, whose analysis section each
test words for its failure path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = "prod-east"

EXAMPLE_FOLDERS = {
    "fashionmnist": ("default",),
    "iris": ("ns-baseline", "ns-candidate"),
}


def example(*models: str) -> dict[str, str]:
    """The example repository's policies and prod-east manifests of `models`."""
    files: dict[str, str] = {}
    namespaces: list[str] = []
    for model in models:
        files[f"policies/{model}.yaml"] = (ROOT / "policies" / f"{model}.yaml").read_text()
        for namespace in EXAMPLE_FOLDERS[model]:
            folder = ROOT / "clusters" / CLUSTER / namespace
            for path in sorted(folder.rglob("*.yaml")):
                files[str(path.relative_to(ROOT))] = path.read_text()
            namespaces.append(namespace)
    files[f"clusters/{CLUSTER}/kustomization.yaml"] = _kustomization(namespaces)
    return files


PROGRESSIVE = """\
apiVersion: gitops-rollout.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: {model}
spec:
  namespace: {namespace}
  target:
    kind: deployment
  strategy:
    type: progressive
    steps:
      - {{weight: 10, minDuration: {step}}}
      - {{weight: 50, minDuration: {step}}}
      - {{weight: 100, minDuration: {step}}}
  clusters:
    - name: prod-east
  analysis:
    interval: 1m
    warmup: 1m
    noData: {no_data}
    noDataTimeout: 5m
{analysis}"""

OBJECTIVES = """\
    objectives:
      - metric: mean-latency
        upperLimit: 250
      - metric: error-rate
"""

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {namespace}
  labels:
    app.kubernetes.io/name: {model}
    app.kubernetes.io/version: {version}
    gitops-rollout.dev/watch: "true"
    gitops-rollout.dev/role: {role}
spec:
  selector:
    matchLabels: {{app.kubernetes.io/name: {model}, app.kubernetes.io/version: {version}}}
  template:
    metadata:
      labels: {{app.kubernetes.io/name: {model}, app.kubernetes.io/version: {version}}}
    spec:
      containers:
        - name: server
          image: registry.example.com/{model}:{version}
          ports: [{{containerPort: 8080, name: http}}]
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
spec:
  selector: {{app.kubernetes.io/name: {model}, app.kubernetes.io/version: {version}}}
  ports: [{{name: http, port: 8080, targetPort: 8080}}]
"""


def shop(
    analysis: Mapping[str, str],
    *,
    namespace: str = "shop",
    no_data: Mapping[str, str] | None = None,
    step: str = "2m",
    kustomization: bool = True,
) -> dict[str, str]:
    """One progressive policy per model (10 %, 50 %, 100 %, each step at least `step`; the
    analysis text given per model, `OBJECTIVES` when empty; ``noData`` from `no_data`, hold by
    default), each model with a primary v1 and a candidate v2. Without `kustomization` the
    namespace folder has no kustomization.yaml, so rollouts starting together share no file."""
    files: dict[str, str] = {}
    listed: list[str] = []
    for model, text in analysis.items():
        files[f"policies/{model}.yaml"] = PROGRESSIVE.format(
            model=model,
            namespace=namespace,
            no_data=(no_data or {}).get(model, "hold"),
            step=step,
            analysis=text or OBJECTIVES,
        )
        for version, role in (("v1", "primary"), ("v2", "candidate")):
            name = f"{model}-{version}"
            path = f"{model}/{name}.yaml"
            files[f"clusters/{CLUSTER}/{namespace}/{path}"] = DEPLOYMENT.format(
                name=name, namespace=namespace, model=model, version=version, role=role
            )
            listed.append(path)
    if kustomization:
        files[f"clusters/{CLUSTER}/{namespace}/kustomization.yaml"] = _kustomization(listed)
    files[f"clusters/{CLUSTER}/kustomization.yaml"] = _kustomization([namespace])
    return files


def _kustomization(resources: list[str]) -> str:
    lines = ["apiVersion: kustomize.config.k8s.io/v1beta1", "kind: Kustomization", "resources:"]
    return "\n".join([*lines, *(f"  - {r}" for r in resources)]) + "\n"
