"""Builders of the live objects the tests put into the fake API server."""

from __future__ import annotations

from typing import Any

WATCH = {"gitops-rollout.dev/watch": "true"}
ITER8 = {"iter8.tools/watch": "true"}


def _meta(name: str, namespace: str, labels: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels, "generation": 1, **extra}


def model_labels(model: str, version: str, watch: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": model,
        "app.kubernetes.io/version": version,
        **(WATCH if watch is None else watch),
    }


def isvc(
    name: str,
    *,
    namespace: str = "models",
    ready: bool,
    labels: dict[str, str] | None = None,
    message: str = "",
) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": _meta(name, namespace, labels or model_labels("iris", name)),
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}}}},
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False", "message": message}
            ],
        },
    }


def deployment(
    name: str, *, namespace: str = "models", available: bool, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(
            name, namespace, labels if labels is not None else model_labels("scoring", name)
        ),
        "spec": {"replicas": 1},
        "status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Available", "status": "True" if available else "False"}],
        },
    }


def seldon(name: str, *, namespace: str = "models", state: str) -> dict[str, Any]:
    return {
        "apiVersion": "machinelearning.seldon.io/v1",
        "kind": "SeldonDeployment",
        "metadata": _meta(name, namespace, model_labels("wisdom", name)),
        "spec": {"predictors": [{"name": "default", "graph": {"name": "m"}}]},
        "status": {"state": state},
    }


def service(name: str, *, namespace: str = "models") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace, model_labels("scoring", name)),
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 8080}]},
    }


def virtual_service(
    name: str,
    *,
    namespace: str = "models",
    content_hash: str,
    managed_at: str | None = None,
) -> dict[str, Any]:
    meta = _meta(
        name,
        namespace,
        {"app.kubernetes.io/managed-by": "gitops-rollout"},
        annotations={"gitops-rollout.dev/content-hash": content_hash},
    )
    if managed_at:
        meta["managedFields"] = [
            {"manager": "argocd-controller", "operation": "Apply", "time": managed_at}
        ]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": meta,
        "spec": {"hosts": [name], "http": [{"route": [{"destination": {"host": name}}]}]},
    }
