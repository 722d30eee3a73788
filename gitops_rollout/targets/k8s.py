"""Core Kubernetes objects the targets write (Service, Deployment, ConfigMap) as typed values.

Only the fields gitops-rollout sets exist here; each value's `to_dict` gives the manifest with
keys in the order kubectl prints them. Every object carries the managed-by label so
``kubectl get -l app.kubernetes.io/managed-by=gitops-rollout`` finds all of them. The rollout
state annotations are added by `render`, which alone knows the state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gitops_rollout.inventory.model import MANAGED_BY, MANAGED_BY_LABEL
from gitops_rollout.policy import RolloutPolicy
from gitops_rollout.targets.base import Manifest, object_name
from gitops_rollout.transitions import RoutePlan


@dataclass(frozen=True)
class ObjectMeta:
    name: str
    namespace: str
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> Manifest:
        out: Manifest = {"name": self.name, "namespace": self.namespace}
        out["labels"] = {MANAGED_BY_LABEL: MANAGED_BY, **dict(self.labels)}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class ServicePortSpec:
    name: str
    port: int
    target_port: int | None = None

    def to_dict(self) -> Manifest:
        out: Manifest = {"name": self.name, "port": self.port}
        if self.target_port is not None:
            out["targetPort"] = self.target_port
        return out


@dataclass(frozen=True)
class Service:
    meta: ObjectMeta
    ports: tuple[ServicePortSpec, ...] = ()
    selector: tuple[tuple[str, str], ...] = ()
    external_name: str | None = None
    """Set for an ExternalName Service (an alias in DNS for another host)."""

    def to_dict(self) -> Manifest:
        spec: Manifest = {}
        if self.external_name is not None:
            spec["type"] = "ExternalName"
            spec["externalName"] = self.external_name
        else:
            spec["type"] = "ClusterIP"
        if self.selector:
            spec["selector"] = dict(self.selector)
        if self.ports:
            spec["ports"] = [p.to_dict() for p in self.ports]
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.meta.to_dict(),
            "spec": spec,
        }


@dataclass(frozen=True)
class Container:
    name: str
    image: str

    def to_dict(self) -> Manifest:
        return {"name": self.name, "image": self.image}


@dataclass(frozen=True)
class Deployment:
    meta: ObjectMeta
    selector: tuple[tuple[str, str], ...]
    containers: tuple[Container, ...]
    pod_labels: tuple[tuple[str, str], ...] = ()
    """Labels of the pods besides the selector's."""
    pod_annotations: tuple[tuple[str, str], ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    replicas: int = 1

    def to_dict(self) -> Manifest:
        pod_meta: Manifest = {}
        if self.pod_annotations:
            pod_meta["annotations"] = dict(self.pod_annotations)
        pod_meta["labels"] = {**dict(self.selector), **dict(self.pod_labels)}
        pod_spec: Manifest = {}
        if self.sysctls:
            pod_spec["securityContext"] = {
                "sysctls": [{"name": k, "value": v} for k, v in self.sysctls]
            }
        pod_spec["containers"] = [c.to_dict() for c in self.containers]
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": self.meta.to_dict(),
            "spec": {
                "replicas": self.replicas,
                "selector": {"matchLabels": dict(self.selector)},
                "template": {"metadata": pod_meta, "spec": pod_spec},
            },
        }


@dataclass(frozen=True)
class ConfigMap:
    meta: ObjectMeta
    data: tuple[tuple[str, str], ...] = field(default=())

    def to_dict(self) -> Manifest:
        out: Manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": self.meta.to_dict()}
        if self.data:
            out["data"] = dict(self.data)
        return out


def state_carrier(policy: RolloutPolicy, plan: RoutePlan) -> Manifest:
    """The ConfigMap ``<model>-rollout`` that holds the state of a rollout whose platform
    routes itself (native modes): nothing else of ours exists to carry the annotations."""
    return ConfigMap(
        ObjectMeta(object_name(policy.model, "-rollout"), policy.routing_namespace),
        data=(("route", plan.describe()),),
    ).to_dict()


__all__ = [
    "ConfigMap",
    "Container",
    "Deployment",
    "ObjectMeta",
    "Service",
    "ServicePortSpec",
    "state_carrier",
]
